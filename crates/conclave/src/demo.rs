//! `conclave demo`: a meeting of in-process members driven through the real E2EE core (MLS
//! groups, admission policy, SFrame), with an in-memory stand-in for the delivery service that
//! orders commits the way the server will (first valid commit of an epoch wins).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use conclave_e2ee::{
    ClearPrefix, CommitBundle, CredentialInfo, Device, DeviceIdentity, EpochChange, FrameError,
    GroupStore, Incoming, MediaCrypto, RoomCipherSuite, RoomPolicy, Session, Timestamp,
};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How many members join (at least 3).
    #[arg(long, default_value_t = 5)]
    members: usize,
    /// Use the hybrid post-quantum suite (X25519 + ML-KEM-768).
    #[arg(long)]
    post_quantum: bool,
    /// Print one JSON summary line at the end.
    #[arg(long)]
    json: bool,
}

struct Member {
    name: String,
    session: Session,
    media: MediaCrypto,
    decrypted: u64,
    failed: u64,
}

#[derive(Serialize)]
struct Summary {
    epoch: u64,
    security_code: String,
    members: usize,
    frames_sent: u64,
    frames_decrypted: u64,
    frames_failed: u64,
    removed_member_frames_opened: u64,
    suite: &'static str,
}

fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}

fn device(suite: RoomCipherSuite, name: &str) -> Result<Device> {
    let info = CredentialInfo::new(&name.to_lowercase(), name)?;
    Ok(Device::new(
        DeviceIdentity::generate(suite, info)?,
        GroupStore::memory(),
    )?)
}

fn print_epoch(members: &[Member], change: Option<&EpochChange>, quiet: bool) -> Result<()> {
    if quiet {
        return Ok(());
    }
    let first = &members[0].session;
    let code = first.security_code()?;
    let what = match change {
        None => "room created".to_string(),
        Some(c) if c.changes_membership() => {
            let names = |v: &[conclave_e2ee::RosterEntry]| {
                v.iter()
                    .map(|e| e.display_name.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut parts = Vec::new();
            if !c.added.is_empty() {
                parts.push(format!("added {}", names(&c.added)));
            }
            if !c.removed.is_empty() {
                parts.push(format!("removed {}", names(&c.removed)));
            }
            parts.join("; ")
        }
        Some(_) => "self-update (post-compromise security)".to_string(),
    };
    println!("epoch {:>2}  {what}", first.epoch());
    println!("          security code  {code}");
    for m in members {
        let c = m.session.security_code()?;
        if c != code {
            bail!("{} shows {c}, not {code}: the group forked", m.name);
        }
    }
    let roster = first.roster()?;
    let list: Vec<String> = roster
        .iter()
        .map(|e| format!("{} [{}]", e.display_name, e.fingerprint.short_code()))
        .collect();
    println!("          roster ({})  {}", roster.len(), list.join(", "));
    Ok(())
}

/// Every member seals one frame; every other member opens it. Returns frames sealed.
fn exchange(members: &mut [Member], round: u64, t: Timestamp) -> Result<u64> {
    let mut sealed = Vec::new();
    for m in members.iter_mut() {
        let frame = format!("{} frame {round}", m.name);
        let mut wire = Vec::new();
        m.media
            .seal(frame.as_bytes(), ClearPrefix::None, &mut wire)?;
        if wire.windows(frame.len()).any(|w| w == frame.as_bytes()) {
            bail!("plaintext visible on the wire");
        }
        sealed.push((m.name.clone(), frame, wire));
    }
    let mut out = Vec::new();
    for m in members.iter_mut() {
        for (from, frame, wire) in &sealed {
            if *from == m.name {
                continue;
            }
            match m.media.open(wire, ClearPrefix::None, &mut out, t) {
                Ok(_) if out == frame.as_bytes() => m.decrypted += 1,
                _ => m.failed += 1,
            }
        }
    }
    Ok(sealed.len() as u64)
}

/// The designated committer commits `kps`/removals; the "DS" accepts it; everyone applies it.
fn commit_round(
    members: &mut Vec<Member>,
    kps: &[Vec<u8>],
    remove: &[u32],
    t: Timestamp,
) -> Result<(EpochChange, CommitBundle)> {
    let online: Vec<u32> = members.iter().map(|m| m.session.own_leaf()).collect();
    let leaf = members[0]
        .session
        .designated_committer(&online, !kps.is_empty())
        .context("no member can commit")?;
    let ci = members
        .iter()
        .position(|m| m.session.own_leaf() == leaf)
        .context("designated committer is not online")?;
    let bundle = members[ci].session.commit(kps, remove, t)?;
    let change = members[ci].session.confirm_commit()?;
    for (i, m) in members.iter_mut().enumerate() {
        if i == ci {
            continue;
        }
        match m.session.process(&bundle.commit, t)? {
            Incoming::Commit { .. } => {}
            other => bail!("unexpected {other:?}"),
        }
    }
    members.retain(|m| {
        !change
            .removed
            .iter()
            .any(|r| r.leaf == m.session.own_leaf())
    });
    for m in members.iter_mut() {
        m.media.install_epoch(m.session.epoch_secrets()?, t)?;
    }
    Ok((change, bundle))
}

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    if args.members < 3 {
        bail!("--members must be at least 3");
    }
    let suite = if args.post_quantum {
        RoomCipherSuite::MlKem768X25519
    } else {
        RoomCipherSuite::Curve25519Aes128
    };
    if !suite.is_supported() {
        bail!("this build does not support {}", suite.name());
    }
    let quiet = args.json;
    let started = Instant::now();
    let t = now();
    if !quiet {
        println!(
            "Conclave demo: {} members, suite {}",
            args.members,
            suite.name()
        );
        println!("Every key below was generated on its member's device; the delivery service");
        println!("only ordered and relayed ciphertext.\n");
    }

    let names: Vec<String> = (0..args.members)
        .map(|i| format!("Member{}", i + 1))
        .collect();
    let host = device(suite, &names[0])?;
    let session = host.create_room(RoomPolicy::open("demo"), None, t)?;
    let mut media = MediaCrypto::default();
    media.install_epoch(session.epoch_secrets()?, t)?;
    let mut members = vec![Member {
        name: names[0].clone(),
        session,
        media,
        decrypted: 0,
        failed: 0,
    }];
    print_epoch(&members, None, quiet)?;
    let mut sent = 0;

    // Joins: the first two knock together (one batched commit), then one by one.
    let mut pending: Vec<(String, Device)> = names[1..]
        .iter()
        .map(|n| Ok((n.clone(), device(suite, n)?)))
        .collect::<Result<_>>()?;
    let mut round = 0;
    while !pending.is_empty() {
        let take = if round == 0 { 2.min(pending.len()) } else { 1 };
        let batch: Vec<(String, Device)> = pending.drain(..take).collect();
        let kps = batch
            .iter()
            .map(|(_, d)| d.key_package(None, t))
            .collect::<Result<Vec<_>, _>>()?;
        let (change, bundle) = commit_round(&mut members, &kps, &[], t)?;
        let welcome = bundle.welcome.context("an add makes a Welcome")?;
        let tree = bundle.ratchet_tree;
        for (name, d) in batch {
            let session = d.join("demo", &welcome, &tree, t)?;
            let mut media = MediaCrypto::default();
            media.install_epoch(session.epoch_secrets()?, t)?;
            members.push(Member {
                name,
                session,
                media,
                decrypted: 0,
                failed: 0,
            });
        }
        print_epoch(&members, Some(&change), quiet)?;
        sent += exchange(&mut members, round, t)?;
        round += 1;
    }

    // One member leaves; it keeps its old keys and tries to read what follows.
    let leaver = members.len() - 1;
    let leaf = members[leaver].session.own_leaf();
    let mut gone = members.remove(leaver);
    let mut remaining = members;
    let (change, _) = commit_round(&mut remaining, &[], &[leaf], t)?;
    let mut members = remaining;
    print_epoch(&members, Some(&change), quiet)?;
    sent += exchange(&mut members, round, t)?;
    let mut wire = Vec::new();
    let mut out = Vec::new();
    members[0]
        .media
        .seal(b"after the leave", ClearPrefix::None, &mut wire)?;
    let later = t.saturating_add(std::time::Duration::from_secs(10));
    let opened_by_leaver = match gone.media.open(&wire, ClearPrefix::None, &mut out, later) {
        Ok(_) => 1,
        Err(FrameError::FutureEpoch { .. } | FrameError::UnknownEpoch { .. }) => 0,
        Err(e) => {
            if !quiet {
                println!("          (leaver's attempt failed: {e})");
            }
            0
        }
    };
    if !quiet {
        println!(
            "          {} tried to open a frame sent after leaving: {}",
            gone.name,
            if opened_by_leaver == 0 {
                "refused"
            } else {
                "OPENED (bug)"
            }
        );
    }
    let _ = gone.session.epoch();

    // A self-update by the designated committer (post-compromise security).
    let (change, _) = commit_round(&mut members, &[], &[], t)?;
    print_epoch(&members, Some(&change), quiet)?;
    sent += exchange(&mut members, round + 1, t)?;

    let decrypted: u64 = members.iter().map(|m| m.decrypted).sum();
    let failed: u64 = members.iter().map(|m| m.failed).sum();
    let summary = Summary {
        epoch: members[0].session.epoch(),
        security_code: members[0].session.security_code()?.to_string(),
        members: members.len(),
        frames_sent: sent,
        frames_decrypted: decrypted,
        frames_failed: failed,
        removed_member_frames_opened: opened_by_leaver,
        suite: suite.name(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "\n{} frames sealed, {} opened by their receivers, {} failed; done in {:.0?}.",
            sent,
            decrypted,
            failed,
            started.elapsed()
        );
    }
    if failed > 0 || opened_by_leaver > 0 {
        bail!("the demo saw a failure");
    }
    Ok(())
}

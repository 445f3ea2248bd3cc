//! 1,000 members, built with batched adds, in a test that runs in seconds.
//!
//! Only a sample of the joiners actually join (each join verifies the whole tree, so 999 joins
//! would take a minute on two cores; that path is measured in the benches and the load test).

mod common;
use common::*;
use conclave_e2ee::*;
use std::time::Instant;

#[test]
fn group_of_1000_members_built_with_batched_adds() {
    let started = Instant::now();
    // The host keeps its state on disk, so that its size at 1,000 members can be read.
    let state_dir = std::env::temp_dir().join(format!(
        "conclave-scale-{}-{}",
        std::process::id(),
        started.elapsed().as_nanos()
    ));
    let creator = Device::new(
        DeviceIdentity::generate(SUITE, CredentialInfo::new("creator", "creator").unwrap())
            .unwrap(),
        GroupStore::dir(&state_dir).unwrap(),
    )
    .unwrap();
    let mut host = creator
        .create_room(RoomPolicy::open("room"), None, T0)
        .unwrap();
    let mut sample: Vec<Session> = Vec::new();
    let mut commit_sizes = Vec::new();

    // 999 joiners in 9 batches of 111.
    for batch in 0..9 {
        let joiners: Vec<Device> = (0..111).map(|i| device(&format!("m{batch}-{i}"))).collect();
        let kps: Vec<Vec<u8>> = joiners
            .iter()
            .map(|d| d.key_package(None, T0).unwrap())
            .collect();
        let bundle = host.commit(&kps, &[], T0).unwrap();
        host.confirm_commit().unwrap();
        commit_sizes.push(bundle.commit.len());
        for s in sample.iter_mut() {
            s.process(&bundle.commit, T0).unwrap();
        }
        // The first and last joiner of each batch join for real and follow later commits.
        let welcome = bundle.welcome.unwrap();
        for d in [&joiners[0], &joiners[110]] {
            sample.push(d.join("room", &welcome, &bundle.ratchet_tree, T0).unwrap());
        }
    }
    assert_eq!(host.member_count(), 1000);
    let code = host.security_code().unwrap();
    for s in &sample {
        assert_eq!(s.member_count(), 1000);
        assert_eq!(s.security_code().unwrap(), code);
    }

    // A sampled member commits a self-update (fills its path); everyone in the sample follows.
    let bundle = sample[5].self_update(T0).unwrap();
    sample[5].confirm_commit().unwrap();
    host.process(&bundle.commit, T0).unwrap();
    for (i, s) in sample.iter_mut().enumerate() {
        if i != 5 {
            s.process(&bundle.commit, T0).unwrap();
        }
    }

    // Media from the host opens at the sampled members.
    let mut sender = MediaCrypto::default();
    sender
        .install_epoch(host.epoch_secrets().unwrap(), T0)
        .unwrap();
    let mut wire = Vec::new();
    sender
        .seal(b"to a thousand", ClearPrefix::None, &mut wire)
        .unwrap();
    for s in &sample {
        let mut m = MediaCrypto::default();
        m.install_epoch(s.epoch_secrets().unwrap(), T0).unwrap();
        let mut out = Vec::new();
        m.open(&wire, ClearPrefix::None, &mut out, T0).unwrap();
        assert_eq!(out, b"to a thousand");
    }
    // A member's stored MLS state at 1,000 members (the tree dominates it).
    host.save().unwrap();
    let stored: u64 = walk(&state_dir);
    let _ = std::fs::remove_dir_all(&state_dir);
    let tree = host.ratchet_tree().unwrap().len() as u64;
    assert!(stored >= tree, "stored {stored} B, tree {tree} B");
    eprintln!(
        "1000 members in {:?}; add-commit sizes {:?}; self-update commit {} B; tree {} B; \
         the host's stored MLS state {} B",
        started.elapsed(),
        commit_sizes,
        bundle.commit.len(),
        tree,
        stored
    );
}

/// Bytes of all files under `dir`.
fn walk(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

//! Joins and leaves: batched commits, a clean leave by self-removal proposal, and the timer
//! that schedules self-updates.

mod common;
use common::*;
use conclave_e2ee::*;
use core::time::Duration;

#[test]
fn one_commit_adds_and_removes_many_members() {
    let mut room = Room::open(6);
    let leaves: Vec<u32> = [2, 4].iter().map(|&i| room.s(i).own_leaf()).collect();
    let joiners: Vec<Device> = (0..3).map(|i| device(&format!("new{i}"))).collect();
    let kps: Vec<Vec<u8>> = joiners
        .iter()
        .map(|d| d.key_package(None, T0).unwrap())
        .collect();
    let bundle = room.s(1).commit(&kps, &leaves, T0).unwrap();
    let change = room.s(1).confirm_commit().unwrap();
    assert_eq!(change.added.len(), 3);
    assert_eq!(change.removed.len(), 2);
    assert!(change.changes_membership());
    for i in [0, 3, 5] {
        match room.s(i).process(&bundle.commit, T0).unwrap() {
            Incoming::Commit { change: c, .. } => assert_eq!(c, change),
            other => panic!("{other:?}"),
        }
    }
    for i in [2, 4] {
        match room.s(i).process(&bundle.commit, T0).unwrap() {
            Incoming::Commit { change, .. } => assert!(change.removed_self),
            other => panic!("{other:?}"),
        }
    }
    let welcome = bundle.welcome.unwrap();
    for d in &joiners {
        let s = d.join("room", &welcome, &bundle.ratchet_tree, T0).unwrap();
        assert_eq!(s.member_count(), 7);
        assert_eq!(
            s.security_code().unwrap(),
            room.s(0).security_code().unwrap()
        );
    }
}

#[test]
fn clean_leave_is_a_standard_remove_of_its_own_leaf_committed_by_another_member() {
    // An RFC 9420 Remove (type 3) of the leaver's own leaf, which every MLS implementation
    // decodes; not mls-rs's private-use SelfRemove (0xF003).
    let mut room = Room::open(4);
    let leaver_leaf = room.s(3).own_leaf();
    let proposal = room.s(3).propose_leave().unwrap();
    for i in 0..3 {
        match room.s(i).process(&proposal, T0).unwrap() {
            Incoming::Proposal {
                kind,
                target,
                from_server,
            } => {
                assert_eq!(
                    (kind, target, from_server),
                    ("remove", Some(leaver_leaf), false)
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // The designated committer commits it (with no other change).
    let online: Vec<u32> = (0..3).map(|i| room.s(i).own_leaf()).collect();
    let committer = room.s(0).designated_committer(&online, false).unwrap();
    let ci = (0..3).find(|&i| room.s(i).own_leaf() == committer).unwrap();
    let bundle = room.s(ci).commit(&[], &[], T0).unwrap();
    let change = room.s(ci).confirm_commit().unwrap();
    assert_eq!(change.removed.len(), 1);
    assert_eq!(change.removed[0].leaf, leaver_leaf);
    for i in (0..3).filter(|&i| i != ci) {
        room.s(i).process(&bundle.commit, T0).unwrap();
    }
    match room.s(3).process(&bundle.commit, T0).unwrap() {
        Incoming::Commit { change, .. } => assert!(change.removed_self),
        other => panic!("{other:?}"),
    }
    assert_eq!(room.s(0).member_count(), 3);
}

#[test]
fn self_update_timer_fires_within_its_jittered_period() {
    let period = Duration::from_secs(300);
    let mut t = SelfUpdateTimer::new(period, 200);
    assert_eq!(t.poll_timeout(), None);
    assert!(!t.is_due(T0));
    let mut seen = Vec::new();
    for r in [0u64, 1, 59_999, 60_000, 120_000, u64::MAX, 12_345_678] {
        t.arm(T0, r);
        let due = t.poll_timeout().unwrap();
        let after = due.saturating_since(T0);
        assert!(
            after >= Duration::from_secs(240) && after <= Duration::from_secs(360),
            "{after:?}"
        );
        assert!(!t.is_due(T0));
        assert!(t.is_due(due));
        seen.push(after);
    }
    seen.sort();
    seen.dedup();
    assert!(seen.len() > 3, "jitter spreads the due times");
}

#[test]
fn a_joiner_whose_clock_runs_ahead_is_still_added_and_processed_by_members_behind_it() {
    // Devices' clocks differ: a KeyPackage made by a device ten minutes ahead must not be
    // "not valid yet" for the committer or the members (nor for another MLS implementation,
    // which checks KeyPackage lifetimes against its own clock: see the interop test).
    let mut room = Room::open(2);
    let ahead = T0.saturating_add(Duration::from_secs(600));
    let joiner = device("ahead");
    let kp = joiner.key_package(None, ahead).unwrap();
    room.s(0).check_joiner(&kp, T0).unwrap();
    let bundle = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.deliver(0, &bundle.commit);
    let s = join_by(&joiner, &bundle, ahead).unwrap();
    assert_eq!(s.member_count(), 3);
    assert_eq!(
        s.security_code().unwrap(),
        room.s(1).security_code().unwrap()
    );
}

#[test]
fn a_keypackage_is_valid_from_an_hour_before_it_was_made_until_a_day_after() {
    let mut room = Room::open(1);
    let made = T0.saturating_add(Duration::from_secs(2 * 3600));
    let kp = device("kp").key_package(None, made).unwrap();
    let expires = mls_rs::MlsMessage::from_bytes(&kp)
        .unwrap()
        .into_key_package()
        .unwrap()
        .expiration()
        .unwrap();
    assert_eq!(
        expires.seconds_since_epoch(),
        made.as_millis() / 1000 + 24 * 3600
    );
    // A committer whose clock is 59 minutes behind adds it; 61 minutes behind, not yet.
    let behind = |m: u64| Timestamp::from_millis(made.as_millis() - m * 60_000);
    let late = room.s(0).commit(std::slice::from_ref(&kp), &[], behind(61));
    assert!(late.is_err(), "{late:?}");
    room.s(0).commit(&[kp], &[], behind(59)).unwrap();
}

//! The designated committer: deterministic, agreed by all, and biased to fill the tree.

mod common;
use common::*;
use conclave_e2ee::*;

#[test]
fn every_member_designates_the_same_committer() {
    let mut room = Room::open(9);
    let online: Vec<u32> = room.s(0).member_leaves();
    let choices: Vec<_> = (0..9)
        .map(|i| room.s(i).designated_committer(&online, false))
        .collect();
    assert!(
        choices.iter().all(|c| *c == choices[0] && c.is_some()),
        "{choices:?}"
    );
}

#[test]
fn designated_committer_fills_blank_nodes_and_rotates() {
    // One batched add leaves the tree mostly blank: the creator's path is filled, the joiners'
    // paths are blank above their leaves.
    let mut room = Room::open(8);
    let online = room.s(0).member_leaves();
    let first = room.s(0).designated_committer(&online, false).unwrap();
    assert_ne!(first, 0, "the creator just committed; its path is full");

    // After the designated member commits, its path is full, so the choice moves on.
    let i = room
        .sessions
        .iter()
        .position(|s| s.as_ref().unwrap().own_leaf() == first)
        .unwrap();
    let b = room.s(i).self_update(T0).unwrap();
    room.deliver(i, &b.commit);
    let second = room.s(0).designated_committer(&online, false).unwrap();
    assert_ne!(second, first);

    // Offline members are never chosen; with nobody online, nobody is.
    let only = [online[3]];
    assert_eq!(
        room.s(0).designated_committer(&only, false),
        Some(online[3])
    );
    assert_eq!(room.s(0).designated_committer(&[], false), None);
    assert_eq!(room.s(0).designated_committer(&[999], false), None);
}

#[test]
fn in_a_lobby_only_hosts_commit_adds() {
    let mut room = Room::with_policy(4, |h| RoomPolicy::lobby("room", &[h.identity()]), None);
    let online = room.s(1).member_leaves();
    let host_leaf = room.s(0).own_leaf();
    assert_eq!(
        room.s(1).designated_committer(&online, true),
        Some(host_leaf)
    );
    // Without joiners waiting (removals, updates), anyone may commit.
    assert!(room.s(1).designated_committer(&online, false).is_some());
    // No host online and joiners waiting: nobody can admit them.
    let without_host: Vec<u32> = online.iter().copied().filter(|&l| l != host_leaf).collect();
    assert_eq!(room.s(1).designated_committer(&without_host, true), None);
}

#[test]
fn losing_a_commit_race_discards_the_pending_commit_and_keeps_the_group_whole() {
    let mut room = Room::open(4);
    let a = room.s(1).self_update(T0).unwrap();
    let _b = room.s(2).self_update(T0).unwrap();
    // The DS accepts 1's commit; 2 learns it lost when 1's commit arrives.
    room.s(1).confirm_commit().unwrap();
    for i in [0, 3] {
        room.s(i).process(&a.commit, T0).unwrap();
    }
    match room.s(2).process(&a.commit, T0).unwrap() {
        Incoming::Commit {
            discarded_own_commit,
            ..
        } => assert!(discarded_own_commit),
        other => panic!("{other:?}"),
    }
    assert!(!room.s(2).has_pending_commit());
    let codes = room.codes();
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "no fork: {codes:?}");
    // The loser rebuilds on the new epoch.
    let again = room.s(2).self_update(T0).unwrap();
    room.deliver(2, &again.commit);
    let codes = room.codes();
    assert!(codes.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn own_commit_relayed_back_by_the_ds_is_applied_not_refused() {
    let mut room = Room::open(3);
    let b = room.s(0).self_update(T0).unwrap();
    for i in 1..3 {
        room.s(i).process(&b.commit, T0).unwrap();
    }
    // The DS fans the accepted commit out to everyone, the author included.
    match room.s(0).process(&b.commit, T0).unwrap() {
        Incoming::Commit {
            change,
            discarded_own_commit,
        } => {
            assert!(!discarded_own_commit);
            assert_eq!(change.epoch, room.s(1).epoch());
        }
        other => panic!("{other:?}"),
    }
    assert!(!room.s(0).has_pending_commit());
    let codes = room.codes();
    assert!(codes.windows(2).all(|w| w[0] == w[1]));
}

//! Forged, replayed and misdirected MLS messages, and a server that tries to add a ghost:
//! each is rejected and leaves honest members where they were.

use crate::common;
use common::*;
use conclave_e2ee::*;
use mls_rs::group::ExportedTree;

fn unchanged(room: &mut Room, members: &[usize], epoch: u64, code: &SecurityCode) {
    for &i in members {
        assert_eq!(room.s(i).epoch(), epoch, "member {i} stayed in its epoch");
        assert_eq!(&room.s(i).security_code().unwrap(), code);
    }
}

#[test]
fn commit_with_forged_signature_or_altered_content_is_rejected() {
    let mut room = Room::open(3);
    let epoch = room.s(1).epoch();
    let code = room.s(1).security_code().unwrap();
    let bundle = room.s(0).self_update(T0).unwrap();
    for pos in [
        bundle.commit.len() - 1,
        bundle.commit.len() - 40,
        bundle.commit.len() / 2,
        30,
    ] {
        let mut bad = bundle.commit.clone();
        bad[pos] ^= 0x01;
        for i in 1..3 {
            assert!(
                room.s(i).process(&bad, T0).is_err(),
                "flip at {pos} rejected by {i}"
            );
        }
        unchanged(&mut room, &[1, 2], epoch, &code);
    }
    // Truncated.
    for len in [0, 1, 10, bundle.commit.len() - 1] {
        let err = room.s(1).process(&bundle.commit[..len], T0).unwrap_err();
        assert!(
            matches!(err, Error::MalformedMessage(_) | Error::Mls(_)),
            "{err:?}"
        );
    }
    // The genuine commit still applies afterwards.
    room.deliver(0, &bundle.commit);
    assert_eq!(room.s(1).epoch(), epoch + 1);
}

#[test]
fn commit_from_a_removed_member_is_rejected() {
    let mut room = Room::open(4);
    // Member 3 is removed, but keeps its stale state and tries to commit to the group.
    let mut stale = {
        let leaf = room.s(3).own_leaf();
        let b = room.s(0).commit(&[], &[leaf], T0).unwrap();
        let stale = room.sessions[3].take().unwrap();
        room.deliver(0, &b.commit);
        stale
    };
    let epoch = room.s(1).epoch();
    let code = room.s(1).security_code().unwrap();
    let forged = stale.self_update(T0).unwrap();
    for i in 0..3 {
        assert!(room.s(i).process(&forged.commit, T0).is_err());
    }
    unchanged(&mut room, &[0, 1, 2], epoch, &code);
    // A frame sealed by the removed member's stale keys does not open either.
    let mut m = MediaCrypto::default();
    m.install_epoch(stale.epoch_secrets().unwrap(), T0).unwrap();
    let mut wire = Vec::new();
    m.seal(b"still here?", ClearPrefix::None, &mut wire)
        .unwrap();
    let mut receiver = room.media(1);
    let mut out = Vec::new();
    assert!(receiver
        .open(&wire, ClearPrefix::None, &mut out, T0)
        .is_err());
}

#[test]
fn commit_from_another_group_is_rejected() {
    let mut room = Room::open(3);
    let mut other = Room::open(3);
    let epoch = room.s(1).epoch();
    let code = room.s(1).security_code().unwrap();
    let foreign = other.s(0).self_update(T0).unwrap();
    let err = room.s(1).process(&foreign.commit, T0).unwrap_err();
    assert!(matches!(err, Error::Mls(_)), "{err:?}");
    unchanged(&mut room, &[1], epoch, &code);
}

#[test]
fn replayed_old_commit_is_rejected() {
    let mut room = Room::open(3);
    let first = room.s(0).self_update(T0).unwrap();
    room.deliver(0, &first.commit);
    let second = room.s(1).self_update(T0).unwrap();
    room.deliver(1, &second.commit);
    let epoch = room.s(2).epoch();
    let code = room.s(2).security_code().unwrap();
    for old in [&first.commit, &second.commit] {
        assert!(room.s(2).process(old, T0).is_err());
    }
    unchanged(&mut room, &[2], epoch, &code);
}

#[test]
fn server_may_only_propose_removals() {
    let (server_id, server_key) = server_identity();
    let mut room = Room::with_policy(3, |_| RoomPolicy::open("room"), Some(server_id.clone()));
    let server = external_client(server_id, server_key);
    let mut view = server
        .observe_group(
            msg(&room.s(0).group_info().unwrap()),
            Some(ExportedTree::from_bytes(&room.s(0).ratchet_tree().unwrap()).unwrap()),
            None,
        )
        .unwrap();

    // The server proposes to add a ghost: every member refuses it and raises the alarm.
    let ghost = device("ghost");
    let add = view
        .propose_add(msg(&ghost.key_package(None, T0).unwrap()), vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    for i in 0..3 {
        let err = room.s(i).process(&add, T0).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Policy(PolicyViolation::ExternalSenderMayOnlyRemove(_))
            ),
            "{err:?}"
        );
    }
    // The next commit leaves the ghost out: no Welcome, same members.
    let b = room.s(0).self_update(T0).unwrap();
    assert!(b.welcome.is_none(), "no Welcome for the ghost");
    room.deliver(0, &b.commit);
    assert_eq!(room.s(1).member_count(), 3);
    assert!(room
        .s(2)
        .roster()
        .unwrap()
        .iter()
        .all(|e| e.user_id != "ghost"));

    // A removal proposed by the server (member 2 vanished) is accepted and committed.
    let mut view = server
        .observe_group(
            msg(&room.s(0).group_info().unwrap()),
            Some(ExportedTree::from_bytes(&room.s(0).ratchet_tree().unwrap()).unwrap()),
            None,
        )
        .unwrap();
    let leaf = room.s(2).own_leaf();
    let remove = view
        .propose_remove(leaf, vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    for i in 0..3 {
        match room.s(i).process(&remove, T0).unwrap() {
            Incoming::Proposal {
                kind,
                target,
                from_server,
            } => {
                assert_eq!((kind, target, from_server), ("remove", Some(leaf), true));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(room.s(0).pending_proposals(), 1);
    let b = room.s(1).commit(&[], &[], T0).unwrap();
    let removed = room.sessions[2].take().unwrap();
    room.deliver(1, &b.commit);
    assert_eq!(room.s(0).member_count(), 2);
    drop(removed);
}

#[test]
fn welcome_for_another_room_or_with_a_tampered_tree_is_rejected() {
    let mut room = Room::open(2);
    let joiner = device("joiner");
    let kp = joiner.key_package(None, T0).unwrap();
    let tree_before = room.s(0).ratchet_tree().unwrap();
    let b = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.deliver(0, &b.commit);
    let welcome = b.welcome.clone().unwrap();

    // The joiner knocked on "elsewhere", the Welcome is for "room".
    let err = joiner
        .join("elsewhere", &welcome, &b.ratchet_tree, T0)
        .unwrap_err();
    assert!(matches!(err, Error::Usage(_)), "{err:?}");

    // A tree from another epoch (what a lying DS could serve).
    let err = joiner.join("room", &welcome, &tree_before, T0).unwrap_err();
    assert!(matches!(err, Error::Tree(_) | Error::Mls(_)), "{err:?}");

    // Bit flips in the tree.
    for pos in [5, b.ratchet_tree.len() / 2, b.ratchet_tree.len() - 3] {
        let mut bad = b.ratchet_tree.clone();
        bad[pos] ^= 0x10;
        assert!(
            joiner.join("room", &welcome, &bad, T0).is_err(),
            "flip at {pos}"
        );
    }
    // The genuine tree works.
    let s = joiner.join("room", &welcome, &b.ratchet_tree, T0).unwrap();
    assert_eq!(
        s.security_code().unwrap(),
        room.s(0).security_code().unwrap()
    );
}

#[test]
fn oversized_or_garbage_mls_input_is_rejected_with_a_reason() {
    let mut room = Room::open(2);
    let big = vec![0u8; MAX_MLS_MESSAGE_LEN + 1];
    assert!(matches!(
        room.s(0).process(&big, T0),
        Err(Error::MalformedMessage(_))
    ));
    for garbage in [&b""[..], b"\x00", b"\x00\x01\x00\x01garbage", &[0xff; 64]] {
        assert!(room.s(0).process(garbage, T0).is_err());
    }
    let joiner = device("j");
    assert!(joiner.join("room", b"nope", b"nope", T0).is_err());
}

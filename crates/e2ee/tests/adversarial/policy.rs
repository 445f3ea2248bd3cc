//! The admission policy in the group context is enforced by every member on every commit.

use crate::common;
use common::*;
use conclave_e2ee::*;

/// A lobby room hosted by device 0 with members 1 and 2, where member 2's client is malicious
/// (it skips policy checks). Returns the room and member 2's malicious session.
fn lobby_room_with_malicious_member() -> (Room, Session) {
    let mut room = Room::with_policy(
        2,
        |host| RoomPolicy::lobby("room", &[host.identity()]),
        None,
    );
    let store = GroupStore::memory();
    let id = DeviceIdentity::generate(SUITE, CredentialInfo::new("mallory", "Mallory").unwrap())
        .unwrap();
    let bad = Device::danger_without_policy_checks(id, store).unwrap();
    let kp = bad.key_package(None, T0).unwrap();
    let bundle = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.deliver(0, &bundle.commit);
    let session = join_by(&bad, &bundle, T0).unwrap();
    room.devices.push(bad);
    room.sessions.push(None); // held by the test, outside the honest room
    (room, session)
}

#[test]
fn lobby_commit_adding_a_member_by_a_non_host_is_rejected_by_every_member() {
    let (mut room, mut mallory) = lobby_room_with_malicious_member();
    let ghost = device("ghost");
    let kp = ghost.key_package(None, T0).unwrap();

    // An honest non-host cannot even build it.
    let err = room
        .s(1)
        .commit(std::slice::from_ref(&kp), &[], T0)
        .unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyViolation::NotAHost { .. })),
        "{err:?}"
    );

    // A malicious member builds it anyway; every honest member rejects it and stays put.
    let epoch = room.s(0).epoch();
    let code = room.s(0).security_code().unwrap();
    let bundle = mallory.commit(&[kp], &[], T0).unwrap();
    for i in 0..2 {
        let err = room.s(i).process(&bundle.commit, T0).unwrap_err();
        assert!(
            matches!(err, Error::Policy(PolicyViolation::NotAHost { .. })),
            "member {i}: {err:?}"
        );
        assert_eq!(room.s(i).epoch(), epoch);
        assert_eq!(room.s(i).security_code().unwrap(), code);
        assert_eq!(room.s(i).member_count(), 3);
    }
    // And the ghost's Welcome is worthless: it names an epoch nobody honest is in.
    let ghost_session = join_by(&ghost, &bundle, T0).map(|s| s.security_code().unwrap());
    if let Ok(ghost_code) = ghost_session {
        assert_ne!(ghost_code, code);
    }
}

#[test]
fn a_member_cannot_slip_an_add_into_a_lobby_hosts_commit() {
    // Host 0 and member 1 (honest client, but the test drives its session as modified
    // software would): 1 proposes ghost's add by reference.
    let mut room = Room::with_policy(
        2,
        |host| RoomPolicy::lobby("room", &[host.identity()]),
        None,
    );
    let ghost = device("ghost");
    let kp = ghost.key_package(None, T0).unwrap();
    let proposal = room.s(1).danger_propose_add(&kp).unwrap();
    room.s(0).process(&proposal, T0).unwrap();
    let members = room.s(0).member_count();
    // The host's next commit (a self-update, say) leaves it out: no host decided on it.
    let bundle = room.s(0).self_update(T0).unwrap();
    assert!(bundle.welcome.is_none(), "the host's commit admitted ghost");
    room.deliver(0, &bundle.commit);
    assert_eq!(room.s(0).member_count(), members);
    assert_eq!(room.s(1).member_count(), members);

    // A host whose client skips the checks commits such an add anyway: every honest member
    // refuses it and stays where it was.
    let host = Device::danger_without_policy_checks(
        DeviceIdentity::generate(SUITE, CredentialInfo::new("h", "H").unwrap()).unwrap(),
        GroupStore::memory(),
    )
    .unwrap();
    let mut bad_host = host
        .create_room(RoomPolicy::lobby("room", &[host.identity()]), None, T0)
        .unwrap();
    let honest = device("honest");
    let b = bad_host
        .commit(&[honest.key_package(None, T0).unwrap()], &[], T0)
        .unwrap();
    bad_host.confirm_commit().unwrap();
    let mut honest_s = join_by(&honest, &b, T0).unwrap();
    let ghost = device("ghost2");
    let p = honest_s
        .danger_propose_add(&ghost.key_package(None, T0).unwrap())
        .unwrap();
    bad_host.process(&p, T0).unwrap();
    let commit = bad_host.self_update(T0).unwrap();
    let err = honest_s.process(&commit.commit, T0).unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyViolation::AddNotFromHost)),
        "{err:?}"
    );
    assert_eq!(honest_s.member_count(), 2);
}

#[test]
fn lobby_host_admits_members() {
    let mut room = Room::with_policy(
        3,
        |host| RoomPolicy::lobby("room", &[host.identity()]),
        None,
    );
    assert_eq!(room.s(2).member_count(), 3);
    assert_eq!(room.s(1).policy().kind(), "lobby");
}

fn invite_room(allowed: Vec<Fingerprint>) -> (Room, Session) {
    let host = device("host");
    let policy = RoomPolicy::invite_list("room", &[host.identity()], allowed);
    let s = host.create_room(policy, None, T0).unwrap();
    let room = Room {
        devices: vec![host],
        sessions: vec![Some(s)],
    };
    let id = DeviceIdentity::generate(SUITE, CredentialInfo::new("mallory", "Mallory").unwrap())
        .unwrap();
    let bad = Device::danger_without_policy_checks(id, GroupStore::memory()).unwrap();
    let invite = Invite::sign(
        room.devices[0].identity(),
        "room",
        bad.identity().fingerprint().unwrap(),
    )
    .unwrap();
    let kp = bad.key_package(Some(&invite), T0).unwrap();
    let mut room = room;
    let bundle = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.deliver(0, &bundle.commit);
    let session = join_by(&bad, &bundle, T0).unwrap();
    room.devices.push(bad);
    room.sessions.push(None); // held by the test, outside the honest room
    (room, session)
}

#[test]
fn invite_list_admits_listed_and_invited_devices() {
    let listed = device("listed");
    let (mut room, _mallory) = invite_room(vec![listed.identity().fingerprint().unwrap()]);
    // Listed by fingerprint: the host adds it.
    let kp = listed.key_package(None, T0).unwrap();
    let b = room.s(0).commit(&[kp], &[], T0).unwrap();
    room.deliver(0, &b.commit);
    let s = join_by(&listed, &b, T0).unwrap();
    room.devices.push(listed);
    room.sessions.push(Some(s));

    // Invited by the host: any member (here the listed one, not a host) may add it.
    let guest = device("guest");
    let invite = Invite::sign(
        room.devices[0].identity(),
        "room",
        guest.identity().fingerprint().unwrap(),
    )
    .unwrap();
    let invite = Invite::from_bytes(&invite.to_bytes().unwrap()).unwrap();
    let kp = guest.key_package(Some(&invite), T0).unwrap();
    let committer = room.devices.len() - 1;
    let b = room.s(committer).commit(&[kp], &[], T0).unwrap();
    room.deliver(committer, &b.commit);
    assert_eq!(room.s(0).member_count(), 4);
    // The joiner checks every member of the group: the host, the listed device, and the
    // two invited ones, whose leaves carry their invites.
    let s = join_by(&guest, &b, T0).expect("every member of the group belongs there");
    assert_eq!(s.member_count(), 4);
}

#[test]
fn invite_list_commit_adding_an_uninvited_device_is_rejected_by_every_member() {
    let (mut room, mut mallory) = invite_room(vec![]);
    let epoch = room.s(0).epoch();

    // No invite at all.
    let stranger = device("stranger");
    let kp = stranger.key_package(None, T0).unwrap();
    let b = mallory.commit(std::slice::from_ref(&kp), &[], T0).unwrap();
    let err = room.s(0).process(&b.commit, T0).unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyViolation::NotInvited { .. })),
        "{err:?}"
    );
    mallory.discard_commit();
    // The honest host cannot build it either.
    let err = room.s(0).commit(&[kp], &[], T0).unwrap_err();
    assert!(
        matches!(err, Error::Policy(PolicyViolation::NotInvited { .. })),
        "{err:?}"
    );

    let thief = device("thief");
    let sign = |signer: &DeviceIdentity, room: &str, whom: &Device| {
        Invite::sign(signer, room, whom.identity().fingerprint().unwrap()).unwrap()
    };
    let host = room.devices[0].identity();
    let cases = [
        // An invite bound to another device's key.
        (sign(host, "room", &device("other")), "another device"),
        // An invite signed by a non-host member (Mallory herself).
        (
            sign(room.devices[1].identity(), "room", &thief),
            "not signed by a host",
        ),
        // An invite for another room.
        (sign(host, "other-room", &thief), ""),
    ];
    // Mallory commits the thief with each; the host refuses it and says why.
    for (invite, why) in cases {
        let kp = thief.key_package(Some(&invite), T0).unwrap();
        let b = mallory.commit(&[kp], &[], T0).unwrap();
        let err = room.s(0).process(&b.commit, T0).unwrap_err();
        assert!(
            matches!(&err, Error::Policy(PolicyViolation::BadInvite { reason, .. }) if reason.contains(why)),
            "{why}: {err:?}"
        );
        mallory.discard_commit();
    }

    assert_eq!(room.s(0).epoch(), epoch, "nothing was applied");
    assert_eq!(room.s(0).member_count(), 2);
}

#[test]
fn open_room_admits_anyone_but_every_member_sees_them() {
    let mut room = Room::open(3);
    let before = room.codes()[0].clone();
    let idx = room.add(2, vec![device("newcomer")])[0];
    for i in 0..4 {
        let roster = room.s(i).roster().unwrap();
        assert!(
            roster.iter().any(|e| e.user_id == "newcomer"),
            "member {i} sees the newcomer"
        );
    }
    assert_ne!(room.codes()[0], before);
    assert_eq!(room.s(idx).member_count(), 4);
}

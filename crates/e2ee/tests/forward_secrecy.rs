//! Membership changes re-key media: a removed member cannot open later frames, a new member
//! cannot open earlier ones, and a self-update locks out a leaked earlier state.

mod common;
use common::*;
use conclave_e2ee::*;
use core::time::Duration;

fn seal(m: &mut MediaCrypto, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    m.seal(frame, ClearPrefix::None, &mut out).unwrap();
    out
}

#[test]
fn removed_member_cannot_decrypt_frames_sent_after_removal() {
    let mut room = Room::open(3);
    let mut sender = room.media(0);
    let mut victim = room.media(2);
    let mut out = Vec::new();

    // Before removal the victim opens frames.
    let before = seal(&mut sender, b"before removal");
    victim
        .open(&before, ClearPrefix::None, &mut out, T0)
        .unwrap();
    assert_eq!(out, b"before removal");

    room.remove(0, &[2]);
    sender
        .install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();

    // Immediately after (inside the grace window) and long after (past it), the victim's
    // keys do not open the new epoch's frames.
    let _first = seal(&mut sender, b"first frame of the new epoch");
    let after = seal(&mut sender, b"after removal");
    let err = victim
        .open(&after, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    assert!(matches!(err, FrameError::FutureEpoch { .. }), "{err:?}");
    assert!(out.is_empty(), "nothing is handed out on failure");
    let later = T0.saturating_add(Duration::from_secs(60));
    let err = victim
        .open(&after, ClearPrefix::None, &mut out, later)
        .unwrap_err();
    assert!(matches!(
        err,
        FrameError::FutureEpoch { .. } | FrameError::UnknownEpoch { .. }
    ));

    // The victim's old base key does not open the frame even if the KID is rewritten to its
    // epoch: the AEAD fails.
    let old_epoch = room.s(0).epoch() - 1;
    let forged = rewrite_kid(&after, 0, kid_of(0, old_epoch));
    let err = victim
        .open(&forged, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    assert!(matches!(err, FrameError::Authentication { .. }), "{err:?}");

    // Remaining members open it.
    let mut other = room.media(1);
    other.open(&after, ClearPrefix::None, &mut out, T0).unwrap();
    assert_eq!(out, b"after removal");
}

#[test]
fn new_member_cannot_decrypt_frames_sent_before_join() {
    let mut room = Room::open(2);
    let mut sender = room.media(0);
    let recorded = seal(&mut sender, b"said before the join");

    let idx = room.add(1, vec![device("late")])[0];
    let mut late = room.media(idx);
    let mut out = Vec::new();
    let err = late
        .open(&recorded, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    // Named for what it is: a frame from before the join, which the joiner holds no key for.
    let joined = room.s(idx).epoch();
    assert!(
        matches!(err, FrameError::BeforeJoin { epoch, .. } if epoch == joined - 1),
        "{err:?}"
    );
    assert_eq!(late.stats().before_join, 1);
    assert_eq!(late.stats().opened, 0);
    // Even with the KID rewritten to the joiner's epoch, the key differs.
    let epoch = room.s(idx).epoch();
    let forged = rewrite_kid(&recorded, 0, kid_of(0, epoch));
    let err = late
        .open(&forged, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    assert!(matches!(err, FrameError::Authentication { .. }), "{err:?}");

    // Frames of the new epoch open.
    sender
        .install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();
    let fresh = seal(&mut sender, b"after the join");
    late.open(&fresh, ClearPrefix::None, &mut out, T0).unwrap();
    assert_eq!(out, b"after the join");
}

#[test]
fn self_update_locks_out_a_leaked_earlier_state() {
    let mut room = Room::open(2);
    // Member 2 keeps its group state in a store the test can also read: the attacker copies
    // the device (identity file and group state) at this moment.
    let store = GroupStore::memory();
    let identity =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("victim", "Victim").unwrap()).unwrap();
    let identity_file = identity.to_bytes().unwrap();
    let victim = room.add(0, vec![Device::new(identity, store.clone()).unwrap()])[0];
    room.s(victim).save().unwrap();
    let group_id = room.s(victim).group_id().to_vec();
    let thief = Device::new(DeviceIdentity::from_bytes(&identity_file).unwrap(), store).unwrap();
    let mut attacker = thief.load(&group_id).unwrap();
    assert_eq!(attacker.security_code().unwrap(), room.codes()[0]);

    // While the leak is fresh, the attacker follows commits by others and opens new frames.
    let b = room.s(0).self_update(T0).unwrap();
    room.deliver(0, &b.commit);
    attacker.process(&b.commit, T0).unwrap();
    let mut spy = MediaCrypto::default();
    spy.install_epoch(attacker.epoch_secrets().unwrap(), T0)
        .unwrap();
    let mut sender = room.media(0);
    let mut out = Vec::new();
    let f = seal(&mut sender, b"readable by the holder of the leak");
    spy.open(&f, ClearPrefix::None, &mut out, T0).unwrap();

    // The victim self-updates: fresh leaf key, fresh path secrets.
    let heal = room.s(victim).self_update(T0).unwrap();
    room.deliver(victim, &heal.commit);
    assert!(
        attacker.process(&heal.commit, T0).is_err(),
        "the leaked state cannot follow"
    );

    // The next commit by someone else is closed to the attacker too.
    let next = room.s(1).self_update(T0).unwrap();
    room.deliver(1, &next.commit);
    assert!(attacker.process(&next.commit, T0).is_err());

    // And the new epoch's frames do not open with anything the attacker holds.
    sender
        .install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();
    let _first = seal(&mut sender, b"first frame of the healed epoch");
    let f = seal(&mut sender, b"healed");
    assert!(spy.open(&f, ClearPrefix::None, &mut out, T0).is_err());
    let forged = rewrite_kid(&f, 0, kid_of(0, attacker.epoch()));
    let err = spy
        .open(&forged, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    assert!(matches!(err, FrameError::Authentication { .. }), "{err:?}");
    assert_eq!(spy.stats().opened, 1);
}

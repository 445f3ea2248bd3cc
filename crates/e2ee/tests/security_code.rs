//! The meeting security code: the same for everyone in an epoch, new on every membership
//! change, different on a fork.

mod common;
use common::*;

#[test]
fn all_members_derive_the_same_security_code() {
    let room = Room::open(5);
    let codes = room.codes();
    assert_eq!(codes.len(), 5);
    assert!(codes.windows(2).all(|w| w[0] == w[1]), "{codes:?}");
    // Six groups of five digits.
    let code = codes[0].as_str();
    assert_eq!(code.split(' ').count(), 6);
    assert!(code
        .split(' ')
        .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit())));
}

#[test]
fn security_code_changes_on_every_add_and_remove() {
    let mut room = Room::open(3);
    let mut seen = vec![room.codes()[0].clone()];

    room.add(1, vec![device("late")]);
    let after_add = room.codes();
    assert!(after_add.windows(2).all(|w| w[0] == w[1]));
    assert!(!seen.contains(&after_add[0]), "add changed the code");
    seen.push(after_add[0].clone());

    room.remove(0, &[2]);
    let after_remove = room.codes();
    assert_eq!(after_remove.len(), 3);
    assert!(after_remove.windows(2).all(|w| w[0] == w[1]));
    assert!(!seen.contains(&after_remove[0]), "remove changed the code");
    seen.push(after_remove[0].clone());

    // A self-update (no membership change) also moves to a new epoch and a new code.
    let b = room.s(1).self_update(T0).unwrap();
    room.deliver(1, &b.commit);
    let after_update = room.codes();
    assert!(!seen.contains(&after_update[0]));
}

#[test]
fn forked_member_gets_a_different_security_code() {
    let mut room = Room::open(4);
    // Two members commit in the same epoch; a malicious DS delivers A's commit to members
    // 0 and 1, and B's commit to members 2 and 3.
    let a = room.s(0).self_update(T0).unwrap();
    let b = room.s(2).self_update(T0).unwrap();
    room.s(0).confirm_commit().unwrap();
    room.s(1).process(&a.commit, T0).unwrap();
    room.s(2).confirm_commit().unwrap();
    room.s(3).process(&b.commit, T0).unwrap();

    let codes = room.codes();
    assert_eq!(
        room.s(0).epoch(),
        room.s(3).epoch(),
        "same epoch number on both branches"
    );
    assert_eq!(codes[0], codes[1]);
    assert_eq!(codes[2], codes[3]);
    assert_ne!(codes[0], codes[2], "the fork shows in the security code");
}

#[test]
fn fingerprints_in_roster_match_device_keys() {
    let mut room = Room::open(3);
    let roster = room.s(1).roster().unwrap();
    assert_eq!(roster.len(), 3);
    for (i, entry) in roster.iter().enumerate() {
        let fp = room.devices[i].identity().fingerprint().unwrap();
        assert_eq!(entry.fingerprint, fp);
        assert_eq!(entry.user_id, format!("m{i}"));
    }
    // Every member sees the same roster.
    let r0 = room.s(0).roster().unwrap();
    let r2 = room.s(2).roster().unwrap();
    assert_eq!(r0, roster);
    assert_eq!(r2, roster);
}

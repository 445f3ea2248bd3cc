//! Frames that are replayed, truncated, tampered with or sealed under keys that do not belong
//! are rejected with a typed error and counted; keys of past epochs are erased after the grace
//! window; frames for the next epoch are held, not lost.

use crate::common;
use common::*;
use conclave_e2ee::*;
use core::time::Duration;

fn pair() -> (Room, MediaCrypto, MediaCrypto) {
    let mut room = Room::open(3);
    let a = room.media(0);
    let b = room.media(1);
    (room, a, b)
}

/// Member 2 updates itself; member 0 (media `a`) applies the commit and sends under the new
/// epoch, member 1 has not seen it yet. Returns the commit.
fn sender_ahead(room: &mut Room, a: &mut MediaCrypto) -> CommitBundle {
    let bundle = room.s(2).self_update(T0).unwrap();
    room.s(2).confirm_commit().unwrap();
    room.s(0).process(&bundle.commit, T0).unwrap();
    a.install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();
    bundle
}

fn seal(m: &mut MediaCrypto, frame: &[u8], clear: ClearPrefix) -> Vec<u8> {
    let mut out = Vec::new();
    m.seal(frame, clear, &mut out).unwrap();
    out
}

/// A VP8 keyframe-shaped frame: P bit clear, then the start code and dimensions.
fn vp8_keyframe(len: usize) -> Vec<u8> {
    let mut f = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
    f.extend((0..len).map(|i| (i * 7) as u8));
    f
}

#[test]
fn replayed_frames_are_rejected_and_counted() {
    let (_room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let f0 = seal(&mut a, b"zero", ClearPrefix::None);
    let f1 = seal(&mut a, b"one", ClearPrefix::None);
    b.open(&f1, ClearPrefix::None, &mut out, T0).unwrap();
    // Reordering inside the window is fine.
    b.open(&f0, ClearPrefix::None, &mut out, T0).unwrap();
    for f in [&f0, &f1] {
        let err = b.open(f, ClearPrefix::None, &mut out, T0).unwrap_err();
        assert!(
            matches!(err, FrameError::Replayed { sender: 0, .. }),
            "{err:?}"
        );
    }
    // Beyond the window: too old.
    let old = seal(&mut a, b"old", ClearPrefix::None);
    let window = media::REPLAY_WINDOW;
    for _ in 0..window + 10 {
        let f = seal(&mut a, b"x", ClearPrefix::None);
        b.open(&f, ClearPrefix::None, &mut out, T0).unwrap();
    }
    let err = b.open(&old, ClearPrefix::None, &mut out, T0).unwrap_err();
    assert!(matches!(err, FrameError::TooOld { .. }), "{err:?}");
    assert_eq!(b.stats().replayed, 3);
    assert_eq!(b.stats().opened, window + 12);
    // Inside the window, far back, a frame not seen yet still opens once.
    let mut late = Vec::new();
    for i in 0..600 {
        let f = seal(&mut a, b"y", ClearPrefix::None);
        if i == 0 {
            late = f;
        } else {
            b.open(&f, ClearPrefix::None, &mut out, T0).unwrap();
        }
    }
    b.open(&late, ClearPrefix::None, &mut out, T0).unwrap();
    assert!(b.open(&late, ClearPrefix::None, &mut out, T0).is_err());
}

#[test]
fn truncated_frames_are_rejected_and_counted() {
    let (_room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let f = seal(
        &mut a,
        b"a frame long enough to cut in many places",
        ClearPrefix::None,
    );
    for len in 0..f.len() {
        let err = b
            .open(&f[..len], ClearPrefix::None, &mut out, T0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Malformed(_) | FrameError::Authentication { .. }
            ),
            "len {len}: {err:?}"
        );
        assert!(out.is_empty());
    }
    assert_eq!(b.stats().opened, 0);
    assert_eq!(b.stats().rejected(), f.len() as u64);
}

#[test]
fn tampered_payload_header_or_clear_prefix_fails_authentication() {
    let (_room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let frame = vp8_keyframe(300);
    let f = seal(&mut a, &frame, ClearPrefix::Vp8);
    assert_eq!(&f[..10], &frame[..10], "the VP8 prefix stays clear");
    assert_ne!(&f[12..40], &frame[12..40], "the rest is encrypted");

    // Clear prefix (bytes 1..10; byte 0 carries the P bit that decides the prefix length),
    // the SFrame header's counter byte, payload and tag.
    let header_ctr = 10 + 1;
    for pos in [1, 5, 9, header_ctr, 20, f.len() / 2, f.len() - 1] {
        let mut bad = f.clone();
        bad[pos] ^= 0x04;
        let err = b.open(&bad, ClearPrefix::Vp8, &mut out, T0).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Authentication { .. } | FrameError::Replayed { .. }
            ),
            "pos {pos}: {err:?}"
        );
    }
    // Flipping the P bit changes how much is clear: still rejected.
    let mut bad = f.clone();
    bad[0] ^= 0x01;
    assert!(b.open(&bad, ClearPrefix::Vp8, &mut out, T0).is_err());

    let before = b.stats().auth_failed;
    assert!(before >= 6);
    b.open(&f, ClearPrefix::Vp8, &mut out, T0).unwrap();
    assert_eq!(out, frame, "the genuine frame opens to the original bytes");
}

#[test]
fn bogus_kids_are_rejected_without_growing_state() {
    let (room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let f = seal(&mut a, b"payload", ClearPrefix::None);
    let epoch = b.sending_epoch().unwrap();
    // A leaf that is not in the group.
    let bad = rewrite_kid(&f, 0, kid_of(777, epoch));
    let err = b.open(&bad, ClearPrefix::None, &mut out, T0).unwrap_err();
    assert!(
        matches!(err, FrameError::UnknownSender { sender: 777, .. }),
        "{err:?}"
    );
    // A non-zero context.
    let bad = rewrite_kid(&f, 0, kid_of(0, epoch) | (5 << 24));
    assert!(matches!(
        b.open(&bad, ClearPrefix::None, &mut out, T0),
        Err(FrameError::ForeignContext(_))
    ));
    // An epoch far from ours.
    let bad = rewrite_kid(&f, 0, kid_of(0, epoch + 100));
    assert!(matches!(
        b.open(&bad, ClearPrefix::None, &mut out, T0),
        Err(FrameError::UnknownEpoch { .. })
    ));
    // A member's leaf, but the frame was sealed by another: the derived key differs.
    let bad = rewrite_kid(&f, 0, kid_of(2, epoch));
    assert!(matches!(
        b.open(&bad, ClearPrefix::None, &mut out, T0),
        Err(FrameError::Authentication { sender: 2 })
    ));
    // 10,000 random KIDs: all rejected, nothing opened.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bad = rewrite_kid(&f, 0, x >> 20);
        assert!(b.open(&bad, ClearPrefix::None, &mut out, T0).is_err());
    }
    assert_eq!(b.stats().opened, 0);
    drop(room);
}

#[test]
fn previous_epoch_keys_open_frames_within_grace_and_are_erased_after() {
    let (mut room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let in_flight = seal(&mut a, b"sealed just before the change", ClearPrefix::None);
    let late = seal(
        &mut a,
        b"sealed before the change, delivered too late",
        ClearPrefix::None,
    );

    let bundle = room.s(2).self_update(T0).unwrap();
    room.deliver(2, &bundle.commit);
    a.install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();
    b.install_epoch(room.s(1).epoch_secrets().unwrap(), T0)
        .unwrap();

    // Inside the grace window (default 2 s) the in-flight frame still opens.
    let t1 = T0.saturating_add(Duration::from_millis(1500));
    b.open(&in_flight, ClearPrefix::None, &mut out, t1).unwrap();
    assert_eq!(b.stats().opened_in_grace, 1);
    assert_eq!(
        b.poll_timeout(),
        Some(T0.saturating_add(Duration::from_secs(2)))
    );

    // After it, the old keys are gone.
    let t2 = T0.saturating_add(Duration::from_millis(2001));
    b.handle_timeout(t2);
    assert_eq!(b.live_epochs(), vec![room.s(1).epoch()]);
    assert_eq!(b.poll_timeout(), None);
    let err = b.open(&late, ClearPrefix::None, &mut out, t2).unwrap_err();
    assert!(matches!(err, FrameError::Expired { .. }), "{err:?}");
}

/// While a large meeting fills up, epochs change several times a second. A sender that is a
/// few epochs behind (it has not applied the newest commits yet) must still be heard for the
/// whole grace window, not only for the last few epochs.
#[test]
fn a_sender_many_epochs_behind_is_opened_within_the_grace_window() {
    let (mut room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let lagging = seal(&mut a, b"sealed ten epochs ago", ClearPrefix::None);
    let first = room.s(1).epoch();
    for i in 0..10u64 {
        let bundle = room.s(2).self_update(T0).unwrap();
        room.deliver(2, &bundle.commit);
        let t = T0.saturating_add(Duration::from_millis(100 * i));
        b.install_epoch(room.s(1).epoch_secrets().unwrap(), t)
            .unwrap();
    }
    assert_eq!(room.s(1).epoch(), first + 10);
    assert_eq!(b.live_epochs().len(), 11);
    let t = T0.saturating_add(Duration::from_millis(1500));
    let info = b.open(&lagging, ClearPrefix::None, &mut out, t).unwrap();
    assert_eq!(info.epoch, first);
    assert_eq!(out, b"sealed ten epochs ago");
    // The keys of the first epoch go 2 s after the first newer epoch came; the others later.
    b.handle_timeout(T0.saturating_add(Duration::from_millis(2000)));
    assert!(!b.live_epochs().contains(&first));
    b.handle_timeout(T0.saturating_add(Duration::from_millis(2901)));
    assert_eq!(b.live_epochs(), vec![first + 10]);
    let err = b
        .open(&lagging, ClearPrefix::None, &mut out, T0)
        .unwrap_err();
    assert!(matches!(err, FrameError::Expired { .. }), "{err:?}");
}

#[test]
fn frames_for_the_next_epoch_are_held_and_opened_once_the_commit_is_applied() {
    let (mut room, mut a, mut b) = pair();
    // Member 0 applies the commit first and starts sending under the new epoch...
    let bundle = sender_ahead(&mut room, &mut a);
    let early: Vec<Vec<u8>> = (0..5)
        .map(|i| seal(&mut a, format!("frame {i}").as_bytes(), ClearPrefix::None))
        .collect();

    // ...before member 1 has the commit: its frames are held, not dropped.
    let mut hold = HoldQueue::new(64, Duration::from_secs(5));
    let mut out = Vec::new();
    for (i, f) in early.iter().enumerate() {
        match b.open(f, ClearPrefix::None, &mut out, T0) {
            Err(FrameError::FutureEpoch { .. }) => hold.hold(i, f.clone(), ClearPrefix::None, T0),
            other => panic!("expected a future-epoch frame, got {other:?}"),
        }
    }
    assert_eq!(hold.len(), 5);

    // Member 1 applies the commit: every held frame opens, none is lost.
    room.s(1).process(&bundle.commit, T0).unwrap();
    b.install_epoch(room.s(1).epoch_secrets().unwrap(), T0)
        .unwrap();
    let t = T0.saturating_add(Duration::from_millis(80));
    let released = hold.release(&mut b, t);
    assert_eq!(released.len(), 5);
    for (i, r) in released {
        let (_, plain) = r.unwrap();
        assert_eq!(plain, format!("frame {i}").as_bytes());
    }
    assert!(hold.is_empty());
    assert_eq!(hold.dropped(), 0);
}

#[test]
fn hold_queue_is_bounded_in_count_and_time() {
    let (mut room, mut a, mut b) = pair();
    let _ = sender_ahead(&mut room, &mut a);
    let mut hold = HoldQueue::new(4, Duration::from_millis(500));
    for i in 0..10 {
        hold.hold(
            i,
            seal(&mut a, b"f", ClearPrefix::None),
            ClearPrefix::None,
            T0,
        );
    }
    assert_eq!(hold.len(), 4);
    assert_eq!(hold.dropped(), 6);
    // Still ahead of member 1 after the time limit: dropped.
    let released = hold.release(&mut b, T0.saturating_add(Duration::from_secs(1)));
    assert!(released.is_empty());
    assert_eq!(hold.dropped(), 10);
}

#[test]
fn hold_queue_is_bounded_in_bytes_against_a_hostile_sfu() {
    // A hostile SFU sends only large frames for an epoch that never comes: the client holds
    // at most its byte budget (the count bound alone would allow 512 x 1 MB).
    let mut hold = HoldQueue::new(512, Duration::from_secs(3)).with_max_bytes(4 << 20);
    for i in 0..512 {
        hold.hold(i, vec![0xAB; 1 << 20], ClearPrefix::None, T0);
        assert!(hold.held_bytes() <= 4 << 20);
    }
    assert_eq!(hold.len(), 4);
    assert_eq!(hold.dropped(), 508);
    // A frame over the whole budget is not held at all.
    hold.hold(999, vec![0; (4 << 20) + 1], ClearPrefix::None, T0);
    assert_eq!(hold.len(), 4);
    // The default budget is in bytes too.
    let mut default = HoldQueue::new(100_000, Duration::from_secs(3));
    for i in 0..100 {
        default.hold(i, vec![0; 1 << 20], ClearPrefix::None, T0);
    }
    assert!(
        default.held_bytes() <= DEFAULT_HOLD_BYTES,
        "{}",
        default.held_bytes()
    );
}

#[test]
fn a_group_with_a_leaf_beyond_what_a_kid_can_name_gets_no_media_keys() {
    // Leaf 65,536 would alias leaf 0 in a 16-bit KID (same nonces under another sender's
    // key); a group that has one is refused media keys, as sender or as a member.
    for (own, members) in [(65_536u32, vec![0, 65_536]), (0, vec![0, 65_536])] {
        let mut m = MediaCrypto::default();
        let secrets = EpochSecrets::from_base_key(SUITE, 1, &[7; 16], own, members);
        let err = m.install_epoch(secrets, T0).unwrap_err();
        assert!(err.to_string().contains("leaf index"), "{err}");
        let mut wire = Vec::new();
        assert!(m.seal(b"x", ClearPrefix::None, &mut wire).is_err());
    }
    let mut m = MediaCrypto::default();
    let ok = EpochSecrets::from_base_key(SUITE, 1, &[7; 16], 65_535, vec![0, 65_535]);
    m.install_epoch(ok, T0).unwrap();
}

#[test]
fn nothing_is_sealed_before_keys_exist() {
    let mut m = MediaCrypto::default();
    let mut out = vec![1, 2, 3];
    assert_eq!(
        m.seal(b"hello", ClearPrefix::None, &mut out),
        Err(FrameError::NotReady)
    );
    assert!(out.is_empty(), "no clear media comes out");
    assert!(matches!(
        m.open(b"\x00abc", ClearPrefix::None, &mut out, T0),
        Err(FrameError::NotReady | FrameError::Malformed(_))
    ));
}

#[test]
fn oversized_frames_are_rejected() {
    let (_room, mut a, mut b) = pair();
    let big = vec![0u8; media::MAX_FRAME_LEN + 1];
    let mut out = Vec::new();
    assert_eq!(
        a.seal(&big, ClearPrefix::None, &mut out),
        Err(FrameError::TooLarge(big.len()))
    );
    assert!(matches!(
        b.open(&big, ClearPrefix::None, &mut out, T0),
        Err(FrameError::TooLarge(_))
    ));
}

#[test]
fn removed_member_that_keeps_sending_is_rejected_once_the_grace_window_ends() {
    let mut room = Room::open(3);
    let mut a = room.media(0);
    let mut c = room.media(2);
    room.remove(0, &[2]);
    a.install_epoch(room.s(0).epoch_secrets().unwrap(), T0)
        .unwrap();
    let mut out = Vec::new();
    // The removed member keeps sealing under the only key it has: the old epoch's.
    let during = seal(&mut c, b"still here", ClearPrefix::None);
    let after = seal(&mut c, b"still here, later", ClearPrefix::None);
    // Inside the 2 s grace window the old key still opens it (documented in SECURITY.md:
    // frames in flight during a change are not lost) ...
    let t1 = T0.saturating_add(Duration::from_millis(500));
    a.open(&during, ClearPrefix::None, &mut out, t1).unwrap();
    // ... after it the old keys are erased and nothing of the removed member opens again.
    let t2 = T0.saturating_add(Duration::from_millis(2001));
    a.handle_timeout(t2);
    let err = a.open(&after, ClearPrefix::None, &mut out, t2).unwrap_err();
    assert!(matches!(err, FrameError::Expired { .. }), "{err:?}");
    // It cannot move to the new epoch: it has no key for it, so it cannot seal under it.
    let new_epoch = room.s(0).epoch();
    let forged = rewrite_kid(&after, 0, kid_of(2, new_epoch));
    let err = a
        .open(&forged, ClearPrefix::None, &mut out, t2)
        .unwrap_err();
    assert!(
        !matches!(err, FrameError::Replayed { .. }),
        "a frame relabelled to the new epoch was judged on replay, not on its key: {err:?}"
    );
    assert_eq!(a.stats().opened, 1);
}

#[test]
fn server_cannot_downgrade_media_to_plaintext() {
    // The SFU (or anyone on the path) strips the encryption and forwards bare codec frames,
    // or frames shaped like SFrame but sealed under no key we hold: none of it is ever
    // returned as media; each fails with a typed error and is counted.
    let (_room, mut a, mut b) = pair();
    let mut out = Vec::new();
    let plain_video = vp8_keyframe(200);
    let plain_audio = vec![0xfc, 0xff, 0xfe, 1, 2, 3, 4, 5];
    for (frame, clear) in [
        (&plain_video, ClearPrefix::Vp8),
        (&plain_audio, ClearPrefix::None),
    ] {
        let err = b.open(frame, clear, &mut out, T0).unwrap_err();
        assert!(!matches!(err, FrameError::Replayed { .. }), "{err:?}");
    }
    // Stripping the ciphertext but keeping a real header does not work either.
    let sealed = seal(&mut a, &vp8_keyframe(100), ClearPrefix::Vp8);
    let header_only = sealed[..10 + 3].to_vec();
    assert!(b
        .open(&header_only, ClearPrefix::Vp8, &mut out, T0)
        .is_err());
    assert_eq!(b.stats().opened, 0);
    // And a sender without a key sends nothing rather than plaintext.
    let mut keyless = MediaCrypto::default();
    let mut wire = Vec::new();
    assert!(keyless
        .seal(&plain_video, ClearPrefix::Vp8, &mut wire)
        .is_err());
    assert!(wire.is_empty());
}

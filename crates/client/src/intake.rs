//! The receive side of the frame path, shared by the native runtime and the browser: every
//! received frame is opened with the participant's media keys before anything looks at it,
//! held (bounded in count, bytes and time) when it is sealed under an epoch this member has
//! not reached yet, released when that epoch's keys arrive, and counted against its sender.
//!
//! Every frame whose KID names a sender this member knows is counted as received, and then in
//! exactly one of: decrypted, failed, before join, duplicate, without keys, held, held and
//! dropped (a held frame moves to one of the others when it is released, or to "held and
//! dropped" when it expires or is pushed out). Senders are known once they were members of an
//! epoch this member was in: a hostile SFU that invents KIDs cannot grow the per-sender map.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use conclave_e2ee::{ClearPrefix, FrameError, HoldQueue, MediaCrypto, Timestamp};
use serde::Serialize;

/// Frames held for an epoch not reached yet, at most.
pub const HOLD_FRAMES: usize = 512;
/// How long a frame is held for an epoch not reached yet, at most.
pub const HOLD_TIME: Duration = Duration::from_secs(3);
/// Tags of dropped held frames kept for a runtime that has not taken them yet (between this
/// and twice this many; the oldest go first).
pub const MAX_DROPPED_TAGS: usize = 4 * HOLD_FRAMES;

/// What kind of frame: what SFrame leaves in the clear differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrameKind {
    /// Opus: all of it sealed.
    Audio,
    /// VP8: the frame tag (and a keyframe's header) stays clear for the packetizer.
    Video,
}

impl FrameKind {
    /// What stays in the clear.
    pub fn clear(self) -> ClearPrefix {
        match self {
            FrameKind::Audio => ClearPrefix::None,
            FrameKind::Video => ClearPrefix::Vp8,
        }
    }
}

/// The runtime's handle on a received frame (a browser keeps the encoded-frame object under
/// it while the frame is held).
pub type FrameTag = u64;

/// What arrived from one sender and what became of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SenderHealth {
    /// Frames that arrived naming this sender.
    pub received: u64,
    /// Frames that opened.
    pub decrypted: u64,
    /// Frames that did not open.
    pub failed: u64,
    /// Why frames failed, by kind of error.
    pub failure_kinds: BTreeMap<String, u64>,
    /// Frames that arrived twice (a retransmission duplicate): the first copy was used.
    pub duplicates: u64,
    /// Frames sealed under an epoch from before we joined (unreadable by design).
    pub before_join: u64,
    /// Frames that arrived while this device held no keys (before its first epoch or after
    /// it left).
    pub without_keys: u64,
    /// Frames held now for an epoch not reached yet.
    pub held: u64,
    /// Held frames dropped (held too long, or the queue was full): lost to a key transition.
    pub held_dropped: u64,
    /// When a frame last opened, failed, was held (ms since the Unix epoch).
    pub last_opened_ms: Option<u64>,
    /// See `last_opened_ms`.
    pub last_failed_ms: Option<u64>,
    /// See `last_opened_ms`.
    pub last_held_ms: Option<u64>,
    /// The last failure.
    pub last_error: Option<String>,
}

impl SenderHealth {
    fn fail(&mut self, e: &FrameError, now: Timestamp) {
        self.failed += 1;
        self.last_failed_ms = Some(now.as_millis());
        self.last_error = Some(e.to_string());
        let kind = format!("{e:?}");
        let kind = kind
            .split([' ', '(', '{'])
            .next()
            .unwrap_or("other")
            .to_owned();
        *self.failure_kinds.entry(kind).or_default() += 1;
    }

    /// A frame opened but its content turned out wrong (a runtime that checks it says so):
    /// counted as failed, not decrypted.
    pub fn content_failed(&mut self, kind: &str, now: Timestamp) {
        self.decrypted = self.decrypted.saturating_sub(1);
        self.failed += 1;
        self.last_failed_ms = Some(now.as_millis());
        self.last_error = Some(format!("{kind}: content not what its sender sent"));
        *self.failure_kinds.entry(kind.to_owned()).or_default() += 1;
    }
}

/// A frame that opened: on arrival, or released from the hold queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenedFrame {
    /// The runtime's tag for it.
    pub tag: FrameTag,
    /// Its kind.
    pub kind: FrameKind,
    /// Its sender (authenticated by SFrame).
    pub sender: u32,
    /// The epoch it was sealed under.
    pub epoch: u64,
    /// The plaintext.
    pub plain: Vec<u8>,
}

/// What [`MediaIntake::open`] made of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Intake {
    /// It opened.
    Opened(OpenedFrame),
    /// It is held under its tag for an epoch not reached yet.
    Held {
        /// The sender its KID names.
        sender: u32,
    },
    /// It was refused (counted against the sender its KID names, if known): never played.
    Dropped {
        /// The sender its KID names, if it names one.
        sender: Option<u32>,
    },
}

/// The receive side of the frame path (see the module docs).
#[derive(Debug)]
pub struct MediaIntake {
    held: HoldQueue<(FrameKind, FrameTag, u32)>,
    senders: BTreeMap<u32, SenderHealth>,
    released: VecDeque<OpenedFrame>,
    /// Tags of held frames dropped without opening (expired, evicted), for the runtime to let
    /// go of.
    dropped: Vec<FrameTag>,
}

impl Default for MediaIntake {
    fn default() -> Self {
        MediaIntake {
            held: HoldQueue::new(HOLD_FRAMES, HOLD_TIME),
            senders: BTreeMap::new(),
            released: VecDeque::new(),
            dropped: Vec::new(),
        }
    }
}

impl MediaIntake {
    /// Opens one received frame, counted against its sender if that is a member of an epoch
    /// whose keys `media` holds, or was one.
    pub fn open(
        &mut self,
        media: &mut MediaCrypto,
        kind: FrameKind,
        wire: &[u8],
        tag: FrameTag,
        now: Timestamp,
    ) -> Intake {
        let clear = kind.clear();
        let Ok((sender, _)) = MediaCrypto::peek(wire, clear) else {
            return Intake::Dropped { sender: None };
        };
        let counted = self.senders.contains_key(&sender) || media.is_member(sender);
        if counted {
            self.senders.entry(sender).or_default().received += 1;
        }
        let mut plain = Vec::with_capacity(wire.len());
        let result = media.open(wire, clear, &mut plain, now);
        let mut h = SenderHealth::default();
        let health = if counted {
            self.senders.entry(sender).or_default()
        } else {
            &mut h
        };
        match result {
            Ok(info) => {
                health.decrypted += 1;
                health.last_opened_ms = Some(now.as_millis());
                Intake::Opened(OpenedFrame {
                    tag,
                    kind,
                    sender: info.sender,
                    epoch: info.epoch,
                    plain,
                })
            }
            Err(FrameError::FutureEpoch { .. }) => {
                health.held += 1;
                health.last_held_ms = Some(now.as_millis());
                let evicted =
                    self.held
                        .hold_evicting((kind, tag, sender), wire.to_vec(), clear, now);
                self.forget(evicted);
                Intake::Held { sender }
            }
            Err(FrameError::Replayed { .. }) => {
                health.duplicates += 1;
                Intake::Dropped {
                    sender: Some(sender),
                }
            }
            Err(FrameError::BeforeJoin { .. }) => {
                health.before_join += 1;
                Intake::Dropped {
                    sender: Some(sender),
                }
            }
            Err(FrameError::NotReady) => {
                health.without_keys += 1;
                Intake::Dropped {
                    sender: Some(sender),
                }
            }
            Err(e) => {
                health.fail(&e, now);
                Intake::Dropped {
                    sender: Some(sender),
                }
            }
        }
    }

    /// Held frames dropped unopened: each leaves "held" for "held dropped".
    fn forget(&mut self, gone: Vec<(FrameKind, FrameTag, u32)>) {
        for (_, tag, sender) in gone {
            if let Some(h) = self.senders.get_mut(&sender) {
                h.held = h.held.saturating_sub(1);
                h.held_dropped += 1;
            }
            self.note_dropped(tag);
        }
    }

    /// Keeps `tag` for [`MediaIntake::take_dropped`], at most [`MAX_DROPPED_TAGS`] of them: a
    /// server streaming frames for a future epoch pushes one out per frame, and a runtime that
    /// takes them late must not make this list grow without bound (the oldest go first; a
    /// runtime that keeps something per tag takes them after every held frame, as both do).
    fn note_dropped(&mut self, tag: FrameTag) {
        if self.dropped.len() >= 2 * MAX_DROPPED_TAGS {
            self.dropped.drain(..MAX_DROPPED_TAGS);
        }
        self.dropped.push(tag);
    }

    /// Retries the held frames (after a new epoch's keys were installed): those that open
    /// wait in [`MediaIntake::poll_released`]; those that fail are counted and dropped.
    pub fn release(&mut self, media: &mut MediaCrypto, now: Timestamp) {
        if self.held.is_empty() {
            return;
        }
        let (released, expired) = self.held.release_expiring(media, now);
        self.forget(expired);
        for ((kind, tag, sender), result) in released {
            let h = self.senders.get_mut(&sender);
            match result {
                Ok((info, plain)) => {
                    if let Some(h) = h {
                        h.held = h.held.saturating_sub(1);
                        h.decrypted += 1;
                        h.last_opened_ms = Some(now.as_millis());
                    }
                    self.released.push_back(OpenedFrame {
                        tag,
                        kind,
                        sender: info.sender,
                        epoch: info.epoch,
                        plain,
                    });
                }
                Err(e) => {
                    if let Some(h) = h {
                        h.held = h.held.saturating_sub(1);
                        match e {
                            FrameError::Replayed { .. } => h.duplicates += 1,
                            FrameError::BeforeJoin { .. } => h.before_join += 1,
                            FrameError::NotReady => h.without_keys += 1,
                            e => h.fail(&e, now),
                        }
                    }
                    self.note_dropped(tag);
                }
            }
        }
    }

    /// The next released frame.
    pub fn poll_released(&mut self) -> Option<OpenedFrame> {
        self.released.pop_front()
    }

    /// Tags of held frames dropped without opening since the last call.
    pub fn take_dropped(&mut self) -> Vec<FrameTag> {
        std::mem::take(&mut self.dropped)
    }

    /// Drops held frames that waited too long.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let expired = self.held.expire(now);
        self.forget(expired);
    }

    /// When a held frame next expires.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.held.poll_timeout()
    }

    /// Per-sender counts, by leaf.
    pub fn senders(&self) -> &BTreeMap<u32, SenderHealth> {
        &self.senders
    }

    /// One sender's counts, to amend (a runtime that checks content).
    pub fn sender_mut(&mut self, leaf: u32) -> Option<&mut SenderHealth> {
        self.senders.get_mut(&leaf)
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Held frames dropped so far (expired or evicted).
    pub fn held_dropped(&self) -> u64 {
        self.held.dropped()
    }
}

/// A participant's frame path: its media keys and the receive side that opens with them.
/// The participant owns it and installs each epoch's keys in it; a runtime's transport (the
/// native media session, the browser's transforms) borrows it to seal and open frames.
#[derive(Debug, Default)]
pub struct FramePath {
    media: MediaCrypto,
    intake: MediaIntake,
}

impl FramePath {
    /// A frame path with these keys.
    pub fn new(media: MediaCrypto) -> Self {
        FramePath {
            media,
            intake: MediaIntake::default(),
        }
    }

    /// The key ring.
    pub fn media(&self) -> &MediaCrypto {
        &self.media
    }

    /// The key ring, to change.
    pub fn media_mut(&mut self) -> &mut MediaCrypto {
        &mut self.media
    }

    /// The receive side's counts.
    pub fn intake(&self) -> &MediaIntake {
        &self.intake
    }

    /// The receive side, to amend its counts (a runtime that checks frame content).
    pub fn intake_mut(&mut self) -> &mut MediaIntake {
        &mut self.intake
    }

    /// Installs an epoch's keys and releases the frames held for it.
    pub fn install_epoch(
        &mut self,
        secrets: conclave_e2ee::EpochSecrets,
        now: Timestamp,
    ) -> conclave_e2ee::Result<()> {
        self.media.install_epoch(secrets, now)?;
        self.release(now);
        Ok(())
    }

    /// Seals one outgoing frame into `out`; fails (`NotReady`) while there is no media key:
    /// the caller drops the frame, never sends it in the clear.
    pub fn seal(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        self.media.seal(frame, kind.clear(), out).map(|_| ())
    }

    /// Opens one received frame (`tag` is the runtime's handle on it, should it be held).
    pub fn open(&mut self, kind: FrameKind, wire: &[u8], tag: FrameTag, now: Timestamp) -> Intake {
        self.intake.open(&mut self.media, kind, wire, tag, now)
    }

    /// Retries the held frames now (see [`MediaIntake::release`]).
    pub fn release(&mut self, now: Timestamp) {
        self.intake.release(&mut self.media, now);
    }

    /// The next held frame that opened once its epoch's keys arrived.
    pub fn poll_released(&mut self) -> Option<OpenedFrame> {
        self.intake.poll_released()
    }

    /// Tags of held frames dropped unopened since the last call.
    pub fn take_dropped(&mut self) -> Vec<FrameTag> {
        self.intake.take_dropped()
    }

    /// Erases keys whose grace window ended and drops held frames that waited too long.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.media.handle_timeout(now);
        self.intake.handle_timeout(now);
    }

    /// When [`FramePath::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        [self.media.poll_timeout(), self.intake.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Erases every key (on leaving the call).
    pub fn clear(&mut self) {
        self.media.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_e2ee::{EpochSecrets, RoomCipherSuite};

    const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

    fn keys(epoch: u64, own_leaf: u32) -> EpochSecrets {
        EpochSecrets::from_base_key(
            RoomCipherSuite::Curve25519Aes128,
            epoch,
            &[epoch as u8; 16],
            own_leaf,
            vec![0, 1],
        )
    }

    /// Leaf 1's frame under `epoch`.
    fn frame(epoch: u64, body: &[u8]) -> Vec<u8> {
        let mut sender = FramePath::default();
        sender.install_epoch(keys(epoch, 1), T0).unwrap();
        let mut wire = Vec::new();
        sender.seal(FrameKind::Audio, body, &mut wire).unwrap();
        wire
    }

    #[test]
    fn a_frame_ahead_of_its_epoch_is_held_then_released_when_the_keys_come() {
        let mut rx = FramePath::default();
        rx.install_epoch(keys(1, 0), T0).unwrap();
        assert!(matches!(
            rx.open(FrameKind::Audio, &frame(1, b"now"), 1, T0),
            Intake::Opened(OpenedFrame {
                sender: 1,
                epoch: 1,
                ..
            })
        ));
        assert_eq!(
            rx.open(FrameKind::Audio, &frame(2, b"ahead"), 2, T0),
            Intake::Held { sender: 1 }
        );
        assert_eq!(rx.intake().held(), 1);
        assert_eq!(rx.poll_released(), None);
        rx.install_epoch(keys(2, 0), T0).unwrap();
        let f = rx.poll_released().expect("released with its epoch's keys");
        assert_eq!(
            (f.tag, f.sender, f.epoch, f.plain.as_slice()),
            (2, 1, 2, &b"ahead"[..])
        );
        let h = &rx.intake().senders()[&1];
        assert_eq!((h.received, h.decrypted, h.held, h.failed), (2, 2, 0, 0));
    }

    #[test]
    fn a_held_frame_expires_on_the_timer_and_its_tag_is_given_back() {
        let mut rx = FramePath::default();
        rx.install_epoch(keys(1, 0), T0).unwrap();
        rx.open(FrameKind::Audio, &frame(3, b"late"), 7, T0);
        assert_eq!(rx.poll_timeout(), Some(T0.saturating_add(HOLD_TIME)));
        rx.handle_timeout(T0.saturating_add(HOLD_TIME - Duration::from_millis(1)));
        assert_eq!(rx.intake().held(), 1, "not yet");
        rx.handle_timeout(T0.saturating_add(HOLD_TIME));
        assert_eq!(rx.intake().held(), 0);
        assert_eq!(rx.take_dropped(), vec![7]);
        let h = &rx.intake().senders()[&1];
        // Received once, in exactly one category: held, then dropped.
        assert_eq!((h.received, h.held, h.held_dropped), (1, 0, 1));
    }

    #[test]
    fn a_full_hold_queue_gives_back_the_oldest_tags() {
        let mut rx = FramePath::default();
        rx.install_epoch(keys(1, 0), T0).unwrap();
        let wire = frame(2, b"x");
        for tag in 0..HOLD_FRAMES as u64 + 3 {
            rx.open(FrameKind::Audio, &wire, tag, T0);
        }
        assert_eq!(rx.intake().held(), HOLD_FRAMES);
        assert_eq!(rx.take_dropped(), vec![0, 1, 2]);
    }

    #[test]
    fn a_stream_of_frames_for_a_future_epoch_keeps_bounded_state_when_nobody_takes_the_tags() {
        // A hostile SFU sends frames naming the next epoch, fast enough that none expires,
        // and the runtime never takes the dropped tags: everything stays bounded.
        let mut rx = FramePath::default();
        rx.install_epoch(keys(1, 0), T0).unwrap();
        let wire = frame(2, b"x");
        for tag in 0..100_000u64 {
            rx.open(FrameKind::Audio, &wire, tag, T0);
        }
        assert_eq!(rx.intake().held(), HOLD_FRAMES);
        let dropped = rx.take_dropped();
        assert!(dropped.len() <= 2 * MAX_DROPPED_TAGS, "{}", dropped.len());
        // The newest drops are the ones kept, in order.
        assert_eq!(dropped.last(), Some(&(100_000 - HOLD_FRAMES as u64 - 1)));
        assert_eq!(rx.intake().held_dropped(), 100_000 - HOLD_FRAMES as u64);
    }

    #[test]
    fn frames_naming_no_member_are_not_counted_and_every_frame_lands_in_one_count() {
        let mut rx = FramePath::default();
        rx.install_epoch(keys(1, 0), T0).unwrap();
        let mut sender = FramePath::default();
        sender.install_epoch(keys(1, 1), T0).unwrap();
        let (mut good, mut forged) = (Vec::new(), Vec::new());
        sender.seal(FrameKind::Audio, b"hello", &mut good).unwrap();
        sender
            .seal(FrameKind::Audio, b"again", &mut forged)
            .unwrap();
        rx.open(FrameKind::Audio, &good, 1, T0);
        // The same frame again: a duplicate, not a failure.
        rx.open(FrameKind::Audio, &good, 2, T0);
        // A forged frame under leaf 1's KID (a fresh counter) fails.
        if let Some(b) = forged.last_mut() {
            *b ^= 1;
        }
        rx.open(FrameKind::Audio, &forged, 3, T0);
        // A KID naming a leaf that is no member (a hostile SFU inventing senders): no entry.
        let mut stranger = FramePath::default();
        stranger
            .install_epoch(
                EpochSecrets::from_base_key(
                    RoomCipherSuite::Curve25519Aes128,
                    1,
                    &[1; 16],
                    900,
                    vec![0, 900],
                ),
                T0,
            )
            .unwrap();
        let mut w = Vec::new();
        stranger.seal(FrameKind::Audio, b"who", &mut w).unwrap();
        assert_eq!(
            rx.open(FrameKind::Audio, &w, 4, T0),
            Intake::Dropped { sender: Some(900) }
        );
        assert!(!rx.intake().senders().contains_key(&900));
        let h = &rx.intake().senders()[&1];
        assert_eq!(
            h.received,
            h.decrypted + h.failed + h.duplicates + h.before_join + h.without_keys + h.held
        );
        assert_eq!((h.decrypted, h.duplicates, h.failed), (1, 1, 1));
        assert!(h.last_error.is_some());
        // After leaving (no keys), a known sender's frames still count, as without keys.
        rx.clear();
        rx.open(FrameKind::Audio, &frame(1, b"after"), 5, T0);
        assert_eq!(rx.intake().senders()[&1].without_keys, 1);
    }
}

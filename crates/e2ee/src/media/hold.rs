//! Frames that arrived ahead of their epoch, parked until the commit is applied.

use std::collections::VecDeque;

use conclave_mls::Timestamp;
use core::time::Duration;

use super::{ClearPrefix, FrameError, FrameInfo, MediaCrypto};

/// What became of a held frame: opened (with its plaintext) or rejected.
pub type Released = Result<(FrameInfo, Vec<u8>), FrameError>;

/// Most bytes a [`HoldQueue`] keeps unless told otherwise: about 3 s of eight 720p senders'
/// frames. A hostile SFU that sends only future-epoch frames makes a client hold this much,
/// not gigabytes.
pub const DEFAULT_HOLD_BYTES: usize = 8 << 20;

/// Frames that arrived for an epoch the receiver has not reached yet, parked until the commit
/// is applied. Bounded in count, in bytes and in time; `T` is whatever the caller needs to
/// route a frame once opened (a track id, an SSRC).
#[derive(Debug)]
pub struct HoldQueue<T> {
    frames: VecDeque<(Timestamp, T, ClearPrefix, Vec<u8>)>,
    max_frames: usize,
    max_bytes: usize,
    bytes: usize,
    max_age: Duration,
    dropped: u64,
}

impl<T> HoldQueue<T> {
    /// A queue of at most `max_frames` frames and [`DEFAULT_HOLD_BYTES`], each held at most
    /// `max_age`.
    pub fn new(max_frames: usize, max_age: Duration) -> Self {
        HoldQueue {
            frames: VecDeque::new(),
            max_frames,
            max_bytes: DEFAULT_HOLD_BYTES,
            bytes: 0,
            max_age,
            dropped: 0,
        }
    }

    /// The same queue, bounded to `max_bytes` of frames instead.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Parks a frame. When full (in count or bytes), the oldest frames are dropped (and
    /// counted); a frame larger than the whole byte budget is dropped itself.
    pub fn hold(&mut self, tag: T, wire: Vec<u8>, clear: ClearPrefix, now: Timestamp) {
        self.hold_evicting(tag, wire, clear, now);
    }

    /// [`HoldQueue::hold`], returning the tags of the frames dropped to make room (or of this
    /// frame, if it alone is over the byte budget), so that a caller keeping something per
    /// held frame (a browser's encoded-frame object) lets it go with them.
    pub fn hold_evicting(
        &mut self,
        tag: T,
        wire: Vec<u8>,
        clear: ClearPrefix,
        now: Timestamp,
    ) -> Vec<T> {
        let mut evicted = Vec::new();
        if wire.len() > self.max_bytes {
            self.dropped += 1;
            evicted.push(tag);
            return evicted;
        }
        while self.frames.len() >= self.max_frames || self.bytes + wire.len() > self.max_bytes {
            let Some((_, old_tag, _, old)) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            self.dropped += 1;
            evicted.push(old_tag);
        }
        self.bytes += wire.len();
        self.frames.push_back((now, tag, clear, wire));
        evicted
    }

    /// Drops the frames held longer than the queue's age bound, returning their tags.
    pub fn expire(&mut self, now: Timestamp) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some((arrived, ..)) = self.frames.front() {
            if now.saturating_since(*arrived) < self.max_age {
                break;
            }
            if let Some((_, tag, _, wire)) = self.frames.pop_front() {
                self.bytes -= wire.len();
                self.dropped += 1;
                expired.push(tag);
            }
        }
        expired
    }

    /// When the oldest held frame is due to expire ([`HoldQueue::expire`]).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.frames
            .front()
            .map(|(arrived, ..)| arrived.saturating_add(self.max_age))
    }

    /// Bytes of frames held now.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames held now.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Frames dropped because the queue was full or they waited too long.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Tries every held frame again (after a new epoch was installed). Frames still ahead stay
    /// held unless too old; every other outcome is returned.
    pub fn release(&mut self, media: &mut MediaCrypto, now: Timestamp) -> Vec<(T, Released)> {
        self.release_expiring(media, now).0
    }

    /// [`HoldQueue::release`], also returning the tags of the frames that were still ahead
    /// and too old, and so dropped.
    #[allow(clippy::type_complexity)]
    pub fn release_expiring(
        &mut self,
        media: &mut MediaCrypto,
        now: Timestamp,
    ) -> (Vec<(T, Released)>, Vec<T>) {
        let mut out = Vec::new();
        let mut expired = Vec::new();
        let mut keep = VecDeque::new();
        for (arrived, tag, clear, wire) in self.frames.drain(..) {
            let mut plain = Vec::new();
            match media.open(&wire, clear, &mut plain, now) {
                Err(FrameError::FutureEpoch { .. }) => {
                    if now.saturating_since(arrived) < self.max_age {
                        keep.push_back((arrived, tag, clear, wire));
                    } else {
                        self.bytes -= wire.len();
                        self.dropped += 1;
                        expired.push(tag);
                    }
                }
                Ok(info) => {
                    self.bytes -= wire.len();
                    out.push((tag, Ok((info, plain))))
                }
                Err(e) => {
                    self.bytes -= wire.len();
                    out.push((tag, Err(e)))
                }
            }
        }
        // `open` counted each retried future-epoch frame again; that count means "seen".
        self.frames = keep;
        (out, expired)
    }
}

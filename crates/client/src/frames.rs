//! The participant's timers and its frame path: the rest of its sans-IO loop. A runtime calls
//! [`Participant::handle_timeout`] when [`Participant::poll_timeout`] says, and passes every
//! frame through [`Participant::seal_frame`] (outgoing) or [`Participant::open_frame`]
//! (incoming); it plays only what [`Participant::open_frame`] and
//! [`Participant::poll_released`] hand back.

use std::time::Duration;

use conclave_e2ee::{FrameError, SelfUpdateTimer, Timestamp};

use crate::intake::{FrameKind, FramePath, FrameTag, Intake, MediaIntake, OpenedFrame};
use crate::{Error, Participant};

/// Jitter of the periodic self-update, in permille of its period.
const SELF_UPDATE_JITTER_PERMILLE: u16 = 200;

/// splitmix64: spreads the runtime's random seed over successive jitter draws (timing only,
/// never key material).
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Participant {
    /// Commits a self-update (post-compromise security) every `every`, give or take 20%,
    /// counted from each epoch change; `seed` is a random value from the runtime for the
    /// jitter. Off until set.
    pub fn set_self_update(&mut self, every: Duration, seed: u64) {
        self.update = Some(SelfUpdateTimer::new(every, SELF_UPDATE_JITTER_PERMILLE));
        self.rng ^= seed;
    }

    /// Mixes a random value from the runtime into the jitter of the timers.
    pub fn add_randomness(&mut self, random: u64) {
        self.rng ^= random;
        next_random(&mut self.rng);
    }

    /// Restarts the self-update countdown (on every epoch change).
    pub(crate) fn arm_self_update(&mut self, now: Timestamp) {
        let r = next_random(&mut self.rng);
        if let Some(t) = self.update.as_mut() {
            t.arm(now, r);
        }
    }

    /// When [`Participant::handle_timeout`] next has work: old epochs' keys to erase, held
    /// frames to expire, a self-update to commit.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let update = self
            .update
            .as_ref()
            .filter(|_| self.session.is_some() && !self.left)
            .and_then(SelfUpdateTimer::poll_timeout);
        [self.frames.poll_timeout(), update]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does what is due at `now`: erases the keys of epochs whose grace window ended, drops
    /// held frames that waited too long, and starts a due self-update.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), Error> {
        self.frames.handle_timeout(now);
        let due = self.update.as_ref().is_some_and(|t| t.is_due(now));
        if due && self.session.is_some() && !self.left {
            self.arm_self_update(now);
            self.self_update(now)?;
        }
        Ok(())
    }

    /// Seals one outgoing frame into `out`. Fails (`NotReady`) while there is no media key:
    /// the caller drops the frame, never sends it in the clear.
    pub fn seal_frame(
        &mut self,
        kind: FrameKind,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        self.frames.seal(kind, frame, out)
    }

    /// Opens one received frame (`tag` is the runtime's handle on it, should it be held).
    pub fn open_frame(
        &mut self,
        kind: FrameKind,
        wire: &[u8],
        tag: FrameTag,
        now: Timestamp,
    ) -> Intake {
        self.frames.open(kind, wire, tag, now)
    }

    /// The next held frame that opened once its epoch's keys arrived.
    pub fn poll_released(&mut self) -> Option<OpenedFrame> {
        self.frames.poll_released()
    }

    /// Tags of held frames dropped unopened (expired or pushed out) since the last call.
    pub fn take_dropped_frames(&mut self) -> Vec<FrameTag> {
        self.frames.take_dropped()
    }

    /// The receive side's counts.
    pub fn intake(&self) -> &MediaIntake {
        self.frames.intake()
    }

    /// The frame path (keys and receive side), for a runtime's transport to seal and open
    /// with.
    pub fn frames(&mut self) -> &mut FramePath {
        &mut self.frames
    }

    /// The frame path, to read.
    pub fn frames_ref(&self) -> &FramePath {
        &self.frames
    }
}

//! The replay window of one sender in one epoch.

use super::{FrameError, REPLAY_WINDOW};

/// Which of a sender's last [`REPLAY_WINDOW`] counters were seen: a ring of bits indexed by
/// counter modulo the window.
#[derive(Clone, Debug, Default)]
pub(super) struct ReplayWindow {
    top: Option<u64>,
    seen: [u64; (REPLAY_WINDOW / 64) as usize],
}

impl ReplayWindow {
    pub(super) fn bit(counter: u64) -> (usize, u64) {
        let i = counter % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    pub(super) fn check(&self, sender: u32, counter: u64) -> Result<(), FrameError> {
        let Some(top) = self.top else { return Ok(()) };
        if counter > top {
            return Ok(());
        }
        if top - counter >= REPLAY_WINDOW {
            return Err(FrameError::TooOld { sender, counter });
        }
        let (w, b) = Self::bit(counter);
        if self.seen[w] & b != 0 {
            return Err(FrameError::Replayed { sender, counter });
        }
        Ok(())
    }

    pub(super) fn accept(&mut self, counter: u64) {
        match self.top {
            Some(top) if counter <= top => {}
            Some(top) if counter - top < REPLAY_WINDOW => {
                // Forget the counters the window slides past.
                for c in top + 1..counter {
                    let (w, b) = Self::bit(c);
                    self.seen[w] &= !b;
                }
                let (w, b) = Self::bit(counter);
                self.seen[w] &= !b;
                self.top = Some(counter);
            }
            _ => {
                self.seen = Default::default();
                self.top = Some(counter);
            }
        }
        let (w, b) = Self::bit(counter);
        self.seen[w] |= b;
    }
}

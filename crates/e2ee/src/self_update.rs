//! The periodic self-update's countdown.

use conclave_mls::Timestamp;

/// When this member should next refresh its leaf with a self-update (post-compromise
/// security), jittered so that members do not all commit at once. Sans-IO: the caller passes
/// the time and a random value, and asks when the next update is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelfUpdateTimer {
    period: core::time::Duration,
    jitter_permille: u16,
    due: Option<Timestamp>,
}

impl SelfUpdateTimer {
    /// Every `period` give or take `jitter_permille`/1000 of it (capped at 1000).
    pub fn new(period: core::time::Duration, jitter_permille: u16) -> Self {
        SelfUpdateTimer {
            period,
            jitter_permille: jitter_permille.min(1000),
            due: None,
        }
    }

    /// Starts (or restarts, after any commit that refreshed our leaf) the countdown from `now`.
    /// `random` is any uniformly random value (e.g. from `getrandom`).
    pub fn arm(&mut self, now: Timestamp, random: u64) {
        let period = self.period.as_millis().min(u128::from(u64::MAX)) as u64;
        let span = period / 1000 * u64::from(self.jitter_permille);
        let offset = if span == 0 {
            0
        } else {
            random % (2 * span + 1)
        };
        let ms = period.saturating_sub(span).saturating_add(offset);
        self.due = Some(now.saturating_add(core::time::Duration::from_millis(ms)));
    }

    /// When the next self-update is due, if armed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.due
    }

    /// Whether a self-update is due at `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.due.is_some_and(|d| now >= d)
    }
}

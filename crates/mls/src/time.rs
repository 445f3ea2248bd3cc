//! Time as the sans-IO core sees it: a wall-clock reading that the caller passes in.

use core::time::Duration;

/// A point in time, in milliseconds since the Unix epoch, read by the caller. The core never
/// reads a clock; every method that needs time takes one of these. (MLS KeyPackage lifetimes
/// are wall-clock times, so this is one too; simulated tests start at any fixed value.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(d.as_millis().min(u128::from(u64::MAX)) as u64),
        )
    }

    /// `self - d`, saturating at the origin.
    pub fn saturating_back(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_sub(d.as_millis().min(u128::from(u64::MAX)) as u64),
        )
    }

    /// Time from `earlier` to `self`; zero if `earlier` is later (never panics).
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl From<Timestamp> for mls_rs::time::MlsTime {
    fn from(t: Timestamp) -> Self {
        mls_rs::time::MlsTime::from(t.0 / 1000)
    }
}

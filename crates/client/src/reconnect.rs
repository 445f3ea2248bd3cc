//! When to try again after a lost connection, for every runtime (the native client and the
//! browser page use the same schedule). Each attempt joins as a new member: nothing of the
//! last membership is kept but the device.

use core::time::Duration;

/// Reconnection after a lost connection: the first wait, doubled per failed attempt up to
/// [`RECONNECT_MAX_DELAY`], with 20% jitter; [`RECONNECT_ATTEMPTS`] failures in a row end
/// the call.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between reconnection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(8);
/// Failed reconnection attempts in a row before the call is given up.
pub const RECONNECT_ATTEMPTS: u32 = 8;

/// The wait before reconnection attempt `attempt` (0-based), jittered by `random`.
pub fn reconnect_delay(attempt: u32, random: u64) -> Duration {
    let base = RECONNECT_FIRST_DELAY
        .saturating_mul(1 << attempt.min(16))
        .min(RECONNECT_MAX_DELAY);
    // 80% to 120% of the base.
    let permille = 800 + (random % 401);
    base * permille as u32 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_within_jitter_and_is_capped() {
        for attempt in 0..12 {
            let base = RECONNECT_FIRST_DELAY
                .saturating_mul(1 << attempt)
                .min(RECONNECT_MAX_DELAY);
            for r in [0u64, 200, 400, u64::MAX] {
                let d = reconnect_delay(attempt, r);
                assert!(
                    d >= base * 8 / 10 && d <= base * 12 / 10,
                    "{attempt} {r} {d:?}"
                );
            }
        }
        assert_eq!(reconnect_delay(0, 200), RECONNECT_FIRST_DELAY);
        assert_eq!(reconnect_delay(30, 200), RECONNECT_MAX_DELAY);
    }
}

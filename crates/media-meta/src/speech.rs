//! Speech detection from the RFC 6464 audio level (`-dBov`, 0 loudest, -127 silence) that a
//! sender puts on every audio packet. It is an RTP header extension, outside the end-to-end
//! encryption: the SFU reads it, and a receiver can trust it only as far as the SFU's hop.

use std::time::{Duration, Instant};

/// Audio at least this loud (RFC 6464 level, -dBov) counts as speech.
pub const SPEECH_LEVEL: i8 = -45;
/// Speech credit one loud audio packet adds (and one quiet packet takes away): one packet is
/// 20 ms of audio.
pub const SPEECH_STEP: Duration = Duration::from_millis(20);
/// Speech a sender must have in hand before it counts as speaking.
pub const SPEECH_TO_START: Duration = Duration::from_millis(300);
/// Most speech credit a sender can bank.
const SPEECH_MAX: Duration = Duration::from_millis(1000);

/// Whether one packet's level counts as speech (a packet without a level does not).
pub fn is_loud(level: Option<i8>) -> bool {
    level.is_some_and(|l| l >= SPEECH_LEVEL)
}

/// A speech detector for one sender: [`SPEECH_STEP`] of loud audio adds up, quiet time takes
/// away, and the sender counts as speaking once it has [`SPEECH_TO_START`] of speech in hand,
/// so coughs and clicks never count. What the SFU ranks speakers by, and what a client shows
/// as "speaking" (one algorithm for both).
#[derive(Debug, Default, Clone, Copy)]
pub struct Voice {
    /// Speech in hand (see [`SPEECH_TO_START`]).
    credit: Duration,
    speaking: bool,
    /// When it last started speaking.
    since: Option<Instant>,
}

impl Voice {
    /// Whether the sender counts as speaking now.
    pub fn speaking(&self) -> bool {
        self.speaking
    }

    /// When the sender last started speaking (`None`: never).
    pub fn since(&self) -> Option<Instant> {
        self.since
    }

    /// One audio packet's level (one packet is [`SPEECH_STEP`] of audio); returns true when
    /// the sender starts speaking.
    pub fn hear(&mut self, level: Option<i8>, now: Instant) -> bool {
        if is_loud(level) {
            self.credit = (self.credit + SPEECH_STEP).min(SPEECH_MAX);
        } else {
            self.credit = self.credit.saturating_sub(SPEECH_STEP);
        }
        if !self.speaking && self.credit >= SPEECH_TO_START {
            self.speaking = true;
            self.since = Some(now);
            return true;
        }
        if self.speaking && self.credit.is_zero() {
            self.speaking = false;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speech_counts_after_300_ms_and_short_noises_never_do() {
        let t = Instant::now();
        let mut v = Voice::default();
        // A 200 ms click: never speaking.
        for _ in 0..10 {
            assert!(!v.hear(Some(-10), t));
        }
        for _ in 0..20 {
            assert!(!v.hear(Some(-100), t));
        }
        assert!(!v.speaking());
        // 300 ms of speech: speaking, once.
        let started: Vec<bool> = (0..30).map(|_| v.hear(Some(-20), t)).collect();
        assert_eq!(started.iter().filter(|s| **s).count(), 1);
        assert_eq!(started.iter().position(|s| *s), Some(14));
        assert!(v.speaking());
        // Missing levels (no extension) count as quiet; speech drains away.
        for _ in 0..100 {
            v.hear(None, t);
        }
        assert!(!v.speaking());
    }
}

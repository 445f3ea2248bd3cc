//! The SFU's choices, limits and counters, and the datagrams it produces.

use std::net::SocketAddr;
use std::time::Duration;

/// A datagram to send on the media socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The local address to send from (the SFU's socket).
    pub source: SocketAddr,
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes (an ICE, DTLS, SRTP or SRTCP packet).
    pub contents: Vec<u8>,
}

/// Counters for `/metrics` and benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// RTP packets received from senders.
    pub packets_in: u64,
    /// RTP packets written towards receivers.
    pub packets_out: u64,
    /// Bytes of RTP payload written towards receivers.
    pub bytes_out: u64,
    /// Packets that had no slot at some receiver (every slot of the kind taken).
    pub no_slot: u64,
    /// Video packets held back from a receiver until the source's next keyframe.
    pub waiting_keyframe: u64,
    /// Packets of an unknown stream or payload type, dropped.
    pub unknown_stream: u64,
    /// Datagrams that no participant accepted.
    pub unrouted: u64,
    /// Keyframe requests (PLI) sent to senders.
    pub keyframe_requests: u64,
    /// Keyframe requests folded into one already sent within [`PLI_INTERVAL`].
    pub keyframe_requests_coalesced: u64,
    /// Times a sender started speaking (after [`conclave_media_meta::SPEECH_TO_START`] of speech).
    pub speaker_changes: u64,
    /// Times a receiver's slot was given another simulcast layer.
    pub layer_switches_requested: u64,
    /// Times a slot actually switched layer (at a keyframe of the new one).
    pub layer_switches: u64,
}

/// Forwarding choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SfuConfig {
    /// Video senders forwarded to each receiver: the most recent speakers (at most the
    /// receiver's video slots).
    pub last_n: usize,
    /// Audio senders forwarded to each receiver: the most recent speakers.
    pub top_k_audio: usize,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            last_n: 8,
            top_k_audio: 8,
        }
    }
}

/// Keyframe requests to one sender are at least this far apart.
pub const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// A slot waiting this long for a keyframe asks again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);

/// How long the SFU keeps forwarded video packets for retransmission, and at most how many
/// per slot. str0m's default (3 s, up to 2,000 packets) made a receiver of eight video slots
/// hold megabytes; a NACK comes about one round trip after the loss, and a second try one more.
pub const RTX_CACHE_AGE: Duration = Duration::from_millis(1000);
/// See [`RTX_CACHE_AGE`].
pub const RTX_CACHE_PACKETS: usize = 500;
/// Most of a slot's bytes that may be retransmissions (str0m's default cap, kept).
pub const RTX_RATIO_CAP: f32 = 0.15;

/// How often layer bitrates are measured and layers re-chosen.
pub const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// How often the SFU sweeps all participants for ended sessions, keyframe retries and
/// coalesced keyframe requests that are due.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// How long str0m is given between timeouts at most.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(100);

//! # Conclave SFU core
//!
//! Forwards media between the participants of a room, on str0m, without being able to read
//! it: every frame is SFrame ciphertext sealed by its sender, and this crate depends on neither
//! MLS nor SFrame (CI checks the crate graph). It decides from RTP-level facts only.
//!
//! Sans-IO, like str0m itself: [`Sfu::add_participant`] (an SDP offer in, an answer out),
//! [`Sfu::handle_receive`] (a UDP datagram), [`Sfu::handle_timeout`], then drain
//! [`Sfu::poll_transmit`] and ask [`Sfu::poll_timeout`]. One UDP port serves every participant
//! (str0m's `accepts` demultiplexes, with a cache from remote address to participant in front
//! of it); the SFU side is ICE-lite.
//!
//! **RTP mode.** str0m runs in RTP mode: the SFU forwards RTP packets, it never reassembles
//! frames. Each hop has its own SRTP keys (DTLS-SRTP) and its own loss recovery: str0m answers
//! a receiver's NACKs from its send buffer (RTX) and NACKs the sender's lost packets itself.
//!
//! **Slots.** A participant's offer carries one send-only audio and one send-only video m-line
//! for its own media, and a fixed number of receive-only *slots* of each kind. The SFU assigns
//! each other sender's track to a free slot of the same kind (first come), and frees slots when
//! senders leave. No renegotiation is needed, and the receiver learns who sent a frame from
//! the frame's SFrame KID (authenticated end to end), not from anything the SFU says. A fixed
//! number of slots is also the shape "last N" forwarding takes in large rooms.
//!
//! **Speakers, last N, top k.** Senders put the RFC 6464 audio level on their audio packets
//! (it stays outside the encryption, like all RTP header extensions). The SFU keeps a score
//! per sender: [`SPEECH_STEP`] of loud audio adds up, quiet time takes away, and a sender
//! counts as speaking once it has [`SPEECH_TO_START`] of speech in hand, so coughs and clicks
//! never steal a slot. Senders are ranked by when they last started speaking (then by arrival);
//! each receiver's video slots go to the first [`SfuConfig::last_n`] of that ranking and its
//! audio slots to the first [`SfuConfig::top_k_audio`]; a slot whose sender falls out of the
//! ranking is given to the newcomer (with a keyframe request).
//!
//! **Simulcast and bandwidth.** Senders send video in up to three layers (RTP stream ids
//! `l`, `m`, `h`). The SFU measures each layer's bitrate, keeps a bandwidth estimate per
//! receiver (str0m's TWCC estimator on the SFU's egress), and gives each of a receiver's video
//! slots, best-ranked sender first, the highest layer that fits what is left of the estimate
//! (the lowest layer if none does), and never a larger one than the receiver's tiles need
//! ([`Sfu::set_max_video_width`]). Going up needs 15% headroom; going down does not. A slot
//! changes layer only at a keyframe of the new layer, which it asks the sender for.
//!
//! **Rewriting.** Every slot is one outgoing RTP stream with its own sequence numbers and
//! timestamps. When a slot gets a new source, the SFU rebases both so that the receiver sees
//! one continuous stream, and for video it forwards nothing until a keyframe starts (it asks
//! the sender for one, with PLI, at most every [`PLI_INTERVAL`], again while it waits). It can
//! tell a keyframe because the VP8 payload header stays outside the SFrame ciphertext (and is
//! authenticated by it); nothing else of the frame is visible. A video switch that follows a
//! frame whose last packet was never sent leaves one sequence number out, so that the
//! receiver drops that frame rather than hand it on cut short.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::format::{detect_vp8_keyframe, Codec};
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

/// A participant, as the runtime numbers them (the signaling connection id).
pub type ParticipantId = u64;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// The SDP offer does not parse or cannot be answered.
    #[error("bad offer: {0}")]
    BadOffer(String),
    /// The participant is already connected.
    #[error("participant {0} already has a media session")]
    Duplicate(ParticipantId),
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
    /// Times a sender started speaking (after [`SPEECH_TO_START`] of speech).
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

/// Audio at least this loud (RFC 6464 level, -dBov) counts as speech.
pub const SPEECH_LEVEL: i8 = -45;
/// Speech credit one loud audio packet adds (and one quiet packet takes away).
pub const SPEECH_STEP: Duration = Duration::from_millis(20);
/// Speech a sender must have in hand before it counts as speaking.
pub const SPEECH_TO_START: Duration = Duration::from_millis(300);
/// Most speech credit a sender can bank.
const SPEECH_MAX: Duration = Duration::from_millis(1000);

/// Keyframe requests to one sender are at least this far apart.
pub const PLI_INTERVAL: Duration = Duration::from_millis(500);

/// A slot waiting this long for a keyframe asks again.
pub const KEYFRAME_RETRY: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source {
    from: ParticipantId,
    mid: Mid,
}

/// One outgoing stream's rewrite state.
#[derive(Debug, Default)]
struct Rewrite {
    /// The next packet forwarded starts a new source: rebase sequence numbers and timestamps.
    rebase: bool,
    /// Video: forward nothing until a keyframe starts.
    need_keyframe: bool,
    /// When we last asked for the keyframe we wait for.
    asked: Option<Instant>,
    /// Anything sent on this stream yet.
    started: bool,
    /// Outgoing = incoming + offset (extended sequence numbers).
    seq_offset: i64,
    /// Outgoing sequence numbers below this belong to an earlier source.
    seq_floor: u64,
    /// The next new outgoing sequence number.
    seq_next: u64,
    /// The newest packet sent ended its frame (RTP marker).
    tail_sent: bool,
    /// Outgoing = incoming + offset (RTP timestamps, wrapping).
    ts_offset: u32,
    /// Timestamp of the newest packet sent.
    ts_last: u32,
    /// The next packet continues on another layer: rebase sequence numbers only.
    relayer: bool,
    /// VP8: the next packet starts a new picture-ID space (new source or layer).
    renumber: bool,
    /// VP8: outgoing = incoming + offset (picture ID mod 2^15, TL0PICIDX mod 2^8).
    pic_offset: u16,
    tl0_offset: u8,
    /// VP8: the last outgoing picture ID and TL0PICIDX.
    pic_last: Option<u16>,
    tl0_last: Option<u8>,
}

impl Rewrite {
    fn new_source(&mut self, video: bool, now: Instant) {
        self.rebase = true;
        self.renumber = true;
        self.need_keyframe = video;
        self.asked = video.then_some(now);
    }

    /// The same source continues on another simulcast layer (from a keyframe): a new
    /// sequence-number space, the same clock.
    fn new_layer(&mut self) {
        self.relayer = true;
        self.renumber = true;
    }

    /// The payload to send for a forwarded VP8 packet: the same bytes, or a copy whose picture
    /// ID and TL0PICIDX continue the numbering this receiver has seen.
    fn vp8_payload(&mut self, pkt: &Packet) -> Arc<[u8]> {
        let ids = pkt.vp8;
        if self.renumber {
            self.renumber = false;
            self.pic_offset = match (ids.picture, self.pic_last) {
                (Some((pid, _, _)), Some(last)) => last.wrapping_add(1).wrapping_sub(pid) & 0x7fff,
                _ => 0,
            };
            self.tl0_offset = match (ids.tl0, self.tl0_last) {
                (Some((t, _)), Some(last)) => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
        }
        let pic = ids
            .picture
            .map(|(pid, at, wide)| (pid.wrapping_add(self.pic_offset) & 0x7fff, at, wide));
        let tl0 = ids.tl0.map(|(t, at)| (t.wrapping_add(self.tl0_offset), at));
        // Newest outgoing values (serial-number order, so reordered packets do not pull back).
        if let Some((out, _, _)) = pic {
            let newer = self
                .pic_last
                .is_none_or(|l| out != l && (out.wrapping_sub(l) & 0x7fff) < 0x4000);
            if newer {
                self.pic_last = Some(out);
            }
        }
        if let Some((out, _)) = tl0 {
            if self
                .tl0_last
                .is_none_or(|l| out != l && out.wrapping_sub(l) < 0x80)
            {
                self.tl0_last = Some(out);
            }
        }
        if self.pic_offset == 0 && self.tl0_offset == 0 {
            return pkt.payload.clone();
        }
        let mut bytes = pkt.payload.to_vec();
        if let Some((out, at, wide)) = pic {
            if wide {
                bytes[at] = 0x80 | (out >> 8) as u8;
                bytes[at + 1] = out as u8;
            } else {
                bytes[at] = (out & 0x7f) as u8;
            }
        }
        if let Some((out, at)) = tl0 {
            bytes[at] = out;
        }
        Arc::from(bytes)
    }

    /// Outgoing (sequence number, timestamp) for a packet, or None to drop it.
    fn map(&mut self, pkt: &Packet, clock: u32) -> Option<(u64, u32)> {
        if self.need_keyframe && !pkt.keyframe_start {
            return None;
        }
        // A video switch right after a frame whose tail was not sent (lost, or still to come
        // on the old layer) leaves one number out: with the numbers contiguous and the
        // timestamp changing, the receiver would take the unfinished frame as whole and hand
        // it on cut short (SFrame then refuses it); the gap makes it drop that frame.
        let gap =
            u64::from((self.need_keyframe || self.relayer) && self.started && !self.tail_sent);
        if self.rebase || self.need_keyframe {
            let seq_start = self.seq_next.max(1) + gap;
            self.seq_offset = seq_start as i64 - pkt.seq as i64;
            self.seq_floor = seq_start;
            // Continue the timeline a nominal frame (audio packet) after the last one sent.
            let ts_start = if self.started {
                self.ts_last.wrapping_add(clock / 50)
            } else {
                pkt.ts
            };
            self.ts_offset = ts_start.wrapping_sub(pkt.ts);
            self.rebase = false;
            self.need_keyframe = false;
            self.asked = None;
        }
        if self.relayer {
            let seq_start = self.seq_next.max(1) + gap;
            self.seq_offset = seq_start as i64 - pkt.seq as i64;
            self.seq_floor = seq_start;
            self.relayer = false;
        }
        let out = pkt.seq as i64 + self.seq_offset;
        if out < self.seq_floor as i64 {
            // Reordered from before the switch: those numbers went to the previous source.
            return None;
        }
        let out = out as u64;
        let ts = pkt.ts.wrapping_add(self.ts_offset);
        if out >= self.seq_next {
            self.seq_next = out + 1;
            self.ts_last = ts;
            self.tail_sent = pkt.marker;
        }
        self.started = true;
        Some((out, ts))
    }
}

struct Slot {
    mid: Mid,
    kind: MediaKind,
    source: Option<Source>,
    /// The layer forwarded now (video), once a keyframe of it started.
    layer: Option<Option<Rid>>,
    /// The layer this slot should forward; switched to at its next keyframe.
    target: Option<Option<Rid>>,
    rewrite: Rewrite,
    /// Its retransmission cache was sized (on its first packet).
    rtx_sized: bool,
}

/// How long the SFU keeps forwarded video packets for retransmission, and at most how many
/// per slot. str0m's default (3 s, up to 2,000 packets) made a receiver of eight video slots
/// hold megabytes; a NACK comes about one round trip after the loss, and a second try one more.
pub const RTX_CACHE_AGE: Duration = Duration::from_millis(1000);
/// See [`RTX_CACHE_AGE`].
pub const RTX_CACHE_PACKETS: usize = 500;
/// Most of a slot's bytes that may be retransmissions (str0m's default cap, kept).
pub const RTX_RATIO_CAP: f32 = 0.15;

/// One simulcast layer (or the only stream) of a sender's track.
#[derive(Debug)]
struct Layer {
    rid: Option<Rid>,
    /// When we last sent this layer's sender a keyframe request.
    last_pli: Option<Instant>,
    /// A request arrived within [`PLI_INTERVAL`] of the last: send it when the interval ends.
    pli_pending: bool,
    /// Bytes received in the current measuring window.
    window_bytes: u64,
    /// Smoothed bitrate, bits per second.
    rate: f64,
}

impl Layer {
    fn new(rid: Option<Rid>) -> Self {
        Layer {
            rid,
            last_pli: None,
            pli_pending: false,
            window_bytes: 0,
            rate: 0.0,
        }
    }
}

/// The layer order: by RTP stream id `l` < `m` < `h` (unnamed streams count as one layer).
fn layer_rank(rid: Option<Rid>) -> u8 {
    match rid.as_deref() {
        Some("l") => 0,
        Some("m") => 1,
        Some("h") => 2,
        _ => 1,
    }
}

struct Input_ {
    mid: Mid,
    kind: MediaKind,
    /// Its layers, as packets reveal them.
    layers: Vec<Layer>,
}

impl Input_ {
    fn layer_mut(&mut self, rid: Option<Rid>) -> &mut Layer {
        match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => &mut self.layers[i],
            None => {
                self.layers.push(Layer::new(rid));
                self.layers.sort_by_key(|l| layer_rank(l.rid));
                let i = self.layers.iter().position(|l| l.rid == rid).unwrap_or(0);
                &mut self.layers[i]
            }
        }
    }
}

/// How often layer bitrates are measured and layers re-chosen.
pub const ALLOCATION_INTERVAL: Duration = Duration::from_millis(500);
/// Headroom a receiver's estimate must have over a higher layer's bitrate to move up to it.
const UP_HEADROOM: f64 = 1.15;
/// What one forwarded audio stream is assumed to take from a receiver's estimate.
const AUDIO_BPS: f64 = 50_000.0;

/// A speech detector for one sender, from the RFC 6464 audio level on its packets: what the
/// SFU ranks speakers by, and what a client shows as "speaking" (one algorithm for both).
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

    /// One audio packet's level (one packet is [`SPEECH_STEP`] of audio); returns true when
    /// the sender starts speaking.
    pub fn hear(&mut self, level: Option<i8>, now: Instant) -> bool {
        let loud = level.is_some_and(|l| l >= SPEECH_LEVEL);
        if loud {
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

struct Participant {
    id: ParticipantId,
    room: Arc<str>,
    rtc: Rtc,
    /// Arrival order in the SFU (ranks senders who never spoke).
    order: u64,
    voice: Voice,
    /// The SFU's bandwidth estimate towards this participant, bits per second.
    estimate: Option<f64>,
    /// The highest layer its tiles need (`layer_rank`), from its tile size.
    max_layer: u8,
    /// Our receive side: the participant's send-only m-lines.
    inputs: Vec<Input_>,
    /// Our send side: the participant's receive-only slots.
    slots: Vec<Slot>,
    /// The wake-up armed in the SFU's timer heap for this session, if any.
    timeout: Option<Instant>,
}

/// A packet to forward, with what the forwarding decisions need.
struct Packet {
    src: Source,
    rid: Option<Rid>,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    codec: Codec,
    clock_rate: Frequency,
    seq: u64,
    ts: u32,
    marker: bool,
    keyframe_start: bool,
    /// VP8 payload descriptor fields that must stay continuous across switches.
    vp8: Vp8Ids,
    arrival: Instant,
    payload: Arc<[u8]>,
}

impl Packet {
    /// A VP8 packet of participant 0's track "0" with this payload (for tests and fuzzing).
    fn vp8(payload: Arc<[u8]>, arrival: Instant) -> Packet {
        Packet {
            src: Source {
                from: 0,
                mid: Mid::from("0"),
            },
            rid: None,
            audio_level: None,
            voice_activity: None,
            codec: Codec::Vp8,
            clock_rate: Frequency::NINETY_KHZ,
            seq: 0,
            ts: 0,
            marker: false,
            keyframe_start: false,
            vp8: Vp8Ids::parse(&payload),
            arrival,
            payload,
        }
    }
}

/// Where the picture ID and TL0PICIDX sit in a VP8 payload descriptor (RFC 7741 4.2), and
/// their values. Each simulcast layer (and each sender) numbers its pictures on its own; a
/// receiver's decoder tracks references by these numbers, so when a slot moves to another
/// layer or source the SFU renumbers them to continue where the slot left off (as mediasoup
/// and LiveKit do). The descriptor is written by the sender's packetizer, outside SFrame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Vp8Ids {
    /// (picture ID, byte offset, 15-bit form).
    picture: Option<(u16, usize, bool)>,
    /// (TL0PICIDX, byte offset).
    tl0: Option<(u8, usize)>,
}

impl Vp8Ids {
    fn parse(p: &[u8]) -> Self {
        let mut ids = Vp8Ids::default();
        let Some(&b0) = p.first() else {
            return ids;
        };
        if b0 & 0x80 == 0 {
            return ids;
        }
        let Some(&b1) = p.get(1) else {
            return ids;
        };
        let mut i = 2;
        if b1 & 0x80 != 0 {
            let Some(&m) = p.get(i) else {
                return ids;
            };
            if m & 0x80 != 0 {
                let Some(&lo) = p.get(i + 1) else {
                    return ids;
                };
                ids.picture = Some((u16::from(m & 0x7f) << 8 | u16::from(lo), i, true));
                i += 2;
            } else {
                ids.picture = Some((u16::from(m), i, false));
                i += 1;
            }
        }
        if b1 & 0x40 != 0 {
            if let Some(&t) = p.get(i) {
                ids.tl0 = Some((t, i));
            }
        }
        ids
    }
}

/// Something that has to happen after one participant's `Rtc` produced output.
enum Forward {
    Rtp(Box<Packet>),
    /// A receiver asked for a keyframe on one of its slots.
    Keyframe(ParticipantId, Mid),
}

/// Output shared by all participants.
#[derive(Default)]
struct Outbox {
    transmits: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    forwards: VecDeque<Forward>,
    stats: SfuStats,
    tap: Option<(usize, Vec<Vec<u8>>)>,
    /// A participant's m-lines became known: slots need (re)assigning.
    dirty: bool,
    /// When each participant's `Rtc` wants its timeout, soonest first. An entry is stale once
    /// the participant's timeout moved on (it is skipped): at 1,000 participants, scanning
    /// them all on every datagram cost more than forwarding it.
    timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
}

/// How often the SFU sweeps all participants for ended sessions, keyframe retries and
/// coalesced keyframe requests that are due.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(50);

/// The forwarding core.
pub struct Sfu {
    local: SocketAddr,
    config: SfuConfig,
    next_order: u64,
    next_allocation: Option<Instant>,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<Arc<str>, Vec<ParticipantId>>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    out: Outbox,
    next_sweep: Option<Instant>,
}

impl core::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sfu")
            .field("local", &self.local)
            .field("participants", &self.participants.len())
            .field("stats", &self.out.stats)
            .finish()
    }
}

impl Sfu {
    /// An SFU whose single UDP socket is reachable at `local`.
    pub fn new(local: SocketAddr) -> Self {
        Self::with_config(local, SfuConfig::default())
    }

    /// An SFU with forwarding choices.
    pub fn with_config(local: SocketAddr, config: SfuConfig) -> Self {
        Sfu {
            local,
            config,
            next_order: 0,
            next_allocation: None,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            by_addr: HashMap::new(),
            out: Outbox::default(),
            next_sweep: None,
        }
    }

    /// Keeps a copy of up to `max` forwarded RTP payloads, exactly as the SFU sees them, for
    /// tests and audits that check what the SFU can see (ciphertext only).
    pub fn set_tap(&mut self, max: usize) {
        self.out.tap = Some((max, Vec::new()));
    }

    /// The payloads kept by the tap so far.
    pub fn take_tap(&mut self) -> Vec<Vec<u8>> {
        self.out
            .tap
            .as_mut()
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> SfuStats {
        self.out.stats
    }

    /// A room's senders who are speaking now, most recent first.
    pub fn speakers(&self, room: &str) -> Vec<ParticipantId> {
        let mut v: Vec<&Participant> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|m| self.participants.get(m))
            .filter(|p| p.voice.speaking)
            .collect();
        v.sort_by_key(|p| Reverse(p.voice.since));
        v.into_iter().map(|p| p.id).collect()
    }

    /// Which senders each of a participant's slots forwards now: (kind, sender).
    pub fn forwarding_to(&self, id: ParticipantId) -> Vec<(MediaKind, ParticipantId)> {
        self.participants
            .get(&id)
            .map(|p| {
                p.slots
                    .iter()
                    .filter_map(|s| s.source.map(|src| (s.kind, src.from)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The bandwidth estimate towards a participant (bits per second), and the simulcast
    /// layer (RTP stream id) each of its video slots forwards now and is moving to:
    /// (sender, current, target).
    #[allow(clippy::type_complexity)]
    pub fn video_layers_to(
        &self,
        id: ParticipantId,
    ) -> (Option<f64>, Vec<(ParticipantId, Option<Rid>, Option<Rid>)>) {
        let Some(p) = self.participants.get(&id) else {
            return (None, Vec::new());
        };
        let layers = p
            .slots
            .iter()
            .filter(|s| s.kind == MediaKind::Video)
            .filter_map(|s| {
                s.source
                    .map(|src| (src.from, s.layer.flatten(), s.target.flatten()))
            })
            .collect();
        (p.estimate, layers)
    }

    /// Participants with a media session.
    pub fn participant_count(&self) -> usize {
        self.participants.len()
    }

    /// A participant of `room` offers its media session; returns the SDP answer.
    pub fn add_participant(
        &mut self,
        id: ParticipantId,
        room: &str,
        offer_sdp: &str,
        now: Instant,
    ) -> Result<String, SfuError> {
        if self.participants.contains_key(&id) {
            return Err(SfuError::Duplicate(id));
        }
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .enable_bwe(Some(Bitrate::kbps(1000)))
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        let candidate =
            Candidate::host(self.local, "udp").map_err(|e| SfuError::BadOffer(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let room: Arc<str> = match self.rooms.get_key_value(room) {
            Some((k, _)) => k.clone(),
            None => room.into(),
        };
        self.next_order += 1;
        let mut p = Participant {
            id,
            room: room.clone(),
            rtc,
            order: self.next_order,
            voice: Voice::default(),
            estimate: None,
            max_layer: 2,
            inputs: Vec::new(),
            slots: Vec::new(),
            timeout: None,
        };
        // The m-lines are known from the offer; str0m also reports them as MediaAdded.
        drain(&mut p, &mut self.out);
        info!(
            participant = id,
            room = &*room,
            inputs = p.inputs.len(),
            slots = p.slots.len(),
            "media session"
        );
        self.participants.insert(id, p);
        self.rooms.entry(room).or_default().push(id);
        self.out.dirty = true;
        self.flush(now);
        Ok(answer.to_sdp_string())
    }

    /// A participant shows others' video in tiles at most `max_width` pixels wide: it is
    /// forwarded no layer larger than that needs (`l` up to 320, `m` up to 640, `h` above).
    pub fn set_max_video_width(&mut self, id: ParticipantId, max_width: u32, now: Instant) {
        if let Some(p) = self.participants.get_mut(&id) {
            p.max_layer = match max_width {
                0..=320 => 0,
                321..=640 => 1,
                _ => 2,
            };
        }
        // Re-choose at once rather than at the next allocation.
        self.next_allocation = Some(now);
    }

    /// A participant left (or its signaling connection closed).
    pub fn remove_participant(&mut self, id: ParticipantId, now: Instant) {
        if !self.participants.contains_key(&id) {
            return;
        }
        self.forget(&[id]);
        self.flush(now);
    }

    fn forget(&mut self, gone: &[ParticipantId]) {
        for id in gone {
            let Some(p) = self.participants.remove(id) else {
                continue;
            };
            if let Some(members) = self.rooms.get_mut(&p.room) {
                members.retain(|m| m != id);
                if members.is_empty() {
                    self.rooms.remove(&p.room);
                }
            }
            self.by_addr.retain(|_, v| v != id);
            if let Some(members) = self.rooms.get(&p.room) {
                for m in members {
                    if let Some(q) = self.participants.get_mut(m) {
                        for s in &mut q.slots {
                            if s.source.is_some_and(|src| src.from == *id) {
                                s.source = None;
                            }
                        }
                    }
                }
            }
        }
        self.out.dirty = true;
    }

    /// A datagram arrived on the media socket.
    pub fn handle_receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        let Ok(receive) = Receive::new(Protocol::Udp, source, destination, bytes) else {
            self.out.stats.unrouted += 1;
            debug!(%source, len = bytes.len(), "undecodable datagram dropped");
            return;
        };
        let input = Input::Receive(now, receive);
        let cached = self.by_addr.get(&source).copied().filter(|id| {
            self.participants
                .get(id)
                .is_some_and(|p| p.rtc.accepts(&input))
        });
        let id = match cached {
            Some(id) => id,
            None => {
                let Some(id) = self
                    .participants
                    .values()
                    .find(|p| p.rtc.accepts(&input))
                    .map(|p| p.id)
                else {
                    self.out.stats.unrouted += 1;
                    debug!(%source, len = bytes.len(), "datagram for no participant dropped");
                    return;
                };
                self.by_addr.insert(source, id);
                id
            }
        };
        if let Some(p) = self.participants.get_mut(&id) {
            if let Err(e) = p.rtc.handle_input(input) {
                warn!(participant = p.id, error = %e, "participant's media session failed");
                p.rtc.disconnect();
            }
            drain(p, &mut self.out);
        }
        self.flush(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The sessions whose own timers are due, each once (one that is due again at once
        // is handled on the next call, after what it produced has been forwarded).
        let mut due = Vec::new();
        while let Some(&Reverse((t, id))) = self.out.timers.peek() {
            if t > now {
                break;
            }
            self.out.timers.pop();
            if self
                .participants
                .get(&id)
                .is_some_and(|p| p.timeout == Some(t))
            {
                due.push(id);
            }
        }
        for id in due {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            p.timeout = None;
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                warn!(participant = p.id, error = %e, "timeout handling failed");
                p.rtc.disconnect();
            }
            drain(p, &mut self.out);
        }
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.next_sweep = Some(now + SWEEP_INTERVAL);
            self.sweep(now);
        }
        match self.next_allocation {
            Some(t) if now < t => {}
            _ => {
                self.next_allocation = Some(now + ALLOCATION_INTERVAL);
                self.allocate(now);
            }
        }
        self.flush(now);
    }

    /// Ended sessions go; slots waiting too long for a keyframe ask again; coalesced keyframe
    /// requests whose interval is over are sent.
    fn sweep(&mut self, now: Instant) {
        let mut gone = Vec::new();
        let mut keyframes = Vec::new();
        for p in self.participants.values_mut() {
            if !p.rtc.is_alive() {
                gone.push(p.id);
                continue;
            }
            // Slots still waiting for a keyframe ask again.
            for s in &mut p.slots {
                if let (Some(src), Some(asked)) = (s.source, s.rewrite.asked) {
                    if s.rewrite.need_keyframe && now >= asked + KEYFRAME_RETRY {
                        s.rewrite.asked = Some(now);
                        keyframes.push(src);
                    }
                }
            }
        }
        if !gone.is_empty() {
            info!(?gone, "media sessions ended");
            self.forget(&gone);
        }
        for src in keyframes {
            self.request_keyframe(src, now);
        }
        // Coalesced keyframe requests whose interval is over.
        let mut due = Vec::new();
        for p in self.participants.values() {
            for i in &p.inputs {
                for l in &i.layers {
                    if l.pli_pending && l.last_pli.is_none_or(|t| now >= t + PLI_INTERVAL) {
                        due.push((
                            Source {
                                from: p.id,
                                mid: i.mid,
                            },
                            l.rid,
                        ));
                    }
                }
            }
        }
        for (src, rid) in due {
            self.request_layer_keyframe(src, rid, now);
        }
    }

    /// Next datagram to send: (from our socket address, to, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.out.transmits.pop_front()
    }

    /// When [`Sfu::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // Stale entries pile up when wake-ups move later; rebuild the heap when they dominate.
        if self.out.timers.len() > 64 + 4 * self.participants.len() {
            self.out.timers = self
                .participants
                .values()
                .filter_map(|p| p.timeout.map(|t| Reverse((t, p.id))))
                .collect();
        }
        // Drop stale timer entries from the top.
        while let Some(&Reverse((t, id))) = self.out.timers.peek() {
            if self
                .participants
                .get(&id)
                .is_some_and(|p| p.timeout == Some(t))
            {
                break;
            }
            self.out.timers.pop();
        }
        if self.participants.is_empty() {
            return None;
        }
        let timer = self.out.timers.peek().map(|Reverse((t, _))| *t);
        [timer, self.next_sweep, self.next_allocation]
            .into_iter()
            .flatten()
            .min()
    }

    /// Gives each receiver's slots to the room's highest-ranked senders: the most recent
    /// speakers first, then by arrival; at most `last_n` video and `top_k_audio` audio. Slots
    /// already forwarding a sender that stays in the selection keep it.
    fn assign_slots(&mut self, now: Instant) {
        let mut keyframes = Vec::new();
        let (last_n, top_k) = (self.config.last_n, self.config.top_k_audio);
        for members in self.rooms.values() {
            // The room's ranking, best first.
            let mut ranked: Vec<&Participant> = members
                .iter()
                .filter_map(|m| self.participants.get(m))
                .collect();
            ranked.sort_by_key(|p| (Reverse(p.voice.since), p.order));
            let ranked: Vec<(ParticipantId, Vec<(Mid, MediaKind)>)> = ranked
                .iter()
                .map(|p| (p.id, p.inputs.iter().map(|i| (i.mid, i.kind)).collect()))
                .collect();
            for m in members {
                let Some(p) = self.participants.get_mut(m) else {
                    continue;
                };
                for kind in [MediaKind::Audio, MediaKind::Video] {
                    let slots = p.slots.iter().filter(|s| s.kind == kind).count();
                    let limit = if kind == MediaKind::Video {
                        last_n
                    } else {
                        top_k
                    };
                    let wanted: Vec<Source> = ranked
                        .iter()
                        .filter(|(id, _)| *id != p.id)
                        .flat_map(|(id, inputs)| {
                            inputs
                                .iter()
                                .filter(|(_, k)| *k == kind)
                                .map(|(mid, _)| Source {
                                    from: *id,
                                    mid: *mid,
                                })
                        })
                        .take(limit.min(slots))
                        .collect();
                    // Free the slots of senders that fell out of the selection.
                    for s in p.slots.iter_mut().filter(|s| s.kind == kind) {
                        if s.source.is_some_and(|src| !wanted.contains(&src)) {
                            s.source = None;
                        }
                    }
                    for src in wanted {
                        if p.slots.iter().any(|s| s.source == Some(src)) {
                            continue;
                        }
                        if let Some(slot) = p
                            .slots
                            .iter_mut()
                            .find(|s| s.kind == kind && s.source.is_none())
                        {
                            slot.source = Some(src);
                            slot.layer = None;
                            slot.target = None;
                            let video = kind == MediaKind::Video;
                            slot.rewrite.new_source(video, now);
                            if video {
                                keyframes.push(src);
                            }
                        }
                    }
                }
            }
        }
        for src in keyframes {
            self.request_keyframe(src, now);
        }
    }

    /// Asks a sender for a keyframe on one of its tracks (all its layers), at most every
    /// [`PLI_INTERVAL`] per layer.
    fn request_keyframe(&mut self, src: Source, now: Instant) {
        let rids: Vec<Option<Rid>> = self
            .participants
            .get(&src.from)
            .and_then(|p| p.inputs.iter().find(|i| i.mid == src.mid))
            .map(|i| i.layers.iter().map(|l| l.rid).collect())
            .unwrap_or_default();
        if rids.is_empty() {
            self.request_layer_keyframe(src, None, now);
        }
        for rid in rids {
            self.request_layer_keyframe(src, rid, now);
        }
    }

    /// Asks a sender for a keyframe on one layer, at most every [`PLI_INTERVAL`].
    fn request_layer_keyframe(&mut self, src: Source, rid: Option<Rid>, now: Instant) {
        let Some(p) = self.participants.get_mut(&src.from) else {
            return;
        };
        let Some(input) = p.inputs.iter_mut().find(|i| i.mid == src.mid) else {
            return;
        };
        let layer = input.layer_mut(rid);
        if layer.last_pli.is_some_and(|t| now < t + PLI_INTERVAL) {
            layer.pli_pending = true;
            self.out.stats.keyframe_requests_coalesced += 1;
            return;
        }
        layer.last_pli = Some(now);
        layer.pli_pending = false;
        let mut api = p.rtc.direct_api();
        if let Some(rx) = api.stream_rx_by_mid(src.mid, rid) {
            rx.request_keyframe(KeyframeRequestKind::Pli);
            self.out.stats.keyframe_requests += 1;
        }
        drain(p, &mut self.out);
    }

    /// Measures layer bitrates and re-chooses each receiver's layers from its estimate.
    fn allocate(&mut self, now: Instant) {
        let secs = ALLOCATION_INTERVAL.as_secs_f64();
        for p in self.participants.values_mut() {
            for i in &mut p.inputs {
                for l in &mut i.layers {
                    let measured = l.window_bytes as f64 * 8.0 / secs;
                    l.rate = if l.rate == 0.0 {
                        measured
                    } else {
                        0.5 * l.rate + 0.5 * measured
                    };
                    l.window_bytes = 0;
                }
            }
        }
        // Each source's layers: (rid, bitrate), low to high, active ones only.
        let layers: HashMap<Source, Vec<(Option<Rid>, f64)>> = self
            .participants
            .values()
            .flat_map(|p| {
                p.inputs
                    .iter()
                    .filter(|i| i.kind == MediaKind::Video)
                    .map(|i| {
                        (
                            Source {
                                from: p.id,
                                mid: i.mid,
                            },
                            i.layers
                                .iter()
                                .filter(|l| l.rate > 0.0)
                                .map(|l| (l.rid, l.rate))
                                .collect(),
                        )
                    })
            })
            .collect();
        let rank: HashMap<ParticipantId, (Reverse<Option<Instant>>, u64)> = self
            .participants
            .values()
            .map(|p| (p.id, (Reverse(p.voice.since), p.order)))
            .collect();
        let mut keyframes = Vec::new();
        for p in self.participants.values_mut() {
            let audio = p
                .slots
                .iter()
                .filter(|s| s.kind == MediaKind::Audio && s.source.is_some())
                .count() as f64;
            let mut budget = p.estimate.unwrap_or(f64::MAX) - audio * AUDIO_BPS;
            let mut order: Vec<usize> = (0..p.slots.len())
                .filter(|&i| p.slots[i].kind == MediaKind::Video && p.slots[i].source.is_some())
                .collect();
            order.sort_by_key(|&i| p.slots[i].source.and_then(|s| rank.get(&s.from).copied()));
            let mut wanted_total = 0.0;
            for i in order {
                let slot = &mut p.slots[i];
                let Some(src) = slot.source else {
                    continue;
                };
                let Some(ls) = layers.get(&src).filter(|l| !l.is_empty()) else {
                    continue;
                };

                let current = slot.target.or(slot.layer);
                let fits = |rid: Option<Rid>, rate: f64| {
                    let up = current.is_some_and(|c| layer_rank(rid) > layer_rank(c));
                    rate * if up { UP_HEADROOM } else { 1.0 } <= budget
                };
                let max_layer = p.max_layer;
                let choice = ls
                    .iter()
                    .rev()
                    .filter(|(rid, _)| layer_rank(*rid) <= max_layer)
                    .find(|(rid, rate)| fits(*rid, *rate))
                    .unwrap_or(&ls[0]);
                budget -= choice.1;
                // Probe only for the next layer up, never for everything at once.
                let next_up = ls
                    .iter()
                    .find(|(rid, _)| layer_rank(*rid) > layer_rank(choice.0))
                    .unwrap_or(choice);
                wanted_total += next_up.1;
                if slot.target != Some(choice.0) {
                    slot.target = Some(choice.0);
                    if slot.layer.is_some() && slot.layer != Some(choice.0) {
                        keyframes.push((src, choice.0));
                    }
                }
            }
            // Let the estimator probe for one layer more than it has.
            let desired = wanted_total + audio * AUDIO_BPS;
            if desired > 0.0 {
                p.rtc
                    .bwe()
                    .set_bitrate(Bitrate::kbps(100), Bitrate::bps(desired as u64));
            }
        }
        for (src, rid) in keyframes {
            self.out.stats.layer_switches_requested += 1;
            self.request_layer_keyframe(src, rid, now);
        }
    }

    /// Assigns slots that became assignable and forwards everything drained so far.
    fn flush(&mut self, now: Instant) {
        loop {
            if self.out.dirty {
                self.out.dirty = false;
                self.assign_slots(now);
            }
            self.forward_all(now);
            if !self.out.dirty && self.out.forwards.is_empty() {
                break;
            }
        }
    }

    fn forward_all(&mut self, now: Instant) {
        while let Some(f) = self.out.forwards.pop_front() {
            match f {
                Forward::Rtp(pkt) => self.forward(&pkt),
                Forward::Keyframe(at, mid) => {
                    // A receiver asks for a keyframe on a slot: ask that slot's sender.
                    let src = self
                        .participants
                        .get(&at)
                        .and_then(|p| p.slots.iter().find(|s| s.mid == mid))
                        .and_then(|s| s.source);
                    if let Some(src) = src {
                        self.request_keyframe(src, now);
                    }
                }
            }
        }
    }

    /// Writes one packet to every receiver in the sender's room that has a slot for it.
    fn forward(&mut self, pkt: &Packet) {
        if let Some((max, v)) = self.out.tap.as_mut() {
            if v.len() < *max {
                v.push(pkt.payload.to_vec());
            }
        }
        let Some(room) = self.participants.get(&pkt.src.from).map(|p| p.room.clone()) else {
            return;
        };
        let Some(members) = self.rooms.get(&room) else {
            return;
        };
        for m in members {
            if *m == pkt.src.from {
                continue;
            }
            let Some(p) = self.participants.get_mut(m) else {
                continue;
            };
            let Some(slot) = p.slots.iter_mut().find(|s| s.source == Some(pkt.src)) else {
                self.out.stats.no_slot += 1;
                continue;
            };
            if slot.kind == MediaKind::Video {
                // One layer per slot: the current one, until a keyframe of the target starts.
                let target = *slot.target.get_or_insert(pkt.rid);
                match slot.layer {
                    Some(l) if l == pkt.rid => {}
                    _ if pkt.rid == target && pkt.keyframe_start => {
                        if slot.layer.is_some() {
                            self.out.stats.layer_switches += 1;
                            slot.rewrite.new_layer();
                        }
                        slot.layer = Some(target);
                    }
                    None if pkt.rid == target => {}
                    _ => continue,
                }
            }
            let Some((seq, ts)) = slot.rewrite.map(pkt, pkt.clock_rate.get()) else {
                self.out.stats.waiting_keyframe += 1;
                continue;
            };
            let video = slot.kind == MediaKind::Video;
            let mid = slot.mid;
            let Some(pt) = p
                .rtc
                .codec_config()
                .find(|pp| {
                    let spec = pp.spec();
                    spec.codec == pkt.codec && spec.clock_rate == pkt.clock_rate
                })
                .map(|pp| pp.pt())
            else {
                self.out.stats.unknown_stream += 1;
                continue;
            };
            let mut api = p.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, None) else {
                self.out.stats.unknown_stream += 1;
                continue;
            };
            // Audio never waits behind video in the pacer.
            if !video {
                tx.set_unpaced(true);
            }
            if video && !slot.rtx_sized {
                slot.rtx_sized = true;
                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
            }
            let ext = str0m::rtp::ExtensionValues {
                audio_level: pkt.audio_level,
                voice_activity: pkt.voice_activity,
                ..Default::default()
            };
            let payload = if video && pkt.codec == Codec::Vp8 {
                slot.rewrite.vp8_payload(pkt)
            } else {
                pkt.payload.clone()
            };
            tx.write_rtp(
                RtpWrite::new(pt, seq.into(), ts, pkt.arrival, payload)
                    .marker(pkt.marker)
                    .nackable(video)
                    .ext_vals(ext),
            );
            self.out.stats.packets_out += 1;
            self.out.stats.bytes_out += pkt.payload.len() as u64;
            drain(p, &mut self.out);
        }
    }
}

/// Drains one participant's output: datagrams, packets and keyframe requests to forward.
fn drain(p: &mut Participant, out: &mut Outbox) {
    loop {
        match p.rtc.poll_output() {
            Ok(Output::Timeout(t)) => {
                // Exactly the wake-up str0m asks for (an early one would run its pacer
                // early, which sends padding). The entry it replaces goes stale and is skipped.
                if p.timeout != Some(t) {
                    p.timeout = Some(t);
                    out.timers.push(Reverse((t, p.id)));
                }
                break;
            }
            Ok(Output::Transmit(t)) => {
                out.transmits
                    .push_back((t.source, t.destination, t.contents.to_vec()));
            }
            Ok(Output::Event(e)) => match e {
                // Directions are ours: the participant's send-only m-line is our receive side.
                Event::MediaAdded(m) => {
                    match m.direction {
                        Direction::RecvOnly | Direction::SendRecv => p.inputs.push(Input_ {
                            mid: m.mid,
                            kind: m.kind,
                            layers: Vec::new(),
                        }),
                        Direction::SendOnly => p.slots.push(Slot {
                            mid: m.mid,
                            kind: m.kind,
                            source: None,
                            layer: None,
                            target: None,
                            rewrite: Rewrite::default(),
                            rtx_sized: false,
                        }),
                        _ => {}
                    }
                    out.dirty = true;
                }
                Event::RtpPacket(rtp) => {
                    out.stats.packets_in += 1;
                    match packet(p, rtp) {
                        Some(pkt) => {
                            if pkt.codec == Codec::Opus
                                && p.voice.hear(pkt.audio_level, pkt.arrival)
                            {
                                out.stats.speaker_changes += 1;
                                out.dirty = true;
                            }
                            out.forwards.push_back(Forward::Rtp(Box::new(pkt)))
                        }
                        None => out.stats.unknown_stream += 1,
                    }
                }
                Event::KeyframeRequest(r) => {
                    out.forwards.push_back(Forward::Keyframe(p.id, r.mid));
                }
                Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                    p.estimate = Some(estimate.as_f64());
                }
                Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                    p.rtc.disconnect()
                }
                _ => {}
            },
            Err(e) => {
                warn!(participant = p.id, error = %e, "media session failed");
                p.rtc.disconnect();
                break;
            }
        }
    }
}

/// What forwarding needs to know of a received packet, if it belongs to one of the
/// participant's send-only m-lines and carries a negotiated payload type.
fn packet(p: &mut Participant, rtp: RtpPacket) -> Option<Packet> {
    let (mid, rid) = {
        let mut api = p.rtc.direct_api();
        let rx = api.stream_rx(&rtp.header.ssrc)?;
        (rx.mid(), rx.rid().or(rtp.header.ext_vals.rid))
    };
    let input = p.inputs.iter_mut().find(|i| i.mid == mid)?;
    input.layer_mut(rid).window_bytes += rtp.payload.len() as u64;
    let spec = p
        .rtc
        .codec_config()
        .find(|pp| pp.pt() == rtp.header.payload_type)?
        .spec();
    let keyframe_start = spec.codec == Codec::Vp8 && detect_vp8_keyframe(&rtp.payload);
    let vp8 = if spec.codec == Codec::Vp8 {
        Vp8Ids::parse(&rtp.payload)
    } else {
        Vp8Ids::default()
    };
    Some(Packet {
        src: Source { from: p.id, mid },
        rid,
        audio_level: rtp.header.ext_vals.audio_level,
        voice_activity: rtp.header.ext_vals.voice_activity,
        codec: spec.codec,
        clock_rate: spec.clock_rate,
        seq: *rtp.seq_no,
        ts: rtp.header.timestamp,
        marker: rtp.header.marker,
        keyframe_start,
        vp8,
        arrival: rtp.timestamp,
        payload: rtp.payload,
    })
}

/// For fuzzing the VP8 payload-descriptor handling: renumbers `payloads` (one slot's VP8 RTP
/// payloads; `true` marks a switch to another layer or source before that packet) as the SFU
/// does, and returns what it would send.
#[doc(hidden)]
pub fn fuzz_vp8_renumber(payloads: &[(&[u8], bool)]) -> Vec<Vec<u8>> {
    let mut r = Rewrite::default();
    let now = Instant::now();
    payloads
        .iter()
        .map(|(p, switch)| {
            if *switch {
                r.new_source(true, now);
            }
            let mut pkt = Packet::vp8(Arc::from(*p), now);
            pkt.keyframe_start = detect_vp8_keyframe(p);
            r.vp8_payload(&pkt).to_vec()
        })
        .collect()
}

/// How long str0m is given between timeouts at most.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(seq: u64, ts: u32, key: bool) -> Packet {
        let mut p = Packet::vp8(Arc::from(&[][..]), Instant::now());
        p.src.from = 1;
        p.seq = seq;
        p.ts = ts;
        p.keyframe_start = key;
        p
    }

    fn vp8_pkt(pid: u16, tl0: u8, key: bool) -> Packet {
        // X=1, S=1; I=1, L=1, T=1; 15-bit picture ID; TL0PICIDX; TID byte; then the frame.
        let payload = vec![
            0x90,
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            0x20,
            if key { 0x10 } else { 0x11 },
            0x02,
            0x00,
        ];
        let mut p = pkt(0, 0, key);
        p.vp8 = Vp8Ids::parse(&payload);
        p.payload = Arc::from(payload);
        p
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch_of_layer_or_source() {
        let mut r = Rewrite::default();
        r.new_source(true, Instant::now());
        let a = r.vp8_payload(&vp8_pkt(1000, 5, true));
        assert_eq!(
            Vp8Ids::parse(&a).picture.map(|p| p.0),
            Some(1000),
            "first source as is"
        );
        let b = r.vp8_payload(&vp8_pkt(1001, 5, false));
        assert_eq!(Vp8Ids::parse(&b).picture.map(|p| p.0), Some(1001));
        // Another layer numbers its pictures on its own: renumbered to continue.
        r.new_layer();
        let c = r.vp8_payload(&vp8_pkt(20000, 200, true));
        let ids = Vp8Ids::parse(&c);
        assert_eq!(ids.picture.map(|p| p.0), Some(1002));
        assert_eq!(ids.tl0.map(|t| t.0), Some(6));
        let d = r.vp8_payload(&vp8_pkt(20001, 200, false));
        assert_eq!(Vp8Ids::parse(&d).picture.map(|p| p.0), Some(1003));
        // The frame itself (after the descriptor) is untouched.
        assert_eq!(&d[6..], &vp8_pkt(20001, 200, false).payload[6..]);
        // Wrapping at 2^15.
        r.new_source(true, Instant::now());
        let e = r.vp8_payload(&vp8_pkt(0x7fff, 255, true));
        assert_eq!(Vp8Ids::parse(&e).picture.map(|p| p.0), Some(1004));
        // A descriptor too short to hold what it announces is left alone.
        assert_eq!(Vp8Ids::parse(&[0x90, 0xe0, 0x80]), Vp8Ids::default());
    }

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
        assert!(!v.speaking);
        // 300 ms of speech: speaking, once.
        let started: Vec<bool> = (0..30).map(|_| v.hear(Some(-20), t)).collect();
        assert_eq!(started.iter().filter(|s| **s).count(), 1);
        assert_eq!(started.iter().position(|s| *s), Some(14));
        assert!(v.speaking);
        // Missing levels (no extension) count as quiet; speech drains away.
        for _ in 0..100 {
            v.hear(None, t);
        }
        assert!(!v.speaking);
    }

    #[test]
    fn a_new_source_starts_at_a_keyframe_and_continues_the_stream() {
        let now = Instant::now();
        let mut r = Rewrite::default();
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(500, 9000, false), 90_000), None);
        assert_eq!(r.map(&pkt(501, 9000, true), 90_000), Some((1, 9000)));
        assert_eq!(r.map(&pkt(502, 9000, false), 90_000), Some((2, 9000)));
        let mut tail = pkt(503, 12000, false);
        tail.marker = true;
        assert_eq!(r.map(&tail, 90_000), Some((3, 12000)));
        // A second source takes the slot: numbers continue, the timeline moves on.
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(70_000, 5, false), 90_000), None);
        assert_eq!(r.map(&pkt(70_001, 5, true), 90_000), Some((4, 13800)));
        // Reordered from before the switch: dropped, its number belongs to the first source.
        assert_eq!(r.map(&pkt(69_999, 2, false), 90_000), None);
        // Reordering after the switch keeps its place.
        assert_eq!(r.map(&pkt(70_003, 3005, false), 90_000), Some((6, 16800)));
        assert_eq!(r.map(&pkt(70_002, 5, false), 90_000), Some((5, 13800)));
        assert_eq!(r.seq_next, 7);
        // Timestamps wrap like RTP's.
        r.new_source(false, now);
        assert_eq!(r.map(&pkt(10, u32::MAX, false), 90_000), Some((7, 18600)));
        assert_eq!(r.map(&pkt(11, 959, false), 90_000), Some((8, 19560)));
    }

    #[test]
    fn a_video_switch_after_an_unfinished_frame_leaves_a_gap_in_the_numbers() {
        let now = Instant::now();
        let mut r = Rewrite::default();
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(10, 900, true), 90_000), Some((1, 900)));
        // The frame's tail (11, with the marker) is lost; the slot moves to another layer.
        r.new_layer();
        assert_eq!(
            r.map(&pkt(500, 3900, true), 90_000),
            Some((3, 3900)),
            "2 is left out: the receiver must not take frame 900 as whole"
        );
        let mut tail = pkt(501, 3900, false);
        tail.marker = true;
        assert_eq!(r.map(&tail, 90_000), Some((4, 3900)));
        // After a finished frame, the numbers run on.
        r.new_layer();
        assert_eq!(r.map(&pkt(90, 6900, true), 90_000), Some((5, 6900)));
    }
}

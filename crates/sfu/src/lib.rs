//! # Conclave SFU core
//!
//! Forwards media between the participants of a room, on str0m, without being able to read
//! it: every frame is SFrame ciphertext sealed by its sender, and this crate depends on neither
//! MLS nor SFrame (CI checks the crate graph). It decides from RTP-level facts only.
//!
//! Sans-IO, like str0m itself; see [`Sfu`] for its inputs, outputs and the order to drain
//! them. One UDP port serves every participant (str0m's `accepts` demultiplexes, with a cache
//! from remote address to participant in front of it); the SFU side is ICE-lite.
//!
//! The code follows the decisions: [`session`](crate) (one participant's `Rtc`, its tracks
//! and slots, and what it produced: `session.rs`), speech ranking (in
//! [`conclave_media_meta::speech`], shared with the clients), slot assignment (`slots.rs`),
//! layer allocation (`allocation.rs`), keyframe requests (`keyframes.rs`), stream rewriting
//! (`rewrite.rs`), VP8 descriptor ids (in [`conclave_media_meta::vp8`]) and forwarding
//! (`forward.rs`).
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
//! per sender: [`conclave_media_meta::SPEECH_STEP`] of loud audio adds up, quiet time takes away, and a sender
//! counts as speaking once it has [`conclave_media_meta::SPEECH_TO_START`] of speech in hand, so coughs and clicks
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

mod allocation;
mod config;
mod forward;
mod keyframes;
mod rewrite;
mod session;
mod slots;

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use conclave_media_meta::simulcast::layer_for_width;
use conclave_media_meta::Voice;
use str0m::bwe::Bitrate;
use str0m::change::SdpOffer;
use str0m::media::{MediaKind, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Input, Rtc};
use tracing::{debug, info, warn};

pub use allocation::{AUDIO_BPS, UP_HEADROOM};
pub use config::{
    SfuConfig, SfuStats, Transmit, ALLOCATION_INTERVAL, KEYFRAME_RETRY, MAX_TIMEOUT, PLI_INTERVAL,
    RTX_CACHE_AGE, RTX_CACHE_PACKETS, RTX_RATIO_CAP, SWEEP_INTERVAL,
};
#[cfg(fuzzing)]
pub use rewrite::fuzz_vp8_renumber;
use session::{drain, Outbox, Session};

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

/// The forwarding core.
///
/// **Inputs**, each with the current time:
/// - [`Sfu::add_participant`]: a room member's SDP offer (after the delivery service says it
///   is a member); returns the answer;
/// - [`Sfu::remove_participant`]: it is no member any more (left, removed, disconnected);
/// - [`Sfu::set_max_video_width`]: how wide its largest tile is;
/// - [`Sfu::handle_receive`]: a datagram arrived on the media socket;
/// - [`Sfu::handle_timeout`]: the time [`Sfu::poll_timeout`] named has come.
///
/// **Outputs**, after every input: drain [`Sfu::poll_transmit`] until `None` (the datagrams to
/// send, in order), then ask [`Sfu::poll_timeout`] when to call [`Sfu::handle_timeout`] next.
/// An input does all its work before it returns (its packets forwarded, slots re-assigned,
/// keyframes asked for), so the only thing left to the runtime is sending and waking up.
///
/// **Reading it**: [`Sfu::stats`], [`Sfu::speakers`], [`Sfu::forwarding_to`] and
/// [`Sfu::video_layers_to`] show what it decided, for `/metrics` and tests.
pub struct Sfu {
    local: SocketAddr,
    config: SfuConfig,
    next_order: u64,
    next_allocation: Option<Instant>,
    participants: HashMap<ParticipantId, Session>,
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
        let mut v: Vec<&Session> = self
            .rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|m| self.participants.get(m))
            .filter(|p| p.voice.speaking())
            .collect();
        v.sort_by_key(|p| Reverse(p.voice.since()));
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
        let mut p = Session {
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
            p.max_layer = layer_for_width(max_width);
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

    pub(crate) fn forget(&mut self, gone: &[ParticipantId]) {
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

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
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
}

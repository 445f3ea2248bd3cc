//! # Conclave SFU core
//!
//! Forwards media between the participants of a room, on str0m, without being able to read
//! it: every frame is SFrame ciphertext sealed by its sender, and this crate depends on neither
//! MLS nor SFrame (CI checks the crate graph). It decides from RTP-level facts only.
//!
//! Sans-IO, like str0m itself: [`Sfu::add_participant`] (an SDP offer in, an answer out),
//! [`Sfu::handle_receive`] (a UDP datagram), [`Sfu::handle_timeout`], then drain
//! [`Sfu::poll_transmit`] and ask [`Sfu::poll_timeout`]. One UDP port serves every participant
//! (str0m's `accepts` demultiplexes); the SFU side is ICE-lite.
//!
//! **Slots.** A participant's offer carries one send-only audio and one send-only video m-line
//! for its own media, and a fixed number of receive-only *slots* of each kind. The SFU assigns
//! each other sender's track to a free slot of the same kind (first come), requests a keyframe
//! from the sender when a video slot is (re)assigned, and frees slots when senders leave. No
//! renegotiation is needed, and the receiver learns who sent a frame from the frame's SFrame
//! KID (authenticated end to end), not from anything the SFU says. A fixed number of slots is
//! also the shape "last N" forwarding takes in large rooms.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::media::{Direction, KeyframeRequest, KeyframeRequestKind, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
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
    /// Frames received from senders.
    pub frames_in: u64,
    /// Frames written towards receivers.
    pub frames_out: u64,
    /// Bytes of frame payload written towards receivers.
    pub bytes_out: u64,
    /// Frames that had no free slot at some receiver.
    pub no_slot: u64,
    /// Datagrams that no participant accepted.
    pub unrouted: u64,
    /// Keyframe requests forwarded to senders.
    pub keyframe_requests: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    from: ParticipantId,
    mid: Mid,
}

struct Slot {
    mid: Mid,
    kind: MediaKind,
    source: Option<Source>,
}

struct Participant {
    id: ParticipantId,
    room: String,
    rtc: Rtc,
    /// Our receive side: the participant's send-only m-lines.
    inputs: Vec<(Mid, MediaKind)>,
    /// Our send side: the participant's receive-only slots.
    slots: Vec<Slot>,
    timeout: Option<Instant>,
}

/// Something that has to happen after one participant's `Rtc` produced output.
enum Forward {
    Media(ParticipantId, Box<MediaData>),
    Keyframe(ParticipantId, KeyframeRequest),
}

/// The forwarding core.
pub struct Sfu {
    local: SocketAddr,
    participants: Vec<Participant>,
    transmits: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    forwards: VecDeque<Forward>,
    stats: SfuStats,
    tap: Option<(usize, Vec<Vec<u8>>)>,
    /// A participant's m-lines became known: slots need (re)assigning.
    dirty: bool,
}

impl core::fmt::Debug for Sfu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sfu")
            .field("local", &self.local)
            .field("participants", &self.participants.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Sfu {
    /// An SFU whose single UDP socket is reachable at `local`.
    pub fn new(local: SocketAddr) -> Self {
        Sfu {
            local,
            participants: Vec::new(),
            transmits: VecDeque::new(),
            forwards: VecDeque::new(),
            stats: SfuStats::default(),
            tap: None,
            dirty: false,
        }
    }

    /// Keeps a copy of up to `max` forwarded frame payloads, exactly as the SFU sees them, for
    /// tests and audits that check what the SFU can see (ciphertext only).
    pub fn set_tap(&mut self, max: usize) {
        self.tap = Some((max, Vec::new()));
    }

    /// The payloads kept by the tap so far.
    pub fn take_tap(&mut self) -> Vec<Vec<u8>> {
        self.tap
            .as_mut()
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }

    /// Counters so far.
    pub fn stats(&self) -> SfuStats {
        self.stats
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
        if self.participants.iter().any(|p| p.id == id) {
            return Err(SfuError::Duplicate(id));
        }
        let offer =
            SdpOffer::from_sdp_string(offer_sdp).map_err(|e| SfuError::BadOffer(e.to_string()))?;
        let mut rtc = Rtc::builder()
            .set_ice_lite(true)
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
        let mut p = Participant {
            id,
            room: room.to_owned(),
            rtc,
            inputs: Vec::new(),
            slots: Vec::new(),
            timeout: None,
        };
        // The m-lines are known from the offer; str0m also reports them as MediaAdded.
        self.drain(&mut p);
        info!(
            participant = id,
            room,
            inputs = p.inputs.len(),
            slots = p.slots.len(),
            "media session"
        );
        self.participants.push(p);
        self.dirty = true;
        self.flush(now);
        Ok(answer.to_sdp_string())
    }

    /// A participant left (or its signaling connection closed).
    pub fn remove_participant(&mut self, id: ParticipantId, now: Instant) {
        self.participants.retain(|p| p.id != id);
        for p in &mut self.participants {
            for s in &mut p.slots {
                if s.source.is_some_and(|src| src.from == id) {
                    s.source = None;
                }
            }
        }
        self.dirty = true;
        self.flush(now);
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
            self.stats.unrouted += 1;
            debug!(%source, len = bytes.len(), "undecodable datagram dropped");
            return;
        };
        let input = Input::Receive(now, receive);
        let Some(i) = self.participants.iter().position(|p| p.rtc.accepts(&input)) else {
            self.stats.unrouted += 1;
            debug!(%source, len = bytes.len(), "datagram for no participant dropped");
            return;
        };
        let mut p = self.participants.swap_remove(i);
        if let Err(e) = p.rtc.handle_input(input) {
            warn!(participant = p.id, error = %e, "participant's media session failed");
            p.rtc.disconnect();
        }
        self.drain(&mut p);
        self.participants.push(p);
        self.flush(now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.participants.len() {
            let mut p = self.participants.swap_remove(i);
            if let Err(e) = p.rtc.handle_input(Input::Timeout(now)) {
                warn!(participant = p.id, error = %e, "timeout handling failed");
                p.rtc.disconnect();
            }
            self.drain(&mut p);
            self.participants.push(p);
            let last = self.participants.len() - 1;
            self.participants.swap(i, last);
        }
        let before = self.participants.len();
        self.participants.retain(|p| p.rtc.is_alive());
        if self.participants.len() != before {
            let alive: Vec<ParticipantId> = self.participants.iter().map(|p| p.id).collect();
            for p in &mut self.participants {
                for s in &mut p.slots {
                    if s.source.is_some_and(|src| !alive.contains(&src.from)) {
                        s.source = None;
                    }
                }
            }
            self.dirty = true;
        }
        self.flush(now);
    }

    /// Next datagram to send: (from our socket address, to, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// When [`Sfu::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        // str0m reports its timeout through poll_output, which `drain` records.
        self.participants
            .iter()
            .filter_map(|p| p.next_timeout())
            .min()
    }

    /// Drains one participant's output: datagrams, media and keyframe requests to forward.
    fn drain(&mut self, p: &mut Participant) {
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    p.set_timeout(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    self.transmits
                        .push_back((t.source, t.destination, t.contents.to_vec()));
                }
                Ok(Output::Event(e)) => match e {
                    // Directions are ours: the participant's send-only m-line is our receive side.
                    Event::MediaAdded(m) => {
                        match m.direction {
                            Direction::RecvOnly | Direction::SendRecv => {
                                p.inputs.push((m.mid, m.kind))
                            }
                            Direction::SendOnly => p.slots.push(Slot {
                                mid: m.mid,
                                kind: m.kind,
                                source: None,
                            }),
                            _ => {}
                        }
                        self.dirty = true;
                    }
                    Event::MediaData(d) => {
                        self.stats.frames_in += 1;
                        self.forwards.push_back(Forward::Media(p.id, Box::new(d)));
                    }
                    Event::KeyframeRequest(r) => {
                        self.forwards.push_back(Forward::Keyframe(p.id, r))
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

    /// Gives every participant's free slots to the room's other senders' tracks.
    fn assign_slots(&mut self, now: Instant) {
        let sources: Vec<(String, Source, MediaKind)> = self
            .participants
            .iter()
            .flat_map(|p| {
                p.inputs.iter().map(move |(mid, kind)| {
                    (
                        p.room.clone(),
                        Source {
                            from: p.id,
                            mid: *mid,
                        },
                        *kind,
                    )
                })
            })
            .collect();
        let mut keyframes = Vec::new();
        for p in &mut self.participants {
            for (room, src, kind) in &sources {
                if *room != p.room
                    || src.from == p.id
                    || p.slots.iter().any(|s| s.source == Some(*src))
                {
                    continue;
                }
                if let Some(slot) = p
                    .slots
                    .iter_mut()
                    .find(|s| s.kind == *kind && s.source.is_none())
                {
                    slot.source = Some(*src);
                    if *kind == MediaKind::Video {
                        keyframes.push(*src);
                    }
                }
            }
        }
        for src in keyframes {
            self.request_keyframe(src, now);
        }
    }

    fn request_keyframe(&mut self, src: Source, _now: Instant) {
        let Some(i) = self.participants.iter().position(|p| p.id == src.from) else {
            return;
        };
        let mut p = self.participants.swap_remove(i);
        if let Some(mut w) = p.rtc.writer(src.mid) {
            if w.request_keyframe(None, KeyframeRequestKind::Pli).is_ok() {
                self.stats.keyframe_requests += 1;
            }
        }
        self.drain(&mut p);
        self.participants.push(p);
    }

    /// Assigns slots that became assignable and forwards everything drained so far.
    fn flush(&mut self, now: Instant) {
        loop {
            if self.dirty {
                self.dirty = false;
                self.assign_slots(now);
            }
            self.forward_all(now);
            if !self.dirty && self.forwards.is_empty() {
                break;
            }
        }
    }

    fn forward_all(&mut self, now: Instant) {
        while let Some(f) = self.forwards.pop_front() {
            match f {
                Forward::Media(from, data) => {
                    if let Some((max, v)) = self.tap.as_mut() {
                        if v.len() < *max {
                            v.push(data.data.to_vec());
                        }
                    }
                    let src = Source {
                        from,
                        mid: data.mid,
                    };
                    let room = match self.participants.iter().find(|p| p.id == from) {
                        Some(p) => p.room.clone(),
                        None => continue,
                    };
                    for i in 0..self.participants.len() {
                        if self.participants[i].id == from || self.participants[i].room != room {
                            continue;
                        }
                        let mut p = self.participants.swap_remove(i);
                        match p
                            .slots
                            .iter()
                            .find(|s| s.source == Some(src))
                            .map(|s| s.mid)
                        {
                            Some(mid) => {
                                if let Some(w) = p.rtc.writer(mid) {
                                    if let Some(pt) = w.match_params(data.params) {
                                        let len = data.data.len() as u64;
                                        match w.write(
                                            pt,
                                            data.network_time,
                                            data.time,
                                            data.data.clone(),
                                        ) {
                                            Ok(()) => {
                                                self.stats.frames_out += 1;
                                                self.stats.bytes_out += len;
                                            }
                                            Err(e) => {
                                                debug!(participant = p.id, error = %e, "write failed")
                                            }
                                        }
                                    }
                                }
                            }
                            None => self.stats.no_slot += 1,
                        }
                        self.drain(&mut p);
                        self.participants.push(p);
                        let last = self.participants.len() - 1;
                        self.participants.swap(i, last);
                    }
                }
                Forward::Keyframe(at, req) => {
                    // A receiver asks for a keyframe on a slot: ask that slot's sender.
                    let src = self
                        .participants
                        .iter()
                        .find(|p| p.id == at)
                        .and_then(|p| p.slots.iter().find(|s| s.mid == req.mid))
                        .and_then(|s| s.source);
                    if let Some(src) = src {
                        self.request_keyframe(src, now);
                    }
                }
            }
        }
    }
}

impl Participant {
    fn set_timeout(&mut self, t: Instant) {
        self.timeout = Some(t);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.timeout
    }
}

/// How long str0m is given between timeouts at most.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(100);

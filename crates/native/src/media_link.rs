//! The participant's WebRTC session to the SFU (str0m, sans-IO), and synthetic media whose
//! frames let every receiver check them byte for byte.
//!
//! Every frame is sealed through the participant's [`FramePath`] before it reaches str0m;
//! nothing is written while there is no media key (the seal fails with `NotReady` and the
//! frame is dropped, never sent in the clear). Received frames are opened by the frame path
//! (which holds, releases and counts them) before anything looks at them; one that fails is
//! counted against its sender, never used. This file adds what only a test sender has:
//! synthetic frames that every receiver checks byte for byte, and latency samples.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use conclave_e2ee::{media::MAX_LIVE_EPOCHS, Timestamp};
use conclave_media_meta::{simulcast, speech, Voice};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tracing::warn;

use conclave_client::{FrameKind, FramePath, FrameTag, Intake, OpenedFrame};

mod counts;
mod send;
mod synthetic;

pub use counts::SenderCounts;
use counts::{sender_counts, Extras};
use synthetic::{check_body, Content};
pub use synthetic::{synthetic_body, synthetic_body_at, synthetic_layer_body, LAYER_SIZES};

/// Media kinds (str0m's), re-exported for callers of [`synthetic_body`].
pub use str0m::media::MediaKind as Kind;

/// Receive-only slots per kind in the offer: how many other senders can be heard and seen at
/// once.
pub const DEFAULT_SLOTS: usize = 8;

/// The media session.
pub struct MediaLink {
    rtc: Rtc,
    pending: Option<SdpPendingOffer>,
    audio: Mid,
    video: Mid,
    slots: BTreeMap<Mid, MediaKind>,
    timeout: Option<Instant>,
    transmits: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    connected: bool,
    seq: u32,
    audio_time: u64,
    video_time: u64,
    last_video_epoch: Option<u64>,
    /// Per simulcast layer: a receiver asked for a keyframe.
    keyframe_wanted: [bool; 3],
    extras: BTreeMap<u32, Extras>,
    voices: BTreeMap<u32, Voice>,
    /// (sender, epoch) pairs in which a video frame was seen, recent epochs only.
    first_in_epoch: BTreeSet<(u32, u64)>,
    /// The audio level of held audio frames, by tag, for when they are released.
    held_levels: BTreeMap<FrameTag, Option<i8>>,
    next_tag: FrameTag,
    /// The key clock at an instant of the media clock: keys and held frames run on the wall
    /// clock (`Timestamp`), str0m on `Instant`s; the link converts.
    anchor: (Instant, Timestamp),
    /// Frames sealed and written.
    pub sent: u64,
    /// Video keyframes sealed and written (top layer).
    pub keyframes_sent: u64,
    /// Audio frames sent.
    pub audio_sent: u64,
    /// Video capture instants sent (each as one frame per simulcast layer).
    pub video_ticks: u64,
    /// The audio level (RFC 6464, -dBov) put on outgoing audio packets, if any.
    audio_level: Option<i8>,
    /// A wall-clock reading (µs since the Unix epoch) at an instant, from the runtime: with
    /// it, synthetic frames carry their capture time and receivers measure the latency.
    wall: Option<(Instant, u64)>,
    /// Capture-to-open latency of recent synthetic frames, in µs (the newest
    /// [`LATENCY_SAMPLES`]).
    latencies_us: VecDeque<u32>,
    /// When the first frame from anyone opened.
    first_opened: Option<Instant>,
    /// The session failed (for example its DTLS handshake timed out): it must be replaced.
    failed: bool,
    /// DTLS completed once (a later ICE reconnect resumes sending).
    established: bool,
    /// Since when ICE has been disconnected.
    disconnected_since: Option<Instant>,
}

/// How long the media path may stay disconnected before the session is replaced.
pub const DISCONNECTED_GIVE_UP: std::time::Duration = std::time::Duration::from_secs(5);

/// How many recent frame latencies a link keeps.
pub const LATENCY_SAMPLES: usize = 4096;

impl core::fmt::Debug for MediaLink {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MediaLink")
            .field("connected", &self.connected)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

pub(crate) fn frame_kind(kind: MediaKind) -> FrameKind {
    if kind == MediaKind::Video {
        FrameKind::Video
    } else {
        FrameKind::Audio
    }
}

fn media_kind(kind: FrameKind) -> MediaKind {
    match kind {
        FrameKind::Video => MediaKind::Video,
        FrameKind::Audio => MediaKind::Audio,
    }
}

/// Simulcast layers a participant sends, low to high, by RTP stream id.
pub use conclave_media_meta::simulcast::LAYERS;

impl MediaLink {
    /// A session that offers our audio and video and `slots` receive slots of each kind;
    /// returns it and the SDP offer. `ts` is the key clock's time at `now`.
    pub fn offer(
        local: SocketAddr,
        slots: usize,
        now: Instant,
        ts: Timestamp,
    ) -> Result<(Self, String), String> {
        let mut rtc = Rtc::builder()
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        let candidate = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
        rtc.add_local_candidate(candidate);
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let mut simulcast = str0m::media::Simulcast::new();
        for rid in LAYERS {
            simulcast.add_send_layer(str0m::media::SimulcastLayer::new(rid));
        }
        let video = change.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(simulcast),
        );
        let mut slot_mids = BTreeMap::new();
        for _ in 0..slots {
            slot_mids.insert(
                change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None),
                MediaKind::Audio,
            );
            slot_mids.insert(
                change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None),
                MediaKind::Video,
            );
        }
        let (offer, pending) = change.apply().ok_or("empty offer")?;
        let link = MediaLink {
            rtc,
            pending: Some(pending),
            audio,
            video,
            slots: slot_mids,
            timeout: None,
            transmits: VecDeque::new(),
            connected: false,
            seq: 0,
            audio_time: 0,
            video_time: 0,
            last_video_epoch: None,
            keyframe_wanted: [true; 3],
            extras: BTreeMap::new(),
            voices: BTreeMap::new(),
            first_in_epoch: BTreeSet::new(),
            held_levels: BTreeMap::new(),
            next_tag: 0,
            anchor: (now, ts),
            sent: 0,
            keyframes_sent: 0,
            audio_sent: 0,
            video_ticks: 0,
            audio_level: None,
            wall: None,
            latencies_us: VecDeque::new(),
            first_opened: None,
            failed: false,
            established: false,
            disconnected_since: None,
        };
        Ok((link, offer.to_sdp_string()))
    }

    /// Applies the SFU's answer.
    pub fn accept_answer(
        &mut self,
        sdp: &str,
        frames: &mut FramePath,
        now: Instant,
    ) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())?;
        self.drain(frames, now);
        Ok(())
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the session failed for good (ICE or DTLS gave up): the caller offers a new
    /// one and hands this one to [`MediaLink::inherit`].
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// Carries what was counted on a failed session over to its replacement, so a call's
    /// counts survive a media restart.
    pub fn inherit(&mut self, old: MediaLink) {
        self.extras = old.extras;
        self.voices = old.voices;
        self.first_in_epoch = old.first_in_epoch;
        self.sent = old.sent;
        self.keyframes_sent = old.keyframes_sent;
        self.audio_sent = old.audio_sent;
        self.video_ticks = old.video_ticks;
        self.seq = old.seq;
        self.audio_level = old.audio_level;
        self.wall = self.wall.or(old.wall);
        self.latencies_us = old.latencies_us;
        self.first_opened = old.first_opened;
    }

    /// Sets the wall clock: `wall_us` (µs since the Unix epoch) is the time at `now`. From
    /// then on synthetic frames carry their capture time, and frames from senders that do
    /// the same give latency samples ([`MediaLink::latencies_us`]). Only meaningful between
    /// machines whose clocks agree (the load test runs everyone on one machine).
    pub fn set_wall_clock(&mut self, now: Instant, wall_us: u64) {
        self.wall = Some((now, wall_us));
    }

    fn wall_us(&self, now: Instant) -> u64 {
        self.wall.map_or(0, |(at, us)| {
            let d = now.saturating_duration_since(at).as_micros();
            us.saturating_add(d.min(u128::from(u64::MAX)) as u64)
        })
    }

    /// The key clock at `now`.
    fn ts(&self, now: Instant) -> Timestamp {
        let (at, ts) = self.anchor;
        ts.saturating_add(now.saturating_duration_since(at))
    }

    /// Capture-to-open latency of the newest synthetic frames, in µs.
    pub fn latencies_us(&self) -> impl Iterator<Item = u32> + '_ {
        self.latencies_us.iter().copied()
    }

    /// When the first frame from anyone opened.
    pub fn first_opened(&self) -> Option<Instant> {
        self.first_opened
    }

    /// A datagram from the SFU.
    pub fn handle_receive(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        frames: &mut FramePath,
        now: Instant,
    ) {
        let Ok(r) = Receive::new(Protocol::Udp, source, destination, bytes) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
            warn!(error = %e, "media input");
        }
        self.drain(frames, now);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, frames: &mut FramePath, now: Instant) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            warn!(error = %e, "media timeout");
        }
        self.drain(frames, now);
        if self
            .disconnected_since
            .is_some_and(|t| now.saturating_duration_since(t) >= DISCONNECTED_GIVE_UP)
            && !self.failed
        {
            warn!("media path down too long; the session will be replaced");
            self.failed = true;
        }
    }

    /// When to call [`MediaLink::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }

    /// Next datagram: (from, to, bytes).
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Per remote sender counts, by leaf: the frame path's, with what this link checked of
    /// the content.
    pub fn counts(&self, frames: &FramePath) -> BTreeMap<u32, SenderCounts> {
        let none = Extras::default();
        frames
            .intake()
            .senders()
            .iter()
            .map(|(&leaf, h)| {
                let x = self.extras.get(&leaf).unwrap_or(&none);
                (leaf, sender_counts(h, x))
            })
            .collect()
    }

    /// Retries frames held for a future epoch now (after a new epoch's keys were installed
    /// outside a participant, which releases them itself), and checks what opened.
    pub fn release_held(&mut self, frames: &mut FramePath, now: Instant) {
        frames.release(self.ts(now));
        self.take_released(frames, now);
    }

    /// Checks the frames the frame path released since the last call.
    pub fn take_released(&mut self, frames: &mut FramePath, now: Instant) {
        while let Some(f) = frames.poll_released() {
            let level = self.held_levels.remove(&f.tag).flatten();
            self.opened(frames, f, level, now);
        }
        for tag in frames.take_dropped() {
            self.held_levels.remove(&tag);
        }
    }

    /// One decrypted audio frame's level (authenticated only as far as the SFU's hop: the
    /// level is an RTP header extension, outside the end-to-end encryption).
    fn hear(&mut self, sender: u32, level: Option<i8>, now: Instant) {
        let voice = self.voices.entry(sender).or_default();
        voice.hear(level, now);
        let x = self.extras.entry(sender).or_default();
        if speech::is_loud(level) {
            x.speech_ms += speech::SPEECH_STEP.as_millis() as u64;
        }
        x.speaking = voice.speaking();
    }

    /// Checks one opened frame's content (synthetic frames byte for byte) and counts what it
    /// was.
    fn opened(&mut self, frames: &mut FramePath, f: OpenedFrame, level: Option<i8>, now: Instant) {
        let kind = media_kind(f.kind);
        if kind == MediaKind::Audio {
            self.hear(f.sender, level, now);
        }
        let content = check_body(&f.plain, f.sender, kind);
        if let Content::Synthetic { sent_us, .. } = content {
            let at = self.wall_us(now);
            if sent_us != 0 && at != 0 {
                if self.latencies_us.len() >= LATENCY_SAMPLES {
                    self.latencies_us.pop_front();
                }
                let us = at.saturating_sub(sent_us).min(u64::from(u32::MAX));
                self.latencies_us.push_back(us as u32);
            }
        }
        if !matches!(content, Content::Corrupt) {
            self.first_opened.get_or_insert(now);
        }
        let x = self.extras.entry(f.sender).or_default();
        match content {
            Content::Synthetic { keyframe, .. } | Content::Opaque { keyframe } => {
                if kind == MediaKind::Video {
                    x.video_decrypted += 1;
                    if let Content::Synthetic { layer, .. } = content {
                        if let Some(n) = x.video_layers.get_mut(layer as usize) {
                            *n += 1;
                        }
                        x.last_layer = Some(layer);
                    }
                }
                if matches!(content, Content::Opaque { .. }) {
                    x.unchecked += 1;
                }
                if kind == MediaKind::Video && self.first_in_epoch.insert((f.sender, f.epoch)) {
                    // The first video frame from this sender in this epoch.
                    x.keyframe_first_per_epoch =
                        keyframe && (x.video_epochs == 0 || x.keyframe_first_per_epoch);
                    x.video_epochs += 1;
                    // Epochs far behind cannot come back (their keys are erased): forget
                    // them, so a long call's bookkeeping stays small.
                    let epoch = f.epoch;
                    self.first_in_epoch
                        .retain(|&(_, e)| e + 2 * MAX_LIVE_EPOCHS as u64 >= epoch);
                }
            }
            Content::Corrupt => {
                let ts = self.ts(now);
                if let Some(h) = frames.intake_mut().sender_mut(f.sender) {
                    h.content_failed("IntegrityCheck", ts);
                }
            }
        }
    }

    fn drain(&mut self, frames: &mut FramePath, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.timeout = Some(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    self.transmits
                        .push_back((t.source, t.destination, t.contents.to_vec()))
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => {
                        self.connected = true;
                        self.established = true;
                        self.disconnected_since = None;
                    }
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        self.connected = false;
                        self.disconnected_since.get_or_insert(now);
                    }
                    // ICE came back (consent checks lost a few packets): send again.
                    Event::IceConnectionStateChange(
                        IceConnectionState::Connected | IceConnectionState::Completed,
                    ) if self.established => {
                        self.connected = true;
                        self.disconnected_since = None;
                    }
                    Event::KeyframeRequest(r) => match r.rid {
                        Some(rid) => {
                            if let Some(i) = simulcast::layer_index(&rid) {
                                self.keyframe_wanted[i] = true;
                            }
                        }
                        None => self.keyframe_wanted = [true; 3],
                    },
                    Event::MediaData(d) => {
                        let Some(&kind) = self.slots.get(&d.mid) else {
                            continue;
                        };
                        let tag = self.next_tag;
                        self.next_tag = self.next_tag.wrapping_add(1);
                        let ts = self.ts(now);
                        match frames.open(frame_kind(kind), &d.data, tag, ts) {
                            Intake::Opened(f) => {
                                self.opened(frames, f, d.ext_vals.audio_level, now)
                            }
                            Intake::Held { .. } => {
                                if kind == MediaKind::Audio {
                                    self.held_levels.insert(tag, d.ext_vals.audio_level);
                                }
                                // Holding this one may have pushed out the oldest: let go of
                                // what we keep for those now, not at the next timer.
                                for tag in frames.take_dropped() {
                                    self.held_levels.remove(&tag);
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    warn!(error = %e, "media session failed");
                    self.connected = false;
                    self.failed = true;
                    break;
                }
            }
        }
    }
}

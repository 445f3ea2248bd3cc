//! The participant's WebRTC session to the SFU (str0m, sans-IO), and synthetic media whose
//! frames let every receiver check them byte for byte.
//!
//! Every frame is sealed with the participant's [`MediaCrypto`] before it reaches str0m;
//! nothing is written while there is no media key (the seal fails with `NotReady` and the
//! frame is dropped, never sent in the clear). Received frames are opened before anything
//! looks at them; one that fails is counted against its sender, never used.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use conclave_e2ee::{
    media::MAX_LIVE_EPOCHS, ClearPrefix, FrameError, HoldQueue, MediaCrypto, Timestamp,
};
use conclave_media_meta::{simulcast, speech, vp8, Voice};
use serde::Serialize;
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, warn};

/// Media kinds (str0m's), re-exported for callers of [`synthetic_body`].
pub use str0m::media::MediaKind as Kind;

/// Receive-only slots per kind in the offer: how many other senders can be heard and seen at
/// once.
pub const DEFAULT_SLOTS: usize = 8;

/// Per remote sender (by leaf index) what arrived and what opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SenderCounts {
    /// Frames that arrived naming this sender.
    pub received: u64,
    /// Frames that opened (and, for synthetic frames, whose content checked out).
    pub decrypted: u64,
    /// Of those, frames of real media (a file or a device): authenticated by SFrame, but
    /// without synthetic content to compare byte for byte.
    pub unchecked: u64,
    /// Frames that did not open, or opened to the wrong content.
    pub failed: u64,
    /// Why frames failed, by kind of error.
    pub failure_kinds: BTreeMap<String, u64>,
    /// Of the decrypted frames, video frames.
    pub video_decrypted: u64,
    /// Synthetic video frames decrypted per simulcast layer (low, middle, high).
    pub video_layers: [u64; 3],
    /// The layer of the newest synthetic video frame.
    pub last_layer: Option<u8>,
    /// Speaking now, by the audio level on its packets (`conclave_media_meta::Voice`, the
    /// same detector the SFU ranks speakers with).
    pub speaking: bool,
    /// Loud audio heard from this sender, in milliseconds.
    pub speech_ms: u64,
    /// Frames that arrived twice (a retransmission duplicate): the first copy was used.
    pub duplicates: u64,
    /// Frames sealed under an epoch from before we joined (unreadable by design, not a
    /// failure).
    pub before_join: u64,
    /// Frames that arrived while this device held no keys at all (before its first epoch or
    /// after it left): not a failure.
    pub without_keys: u64,
    /// Frames held for an epoch not reached yet and not released (still held, or dropped by
    /// the hold queue's bounds).
    pub held: u64,
    /// Of the decrypted video frames, the first one seen in each epoch was a keyframe.
    pub keyframe_first_per_epoch: bool,
    /// Epochs in which video from this sender was decrypted.
    pub video_epochs: u64,
}

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
    counts: BTreeMap<u32, SenderCounts>,
    voices: BTreeMap<u32, Voice>,
    /// (sender, epoch) pairs in which a video frame was seen, recent epochs only.
    first_in_epoch: BTreeSet<(u32, u64)>,
    /// Held frames, tagged with their kind and the sender their KID names.
    held: HoldQueue<(MediaKind, u32)>,
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

fn clear_for(kind: MediaKind) -> ClearPrefix {
    if kind == MediaKind::Video {
        ClearPrefix::Vp8
    } else {
        ClearPrefix::None
    }
}

/// Simulcast layers a participant sends, low to high, by RTP stream id.
pub use conclave_media_meta::simulcast::LAYERS;

/// Synthetic video frame sizes per layer: (delta frame, keyframe) bytes. At 30 frames a second
/// the layers carry about 75, 300 and 750 kbit/s.
pub const LAYER_SIZES: [(usize, usize); 3] = [(300, 1000), (1200, 4000), (3000, 8000)];

/// The synthetic frame body of `(sender leaf, seq, kind)`, video at the middle layer:
/// receivers regenerate it and compare.
pub fn synthetic_body(leaf: u32, seq: u32, kind: MediaKind, keyframe: bool) -> Vec<u8> {
    synthetic_layer_body(leaf, seq, kind, keyframe, 1)
}

/// The synthetic frame body of `(sender leaf, seq, kind, layer)`: receivers regenerate it and
/// compare. Audio has no layers (`layer` is ignored).
pub fn synthetic_layer_body(
    leaf: u32,
    seq: u32,
    kind: MediaKind,
    keyframe: bool,
    layer: u8,
) -> Vec<u8> {
    synthetic_body_at(leaf, seq, kind, keyframe, layer, 0)
}

/// [`synthetic_layer_body`] carrying its capture time (`sent_us`, µs since the Unix epoch;
/// 0 for none), from which the receiver measures the latency.
pub fn synthetic_body_at(
    leaf: u32,
    seq: u32,
    kind: MediaKind,
    keyframe: bool,
    layer: u8,
    sent_us: u64,
) -> Vec<u8> {
    let layer = match kind {
        MediaKind::Audio => 0,
        _ => layer.min(LAYERS.len() as u8 - 1),
    };
    let (len, tag) = match kind {
        MediaKind::Audio => (80usize, b'A'),
        _ => {
            let (delta, key) = LAYER_SIZES[layer as usize];
            (if keyframe { key } else { delta }, b'V')
        }
    };
    let mut out = Vec::with_capacity(len + 10);
    if kind == MediaKind::Video {
        // A VP8 frame tag: P bit clear on keyframes, then (keyframes) start code and size.
        if keyframe {
            out.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
        } else {
            out.extend_from_slice(&[0x11, 0x02, 0x00]);
        }
    }
    out.push(tag);
    out.extend_from_slice(&leaf.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    if kind == MediaKind::Video {
        out.push(layer);
    }
    out.extend_from_slice(&sent_us.to_be_bytes());
    let mut x = (u64::from(leaf) << 32 | u64::from(seq)) ^ (u64::from(layer) << 60) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// What an opened frame turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// A synthetic frame of this sender, byte for byte as it must be (video: of this layer).
    Synthetic {
        keyframe: bool,
        layer: u8,
        /// Capture time the sender put in (µs since the Unix epoch), 0 if none.
        sent_us: u64,
    },
    /// Shaped like this sender's synthetic frame, but not what it must be.
    Corrupt,
    /// Real media (from a file or a device): authenticated by SFrame, not checked further.
    Opaque { keyframe: bool },
}

/// Checks an opened frame against what its sender must have sent.
fn check_body(plain: &[u8], sender: u32, kind: MediaKind) -> Content {
    let (keyframe, off, tag) = match kind {
        MediaKind::Video => {
            let k = vp8::frame_is_keyframe(plain);
            (k, if k { 10 } else { 3 }, b'V')
        }
        _ => (false, 0, b'A'),
    };
    let shaped = |body: &[u8]| -> Option<(u32, u32, u8, u64)> {
        if *body.first()? != tag {
            return None;
        }
        let leaf = u32::from_be_bytes(body.get(1..5)?.try_into().ok()?);
        let seq = u32::from_be_bytes(body.get(5..9)?.try_into().ok()?);
        let (layer, at) = if kind == MediaKind::Video {
            (*body.get(9)?, 10)
        } else {
            (0, 9)
        };
        let sent_us = u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?);
        (leaf == sender).then_some((leaf, seq, layer, sent_us))
    };
    match plain.get(off..).and_then(shaped) {
        Some((leaf, seq, layer, sent_us))
            if synthetic_body_at(leaf, seq, kind, keyframe, layer, sent_us) == plain =>
        {
            Content::Synthetic {
                keyframe,
                layer,
                sent_us,
            }
        }
        Some(_) => Content::Corrupt,
        None => Content::Opaque { keyframe },
    }
}

impl MediaLink {
    /// A session that offers our audio and video and `slots` receive slots of each kind;
    /// returns it and the SDP offer.
    pub fn offer(local: SocketAddr, slots: usize, now: Instant) -> Result<(Self, String), String> {
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
            counts: BTreeMap::new(),
            voices: BTreeMap::new(),
            first_in_epoch: BTreeSet::new(),
            held: HoldQueue::new(512, std::time::Duration::from_secs(3)),
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
        media: &mut MediaCrypto,
        now: Instant,
        ts: Timestamp,
    ) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| e.to_string())?;
        let pending = self.pending.take().ok_or("no offer pending")?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| e.to_string())?;
        self.drain(media, now, ts);
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
        self.counts = old.counts;
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

    /// Capture-to-open latency of the newest synthetic frames, in µs.
    pub fn latencies_us(&self) -> impl Iterator<Item = u32> + '_ {
        self.latencies_us.iter().copied()
    }

    /// When the first frame from anyone opened.
    pub fn first_opened(&self) -> Option<Instant> {
        self.first_opened
    }

    /// Frames held for a future epoch that were dropped (queue full or held too long): lost
    /// to a key transition.
    pub fn held_dropped(&self) -> u64 {
        self.held.dropped()
    }

    /// A datagram from the SFU.
    pub fn handle_receive(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        media: &mut MediaCrypto,
        now: Instant,
        ts: Timestamp,
    ) {
        let Ok(r) = Receive::new(Protocol::Udp, source, destination, bytes) else {
            return;
        };
        if let Err(e) = self.rtc.handle_input(Input::Receive(now, r)) {
            warn!(error = %e, "media input");
        }
        self.drain(media, now, ts);
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, media: &mut MediaCrypto, now: Instant, ts: Timestamp) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            warn!(error = %e, "media timeout");
        }
        self.drain(media, now, ts);
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

    /// Per remote sender counts, by leaf.
    pub fn counts(&self) -> &BTreeMap<u32, SenderCounts> {
        &self.counts
    }

    /// Frames parked for an epoch not reached yet.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Sets the audio level (RFC 6464: 0 is loudest, -127 silence) sent with every audio
    /// packet from now on, as a microphone's level meter would; `None` sends none. The SFU
    /// picks speakers from it; it is outside the encryption, like all RTP header extensions.
    pub fn set_audio_level(&mut self, level: Option<i8>) {
        self.audio_level = level.map(|l| l.clamp(-127, 0));
    }

    /// Asks the senders of every receive slot for a keyframe (as a decoder that lost its
    /// picture would).
    pub fn request_keyframes(&mut self) {
        let mids: Vec<Mid> = self
            .slots
            .iter()
            .filter(|(_, k)| **k == MediaKind::Video)
            .map(|(m, _)| *m)
            .collect();
        let mut api = self.rtc.direct_api();
        for mid in mids {
            if let Some(rx) = api.stream_rx_by_mid(mid, None) {
                rx.request_keyframe(str0m::media::KeyframeRequestKind::Pli);
            }
        }
    }

    /// Whether the next video frame from a file (sent on the top layer only, see
    /// [`MediaLink::send_frame`]) must be a keyframe: the first under a new key, or one a
    /// receiver asked for. (The other layers' requests stay pending: nothing is sent on them,
    /// and counting them made a file sender seek to its first keyframe on every tick.)
    pub fn keyframe_due(&self, media: &MediaCrypto) -> bool {
        self.layer_keyframe_due(LAYERS.len() - 1, media)
    }

    fn layer_keyframe_due(&self, layer: usize, media: &MediaCrypto) -> bool {
        self.keyframe_wanted[layer] || self.last_video_epoch != media.sending_epoch()
    }

    /// Seals and sends one synthetic frame of `kind` (video: one per simulcast layer). Returns
    /// whether it went out (not before the link is up and a media key exists).
    pub fn send_synthetic(
        &mut self,
        kind: MediaKind,
        leaf: u32,
        media: &mut MediaCrypto,
        now: Instant,
        ts: Timestamp,
    ) -> bool {
        if !self.connected || media.sending_epoch().is_none() {
            return false;
        }
        let seq = self.seq.wrapping_add(1);
        self.seq = seq;
        let sent_us = self.wall_us(now);
        if kind == MediaKind::Audio {
            let frame = synthetic_body_at(leaf, seq, kind, false, 0, sent_us);
            return self.send_layers(kind, &[(None, &frame, false)], 960, media, now, ts);
        }
        let periodic = seq.is_multiple_of(90);
        let frames: Vec<(Option<usize>, Vec<u8>, bool)> = (0..LAYERS.len())
            .map(|layer| {
                let key = periodic || self.layer_keyframe_due(layer, media);
                (
                    Some(layer),
                    synthetic_body_at(leaf, seq, kind, key, layer as u8, sent_us),
                    key,
                )
            })
            .collect();
        let frames: Vec<(Option<usize>, &[u8], bool)> = frames
            .iter()
            .map(|(l, f, k)| (*l, f.as_slice(), *k))
            .collect();
        self.send_layers(kind, &frames, 3000, media, now, ts)
    }

    /// Seals and sends one encoded frame of `kind` (an Opus packet or a VP8 frame), `step`
    /// ticks of the media clock (48 kHz audio, 90 kHz video) after the previous one; video
    /// goes out on the top simulcast layer only. Returns whether it went out (not before the
    /// link is up and a media key exists: never in the clear).
    #[allow(clippy::too_many_arguments)]
    pub fn send_frame(
        &mut self,
        kind: MediaKind,
        frame: &[u8],
        keyframe: bool,
        step: u64,
        media: &mut MediaCrypto,
        now: Instant,
        ts: Timestamp,
    ) -> bool {
        let layer = (kind == MediaKind::Video).then_some(LAYERS.len() - 1);
        self.send_layers(kind, &[(layer, frame, keyframe)], step, media, now, ts)
    }

    /// Seals and writes frames that share one capture time: (simulcast layer, frame,
    /// keyframe) for video, or one audio frame.
    fn send_layers(
        &mut self,
        kind: MediaKind,
        frames: &[(Option<usize>, &[u8], bool)],
        step: u64,
        media: &mut MediaCrypto,
        now: Instant,
        ts: Timestamp,
    ) -> bool {
        if !self.connected {
            return false;
        }
        let Some(epoch) = media.sending_epoch() else {
            return false;
        };
        let (mid, time) = if kind == MediaKind::Audio {
            self.audio_time += step;
            (
                self.audio,
                MediaTime::new(self.audio_time, Frequency::FORTY_EIGHT_KHZ),
            )
        } else {
            self.video_time += step;
            (
                self.video,
                MediaTime::new(self.video_time, Frequency::NINETY_KHZ),
            )
        };
        let mut any = false;
        for (layer, frame, keyframe) in frames {
            let mut wire = Vec::with_capacity(frame.len() + 32);
            if let Err(e) = media.seal(frame, clear_for(kind), &mut wire) {
                debug!(error = %e, "not sending: no media key");
                return false;
            }
            let Some(mut writer) = self.rtc.writer(mid) else {
                return false;
            };
            let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
                return false;
            };
            if let Some(l) = layer {
                writer = writer.rid(LAYERS[*l].into());
            }
            if kind == MediaKind::Audio {
                if let Some(level) = self.audio_level {
                    writer = writer.audio_level(level, speech::is_loud(Some(level)));
                }
            }
            if let Err(e) = writer.write(pt, now, time, wire) {
                warn!(error = %e, "media write");
                continue;
            }
            any = true;
            self.sent += 1;
            if let (Some(l), true) = (layer, *keyframe) {
                self.keyframe_wanted[*l] = false;
                if *l == LAYERS.len() - 1 {
                    self.keyframes_sent += 1;
                }
            }
        }
        if any {
            if kind == MediaKind::Video {
                self.last_video_epoch = Some(epoch);
                self.video_ticks += 1;
            } else {
                self.audio_sent += 1;
            }
        }
        self.drain(media, now, ts);
        any
    }

    /// Retries frames held for a future epoch (after a new epoch's keys were installed).
    pub fn release_held(&mut self, media: &mut MediaCrypto, now: Instant, ts: Timestamp) {
        for ((kind, sender), result) in self.held.release(media, ts) {
            let c = self.counts.entry(sender).or_default();
            c.held = c.held.saturating_sub(1);
            self.account(
                kind,
                sender,
                now,
                result.map(|(info, plain)| (info.sender, info.epoch, plain)),
            );
        }
    }

    /// One decrypted audio frame's level (authenticated only as far as the SFU's hop: the
    /// level is an RTP header extension, outside the end-to-end encryption).
    fn hear(&mut self, sender: u32, level: Option<i8>, now: Instant) {
        let voice = self.voices.entry(sender).or_default();
        voice.hear(level, now);
        let c = self.counts.entry(sender).or_default();
        if speech::is_loud(level) {
            c.speech_ms += speech::SPEECH_STEP.as_millis() as u64;
        }
        c.speaking = voice.speaking();
    }

    /// Counts one frame's outcome; `kid_sender` is the sender its KID names (for errors that
    /// name none).
    fn account(
        &mut self,
        kind: MediaKind,
        kid_sender: u32,
        now: Instant,
        result: Result<(u32, u64, Vec<u8>), FrameError>,
    ) {
        match result {
            Ok((sender, epoch, plain)) => {
                let content = check_body(&plain, sender, kind);
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
                let c = self.counts.entry(sender).or_default();
                match content {
                    Content::Synthetic { keyframe, .. } | Content::Opaque { keyframe } => {
                        c.decrypted += 1;
                        if kind == MediaKind::Video {
                            c.video_decrypted += 1;
                            if let Content::Synthetic { layer, .. } = content {
                                if let Some(n) = c.video_layers.get_mut(layer as usize) {
                                    *n += 1;
                                }
                                c.last_layer = Some(layer);
                            }
                        }
                        if matches!(content, Content::Opaque { .. }) {
                            c.unchecked += 1;
                        }
                        if kind == MediaKind::Video && self.first_in_epoch.insert((sender, epoch)) {
                            // The first video frame from this sender in this epoch.
                            c.keyframe_first_per_epoch =
                                keyframe && (c.video_epochs == 0 || c.keyframe_first_per_epoch);
                            c.video_epochs += 1;
                            // Epochs far behind cannot come back (their keys are erased):
                            // forget them, so a long call's bookkeeping stays small.
                            self.first_in_epoch
                                .retain(|&(_, e)| e + 2 * MAX_LIVE_EPOCHS as u64 >= epoch);
                        }
                    }
                    Content::Corrupt => {
                        c.failed += 1;
                        *c.failure_kinds.entry("IntegrityCheck".into()).or_default() += 1;
                    }
                }
            }
            Err(FrameError::Replayed { sender, .. }) => {
                self.counts.entry(sender).or_default().duplicates += 1;
            }
            Err(FrameError::BeforeJoin { sender, .. }) => {
                self.counts.entry(sender).or_default().before_join += 1;
            }
            Err(FrameError::NotReady) => {
                self.counts.entry(kid_sender).or_default().without_keys += 1;
            }
            Err(e) => {
                let c = self
                    .counts
                    .entry(e.sender().unwrap_or(kid_sender))
                    .or_default();
                c.failed += 1;
                let kind = format!("{e:?}");
                let kind = kind
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap_or("other")
                    .to_owned();
                *c.failure_kinds.entry(kind).or_default() += 1;
            }
        }
    }

    fn drain(&mut self, media: &mut MediaCrypto, now: Instant, ts: Timestamp) {
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
                        let clear = clear_for(kind);
                        // Every frame whose KID names a sender is counted as received, and
                        // then in exactly one of: decrypted, failed, before join, duplicate,
                        // without keys, held.
                        let Ok((sender, _)) = MediaCrypto::peek(&d.data, clear) else {
                            continue;
                        };
                        self.counts.entry(sender).or_default().received += 1;
                        let mut plain = Vec::with_capacity(d.data.len());
                        match media.open(&d.data, clear, &mut plain, ts) {
                            Err(FrameError::FutureEpoch { .. }) => {
                                self.counts.entry(sender).or_default().held += 1;
                                self.held.hold((kind, sender), d.data.to_vec(), clear, ts)
                            }
                            Ok(info) => {
                                if kind == MediaKind::Audio {
                                    self.hear(info.sender, d.ext_vals.audio_level, now);
                                }
                                self.account(
                                    kind,
                                    sender,
                                    now,
                                    Ok((info.sender, info.epoch, plain)),
                                )
                            }
                            Err(e) => self.account(kind, sender, now, Err(e)),
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

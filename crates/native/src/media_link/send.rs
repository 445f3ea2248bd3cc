//! The send side of the media session: frames sealed through the frame path, one per
//! simulcast layer for video, with the audio level on audio packets.

use std::time::Instant;

use conclave_client::FramePath;
use conclave_media_meta::speech;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid};
use tracing::{debug, warn};

use super::{frame_kind, synthetic_body_at, MediaLink, LAYERS};

impl MediaLink {
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
    pub fn keyframe_due(&self, frames: &FramePath) -> bool {
        self.layer_keyframe_due(LAYERS.len() - 1, frames)
    }

    pub(super) fn layer_keyframe_due(&self, layer: usize, frames: &FramePath) -> bool {
        self.keyframe_wanted[layer] || self.last_video_epoch != frames.media().sending_epoch()
    }

    /// Seals and sends one synthetic frame of `kind` (video: one per simulcast layer). Returns
    /// whether it went out (not before the link is up and a media key exists).
    pub fn send_synthetic(
        &mut self,
        kind: MediaKind,
        leaf: u32,
        frames: &mut FramePath,
        now: Instant,
    ) -> bool {
        if !self.connected || frames.media().sending_epoch().is_none() {
            return false;
        }
        let seq = self.seq.wrapping_add(1);
        self.seq = seq;
        let sent_us = self.wall_us(now);
        if kind == MediaKind::Audio {
            let frame = synthetic_body_at(leaf, seq, kind, false, 0, sent_us);
            return self.send_layers(kind, &[(None, &frame, false)], 960, frames, now);
        }
        let periodic = seq.is_multiple_of(90);
        let bodies: Vec<(Option<usize>, Vec<u8>, bool)> = (0..LAYERS.len())
            .map(|layer| {
                let key = periodic || self.layer_keyframe_due(layer, frames);
                (
                    Some(layer),
                    synthetic_body_at(leaf, seq, kind, key, layer as u8, sent_us),
                    key,
                )
            })
            .collect();
        let layers: Vec<(Option<usize>, &[u8], bool)> = bodies
            .iter()
            .map(|(l, f, k)| (*l, f.as_slice(), *k))
            .collect();
        self.send_layers(kind, &layers, 3000, frames, now)
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
        frames: &mut FramePath,
        now: Instant,
    ) -> bool {
        let layer = (kind == MediaKind::Video).then_some(LAYERS.len() - 1);
        self.send_layers(kind, &[(layer, frame, keyframe)], step, frames, now)
    }

    /// Seals and writes frames that share one capture time: (simulcast layer, frame,
    /// keyframe) for video, or one audio frame.
    pub(super) fn send_layers(
        &mut self,
        kind: MediaKind,
        layers: &[(Option<usize>, &[u8], bool)],
        step: u64,
        frames: &mut FramePath,
        now: Instant,
    ) -> bool {
        if !self.connected {
            return false;
        }
        let Some(epoch) = frames.media().sending_epoch() else {
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
        for (layer, frame, keyframe) in layers {
            let mut wire = Vec::with_capacity(frame.len() + 32);
            if let Err(e) = frames.seal(frame_kind(kind), frame, &mut wire) {
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
        self.drain(frames, now);
        any
    }
}

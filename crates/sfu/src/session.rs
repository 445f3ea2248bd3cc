//! One participant's media session: its str0m `Rtc`, its send-only tracks (what the SFU
//! receives) and its receive-only slots (what the SFU sends it), and what its `Rtc` produced.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use conclave_media_meta::simulcast::layer_rank as rank_of;
use conclave_media_meta::vp8::{self, Descriptor};
use conclave_media_meta::Voice;
use str0m::bwe::BweKind;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, Mid, Rid};
use str0m::rtp::RtpPacket;
use str0m::{Event, IceConnectionState, Output, Rtc};
use tracing::warn;

use crate::rewrite::Rewrite;
use crate::{ParticipantId, SfuStats, Transmit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    pub(crate) from: ParticipantId,
    pub(crate) mid: Mid,
}

pub(crate) struct Slot {
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    pub(crate) source: Option<Source>,
    /// The layer forwarded now (video), once a keyframe of it started.
    pub(crate) layer: Option<Option<Rid>>,
    /// The layer this slot should forward; switched to at its next keyframe.
    pub(crate) target: Option<Option<Rid>>,
    pub(crate) rewrite: Rewrite,
    /// Its retransmission cache was sized (on its first packet).
    pub(crate) rtx_sized: bool,
}

/// One simulcast layer (or the only stream) of a sender's track.
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) rid: Option<Rid>,
    /// When we last sent this layer's sender a keyframe request.
    pub(crate) last_pli: Option<Instant>,
    /// A request arrived within [`PLI_INTERVAL`] of the last: send it when the interval ends.
    pub(crate) pli_pending: bool,
    /// Bytes received in the current measuring window.
    pub(crate) window_bytes: u64,
    /// Smoothed bitrate, bits per second.
    pub(crate) rate: f64,
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
pub(crate) fn layer_rank(rid: Option<Rid>) -> u8 {
    rank_of(rid.as_deref())
}

pub(crate) struct Track {
    pub(crate) mid: Mid,
    pub(crate) kind: MediaKind,
    /// Its layers, as packets reveal them.
    pub(crate) layers: Vec<Layer>,
}

impl Track {
    pub(crate) fn layer_mut(&mut self, rid: Option<Rid>) -> &mut Layer {
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

pub(crate) struct Session {
    pub(crate) id: ParticipantId,
    pub(crate) room: Arc<str>,
    pub(crate) rtc: Rtc,
    /// Arrival order in the SFU (ranks senders who never spoke).
    pub(crate) order: u64,
    pub(crate) voice: Voice,
    /// The SFU's bandwidth estimate towards this participant, bits per second.
    pub(crate) estimate: Option<f64>,
    /// The highest layer its tiles need (`layer_rank`), from its tile size.
    pub(crate) max_layer: u8,
    /// Our receive side: the participant's send-only m-lines.
    pub(crate) inputs: Vec<Track>,
    /// Our send side: the participant's receive-only slots.
    pub(crate) slots: Vec<Slot>,
    /// The wake-up armed in the SFU's timer heap for this session, if any.
    pub(crate) timeout: Option<Instant>,
}

/// A packet to forward, with what the forwarding decisions need.
pub(crate) struct Packet {
    pub(crate) src: Source,
    pub(crate) rid: Option<Rid>,
    pub(crate) audio_level: Option<i8>,
    pub(crate) voice_activity: Option<bool>,
    pub(crate) codec: Codec,
    pub(crate) clock_rate: Frequency,
    pub(crate) seq: u64,
    pub(crate) ts: u32,
    pub(crate) marker: bool,
    pub(crate) keyframe_start: bool,
    /// VP8 payload descriptor fields that must stay continuous across switches.
    pub(crate) vp8: Descriptor,
    pub(crate) arrival: Instant,
    pub(crate) payload: Arc<[u8]>,
}

impl Packet {
    /// A VP8 packet of participant 0's track "0" with this payload (for tests and fuzzing).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn vp8(payload: Arc<[u8]>, arrival: Instant) -> Packet {
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
            vp8: Descriptor::parse(&payload),
            arrival,
            payload,
        }
    }
}

/// Something that has to happen after one participant's `Rtc` produced output.
pub(crate) enum Forward {
    Rtp(Box<Packet>),
    /// A receiver asked for a keyframe on one of its slots.
    Keyframe(ParticipantId, Mid),
}

/// Output shared by all participants.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) forwards: VecDeque<Forward>,
    pub(crate) stats: SfuStats,
    pub(crate) tap: Option<(usize, Vec<Vec<u8>>)>,
    /// A participant's m-lines became known: slots need (re)assigning.
    pub(crate) dirty: bool,
    /// When each participant's `Rtc` wants its timeout, soonest first. An entry is stale once
    /// the participant's timeout moved on (it is skipped): at 1,000 participants, scanning
    /// them all on every datagram cost more than forwarding it.
    pub(crate) timers: BinaryHeap<Reverse<(Instant, ParticipantId)>>,
}

/// Drains one participant's output: datagrams, packets and keyframe requests to forward.
pub(crate) fn drain(p: &mut Session, out: &mut Outbox) {
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
                out.transmits.push_back(Transmit {
                    source: t.source,
                    destination: t.destination,
                    contents: t.contents.to_vec(),
                });
            }
            Ok(Output::Event(e)) => match e {
                // Directions are ours: the participant's send-only m-line is our receive side.
                Event::MediaAdded(m) => {
                    match m.direction {
                        Direction::RecvOnly | Direction::SendRecv => p.inputs.push(Track {
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
fn packet(p: &mut Session, rtp: RtpPacket) -> Option<Packet> {
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
    let keyframe_start = spec.codec == Codec::Vp8 && vp8::starts_keyframe(&rtp.payload);
    let vp8 = if spec.codec == Codec::Vp8 {
        Descriptor::parse(&rtp.payload)
    } else {
        Descriptor::default()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyframe_bit_is_read_as_str0m_reads_it() {
        // Every short descriptor shape, and pseudo-random longer payloads.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        };
        for len in 0..12 {
            for _ in 0..20_000 {
                let p: Vec<u8> = (0..len).map(|_| next()).collect();
                assert_eq!(
                    vp8::starts_keyframe(&p),
                    str0m::format::detect_vp8_keyframe(&p),
                    "{p:02x?}"
                );
            }
        }
    }
}

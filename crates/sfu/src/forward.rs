//! Forwarding: every packet a sender's session produced goes to each receiver in its room
//! that has a slot for its source, on that slot's layer, rewritten to continue the slot's
//! stream, through the receiver's own session (its SRTP, pacer and retransmission cache).

use std::time::Instant;

use str0m::format::Codec;
use str0m::media::MediaKind;
use str0m::rtp::RtpWrite;

use crate::session::{drain, Forward, Packet};
use crate::{Sfu, RTX_CACHE_AGE, RTX_CACHE_PACKETS, RTX_RATIO_CAP};

impl Sfu {
    /// Assigns slots that became assignable and forwards everything drained so far.
    pub(crate) fn flush(&mut self, now: Instant) {
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

    pub(crate) fn forward_all(&mut self, now: Instant) {
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
    pub(crate) fn forward(&mut self, pkt: &Packet) {
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

//! Layer allocation: the SFU measures each simulcast layer's bitrate and gives each of a
//! receiver's video slots, best-ranked sender first, the highest layer that fits what is left
//! of the receiver's bandwidth estimate (the lowest layer if none does), and never a larger
//! one than the receiver's tiles need. Going up needs [`UP_HEADROOM`]; going down does not.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Rid};

use crate::session::{layer_rank, Source};
use crate::{ParticipantId, Sfu, ALLOCATION_INTERVAL};

/// Headroom a receiver's estimate must have over a higher layer's bitrate to move up to it.
pub const UP_HEADROOM: f64 = 1.15;
/// What one forwarded audio stream is assumed to take from a receiver's estimate.
pub const AUDIO_BPS: f64 = 50_000.0;

impl Sfu {
    /// Measures layer bitrates and re-chooses each receiver's layers from its estimate.
    pub(crate) fn allocate(&mut self, now: Instant) {
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
            .map(|p| (p.id, (Reverse(p.voice.since()), p.order)))
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
}

//! Slots: which senders each receiver gets, in which of its receive-only slots. Senders are
//! ranked by when they last started speaking (then by arrival); each receiver's video slots go
//! to the first `last_n` of that ranking and its audio slots to the first `top_k_audio`; a
//! slot whose sender falls out of the ranking is given to the newcomer (with a keyframe
//! request).

use std::cmp::Reverse;
use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use crate::session::{Session, Source};
use crate::{ParticipantId, Sfu};

impl Sfu {
    /// Gives each receiver's slots to the room's highest-ranked senders: the most recent
    /// speakers first, then by arrival; at most `last_n` video and `top_k_audio` audio. Slots
    /// already forwarding a sender that stays in the selection keep it.
    pub(crate) fn assign_slots(&mut self, now: Instant) {
        let mut keyframes = Vec::new();
        let (last_n, top_k) = (self.config.last_n, self.config.top_k_audio);
        for members in self.rooms.values() {
            // The room's ranking, best first.
            let mut ranked: Vec<&Session> = members
                .iter()
                .filter_map(|m| self.participants.get(m))
                .collect();
            ranked.sort_by_key(|p| (Reverse(p.voice.since()), p.order));
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
}

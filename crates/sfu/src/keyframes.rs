//! Keyframe requests: a slot that starts forwarding a new source or layer waits for a
//! keyframe, which the SFU asks the sender for (PLI), at most every [`PLI_INTERVAL`] per layer,
//! folding requests that come sooner into one sent when the interval ends, and asking again
//! after [`KEYFRAME_RETRY`] while the slot still waits. The periodic sweep also lets ended
//! sessions go.

use std::time::Instant;

use str0m::media::{KeyframeRequestKind, Rid};
use tracing::info;

use crate::session::{drain, Source};
use crate::{Sfu, KEYFRAME_RETRY, PLI_INTERVAL};

impl Sfu {
    /// Ended sessions go; slots waiting too long for a keyframe ask again; coalesced keyframe
    /// requests whose interval is over are sent.
    pub(crate) fn sweep(&mut self, now: Instant) {
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

    /// Asks a sender for a keyframe on one of its tracks (all its layers), at most every
    /// [`PLI_INTERVAL`] per layer.
    pub(crate) fn request_keyframe(&mut self, src: Source, now: Instant) {
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
    pub(crate) fn request_layer_keyframe(&mut self, src: Source, rid: Option<Rid>, now: Instant) {
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
}

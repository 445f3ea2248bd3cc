//! Rewriting one outgoing stream: every slot is one RTP stream with its own sequence numbers,
//! timestamps and VP8 picture ids, continuous for the receiver across changes of source and
//! layer.

use std::sync::Arc;
use std::time::Instant;

use crate::session::Packet;

#[derive(Debug, Default)]
pub(crate) struct Rewrite {
    /// The next packet forwarded starts a new source: rebase sequence numbers and timestamps.
    rebase: bool,
    /// Video: forward nothing until a keyframe starts.
    pub(crate) need_keyframe: bool,
    /// When we last asked for the keyframe we wait for.
    pub(crate) asked: Option<Instant>,
    /// Anything sent on this stream yet.
    started: bool,
    /// Outgoing = incoming + offset (extended sequence numbers).
    seq_offset: i64,
    /// Outgoing sequence numbers below this belong to an earlier source.
    seq_floor: u64,
    /// The next new outgoing sequence number.
    pub(crate) seq_next: u64,
    /// The newest packet sent ended its frame (RTP marker).
    tail_sent: bool,
    /// Outgoing = incoming + offset (RTP timestamps, wrapping).
    ts_offset: u32,
    /// Timestamp of the newest packet sent.
    ts_last: u32,
    /// The next packet continues on another layer: rebase sequence numbers only.
    relayer: bool,
    /// VP8: the next packet starts a new picture-ID space (new source or layer).
    renumber: bool,
    /// VP8: outgoing = incoming + offset (picture ID mod 2^15, TL0PICIDX mod 2^8).
    pic_offset: u16,
    tl0_offset: u8,
    /// VP8: the last outgoing picture ID and TL0PICIDX.
    pic_last: Option<u16>,
    tl0_last: Option<u8>,
}

impl Rewrite {
    pub(crate) fn new_source(&mut self, video: bool, now: Instant) {
        self.rebase = true;
        self.renumber = true;
        self.need_keyframe = video;
        self.asked = video.then_some(now);
    }

    /// The same source continues on another simulcast layer (from a keyframe): a new
    /// sequence-number space, the same clock.
    pub(crate) fn new_layer(&mut self) {
        self.relayer = true;
        self.renumber = true;
    }

    /// The payload to send for a forwarded VP8 packet: the same bytes, or a copy whose picture
    /// ID and TL0PICIDX continue the numbering this receiver has seen.
    pub(crate) fn vp8_payload(&mut self, pkt: &Packet) -> Arc<[u8]> {
        let ids = pkt.vp8;
        if self.renumber {
            self.renumber = false;
            self.pic_offset = match (ids.picture, self.pic_last) {
                (Some(p), Some(last)) => last.wrapping_add(1).wrapping_sub(p.value) & 0x7fff,
                _ => 0,
            };
            self.tl0_offset = match (ids.tl0, self.tl0_last) {
                (Some(t), Some(last)) => last.wrapping_add(1).wrapping_sub(t.value),
                _ => 0,
            };
        }
        let pic = ids
            .picture
            .map(|p| p.value.wrapping_add(self.pic_offset) & 0x7fff);
        let tl0 = ids.tl0.map(|t| t.value.wrapping_add(self.tl0_offset));
        // Newest outgoing values (serial-number order, so reordered packets do not pull back).
        if let Some(out) = pic {
            let newer = self
                .pic_last
                .is_none_or(|l| out != l && (out.wrapping_sub(l) & 0x7fff) < 0x4000);
            if newer {
                self.pic_last = Some(out);
            }
        }
        if let Some(out) = tl0 {
            if self
                .tl0_last
                .is_none_or(|l| out != l && out.wrapping_sub(l) < 0x80)
            {
                self.tl0_last = Some(out);
            }
        }
        if self.pic_offset == 0 && self.tl0_offset == 0 {
            return pkt.payload.clone();
        }
        let mut bytes = pkt.payload.to_vec();
        ids.rewrite(&mut bytes, pic, tl0);
        Arc::from(bytes)
    }

    /// Outgoing (sequence number, timestamp) for a packet, or None to drop it.
    pub(crate) fn map(&mut self, pkt: &Packet, clock: u32) -> Option<(u64, u32)> {
        if self.need_keyframe && !pkt.keyframe_start {
            return None;
        }
        // A video switch right after a frame whose tail was not sent (lost, or still to come
        // on the old layer) leaves one number out: with the numbers contiguous and the
        // timestamp changing, the receiver would take the unfinished frame as whole and hand
        // it on cut short (SFrame then refuses it); the gap makes it drop that frame.
        let gap =
            u64::from((self.need_keyframe || self.relayer) && self.started && !self.tail_sent);
        if self.rebase || self.need_keyframe {
            let seq_start = self.seq_next.max(1) + gap;
            self.seq_offset = seq_start as i64 - pkt.seq as i64;
            self.seq_floor = seq_start;
            // Continue the timeline a nominal frame (audio packet) after the last one sent.
            let ts_start = if self.started {
                self.ts_last.wrapping_add(clock / 50)
            } else {
                pkt.ts
            };
            self.ts_offset = ts_start.wrapping_sub(pkt.ts);
            self.rebase = false;
            self.need_keyframe = false;
            self.asked = None;
        }
        if self.relayer {
            let seq_start = self.seq_next.max(1) + gap;
            self.seq_offset = seq_start as i64 - pkt.seq as i64;
            self.seq_floor = seq_start;
            self.relayer = false;
        }
        let out = pkt.seq as i64 + self.seq_offset;
        if out < self.seq_floor as i64 {
            // Reordered from before the switch: those numbers went to the previous source.
            return None;
        }
        let out = out as u64;
        let ts = pkt.ts.wrapping_add(self.ts_offset);
        if out >= self.seq_next {
            self.seq_next = out + 1;
            self.ts_last = ts;
            self.tail_sent = pkt.marker;
        }
        self.started = true;
        Some((out, ts))
    }
}

/// For fuzzing the VP8 payload-descriptor handling: renumbers `payloads` (one slot's VP8 RTP
/// payloads; `true` marks a switch to another layer or source before that packet) as the SFU
/// does, and returns what it would send.
#[cfg(fuzzing)]
pub fn fuzz_vp8_renumber(payloads: &[(&[u8], bool)]) -> Vec<Vec<u8>> {
    let mut r = Rewrite::default();
    let now = Instant::now();
    payloads
        .iter()
        .map(|(p, switch)| {
            if *switch {
                r.new_source(true, now);
            }
            let mut pkt = Packet::vp8(Arc::from(*p), now);
            pkt.keyframe_start = conclave_media_meta::vp8::starts_keyframe(p);
            r.vp8_payload(&pkt).to_vec()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Packet;
    use conclave_media_meta::vp8::Descriptor;

    fn pkt(seq: u64, ts: u32, key: bool) -> Packet {
        let mut p = Packet::vp8(Arc::from(&[][..]), Instant::now());
        p.src.from = 1;
        p.seq = seq;
        p.ts = ts;
        p.keyframe_start = key;
        p
    }

    fn vp8_pkt(pid: u16, tl0: u8, key: bool) -> Packet {
        let payload = conclave_media_meta::vp8::sample_payload(pid, tl0, key);
        let mut p = pkt(0, 0, key);
        p.vp8 = Descriptor::parse(&payload);
        p.payload = Arc::from(payload);
        p
    }

    #[test]
    fn vp8_picture_ids_continue_across_a_switch_of_layer_or_source() {
        let mut r = Rewrite::default();
        r.new_source(true, Instant::now());
        let a = r.vp8_payload(&vp8_pkt(1000, 5, true));
        assert_eq!(
            Descriptor::parse(&a).picture.map(|p| p.value),
            Some(1000),
            "first source as is"
        );
        let b = r.vp8_payload(&vp8_pkt(1001, 5, false));
        assert_eq!(Descriptor::parse(&b).picture.map(|p| p.value), Some(1001));
        // Another layer numbers its pictures on its own: renumbered to continue.
        r.new_layer();
        let c = r.vp8_payload(&vp8_pkt(20000, 200, true));
        let ids = Descriptor::parse(&c);
        assert_eq!(ids.picture.map(|p| p.value), Some(1002));
        assert_eq!(ids.tl0.map(|t| t.value), Some(6));
        let d = r.vp8_payload(&vp8_pkt(20001, 200, false));
        assert_eq!(Descriptor::parse(&d).picture.map(|p| p.value), Some(1003));
        // The frame itself (after the descriptor) is untouched.
        assert_eq!(&d[6..], &vp8_pkt(20001, 200, false).payload[6..]);
        // Wrapping at 2^15.
        r.new_source(true, Instant::now());
        let e = r.vp8_payload(&vp8_pkt(0x7fff, 255, true));
        assert_eq!(Descriptor::parse(&e).picture.map(|p| p.value), Some(1004));
    }

    #[test]
    fn a_new_source_starts_at_a_keyframe_and_continues_the_stream() {
        let now = Instant::now();
        let mut r = Rewrite::default();
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(500, 9000, false), 90_000), None);
        assert_eq!(r.map(&pkt(501, 9000, true), 90_000), Some((1, 9000)));
        assert_eq!(r.map(&pkt(502, 9000, false), 90_000), Some((2, 9000)));
        let mut tail = pkt(503, 12000, false);
        tail.marker = true;
        assert_eq!(r.map(&tail, 90_000), Some((3, 12000)));
        // A second source takes the slot: numbers continue, the timeline moves on.
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(70_000, 5, false), 90_000), None);
        assert_eq!(r.map(&pkt(70_001, 5, true), 90_000), Some((4, 13800)));
        // Reordered from before the switch: dropped, its number belongs to the first source.
        assert_eq!(r.map(&pkt(69_999, 2, false), 90_000), None);
        // Reordering after the switch keeps its place.
        assert_eq!(r.map(&pkt(70_003, 3005, false), 90_000), Some((6, 16800)));
        assert_eq!(r.map(&pkt(70_002, 5, false), 90_000), Some((5, 13800)));
        assert_eq!(r.seq_next, 7);
        // Timestamps wrap like RTP's.
        r.new_source(false, now);
        assert_eq!(r.map(&pkt(10, u32::MAX, false), 90_000), Some((7, 18600)));
        assert_eq!(r.map(&pkt(11, 959, false), 90_000), Some((8, 19560)));
    }

    #[test]
    fn a_video_switch_after_an_unfinished_frame_leaves_a_gap_in_the_numbers() {
        let now = Instant::now();
        let mut r = Rewrite::default();
        r.new_source(true, now);
        assert_eq!(r.map(&pkt(10, 900, true), 90_000), Some((1, 900)));
        // The frame's tail (11, with the marker) is lost; the slot moves to another layer.
        r.new_layer();
        assert_eq!(
            r.map(&pkt(500, 3900, true), 90_000),
            Some((3, 3900)),
            "2 is left out: the receiver must not take frame 900 as whole"
        );
        let mut tail = pkt(501, 3900, false);
        tail.marker = true;
        assert_eq!(r.map(&tail, 90_000), Some((4, 3900)));
        // After a finished frame, the numbers run on.
        r.new_layer();
        assert_eq!(r.map(&pkt(90, 6900, true), 90_000), Some((5, 6900)));
    }
}

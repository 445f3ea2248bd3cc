//! VP8 as the media path sees it: the RTP payload descriptor (RFC 7741 4.2) the sender's
//! packetizer writes before each packet's share of the frame, and the frame tag (RFC 6386
//! 9.1) whose first bytes SFrame leaves in the clear for it. Nothing else of a frame is
//! readable outside its sender and receivers.

/// Clear bytes at the start of a VP8 delta frame: the 3-byte frame tag.
pub const DELTA_HEADER_LEN: usize = 3;
/// Clear bytes at the start of a VP8 keyframe: the frame tag, the start code and the
/// dimensions.
pub const KEYFRAME_HEADER_LEN: usize = 10;

/// Whether a VP8 frame (starting at its frame tag) is a keyframe: the tag's P bit is clear.
/// An empty frame is none.
pub fn frame_is_keyframe(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x01 == 0)
}

/// How many bytes at the start of a VP8 frame stay in the clear under SFrame (what a
/// packetizer and a decoder's first look need): the keyframe header or the delta frame's tag,
/// never more than the frame.
pub fn clear_header_len(frame: &[u8]) -> usize {
    let n = match frame.first() {
        None => 0,
        Some(_) if frame_is_keyframe(frame) => KEYFRAME_HEADER_LEN,
        Some(_) => DELTA_HEADER_LEN,
    };
    n.min(frame.len())
}

/// A picture ID in a payload descriptor: its value, its byte offset, and whether it is the
/// 15-bit form (else 7-bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PictureId {
    /// The value (mod 2^15, or 2^7 in the short form).
    pub value: u16,
    /// Byte offset in the RTP payload.
    pub at: usize,
    /// The 15-bit form.
    pub wide: bool,
}

/// A TL0PICIDX in a payload descriptor: its value and byte offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tl0PicIdx {
    /// The value (mod 2^8).
    pub value: u8,
    /// Byte offset in the RTP payload.
    pub at: usize,
}

/// The fields of a payload descriptor that a forwarder must keep continuous: each simulcast
/// layer (and each sender) numbers its pictures on its own, and a receiver's decoder tracks
/// references by these numbers, so a forwarder that moves a receiver to another layer or
/// source renumbers them to continue where it left off (as mediasoup and LiveKit do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// The picture ID, if the descriptor carries one whole.
    pub picture: Option<PictureId>,
    /// The TL0PICIDX, if the descriptor carries one.
    pub tl0: Option<Tl0PicIdx>,
}

impl Descriptor {
    /// Reads what an RTP payload's descriptor carries; fields a short payload announces but
    /// does not hold are left out.
    pub fn parse(p: &[u8]) -> Self {
        let mut d = Descriptor::default();
        let Some(&b0) = p.first() else {
            return d;
        };
        if b0 & 0x80 == 0 {
            return d;
        }
        let Some(&b1) = p.get(1) else {
            return d;
        };
        let mut i = 2;
        if b1 & 0x80 != 0 {
            let Some(&m) = p.get(i) else {
                return d;
            };
            if m & 0x80 != 0 {
                let Some(&lo) = p.get(i + 1) else {
                    return d;
                };
                d.picture = Some(PictureId {
                    value: u16::from(m & 0x7f) << 8 | u16::from(lo),
                    at: i,
                    wide: true,
                });
                i += 2;
            } else {
                d.picture = Some(PictureId {
                    value: u16::from(m),
                    at: i,
                    wide: false,
                });
                i += 1;
            }
        }
        if b1 & 0x40 != 0 {
            if let Some(&t) = p.get(i) {
                d.tl0 = Some(Tl0PicIdx { value: t, at: i });
            }
        }
        d
    }

    /// Writes new values into the fields this descriptor found in `payload` (the bytes it was
    /// parsed from): a picture ID in its own form (the short form keeps 7 bits), a TL0PICIDX.
    pub fn rewrite(&self, payload: &mut [u8], picture: Option<u16>, tl0: Option<u8>) {
        if let (Some(p), Some(v)) = (self.picture, picture) {
            if p.wide {
                if let Some(b) = payload.get_mut(p.at..p.at + 2) {
                    b[0] = 0x80 | (v >> 8) as u8 & 0x7f;
                    b[1] = v as u8;
                }
            } else if let Some(b) = payload.get_mut(p.at) {
                *b = (v & 0x7f) as u8;
            }
        }
        if let (Some(t), Some(v)) = (self.tl0, tl0) {
            if let Some(b) = payload.get_mut(t.at) {
                *b = v;
            }
        }
    }
}

/// Whether an RTP payload starts a VP8 keyframe: the first packet of a frame (S=1, partition
/// 0) whose frame tag, after the descriptor, has its P bit clear.
pub fn starts_keyframe(payload: &[u8]) -> bool {
    let Some(&b0) = payload.first() else {
        return false;
    };
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let Some(&ext) = payload.get(i) else {
            return false;
        };
        i += 1;
        if ext & 0x80 != 0 {
            let Some(&m) = payload.get(i) else {
                return false;
            };
            i += if m & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            i += 1;
        }
        if ext & 0x30 != 0 {
            i += 1;
        }
    }
    payload.get(i).is_some_and(|b| b & 0x01 == 0)
}

/// A VP8 payload with every descriptor field this crate reads (X=1, S=1; I=1, L=1, T=1; a
/// 15-bit picture ID `pid`, `tl0`, a TID byte) and then the first bytes of a frame (a keyframe
/// if `key`): for tests and seeds, here and in the SFU.
#[doc(hidden)]
pub fn sample_payload(pid: u16, tl0: u8, key: bool) -> Vec<u8> {
    vec![
        0x90,
        0xe0,
        0x80 | (pid >> 8) as u8,
        pid as u8,
        tl0,
        0x20,
        if key { 0x10 } else { 0x11 },
        0x02,
        0x00,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(pid: u16, tl0: u8, key: bool) -> Vec<u8> {
        sample_payload(pid, tl0, key)
    }

    #[test]
    fn a_descriptor_reads_and_rewrites_its_picture_ids_in_place() {
        let p = payload(0x1234, 7, true);
        let d = Descriptor::parse(&p);
        assert_eq!(
            d.picture.map(|p| (p.value, p.at, p.wide)),
            Some((0x1234, 2, true))
        );
        assert_eq!(d.tl0.map(|t| (t.value, t.at)), Some((7, 4)));
        assert!(starts_keyframe(&p));
        assert!(!starts_keyframe(&payload(1, 1, false)));
        let mut q = p.clone();
        d.rewrite(&mut q, Some(0x7fff), Some(200));
        let e = Descriptor::parse(&q);
        assert_eq!(e.picture.map(|p| p.value), Some(0x7fff));
        assert_eq!(e.tl0.map(|t| t.value), Some(200));
        assert_eq!(&q[5..], &p[5..], "the frame itself is untouched");
        // A descriptor too short to hold what it announces is left alone.
        assert_eq!(
            Descriptor::parse(&[0x90, 0xe0, 0x80]),
            Descriptor::default()
        );
        // Not the first packet of a frame, or a later partition: no keyframe start.
        assert!(!starts_keyframe(&[0x00, 0x10]));
        assert!(!starts_keyframe(&[0x11, 0x10]));
        assert!(starts_keyframe(&[0x10, 0x10]));
    }

    #[test]
    fn the_frame_tag_says_keyframe_and_how_much_stays_clear() {
        assert!(frame_is_keyframe(&[0x10, 0x02, 0x00]));
        assert!(!frame_is_keyframe(&[0x11, 0x02, 0x00]));
        assert!(!frame_is_keyframe(&[]));
        assert_eq!(clear_header_len(&[0x10; 20]), KEYFRAME_HEADER_LEN);
        assert_eq!(clear_header_len(&[0x11; 20]), DELTA_HEADER_LEN);
        assert_eq!(clear_header_len(&[0x10; 4]), 4);
        assert_eq!(clear_header_len(&[]), 0);
    }
}

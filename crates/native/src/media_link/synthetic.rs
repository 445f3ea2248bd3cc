//! Synthetic media: frames whose content every receiver can regenerate from (sender, sequence
//! number, kind, layer) and compare byte for byte, so a test knows that what opened is exactly
//! what was sealed, and frames carrying their capture time for latency.

use conclave_media_meta::vp8;
use str0m::media::MediaKind;

use super::LAYERS;

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
pub(crate) enum Content {
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
pub(crate) fn check_body(plain: &[u8], sender: u32, kind: MediaKind) -> Content {
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

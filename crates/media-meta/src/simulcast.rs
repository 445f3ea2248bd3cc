//! Simulcast layers: a sender sends its video up to three times, at a quarter, half and full
//! resolution, as RTP streams named by these stream ids (RFC 8851 `rid`s). The SFU forwards
//! one of them per receiver's tile, and never a larger one than the tile needs.

/// The layers' RTP stream ids, low to high.
pub const LAYERS: [&str; 3] = ["l", "m", "h"];

/// The index of the top layer in [`LAYERS`].
pub const TOP_LAYER: usize = LAYERS.len() - 1;

/// Tiles at most this wide (pixels) need no more than the low layer.
pub const LOW_LAYER_MAX_WIDTH: u32 = 320;
/// Tiles at most this wide (pixels) need no more than the middle layer.
pub const MIDDLE_LAYER_MAX_WIDTH: u32 = 640;

/// A layer's place in [`LAYERS`] by its stream id; a stream without one (a sender that does
/// not simulcast) or with another id counts as the middle layer.
pub fn layer_rank(rid: Option<&str>) -> u8 {
    match rid {
        Some("l") => 0,
        Some("m") => 1,
        Some("h") => 2,
        _ => 1,
    }
}

/// The highest layer (a [`layer_rank`]) that tiles `max_width` pixels wide need.
pub fn layer_for_width(max_width: u32) -> u8 {
    match max_width {
        0..=LOW_LAYER_MAX_WIDTH => 0,
        w if w <= MIDDLE_LAYER_MAX_WIDTH => 1,
        _ => 2,
    }
}

/// The index in [`LAYERS`] of a stream id, if it is one.
pub fn layer_index(rid: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == rid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_rank_low_to_high_and_tiles_choose_the_smallest_that_fills_them() {
        let ranks: Vec<u8> = LAYERS.iter().map(|l| layer_rank(Some(l))).collect();
        assert_eq!(ranks, [0, 1, 2]);
        assert_eq!(layer_rank(None), 1);
        assert_eq!(layer_rank(Some("x")), 1);
        assert_eq!(layer_for_width(0), 0);
        assert_eq!(layer_for_width(320), 0);
        assert_eq!(layer_for_width(321), 1);
        assert_eq!(layer_for_width(640), 1);
        assert_eq!(layer_for_width(641), 2);
        assert_eq!(layer_index("h"), Some(TOP_LAYER));
        assert_eq!(layer_index("q"), None);
    }
}

//! The SFU's VP8 payload-descriptor renumbering (picture ID, TL0PICIDX) across layer and
//! source switches: never a panic; a packet keeps its length, and only descriptor bytes (the
//! first 6 at most) may change; the VP8 frame after them, which SFrame authenticates, never.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Packets separated by 0xff; a packet starting with 0xfe switches source first.
    let packets: Vec<(&[u8], bool)> = data
        .split(|b| *b == 0xff)
        .map(|p| match p.split_first() {
            Some((0xfe, rest)) => (rest, true),
            _ => (p, false),
        })
        .collect();
    let out = conclave_sfu::fuzz_vp8_renumber(&packets);
    assert_eq!(out.len(), packets.len());
    for ((inp, _), o) in packets.iter().zip(&out) {
        assert_eq!(inp.len(), o.len());
        for (i, (a, b)) in inp.iter().zip(o.iter()).enumerate() {
            assert!(a == b || i < 6, "byte {i} past the descriptor changed");
        }
    }
});

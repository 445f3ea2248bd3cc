//! Opening frames with real keys installed (epochs 1 and 2, members 0..4; the seeds are
//! frames sealed under them): never a panic; a frame that opens does not open twice (replay)
//! and stops opening if any one of its bytes changes (header, clear prefix and payload are
//! all authenticated); the hold queue stays bounded.
#![no_main]
use conclave_e2ee::{ClearPrefix, HoldQueue, MediaCrypto, Timestamp};
use libfuzzer_sys::fuzz_target;

fn crypto() -> MediaCrypto {
    conclave_fuzz::epoch_crypto(0)
}

fuzz_target!(|data: &[u8]| {
    let mut m = crypto();
    let clear = match data.first() {
        Some(b) if b & 1 == 0 => ClearPrefix::Vp8,
        _ => ClearPrefix::None,
    };
    let mut out = Vec::new();
    let t = Timestamp::from_millis(1_500);
    if m.open(data, clear, &mut out, t).is_ok() {
        assert!(m.open(data, clear, &mut out, t).is_err(), "a replay opened");
        for at in 0..data.len() {
            let mut forged = data.to_vec();
            forged[at] ^= 0x01;
            let mut fresh = crypto();
            assert!(
                fresh.open(&forged, clear, &mut out, t).is_err(),
                "a frame with byte {at} changed opened"
            );
        }
    }
    let mut q: HoldQueue<u8> = HoldQueue::new(16, core::time::Duration::from_secs(2));
    for i in 0..20u8 {
        q.hold(i, data.to_vec(), clear, t);
    }
    assert!(q.len() <= 16);
    let _ = q.release(&mut m, t);
});

//! Meeting charters, as links and `--charter` carry them: never a panic; whatever decodes
//! encodes back to the same policy.
#![no_main]
use conclave_e2ee::RoomPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = RoomPolicy::from_charter(text) {
        let text = policy.to_charter().expect("a decoded charter encodes");
        let again = RoomPolicy::from_charter(&text).expect("an encoded charter decodes");
        assert_eq!(again, policy);
    }
});

//! The allocation-free SFrame header parser and `MediaCrypto::peek`: never a panic; a parsed
//! header never claims more bytes than it was given.
#![no_main]
use conclave_e2ee::media::parse_header;
use conclave_e2ee::{ClearPrefix, MediaCrypto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(h) = parse_header(data) {
        assert!(h.len <= data.len());
    }
    for clear in [ClearPrefix::None, ClearPrefix::Vp8, ClearPrefix::Fixed(3)] {
        let _ = MediaCrypto::peek(data, clear);
    }
});

//! The IVF and Ogg Opus readers: never a panic; what parses writes back and parses the same.
#![no_main]
use conclave_native::media_file::{Ivf, OggOpus};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ivf) = Ivf::parse(data) {
        assert_eq!(Ivf::parse(&ivf.write()).expect("re-parse"), ivf);
    }
    if let Ok(ogg) = OggOpus::parse(data) {
        assert_eq!(OggOpus::parse(&ogg.write(1)).expect("re-parse"), ogg);
    }
});

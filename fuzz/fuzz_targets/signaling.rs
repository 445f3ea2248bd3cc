//! Signaling messages, both directions: never a panic; what decodes re-encodes and decodes
//! to the same message.
#![no_main]
use conclave_proto::{ClientMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = ClientMsg::decode(text) {
        let again = ClientMsg::decode(&m.encode()).expect("a decoded message re-encodes");
        assert_eq!(format!("{m:?}"), format!("{again:?}"));
    }
    if let Ok(m) = ServerMsg::decode(text) {
        let again = ServerMsg::decode(&m.encode()).expect("a decoded message re-encodes");
        assert_eq!(format!("{m:?}"), format!("{again:?}"));
    }
});

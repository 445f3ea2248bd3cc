//! The browser participant's core (what the web worker calls): any text from the server, any
//! received frame, any token. Never a panic; a frame never opens for a participant with no
//! key, and nothing is sealed without one.
#![no_main]
use std::cell::RefCell;

use conclave_web::Call;
use libfuzzer_sys::fuzz_target;

const T0: f64 = 1_700_000_000_000.0;

thread_local! {
    static CALL: RefCell<Call> = RefCell::new({
        let id = conclave_web::new_identity("bea", "Bea").expect("identity");
        Call::new(&id, "Bea", "room", false).expect("call")
    });
}

fuzz_target!(|data: &[u8]| {
    let Some((&op, rest)) = data.split_first() else {
        return;
    };
    CALL.with(|cell| {
        let call = &mut *cell.borrow_mut();
        let keyless = call.sending_epoch().is_none();
        match op % 4 {
            0 => {
                if let Ok(text) = std::str::from_utf8(rest) {
                    let _ = call.handle(text, T0, 1);
                    while call.poll_transmit().is_some() {}
                    while call.poll_event().is_some() {}
                }
            }
            1 => {
                let opened = call.open(op & 0x10 != 0, rest, 1, T0);
                assert!(!(keyless && opened.is_some()), "opened without a key");
                for tag in call.release(T0) {
                    let _ = call.take_released(tag);
                }
            }
            2 => {
                if let Ok(text) = std::str::from_utf8(rest) {
                    let _ = conclave_web::token_claims(text);
                }
            }
            _ => {
                let sealed = call.seal(op & 0x10 != 0, rest);
                assert!(!(keyless && sealed.is_some()), "sealed without a key");
                let _ = call.state(T0);
            }
        }
    });
});

//! A member's participant core fed any server message: never a panic; the epoch never goes
//! back, and only moves on when the server accepts a commit this member made itself (it
//! cannot forge anyone else's).
#![no_main]
use std::cell::RefCell;

use conclave_client::Participant;
use conclave_fuzz::{room, T0};
use conclave_proto::ServerMsg;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static ALICE: RefCell<Participant> = RefCell::new({
        let (_, mut parts) = room();
        parts.swap_remove(0).1
    });
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = ServerMsg::decode(text) else {
        return;
    };
    ALICE.with(|cell| {
        let p = &mut *cell.borrow_mut();
        let epoch = p.epoch();
        let own_pending = p.session().is_some_and(|s| s.has_pending_commit());
        let _ = p.handle(msg, T0);
        while p.poll_transmit().is_some() {}
        while p.poll_event().is_some() {}
        if p.epoch() != epoch {
            assert!(own_pending, "the epoch moved without a commit of our own");
            assert_eq!(p.epoch(), epoch.map(|e| e + 1), "the epoch jumped");
        }
    });
});

//! The delivery service fed any signaling message from a member, a waiting connection and
//! an unknown one: never a panic, and the group never moves without a valid commit.
#![no_main]
use std::cell::RefCell;

use conclave_ds::Ds;
use conclave_fuzz::{room, T0};
use conclave_proto::ClientMsg;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static DS: RefCell<Ds> = RefCell::new(room().0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(ClientMsg::Membership(msg)) = ClientMsg::decode(text) else {
        return;
    };
    DS.with(|cell| {
        let ds = &mut *cell.borrow_mut();
        let epoch = ds.epoch("room");
        ds.handle(conclave_ds::ConnId(u64::from(who % 4)), msg, T0);
        ds.handle_timeout(T0);
        while ds.poll_output().is_some() {}
        assert_eq!(ds.epoch("room"), epoch, "the group moved on fuzz input");
    });
});

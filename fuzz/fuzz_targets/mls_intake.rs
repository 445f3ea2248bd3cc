//! The MLS intake of a member (`Session::process`) and of a joiner (`Device::join`): never a
//! panic, and garbage never moves the group to another epoch.
#![no_main]
use std::cell::RefCell;

use conclave_e2ee::{RoomPolicy, Session};
use conclave_fuzz::{device, T0};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SESSION: RefCell<(conclave_e2ee::Device, Session)> = RefCell::new({
        let d = device("alice");
        let s = d.create_room(RoomPolicy::open("room"), None, T0).expect("room");
        (device("bob"), s)
    });
}

fuzz_target!(|data: &[u8]| {
    SESSION.with(|cell| {
        let (joiner, session) = &mut *cell.borrow_mut();
        let epoch = session.epoch();
        let _ = session.process(data, T0);
        assert_eq!(session.epoch(), epoch, "garbage moved the epoch");
        let (welcome, tree) = data.split_at(data.len() / 2);
        let _ = joiner.join("room", welcome, tree, T0);
    });
});

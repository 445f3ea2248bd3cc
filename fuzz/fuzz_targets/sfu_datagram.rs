//! The SFU's media port fed any datagram, from the participant's address or another: never a
//! panic (STUN, DTLS, SRTP and RTCP demultiplexing, then our routing and rewriting).
#![no_main]
use std::cell::RefCell;
use std::net::SocketAddr;

use conclave_fuzz::{addrs, sfu};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static SFU: RefCell<conclave_sfu::Sfu> = RefCell::new(sfu().0);
}

fuzz_target!(|data: &[u8]| {
    let Some((&from, rest)) = data.split_first() else {
        return;
    };
    let (server, client) = addrs();
    let source = if from & 1 == 0 {
        client
    } else {
        SocketAddr::from(([127, 0, 0, 2], 1000 + u16::from(from)))
    };
    SFU.with(|cell| {
        let s = &mut *cell.borrow_mut();
        let now = std::time::Instant::now();
        s.handle_receive(now, source, server, rest);
        s.handle_timeout(now);
        while s.poll_transmit().is_some() {}
    });
});

//! The participant's media session fed any datagram (as if from the SFU): never a panic, and
//! nothing counted as decrypted without a key.
#![no_main]
use std::cell::RefCell;

use conclave_client::FramePath;
use conclave_fuzz::{addrs, sfu};
use conclave_native::media_link::MediaLink;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static LINK: RefCell<(MediaLink, FramePath)> =
        RefCell::new((sfu().1, FramePath::default()));
}

fuzz_target!(|data: &[u8]| {
    let (server, client) = addrs();
    LINK.with(|cell| {
        let (link, frames) = &mut *cell.borrow_mut();
        let now = std::time::Instant::now();
        link.handle_receive(server, client, data, frames, now);
        link.handle_timeout(frames, now);
        while link.poll_transmit().is_some() {}
        assert!(link.counts(frames).values().all(|c| c.decrypted == 0));
    });
});

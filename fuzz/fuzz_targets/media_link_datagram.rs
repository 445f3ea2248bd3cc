//! The participant's media session fed any datagram (as if from the SFU): never a panic, and
//! nothing counted as decrypted without a key.
#![no_main]
use std::cell::RefCell;

use conclave_client::media_link::MediaLink;
use conclave_e2ee::MediaCrypto;
use conclave_fuzz::{addrs, sfu, T0};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static LINK: RefCell<(MediaLink, MediaCrypto)> =
        RefCell::new((sfu().1, MediaCrypto::default()));
}

fuzz_target!(|data: &[u8]| {
    let (server, client) = addrs();
    LINK.with(|cell| {
        let (link, media) = &mut *cell.borrow_mut();
        let now = std::time::Instant::now();
        link.handle_receive(server, client, data, media, now, T0);
        link.handle_timeout(media, now, T0);
        while link.poll_transmit().is_some() {}
        assert!(link.counts().values().all(|c| c.decrypted == 0));
    });
});

//! A lobby host's return ticket, as knocks (a KeyPackage extension) and commits (an external
//! PSK id) carry it: never a panic; whatever decodes as a PSK id encodes back to the same id.
#![no_main]
use conclave_e2ee::{return_ticket_of, HostReturn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ticket) = HostReturn::from_psk_id(data) {
        assert_eq!(
            ticket.psk_id().to_vec(),
            data,
            "a decoded id encodes back the same"
        );
    }
    // The same bytes as a knock's KeyPackage.
    let _ = return_ticket_of(data);
});

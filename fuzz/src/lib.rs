//! Shared set-up for the fuzz targets: real rooms, made once per process.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Instant;

use conclave_client::{AdmitMode, NewRoomPolicy, Participant};
use conclave_ds::{generate_server_identity, ConnId, Ds, DsConfig};
use conclave_e2ee::Timestamp;
pub use conclave_sim::membership::{pump, pump_recording};

pub use conclave_sim::{device, SUITE, T0};

/// A DS with room "room": connection 1 (alice) and 2 (bob) are members, 3 (carol) is
/// connected and waiting. Returns the DS and the participants.
pub fn room() -> (Ds, Vec<(ConnId, Participant)>) {
    let (ds, parts, _) = room_recording();
    (ds, parts)
}

/// [`room`], with every message exchanged while it formed.
#[allow(clippy::type_complexity)]
pub fn room_recording() -> (Ds, Vec<(ConnId, Participant)>, Vec<(ConnId, bool, String)>) {
    let mut log = Vec::new();
    let (secret, identity) = generate_server_identity(SUITE).expect("server identity");
    let mut ds = Ds::new(DsConfig::default(), secret, identity);
    let mut parts = Vec::new();
    for (conn, name) in [(ConnId(1), "alice"), (ConnId(2), "bob")] {
        parts.push((
            conn,
            Participant::new(device(name), "room", NewRoomPolicy::Open, AdmitMode::Auto),
        ));
        ds.connect(conn, "room", name, T0);
        pump_recording(&mut ds, &mut parts, &mut log);
        let later = T0.saturating_add(std::time::Duration::from_secs(1));
        ds.handle_timeout(later);
        pump_recording(&mut ds, &mut parts, &mut log);
    }
    ds.connect(ConnId(3), "room", "carol", T0);
    pump_recording(&mut ds, &mut parts, &mut log);
    (ds, parts, log)
}

/// The SFU's address in the SFU targets, and a participant's.
pub fn addrs() -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from(([127, 0, 0, 1], 8481)),
        SocketAddr::from(([127, 0, 0, 1], 40000)),
    )
}

/// An SFU with one participant whose offer came from a real `MediaLink`.
pub fn sfu() -> (
    conclave_sfu::Sfu,
    conclave_native::media_link::MediaLink,
    Instant,
) {
    let (s, l, now, _) = sfu_with_answer();
    (s, l, now)
}

/// [`sfu`], and the SFU's SDP answer.
pub fn sfu_with_answer() -> (
    conclave_sfu::Sfu,
    conclave_native::media_link::MediaLink,
    Instant,
    String,
) {
    let (server, client) = addrs();
    let now = Instant::now();
    let (link, offer) =
        conclave_native::media_link::MediaLink::offer(client, 8, now, T0).expect("offer");
    let mut sfu = conclave_sfu::Sfu::new(server);
    let answer = sfu.add_participant(7, "room", &offer, now).expect("answer");
    (sfu, link, now, answer)
}

/// Media keys for epochs 1 and 2 of a four-member room (leaves 0..4), as member `own_leaf`:
/// the keys the `sframe_open` target opens with and its seed frames were sealed with.
pub fn epoch_crypto(own_leaf: u32) -> conclave_e2ee::MediaCrypto {
    let mut m = conclave_e2ee::MediaCrypto::default();
    for epoch in [1u64, 2] {
        let s = conclave_e2ee::EpochSecrets::from_base_key(
            SUITE,
            epoch,
            &[epoch as u8; 16],
            own_leaf,
            vec![0, 1, 2, 3],
        );
        m.install_epoch(s, Timestamp::from_millis(1_000))
            .expect("install");
    }
    m
}

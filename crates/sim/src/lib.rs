//! # Conclave's simulation harness
//!
//! For tests, fuzz targets and benches, never for the product (nothing but dev-dependencies
//! and the fuzz crate depend on it). Two simulators, both on the real, unmodified cores in
//! virtual time:
//!
//! - [`membership`]: the delivery-service core and participants on an in-memory signaling
//!   network that a test can make malicious (withhold, rewrite, replay, invent what the server
//!   sends); [`membership::pump`] is the same loop for callers that keep their own state;
//! - [`network`]: media sessions and the SFU core on a network with loss, delay and
//!   bandwidth caps.
#![forbid(unsafe_code)]
#![allow(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod membership;
pub mod network;

use conclave_e2ee::{
    CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite, Timestamp,
};

/// A fixed point in time where every simulation starts.
pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// The suite of every simulated room.
pub const SUITE: RoomCipherSuite = RoomCipherSuite::Curve25519Aes128;

/// A fresh device for `name` (user id and display name), in memory.
pub fn device(name: &str) -> Device {
    let id = DeviceIdentity::generate(SUITE, CredentialInfo::new(name, name).expect("a name"))
        .expect("an identity");
    Device::new(id, GroupStore::memory()).expect("a device")
}

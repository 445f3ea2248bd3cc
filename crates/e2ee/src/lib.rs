//! # Conclave E2EE core
//!
//! Owns everything that touches end-to-end keys: device identities, the MLS group of a room
//! (RFC 9420, via `mls-rs`) with the room's admission policy enforced on every commit, the
//! roster and the meeting security code, and SFrame media encryption (RFC 9605, via `sframe`)
//! with keys from the MLS exporter. The public MLS rules it shares with the delivery service
//! (credentials, policy, committer choice) live in `conclave-mls` and are re-exported here.
//!
//! It never does IO: no sockets, no clock, no threads. Time comes in as [`Timestamp`]s; key
//! material comes from the crypto backends, which draw on the OS CSPRNG. It builds for
//! `wasm32-unknown-unknown`, so the browser runs the same code as the native client.
//!
//! ## Driving it
//!
//! ```
//! use conclave_e2ee::*;
//! # fn main() -> Result<()> {
//! let now = Timestamp::from_millis(1_700_000_000_000);
//! let suite = RoomCipherSuite::Curve25519Aes128;
//! let alice = Device::new(
//!     DeviceIdentity::generate(suite, CredentialInfo::new("alice", "Alice")?)?,
//!     GroupStore::memory(),
//! )?;
//! let bob = Device::new(
//!     DeviceIdentity::generate(suite, CredentialInfo::new("bob", "Bob")?)?,
//!     GroupStore::memory(),
//! )?;
//!
//! // Alice creates the room; Bob knocks with a KeyPackage; Alice (the designated committer)
//! // commits the add, the DS accepts it, Alice applies it and Bob joins from the Welcome with
//! // the ratchet tree served out of band.
//! let mut a = alice.create_room(RoomPolicy::open("room-1"), None, now)?;
//! let kp = bob.key_package(None, now)?;
//! let bundle = a.commit(&[kp], &[], now)?;
//! a.confirm_commit()?;
//! let welcome = bundle.welcome.expect("an add makes a Welcome");
//! let b = bob.join("room-1", &welcome, &bundle.ratchet_tree, now)?;
//! assert_eq!(a.security_code()?, b.security_code()?);
//!
//! // Media: each side installs the epoch's SFrame keys and seals/opens frames.
//! let mut ma = MediaCrypto::default();
//! let mut mb = MediaCrypto::default();
//! ma.install_epoch(a.epoch_secrets()?, now)?;
//! mb.install_epoch(b.epoch_secrets()?, now)?;
//! let (mut wire, mut plain) = (Vec::new(), Vec::new());
//! ma.seal(b"hello", ClearPrefix::None, &mut wire)?;
//! mb.open(&wire, ClearPrefix::None, &mut plain, now)?;
//! assert_eq!(plain, b"hello");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod device;
mod error;
mod host_return;
mod identity;
pub mod media;
mod self_update;
mod session;
mod session_types;
mod sframe_backend;
mod storage;

pub use conclave_mls::{
    committer, Admission, CredentialInfo, DeviceSigner, Fingerprint, HostReturn, Hosts, Invite,
    InviteList, KeyPackageCard, PolicyViolation, RoomCipherSuite, RoomPolicy, Timestamp,
    INVITE_EXTENSION, MAX_CHARTER_LEN, MAX_DISPLAY_NAME_LEN, MAX_KEY_PACKAGE_LEN,
    MAX_POLICY_ENTRIES, MAX_USER_ID_LEN, ROOM_POLICY_EXTENSION,
};
pub use device::{Device, KEY_PACKAGE_BACKDATE, KEY_PACKAGE_VALIDITY};
pub use error::{Error, Result};
pub use identity::{DeviceIdentity, PinCheck, TrustStore};
pub use media::{
    ClearPrefix, EpochSecrets, FrameError, FrameInfo, HoldQueue, MediaConfig, MediaCrypto,
    MediaStats, DEFAULT_HOLD_BYTES,
};
pub use session::{
    return_ticket_of, CommitBundle, EpochChange, Incoming, RosterEntry, SecurityCode,
    SelfUpdateTimer, Session, MAX_MLS_MESSAGE_LEN, MAX_TREE_LEN,
};
pub use storage::{write_private, DirStore, GroupStore};

/// Re-exports of the mls-rs types that appear in this crate's API.
pub mod mls {
    pub use mls_rs::identity::SigningIdentity;
    pub use mls_rs::CipherSuite;
    pub use mls_rs_core::crypto::SignaturePublicKey;
    pub use mls_rs_core::extension::ExtensionType;
}

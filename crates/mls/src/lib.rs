//! # Conclave's public MLS layer
//!
//! What every party to a Conclave room checks the same way, members and the delivery service
//! alike: Conclave credentials and device fingerprints, the room admission policy kept in the
//! group context, the [`ConclaveRules`] that enforce it on every commit, and the deterministic
//! designated committer. It holds no private group state and knows nothing of SFrame, so the
//! delivery service can depend on it without being able to reach a media key.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod charter;
pub mod committer;
mod crypto;
mod error;
mod host_return;
mod identity;
mod key_package;
mod policy;
mod rules;
mod time;

pub use charter::MAX_CHARTER_LEN;
pub use crypto::{provider, suite_provider, Provider, RoomCipherSuite};
pub use error::{Error, Result};
pub use host_return::{
    HostReturn, HOST_RETURN_EXPORTER_LABEL, HOST_RETURN_EXTENSION, HOST_RETURN_SECRET_LEN,
    HOST_RETURN_WINDOW,
};
pub use identity::{
    digit_groups, ConclaveIdentityProvider, CredentialInfo, Fingerprint, IdentityError,
    MAX_DISPLAY_NAME_LEN, MAX_USER_ID_LEN,
};
pub use key_package::{KeyPackageCard, MAX_KEY_PACKAGE_LEN};
pub use policy::{
    check_add, check_commit, check_invited, check_member_listed, drop_forbidden_references,
    policy_of, Admission, DeviceSigner, Hosts, Invite, InviteList, PolicyViolation, RoomPolicy,
    INVITE_EXTENSION, MAX_POLICY_ENTRIES, ROOM_POLICY_EXTENSION,
};
pub use rules::ConclaveRules;
pub use time::Timestamp;

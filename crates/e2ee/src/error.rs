//! The one error type of this crate.
//!
//! Variants are split the way rustls splits them: [`Error::Peer`]-like variants say that
//! something that arrived from the network (a commit, a Welcome, a frame) is wrong or
//! unacceptable; [`Error::Usage`] says the caller used the API wrongly. Nothing that arrives
//! from the network can panic this crate: every decode path ends in one of these variants.

use conclave_mls::PolicyViolation;

use crate::media::FrameError;

/// Errors of the Conclave E2EE core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An MLS message could not be decoded (bad framing, truncated, oversized).
    #[error("malformed MLS message: {0}")]
    MalformedMessage(String),
    /// MLS rejected a message: bad signature, wrong epoch, wrong group, unknown sender, ...
    #[error("MLS rejected the message: {0}")]
    Mls(String),
    /// A commit (or a Welcome) would have broken the room's admission policy; it was not applied.
    #[error("admission policy violated: {0}")]
    Policy(#[from] PolicyViolation),
    /// A Welcome into a group whose policy is not the meeting's charter the joiner holds.
    #[error("the group's policy ({}) is not the meeting's charter", .offered.kind())]
    NotTheCharter {
        /// The policy of the group offered.
        offered: Box<conclave_mls::RoomPolicy>,
    },
    /// A credential in the group is not a Conclave credential.
    #[error("invalid credential: {0}")]
    Credential(String),
    /// A Welcome (or message) is for a group or room other than the one expected.
    #[error("wrong group: {0}")]
    WrongGroup(String),
    /// A ratchet tree or GroupInfo served out of band does not match what the committer signed.
    #[error("ratchet tree rejected: {0}")]
    Tree(String),
    /// A media frame was rejected.
    #[error("frame rejected: {0}")]
    Frame(#[from] FrameError),
    /// Persisted state could not be read or written.
    #[error("state storage: {0}")]
    Storage(String),
    /// The caller used the API wrongly (e.g. asked for media keys before joining).
    #[error("API misuse: {0}")]
    Usage(&'static str),
    /// A cryptographic backend failed in a way that does not depend on peer input.
    #[error("crypto backend: {0}")]
    Crypto(String),
}

impl From<conclave_mls::Error> for Error {
    fn from(e: conclave_mls::Error) -> Self {
        match e {
            conclave_mls::Error::Credential(s) => Error::Credential(s),
            conclave_mls::Error::Malformed(s) => Error::MalformedMessage(s),
            conclave_mls::Error::Policy(v) => Error::Policy(v),
            conclave_mls::Error::Usage(s) => Error::Usage(s),
            other => Error::Crypto(other.to_string()),
        }
    }
}

impl Error {
    pub(crate) fn mls(err: impl core::fmt::Display) -> Self {
        Error::Mls(err.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

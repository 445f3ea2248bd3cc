//! The one error type of this crate.

use crate::policy::PolicyViolation;

/// Errors of the public MLS layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A credential is not a well-formed Conclave credential.
    #[error("invalid credential: {0}")]
    Credential(String),
    /// Bytes from the network (an invite, a policy) do not decode.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A commit breaks the room's admission policy.
    #[error("admission policy violated: {0}")]
    Policy(#[from] PolicyViolation),
    /// The caller used the API wrongly (e.g. an unsupported ciphersuite).
    #[error("API misuse: {0}")]
    Usage(&'static str),
    /// A cryptographic backend failed in a way that does not depend on peer input.
    #[error("crypto backend: {0}")]
    Crypto(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

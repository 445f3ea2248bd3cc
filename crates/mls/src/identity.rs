//! Who a member is, as every party can check: the MLS credential that carries the user id and
//! display name, the fingerprint of a device key, and the identity provider that accepts only
//! Conclave credentials.

use std::fmt;

use mls_rs::identity::basic::BasicCredential;
use mls_rs::identity::{Credential, CredentialType, SigningIdentity};
use mls_rs::{CipherSuiteProvider, ExtensionList};
use mls_rs_codec::{MlsDecode, MlsEncode, MlsSize};
use mls_rs_core::crypto::SignaturePublicKey;
use mls_rs_core::identity::{IdentityProvider, MemberValidationContext};
use mls_rs_core::time::MlsTime;

use crate::crypto::{suite_provider, RoomCipherSuite};
use crate::error::{Error, Result};

/// Longest user id a credential may carry, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest display name a credential may carry, in bytes.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;

const CREDENTIAL_VERSION: u8 = 1;
const FINGERPRINT_LABEL: &[u8] = b"conclave fingerprint v1";

/// SHA-256 over a device's signature public key: what a person compares, pins and lists in an
/// invite-list room.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, MlsSize, MlsEncode, MlsDecode)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a signature public key, hashed with the suite's hash function.
    pub fn of_key(suite: RoomCipherSuite, key: &SignaturePublicKey) -> Result<Self> {
        let cs = suite_provider(suite)?;
        let digest = cs
            .hash(&[FINGERPRINT_LABEL, key.as_bytes()].concat())
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        let bytes: [u8; 32] = digest
            .get(..32)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| Error::Crypto("hash shorter than 32 bytes".into()))?;
        Ok(Fingerprint(bytes))
    }

    /// The short code people compare: four groups of five digits, each group the first 40 bits
    /// of 5 hash bytes reduced mod 10^5, so about 66 bits in all (16.6 per group), not 80.
    pub fn short_code(&self) -> String {
        digit_groups(&self.0, 4)
    }

    /// All 32 bytes as lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short_code())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short_code())
    }
}

/// Renders `groups` groups of five decimal digits, each from 5 bytes of `bytes` (mod 10^5; the
/// bias is below 10^-6 per group). Used for fingerprints and the meeting security code.
pub fn digit_groups(bytes: &[u8], groups: usize) -> String {
    bytes
        .chunks(5)
        .take(groups)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a Conclave MLS credential says about its device: who the user is and what to call them.
/// Carried as the identifier of an MLS basic credential, so every member sees the same text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialInfo {
    /// Stable user id (e.g. what the server's join token named).
    pub user_id: String,
    /// Name to show in the roster.
    pub display_name: String,
}

#[derive(MlsSize, MlsEncode, MlsDecode)]
struct CredentialWire {
    version: u8,
    user_id: Vec<u8>,
    display_name: Vec<u8>,
}

impl CredentialInfo {
    /// Checks lengths and builds the info.
    pub fn new(user_id: &str, display_name: &str) -> Result<Self> {
        let info = CredentialInfo {
            user_id: user_id.to_owned(),
            display_name: display_name.to_owned(),
        };
        info.check()?;
        Ok(info)
    }

    /// Checks lengths and characters.
    pub fn check(&self) -> Result<()> {
        if self.user_id.is_empty() || self.user_id.len() > MAX_USER_ID_LEN {
            return Err(Error::Credential(format!(
                "user id must be 1..={MAX_USER_ID_LEN} bytes"
            )));
        }
        if self.display_name.len() > MAX_DISPLAY_NAME_LEN {
            return Err(Error::Credential(format!(
                "display name must be at most {MAX_DISPLAY_NAME_LEN} bytes"
            )));
        }
        if self
            .user_id
            .chars()
            .chain(self.display_name.chars())
            .any(|c| c.is_control() || is_invisible_format(c))
        {
            return Err(Error::Credential(
                "control, zero-width and text-direction characters are not allowed".into(),
            ));
        }
        Ok(())
    }

    /// The MLS credential carrying this info.
    pub fn to_credential(&self) -> Result<Credential> {
        let wire = CredentialWire {
            version: CREDENTIAL_VERSION,
            user_id: self.user_id.as_bytes().to_vec(),
            display_name: self.display_name.as_bytes().to_vec(),
        };
        let bytes = wire
            .mls_encode_to_vec()
            .map_err(|e| Error::Credential(e.to_string()))?;
        Ok(BasicCredential::new(bytes).into_credential())
    }

    /// Parses the credential of a member. Fails on anything that is not a well-formed Conclave
    /// credential.
    pub fn from_credential(credential: &Credential) -> Result<Self> {
        let basic = credential
            .as_basic()
            .ok_or_else(|| Error::Credential("not a basic credential".into()))?;
        let wire = CredentialWire::mls_decode(&mut basic.identifier())
            .map_err(|e| Error::Credential(format!("undecodable: {e}")))?;
        if wire.version != CREDENTIAL_VERSION {
            return Err(Error::Credential(format!(
                "unknown credential version {}",
                wire.version
            )));
        }
        let info = CredentialInfo {
            user_id: String::from_utf8(wire.user_id)
                .map_err(|_| Error::Credential("user id is not UTF-8".into()))?,
            display_name: String::from_utf8(wire.display_name)
                .map_err(|_| Error::Credential("display name is not UTF-8".into()))?,
        };
        info.check()?;
        Ok(info)
    }
}

/// Unicode format characters that render as nothing or reorder text (soft hyphen, zero-width
/// spaces and joiners, direction marks, embeddings, overrides and isolates, the byte-order
/// mark, interlinear annotations): with them, one user id can look like another in a roster.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// The MLS identity provider of Conclave: every member's credential must be a well-formed
/// Conclave credential; a member's identity (for MLS's "same member" checks) is its device key.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConclaveIdentityProvider;

/// Errors of [`ConclaveIdentityProvider`]: why a credential was refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IdentityError(String);

impl mls_rs_core::error::IntoAnyError for IdentityError {
    fn into_dyn_error(
        self,
    ) -> core::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

impl IdentityProvider for ConclaveIdentityProvider {
    type Error = IdentityError;

    fn validate_member(
        &self,
        signing_identity: &SigningIdentity,
        _timestamp: Option<MlsTime>,
        _context: MemberValidationContext<'_>,
    ) -> core::result::Result<(), Self::Error> {
        CredentialInfo::from_credential(&signing_identity.credential)
            .map(|_| ())
            .map_err(|e| IdentityError(e.to_string()))
    }

    fn validate_external_sender(
        &self,
        signing_identity: &SigningIdentity,
        _timestamp: Option<MlsTime>,
        _extensions: Option<&ExtensionList>,
    ) -> core::result::Result<(), Self::Error> {
        // The server's credential is a basic credential naming the server; its key is what
        // matters, and it is pinned in the group context by the room's creator.
        match signing_identity.credential.as_basic() {
            Some(_) => Ok(()),
            None => Err(IdentityError(
                "external sender must use a basic credential".into(),
            )),
        }
    }

    fn identity(
        &self,
        signing_identity: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> core::result::Result<Vec<u8>, Self::Error> {
        Ok(signing_identity.signature_key.as_bytes().to_vec())
    }

    fn valid_successor(
        &self,
        predecessor: &SigningIdentity,
        successor: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> core::result::Result<bool, Self::Error> {
        // A device never changes its key or its credential inside a group.
        Ok(predecessor == successor)
    }

    fn supported_types(&self) -> Vec<CredentialType> {
        vec![BasicCredential::credential_type()]
    }
}

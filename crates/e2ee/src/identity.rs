//! Device identity: a long-lived signature key generated on the device, the MLS credential that
//! carries the user id and display name, the key's fingerprint, and trust-on-first-use pins.

use std::collections::HashMap;
use std::fmt;

use mls_rs::identity::basic::BasicCredential;
use mls_rs::identity::{Credential, CredentialType, SigningIdentity};
use mls_rs::{CipherSuiteProvider, ExtensionList};
use mls_rs_codec::{MlsDecode, MlsEncode, MlsSize};
use mls_rs_core::crypto::{SignaturePublicKey, SignatureSecretKey};
use mls_rs_core::identity::{IdentityProvider, MemberValidationContext};
use mls_rs_core::time::MlsTime;
use zeroize::Zeroizing;

use crate::crypto::{suite_provider, RoomCipherSuite};
use crate::error::{Error, Result};

/// Longest user id a credential may carry, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Longest display name a credential may carry, in bytes.
pub const MAX_DISPLAY_NAME_LEN: usize = 128;

const CREDENTIAL_VERSION: u8 = 1;
const IDENTITY_FILE_VERSION: u8 = 1;
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

    /// The short code people compare: the first 80 bits as four groups of five digits.
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
pub(crate) fn digit_groups(bytes: &[u8], groups: usize) -> String {
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

    fn check(&self) -> Result<()> {
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
            .any(char::is_control)
        {
            return Err(Error::Credential(
                "control characters are not allowed".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn to_credential(&self) -> Result<Credential> {
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

/// A device's long-lived signing identity. The secret key is generated on the device from the
/// OS CSPRNG (by the crypto backend) and is only ever written to the device's own storage.
pub struct DeviceIdentity {
    suite: RoomCipherSuite,
    info: CredentialInfo,
    secret: SignatureSecretKey,
    public: SignaturePublicKey,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("suite", &self.suite)
            .field("info", &self.info)
            .field("fingerprint", &self.fingerprint().ok())
            .finish_non_exhaustive()
    }
}

#[derive(MlsSize, MlsEncode, MlsDecode)]
struct IdentityFile {
    version: u8,
    suite: u16,
    user_id: Vec<u8>,
    display_name: Vec<u8>,
    secret: Vec<u8>,
    public: Vec<u8>,
}

impl DeviceIdentity {
    /// Generates a fresh signature key pair for `suite`.
    pub fn generate(suite: RoomCipherSuite, info: CredentialInfo) -> Result<Self> {
        info.check()?;
        let cs = suite_provider(suite)?;
        let (secret, public) = cs
            .signature_key_generate()
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        Ok(DeviceIdentity {
            suite,
            info,
            secret,
            public,
        })
    }

    /// The same key under a new display name (the name is part of the credential; the key and
    /// so the fingerprint stay).
    pub fn with_display_name(&self, display_name: &str) -> Result<Self> {
        let info = CredentialInfo::new(&self.info.user_id, display_name)?;
        Ok(DeviceIdentity {
            suite: self.suite,
            info,
            secret: self.secret.clone(),
            public: self.public.clone(),
        })
    }

    /// The ciphersuite the key belongs to.
    pub fn suite(&self) -> RoomCipherSuite {
        self.suite
    }

    /// User id and display name.
    pub fn info(&self) -> &CredentialInfo {
        &self.info
    }

    /// Fingerprint of the public key.
    pub fn fingerprint(&self) -> Result<Fingerprint> {
        Fingerprint::of_key(self.suite, &self.public)
    }

    /// The public half.
    pub fn public_key(&self) -> &SignaturePublicKey {
        &self.public
    }

    pub(crate) fn secret_key(&self) -> &SignatureSecretKey {
        &self.secret
    }

    /// The MLS signing identity (credential + public key).
    pub fn signing_identity(&self) -> Result<SigningIdentity> {
        Ok(SigningIdentity::new(
            self.info.to_credential()?,
            self.public.clone(),
        ))
    }

    /// Serializes the identity, secret key included, for the device's own storage.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>> {
        let file = IdentityFile {
            version: IDENTITY_FILE_VERSION,
            suite: *self.suite.mls(),
            user_id: self.info.user_id.as_bytes().to_vec(),
            display_name: self.info.display_name.as_bytes().to_vec(),
            secret: self.secret.as_bytes().to_vec(),
            public: self.public.as_bytes().to_vec(),
        };
        let out = file
            .mls_encode_to_vec()
            .map_err(|e| Error::Storage(e.to_string()));
        // The secret copy inside `file` is dropped here; zeroize it explicitly.
        let IdentityFile { secret, .. } = file;
        drop(Zeroizing::new(secret));
        out.map(Zeroizing::new)
    }

    /// Restores an identity written by [`DeviceIdentity::to_bytes`]; checks that the public key
    /// matches the secret key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let file = IdentityFile::mls_decode(&mut &*bytes)
            .map_err(|e| Error::Storage(format!("identity file: {e}")))?;
        if file.version != IDENTITY_FILE_VERSION {
            return Err(Error::Storage(format!(
                "identity file version {} unknown",
                file.version
            )));
        }
        let suite = RoomCipherSuite::from_mls(file.suite.into())
            .ok_or_else(|| Error::Storage("identity file: unknown ciphersuite".into()))?;
        let info = CredentialInfo {
            user_id: String::from_utf8(file.user_id)
                .map_err(|_| Error::Storage("identity file: user id".into()))?,
            display_name: String::from_utf8(file.display_name)
                .map_err(|_| Error::Storage("identity file: display name".into()))?,
        };
        info.check()?;
        let cs = suite_provider(suite)?;
        // The AWS-LC provider slices the secret before checking its length (it panics on a
        // short key), so check the lengths against a key this backend generates.
        let (probe_secret, probe_public) = cs
            .signature_key_generate()
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        if file.secret.len() != probe_secret.as_bytes().len()
            || file.public.len() != probe_public.as_bytes().len()
        {
            return Err(Error::Storage(
                "identity file: key lengths are wrong".into(),
            ));
        }
        let secret = SignatureSecretKey::new(file.secret);
        let public = SignaturePublicKey::new(file.public);
        let derived = cs
            .signature_key_derive_public(&secret)
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        if derived != public {
            return Err(Error::Storage(
                "identity file: public key does not match secret key".into(),
            ));
        }
        Ok(DeviceIdentity {
            suite,
            info,
            secret,
            public,
        })
    }
}

/// The MLS identity provider of Conclave: every member's credential must be a well-formed
/// Conclave credential; a member's identity (for MLS's "same member" checks) is its device key.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConclaveIdentityProvider;

/// Errors of [`ConclaveIdentityProvider`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct IdentityError(String);

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

/// Outcome of checking a fingerprint against what this device saw before for the same user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinCheck {
    /// First time this user id is seen; the fingerprint is now pinned.
    FirstSeen,
    /// Same fingerprint as before.
    Matches,
    /// The user id comes with a different key than before: warn the person.
    Changed {
        /// The fingerprint pinned earlier.
        pinned: Fingerprint,
    },
}

/// Trust-on-first-use pins: user id to the fingerprint first seen for it.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    pins: HashMap<String, Fingerprint>,
}

impl TrustStore {
    /// Checks `fingerprint` for `user_id`, pinning it if the user is new. A changed key is
    /// reported and not re-pinned: the person decides (see [`TrustStore::repin`]).
    pub fn check(&mut self, user_id: &str, fingerprint: Fingerprint) -> PinCheck {
        match self.pins.get(user_id) {
            None => {
                self.pins.insert(user_id.to_owned(), fingerprint);
                PinCheck::FirstSeen
            }
            Some(p) if *p == fingerprint => PinCheck::Matches,
            Some(p) => PinCheck::Changed { pinned: *p },
        }
    }

    /// Accepts a new key for a user after the person verified it.
    pub fn repin(&mut self, user_id: &str, fingerprint: Fingerprint) {
        self.pins.insert(user_id.to_owned(), fingerprint);
    }

    /// Serializes the pins as lines of `fingerprint-hex user-id`.
    pub fn to_text(&self) -> String {
        let mut lines: Vec<_> = self
            .pins
            .iter()
            .map(|(u, f)| format!("{} {u}\n", f.to_hex()))
            .collect();
        lines.sort();
        lines.concat()
    }

    /// Parses what [`TrustStore::to_text`] wrote; bad lines are an error.
    pub fn from_text(text: &str) -> Result<Self> {
        let mut pins = HashMap::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let (fp, user) = line
                .split_once(' ')
                .ok_or_else(|| Error::Storage(format!("pins line {}: no user id", n + 1)))?;
            let fp = Fingerprint::from_hex(fp)
                .ok_or_else(|| Error::Storage(format!("pins line {}: bad fingerprint", n + 1)))?;
            pins.insert(user.to_owned(), fp);
        }
        Ok(TrustStore { pins })
    }
}

//! Device identity: a long-lived signature key generated on the device, and trust-on-first-use
//! pins of the keys seen for each user.

use std::collections::HashMap;
use std::fmt;

use conclave_mls::{suite_provider, CredentialInfo, DeviceSigner, Fingerprint, RoomCipherSuite};
use mls_rs::identity::SigningIdentity;
use mls_rs::CipherSuiteProvider;
use mls_rs_codec::{MlsDecode, MlsEncode, MlsSize};
use mls_rs_core::crypto::{SignaturePublicKey, SignatureSecretKey};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const IDENTITY_FILE_VERSION: u8 = 1;

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
        Ok(Fingerprint::of_key(self.suite, &self.public)?)
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

    /// The fingerprint pinned for `user_id`, if any.
    pub fn pinned(&self, user_id: &str) -> Option<Fingerprint> {
        self.pins.get(user_id).copied()
    }

    /// How many user ids are pinned.
    pub fn len(&self) -> usize {
        self.pins.len()
    }

    /// Whether nothing is pinned.
    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
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

impl AsRef<SignaturePublicKey> for DeviceIdentity {
    fn as_ref(&self) -> &SignaturePublicKey {
        &self.public
    }
}

impl DeviceSigner for DeviceIdentity {
    fn suite(&self) -> RoomCipherSuite {
        self.suite
    }

    fn public_key(&self) -> &SignaturePublicKey {
        &self.public
    }

    fn sign(&self, data: &[u8]) -> conclave_mls::Result<Vec<u8>> {
        let cs = suite_provider(self.suite)?;
        cs.sign(&self.secret, data)
            .map_err(|e| conclave_mls::Error::Crypto(format!("{e:?}")))
    }
}

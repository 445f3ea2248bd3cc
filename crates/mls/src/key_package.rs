//! What a knock's KeyPackage says about the device behind it, read from the KeyPackage itself
//! rather than from anything the server wrote beside it: the identity and name in its
//! credential, the fingerprint of its key, and a digest that names these exact bytes. A lobby
//! host's approval names the digest, so a server cannot swap another KeyPackage in under an
//! approved knock.

use mls_rs::MlsMessage;
use mls_rs_core::crypto::SignaturePublicKey;

use crate::crypto::{suite_provider, RoomCipherSuite};
use crate::error::{Error, Result};
use crate::identity::{CredentialInfo, Fingerprint};
use mls_rs::CipherSuiteProvider;

/// Largest KeyPackage accepted, in bytes. A Conclave KeyPackage is about 300 bytes on suite 1
/// and about 1.5 KB on the post-quantum suite (its ML-KEM-768 init key is 1,184 bytes); an
/// invite adds about 170.
pub const MAX_KEY_PACKAGE_LEN: usize = 8 * 1024;

const DIGEST_LABEL: &[u8] = b"conclave key package v1";

/// The device a KeyPackage introduces, as its own bytes say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPackageCard {
    /// User id and display name from the credential.
    pub credential: CredentialInfo,
    /// Fingerprint of the device's signature key.
    pub fingerprint: Fingerprint,
    /// The device's signature key.
    pub signature_key: SignaturePublicKey,
    /// The KeyPackage's ciphersuite.
    pub suite: RoomCipherSuite,
    /// Hash of the KeyPackage message bytes: names exactly this KeyPackage.
    pub digest: [u8; 32],
}

impl KeyPackageCard {
    /// Reads a KeyPackage message. Checks its size, framing, suite and credential; not its
    /// signatures (the delivery service validates those at intake, and every member again
    /// when it commits or processes the add).
    pub fn read(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_KEY_PACKAGE_LEN {
            return Err(Error::Malformed(format!(
                "a KeyPackage of {} bytes exceeds the {MAX_KEY_PACKAGE_LEN}-byte limit",
                bytes.len()
            )));
        }
        let msg = MlsMessage::from_bytes(bytes).map_err(|e| Error::Malformed(e.to_string()))?;
        let kp = msg
            .as_key_package()
            .ok_or_else(|| Error::Malformed("not a KeyPackage".into()))?;
        let suite = RoomCipherSuite::from_mls(kp.cipher_suite())
            .filter(|s| s.is_supported())
            .ok_or(Error::Usage(
                "the KeyPackage's ciphersuite is not supported",
            ))?;
        let id = kp.signing_identity();
        let credential = CredentialInfo::from_credential(&id.credential)?;
        let fingerprint = Fingerprint::of_key(suite, &id.signature_key)?;
        let cs = suite_provider(suite)?;
        let hash = cs
            .hash(&[DIGEST_LABEL, bytes].concat())
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        let digest: [u8; 32] = hash
            .get(..32)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| Error::Crypto("hash shorter than 32 bytes".into()))?;
        Ok(KeyPackageCard {
            credential,
            fingerprint,
            signature_key: id.signature_key.clone(),
            suite,
            digest,
        })
    }
}

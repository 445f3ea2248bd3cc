//! Key constructors for test vectors and benchmarks: keys for an explicit KID and base key,
//! through the same backend the ring uses. Not for production use.

pub use crate::sframe_backend::{DecryptionKey, EncryptionKey};

/// An encryption key for `kid` from `base_key`.
pub fn encryption_key(suite: sframe::CipherSuite, kid: u64, base_key: &[u8]) -> EncryptionKey {
    match EncryptionKey::derive_from(suite, kid, base_key) {
        Ok(k) => k,
        Err(e) => panic!("test key derivation failed: {e}"),
    }
}

/// Seals one frame with an explicit key and counter (the ring's framing).
pub fn seal_frame(key: &EncryptionKey, counter: u64, meta: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match super::wire::seal_frame(key, counter, meta, payload, &mut Vec::new(), &mut out) {
        Ok(()) => out,
        Err(e) => panic!("test seal failed: {e}"),
    }
}

/// Opens one frame (`meta` clear, then header, ciphertext and tag) with an explicit key.
pub fn open_frame(key: &DecryptionKey, meta: &[u8], rest: &[u8]) -> Option<Vec<u8>> {
    let header = super::wire::parse_header(rest)?;
    let mut out = Vec::new();
    super::wire::open_frame(key, &header, meta, rest, &mut Vec::new(), &mut out).ok()?;
    Some(out[meta.len()..].to_vec())
}

/// A decryption key for `kid` from `base_key`.
pub fn decryption_key(suite: sframe::CipherSuite, kid: u64, base_key: &[u8]) -> DecryptionKey {
    match DecryptionKey::derive_from(suite, kid, base_key) {
        Ok(k) => k,
        Err(e) => panic!("test key derivation failed: {e}"),
    }
}

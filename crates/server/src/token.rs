//! Join tokens: who may knock on which room, until when. Signed by the server's Ed25519 key
//! (AWS-LC); the format is `ct1.<base64url(JSON claims)>.<base64url(signature)>`.
//!
//! A token decides who may *knock*. It never decides who gets keys: members admit knockers
//! under the room's policy, and see the identity the token named in their roster.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

const PREFIX: &str = "ct1.";
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 2048;

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Room the bearer may knock on.
    pub room: String,
    /// Identity (user id) the bearer's credential must carry.
    pub sub: String,
    /// Suggested display name.
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// Why a token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was given.
    #[error("no token")]
    Missing,
    /// An invitation link's token: it gets a guest token from `POST /guest`, and cannot join
    /// by itself.
    #[error("an invitation is not a join token (open the link in a browser)")]
    Invitation,
    /// Not a token of this format.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify under this server's key.
    #[error("token signature does not verify (issued by another server?)")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// For another room.
    #[error("token is for room {0:?}")]
    WrongRoom(String),
}

/// The server's token signing key.
pub struct TokenKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl core::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate() -> Result<Self, ServerError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| ServerError::Keys("cannot generate the token key".into()))?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 encoding.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, ServerError> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes)
            .map_err(|e| ServerError::Keys(format!("token key: {e}")))?;
        Ok(TokenKey {
            pair,
            pkcs8: bytes.to_vec(),
        })
    }

    /// PKCS#8 encoding, for the data directory.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs claims into a token.
    pub fn issue(&self, claims: &Claims) -> String {
        let body = format!(
            "{PREFIX}{}",
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        let sig = self.pair.sign(body.as_bytes());
        format!("{body}.{}", B64.encode(sig.as_ref()))
    }

    /// Checks a token for `room` at `now_unix` seconds.
    pub fn verify(&self, token: &str, room: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_LEN || !token.starts_with(PREFIX) {
            return Err(TokenError::Malformed);
        }
        let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(body.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let json = B64
            .decode(&body[PREFIX.len()..])
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now_unix {
            return Err(TokenError::Expired);
        }
        if claims.room != room {
            return Err(TokenError::WrongRoom(claims.room));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            room: room.into(),
            sub: "alice".into(),
            name: "Alice".into(),
            exp,
        }
    }

    #[test]
    fn tokens_verify_only_for_their_room_until_expiry_and_under_their_key() {
        let key = TokenKey::generate().unwrap();
        let t = key.issue(&claims("r1", 1000));
        assert_eq!(key.verify(&t, "r1", 999).unwrap().sub, "alice");
        assert_eq!(key.verify(&t, "r1", 1000), Err(TokenError::Expired));
        assert_eq!(
            key.verify(&t, "r2", 10),
            Err(TokenError::WrongRoom("r1".into()))
        );
        let other = TokenKey::generate().unwrap();
        assert_eq!(other.verify(&t, "r1", 10), Err(TokenError::BadSignature));
        assert_eq!(key.verify("", "r1", 10), Err(TokenError::Missing));
        for bad in ["x", "ct1.", "ct1.a.b", "ct1.!!!.???"] {
            assert!(key.verify(bad, "r1", 10).is_err(), "{bad}");
        }
        // Tampering with the claims breaks the signature.
        let (body, sig) = t.rsplit_once('.').unwrap();
        let forged_claims = B64.encode(serde_json::to_vec(&claims("r1", u64::MAX)).unwrap());
        let forged = format!("{PREFIX}{forged_claims}.{sig}");
        assert_eq!(key.verify(&forged, "r1", 10), Err(TokenError::BadSignature));
        let _ = body;
        // Persisted keys keep verifying.
        let again = TokenKey::from_pkcs8(key.pkcs8()).unwrap();
        assert!(again.verify(&t, "r1", 10).is_ok());
    }
}

//! The server's long-lived keys: the join-token key and the MLS external-sender key, kept
//! in the data directory (mode 0600).

use std::path::Path;

use conclave_mls::RoomCipherSuite;
use mls_rs_core::crypto::SignatureSecretKey;

use crate::error::{io, ServerError};
use crate::token::TokenKey;

/// The server's long-lived keys, kept in its data directory.
pub struct ServerKeys {
    /// Signs join tokens.
    pub token: TokenKey,
    pub(crate) mls_secret: SignatureSecretKey,
    pub(crate) mls_public: Vec<u8>,
}

impl core::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ServerKeys(..)")
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), ServerError> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(path).map_err(io(path.display()))?;
    f.write_all(data).map_err(io(path.display()))?;
    Ok(())
}

impl ServerKeys {
    /// Loads the keys from `dir`, generating (from the OS CSPRNG) and saving any that are
    /// missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, ServerError> {
        std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
        let token_path = dir.join("token-key.pk8");
        let token = match std::fs::read(&token_path) {
            Ok(b) => TokenKey::from_pkcs8(&b)?,
            Err(_) => {
                let k = TokenKey::generate()?;
                write_private(&token_path, k.pkcs8())?;
                k
            }
        };
        let (sk, pk) = (
            dir.join("mls-external-sender.key"),
            dir.join("mls-external-sender.pub"),
        );
        let (mls_secret, mls_public) = match (std::fs::read(&sk), std::fs::read(&pk)) {
            (Ok(s), Ok(p)) => (SignatureSecretKey::new(s), p),
            _ => {
                let (secret, identity) =
                    conclave_ds::generate_server_identity(RoomCipherSuite::Curve25519Aes128)
                        .map_err(|e| ServerError::Keys(format!("the MLS external sender: {e}")))?;
                let public = identity.signature_key.as_bytes().to_vec();
                let _ = std::fs::remove_file(&sk);
                let _ = std::fs::remove_file(&pk);
                write_private(&sk, secret.as_bytes())?;
                std::fs::write(&pk, &public).map_err(io(pk.display()))?;
                (secret, public)
            }
        };
        Ok(ServerKeys {
            token,
            mls_secret,
            mls_public,
        })
    }
}

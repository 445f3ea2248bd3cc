//! What one MLS epoch gives the media layer, and how a sender's KID names its leaf and epoch.

use std::fmt;

use conclave_mls::RoomCipherSuite;
use zeroize::Zeroizing;

use super::{EPOCH_BITS, EPOCH_MASK, INDEX_BITS, INDEX_MASK};

/// The secrets one MLS epoch gives the media layer. Produced by
/// [`Session::epoch_secrets`](crate::Session::epoch_secrets); consumed by
/// [`MediaCrypto::install_epoch`](super::MediaCrypto::install_epoch). The base key is zeroized on drop.
pub struct EpochSecrets {
    pub(crate) epoch: u64,
    pub(crate) suite: RoomCipherSuite,
    pub(crate) base_key: Zeroizing<Vec<u8>>,
    pub(crate) own_leaf: u32,
    pub(crate) members: Vec<u32>,
}

impl fmt::Debug for EpochSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochSecrets")
            .field("epoch", &self.epoch)
            .field("own_leaf", &self.own_leaf)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl EpochSecrets {
    /// The epoch these secrets belong to.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Our own leaf index in that epoch.
    pub fn own_leaf(&self) -> u32 {
        self.own_leaf
    }

    /// Test-and-tool constructor: the secrets of an epoch from a base key known by other means
    /// (RFC test vectors, an attacker model in adversarial tests).
    pub fn from_base_key(
        suite: RoomCipherSuite,
        epoch: u64,
        base_key: &[u8],
        own_leaf: u32,
        members: Vec<u32>,
    ) -> Self {
        EpochSecrets {
            epoch,
            suite,
            base_key: Zeroizing::new(base_key.to_vec()),
            own_leaf,
            members,
        }
    }
}

/// The SFrame suite whose AEAD matches the room's MLS suite (both Conclave suites use
/// AES-128-GCM with SHA-256).
pub fn sframe_suite(suite: RoomCipherSuite) -> sframe::CipherSuite {
    match suite {
        RoomCipherSuite::Curve25519Aes128 | RoomCipherSuite::MlKem768X25519 => {
            sframe::CipherSuite::AesGcm128Sha256
        }
        // A suite added later must choose its SFrame suite here.
        #[allow(unreachable_patterns)]
        _ => sframe::CipherSuite::AesGcm128Sha256,
    }
}

/// The KID of `leaf` in `epoch`: context 0, 16 bits of leaf index, 8 bits of epoch.
pub fn kid(leaf: u32, epoch: u64) -> u64 {
    ((u64::from(leaf) & INDEX_MASK) << EPOCH_BITS) | (epoch & EPOCH_MASK)
}

/// Splits a KID into (context, leaf, epoch bits).
pub fn split_kid(kid: u64) -> (u64, u32, u8) {
    let context = kid >> (EPOCH_BITS + INDEX_BITS);
    let leaf = ((kid >> EPOCH_BITS) & INDEX_MASK) as u32;
    let epoch_bits = (kid & EPOCH_MASK) as u8;
    (context, leaf, epoch_bits)
}

//! How a lobby host's device gets back into its own group after its connection dropped, when
//! no other host is there to add it.
//!
//! In a lobby only a host adds. A host whose connection blinked knocks again with a new
//! KeyPackage, and if it was the only host, nobody could ever add it. Letting any member add a
//! host's device would also let a server's copy of the lobby (a group its own device made with
//! the charter's exact policy) take the host in, and with it everyone the host then admits. So
//! a member who is not a host may add a host only with proof that the host was in *this*
//! group: a standard MLS external pre-shared key (RFC 9420 §8.4) whose value is an MLS
//! exporter secret (§8.5) of an epoch the host and every current member were in. The host
//! names that epoch in its KeyPackage ([`HostReturn`], a KeyPackage extension); the committer
//! puts the PSK into its commit; the host can process the Welcome only if the PSK matches the
//! secret it kept, and it refuses a Welcome from a non-host that carried no such PSK. A
//! server's copy of the group knows no exporter secret of the real one.
//!
//! Every member keeps the exporter secrets of the epochs since the last add (at most
//! [`HOST_RETURN_WINDOW`]): each current member was in each of those epochs, so every one of
//! them can process the returning commit.

use mls_rs_codec::{MlsDecode, MlsEncode, MlsSize};
use mls_rs_core::extension::{ExtensionType, MlsCodecExtension};
use mls_rs_core::psk::ExternalPskId;

/// KeyPackage extension carrying a [`HostReturn`] ticket (private-use range).
pub const HOST_RETURN_EXTENSION: ExtensionType = ExtensionType::new(0xF0C3);
/// The MLS exporter label of the secret a returning host proves it holds.
pub const HOST_RETURN_EXPORTER_LABEL: &[u8] = b"conclave host return v1";
/// Length of that secret in bytes.
pub const HOST_RETURN_SECRET_LEN: usize = 32;
/// Epochs whose secrets a member keeps for a returning host.
pub const HOST_RETURN_WINDOW: usize = 64;

const PSK_ID_PREFIX: &[u8] = b"conclave-host-return-v1:";

/// A host's claim, in its KeyPackage, of the last epoch it was in of the group it returns to.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
pub struct HostReturn {
    /// The MLS group id of the group the host was in.
    pub group_id: Vec<u8>,
    /// The last epoch of that group the host processed.
    pub epoch: u64,
}

impl MlsCodecExtension for HostReturn {
    fn extension_type() -> ExtensionType {
        HOST_RETURN_EXTENSION
    }
}

impl HostReturn {
    /// The id of the external PSK that proves membership in `epoch` of `group_id`.
    pub fn psk_id(&self) -> ExternalPskId {
        let mut id = PSK_ID_PREFIX.to_vec();
        // Encoding a struct of a byte vector and an integer cannot fail.
        id.extend(self.mls_encode_to_vec().unwrap_or_default());
        ExternalPskId::new(id)
    }

    /// Reads the bytes of a PSK id made by [`HostReturn::psk_id`]; `None` for any other id.
    pub fn from_psk_id(id: &[u8]) -> Option<Self> {
        let rest = id.strip_prefix(PSK_ID_PREFIX)?;
        let mut reader = rest;
        let ticket = Self::mls_decode(&mut reader).ok()?;
        reader.is_empty().then_some(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_psk_id_round_trips_and_others_are_not_read_as_one() {
        let t = HostReturn {
            group_id: b"g".to_vec(),
            epoch: 7,
        };
        assert_eq!(HostReturn::from_psk_id(&t.psk_id()), Some(t.clone()));
        assert_eq!(
            HostReturn::from_psk_id(&ExternalPskId::new(b"x".to_vec())),
            None
        );
        let mut trailing = t.psk_id().to_vec();
        trailing.push(0);
        assert_eq!(HostReturn::from_psk_id(&ExternalPskId::new(trailing)), None);
    }
}

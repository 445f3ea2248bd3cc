//! A meeting's **charter**: what the person who makes a meeting fixes about it (the room, the
//! admission policy, the hosts' device keys), carried in the links and tokens they hand out
//! where the server cannot change it: in the URL fragment, which browsers never send to the
//! server, and on `conclave join --charter`. A charter is exactly the [`RoomPolicy`] the
//! room's group must have in its group context, so a joiner compares the two for equality and
//! refuses any other group (a server's own group for the room, say), and only a device the
//! charter allows to create the group (anyone, for an open room; a host, otherwise) creates it.
//!
//! Text form: `c1.` and the base64url (no padding) of the policy's MLS encoding.

use base64::Engine;
use mls_rs_codec::{MlsDecode, MlsEncode};
use mls_rs_core::crypto::SignaturePublicKey;

use crate::error::{Error, Result};
use crate::policy::{Admission, RoomPolicy};

const PREFIX: &str = "c1.";
/// Longest charter accepted, in bytes of text (a lobby with a few hosts is about 150).
pub const MAX_CHARTER_LEN: usize = 16 * 1024;

impl RoomPolicy {
    /// The charter of a meeting with this policy, as text for a link or a flag.
    pub fn to_charter(&self) -> Result<String> {
        let bytes = self
            .mls_encode_to_vec()
            .map_err(|e| Error::Malformed(e.to_string()))?;
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Reads a charter. Refuses anything over [`MAX_CHARTER_LEN`], of another version, with
    /// trailing bytes, a room id that is not UTF-8, or too many entries.
    pub fn from_charter(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.len() > MAX_CHARTER_LEN {
            return Err(Error::Malformed(format!(
                "a charter of {} bytes exceeds the {MAX_CHARTER_LEN}-byte limit",
                text.len()
            )));
        }
        let body = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::Malformed("a charter starts with \"c1.\"".into()))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| Error::Malformed(format!("charter: {e}")))?;
        let mut rest = bytes.as_slice();
        let policy = RoomPolicy::mls_decode(&mut rest)
            .map_err(|e| Error::Malformed(format!("charter: {e}")))?;
        if !rest.is_empty() {
            return Err(Error::Malformed("charter: trailing bytes".into()));
        }
        if std::str::from_utf8(&policy.room_id).is_err() {
            return Err(Error::Malformed("charter: the room id is not UTF-8".into()));
        }
        policy.check_size()?;
        Ok(policy)
    }

    /// Whether the device with signature key `key` may create the group of a meeting with this
    /// charter: anyone, in an open room; only a host, in a lobby or invite-list room.
    pub fn may_create(&self, key: &SignaturePublicKey) -> bool {
        match self.admission {
            Admission::Open => true,
            _ => self.is_host(key),
        }
    }

    /// The room id as text (charters and policies made by Conclave always have a UTF-8 one).
    pub fn room(&self) -> String {
        String::from_utf8_lossy(&self.room_id).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Hosts;

    fn lobby(room: &str, host: &SignaturePublicKey) -> RoomPolicy {
        RoomPolicy {
            room_id: room.as_bytes().to_vec(),
            admission: Admission::Lobby(Hosts {
                keys: vec![host.as_bytes().to_vec()],
            }),
        }
    }

    #[test]
    fn a_charter_round_trips_and_garbage_is_refused_with_a_reason() {
        let host = SignaturePublicKey::new(vec![7; 32]);
        for p in [RoomPolicy::open("meeting"), lobby("clinic", &host)] {
            let text = p.to_charter().unwrap();
            assert!(text.starts_with("c1."), "{text}");
            assert_eq!(RoomPolicy::from_charter(&text).unwrap(), p);
        }
        let lobby = lobby("clinic", &host);
        assert!(lobby.may_create(&host));
        assert!(!lobby.may_create(&SignaturePublicKey::new(vec![8; 32])));
        assert!(RoomPolicy::open("x").may_create(&SignaturePublicKey::new(vec![8; 32])));
        let good = lobby.to_charter().unwrap();
        for bad in [
            "".to_owned(),
            "c2.AAAA".to_owned(),
            "c1.!!!".to_owned(),
            "c1.".to_owned(),
            format!("{good}AA"),
            format!("c1.{}", "A".repeat(MAX_CHARTER_LEN)),
        ] {
            assert!(RoomPolicy::from_charter(&bad).is_err(), "{bad:.40}");
        }
    }
}

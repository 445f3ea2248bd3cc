//! # Conclave signaling protocol
//!
//! Messages between a client and the server over one WebSocket, as JSON text frames. Binary
//! fields (MLS messages, trees) travel as standard base64 strings. Every message is an object
//! with a `"type"` field; unknown fields and unknown types are refused. The first message on a
//! connection is [`ClientMsg::Hello`] with [`PROTOCOL_VERSION`]; the server answers with
//! [`ServerMsg::Joined`] or [`ServerMsg::Error`]. `docs/protocol.md` describes the exchanges.
//!
//! Decoding never panics: [`ClientMsg::decode`] and [`ServerMsg::decode`] return a
//! [`ProtoError`] that says what is wrong, and refuse anything over [`MAX_MESSAGE_LEN`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use core::fmt;

mod client;
mod tree;
pub use client::{ClientMsg, MediaMsg, MembershipMsg};
pub use tree::{split_tree, TreeParts, TreeTooLarge};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest piece of a ratchet tree in one [`ServerMsg::TreePart`].
pub const TREE_PART_LEN: usize = 12 * 1024;

/// Largest ratchet tree a client puts together from [`ServerMsg::TreePart`]s (a tree of
/// 65,536 leaves, the most a KID can name, is far smaller).
pub const MAX_TREE_LEN: usize = 32 << 20;
/// Largest signaling message accepted, in bytes of JSON (a commit adding 100 members with its
/// Welcome is about 200 KB in base64).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The message is longer than [`MAX_MESSAGE_LEN`].
    #[error("message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    /// The message is not valid JSON of a known message type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION})")]
    Version {
        /// What the peer sent.
        got: u16,
    },
}

/// Opaque bytes, carried as base64 in JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} B)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// Identifies a knock (a pending join) within a room: a number on the wire.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct KnockId(pub u64);

impl KnockId {
    /// The knock after this one.
    pub fn next(self) -> KnockId {
        KnockId(self.0.wrapping_add(1))
    }
}

impl fmt::Display for KnockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A pending join, as the delivery service describes it to members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnockInfo {
    /// The knock.
    pub knock: KnockId,
    /// User id from the knocker's token.
    pub user_id: String,
    /// Display name from the KeyPackage's credential.
    pub name: String,
    /// The KeyPackage to add.
    pub key_package: Bytes,
}

/// Machine-readable reason codes for [`ServerMsg::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The message could not be decoded.
    Malformed,
    /// Wrong protocol version.
    Version,
    /// No token, a bad signature, an expired token, or a token for another room.
    Unauthorized,
    /// The room is full.
    RoomFull,
    /// Too many requests.
    RateLimited,
    /// The message is not valid in the connection's current state.
    Unexpected,
    /// An MLS message was refused by the delivery service.
    Rejected,
}

/// Server to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ServerMsg {
    /// The token was accepted.
    Joined {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// The room.
        room: String,
        /// The identity the token named (the KeyPackage's credential must carry it).
        user_id: String,
        /// The server's MLS signing identity, to register as the group's external sender.
        server_identity: Bytes,
        /// Whether this client must create the room's group (the room has none yet).
        create_group: bool,
    },
    /// Someone knocked (for a lobby host's admit/deny UI).
    Knock {
        /// Who.
        knock: KnockInfo,
    },
    /// A knock ended before anyone decided on it: its connection closed, or its KeyPackage
    /// expired (for a lobby host's UI; it admits no one and removes no one).
    KnockGone {
        /// Which.
        knock: KnockId,
    },
    /// The delivery service asks this member to commit now: the proposals received so far,
    /// and the adds of these knocks (subject to the room's policy and, in a lobby, to the
    /// host's choice).
    CommitRequest {
        /// The epoch to commit on.
        epoch: u64,
        /// Pending joins.
        knocks: Vec<KnockInfo>,
    },
    /// Our commit won its epoch: apply it.
    CommitAccepted {
        /// The new epoch.
        epoch: u64,
    },
    /// Our commit was refused (another won the epoch, or it was invalid): discard it.
    CommitRejected {
        /// The epoch it was built on.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// A commit by another member.
    Commit {
        /// MLS commit message.
        commit: Bytes,
    },
    /// We were added: the Welcome and the ratchet tree.
    Welcome {
        /// MLS Welcome message.
        welcome: Bytes,
        /// MLS ratchet tree, checked by the joiner against the signed GroupInfo. Empty when
        /// the tree came before it in [`ServerMsg::TreePart`]s.
        ratchet_tree: Bytes,
    },
    /// A piece of the ratchet tree of the [`ServerMsg::Welcome`] that follows (a large tree
    /// goes in pieces of at most [`TREE_PART_LEN`] bytes, so that no socket buffer has to hold
    /// it whole). The client joins the pieces, in order, into that Welcome's tree.
    TreePart {
        /// The next bytes of the tree.
        part: Bytes,
    },
    /// A proposal (a member's self-removal, or the server's removal of a vanished member).
    Proposal {
        /// MLS proposal message.
        proposal: Bytes,
    },
    /// An application message from another member.
    Application {
        /// MLS private message.
        message: Bytes,
    },
    /// The SFU's SDP answer to [`MediaMsg::MediaOffer`].
    MediaAnswer {
        /// SDP.
        sdp: String,
    },
    /// Our knock was turned away.
    Denied {
        /// Why.
        reason: String,
    },
    /// A request failed; the connection stays open unless the error is fatal.
    Error {
        /// Reason code.
        code: ErrorCode,
        /// Human-readable reason.
        reason: String,
    },
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, ProtoError> {
    if text.len() > MAX_MESSAGE_LEN {
        return Err(ProtoError::TooLarge(text.len()));
    }
    serde_json::from_str(text).map_err(|e| ProtoError::Malformed(e.to_string()))
}

impl ServerMsg {
    /// Parses one message.
    pub fn decode(text: &str) -> Result<Self, ProtoError> {
        decode(text)
    }

    /// Serializes one message.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_round_trip() {
        let s = ServerMsg::CommitRequest {
            epoch: 1,
            knocks: vec![KnockInfo {
                knock: KnockId(1),
                user_id: "u".into(),
                name: "U".into(),
                key_package: Bytes(vec![9]),
            }],
        };
        assert_eq!(ServerMsg::decode(&s.encode()).unwrap(), s);
    }
}

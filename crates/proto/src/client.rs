//! What a participant sends the server, by who handles it: the hello (the server's runtime),
//! the membership protocol (the delivery service, [`MembershipMsg`]) and the media session
//! (the SFU, [`MediaMsg`]). On the wire all three are one JSON object per text frame, told
//! apart by its `type`; [`ClientMsg::decode`] reads any of them and says whose it is, so that
//! neither the delivery service nor the SFU ever sees a message of the other's.

use serde::{Deserialize, Serialize};

use crate::{decode, Bytes, KnockId, ProtoError, PROTOCOL_VERSION};

/// Client to server: one message on the signaling socket, routed by its variant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMsg {
    /// First message: protocol version and the join token.
    Hello {
        /// [`PROTOCOL_VERSION`].
        version: u16,
        /// A join token from `conclave token`.
        token: String,
    },
    /// For the delivery service.
    Membership(MembershipMsg),
    /// For the SFU.
    Media(MediaMsg),
}

/// The membership protocol: what the delivery service reads (and all it reads).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum MembershipMsg {
    /// The first member created the room's MLS group: its signed GroupInfo and ratchet tree,
    /// so the delivery service can follow the group's public state.
    CreateGroup {
        /// MLS GroupInfo message.
        group_info: Bytes,
        /// MLS ratchet tree.
        ratchet_tree: Bytes,
    },
    /// Knock: a KeyPackage to be added with.
    KeyPackage {
        /// MLS KeyPackage message.
        key_package: Bytes,
    },
    /// A commit for `epoch`, with the Welcome for its joiners if it adds anyone.
    Commit {
        /// The epoch the commit was built on.
        epoch: u64,
        /// MLS commit message.
        commit: Bytes,
        /// MLS Welcome message, when the commit adds members.
        welcome: Option<Bytes>,
    },
    /// An MLS proposal by a member (a self-removal when leaving).
    Proposal {
        /// MLS proposal message.
        proposal: Bytes,
    },
    /// An MLS application message for the other members.
    Application {
        /// MLS private message.
        message: Bytes,
    },
    /// A host turns a knock away (lobby rooms).
    Deny {
        /// The knock.
        knock: KnockId,
    },
}

/// The media session: what the SFU reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum MediaMsg {
    /// Opens the media session with the SFU: an SDP offer (our send-only audio and video,
    /// and receive-only slots).
    MediaOffer {
        /// SDP.
        sdp: String,
    },
    /// How large this participant shows other people's video: the SFU forwards no simulcast
    /// layer larger than the tiles need. May be sent any time after `media_offer`.
    VideoTiles {
        /// Width of the largest tile, in pixels: up to 320 gets the low layer, up to 640
        /// the middle one, above that the high one.
        max_width: u32,
    },
}

/// The hello on the wire (the same tagged form as the others).
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum HelloWire {
    Hello { version: u16, token: String },
}

/// The `type` of a message, read before the rest.
#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: String,
}

impl ClientMsg {
    /// Parses one message, of any of the three kinds.
    pub fn decode(text: &str) -> Result<Self, ProtoError> {
        let kind: Kind = decode(text)?;
        match kind.kind.as_str() {
            "hello" => {
                let HelloWire::Hello { version, token } = decode(text)?;
                if version != PROTOCOL_VERSION {
                    return Err(ProtoError::Version { got: version });
                }
                Ok(ClientMsg::Hello { version, token })
            }
            "media_offer" | "video_tiles" => decode(text).map(ClientMsg::Media),
            _ => decode(text).map(ClientMsg::Membership),
        }
    }

    /// Serializes one message.
    pub fn encode(&self) -> String {
        match self {
            ClientMsg::Hello { version, token } => {
                let wire = HelloWire::Hello {
                    version: *version,
                    token: token.clone(),
                };
                // Serializing these types cannot fail: no maps with non-string keys, no floats.
                serde_json::to_string(&wire).unwrap_or_default()
            }
            ClientMsg::Membership(m) => m.encode(),
            ClientMsg::Media(m) => m.encode(),
        }
    }
}

impl MembershipMsg {
    /// Parses one membership message (any other kind is refused as malformed).
    pub fn decode(text: &str) -> Result<Self, ProtoError> {
        decode(text)
    }

    /// Serializes one message (the same text as the [`ClientMsg::Membership`] that holds it).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// What kind of message this is, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            MembershipMsg::CreateGroup { .. } => "create_group",
            MembershipMsg::KeyPackage { .. } => "key_package",
            MembershipMsg::Commit { .. } => "commit",
            MembershipMsg::Proposal { .. } => "proposal",
            MembershipMsg::Application { .. } => "application",
            MembershipMsg::Deny { .. } => "deny",
        }
    }
}

impl MediaMsg {
    /// Serializes one message (the same text as the [`ClientMsg::Media`] that holds it).
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<MembershipMsg> for ClientMsg {
    fn from(m: MembershipMsg) -> Self {
        ClientMsg::Membership(m)
    }
}

impl From<MediaMsg> for ClientMsg {
    fn from(m: MediaMsg) -> Self {
        ClientMsg::Media(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_decodes_to_its_handler_and_encodes_to_the_same_text() {
        let msgs = vec![
            ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: "t".into(),
            },
            MembershipMsg::KeyPackage {
                key_package: Bytes(vec![1, 2, 3]),
            }
            .into(),
            MembershipMsg::Commit {
                epoch: 7,
                commit: Bytes(vec![0; 40]),
                welcome: None,
            }
            .into(),
            MembershipMsg::Deny { knock: KnockId(3) }.into(),
            MediaMsg::MediaOffer { sdp: "v=0".into() }.into(),
            MediaMsg::VideoTiles { max_width: 320 }.into(),
        ];
        for m in msgs {
            let text = m.encode();
            assert_eq!(ClientMsg::decode(&text).unwrap(), m, "{text}");
        }
        // The wire form is the flat tagged object it always was.
        assert_eq!(
            MembershipMsg::Deny { knock: KnockId(3) }.encode(),
            r#"{"type":"deny","knock":3}"#
        );
        assert_eq!(
            ClientMsg::Hello {
                version: PROTOCOL_VERSION,
                token: "t".into()
            }
            .encode(),
            format!(r#"{{"type":"hello","version":{PROTOCOL_VERSION},"token":"t"}}"#)
        );
        assert_eq!(
            MediaMsg::VideoTiles { max_width: 320 }.encode(),
            r#"{"type":"video_tiles","max_width":320}"#
        );
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        for bad in [
            "",
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":7}"#,
            r#"{"type":"key_package"}"#,
            r#"{"type":"key_package","key_package":"!!!"}"#,
            r#"{"type":"key_package","key_package":"AAAA","extra":1}"#,
            r#"{"type":"commit","epoch":-1,"commit":"AA=="}"#,
            r#"{"type":"hello","version":1}"#,
            r#"{"type":"media_offer","sdp":"x","extra":1}"#,
            r#"{"type":"video_tiles"}"#,
        ] {
            let err = ClientMsg::decode(bad).unwrap_err();
            assert!(matches!(err, ProtoError::Malformed(_)), "{bad}: {err}");
        }
        let v = r#"{"type":"hello","version":99,"token":"x"}"#;
        assert!(matches!(
            ClientMsg::decode(v),
            Err(ProtoError::Version { got: 99 })
        ));
        let big = format!(
            r#"{{"type":"hello","version":1,"token":"{}"}}"#,
            "a".repeat(crate::MAX_MESSAGE_LEN)
        );
        assert!(matches!(
            ClientMsg::decode(&big),
            Err(ProtoError::TooLarge(_))
        ));
    }
}

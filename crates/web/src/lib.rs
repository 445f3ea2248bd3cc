//! # Conclave in the browser
//!
//! The participant core ([`conclave_client::Participant`]) and the E2EE core
//! ([`conclave_e2ee`]) exported to JavaScript with wasm-bindgen. The web client runs this
//! module in one dedicated worker, which also owns the signaling WebSocket and the
//! `RTCRtpScriptTransform`s: MLS state, the device key and the SFrame keys live only in that
//! worker's memory (and the device key in IndexedDB). The page gets the roster, the security
//! code and health figures, never a key.
//!
//! Sans-IO like the native runtime: the worker passes in every server message and the time
//! (milliseconds since the Unix epoch), and takes out the messages to send and the events to
//! show. Randomness comes from the browser's CSPRNG (`crypto.getRandomValues`, through the
//! RustCrypto backend's `getrandom`).
//!
//! Frames: [`Call::seal`] returns nothing while there is no media key, so the worker drops
//! the frame instead of sending it in the clear. [`Call::open`] returns plaintext only for a
//! frame that authenticated; a frame for an epoch not reached yet is held by the participant
//! core (bounded in count, bytes and time) and released once the commit is applied
//! ([`Call::release`] hands out what was released, [`Call::take_dropped`] what was given up).
//! The timers (key erasure, held frames expiring, the periodic self-update) are the core's
//! too: [`Call::next_timeout`], [`Call::handle_timeout`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use conclave_client::{AdmitMode, Event, FrameKind, Intake, NewRoomPolicy, Participant};
use conclave_e2ee::{Device, DeviceIdentity, GroupStore, Timestamp};
use conclave_proto::{KnockId, MediaMsg, ServerMsg};
use wasm_bindgen::prelude::*;

mod identity;
mod view;

pub use identity::{hello_message, identity_info, new_identity, reconnect_delay_ms, token_claims};
use view::{describe_change, LastChange};
/// Periodic self-update (post-compromise security), as the native client: every 10 minutes
/// with 20% jitter.
const SELF_UPDATE_EVERY: core::time::Duration = core::time::Duration::from_secs(600);

/// Errors of this crate (JavaScript gets an `Error` with this text).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The E2EE core, the participant core or the protocol refused something (a malformed
    /// server message, a bad identity, an operation not possible now).
    #[error("{0}")]
    Refused(String),
}

impl From<WebError> for JsValue {
    fn from(e: WebError) -> JsValue {
        JsError::new(&e.to_string()).into()
    }
}

fn js(e: impl std::fmt::Display) -> WebError {
    WebError::Refused(e.to_string())
}

fn ts(now_ms: f64) -> Timestamp {
    // A clock before 1970 or beyond u64 is not a clock; clamp rather than wrap.
    Timestamp::from_millis(if now_ms.is_finite() && now_ms > 0.0 {
        now_ms as u64
    } else {
        0
    })
}

/// One browser participant in one room.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Call {
    p: Participant,
    /// What [`Call::rejoin`] needs to make the next membership.
    room: String,
    lobby: bool,
    /// Plaintext of released held frames, by tag, until [`Call::take_released`].
    released: BTreeMap<u32, Vec<u8>>,
    ui: std::collections::VecDeque<String>,
    last_change: Option<LastChange>,
    out: Vec<u8>,
    last_sender: Option<u32>,
    last_held: bool,
    /// The server answered our hello (the media offer may go now).
    hello_answered: bool,
    /// Frames that could not be sealed (no key yet): dropped, never sent in the clear.
    unsealed: u64,
    sealed: u64,
}

fn kind(video: bool) -> FrameKind {
    if video {
        FrameKind::Video
    } else {
        FrameKind::Audio
    }
}

#[wasm_bindgen]
impl Call {
    /// A participant for `room` with the stored `identity`, shown as `name`. If it creates
    /// the room, the room is a lobby with this device as its host when `lobby` is set
    /// (knocks then wait for [`Call::admit`] or [`Call::deny`]), otherwise open.
    #[wasm_bindgen(constructor)]
    pub fn new(identity: &[u8], name: &str, room: &str, lobby: bool) -> Result<Call, WebError> {
        let mut id = DeviceIdentity::from_bytes(identity).map_err(js)?;
        if id.info().display_name != name {
            id = id.with_display_name(name).map_err(js)?;
        }
        let device = Device::new(id, GroupStore::memory()).map_err(js)?;
        Ok(Self::with_device(device, room, lobby))
    }

    /// The next membership after a lost connection, with the same device: nothing of the
    /// last membership is kept but the device (its key, and the secrets a lobby host needs to
    /// be added back into its own group when no other host is there). The charter, pins and
    /// invite list are set again, as for a new call.
    pub fn rejoin(self) -> Call {
        let Call { p, room, lobby, .. } = self;
        Self::with_device(p.into_device(), &room, lobby)
    }
}

impl Call {
    fn with_device(device: Device, room: &str, lobby: bool) -> Call {
        let (policy, admit) = if lobby {
            (NewRoomPolicy::Lobby, AdmitMode::Ask)
        } else {
            (NewRoomPolicy::Open, AdmitMode::Auto)
        };
        let mut p = Participant::new(device, room, policy, admit);
        // The jitter's randomness comes with every call from the worker (`random`).
        p.set_self_update(SELF_UPDATE_EVERY, 0);
        Call {
            p,
            room: room.to_owned(),
            lobby,
            released: BTreeMap::new(),
            ui: Default::default(),
            last_change: None,
            out: Vec::with_capacity(4096),
            last_sender: None,
            last_held: false,
            hello_answered: false,
            unsealed: 0,
            sealed: 0,
        }
    }
}

#[wasm_bindgen]
impl Call {
    /// Holds the call to the meeting's charter from the link's fragment (`charter=c1.…`,
    /// which the browser never sends to the server): it joins only a group with exactly that
    /// policy and those hosts, and creates the group only if the charter lets this device.
    /// Call before the first message.
    #[wasm_bindgen(js_name = setCharter)]
    pub fn set_charter(&mut self, charter: &str) -> Result<(), WebError> {
        let policy = conclave_e2ee::RoomPolicy::from_charter(charter).map_err(js)?;
        self.p.set_charter(policy).map_err(js)
    }

    /// If this browser creates the room: make it an invite-list room hosted by this device,
    /// admitting the devices whose fingerprints (64 hex characters each) `allowed` lists,
    /// separated by commas (the link's `allow=` part). Call before the first message.
    #[wasm_bindgen(js_name = setInviteList)]
    pub fn set_invite_list(&mut self, allowed: &str) -> Result<(), WebError> {
        let fps = allowed
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                conclave_e2ee::Fingerprint::from_hex(f)
                    .ok_or_else(|| js(format!("not a fingerprint: {f:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.p.set_new_room_policy(NewRoomPolicy::InviteList(fps));
        Ok(())
    }

    /// Trust on first use: the pins this browser kept for its user id (the text
    /// [`Call::take_pins`] gave earlier; empty for none). Every member and knock is checked
    /// against them; a known user id with a new key raises an alarm. A text that does not
    /// parse is an error (forgetting pins would hide a changed key).
    #[wasm_bindgen(js_name = setPins)]
    pub fn set_pins(&mut self, text: &str) -> Result<(), WebError> {
        let pins = conclave_e2ee::TrustStore::from_text(text).map_err(js)?;
        self.p.set_trust_store(pins);
        Ok(())
    }

    /// The pins as text when they changed (to keep in IndexedDB), or `undefined`.
    #[wasm_bindgen(js_name = takePins)]
    pub fn take_pins(&mut self) -> Option<String> {
        self.p.take_trust_update()
    }

    /// Handles one text message from the server. A message that does not decode, or that the
    /// core refuses, becomes an alarm event (the call goes on); the error names it.
    pub fn handle(&mut self, text: &str, now_ms: f64, random: u32) -> Result<(), WebError> {
        let now = ts(now_ms);
        let msg = match ServerMsg::decode(text) {
            Ok(m) => m,
            Err(e) => {
                self.push_ui(serde_json::json!({"type": "alarm", "reason": format!("undecodable server message: {e}")}));
                return Err(js(e));
            }
        };
        match msg {
            ServerMsg::MediaAnswer { sdp } => {
                self.push_ui(serde_json::json!({"type": "media_answer", "sdp": sdp}));
                Ok(())
            }
            ServerMsg::Error { code, reason } => {
                self.push_ui(
                    serde_json::json!({"type": "server_error", "code": code, "reason": reason}),
                );
                Ok(())
            }
            m => {
                if matches!(m, ServerMsg::Joined { .. }) {
                    self.hello_answered = true;
                }
                self.p.add_randomness(u64::from(random));
                let r = self.p.handle(m, now);
                self.drain_events(now);
                r.map_err(|e| {
                    self.push_ui(serde_json::json!({"type": "alarm", "reason": e.to_string()}));
                    js(e)
                })
            }
        }
    }

    fn push_ui(&mut self, v: serde_json::Value) {
        self.ui.push_back(v.to_string());
    }

    fn drain_events(&mut self, now: Timestamp) {
        while let Some(e) = self.p.poll_event() {
            let v = match e {
                Event::Joined {
                    epoch,
                    security_code,
                } => {
                    self.last_change = Some(LastChange {
                        epoch,
                        at_ms: now.as_millis(),
                        reason: "this device joined".into(),
                    });
                    serde_json::json!({"type": "joined", "epoch": epoch, "security_code": security_code.as_str()})
                }
                Event::EpochChanged {
                    change,
                    security_code,
                } => {
                    let reason = describe_change(&change);
                    self.last_change = Some(LastChange {
                        epoch: change.epoch,
                        at_ms: now.as_millis(),
                        reason: reason.clone(),
                    });
                    serde_json::json!({"type": "epoch", "epoch": change.epoch, "security_code": security_code.as_str(), "reason": reason, "membership": change.changes_membership()})
                }
                Event::Knock {
                    knock,
                    user_id,
                    name,
                    fingerprint,
                } => {
                    serde_json::json!({"type": "knock", "knock": knock, "user_id": user_id, "name": name, "fingerprint": fingerprint.to_string()})
                }
                Event::KnockGone { knock, name } => {
                    serde_json::json!({"type": "knock_gone", "knock": knock, "name": name})
                }
                Event::Alarm { reason } => serde_json::json!({"type": "alarm", "reason": reason}),
                Event::Ended { reason } => serde_json::json!({"type": "ended", "reason": reason}),
                other => serde_json::json!({"type": "other", "event": format!("{other:?}")}),
            };
            self.ui.push_back(v.to_string());
        }
    }

    /// Whether the server has answered our hello (the media offer may be sent).
    #[wasm_bindgen(js_name = helloAnswered)]
    pub fn hello_answered(&self) -> bool {
        self.hello_answered
    }

    /// The next message to send to the server, if any.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.p.poll_transmit().map(|m| m.encode())
    }

    /// The next event for the page (JSON with a `type`), if any.
    #[wasm_bindgen(js_name = pollEvent)]
    pub fn poll_event(&mut self) -> Option<String> {
        self.ui.pop_front()
    }

    /// The SDP offer to send (wrapped as a signaling message).
    #[wasm_bindgen(js_name = mediaOffer)]
    pub fn media_offer(sdp: &str) -> String {
        MediaMsg::MediaOffer {
            sdp: sdp.to_owned(),
        }
        .encode()
    }

    /// How wide the largest remote tile is shown (the SFU sends no larger layer).
    #[wasm_bindgen(js_name = videoTiles)]
    pub fn video_tiles(max_width: u32) -> String {
        MediaMsg::VideoTiles { max_width }.encode()
    }

    /// Milliseconds since the Unix epoch at which [`Call::handle_timeout`] has work (key
    /// erasure, a periodic self-update, held frames expiring); `undefined` for none.
    #[wasm_bindgen(js_name = nextTimeout)]
    pub fn next_timeout(&self) -> Option<f64> {
        self.p.poll_timeout().map(|t| t.as_millis() as f64)
    }

    /// Does what is due at `now_ms`.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64, random: u32) -> Result<(), WebError> {
        let now = ts(now_ms);
        self.p.add_randomness(u64::from(random));
        self.p.handle_timeout(now).map_err(js)?;
        self.drain_events(now);
        Ok(())
    }

    /// Seals one outgoing encoded frame (`video`: VP8, whose frame tag and keyframe header
    /// stay clear for the packetizer; otherwise Opus, all encrypted). `undefined` when there
    /// is no key yet or the frame is refused: the caller drops the frame.
    pub fn seal(&mut self, video: bool, frame: &[u8]) -> Option<Vec<u8>> {
        match self.p.seal_frame(kind(video), frame, &mut self.out) {
            Ok(_) => {
                self.sealed += 1;
                Some(self.out.clone())
            }
            Err(_) => {
                self.unsealed += 1;
                None
            }
        }
    }

    /// The epoch outgoing frames are sealed under (the sender asks for a keyframe when it
    /// changes); `undefined` before the first key.
    #[wasm_bindgen(js_name = sendingEpoch)]
    pub fn sending_epoch(&self) -> Option<f64> {
        self.p.media_ref().sending_epoch().map(|e| e as f64)
    }

    /// Opens one received frame. Returns the plaintext only if it authenticated. Otherwise
    /// `undefined`, and [`Call::last_held`] says whether it was kept under `tag` for an epoch
    /// not reached yet (see [`Call::release`]). [`Call::last_sender`] names the sender the
    /// frame claims (also on failure, for health; it is authenticated only on success).
    pub fn open(&mut self, video: bool, wire: &[u8], tag: u32, now_ms: f64) -> Option<Vec<u8>> {
        let now = ts(now_ms);
        self.last_held = false;
        match self.p.open_frame(kind(video), wire, u64::from(tag), now) {
            Intake::Opened(f) => {
                self.last_sender = Some(f.sender);
                Some(f.plain)
            }
            Intake::Held { sender } => {
                self.last_sender = Some(sender);
                self.last_held = true;
                None
            }
            Intake::Dropped { sender } => {
                self.last_sender = sender;
                None
            }
            _ => None,
        }
    }

    /// The sender the last [`Call::open`] named (leaf index).
    #[wasm_bindgen(js_name = lastSender)]
    pub fn last_sender(&self) -> Option<u32> {
        self.last_sender
    }

    /// Whether the last [`Call::open`] held its frame.
    #[wasm_bindgen(js_name = lastHeld)]
    pub fn last_held(&self) -> bool {
        self.last_held
    }

    /// The tags of held frames that opened since the last call (the core releases them as
    /// soon as their epoch's keys arrive; call after an epoch event), whose plaintext
    /// [`Call::take_released`] gives. Held frames that fail are counted and dropped
    /// ([`Call::take_dropped`]).
    pub fn release(&mut self, now_ms: f64) -> Vec<u32> {
        let _ = now_ms;
        let mut tags = Vec::new();
        while let Some(f) = self.p.poll_released() {
            let Ok(tag) = u32::try_from(f.tag) else {
                continue;
            };
            self.released.insert(tag, f.plain);
            tags.push(tag);
        }
        tags
    }

    /// The tags of held frames the core gave up on since the last call (expired, pushed out
    /// by newer ones, or refused once their keys came): the worker lets their frames go.
    #[wasm_bindgen(js_name = takeDropped)]
    pub fn take_dropped(&mut self) -> Vec<u32> {
        self.p
            .take_dropped_frames()
            .into_iter()
            .filter_map(|t| u32::try_from(t).ok())
            .collect()
    }

    /// The plaintext of a released held frame.
    #[wasm_bindgen(js_name = takeReleased)]
    pub fn take_released(&mut self, tag: u32) -> Option<Vec<u8>> {
        self.released.remove(&tag)
    }

    /// The host admits a knock.
    pub fn admit(&mut self, knock: u64, now_ms: f64, random: u32) -> Result<(), WebError> {
        self.p.add_randomness(u64::from(random));
        self.p.admit(KnockId(knock), ts(now_ms)).map_err(js)?;
        self.drain_events(ts(now_ms));
        Ok(())
    }

    /// The host turns a knock away.
    pub fn deny(&mut self, knock: u64) {
        self.p.deny(KnockId(knock));
    }

    /// Leaves: proposes our removal and erases the media keys.
    pub fn leave(&mut self) -> Result<(), WebError> {
        self.p.leave().map_err(js)
    }
}

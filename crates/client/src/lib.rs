//! # Conclave participant core
//!
//! Sans-IO: [`Participant::handle`] takes a [`ServerMsg`](conclave_proto::ServerMsg) and the time; [`Participant::poll_transmit`]
//! yields the [`MembershipMsg`]s to send and [`Participant::poll_event`] what a UI should show
//! (epoch changes with the security code, knocks to admit, alarms). The tokio runtime and the
//! media path sit around it.
//!
//! What it does with each server message:
//! - `Joined { create_group: true }`: creates the room's group with the configured policy and
//!   the server as external sender, uploads GroupInfo and tree;
//! - `Joined { create_group: false }`: knocks with a fresh KeyPackage;
//! - `CommitRequest`: commits the knocks it may admit (all, in an open or invite-list room;
//!   those the person approved, in a lobby) plus the pending proposals;
//! - `CommitAccepted` / `CommitRejected`: applies or drops its pending commit;
//! - `Commit`, `Proposal`, `Application`: processes them; a refused one raises
//!   [`Event::Alarm`] and changes nothing;
//! - `TreePart`: keeps the piece of the ratchet tree of the Welcome to come (bounded by
//!   [`conclave_proto::MAX_TREE_LEN`]);
//! - `Welcome`: joins, checking the tree (sent with it or in parts before it) against the
//!   signed GroupInfo.
//!
//! Every epoch change installs the new SFrame keys in [`Participant::media`], releases the
//! frames held for that epoch and restarts the self-update countdown.
//!
//! The rest of the loop is time and frames: [`Participant::handle_timeout`] when
//! [`Participant::poll_timeout`] says (key erasure, held frames expiring, the periodic
//! self-update), [`Participant::seal_frame`] for every outgoing frame and
//! [`Participant::open_frame`] for every incoming one ([`intake`]). The native runtime
//! (`conclave-native`) and the browser's `Call` (`conclave-web`) only drive it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod frames;
pub mod intake;
mod knocks;
mod membership;
pub mod reconnect;
mod trust;

use std::collections::{BTreeMap, VecDeque};

use conclave_e2ee::{
    Device, EpochChange, Fingerprint, MediaCrypto, RoomPolicy, RosterEntry, SecurityCode,
    SelfUpdateTimer, Session, TrustStore,
};
use conclave_proto::{KnockId, MembershipMsg};

pub use intake::{FrameKind, FramePath, FrameTag, Intake, MediaIntake, OpenedFrame, SenderHealth};
use knocks::{Knock, RetiredKnocks};
pub use knocks::{PendingKnock, MAX_PENDING_KNOCKS};

/// The claims of a join token (`ct1.<base64url(JSON)>.<signature>`), read without checking
/// the signature (the server checks it; a client only learns which identity and name its
/// credential must carry). `None` if it is not shaped like a token or names no subject.
pub fn token_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let body = token.strip_prefix("ct1.")?.rsplit_once('.')?.0;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    v.get("sub")?.as_str()?;
    Some(v)
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The E2EE core refused something.
    #[error(transparent)]
    E2ee(#[from] conclave_e2ee::Error),
    /// The server sent something that makes no sense here.
    #[error("unexpected from the server: {0}")]
    Unexpected(String),
}

/// Which admission policy a room this participant creates gets.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NewRoomPolicy {
    /// Anyone the server lets knock is admitted automatically.
    Open,
    /// This device is the host; it admits each knock (see [`AdmitMode`]).
    Lobby,
    /// Only these devices (by fingerprint), and bearers of invites this device signs, may be
    /// added; any member adds them. This device is the host.
    InviteList(Vec<Fingerprint>),
}

/// How a lobby host admits knocks. (In open and invite-list rooms nobody decides: the
/// committer adds every knock the policy allows.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmitMode {
    /// Admit every knock without asking anyone: a lobby then protects nothing. Only for
    /// automation that knows this (`conclave join --admit danger-auto`).
    Auto,
    /// Wait for [`Participant::admit`] or [`Participant::deny`] per knock (the default).
    Ask,
}

/// What a UI should show.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// We are in the group (created it or joined it).
    Joined {
        /// The epoch.
        epoch: u64,
        /// The security code.
        security_code: SecurityCode,
    },
    /// A new epoch: membership changed or a member refreshed its keys.
    EpochChanged {
        /// What changed.
        change: EpochChange,
        /// The new security code.
        security_code: SecurityCode,
    },
    /// Someone knocks (lobby hosts decide with [`Participant::admit`] / [`Participant::deny`]).
    Knock {
        /// The knock.
        knock: KnockId,
        /// User id, from the KeyPackage's credential.
        user_id: String,
        /// Display name, from the KeyPackage's credential.
        name: String,
        /// Fingerprint of the knocking device's key, from its KeyPackage.
        fingerprint: Fingerprint,
    },
    /// A knock ended before anyone decided on it (the knocker left, or its KeyPackage
    /// expired): it is no longer in [`Participant::pending_knocks`].
    KnockGone {
        /// The knock.
        knock: KnockId,
        /// Display name, from the KeyPackage's credential.
        name: String,
    },
    /// Something was refused that an honest server and honest members would not send: a
    /// policy-breaking commit, a forged message, a server proposal other than a removal.
    Alarm {
        /// What.
        reason: String,
    },
    /// We were removed from the group, or turned away.
    Ended {
        /// Why.
        reason: String,
    },
}

/// One participant of one room.
pub struct Participant {
    device: Device,
    room: String,
    policy: NewRoomPolicy,
    admit_mode: AdmitMode,
    session: Option<Session>,
    /// The media keys and the receive side of the frame path.
    frames: FramePath,
    /// Knocks as first shown, by the server's knock id.
    knocks: BTreeMap<KnockId, Knock>,
    /// Knock numbers that were shown and are done (answered, added, gone): never shown again,
    /// so a number the host saw cannot come back with another KeyPackage behind it.
    retired: RetiredKnocks,
    /// What the person approved: digests of the exact KeyPackages they were shown. Each is
    /// used once: it goes when a commit adds that device.
    approved: Vec<([u8; 32], Fingerprint)>,
    out: VecDeque<MembershipMsg>,
    events: VecDeque<Event>,
    left: bool,
    /// The roster of the last epoch, kept once the session is gone (removed or left).
    final_roster: Vec<RosterEntry>,
    /// Ratchet tree parts of the Welcome to come ([`ServerMsg::TreePart`]).
    tree: conclave_proto::TreeParts,
    /// The meeting's charter, from the link this participant was given: the only group policy
    /// it joins or creates.
    charter: Option<RoomPolicy>,
    /// Trust on first use: the fingerprint this device first saw for each user id.
    trust: Option<TrustStore>,
    /// Whether `trust` gained pins that the runtime has not saved yet.
    trust_changed: bool,
    /// The periodic self-update, once the runtime set it.
    update: Option<SelfUpdateTimer>,
    /// The state of the timers' jitter (seeded by the runtime).
    rng: u64,
}

impl core::fmt::Debug for Participant {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Participant")
            .field("room", &self.room)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Participant {
    /// Ends this participant and gives its device back, to join again after a lost connection
    /// (as a new member: the old session's keys are dropped with it, and the server replaces
    /// the stale leaf when the device knocks again).
    pub fn into_device(self) -> Device {
        self.device
    }

    /// A participant for `room` on `device`.
    pub fn new(device: Device, room: &str, policy: NewRoomPolicy, admit_mode: AdmitMode) -> Self {
        Participant {
            device,
            room: room.to_owned(),
            policy,
            admit_mode,
            session: None,
            final_roster: Vec::new(),
            tree: Default::default(),
            frames: FramePath::default(),
            knocks: BTreeMap::new(),
            retired: RetiredKnocks::default(),
            approved: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            left: false,
            charter: None,
            trust: None,
            trust_changed: false,
            update: None,
            rng: 0,
        }
    }

    /// The policy a room this participant creates gets (before its first message).
    pub fn set_new_room_policy(&mut self, policy: NewRoomPolicy) {
        self.policy = policy;
    }

    /// Holds this participant to a meeting's charter (from the link or `--charter`): it joins
    /// only a group whose policy is exactly the charter, and creates the group only if the
    /// charter lets this device (anyone, for an open room; a host, otherwise), with the
    /// charter's policy. Without a charter it takes whatever group the server's room has.
    pub fn with_charter(mut self, charter: RoomPolicy) -> Result<Self, Error> {
        self.set_charter(charter)?;
        Ok(self)
    }

    /// [`Participant::with_charter`] on a participant that exists (before its first message).
    pub fn set_charter(&mut self, charter: RoomPolicy) -> Result<(), Error> {
        if charter.room_id != self.room.as_bytes() {
            return Err(Error::Unexpected(format!(
                "the charter is for room {:?}, not {:?}",
                charter.room(),
                self.room
            )));
        }
        self.charter = Some(charter);
        Ok(())
    }

    /// The charter this participant holds to, if any.
    pub fn expected_charter(&self) -> Option<&RoomPolicy> {
        self.charter.as_ref()
    }

    /// The charter of the group this participant is in (to put in the links it hands out).
    pub fn charter(&self) -> Option<String> {
        self.session.as_ref()?.policy().to_charter().ok()
    }

    /// The group session, once in.
    pub fn session(&self) -> Option<&Session> {
        self.session.as_ref()
    }

    /// Mutable access to the group session: only for adversarial tests that model a member
    /// running modified software.
    #[doc(hidden)]
    pub fn danger_session_mut(&mut self) -> Option<&mut Session> {
        self.session.as_mut()
    }

    /// The SFrame key ring (keys of the current epoch and those in their grace window).
    pub fn media(&mut self) -> &mut MediaCrypto {
        self.frames.media_mut()
    }

    /// The media key ring, to read (health, epochs held, when keys are next erased).
    pub fn media_ref(&self) -> &MediaCrypto {
        self.frames.media()
    }

    /// Whether this device hosts the room (decides on knocks in a lobby room).
    pub fn is_host(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.policy().is_host(self.device.identity().public_key()))
    }

    /// The current epoch, once in.
    pub fn epoch(&self) -> Option<u64> {
        self.session.as_ref().map(Session::epoch)
    }

    /// The security code, once in.
    pub fn security_code(&self) -> Option<SecurityCode> {
        self.session.as_ref().and_then(|s| s.security_code().ok())
    }

    /// The roster, once in.
    pub fn roster(&self) -> Vec<RosterEntry> {
        match self.session.as_ref() {
            Some(s) => s.roster().unwrap_or_default(),
            None => self.final_roster.clone(),
        }
    }

    /// Members in the current epoch (without copying the roster).
    pub fn member_count(&self) -> usize {
        self.session.as_ref().map_or(0, |s| s.member_count())
    }

    /// One member of the current epoch, by leaf index.
    pub fn member(&self, leaf: u32) -> Option<RosterEntry> {
        self.session.as_ref().and_then(|s| s.member(leaf))
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<MembershipMsg> {
        self.out.pop_front()
    }

    /// Next event for the UI.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

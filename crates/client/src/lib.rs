//! # Conclave participant core
//!
//! Sans-IO: [`Participant::handle`] takes a [`ServerMsg`] and the time; [`Participant::poll_transmit`]
//! yields the [`ClientMsg`]s to send and [`Participant::poll_event`] what a UI should show
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
//! Every epoch change installs the new SFrame keys in [`Participant::media`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(target_arch = "wasm32"))]
pub mod media_file;
#[cfg(not(target_arch = "wasm32"))]
pub mod media_link;
#[cfg(not(target_arch = "wasm32"))]
pub mod net;

use std::collections::{BTreeMap, VecDeque};

use conclave_e2ee::{
    Admission, Device, EpochChange, Fingerprint, Incoming, KeyPackageCard, MediaCrypto, PinCheck,
    RoomPolicy, RosterEntry, SecurityCode, Session, Timestamp, TrustStore,
};
use conclave_proto::{Bytes, ClientMsg, KnockId, KnockInfo, ServerMsg};
use mls_rs::identity::SigningIdentity;
use mls_rs_codec::MlsDecode;
use tracing::{debug, info, warn};

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

/// The hosts of a policy, as fingerprint short codes, for messages. (Both Conclave suites
/// hash with SHA-256, so a host key's fingerprint does not depend on which.)
fn hosts_of(policy: &RoomPolicy) -> String {
    let keys: &[Vec<u8>] = match &policy.admission {
        Admission::Open => return "nobody".into(),
        Admission::Lobby(h) => &h.keys,
        Admission::InviteList(l) => &l.hosts.keys,
    };
    keys.iter()
        .map(|k| {
            let key = conclave_e2ee::mls::SignaturePublicKey::new(k.clone());
            Fingerprint::of_key(conclave_e2ee::RoomCipherSuite::Curve25519Aes128, &key)
                .map_or_else(|_| "?".to_owned(), |f| f.short_code())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The warning for a known user id with a new device key.
fn key_changed(name: &str, user_id: &str, now: Fingerprint, pinned: Fingerprint) -> String {
    format!(
        "{name} ({user_id}) comes with a new device key {}; this device knew {} for that user id. \
         Check with them (by voice, say) before trusting it",
        now.short_code(),
        pinned.short_code()
    )
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
    /// A media file could not be used.
    #[error("media file: {0}")]
    MediaFile(String),
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

/// Most knocks a participant keeps waiting for a decision (each KeyPackage is at most
/// [`conclave_e2ee::MAX_KEY_PACKAGE_LEN`] bytes, so at most 8 MiB in all).
pub const MAX_PENDING_KNOCKS: usize = 1024;

/// A knock as this participant was shown it: who the KeyPackage itself says knocks (never the
/// server's description beside it), and the exact KeyPackage an approval admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingKnock {
    /// The server's number for the knock (what [`Participant::admit`] takes).
    pub knock: KnockId,
    /// User id from the KeyPackage's credential.
    pub user_id: String,
    /// Display name from the KeyPackage's credential.
    pub name: String,
    /// Fingerprint of the knocking device's key.
    pub fingerprint: Fingerprint,
}

#[derive(Clone, Debug)]
struct Knock {
    card: KeyPackageCard,
    key_package: Vec<u8>,
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

/// Knock numbers a host is done with. The delivery service numbers knocks upwards and never
/// reuses one; this keeps the last [`RETIRED_KNOCKS`] and refuses every number at or below
/// the ones it let go.
#[derive(Debug, Default)]
struct RetiredKnocks {
    ids: std::collections::BTreeSet<KnockId>,
    floor: Option<KnockId>,
}

/// Retired knock numbers kept one by one (beyond that, a floor).
const RETIRED_KNOCKS: usize = 4096;

impl RetiredKnocks {
    fn insert(&mut self, id: KnockId) {
        self.ids.insert(id);
        while self.ids.len() > RETIRED_KNOCKS {
            if let Some(low) = self.ids.pop_first() {
                self.floor = Some(self.floor.map_or(low, |f| f.max(low)));
            }
        }
    }

    fn contains(&self, id: KnockId) -> bool {
        self.ids.contains(&id) || self.floor.is_some_and(|f| id <= f)
    }
}

/// One participant of one room.
pub struct Participant {
    device: Device,
    room: String,
    policy: NewRoomPolicy,
    admit_mode: AdmitMode,
    session: Option<Session>,
    media: MediaCrypto,
    /// Knocks as first shown, by the server's knock id.
    knocks: BTreeMap<KnockId, Knock>,
    /// Knock numbers that were shown and are done (answered, added, gone): never shown again,
    /// so a number the host saw cannot come back with another KeyPackage behind it.
    retired: RetiredKnocks,
    /// What the person approved: digests of the exact KeyPackages they were shown. Each is
    /// used once: it goes when a commit adds that device.
    approved: Vec<([u8; 32], Fingerprint)>,
    out: VecDeque<ClientMsg>,
    events: VecDeque<Event>,
    left: bool,
    /// The roster of the last epoch, kept once the session is gone (removed or left).
    final_roster: Vec<RosterEntry>,
    /// Ratchet tree parts of the Welcome to come ([`ServerMsg::TreePart`]).
    tree: Vec<u8>,
    /// The meeting's charter, from the link this participant was given: the only group policy
    /// it joins or creates.
    charter: Option<RoomPolicy>,
    /// Trust on first use: the fingerprint this device first saw for each user id.
    trust: Option<TrustStore>,
    /// Whether `trust` gained pins that the runtime has not saved yet.
    trust_changed: bool,
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
            tree: Vec::new(),
            media: MediaCrypto::default(),
            knocks: BTreeMap::new(),
            retired: RetiredKnocks::default(),
            approved: Vec::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            left: false,
            charter: None,
            trust: None,
            trust_changed: false,
        }
    }

    /// Checks every member this participant sees against `pins` (trust on first use): a user
    /// id seen for the first time is pinned to its device fingerprint; a known user id that
    /// comes with another key raises an [`Event::Alarm`] that names both fingerprints (the
    /// pin stays: a person decides). The runtime keeps the pins across calls
    /// ([`Participant::take_trust_update`]).
    pub fn set_trust_store(&mut self, mut pins: TrustStore) {
        // Our own user id is pinned to this device, so another device that claims it shows.
        let info = self.device.identity().info();
        if let (None, Ok(fp)) = (
            pins.pinned(&info.user_id),
            self.device.identity().fingerprint(),
        ) {
            pins.repin(&info.user_id, fp);
            self.trust_changed = true;
        }
        self.trust = Some(pins);
    }

    /// The pins as text ([`TrustStore::to_text`]) when they changed since the last call, for
    /// the runtime to save.
    pub fn take_trust_update(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.trust_changed) {
            return None;
        }
        self.trust.as_ref().map(TrustStore::to_text)
    }

    /// Checks members against the pins (see [`Participant::set_trust_store`]).
    fn check_pins<'a>(&mut self, members: impl IntoIterator<Item = &'a RosterEntry>) {
        let Some(trust) = self.trust.as_mut() else {
            return;
        };
        let own = self.device.identity().fingerprint().ok();
        let mut alarms = Vec::new();
        for m in members {
            if Some(m.fingerprint) == own {
                continue;
            }
            match trust.check(&m.user_id, m.fingerprint) {
                PinCheck::FirstSeen => self.trust_changed = true,
                PinCheck::Matches => {}
                PinCheck::Changed { pinned } => alarms.push(key_changed(
                    &m.display_name,
                    &m.user_id,
                    m.fingerprint,
                    pinned,
                )),
            }
        }
        for a in alarms {
            self.alarm(a);
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
        &mut self.media
    }

    /// The media key ring, to read (health, epochs held, when keys are next erased).
    pub fn media_ref(&self) -> &MediaCrypto {
        &self.media
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
    pub fn poll_transmit(&mut self) -> Option<ClientMsg> {
        self.out.pop_front()
    }

    /// Next event for the UI.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Knocks waiting for this host's decision.
    pub fn pending_knocks(&self) -> Vec<PendingKnock> {
        self.knocks
            .iter()
            .filter(|(_, k)| !self.is_approved(&k.card))
            .map(|(&knock, k)| PendingKnock {
                knock,
                user_id: k.card.credential.user_id.clone(),
                name: k.card.credential.display_name.clone(),
                fingerprint: k.card.fingerprint,
            })
            .collect()
    }

    fn is_approved(&self, card: &KeyPackageCard) -> bool {
        self.approved.iter().any(|(d, _)| *d == card.digest)
    }

    /// The host admits a knock: the exact KeyPackage it was shown under that knock (never
    /// another one the server sends later under the same number), once. Commits the add now,
    /// with any other approved knocks and pending proposals; if a commit is already in flight,
    /// the add goes into the next one.
    pub fn admit(&mut self, knock: KnockId, now: Timestamp) -> Result<(), Error> {
        let Some(k) = self.knocks.get(&knock) else {
            return Err(Error::Unexpected(format!("no knock {knock}")));
        };
        if !self.is_approved(&k.card) {
            self.approved.push((k.card.digest, k.card.fingerprint));
        }
        let Some(epoch) = self.epoch() else {
            return Ok(());
        };
        let knocks: Vec<KnockInfo> = self
            .knocks
            .iter()
            .map(|(&knock, k)| KnockInfo {
                knock,
                user_id: k.card.credential.user_id.clone(),
                name: k.card.credential.display_name.clone(),
                key_package: Bytes(k.key_package.clone()),
            })
            .collect();
        self.commit_requested(epoch, knocks, now)
    }

    /// The host turns a knock away.
    pub fn deny(&mut self, knock: KnockId) {
        if let Some(k) = self.knocks.remove(&knock) {
            self.retired.insert(knock);
            self.approved.retain(|(d, _)| *d != k.card.digest);
        }
        self.out.push_back(ClientMsg::Deny { knock });
    }

    /// Records a knock the first time its number is seen (later messages cannot change what
    /// the host was shown under it) and tells the UI who its KeyPackage says knocks.
    fn knocked(&mut self, knock: &KnockInfo) {
        if self.knocks.contains_key(&knock.knock) {
            return;
        }
        if self.retired.contains(knock.knock) {
            return self.alarm(format!(
                "the server sent knock {} again after it was done; ignored",
                knock.knock
            ));
        }
        if self.knocks.len() >= MAX_PENDING_KNOCKS {
            return self.alarm(format!(
                "more than {MAX_PENDING_KNOCKS} knocks waiting; knock {} dropped",
                knock.knock
            ));
        }
        let card = match KeyPackageCard::read(&knock.key_package.0) {
            Ok(card) => card,
            Err(e) => {
                return self.alarm(format!(
                    "knock {}: its KeyPackage is unusable: {e}",
                    knock.knock
                ))
            }
        };
        if card.credential.user_id != knock.user_id || card.credential.display_name != knock.name {
            self.alarm(format!(
                "the server described knock {} as {:?} ({:?}); its KeyPackage says {:?} ({:?}), which is shown",
                knock.knock,
                knock.name,
                knock.user_id,
                card.credential.display_name,
                card.credential.user_id
            ));
        }
        // A host sees a changed key before it admits, not after (a knock pins nothing).
        let pinned = self
            .trust
            .as_ref()
            .and_then(|t| t.pinned(&card.credential.user_id))
            .filter(|p| *p != card.fingerprint);
        if let Some(pinned) = pinned {
            self.alarm(key_changed(
                &card.credential.display_name,
                &card.credential.user_id,
                card.fingerprint,
                pinned,
            ));
        }
        self.events.push_back(Event::Knock {
            knock: knock.knock,
            user_id: card.credential.user_id.clone(),
            name: card.credential.display_name.clone(),
            fingerprint: card.fingerprint,
        });
        self.knocks.insert(
            knock.knock,
            Knock {
                card,
                key_package: knock.key_package.0.clone(),
            },
        );
    }

    /// Leaves cleanly: proposes our own removal, which the next committer commits.
    pub fn leave(&mut self) -> Result<(), Error> {
        if let Some(s) = self.session.as_mut() {
            let proposal = s.propose_leave()?;
            self.out.push_back(ClientMsg::Proposal {
                proposal: Bytes(proposal),
            });
        }
        self.left = true;
        self.media.clear();
        Ok(())
    }

    fn alarm(&mut self, reason: String) {
        warn!(%reason, "alarm");
        self.events.push_back(Event::Alarm { reason });
    }

    fn install_keys(&mut self, now: Timestamp) -> Result<(), Error> {
        if let Some(s) = self.session.as_ref() {
            self.media.install_epoch(s.epoch_secrets()?, now)?;
        }
        Ok(())
    }

    fn epoch_changed(&mut self, change: EpochChange, now: Timestamp) -> Result<(), Error> {
        // Knocks answered by this commit (whoever committed it) are done, and so are the
        // approvals of those devices: an approval admits once.
        for a in &change.added {
            let retired = &mut self.retired;
            self.knocks.retain(|&id, k| {
                let done = k.card.fingerprint == a.fingerprint;
                if done {
                    retired.insert(id);
                }
                !done
            });
            self.approved.retain(|(_, f)| *f != a.fingerprint);
        }
        if change.removed_self {
            if let Some(s) = self.session.take() {
                self.final_roster = s.roster().unwrap_or_default();
            }
            self.media.clear();
            self.events.push_back(Event::Ended {
                reason: "removed from the group".into(),
            });
            return Ok(());
        }
        for r in &change.removed {
            debug!(leaf = r.leaf, name = %r.display_name, "member removed");
        }
        self.install_keys(now)?;
        self.check_pins(&change.added);
        let code = self
            .session
            .as_ref()
            .map(Session::security_code)
            .transpose()?;
        if let Some(security_code) = code {
            info!(epoch = change.epoch, %security_code, "new epoch");
            self.events.push_back(Event::EpochChanged {
                change,
                security_code,
            });
        }
        Ok(())
    }

    /// Handles one message from the server. Errors that a hostile peer can cause become
    /// [`Event::Alarm`]s, never panics; the participant stays usable.
    pub fn handle(&mut self, msg: ServerMsg, now: Timestamp) -> Result<(), Error> {
        match msg {
            ServerMsg::Joined {
                create_group,
                server_identity,
                ..
            } => {
                if self.session.is_some() {
                    // A server that tells a member to create (or knock on) the room again is
                    // trying to move it out of its group: refuse, keep the session.
                    return Err(Error::Unexpected(
                        "a second Joined while in the group; ignored".into(),
                    ));
                }
                let own = self.device.identity().public_key().clone();
                let may_create = self.charter.as_ref().is_none_or(|c| c.may_create(&own));
                if create_group && !may_create {
                    // The meeting's charter names other hosts: only one of them starts its
                    // group. Decline by knocking instead.
                    info!("asked to create the meeting's group, which only its hosts may do; knocking");
                }
                if create_group && may_create {
                    let server = SigningIdentity::mls_decode(&mut server_identity.as_ref())
                        .map_err(|e| Error::Unexpected(format!("server identity: {e}")))?;
                    let policy = match (&self.charter, &self.policy) {
                        (Some(charter), _) => charter.clone(),
                        (None, NewRoomPolicy::Open) => RoomPolicy::open(&self.room),
                        (None, NewRoomPolicy::Lobby) => {
                            RoomPolicy::lobby(&self.room, &[self.device.identity()])
                        }
                        (None, NewRoomPolicy::InviteList(allowed)) => RoomPolicy::invite_list(
                            &self.room,
                            &[self.device.identity()],
                            allowed.clone(),
                        ),
                    };
                    let session = self.device.create_room(policy, Some(server), now)?;
                    self.out.push_back(ClientMsg::CreateGroup {
                        group_info: Bytes(session.group_info()?),
                        ratchet_tree: Bytes(session.ratchet_tree()?),
                    });
                    let security_code = session.security_code()?;
                    let epoch = session.epoch();
                    self.session = Some(session);
                    self.install_keys(now)?;
                    self.events.push_back(Event::Joined {
                        epoch,
                        security_code,
                    });
                } else if self.session.is_none() {
                    // A lobby host whose connection dropped names the last epoch it saw of
                    // the group it hosted, so that a member can add it back if no other host
                    // is there.
                    let ticket = self.device.return_ticket(&self.room);
                    let kp = self.device.key_package_with(None, ticket.as_ref(), now)?;
                    self.out.push_back(ClientMsg::KeyPackage {
                        key_package: Bytes(kp),
                    });
                }
            }
            ServerMsg::Knock { knock } => self.knocked(&knock),
            ServerMsg::KnockGone { knock } => {
                // The server's word, but all it can do is hide a knock, which it could by
                // never sending it.
                if let Some(k) = self.knocks.remove(&knock) {
                    self.retired.insert(knock);
                    self.approved.retain(|(d, _)| *d != k.card.digest);
                    self.events.push_back(Event::KnockGone {
                        knock,
                        name: k.card.credential.display_name,
                    });
                }
            }
            ServerMsg::CommitRequest { epoch, knocks } => {
                self.commit_requested(epoch, knocks, now)?
            }
            ServerMsg::CommitAccepted { epoch } => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(());
                };
                // Only the verdict on the commit we have pending (built on `epoch - 1`).
                if !s.has_pending_commit() || s.epoch() + 1 != epoch {
                    return Ok(());
                }
                let change = s.confirm_commit()?;
                self.epoch_changed(change, now)?;
            }
            ServerMsg::CommitRejected { epoch, reason } => {
                debug!(epoch, %reason, "our commit was refused");
                // A late verdict on an older commit must not drop the one we have pending now.
                if let Some(s) = self.session.as_mut().filter(|s| s.epoch() == epoch) {
                    s.discard_commit();
                }
            }
            ServerMsg::Commit { commit } => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(());
                };
                match s.process(&commit.0, now) {
                    Ok(Incoming::Commit { change, .. }) => self.epoch_changed(change, now)?,
                    Ok(other) => self.alarm(format!("expected a commit, got {other:?}")),
                    Err(e) => self.alarm(format!("refused a commit: {e}")),
                }
            }
            ServerMsg::Proposal { proposal } => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(());
                };
                match s.process(&proposal.0, now) {
                    Ok(Incoming::Proposal {
                        kind,
                        target,
                        from_server,
                    }) => {
                        debug!(kind, ?target, from_server, "proposal")
                    }
                    Ok(other) => self.alarm(format!("expected a proposal, got {other:?}")),
                    Err(e) => self.alarm(format!("refused a proposal: {e}")),
                }
            }
            ServerMsg::Application { message } => {
                let Some(s) = self.session.as_mut() else {
                    return Ok(());
                };
                if let Err(e) = s.process(&message.0, now) {
                    self.alarm(format!("refused an application message: {e}"));
                }
            }
            ServerMsg::TreePart { part } => {
                if self.tree.len() + part.0.len() > conclave_proto::MAX_TREE_LEN {
                    self.tree = Vec::new();
                    self.alarm(format!(
                        "the server sent ratchet tree parts beyond {} bytes; dropped",
                        conclave_proto::MAX_TREE_LEN
                    ));
                } else {
                    self.tree.extend_from_slice(&part.0);
                }
            }
            ServerMsg::Welcome {
                welcome,
                ratchet_tree,
            } => {
                // A large tree came before its Welcome in parts.
                let parts = std::mem::take(&mut self.tree);
                let ratchet_tree = if ratchet_tree.0.is_empty() {
                    Bytes(parts)
                } else {
                    ratchet_tree
                };
                if self.session.is_some() {
                    return Err(Error::Unexpected(
                        "a Welcome while already in the group".into(),
                    ));
                }
                let joined = self.device.join_held_to(
                    &self.room,
                    self.charter.as_ref(),
                    &welcome.0,
                    &ratchet_tree.0,
                    now,
                );
                let refusal = match (&joined, self.charter.as_ref()) {
                    // Someone (the server's own device, say) made this room's group with
                    // another policy or other hosts than the meeting's maker fixed.
                    (Err(conclave_e2ee::Error::NotTheCharter { offered }), Some(charter)) => {
                        Some(format!(
                            "refused the group the server offered: its policy ({} hosted by {}) is not this meeting's charter ({} hosted by {})",
                            offered.kind(),
                            hosts_of(offered),
                            charter.kind(),
                            hosts_of(charter)
                        ))
                    }
                    // The group breaks its own policy where a joiner can see it (a lobby
                    // member who is no host added us, a member not on the invite list): a
                    // group someone made to look like this room's.
                    (Err(e @ conclave_e2ee::Error::Policy(_)), _) => {
                        Some(format!("refused the group the server offered: {e}"))
                    }
                    _ => None,
                };
                if let Some(reason) = refusal {
                    self.alarm(reason.clone());
                    self.events.push_back(Event::Ended { reason });
                    return Ok(());
                }
                let session = joined?;
                let epoch = session.epoch();
                let security_code = session.security_code()?;
                let roster = session.roster()?;
                if self.charter.is_none() && !matches!(self.policy, NewRoomPolicy::Open) {
                    let own = self.device.identity().public_key();
                    if !session.policy().is_host(own) {
                        self.alarm(format!(
                            "this device was to host the meeting, but the room already had a group ({} hosted by {}): \
                             if you made this meeting, the server may have put you in a group of its own; a link \
                             with the meeting's charter prevents this",
                            session.policy().kind(),
                            hosts_of(session.policy())
                        ));
                    }
                }
                self.session = Some(session);
                self.install_keys(now)?;
                self.check_pins(&roster);
                info!(epoch, %security_code, "joined");
                self.events.push_back(Event::Joined {
                    epoch,
                    security_code,
                });
            }
            ServerMsg::Denied { reason } => self.events.push_back(Event::Ended { reason }),
            ServerMsg::Error { code, reason } => debug!(?code, %reason, "server error"),
            _ => {}
        }
        Ok(())
    }

    fn commit_requested(
        &mut self,
        epoch: u64,
        knocks: Vec<KnockInfo>,
        now: Timestamp,
    ) -> Result<(), Error> {
        if self.left {
            return Ok(());
        }
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if s.epoch() != epoch || s.has_pending_commit() {
            return Ok(());
        }
        // Who decides on adds: in a lobby, a host's person (unless the host runs with
        // `AdmitMode::Auto`), and nobody else may add; elsewhere the policy alone.
        let (lobby, host) = match &s.policy().admission {
            Admission::Lobby(_) => (
                true,
                s.policy().is_host(self.device.identity().public_key()),
            ),
            _ => (false, false),
        };
        if lobby && host && self.admit_mode == AdmitMode::Ask {
            // A request sent before the DS saw our answer to a knock may still carry it:
            // that is a race, not the server showing a done knock again.
            for k in &knocks {
                if !self.retired.contains(k.knock) {
                    self.knocked(k);
                }
            }
        }
        if lobby && !host {
            // In a lobby only a host adds, but a member who is none may add back a host's own
            // device that proves this is its group (one per commit); otherwise it commits the
            // proposals alone.
            if let Some(bundle) = self.commit_returning_host(&knocks, now) {
                self.out.push_back(ClientMsg::Commit {
                    epoch,
                    commit: Bytes(bundle.commit),
                    welcome: bundle.welcome.map(Bytes),
                });
                return Ok(());
            }
        }
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        let mut kps: Vec<Vec<u8>> = Vec::new();
        let mut devices: Vec<Fingerprint> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for k in &knocks {
            if lobby && !host {
                continue;
            }
            let card = match s.check_joiner(&k.key_package.0, now) {
                Ok(card) => card,
                Err(e) => {
                    refused.push(format!("knock {}: {e}", k.knock));
                    continue;
                }
            };
            // A lobby host adds only these exact bytes approved by its person (not whatever
            // the server now sends under the same knock number).
            let approved = self.approved.iter().any(|(d, _)| *d == card.digest);
            if lobby && self.admit_mode == AdmitMode::Ask && !approved {
                continue;
            }
            // One KeyPackage per device in one commit.
            if devices.contains(&card.fingerprint) {
                continue;
            }
            devices.push(card.fingerprint);
            kps.push(k.key_package.0.clone());
        }
        for reason in refused {
            self.alarm(format!("left out of the commit: {reason}"));
        }
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if kps.is_empty() && s.pending_proposals() == 0 && !knocks.is_empty() {
            // Nothing we may admit yet (a host has not decided): do not burn an epoch.
            return Ok(());
        }
        match s.commit(&kps, &[], now) {
            Ok(bundle) => self.out.push_back(ClientMsg::Commit {
                epoch,
                commit: Bytes(bundle.commit),
                welcome: bundle.welcome.map(Bytes),
            }),
            Err(e) => self.alarm(format!("could not build the requested commit: {e}")),
        }
        Ok(())
    }

    /// A commit adding back the first knocking host device whose KeyPackage names an epoch of
    /// this group this member keeps the secret of ([`Session::commit_host_return`]).
    fn commit_returning_host(
        &mut self,
        knocks: &[KnockInfo],
        now: Timestamp,
    ) -> Option<conclave_e2ee::CommitBundle> {
        let s = self.session.as_mut()?;
        for k in knocks {
            let is_host = KeyPackageCard::read(&k.key_package.0)
                .is_ok_and(|c| s.policy().is_host(&c.signature_key));
            if !is_host {
                continue;
            }
            match s.commit_host_return(&k.key_package.0, now) {
                Ok(bundle) => {
                    info!(knock = %k.knock, "adding back this lobby's host");
                    return Some(bundle);
                }
                Err(e) => debug!(knock = %k.knock, %e, "cannot add back the host"),
            }
        }
        None
    }

    /// Starts a self-update (post-compromise security); the DS decides if it wins the epoch.
    pub fn self_update(&mut self, now: Timestamp) -> Result<(), Error> {
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if s.has_pending_commit() {
            return Ok(());
        }
        let epoch = s.epoch();
        let bundle = s.self_update(now)?;
        self.out.push_back(ClientMsg::Commit {
            epoch,
            commit: Bytes(bundle.commit),
            welcome: None,
        });
        Ok(())
    }
}

//! # Conclave delivery service core
//!
//! Orders and fans out the MLS handshake of every room, and nothing more: it follows each
//! group's **public** state through mls-rs's `ExternalClient` (commits and proposals are MLS
//! public messages), so it can check and order commits, serve the ratchet tree to joiners and
//! propose removals as the group's external sender, but it never holds a member's private
//! state, an exporter secret or a media key. It enforces the room's admission policy with the
//! same [`ConclaveRules`] as the members, so a member's commit that honest members would refuse
//! is refused here first instead of wedging the room.
//!
//! Sans-IO, in the style of quinn-proto: the runtime feeds it connections, messages,
//! disconnections and timeouts, all with the current [`Timestamp`], and drains what to send.
//!
//! - inputs: [`Ds::connect`] (after the runtime checked the join token), [`Ds::handle`],
//!   [`Ds::disconnect`], [`Ds::handle_timeout`];
//! - outputs: [`Ds::poll_output`] until `None` after every input, and [`Ds::poll_timeout`] for
//!   when to call [`Ds::handle_timeout`] next.
//!
//! One room's flow: the first connection is asked to create the group and uploads its GroupInfo
//! and tree ([`ClientMsg::CreateGroup`]); later connections knock with a KeyPackage; after a
//! short batching window the designated committer (most blank nodes on its path, hosts only
//! for adds in lobby rooms) gets a [`ServerMsg::CommitRequest`]; the first valid commit of the
//! epoch wins and is fanned out, its Welcome and the tree go to the joiners, and any other
//! commit for that epoch is refused (its author receives the winner like everyone else and
//! rebuilds). A member whose connection stays gone past a timeout is proposed for removal.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use conclave_mls::{
    check_invited, committer, policy_of, provider, suite_provider, Admission,
    ConclaveIdentityProvider, ConclaveRules, CredentialInfo, HostReturn, KeyPackageCard, Provider,
    RoomCipherSuite, Timestamp, HOST_RETURN_EXTENSION, HOST_RETURN_WINDOW, INVITE_EXTENSION,
    ROOM_POLICY_EXTENSION,
};
use conclave_proto::{
    Bytes, ClientMsg, ErrorCode, KnockId, KnockInfo, ServerMsg, PROTOCOL_VERSION,
};
use mls_rs::extension::built_in::{ExternalSendersExt, RequiredCapabilitiesExt};
use mls_rs::external_client::builder::{
    ExternalBaseConfig, WithCryptoProvider, WithIdentityProvider, WithMlsRules,
};
use mls_rs::external_client::{ExternalClient, ExternalGroup, ExternalReceivedMessage};
use mls_rs::group::proposal::{AddProposal, Proposal};
use mls_rs::group::{CommitEffect, ExportedTree};
use mls_rs::identity::basic::BasicCredential;
use mls_rs::identity::SigningIdentity;
use mls_rs::{CipherSuiteProvider, KeyPackage, MlsMessage};
use mls_rs_codec::MlsEncode;
use mls_rs_core::crypto::SignatureSecretKey;
use tracing::{debug, info, warn};

type ExtConfig = WithMlsRules<
    ConclaveRules,
    WithIdentityProvider<
        ConclaveIdentityProvider,
        WithCryptoProvider<Provider, ExternalBaseConfig>,
    >,
>;

/// A connection, as the runtime numbers them.
pub type ConnId = u64;

/// Errors of this crate (setup only: everything a peer sends is answered, never raised).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server's signing key could not be made or used.
    #[error("server key: {0}")]
    ServerKey(String),
}

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct DsConfig {
    /// How long knocks are collected before a commit is requested (one commit adds them all),
    /// in a small room.
    pub batch_window: Duration,
    /// Added to the batching window per member: every epoch costs each member a commit to
    /// apply and each video sender a keyframe per layer, so a large room changes epochs
    /// less often (1,000 members: at most one epoch a second while people pour in).
    pub batch_per_member: Duration,
    /// Upper bound of the batching window.
    pub max_batch_window: Duration,
    /// How long the designated committer has before another member is asked.
    pub commit_timeout: Duration,
    /// How long a member's connection may stay gone before the server proposes its removal.
    pub remove_after: Duration,
    /// Most members plus knocks per room.
    pub max_room_size: usize,
    /// How long a connection asked to create a room's group has to upload it before the next
    /// connection is asked instead.
    pub create_timeout: Duration,
    /// Most KeyPackage bytes one commit request carries (knocks beyond it wait for the next
    /// epoch), so that the commit and Welcome stay far below the signaling message limit.
    pub max_request_bytes: usize,
}

impl DsConfig {
    /// The batching window of a room with `members` connections.
    pub fn window_for(&self, members: usize) -> Duration {
        let per = self
            .batch_per_member
            .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX));
        self.batch_window
            .max(per)
            .min(self.max_batch_window.max(self.batch_window))
    }
}

impl Default for DsConfig {
    fn default() -> Self {
        DsConfig {
            batch_window: Duration::from_millis(50),
            batch_per_member: Duration::from_millis(1),
            max_batch_window: Duration::from_secs(1),
            commit_timeout: Duration::from_secs(5),
            remove_after: Duration::from_secs(10),
            max_room_size: 2000,
            create_timeout: Duration::from_secs(10),
            max_request_bytes: 1 << 20,
        }
    }
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `msg` on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: ServerMsg,
    },
    /// `conn` became a member of its room's group (`member: true`) or stopped being one. The
    /// SFU forwards media to and from a connection only while it is a member: a token holder
    /// that never got in receives no one's ciphertext, levels or timing.
    Membership {
        /// The connection.
        conn: ConnId,
        /// Whether it is a member now.
        member: bool,
    },
    /// Close `conn` (after sending what was queued before).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DsStats {
    /// Commits accepted.
    pub commits_accepted: u64,
    /// Commits refused (lost the race or invalid).
    pub commits_rejected: u64,
    /// Removals proposed by the server.
    pub removals_proposed: u64,
    /// Messages refused as malformed or unexpected.
    pub refused: u64,
}

/// A generated server signing identity (for the group's external-sender list).
pub fn generate_server_identity(
    suite: RoomCipherSuite,
) -> Result<(SignatureSecretKey, SigningIdentity), Error> {
    let cs = suite_provider(suite).map_err(|e| Error::ServerKey(e.to_string()))?;
    let (secret, public) = cs
        .signature_key_generate()
        .map_err(|e| Error::ServerKey(format!("{e:?}")))?;
    Ok((secret, server_signing_identity(public.as_bytes())))
}

/// The server's signing identity for a public key.
pub fn server_signing_identity(public_key: &[u8]) -> SigningIdentity {
    SigningIdentity::new(
        BasicCredential::new(b"conclave-server".to_vec()).into_credential(),
        public_key.to_vec().into(),
    )
}

#[derive(Debug)]
struct Conn {
    room: String,
    user_id: String,
    state: ConnState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Asked to create the room's group.
    Creating,
    /// Joined signaling, has not knocked yet.
    Waiting,
    /// Knocked; waiting to be added.
    Knocking(KnockId),
    /// A member at this leaf.
    Member(u32),
}

#[derive(Debug)]
struct Knock {
    id: KnockId,
    conn: ConnId,
    info: KnockInfo,
    signature_key: Vec<u8>,
    /// The KeyPackage as validated (its encoding): a commit may add exactly this.
    key_package: Vec<u8>,
    /// When the KeyPackage's lifetime ends.
    expires: Timestamp,
    /// A lobby host's device that names an epoch of the room's group to return to: with no
    /// host online, any member may add it back (see `conclave_mls::HostReturn`).
    returning_host: bool,
}

struct Request {
    conn: ConnId,
    epoch: u64,
    deadline: Timestamp,
}

#[derive(Default)]
struct Room {
    group: Option<ExternalGroup<ExtConfig>>,
    /// The group's epoch of its last add (or of its creation): a returning lobby host's
    /// proof must name an epoch since, which every member keeps.
    last_add_epoch: u64,
    conns: Vec<ConnId>,
    knocks: Vec<Knock>,
    next_knock: KnockId,
    /// Members whose connection went away, by leaf, and since when.
    offline: HashMap<u32, Timestamp>,
    /// Leaves the server proposed to remove in this epoch.
    proposed_removals: Vec<u32>,
    /// Proposals (ours or members') waiting for a commit.
    pending_proposals: usize,
    /// When work appeared that a commit should pick up.
    work_since: Option<Timestamp>,
    request: Option<Request>,
    /// Members that did not answer a commit request in time this epoch.
    skipped: Vec<ConnId>,
    /// KeyPackages that arrived before the room's group existed: one per connection, at most
    /// [`MAX_EARLY_KNOCKS`], each dropped with its connection.
    early: Vec<(ConnId, Vec<u8>)>,
    /// Since when the current creator has been asked to create the group.
    creating_since: Option<Timestamp>,
    /// The policy the room's first group had (its charter, as far as the DS can know it): a
    /// group that replaces a retired one must have the same, so the room keeps its policy and
    /// hosts whoever starts it again.
    charter: Option<conclave_mls::RoomPolicy>,
    /// Connections that declined to create the group (their charter names other hosts): not
    /// asked again until a group exists.
    declined: Vec<ConnId>,
}

/// Most knocks a room keeps while its group does not exist yet.
pub const MAX_EARLY_KNOCKS: usize = 256;

impl Room {
    fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.group_context().epoch)
    }
}

/// The delivery service.
pub struct Ds {
    config: DsConfig,
    client: ExternalClient<ExtConfig>,
    server_identity: SigningIdentity,
    rooms: HashMap<String, Room>,
    conns: HashMap<ConnId, Conn>,
    out: VecDeque<Output>,
    stats: DsStats,
}

impl core::fmt::Debug for Ds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ds")
            .field("rooms", &self.rooms.len())
            .field("conns", &self.conns.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn tree_of(group: &ExternalGroup<ExtConfig>) -> Vec<u8> {
    group.export_tree().unwrap_or_default()
}

impl Ds {
    /// A delivery service signing its removal proposals with `secret` / `identity`.
    pub fn new(config: DsConfig, secret: SignatureSecretKey, identity: SigningIdentity) -> Self {
        let client = ExternalClient::builder()
            .crypto_provider(provider())
            .identity_provider(ConclaveIdentityProvider)
            .mls_rules(ConclaveRules::default())
            .extension_type(ROOM_POLICY_EXTENSION)
            .extension_type(INVITE_EXTENSION)
            .extension_type(HOST_RETURN_EXTENSION)
            .cache_proposals(true)
            .signer(secret, identity.clone())
            .build();
        Ds {
            config,
            client,
            server_identity: identity,
            rooms: HashMap::new(),
            conns: HashMap::new(),
            out: VecDeque::new(),
            stats: DsStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DsStats {
        self.stats
    }

    /// Rooms with a group or a connection.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Connections known.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The epoch of a room's group, if it has one.
    pub fn epoch(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(Room::epoch)
    }

    /// Members of a room's group.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms
            .get(room)
            .and_then(|r| r.group.as_ref())
            .map_or(0, |g| g.roster().members_iter().count())
    }

    /// Next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push_back(Output::Send { conn, msg });
    }

    /// Sends `msg` to every member of the room connected now, except `except`.
    /// Sends a knock to the members who decide on it: the hosts of a lobby room. In open and
    /// invite-list rooms nobody decides (the committer gets the knocks with its commit
    /// request), so nobody gets it: broadcasting every knock to every member cost a room of
    /// 1,000 half a million messages and each member a copy of every KeyPackage.
    fn send_to_hosts(&mut self, room_name: &str, msg: &ServerMsg) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            return;
        };
        let Some(policy) = policy_of(&group.group_context().extensions)
            .ok()
            .filter(|p| matches!(p.admission, Admission::Lobby(_)))
        else {
            return;
        };
        let hosts: Vec<u32> = group
            .roster()
            .members_iter()
            .filter(|m| policy.is_host(&m.signing_identity.signature_key))
            .map(|m| m.index)
            .collect();
        let targets: Vec<ConnId> = room
            .conns
            .iter()
            .copied()
            .filter(|c| {
                matches!(
                    self.conns.get(c).map(|c| c.state),
                    Some(ConnState::Member(l)) if hosts.contains(&l)
                )
            })
            .collect();
        for c in targets {
            self.send(c, msg.clone());
        }
    }

    fn send_to_members(&mut self, room_name: &str, except: Option<ConnId>, msg: &ServerMsg) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        let targets: Vec<ConnId> = room
            .conns
            .iter()
            .copied()
            .filter(|c| Some(*c) != except)
            .filter(|c| {
                matches!(
                    self.conns.get(c).map(|c| c.state),
                    Some(ConnState::Member(_))
                )
            })
            .collect();
        for c in targets {
            self.send(c, msg.clone());
        }
    }

    /// Moves a connection to `state`, telling the runtime when its membership changes.
    fn set_state(&mut self, conn: ConnId, state: ConnState) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let was = matches!(c.state, ConnState::Member(_));
        let is = matches!(state, ConnState::Member(_));
        c.state = state;
        if was != is {
            self.out.push_back(Output::Membership { conn, member: is });
        }
    }

    fn refuse(&mut self, conn: ConnId, code: ErrorCode, reason: impl Into<String>) {
        let reason = reason.into();
        debug!(conn, ?code, %reason, "refused");
        self.stats.refused += 1;
        self.send(conn, ServerMsg::Error { code, reason });
    }

    /// A connection whose token the runtime verified: `user_id` in `room`.
    pub fn connect(&mut self, conn: ConnId, room: &str, user_id: &str, now: Timestamp) {
        self.retire_dead_group(room, now);
        let max = self.config.max_room_size;
        let r = self.rooms.entry(room.to_owned()).or_default();
        let size = r
            .group
            .as_ref()
            .map_or(0, |g| g.roster().members_iter().count())
            + r.knocks.len();
        if size >= max {
            self.refuse(
                conn,
                ErrorCode::RoomFull,
                format!("room {room} is full ({max})"),
            );
            self.out.push_back(Output::Close {
                conn,
                reason: "room full".into(),
            });
            return;
        }
        let creating = r.group.is_none()
            && !r.conns.iter().any(|c| {
                self.conns
                    .get(c)
                    .is_some_and(|c| c.state == ConnState::Creating)
            });
        r.conns.push(conn);
        if creating {
            r.creating_since = Some(now);
        }
        let state = if creating {
            ConnState::Creating
        } else {
            ConnState::Waiting
        };
        self.conns.insert(
            conn,
            Conn {
                room: room.to_owned(),
                user_id: user_id.to_owned(),
                state,
            },
        );
        let server_identity =
            MlsEncode::mls_encode_to_vec(&self.server_identity).unwrap_or_default();
        info!(conn, room, user_id, creating, "connected");
        self.send(
            conn,
            ServerMsg::Joined {
                version: PROTOCOL_VERSION,
                room: room.to_owned(),
                user_id: user_id.to_owned(),
                server_identity: Bytes(server_identity),
                create_group: creating,
            },
        );
    }

    /// A connection went away.
    pub fn disconnect(&mut self, conn: ConnId, now: Timestamp) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&c.room) else {
            return;
        };
        room.conns.retain(|x| *x != conn);
        // A knock dies with its connection, early or not.
        room.early.retain(|(x, _)| *x != conn);
        room.declined.retain(|x| *x != conn);
        info!(conn, room = %c.room, state = ?c.state, "disconnected");
        match c.state {
            ConnState::Member(leaf) => {
                room.offline.insert(leaf, now);
                // Whatever closed it (the socket, or the DS cutting off a slow reader whose
                // socket may still be open), the SFU stops serving it now.
                self.out.push_back(Output::Membership {
                    conn,
                    member: false,
                });
            }
            ConnState::Knocking(id) => room.knocks.retain(|k| k.id != id),
            ConnState::Creating | ConnState::Waiting => {}
        }
        if let ConnState::Knocking(knock) = c.state {
            // A host's list of knocks loses the ones nobody waits on any more.
            self.send_to_hosts(&c.room, &ServerMsg::KnockGone { knock });
        }
        let Some(room) = self.rooms.get_mut(&c.room) else {
            return;
        };
        if room.request.as_ref().is_some_and(|r| r.conn == conn) {
            room.request = None;
            room.work_since.get_or_insert(now);
        }
        let name = c.room.clone();
        self.retire_dead_group(&name, now);
        let Some(room) = self.rooms.get_mut(&name) else {
            return;
        };
        let empty = room.conns.is_empty();
        // A room that never had a group is forgotten; one that had keeps its policy (a few
        // hundred bytes) so that whoever starts it again must keep it too.
        if empty && room.group.is_none() && room.charter.is_none() {
            self.rooms.remove(&name);
        } else {
            self.schedule(&name, now);
        }
        // A room whose creator left before creating the group: ask the next connection.
        self.promote_creator(&name, now);
    }

    /// A room whose group has no member online can never commit again: nobody could admit the
    /// next person (the last member left, or every member's connection is gone for good). Its
    /// group is retired, and the next rightful person starts a new one under the same policy
    /// (`create_group` refuses another; a participant whose charter names other hosts
    /// declines); knocks waiting on the old group are kept for the new one. (This gives the
    /// server nothing it lacked: it can always tell a connection to create a group, and
    /// joiners that hold the meeting's charter refuse any group but the charter's.)
    fn retire_dead_group(&mut self, room_name: &str, now: Timestamp) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        // Every member is gone for good: left cleanly, or offline past `remove_after` (a
        // member whose connection blinked may still come back, and the room must not change
        // hands to whoever connects first in that moment).
        let gone_for_good = room.group.as_ref().is_some_and(|g| {
            g.roster().members_iter().all(|m| {
                room.proposed_removals.contains(&m.index)
                    || room
                        .offline
                        .get(&m.index)
                        .is_some_and(|t| now >= t.saturating_add(self.config.remove_after))
            })
        });
        if !gone_for_good
            || room.conns.iter().any(|c| {
                matches!(
                    self.conns.get(c).map(|c| c.state),
                    Some(ConnState::Member(_))
                )
            })
        {
            return;
        }
        info!(
            room = room_name,
            "no member of the room's group is online: the group is retired"
        );
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let mut knocks = std::mem::take(&mut room.knocks);
        let conns = room.conns.clone();
        // As many as a room keeps before its group exists; the others knock again.
        let excess: Vec<ConnId> = knocks
            .split_off(knocks.len().min(MAX_EARLY_KNOCKS))
            .into_iter()
            .map(|k| k.conn)
            .collect();
        *room = Room {
            conns,
            next_knock: room.next_knock,
            charter: room.charter.take(),
            early: knocks
                .into_iter()
                .map(|k| (k.conn, k.info.key_package.0))
                .collect(),
            ..Room::default()
        };
        for c in excess {
            self.out.push_back(Output::Close {
                conn: c,
                reason: "the room starts anew: knock again".into(),
            });
        }
        for c in room.conns.clone() {
            if let Some(conn) = self.conns.get_mut(&c) {
                conn.state = ConnState::Waiting;
            }
        }
        self.promote_creator(room_name, now);
    }

    fn promote_creator(&mut self, room_name: &str, now: Timestamp) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        if room.group.is_some() {
            return;
        }
        let has_creator = room.conns.iter().any(|c| {
            self.conns
                .get(c)
                .is_some_and(|c| c.state == ConnState::Creating)
        });
        if has_creator {
            return;
        }
        if let Some(&next) = room.conns.iter().find(|c| !room.declined.contains(c)) {
            if let Some(r) = self.rooms.get_mut(room_name) {
                r.creating_since = Some(now);
                // Its own knock, if it sent one while waiting, is void: it creates instead.
                r.early.retain(|(c, _)| *c != next);
            }
            if let Some(c) = self.conns.get_mut(&next) {
                c.state = ConnState::Creating;
                let user_id = c.user_id.clone();
                let server_identity =
                    MlsEncode::mls_encode_to_vec(&self.server_identity).unwrap_or_default();
                self.send(
                    next,
                    ServerMsg::Joined {
                        version: PROTOCOL_VERSION,
                        room: room_name.to_owned(),
                        user_id,
                        server_identity: Bytes(server_identity),
                        create_group: true,
                    },
                );
            }
        }
    }

    /// A message from a connection.
    pub fn handle(&mut self, conn: ConnId, msg: ClientMsg, now: Timestamp) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let room = c.room.clone();
        let state = c.state;
        match (msg, state) {
            (
                ClientMsg::CreateGroup {
                    group_info,
                    ratchet_tree,
                },
                ConnState::Creating,
            ) => self.create_group(conn, &room, &group_info.0, &ratchet_tree.0, now),
            (ClientMsg::KeyPackage { key_package }, ConnState::Waiting) => {
                self.knock(conn, &room, key_package.0, now)
            }
            // Asked to create, it knocks instead: it declines (the meeting's charter lets only
            // its hosts start the group). The next connection is asked.
            (ClientMsg::KeyPackage { key_package }, ConnState::Creating) => {
                self.decline(conn, &room, now);
                self.knock(conn, &room, key_package.0, now)
            }
            (
                ClientMsg::Commit {
                    epoch,
                    commit,
                    welcome,
                },
                ConnState::Member(leaf),
            ) => self.commit(
                conn,
                leaf,
                &room,
                epoch,
                &commit.0,
                welcome.map(|w| w.0),
                now,
            ),
            (ClientMsg::Proposal { proposal }, ConnState::Member(leaf)) => {
                self.proposal(conn, leaf, &room, &proposal.0, now)
            }
            (ClientMsg::Application { message }, ConnState::Member(_)) => {
                self.application(conn, &room, message)
            }
            (ClientMsg::Deny { knock }, ConnState::Member(leaf)) => {
                self.deny(conn, leaf, &room, knock, now)
            }
            (ClientMsg::Hello { .. }, _) => {
                self.refuse(conn, ErrorCode::Unexpected, "already said hello")
            }
            (other, state) => self.refuse(
                conn,
                ErrorCode::Unexpected,
                format!("{} is not expected while {state:?}", kind(&other)),
            ),
        }
    }

    /// `conn` will not create the room's group: it waits, and someone else is asked.
    fn decline(&mut self, conn: ConnId, room_name: &str, now: Timestamp) {
        self.set_state(conn, ConnState::Waiting);
        if let Some(room) = self.rooms.get_mut(room_name) {
            room.declined.push(conn);
            room.creating_since = None;
        }
        self.promote_creator(room_name, now);
    }

    fn create_group(
        &mut self,
        conn: ConnId,
        room_name: &str,
        group_info: &[u8],
        tree: &[u8],
        now: Timestamp,
    ) {
        let observed = MlsMessage::from_bytes(group_info)
            .map_err(|e| e.to_string())
            .and_then(|gi| {
                let tree = ExportedTree::from_bytes(tree).map_err(|e| e.to_string())?;
                self.client
                    .observe_group(gi, Some(tree), Some(now.into()))
                    .map_err(|e| e.to_string())
            });
        let group = match observed {
            Ok(g) => g,
            Err(e) => return self.refuse(conn, ErrorCode::Rejected, format!("group info: {e}")),
        };
        let ctx = group.group_context();
        // The room's group must name this room, name the server as its (only) external sender,
        // and have exactly one member: the creator.
        let policy = match policy_of(&ctx.extensions) {
            Ok(p) => p,
            Err(e) => return self.refuse(conn, ErrorCode::Rejected, e.to_string()),
        };
        if policy.room_id != room_name.as_bytes() {
            return self.refuse(
                conn,
                ErrorCode::Rejected,
                "the group's policy names another room",
            );
        }
        let senders = ctx.extensions.get_as::<ExternalSendersExt>().ok().flatten();
        if senders.is_none_or(|s| s.allowed_senders != [self.server_identity.clone()]) {
            return self.refuse(
                conn,
                ErrorCode::Rejected,
                "the server must be the group's only external sender",
            );
        }
        if let Some(charter) = self.rooms.get(room_name).and_then(|r| r.charter.as_ref()) {
            if *charter != policy {
                let reason = format!(
                    "this room's group was a {} room with its own hosts; a new group must have \
                     the same policy (only its hosts can start it again)",
                    charter.kind()
                );
                self.refuse(conn, ErrorCode::Rejected, reason);
                return self.decline(conn, room_name, now);
            }
        }
        let members: Vec<_> = group.roster().members_iter().collect();
        if members.len() != 1 || ctx.epoch != 0 {
            return self.refuse(
                conn,
                ErrorCode::Rejected,
                "a new room's group has exactly its creator",
            );
        }
        let leaf = members[0].index;
        self.set_state(conn, ConnState::Member(leaf));
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        info!(room = room_name, policy = policy.kind(), "group created");
        room.last_add_epoch = group.group_context().epoch;
        room.group = Some(group);
        room.creating_since = None;
        room.charter = Some(policy);
        room.declined.clear();
        // Knocks that came before the group existed are taken now.
        let early = std::mem::take(&mut room.early);
        for (c, kp) in early {
            if self.conns.contains_key(&c) {
                self.knock(c, room_name, kp, now);
            }
        }
        self.schedule(room_name, now);
    }

    /// Validates a knock's KeyPackage fully before anyone sees it: size, signatures (the
    /// KeyPackage's and its leaf's), lifetime, ciphersuite, capabilities the group requires,
    /// the credential naming the token's user, and, in an invite-list room, the invite. A
    /// KeyPackage refused here never reaches a committer, so it cannot stop the others' adds.
    fn check_key_package(
        &self,
        conn: ConnId,
        room_name: &str,
        key_package: &[u8],
        now: Timestamp,
    ) -> Result<KeyPackage, String> {
        let card = KeyPackageCard::read(key_package).map_err(|e| e.to_string())?;
        let c = self.conns.get(&conn).ok_or("no such connection")?;
        // The credential must carry the user id the token named: members see the identity
        // the server vouched for, and cannot be shown another.
        if card.credential.user_id != c.user_id {
            return Err(format!(
                "the KeyPackage names {:?}, the token {:?}",
                card.credential.user_id, c.user_id
            ));
        }
        let msg = MlsMessage::from_bytes(key_package).map_err(|e| e.to_string())?;
        let kp = self
            .client
            .validate_key_package(msg, Some(now.into()))
            .map_err(|e| format!("invalid KeyPackage: {e}"))?;
        let Some(group) = self.rooms.get(room_name).and_then(|r| r.group.as_ref()) else {
            return Ok(kp);
        };
        let ctx = group.group_context();
        if kp.cipher_suite() != ctx.cipher_suite {
            return Err("the KeyPackage is for another ciphersuite".into());
        }
        let add = AddProposal::from(kp.clone());
        if let Ok(Some(required)) = ctx.extensions.get_as::<RequiredCapabilitiesExt>() {
            let caps = add.capabilities();
            let missing = required
                .extensions
                .iter()
                .any(|e| !caps.extensions.contains(e))
                || required
                    .proposals
                    .iter()
                    .any(|p| !caps.proposals.contains(p));
            if missing {
                return Err("the KeyPackage lacks capabilities the room requires".into());
            }
        }
        let policy = policy_of(&ctx.extensions).map_err(|e| e.to_string())?;
        check_invited(card.suite, &policy, &add).map_err(|e| e.to_string())?;
        Ok(kp)
    }

    fn knock(&mut self, conn: ConnId, room_name: &str, key_package: Vec<u8>, now: Timestamp) {
        let kp = match self.check_key_package(conn, room_name, &key_package, now) {
            Ok(kp) => kp,
            Err(reason) => return self.refuse(conn, ErrorCode::Rejected, reason),
        };
        let Some(info) = CredentialInfo::from_credential(&kp.signing_identity().credential).ok()
        else {
            return self.refuse(conn, ErrorCode::Rejected, "invalid credential");
        };
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            // The creator has not uploaded the group yet: keep the knock until it does (one
            // per connection, a bounded number per room).
            if room.early.iter().any(|(c, _)| *c == conn) {
                return self.refuse(conn, ErrorCode::Unexpected, "already knocked");
            }
            if room.early.len() >= MAX_EARLY_KNOCKS {
                return self.refuse(
                    conn,
                    ErrorCode::RateLimited,
                    "too many knocks wait for this room's group; try again",
                );
            }
            room.early.push((conn, key_package));
            return;
        };
        let signature_key = kp.signing_identity().signature_key.as_bytes().to_vec();
        if room.knocks.iter().any(|k| k.signature_key == signature_key) {
            return self.refuse(
                conn,
                ErrorCode::Rejected,
                "this device is already knocking on another connection",
            );
        }
        let encoded = kp.mls_encode_to_vec().unwrap_or_default();
        let expires = kp.expiration().map_or(now, |t| {
            Timestamp::from_millis(t.seconds_since_epoch() * 1000)
        });
        // The same device knocking again (it lost its connection and came back with a fresh
        // KeyPackage): its old leaf is stale, so propose its removal now rather than after
        // `remove_after`. A device whose leaf is still connected cannot join twice.
        let stale = group
            .roster()
            .members_iter()
            .find(|m| m.signing_identity.signature_key.as_bytes() == signature_key.as_slice())
            .map(|m| m.index);
        let mut returning = false;
        if let Some(leaf) = stale {
            if !room.offline.contains_key(&leaf) {
                return self.refuse(
                    conn,
                    ErrorCode::Rejected,
                    "this device is already in the room on another connection",
                );
            }
            room.offline.insert(leaf, Timestamp::from_millis(0));
            returning = true;
        }
        let id = room.next_knock;
        room.next_knock += 1;
        let knock = KnockInfo {
            knock: id,
            user_id: info.user_id.clone(),
            name: info.display_name.clone(),
            key_package: Bytes(key_package),
        };
        let ctx = group.group_context();
        let returning_host = policy_of(&ctx.extensions).is_ok_and(|p| {
            matches!(p.admission, Admission::Lobby(_))
                && p.is_host(&kp.signing_identity().signature_key)
        }) && kp
            .extensions
            .get_as::<HostReturn>()
            .ok()
            .flatten()
            .is_some_and(|t| t.group_id == ctx.group_id);
        room.knocks.push(Knock {
            id,
            conn,
            info: knock.clone(),
            signature_key,
            key_package: encoded,
            expires,
            returning_host,
        });
        room.work_since.get_or_insert(now);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = ConnState::Knocking(id);
        }
        self.send_to_hosts(room_name, &ServerMsg::Knock { knock });
        if returning {
            info!(
                room = room_name,
                "a member's device is back: its old leaf goes"
            );
            self.propose_removals(room_name, now);
        }
        self.schedule(room_name, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        conn: ConnId,
        leaf: u32,
        room_name: &str,
        epoch: u64,
        commit: &[u8],
        welcome: Option<Vec<u8>>,
        now: Timestamp,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_mut() else {
            return;
        };
        let current = group.group_context().epoch;
        let reject = |ds: &mut Ds, reason: String| {
            ds.stats.commits_rejected += 1;
            debug!(conn, epoch, %reason, "commit rejected");
            ds.send(conn, ServerMsg::CommitRejected { epoch, reason });
        };
        if epoch != current {
            return reject(
                self,
                format!("epoch {epoch} is over; the group is at {current}"),
            );
        }
        let msg = match MlsMessage::from_bytes(commit) {
            Ok(m) => m,
            Err(e) => return reject(self, format!("undecodable commit: {e}")),
        };
        // A connection commits as its own leaf only: a member's connection cannot carry
        // another member's commit (checked before the commit touches the group).
        match msg.description() {
            mls_rs::MlsMessageDescription::PublicProtocolMessage {
                sender: mls_rs::group::Sender::Member(l),
                ..
            } if l == leaf => {}
            _ => {
                return reject(
                    self,
                    "a commit must be a public message signed by the sending member's leaf".into(),
                )
            }
        }
        // The group as it was, to go back to if the commit turns out unacceptable below.
        let before = group.clone();
        let desc = match group.process_incoming_message_with_time(msg, now.into()) {
            Ok(ExternalReceivedMessage::Commit(d)) => d,
            Ok(_) => {
                *group = before;
                return reject(self, "not a commit".into());
            }
            Err(e) => {
                *group = before;
                return reject(self, format!("invalid commit: {e}"));
            }
        };
        let new_epoch = match &desc.effect {
            CommitEffect::NewEpoch(e) | CommitEffect::Removed { new_epoch: e, .. } => e.clone(),
            CommitEffect::ReInit(_) => {
                *group = before;
                return reject(self, "re-init is not allowed".into());
            }
        };
        let mut added_keys = Vec::new();
        let mut added_kps = Vec::new();
        let mut added_tickets = Vec::new();
        let mut psks = Vec::new();
        let mut removed = Vec::new();
        for p in &new_epoch.applied_proposals {
            match (&p.proposal, p.sender) {
                (Proposal::Add(a), _) => {
                    added_keys.push(a.signing_identity().signature_key.as_bytes().to_vec());
                    added_kps.push(a.key_package().mls_encode_to_vec().unwrap_or_default());
                    added_tickets.push(
                        a.key_package_extensions()
                            .get_as::<HostReturn>()
                            .ok()
                            .flatten(),
                    );
                }
                (Proposal::Psk(psk), _) => psks.push(
                    psk.external_psk_id()
                        .and_then(|id| HostReturn::from_psk_id(id)),
                ),
                (Proposal::Remove(r), _) => removed.push(r.to_remove()),
                (Proposal::SelfRemove(_), mls_rs::group::Sender::Member(l)) => removed.push(l),
                _ => {}
            }
        }
        // Every add is exactly the KeyPackage of a knock this DS validated, from a connection
        // whose token named that identity, and it comes with the Welcome its joiner needs: a member cannot add a
        // device nobody vouched for, nor one that would never get in.
        let unknocked = added_kps
            .iter()
            .any(|kp| !room.knocks.iter().any(|kn| kn.key_package == *kp));
        // A returning host's proof (the members' rules let only that PSK through): this DS
        // cannot check its value, so it checks that every member keeps it, lest an accepted
        // commit be one that honest members cannot process: an epoch since the last add, at
        // most `HOST_RETURN_WINDOW` back, named by the one host added.
        let base = new_epoch.epoch.saturating_sub(1);
        let bad_return = !psks.is_empty() && {
            let ok = match (psks.as_slice(), added_tickets.as_slice()) {
                ([Some(t)], [Some(named)]) => {
                    t == named
                        && t.epoch >= room.last_add_epoch
                        && t.epoch <= base
                        && base - t.epoch < HOST_RETURN_WINDOW as u64
                }
                _ => false,
            };
            !ok
        };
        let refusal = if unknocked {
            Some("the commit adds a device that did not knock")
        } else if bad_return {
            Some("a host's return must name one epoch since the last add that every member keeps, for the one host it adds")
        } else if !added_keys.is_empty() && welcome.is_none() {
            Some("the commit adds members but carries no Welcome")
        } else {
            None
        };
        if let Some(why) = refusal {
            *group = before;
            return reject(self, why.into());
        }
        if !added_keys.is_empty() {
            room.last_add_epoch = new_epoch.epoch;
        }
        self.stats.commits_accepted += 1;
        info!(
            room = room_name,
            epoch = new_epoch.epoch,
            committer = leaf,
            added = added_keys.len(),
            removed = removed.len(),
            "commit accepted"
        );

        // Map joiners to their knocks and their new leaves.
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            return;
        };
        let after: HashMap<Vec<u8>, u32> = group
            .roster()
            .members_iter()
            .map(|m| {
                (
                    m.signing_identity.signature_key.as_bytes().to_vec(),
                    m.index,
                )
            })
            .collect();
        let tree = if added_keys.is_empty() {
            Vec::new()
        } else {
            tree_of(group)
        };
        let mut joined: Vec<(ConnId, u32)> = Vec::new();
        room.knocks.retain(|k| {
            if added_keys.contains(&k.signature_key) {
                if let Some(&l) = after.get(&k.signature_key) {
                    joined.push((k.conn, l));
                }
                false
            } else {
                true
            }
        });
        for l in &removed {
            room.offline.remove(l);
        }
        room.proposed_removals.clear();
        room.pending_proposals = 0;
        room.request = None;
        room.skipped.clear();
        room.work_since = if room.knocks.is_empty() {
            None
        } else {
            Some(now)
        };
        let conns = room.conns.clone();

        self.send(
            conn,
            ServerMsg::CommitAccepted {
                epoch: new_epoch.epoch,
            },
        );
        for other in conns {
            if other == conn {
                continue;
            }
            if let Some(ConnState::Member(l)) = self.conns.get(&other).map(|c| c.state) {
                {
                    self.send(
                        other,
                        ServerMsg::Commit {
                            commit: Bytes(commit.to_vec()),
                        },
                    );
                    if removed.contains(&l) {
                        self.set_state(other, ConnState::Waiting);
                        self.out.push_back(Output::Close {
                            conn: other,
                            reason: "removed from the group".into(),
                        });
                    }
                }
            }
        }
        if removed.contains(&leaf) {
            self.set_state(conn, ConnState::Waiting);
            self.out.push_back(Output::Close {
                conn,
                reason: "removed from the group".into(),
            });
        }
        // (A commit with adds always has its Welcome: checked above.)
        if let Some(w) = &welcome {
            for (jc, l) in joined {
                self.set_state(jc, ConnState::Member(l));
                self.send(
                    jc,
                    ServerMsg::Welcome {
                        welcome: Bytes(w.clone()),
                        ratchet_tree: Bytes(tree.clone()),
                    },
                );
            }
        }
        self.schedule(room_name, now);
    }

    /// A member's proposal. Conclave members propose one thing only: their own removal (a
    /// clean leave). Anything else (an Add by reference, a removal of someone else, an
    /// update) is refused and never cached: a cached proposal goes into every commit, so one
    /// that the DS would then refuse (an add of a device that never knocked) would freeze the
    /// room.
    fn proposal(
        &mut self,
        conn: ConnId,
        leaf: u32,
        room_name: &str,
        proposal: &[u8],
        now: Timestamp,
    ) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if room.proposed_removals.contains(&leaf) {
            return self.refuse(conn, ErrorCode::Unexpected, "already leaving");
        }
        let Some(group) = room.group.as_mut() else {
            return;
        };
        let before = group.clone();
        let msg = match MlsMessage::from_bytes(proposal) {
            Ok(m) => m,
            Err(e) => {
                return self.refuse(
                    conn,
                    ErrorCode::Malformed,
                    format!("undecodable proposal: {e}"),
                )
            }
        };
        match group.process_incoming_message_with_time(msg, now.into()) {
            Ok(ExternalReceivedMessage::Proposal(p)) => {
                // A member leaving cleanly (the RFC 9420 way, a Remove of its own leaf, or the
                // SelfRemove of older Conclave clients): it is never asked to commit again,
                // and the server need not propose its removal too.
                match leaving_member(&p.proposal, &p.sender) {
                    Some(l) if l == leaf => room.proposed_removals.push(l),
                    _ => {
                        *group = before;
                        return self.refuse(
                            conn,
                            ErrorCode::Rejected,
                            "a member may only propose its own removal",
                        );
                    }
                }
            }
            Ok(_) => {
                *group = before;
                return self.refuse(conn, ErrorCode::Rejected, "not a proposal");
            }
            Err(e) => {
                *group = before;
                return self.refuse(conn, ErrorCode::Rejected, format!("invalid proposal: {e}"));
            }
        }
        room.pending_proposals += 1;
        room.work_since.get_or_insert(now);
        self.send_to_members(
            room_name,
            Some(conn),
            &ServerMsg::Proposal {
                proposal: Bytes(proposal.to_vec()),
            },
        );
        self.schedule(room_name, now);
    }

    fn application(&mut self, conn: ConnId, room_name: &str, message: Bytes) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            return;
        };
        let ok = MlsMessage::from_bytes(&message.0)
            .ok()
            .and_then(|m| {
                m.group_id()
                    .map(|g| g == group.group_context().group_id.as_slice())
            })
            .unwrap_or(false);
        if !ok {
            return self.refuse(
                conn,
                ErrorCode::Malformed,
                "not an MLS message of this group",
            );
        }
        self.send_to_members(room_name, Some(conn), &ServerMsg::Application { message });
    }

    fn deny(&mut self, conn: ConnId, leaf: u32, room_name: &str, knock: KnockId, now: Timestamp) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            return;
        };
        // Only a host may turn a knock away (in an open room, nobody needs to).
        let is_host = policy_of(&group.group_context().extensions)
            .ok()
            .is_some_and(|p| {
                group
                    .roster()
                    .members_iter()
                    .find(|m| m.index == leaf)
                    .is_some_and(|m| p.is_host(&m.signing_identity.signature_key))
            });
        if !is_host {
            return self.refuse(conn, ErrorCode::Rejected, "only a host may deny a knock");
        }
        let Some(pos) = room.knocks.iter().position(|k| k.id == knock) else {
            return self.refuse(conn, ErrorCode::Unexpected, format!("no knock {knock}"));
        };
        let k = room.knocks.remove(pos);
        if room.knocks.is_empty() && room.pending_proposals == 0 {
            room.work_since = None;
        }
        self.send(
            k.conn,
            ServerMsg::Denied {
                reason: "a host turned the knock away".into(),
            },
        );
        self.out.push_back(Output::Close {
            conn: k.conn,
            reason: "denied".into(),
        });
        self.schedule(room_name, now);
    }

    /// Asks the designated committer to commit when there is work and nobody is on it.
    fn schedule(&mut self, room_name: &str, now: Timestamp) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_ref() else {
            return;
        };
        if room.request.is_some() {
            return;
        }
        let Some(since) = room.work_since else { return };
        if now < since.saturating_add(self.config.window_for(room.conns.len())) {
            return;
        }
        let epoch = group.group_context().epoch;
        let adds = !room.knocks.is_empty();
        let lobby = policy_of(&group.group_context().extensions)
            .ok()
            .filter(|p| matches!(p.admission, Admission::Lobby(_)));
        // In a lobby, adds wait for a host; but removals must not wait for a host who does
        // not answer, so with proposals pending any member commits them (a non-host's commit
        // adds nobody).
        let hosts_only = adds && room.pending_proposals == 0;
        let committers = |hosts_only: bool| {
            let mut online: Vec<(u32, ConnId)> = Vec::new();
            for c in &room.conns {
                if room.skipped.contains(c) {
                    continue;
                }
                if let Some(ConnState::Member(l)) = self.conns.get(c).map(|c| c.state) {
                    // A member on its way out (its removal is proposed) does not commit.
                    if room.proposed_removals.contains(&l) {
                        continue;
                    }
                    let eligible = match (&lobby, hosts_only) {
                        (Some(p), true) => group
                            .roster()
                            .members_iter()
                            .find(|m| m.index == l)
                            .is_some_and(|m| p.is_host(&m.signing_identity.signature_key)),
                        _ => true,
                    };
                    if eligible {
                        online.push((l, *c));
                    }
                }
            }
            online
        };
        let mut online = committers(hosts_only);
        // No host online, but a host's device is back: any member may add it (with the proof
        // only a member of this group has), and only it.
        let mut only_returning = false;
        if lobby.is_some()
            && hosts_only
            && online.is_empty()
            && room.knocks.iter().any(|k| k.returning_host)
        {
            online = committers(false);
            only_returning = true;
        }
        let tree = group.exported_tree();
        let Some(leaf) = committer::designated(&tree, online.iter().map(|(l, _)| *l)) else {
            if !room.skipped.is_empty() {
                // Everyone who could commit let a request time out (slow, not gone): ask them
                // all again rather than leave the room stuck.
                room.skipped.clear();
                room.work_since = Some(now);
                debug!(room = room_name, "every committer was slow; asking again");
                return self.schedule(room_name, now);
            }
            debug!(
                room = room_name,
                "work waiting, but no member can commit it"
            );
            return;
        };
        let Some(&(_, conn)) = online.iter().find(|(l, _)| *l == leaf) else {
            return;
        };
        // Bounded in bytes: the rest wait for the next epoch. A KeyPackage that expired while
        // it waited would sink the commit: it is not sent (its knocker is told, and closed).
        let expired: Vec<(ConnId, KnockId)> = room
            .knocks
            .iter()
            .filter(|k| k.expires <= now)
            .map(|k| (k.conn, k.id))
            .collect();
        room.knocks.retain(|k| k.expires > now);
        let mut budget = self.config.max_request_bytes;
        let knocks: Vec<KnockInfo> = room
            .knocks
            .iter()
            .filter(|k| !only_returning || k.returning_host)
            .take_while(|k| {
                let len = k.info.key_package.0.len();
                let fits = len <= budget;
                budget = budget.saturating_sub(len);
                fits
            })
            .map(|k| k.info.clone())
            .collect();
        room.request = Some(Request {
            conn,
            epoch,
            deadline: now.saturating_add(self.config.commit_timeout),
        });
        self.send(conn, ServerMsg::CommitRequest { epoch, knocks });
        for (c, knock) in expired {
            self.send_to_hosts(room_name, &ServerMsg::KnockGone { knock });
            self.refuse(
                c,
                ErrorCode::Rejected,
                "the KeyPackage expired; knock again",
            );
            self.out.push_back(Output::Close {
                conn: c,
                reason: "KeyPackage expired".into(),
            });
        }
    }

    /// Time passed: batching windows close, slow committers are passed over, members gone
    /// too long are proposed for removal.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let names: Vec<String> = self.rooms.keys().cloned().collect();
        for name in names {
            // A creator that never uploads the group is let go; the next is asked.
            let late = self.rooms.get(&name).and_then(|room| {
                let since = room.creating_since?;
                if room.group.is_some() || now < since.saturating_add(self.config.create_timeout) {
                    return None;
                }
                room.conns.iter().copied().find(|c| {
                    self.conns
                        .get(c)
                        .is_some_and(|c| c.state == ConnState::Creating)
                })
            });
            if let Some(conn) = late {
                warn!(room = %name, conn, "the creator did not create the group in time");
                self.refuse(
                    conn,
                    ErrorCode::Unexpected,
                    "the group was not created in time",
                );
                self.out.push_back(Output::Close {
                    conn,
                    reason: "did not create the group in time".into(),
                });
                self.disconnect(conn, now);
            }
            // Commit requests not answered in time.
            if let Some(room) = self.rooms.get_mut(&name) {
                if let Some(req) = &room.request {
                    let stale = room.epoch() != Some(req.epoch);
                    if now >= req.deadline || stale {
                        if !stale {
                            room.skipped.push(req.conn);
                        }
                        room.request = None;
                        room.work_since.get_or_insert(now);
                    }
                }
            }
            self.propose_removals(&name, now);
            self.retire_dead_group(&name, now);
            self.schedule(&name, now);
        }
    }

    fn propose_removals(&mut self, room_name: &str, now: Timestamp) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        let Some(group) = room.group.as_mut() else {
            return;
        };
        let due: Vec<u32> = room
            .offline
            .iter()
            .filter(|(l, since)| {
                now >= since.saturating_add(self.config.remove_after)
                    && !room.proposed_removals.contains(l)
            })
            .map(|(l, _)| *l)
            .collect();
        let mut proposals = Vec::new();
        for leaf in due {
            match group
                .propose_remove(leaf, vec![])
                .and_then(|m| m.to_bytes())
            {
                Ok(bytes) => {
                    room.proposed_removals.push(leaf);
                    room.pending_proposals += 1;
                    proposals.push(bytes);
                    info!(
                        room = room_name,
                        leaf, "server proposes removal of a vanished member"
                    );
                }
                Err(e) => {
                    warn!(room = room_name, leaf, error = %e, "could not propose removal");
                    room.offline.remove(&leaf);
                }
            }
        }
        if proposals.is_empty() {
            return;
        }
        self.stats.removals_proposed += proposals.len() as u64;
        room.work_since.get_or_insert(now);
        for p in proposals {
            self.send_to_members(room_name, None, &ServerMsg::Proposal { proposal: Bytes(p) });
        }
    }

    /// When [`Ds::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut at = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        for room in self.rooms.values() {
            if let (Some(since), None) = (room.creating_since, &room.group) {
                at(since.saturating_add(self.config.create_timeout));
            }
            if let Some(r) = &room.request {
                at(r.deadline);
            } else if let Some(s) = room.work_since {
                at(s.saturating_add(self.config.window_for(room.conns.len())));
            }
            for (l, since) in &room.offline {
                if !room.proposed_removals.contains(l) {
                    at(since.saturating_add(self.config.remove_after));
                }
            }
        }
        next
    }
}

/// The leaf a proposal says is leaving by its own wish: a member's Remove of its own leaf, or
/// a member's SelfRemove.
fn leaving_member(proposal: &Proposal, sender: &mls_rs::group::ProposalSender) -> Option<u32> {
    let mls_rs::group::ProposalSender::Member(l) = *sender else {
        return None;
    };
    match proposal {
        Proposal::Remove(r) if r.to_remove() == l => Some(l),
        Proposal::SelfRemove(_) => Some(l),
        _ => None,
    }
}

fn kind(msg: &ClientMsg) -> &'static str {
    match msg {
        ClientMsg::Hello { .. } => "hello",
        ClientMsg::CreateGroup { .. } => "create_group",
        ClientMsg::KeyPackage { .. } => "key_package",
        ClientMsg::Commit { .. } => "commit",
        ClientMsg::Proposal { .. } => "proposal",
        ClientMsg::Application { .. } => "application",
        ClientMsg::Deny { .. } => "deny",
        ClientMsg::MediaOffer { .. } => "media_offer",
        ClientMsg::VideoTiles { .. } => "video_tiles",
        _ => "message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_rooms_batch_longer_up_to_a_bound() {
        let c = DsConfig::default();
        assert_eq!(c.window_for(2), Duration::from_millis(50));
        assert_eq!(c.window_for(50), Duration::from_millis(50));
        assert_eq!(c.window_for(300), Duration::from_millis(300));
        assert_eq!(c.window_for(1000), Duration::from_secs(1));
        assert_eq!(c.window_for(100_000), Duration::from_secs(1));
    }
}

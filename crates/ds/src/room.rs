//! A room: its group's public state, the policy it was created with (parsed once: the
//! members' rules refuse any change of the group context, so a group's policy never changes)
//! and its hosts, its connections and knocks, and the work waiting for a commit. The room makes
//! its own decisions (`intake.rs`, `commit.rs`, `schedule.rs`, `lifecycle.rs`); the [`Ds`]
//! only finds the room a message is for.
//!
//! [`Ds`]: crate::Ds

use std::collections::{HashMap, VecDeque};

use conclave_mls::{Admission, RoomPolicy, Timestamp};
use conclave_proto::{ErrorCode, KnockId, KnockInfo, ServerMsg};
use mls_rs::external_client::{ExternalClient, ExternalGroup};
use mls_rs::identity::SigningIdentity;
use tracing::debug;

use crate::identity::ExtConfig;
use crate::{ConnId, DsConfig, DsStats, Output};

/// Most knocks a room keeps while its group does not exist yet.
pub const MAX_EARLY_KNOCKS: usize = 256;

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) room: String,
    pub(crate) user_id: String,
    pub(crate) state: ConnState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Asked to create the room's group.
    Creating,
    /// Joined signaling, has not knocked yet.
    Waiting,
    /// Knocked; waiting to be added.
    Knocking(KnockId),
    /// A member at this leaf.
    Member(u32),
}

/// Every connection, by id.
#[derive(Debug, Default)]
pub(crate) struct Conns(pub(crate) HashMap<ConnId, Conn>);

impl Conns {
    pub(crate) fn state(&self, conn: ConnId) -> Option<ConnState> {
        self.0.get(&conn).map(|c| c.state)
    }

    /// The leaf of a connection that is a member.
    pub(crate) fn leaf(&self, conn: ConnId) -> Option<u32> {
        match self.state(conn) {
            Some(ConnState::Member(l)) => Some(l),
            _ => None,
        }
    }

    /// Moves a connection to `state`, telling the runtime when its membership changes.
    pub(crate) fn set_state(&mut self, conn: ConnId, state: ConnState, sink: &mut Sink) {
        let Some(c) = self.0.get_mut(&conn) else {
            return;
        };
        let was = matches!(c.state, ConnState::Member(_));
        let is = matches!(state, ConnState::Member(_));
        c.state = state;
        if was != is {
            sink.out.push_back(Output::Membership { conn, member: is });
        }
    }
}

/// What the runtime is to do, and the counters.
#[derive(Debug, Default)]
pub(crate) struct Sink {
    pub(crate) out: VecDeque<Output>,
    pub(crate) stats: DsStats,
}

impl Sink {
    pub(crate) fn send(&mut self, conn: ConnId, msg: ServerMsg) {
        self.out.push_back(Output::Send { conn, msg });
    }

    pub(crate) fn close(&mut self, conn: ConnId, reason: impl Into<String>) {
        self.out.push_back(Output::Close {
            conn,
            reason: reason.into(),
        });
    }

    pub(crate) fn refuse(&mut self, conn: ConnId, code: ErrorCode, reason: impl Into<String>) {
        let reason = reason.into();
        debug!(%conn, ?code, %reason, "refused");
        self.stats.refused += 1;
        self.send(conn, ServerMsg::Error { code, reason });
    }
}

/// What a room's decisions read and write besides the room.
pub(crate) struct Ctx<'a> {
    pub(crate) config: &'a DsConfig,
    pub(crate) client: &'a ExternalClient<ExtConfig>,
    pub(crate) server_identity: &'a SigningIdentity,
    pub(crate) conns: &'a mut Conns,
    pub(crate) sink: &'a mut Sink,
}

#[derive(Debug)]
pub(crate) struct Knock {
    pub(crate) id: KnockId,
    pub(crate) conn: ConnId,
    pub(crate) info: KnockInfo,
    pub(crate) signature_key: Vec<u8>,
    /// The KeyPackage as validated (its encoding): a commit may add exactly this.
    pub(crate) key_package: Vec<u8>,
    /// When the KeyPackage's lifetime ends.
    pub(crate) expires: Timestamp,
    /// A lobby host's device that names an epoch of the room's group to return to: with no
    /// host online, any member may add it back (see `conclave_mls::HostReturn`).
    pub(crate) returning_host: bool,
}

pub(crate) struct Request {
    pub(crate) conn: ConnId,
    pub(crate) epoch: u64,
    pub(crate) deadline: Timestamp,
}

#[derive(Default)]
pub(crate) struct Room {
    pub(crate) name: String,
    pub(crate) group: Option<ExternalGroup<ExtConfig>>,
    /// The policy the room's first group had (its charter, as far as the DS can know it), and
    /// so the policy of its group now: a group that replaces a retired one must have the same,
    /// so the room keeps its policy and hosts whoever starts it again.
    pub(crate) charter: Option<RoomPolicy>,
    /// Leaves of the group's members that are hosts (kept with the group).
    pub(crate) hosts: Vec<u32>,
    /// The group's epoch of its last add (or of its creation): a returning lobby host's
    /// proof must name an epoch since, which every member keeps.
    pub(crate) last_add_epoch: u64,
    pub(crate) conns: Vec<ConnId>,
    pub(crate) knocks: Vec<Knock>,
    pub(crate) next_knock: KnockId,
    /// Members whose connection went away, by leaf, and since when.
    pub(crate) offline: HashMap<u32, Timestamp>,
    /// Leaves the server proposed to remove in this epoch.
    pub(crate) proposed_removals: Vec<u32>,
    /// Proposals (ours or members') waiting for a commit.
    pub(crate) pending_proposals: usize,
    /// When work appeared that a commit should pick up.
    pub(crate) work_since: Option<Timestamp>,
    pub(crate) request: Option<Request>,
    /// Members that did not answer a commit request in time this epoch.
    pub(crate) skipped: Vec<ConnId>,
    /// KeyPackages that arrived before the room's group existed: one per connection, at most
    /// [`MAX_EARLY_KNOCKS`], each dropped with its connection.
    pub(crate) early: Vec<(ConnId, Vec<u8>)>,
    /// Since when the current creator has been asked to create the group.
    pub(crate) creating_since: Option<Timestamp>,
    /// Connections that declined to create the group (their charter names other hosts): not
    /// asked again until a group exists.
    pub(crate) declined: Vec<ConnId>,
}

impl Room {
    pub(crate) fn new(name: &str) -> Self {
        Room {
            name: name.to_owned(),
            ..Room::default()
        }
    }

    pub(crate) fn epoch(&self) -> Option<u64> {
        self.group.as_ref().map(|g| g.group_context().epoch)
    }

    pub(crate) fn member_count(&self) -> usize {
        self.group
            .as_ref()
            .map_or(0, |g| g.roster().members_iter().count())
    }

    /// The room's policy while it has a group.
    pub(crate) fn policy(&self) -> Option<&RoomPolicy> {
        self.group.as_ref().and(self.charter.as_ref())
    }

    /// The policy, if the room's group is a lobby.
    pub(crate) fn lobby(&self) -> Option<&RoomPolicy> {
        self.policy()
            .filter(|p| matches!(p.admission, Admission::Lobby(_)))
    }

    /// Whether the member at `leaf` is a host.
    pub(crate) fn is_host_leaf(&self, leaf: u32) -> bool {
        self.hosts.contains(&leaf)
    }

    /// Re-reads which leaves are hosts (after the group changed).
    pub(crate) fn refresh_hosts(&mut self) {
        self.hosts = match (&self.group, &self.charter) {
            (Some(g), Some(p)) => g
                .roster()
                .members_iter()
                .filter(|m| p.is_host(&m.signing_identity.signature_key))
                .map(|m| m.index)
                .collect(),
            _ => Vec::new(),
        };
    }

    /// The room's connections that are members now, but `except`.
    pub(crate) fn member_conns(&self, conns: &Conns, except: Option<ConnId>) -> Vec<ConnId> {
        self.conns
            .iter()
            .copied()
            .filter(|c| Some(*c) != except && conns.leaf(*c).is_some())
            .collect()
    }

    /// Whether any of the room's connections is a member.
    pub(crate) fn has_member_online(&self, conns: &Conns) -> bool {
        self.conns.iter().any(|c| conns.leaf(*c).is_some())
    }

    /// Whether one of the room's connections is asked to create its group.
    pub(crate) fn has_creator(&self, conns: &Conns) -> bool {
        self.conns
            .iter()
            .any(|c| conns.state(*c) == Some(ConnState::Creating))
    }

    /// Sends `msg` to every member of the room connected now, except `except`.
    pub(crate) fn send_to_members(
        &self,
        cx: &mut Ctx<'_>,
        except: Option<ConnId>,
        msg: &ServerMsg,
    ) {
        for c in self.member_conns(cx.conns, except) {
            cx.sink.send(c, msg.clone());
        }
    }

    /// Sends a knock to the members who decide on it: the hosts of a lobby room. In open and
    /// invite-list rooms nobody decides (the committer gets the knocks with its commit
    /// request), so nobody gets it: broadcasting every knock to every member cost a room of
    /// 1,000 half a million messages and each member a copy of every KeyPackage.
    pub(crate) fn send_to_hosts(&self, cx: &mut Ctx<'_>, msg: &ServerMsg) {
        if self.lobby().is_none() {
            return;
        }
        for c in &self.conns {
            if cx.conns.leaf(*c).is_some_and(|l| self.is_host_leaf(l)) {
                cx.sink.send(*c, msg.clone());
            }
        }
    }

    /// Members plus knocks: what counts against the room's size limit.
    pub(crate) fn size(&self) -> usize {
        self.member_count() + self.knocks.len()
    }
}

/// The group's ratchet tree, encoded.
pub(crate) fn tree_of(group: &ExternalGroup<ExtConfig>) -> Vec<u8> {
    group.export_tree().unwrap_or_default()
}

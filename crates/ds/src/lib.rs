//! # Conclave delivery service core
//!
//! Orders and fans out the MLS handshake of every room, and nothing more: it follows each
//! group's **public** state through mls-rs's `ExternalClient` (commits and proposals are MLS
//! public messages), so it can check and order commits, serve the ratchet tree to joiners and
//! propose removals as the group's external sender, but it never holds a member's private
//! state, an exporter secret or a media key. It enforces the room's admission policy with the
//! same [`ConclaveRules`](conclave_mls::ConclaveRules) as the members, so a member's commit that honest members would refuse
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
//! and tree ([`MembershipMsg::CreateGroup`]); later connections knock with a KeyPackage; after a
//! short batching window the designated committer (most blank nodes on its path, hosts only
//! for adds in lobby rooms) gets a [`ServerMsg::CommitRequest`]; the first valid commit of the
//! epoch wins and is fanned out, its Welcome and the tree go to the joiners, and any other
//! commit for that epoch is refused (its author receives the winner like everyone else and
//! rebuilds). A member whose connection stays gone past a timeout is proposed for removal.
//!
//! The code is centred on the room: [`Ds`] finds the room a connection belongs to and hands it
//! the message; the room decides (`lifecycle.rs`: who creates its group, and its retirement;
//! `intake.rs`: knocks and denials; `commit.rs`: commits and proposals; `schedule.rs`: who
//! commits when, and removals), with its policy parsed once and its hosts kept with its group.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod commit;
mod config;
mod identity;
mod intake;
mod lifecycle;
mod room;
mod schedule;

use std::collections::HashMap;

use conclave_mls::Timestamp;
use conclave_proto::{ErrorCode, MembershipMsg, ServerMsg};
use mls_rs::external_client::ExternalClient;
use mls_rs::identity::SigningIdentity;
use mls_rs_core::crypto::SignatureSecretKey;
use tracing::{info, warn};

pub use config::{DsConfig, DsStats, Output};
pub use identity::{generate_server_identity, server_signing_identity};
pub use room::MAX_EARLY_KNOCKS;

use identity::ExtConfig;
use room::{Conn, ConnState, Conns, Ctx, Room, Sink};

/// A connection, as the runtime numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl core::fmt::Display for ConnId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// Errors of this crate (setup only: everything a peer sends is answered, never raised).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server's signing key could not be made or used.
    #[error("server key: {0}")]
    ServerKey(String),
}

/// The delivery service.
pub struct Ds {
    config: DsConfig,
    client: ExternalClient<ExtConfig>,
    server_identity: SigningIdentity,
    rooms: HashMap<String, Room>,
    conns: Conns,
    sink: Sink,
}

impl core::fmt::Debug for Ds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ds")
            .field("rooms", &self.rooms.len())
            .field("conns", &self.conns.0.len())
            .field("stats", &self.sink.stats)
            .finish_non_exhaustive()
    }
}

/// Splits the DS into the room `name` (if it exists) and the rest, for the room to decide with.
macro_rules! room_and_ctx {
    ($ds:expr, $name:expr) => {{
        let Ds {
            config,
            client,
            server_identity,
            rooms,
            conns,
            sink,
        } = $ds;
        (
            rooms.get_mut($name),
            Ctx {
                config,
                client,
                server_identity,
                conns,
                sink,
            },
        )
    }};
}

impl Ds {
    /// A delivery service signing its removal proposals with `secret` / `identity`.
    pub fn new(config: DsConfig, secret: SignatureSecretKey, identity: SigningIdentity) -> Self {
        Ds {
            config,
            client: identity::external_client(secret, identity.clone()),
            server_identity: identity,
            rooms: HashMap::new(),
            conns: Conns::default(),
            sink: Sink::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> DsStats {
        self.sink.stats
    }

    /// Rooms with a group or a connection.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Connections known.
    pub fn conn_count(&self) -> usize {
        self.conns.0.len()
    }

    /// The epoch of a room's group, if it has one.
    pub fn epoch(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(Room::epoch)
    }

    /// Members of a room's group.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Room::member_count)
    }

    /// Next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.sink.out.pop_front()
    }

    /// A connection whose token the runtime verified: `user_id` in `room`.
    pub fn connect(&mut self, conn: ConnId, room: &str, user_id: &str, now: Timestamp) {
        self.rooms
            .entry(room.to_owned())
            .or_insert_with(|| Room::new(room));
        let (Some(r), mut cx) = room_and_ctx!(self, room) else {
            return;
        };
        r.retire_dead_group(&mut cx, now);
        let max = cx.config.max_room_size;
        if r.size() >= max {
            cx.sink.refuse(
                conn,
                ErrorCode::RoomFull,
                format!("room {room} is full ({max})"),
            );
            cx.sink.close(conn, "room full");
            return;
        }
        let creating = r.group.is_none() && !r.has_creator(cx.conns);
        r.conns.push(conn);
        if creating {
            r.creating_since = Some(now);
        }
        let state = if creating {
            ConnState::Creating
        } else {
            ConnState::Waiting
        };
        cx.conns.0.insert(
            conn,
            Conn {
                room: room.to_owned(),
                user_id: user_id.to_owned(),
                state,
            },
        );
        info!(%conn, room, user_id, creating, "connected");
        let msg = lifecycle::joined(&cx, room, user_id, creating);
        cx.sink.send(conn, msg);
    }

    /// A connection went away.
    pub fn disconnect(&mut self, conn: ConnId, now: Timestamp) {
        let Some(c) = self.conns.0.remove(&conn) else {
            return;
        };
        let (Some(room), mut cx) = room_and_ctx!(self, &c.room) else {
            return;
        };
        room.conns.retain(|x| *x != conn);
        // A knock dies with its connection, early or not.
        room.early.retain(|(x, _)| *x != conn);
        room.declined.retain(|x| *x != conn);
        info!(%conn, room = %c.room, state = ?c.state, "disconnected");
        match c.state {
            ConnState::Member(leaf) => {
                room.offline.insert(leaf, now);
                // Whatever closed it (the socket, or the DS cutting off a slow reader whose
                // socket may still be open), the SFU stops serving it now.
                cx.sink.out.push_back(Output::Membership {
                    conn,
                    member: false,
                });
            }
            ConnState::Knocking(id) => room.knocks.retain(|k| k.id != id),
            ConnState::Creating | ConnState::Waiting => {}
        }
        if let ConnState::Knocking(knock) = c.state {
            // A host's list of knocks loses the ones nobody waits on any more.
            room.send_to_hosts(&mut cx, &ServerMsg::KnockGone { knock });
        }
        if room.request.as_ref().is_some_and(|r| r.conn == conn) {
            room.request = None;
            room.work_since.get_or_insert(now);
        }
        room.retire_dead_group(&mut cx, now);
        // A room that never had a group is forgotten; one that had keeps its policy (a few
        // hundred bytes) so that whoever starts it again must keep it too.
        if room.conns.is_empty() && room.group.is_none() && room.charter.is_none() {
            self.rooms.remove(&c.room);
            return;
        }
        room.schedule(&mut cx, now);
        // A room whose creator left before creating the group: ask the next connection.
        room.promote_creator(&mut cx, now);
    }

    /// A message from a connection.
    pub fn handle(&mut self, conn: ConnId, msg: MembershipMsg, now: Timestamp) {
        let Some(c) = self.conns.0.get(&conn) else {
            return;
        };
        let name = c.room.clone();
        let state = c.state;
        let (Some(room), mut cx) = room_and_ctx!(self, &name) else {
            return;
        };
        let cx = &mut cx;
        match (msg, state) {
            (
                MembershipMsg::CreateGroup {
                    group_info,
                    ratchet_tree,
                },
                ConnState::Creating,
            ) => room.create_group(cx, conn, &group_info.0, &ratchet_tree.0, now),
            (MembershipMsg::KeyPackage { key_package }, ConnState::Waiting) => {
                room.knock(cx, conn, key_package.0, now)
            }
            // Asked to create, it knocks instead: it declines (the meeting's charter lets only
            // its hosts start the group). The next connection is asked.
            (MembershipMsg::KeyPackage { key_package }, ConnState::Creating) => {
                room.decline(cx, conn, now);
                room.knock(cx, conn, key_package.0, now)
            }
            (
                MembershipMsg::Commit {
                    epoch,
                    commit,
                    welcome,
                },
                ConnState::Member(leaf),
            ) => room.commit(cx, conn, leaf, epoch, &commit.0, welcome.map(|w| w.0), now),
            (MembershipMsg::Proposal { proposal }, ConnState::Member(leaf)) => {
                room.proposal(cx, conn, leaf, &proposal.0, now)
            }
            (MembershipMsg::Application { message }, ConnState::Member(_)) => {
                room.application(cx, conn, message)
            }
            (MembershipMsg::Deny { knock }, ConnState::Member(leaf)) => {
                room.deny(cx, conn, leaf, knock, now)
            }
            (other, state) => cx.sink.refuse(
                conn,
                ErrorCode::Unexpected,
                format!("{} is not expected while {state:?}", other.kind()),
            ),
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
                room.conns
                    .iter()
                    .copied()
                    .find(|c| self.conns.state(*c) == Some(ConnState::Creating))
            });
            if let Some(conn) = late {
                warn!(room = %name, %conn, "the creator did not create the group in time");
                self.sink.refuse(
                    conn,
                    ErrorCode::Unexpected,
                    "the group was not created in time",
                );
                self.sink.close(conn, "did not create the group in time");
                self.disconnect(conn, now);
            }
            let (Some(room), mut cx) = room_and_ctx!(self, &name) else {
                continue;
            };
            room.expire_request(now);
            room.propose_removals(&mut cx, now);
            room.retire_dead_group(&mut cx, now);
            room.schedule(&mut cx, now);
        }
    }

    /// When [`Ds::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.rooms
            .values()
            .filter_map(|r| r.poll_timeout(&self.config))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

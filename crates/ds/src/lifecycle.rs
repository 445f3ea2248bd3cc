//! A room's group from birth to retirement: who is asked to create it, the group it gets (only
//! one, with the room's policy), and its end when no member is left to commit.

use conclave_mls::{policy_of, Timestamp};
use conclave_proto::{Bytes, ErrorCode, ServerMsg, PROTOCOL_VERSION};
use mls_rs::extension::built_in::ExternalSendersExt;
use mls_rs::group::ExportedTree;
use mls_rs::MlsMessage;
use mls_rs_codec::MlsEncode;
use tracing::info;

use crate::room::{ConnState, Ctx, Room, MAX_EARLY_KNOCKS};
use crate::ConnId;

/// The first message to a connection: who it is, the server's identity, and whether it is to
/// create the room's group.
pub(crate) fn joined(cx: &Ctx<'_>, room: &str, user_id: &str, create_group: bool) -> ServerMsg {
    let server_identity = MlsEncode::mls_encode_to_vec(cx.server_identity).unwrap_or_default();
    ServerMsg::Joined {
        version: PROTOCOL_VERSION,
        room: room.to_owned(),
        user_id: user_id.to_owned(),
        server_identity: Bytes(server_identity),
        create_group,
    }
}

impl Room {
    /// A room whose group has no member online can never commit again: nobody could admit
    /// the next person (the last member left, or every member's connection is gone for good).
    /// Its group is retired, and the next rightful person starts a new one under the same
    /// policy (`create_group` refuses another; a participant whose charter names other hosts
    /// declines); knocks waiting on the old group are kept for the new one. (This gives the
    /// server nothing it lacked: it can always tell a connection to create a group, and
    /// joiners that hold the meeting's charter refuse any group but the charter's.)
    pub(crate) fn retire_dead_group(&mut self, cx: &mut Ctx<'_>, now: Timestamp) {
        // Every member is gone for good: left cleanly, or offline past `remove_after` (a
        // member whose connection blinked may still come back, and the room must not change
        // hands to whoever connects first in that moment).
        let remove_after = cx.config.remove_after;
        let gone_for_good = self.group.as_ref().is_some_and(|g| {
            g.roster().members_iter().all(|m| {
                self.proposed_removals.contains(&m.index)
                    || self
                        .offline
                        .get(&m.index)
                        .is_some_and(|t| now >= t.saturating_add(remove_after))
            })
        });
        if !gone_for_good || self.has_member_online(cx.conns) {
            return;
        }
        info!(
            room = %self.name,
            "no member of the room's group is online: the group is retired"
        );
        let mut knocks = std::mem::take(&mut self.knocks);
        // As many as a room keeps before its group exists; the others knock again.
        let excess: Vec<ConnId> = knocks
            .split_off(knocks.len().min(MAX_EARLY_KNOCKS))
            .into_iter()
            .map(|k| k.conn)
            .collect();
        *self = Room {
            name: std::mem::take(&mut self.name),
            conns: std::mem::take(&mut self.conns),
            next_knock: self.next_knock,
            charter: self.charter.take(),
            early: knocks
                .into_iter()
                .map(|k| (k.conn, k.info.key_package.0))
                .collect(),
            ..Room::default()
        };
        for c in excess {
            cx.sink.close(c, "the room starts anew: knock again");
        }
        for c in &self.conns {
            if let Some(conn) = cx.conns.0.get_mut(c) {
                conn.state = ConnState::Waiting;
            }
        }
        self.promote_creator(cx, now);
    }

    /// A room without a group and without a connection asked to create it: asks the first
    /// connection that did not decline.
    pub(crate) fn promote_creator(&mut self, cx: &mut Ctx<'_>, now: Timestamp) {
        if self.group.is_some() || self.has_creator(cx.conns) {
            return;
        }
        let Some(&next) = self.conns.iter().find(|c| !self.declined.contains(c)) else {
            return;
        };
        self.creating_since = Some(now);
        // Its own knock, if it sent one while waiting, is void: it creates instead.
        self.early.retain(|(c, _)| *c != next);
        let Some(c) = cx.conns.0.get_mut(&next) else {
            return;
        };
        c.state = ConnState::Creating;
        let user_id = c.user_id.clone();
        let msg = joined(cx, &self.name, &user_id, true);
        cx.sink.send(next, msg);
    }

    /// `conn` will not create the room's group: it waits, and someone else is asked.
    pub(crate) fn decline(&mut self, cx: &mut Ctx<'_>, conn: ConnId, now: Timestamp) {
        cx.conns.set_state(conn, ConnState::Waiting, cx.sink);
        self.declined.push(conn);
        self.creating_since = None;
        self.promote_creator(cx, now);
    }

    /// The connection asked to create the group uploads it: it must name this room, name the
    /// server as its only external sender, have exactly its creator, and (if the room had a
    /// group before) the room's policy.
    pub(crate) fn create_group(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        group_info: &[u8],
        tree: &[u8],
        now: Timestamp,
    ) {
        let observed = MlsMessage::from_bytes(group_info)
            .map_err(|e| e.to_string())
            .and_then(|gi| {
                let tree = ExportedTree::from_bytes(tree).map_err(|e| e.to_string())?;
                cx.client
                    .observe_group(gi, Some(tree), Some(now.into()))
                    .map_err(|e| e.to_string())
            });
        let group = match observed {
            Ok(g) => g,
            Err(e) => {
                return cx
                    .sink
                    .refuse(conn, ErrorCode::Rejected, format!("group info: {e}"))
            }
        };
        let ctx = group.group_context();
        let policy = match policy_of(&ctx.extensions) {
            Ok(p) => p,
            Err(e) => return cx.sink.refuse(conn, ErrorCode::Rejected, e.to_string()),
        };
        if policy.room_id != self.name.as_bytes() {
            return cx.sink.refuse(
                conn,
                ErrorCode::Rejected,
                "the group's policy names another room",
            );
        }
        let senders = ctx.extensions.get_as::<ExternalSendersExt>().ok().flatten();
        if senders.is_none_or(|s| s.allowed_senders != [cx.server_identity.clone()]) {
            return cx.sink.refuse(
                conn,
                ErrorCode::Rejected,
                "the server must be the group's only external sender",
            );
        }
        if let Some(charter) = self.charter.as_ref() {
            if *charter != policy {
                let reason = format!(
                    "this room's group was a {} room with its own hosts; a new group must have \
                     the same policy (only its hosts can start it again)",
                    charter.kind()
                );
                cx.sink.refuse(conn, ErrorCode::Rejected, reason);
                return self.decline(cx, conn, now);
            }
        }
        let members: Vec<_> = group.roster().members_iter().collect();
        if members.len() != 1 || ctx.epoch != 0 {
            return cx.sink.refuse(
                conn,
                ErrorCode::Rejected,
                "a new room's group has exactly its creator",
            );
        }
        let leaf = members[0].index;
        cx.conns.set_state(conn, ConnState::Member(leaf), cx.sink);
        info!(room = %self.name, policy = policy.kind(), "group created");
        self.last_add_epoch = group.group_context().epoch;
        self.group = Some(group);
        self.creating_since = None;
        self.charter = Some(policy);
        self.refresh_hosts();
        self.declined.clear();
        // Knocks that came before the group existed are taken now.
        let early = std::mem::take(&mut self.early);
        for (c, kp) in early {
            if cx.conns.0.contains_key(&c) {
                self.knock(cx, c, kp, now);
            }
        }
        self.schedule(cx, now);
    }
}

//! Who commits, and when: after a batching window, the designated committer among the online
//! members [`committer::eligible`] for the work gets a commit request with the knocks (bounded
//! in bytes); one that does not answer in time is passed over. Members gone too long are
//! proposed for removal, signed by the server as the group's external sender.

use conclave_mls::{committer, Timestamp};
use conclave_proto::{Bytes, ErrorCode, KnockId, KnockInfo, ServerMsg};
use tracing::{debug, info, warn};

use crate::room::{Ctx, Request, Room};
use crate::ConnId;

impl Room {
    /// The online members that may be asked to commit `work` (leaf, connection).
    fn committers(&self, cx: &Ctx<'_>, work: committer::Work) -> Vec<(u32, ConnId)> {
        let (Some(group), Some(policy)) = (self.group.as_ref(), self.policy()) else {
            return Vec::new();
        };
        let mut online = Vec::new();
        for &c in &self.conns {
            if self.skipped.contains(&c) {
                continue;
            }
            let Some(l) = cx.conns.leaf(c) else {
                continue;
            };
            // A member on its way out (its removal is proposed) does not commit.
            if self.proposed_removals.contains(&l) {
                continue;
            }
            let eligible = !committer::hosts_only(policy, work)
                || group
                    .roster()
                    .members_iter()
                    .find(|m| m.index == l)
                    .is_some_and(|m| {
                        committer::eligible(policy, &m.signing_identity.signature_key, work)
                    });
            if eligible {
                online.push((l, c));
            }
        }
        online
    }

    /// Asks the designated committer to commit when there is work and nobody is on it.
    pub(crate) fn schedule(&mut self, cx: &mut Ctx<'_>, now: Timestamp) {
        let Some(group) = self.group.as_ref() else {
            return;
        };
        if self.request.is_some() {
            return;
        }
        let Some(since) = self.work_since else { return };
        if now < since.saturating_add(cx.config.window_for(self.conns.len())) {
            return;
        }
        let epoch = group.group_context().epoch;
        let work = committer::Work {
            adds: !self.knocks.is_empty(),
            proposals: self.pending_proposals > 0,
        };
        let mut online = self.committers(cx, work);
        // No host online, but a host's device is back: any member may add it (with the proof
        // only a member of this group has), and only it.
        let mut only_returning = false;
        if self.lobby().is_some()
            && self
                .policy()
                .is_some_and(|p| committer::hosts_only(p, work))
            && online.is_empty()
            && self.knocks.iter().any(|k| k.returning_host)
        {
            online = self.committers(cx, committer::Work::default());
            only_returning = true;
        }
        let tree = group.exported_tree();
        let Some(leaf) = committer::designated(&tree, online.iter().map(|(l, _)| *l)) else {
            if !self.skipped.is_empty() {
                // Everyone who could commit let a request time out (slow, not gone): ask them
                // all again rather than leave the room stuck.
                self.skipped.clear();
                self.work_since = Some(now);
                debug!(room = %self.name, "every committer was slow; asking again");
                return self.schedule(cx, now);
            }
            debug!(room = %self.name, "work waiting, but no member can commit it");
            return;
        };
        let Some(&(_, conn)) = online.iter().find(|(l, _)| *l == leaf) else {
            return;
        };
        // Bounded in bytes: the rest wait for the next epoch. A KeyPackage that expired while
        // it waited would sink the commit: it is not sent (its knocker is told, and closed).
        let expired: Vec<(ConnId, KnockId)> = self
            .knocks
            .iter()
            .filter(|k| k.expires <= now)
            .map(|k| (k.conn, k.id))
            .collect();
        self.knocks.retain(|k| k.expires > now);
        let mut budget = cx.config.max_request_bytes;
        let knocks: Vec<KnockInfo> = self
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
        self.request = Some(Request {
            conn,
            epoch,
            deadline: now.saturating_add(cx.config.commit_timeout),
        });
        cx.sink
            .send(conn, ServerMsg::CommitRequest { epoch, knocks });
        for (c, knock) in expired {
            self.send_to_hosts(cx, &ServerMsg::KnockGone { knock });
            cx.sink.refuse(
                c,
                ErrorCode::Rejected,
                "the KeyPackage expired; knock again",
            );
            cx.sink.close(c, "KeyPackage expired");
        }
    }

    /// Members whose connection has been gone for `remove_after` are proposed for removal.
    pub(crate) fn propose_removals(&mut self, cx: &mut Ctx<'_>, now: Timestamp) {
        let Some(group) = self.group.as_mut() else {
            return;
        };
        let remove_after = cx.config.remove_after;
        let due: Vec<u32> = self
            .offline
            .iter()
            .filter(|(l, since)| {
                now >= since.saturating_add(remove_after) && !self.proposed_removals.contains(l)
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
                    self.proposed_removals.push(leaf);
                    self.pending_proposals += 1;
                    proposals.push(bytes);
                    info!(
                        room = %self.name,
                        leaf, "server proposes removal of a vanished member"
                    );
                }
                Err(e) => {
                    warn!(room = %self.name, leaf, error = %e, "could not propose removal");
                    self.offline.remove(&leaf);
                }
            }
        }
        if proposals.is_empty() {
            return;
        }
        cx.sink.stats.removals_proposed += proposals.len() as u64;
        self.work_since.get_or_insert(now);
        for p in proposals {
            self.send_to_members(cx, None, &ServerMsg::Proposal { proposal: Bytes(p) });
        }
    }

    /// Time passed in this room: a commit request not answered in time (or made stale by a
    /// new epoch) is withdrawn, and its member passed over this epoch.
    pub(crate) fn expire_request(&mut self, now: Timestamp) {
        if let Some(req) = &self.request {
            let stale = self.epoch() != Some(req.epoch);
            if now >= req.deadline || stale {
                if !stale {
                    self.skipped.push(req.conn);
                }
                self.request = None;
                self.work_since.get_or_insert(now);
            }
        }
    }

    /// When this room next has work for [`crate::Ds::handle_timeout`].
    pub(crate) fn poll_timeout(&self, config: &crate::DsConfig) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut at = |t: Timestamp| next = Some(next.map_or(t, |n| n.min(t)));
        if let (Some(since), None) = (self.creating_since, &self.group) {
            at(since.saturating_add(config.create_timeout));
        }
        if let Some(r) = &self.request {
            at(r.deadline);
        } else if let Some(s) = self.work_since {
            at(s.saturating_add(config.window_for(self.conns.len())));
        }
        for (l, since) in &self.offline {
            if !self.proposed_removals.contains(l) {
                at(since.saturating_add(config.remove_after));
            }
        }
        next
    }
}

//! Commits and proposals: the first valid commit of an epoch wins and is fanned out, with its
//! Welcome and the tree to the joiners; any other commit for that epoch is refused. A member
//! proposes one thing only: its own removal.

use std::collections::HashMap;

use conclave_mls::{HostReturn, Timestamp, HOST_RETURN_WINDOW};
use conclave_proto::{Bytes, ErrorCode, ServerMsg};
use mls_rs::external_client::ExternalReceivedMessage;
use mls_rs::group::proposal::Proposal;
use mls_rs::group::CommitEffect;
use mls_rs::mls_rules::ProposalInfo;
use mls_rs::MlsMessage;
use mls_rs_codec::MlsEncode;
use tracing::{debug, info};

use crate::room::{tree_of, ConnState, Ctx, Room};
use crate::ConnId;

/// What an accepted commit did, as the DS can see it.
struct Accepted {
    epoch: u64,
    /// Signature keys of the devices it added.
    added: Vec<Vec<u8>>,
    /// Leaves it removed.
    removed: Vec<u32>,
}

/// What a commit adds and removes, and the host-return proof it carries.
#[derive(Default)]
struct Changes {
    added_keys: Vec<Vec<u8>>,
    added_kps: Vec<Vec<u8>>,
    added_tickets: Vec<Option<HostReturn>>,
    psks: Vec<Option<HostReturn>>,
    removed: Vec<u32>,
}

impl Changes {
    fn of(proposals: &[ProposalInfo<Proposal>]) -> Self {
        let mut c = Changes::default();
        for p in proposals {
            match (&p.proposal, p.sender) {
                (Proposal::Add(a), _) => {
                    c.added_keys
                        .push(a.signing_identity().signature_key.as_bytes().to_vec());
                    c.added_kps
                        .push(a.key_package().mls_encode_to_vec().unwrap_or_default());
                    c.added_tickets.push(
                        a.key_package_extensions()
                            .get_as::<HostReturn>()
                            .ok()
                            .flatten(),
                    );
                }
                (Proposal::Psk(psk), _) => c.psks.push(
                    psk.external_psk_id()
                        .and_then(|id| HostReturn::from_psk_id(id)),
                ),
                (Proposal::Remove(r), _) => c.removed.push(r.to_remove()),
                (Proposal::SelfRemove(_), mls_rs::group::Sender::Member(l)) => c.removed.push(l),
                _ => {}
            }
        }
        c
    }
}

impl Room {
    /// A member's commit for `epoch`, from its own leaf.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn commit(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        leaf: u32,
        epoch: u64,
        commit: &[u8],
        welcome: Option<Vec<u8>>,
        now: Timestamp,
    ) {
        if self.group.is_none() {
            return;
        }
        let accepted = match self.verify_commit(leaf, epoch, commit, welcome.is_some(), now) {
            Ok(a) => a,
            Err(reason) => {
                cx.sink.stats.commits_rejected += 1;
                debug!(%conn, epoch, %reason, "commit rejected");
                return cx
                    .sink
                    .send(conn, ServerMsg::CommitRejected { epoch, reason });
            }
        };
        cx.sink.stats.commits_accepted += 1;
        info!(
            room = %self.name,
            epoch = accepted.epoch,
            committer = leaf,
            added = accepted.added.len(),
            removed = accepted.removed.len(),
            "commit accepted"
        );
        self.apply_commit(cx, conn, leaf, &accepted, commit, welcome, now);
    }

    /// Processes a commit on the group's public state, and keeps it only if it is acceptable:
    /// a public message of the sender's own leaf, for the current epoch, valid under the
    /// members' rules, adding only knocks this DS validated (with a Welcome for them), and
    /// carrying a host-return proof only of an epoch every member keeps.
    fn verify_commit(
        &mut self,
        leaf: u32,
        epoch: u64,
        commit: &[u8],
        has_welcome: bool,
        now: Timestamp,
    ) -> Result<Accepted, String> {
        let Some(group) = self.group.as_mut() else {
            return Err("the room has no group".into());
        };
        let current = group.group_context().epoch;
        if epoch != current {
            return Err(format!("epoch {epoch} is over; the group is at {current}"));
        }
        let msg = MlsMessage::from_bytes(commit).map_err(|e| format!("undecodable commit: {e}"))?;
        // A connection commits as its own leaf only: a member's connection cannot carry
        // another member's commit (checked before the commit touches the group).
        match msg.description() {
            mls_rs::MlsMessageDescription::PublicProtocolMessage {
                sender: mls_rs::group::Sender::Member(l),
                ..
            } if l == leaf => {}
            _ => {
                return Err(
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
                return Err("not a commit".into());
            }
            Err(e) => {
                *group = before;
                return Err(format!("invalid commit: {e}"));
            }
        };
        let new_epoch = match &desc.effect {
            CommitEffect::NewEpoch(e) | CommitEffect::Removed { new_epoch: e, .. } => e.clone(),
            CommitEffect::ReInit(_) => {
                *group = before;
                return Err("re-init is not allowed".into());
            }
        };
        let c = Changes::of(&new_epoch.applied_proposals);
        // Every add is exactly the KeyPackage of a knock this DS validated, from a connection
        // whose token named that identity, and it comes with the Welcome its joiner needs: a
        // member cannot add a device nobody vouched for, nor one that would never get in.
        let unknocked = c
            .added_kps
            .iter()
            .any(|kp| !self.knocks.iter().any(|kn| kn.key_package == *kp));
        // A returning host's proof (the members' rules let only that PSK through): this DS
        // cannot check its value, so it checks that every member keeps it, lest an accepted
        // commit be one that honest members cannot process: an epoch since the last add, at
        // most `HOST_RETURN_WINDOW` back, named by the one host added.
        let base = new_epoch.epoch.saturating_sub(1);
        let bad_return = !c.psks.is_empty() && {
            let ok = match (c.psks.as_slice(), c.added_tickets.as_slice()) {
                ([Some(t)], [Some(named)]) => {
                    t == named
                        && t.epoch >= self.last_add_epoch
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
        } else if !c.added_keys.is_empty() && !has_welcome {
            Some("the commit adds members but carries no Welcome")
        } else {
            None
        };
        if let Some(why) = refusal {
            *group = before;
            return Err(why.into());
        }
        if !c.added_keys.is_empty() {
            self.last_add_epoch = new_epoch.epoch;
        }
        Ok(Accepted {
            epoch: new_epoch.epoch,
            added: c.added_keys,
            removed: c.removed,
        })
    }

    /// Fans an accepted commit out: the verdict to its author, the commit to every other
    /// member, the Welcome and tree to the joiners; removed members are let go.
    #[allow(clippy::too_many_arguments)]
    fn apply_commit(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        leaf: u32,
        accepted: &Accepted,
        commit: &[u8],
        welcome: Option<Vec<u8>>,
        now: Timestamp,
    ) {
        self.refresh_hosts();
        let Some(group) = self.group.as_ref() else {
            return;
        };
        // Map joiners to their knocks and their new leaves.
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
        let tree = if accepted.added.is_empty() {
            Vec::new()
        } else {
            tree_of(group)
        };
        let mut joined: Vec<(ConnId, u32)> = Vec::new();
        self.knocks.retain(|k| {
            if accepted.added.contains(&k.signature_key) {
                if let Some(&l) = after.get(&k.signature_key) {
                    joined.push((k.conn, l));
                }
                false
            } else {
                true
            }
        });
        for l in &accepted.removed {
            self.offline.remove(l);
        }
        self.proposed_removals.clear();
        self.pending_proposals = 0;
        self.request = None;
        self.skipped.clear();
        self.work_since = if self.knocks.is_empty() {
            None
        } else {
            Some(now)
        };
        cx.sink.send(
            conn,
            ServerMsg::CommitAccepted {
                epoch: accepted.epoch,
            },
        );
        for &other in &self.conns {
            if other == conn {
                continue;
            }
            if let Some(l) = cx.conns.leaf(other) {
                cx.sink.send(
                    other,
                    ServerMsg::Commit {
                        commit: Bytes(commit.to_vec()),
                    },
                );
                if accepted.removed.contains(&l) {
                    cx.conns.set_state(other, ConnState::Waiting, cx.sink);
                    cx.sink.close(other, "removed from the group");
                }
            }
        }
        if accepted.removed.contains(&leaf) {
            cx.conns.set_state(conn, ConnState::Waiting, cx.sink);
            cx.sink.close(conn, "removed from the group");
        }
        // (A commit with adds always has its Welcome: checked before.)
        if let Some(w) = &welcome {
            for (jc, l) in joined {
                cx.conns.set_state(jc, ConnState::Member(l), cx.sink);
                cx.sink.send(
                    jc,
                    ServerMsg::Welcome {
                        welcome: Bytes(w.clone()),
                        ratchet_tree: Bytes(tree.clone()),
                    },
                );
            }
        }
        self.schedule(cx, now);
    }

    /// A member's proposal. Conclave members propose one thing only: their own removal (a
    /// clean leave). Anything else (an Add by reference, a removal of someone else, an
    /// update) is refused and never cached: a cached proposal goes into every commit, so one
    /// that the DS would then refuse (an add of a device that never knocked) would freeze the
    /// room.
    pub(crate) fn proposal(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        leaf: u32,
        proposal: &[u8],
        now: Timestamp,
    ) {
        if self.proposed_removals.contains(&leaf) {
            return cx
                .sink
                .refuse(conn, ErrorCode::Unexpected, "already leaving");
        }
        let Some(group) = self.group.as_mut() else {
            return;
        };
        let before = group.clone();
        let msg = match MlsMessage::from_bytes(proposal) {
            Ok(m) => m,
            Err(e) => {
                return cx.sink.refuse(
                    conn,
                    ErrorCode::Malformed,
                    format!("undecodable proposal: {e}"),
                )
            }
        };
        let refusal = match group.process_incoming_message_with_time(msg, now.into()) {
            // A member leaving cleanly (the RFC 9420 way, a Remove of its own leaf, or the
            // SelfRemove of older Conclave clients): it is never asked to commit again, and
            // the server need not propose its removal too.
            Ok(ExternalReceivedMessage::Proposal(p)) => {
                match leaving_member(&p.proposal, &p.sender) {
                    Some(l) if l == leaf => None,
                    _ => Some("a member may only propose its own removal".to_owned()),
                }
            }
            Ok(_) => Some("not a proposal".to_owned()),
            Err(e) => Some(format!("invalid proposal: {e}")),
        };
        if let Some(reason) = refusal {
            *group = before;
            return cx.sink.refuse(conn, ErrorCode::Rejected, reason);
        }
        self.proposed_removals.push(leaf);
        self.pending_proposals += 1;
        self.work_since.get_or_insert(now);
        self.send_to_members(
            cx,
            Some(conn),
            &ServerMsg::Proposal {
                proposal: Bytes(proposal.to_vec()),
            },
        );
        self.schedule(cx, now);
    }

    /// A member's application message: relayed to the other members if it is an MLS message
    /// of this group (its content is encrypted; the DS reads only the group id).
    pub(crate) fn application(&self, cx: &mut Ctx<'_>, conn: ConnId, message: Bytes) {
        let Some(group) = self.group.as_ref() else {
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
            return cx.sink.refuse(
                conn,
                ErrorCode::Malformed,
                "not an MLS message of this group",
            );
        }
        self.send_to_members(cx, Some(conn), &ServerMsg::Application { message });
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

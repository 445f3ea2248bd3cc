//! What the participant does with each server message: create or knock, join from a Welcome
//! (checked against the charter and the group's own policy), follow commits and proposals,
//! leave; every epoch change installs the new media keys and releases the frames held for it.

use conclave_e2ee::{EpochChange, Incoming, RoomPolicy, Session, Timestamp};
use conclave_proto::{Bytes, MembershipMsg, ServerMsg};
use mls_rs::identity::SigningIdentity;
use mls_rs_codec::MlsDecode;
use tracing::{debug, info, warn};

use crate::trust::hosts_of;
use crate::{Error, Event, NewRoomPolicy, Participant};

impl Participant {
    /// Keeps a part of the ratchet tree of the Welcome to come (bounded).
    fn tree_part(&mut self, part: &[u8]) {
        if self.tree.add(part).is_err() {
            self.alarm(format!(
                "the server sent ratchet tree parts beyond {} bytes; dropped",
                conclave_proto::MAX_TREE_LEN
            ));
        }
    }

    /// Leaves cleanly: proposes our own removal, which the next committer commits.
    pub fn leave(&mut self) -> Result<(), Error> {
        if let Some(s) = self.session.as_mut() {
            let proposal = s.propose_leave()?;
            self.out.push_back(MembershipMsg::Proposal {
                proposal: Bytes(proposal),
            });
        }
        self.left = true;
        self.frames.clear();
        Ok(())
    }

    pub(crate) fn alarm(&mut self, reason: String) {
        warn!(%reason, "alarm");
        self.events.push_back(Event::Alarm { reason });
    }

    pub(crate) fn install_keys(&mut self, now: Timestamp) -> Result<(), Error> {
        if let Some(s) = self.session.as_ref() {
            // Frames that came ahead of this epoch open now.
            self.frames.install_epoch(s.epoch_secrets()?, now)?;
            self.arm_self_update(now);
        }
        Ok(())
    }

    pub(crate) fn epoch_changed(
        &mut self,
        change: EpochChange,
        now: Timestamp,
    ) -> Result<(), Error> {
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
            self.frames.clear();
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
                    self.out.push_back(MembershipMsg::CreateGroup {
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
                    self.out.push_back(MembershipMsg::KeyPackage {
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
            ServerMsg::TreePart { part } => self.tree_part(&part.0),
            ServerMsg::Welcome {
                welcome,
                ratchet_tree,
            } => {
                // A large tree came before its Welcome in parts.
                let ratchet_tree = self.tree.tree_for(ratchet_tree);
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
        self.out.push_back(MembershipMsg::Commit {
            epoch,
            commit: Bytes(bundle.commit),
            welcome: None,
        });
        Ok(())
    }
}

//! The [`Session`] a [`Device`](crate::Device) holds in one room's group.
//!
//! The delivery-service contract follows mls-rs's `basic_usage` example: a member builds a
//! commit ([`Session::commit`]), sends it to the DS, and applies it only when the DS confirms
//! that it won the epoch ([`Session::confirm_commit`]); if another commit won, processing that
//! one discards ours ([`Session::process`]) and the caller rebuilds on the new epoch.

use std::fmt;

use mls_rs::client_builder::{
    BaseConfig, WithCryptoProvider, WithGroupStateStorage, WithIdentityProvider, WithMlsRules,
    WithPskStore,
};
use mls_rs::error::MlsError;
use mls_rs::group::proposal::{AddProposal, Proposal};
use mls_rs::group::{CommitEffect, Member, NewEpoch, ReceivedMessage};
use mls_rs::{Group, MlsMessage};
use zeroize::Zeroizing;

use conclave_mls::{
    committer, digit_groups, suite_provider, ConclaveIdentityProvider, ConclaveRules,
    CredentialInfo, Fingerprint, KeyPackageCard, PolicyViolation, Provider, RoomCipherSuite,
    RoomPolicy,
};

use crate::error::{Error, Result};
use crate::host_return::ReturnKeys;
use crate::media::{sframe_suite, EpochSecrets, SFRAME_EXPORTER_LABEL};
use crate::storage::GroupStore;
use conclave_mls::Timestamp;

mod returning;

pub use crate::self_update::SelfUpdateTimer;
pub use crate::session_types::{CommitBundle, EpochChange, Incoming, RosterEntry, SecurityCode};
pub use returning::return_ticket_of;

/// Largest MLS message accepted from the network (a Welcome for 1,000 joiners is ~0.5 MB).
pub const MAX_MLS_MESSAGE_LEN: usize = 8 << 20;
/// Largest ratchet tree accepted out of band (about 191 KB at 1,000 members).
pub const MAX_TREE_LEN: usize = 32 << 20;

const SECURITY_CODE_LABEL: &[u8] = b"conclave security code v1";

pub(crate) type Config = WithMlsRules<
    ConclaveRules,
    WithIdentityProvider<
        ConclaveIdentityProvider,
        WithCryptoProvider<
            Provider,
            WithPskStore<ReturnKeys, WithGroupStateStorage<GroupStore, BaseConfig>>,
        >,
    >,
>;

pub(crate) fn to_bytes(msg: &MlsMessage) -> Result<Vec<u8>> {
    msg.to_bytes().map_err(Error::mls)
}

pub(crate) fn parse_message(bytes: &[u8]) -> Result<MlsMessage> {
    if bytes.len() > MAX_MLS_MESSAGE_LEN {
        return Err(Error::MalformedMessage(format!(
            "{} bytes exceeds the {MAX_MLS_MESSAGE_LEN}-byte limit",
            bytes.len()
        )));
    }
    MlsMessage::from_bytes(bytes).map_err(|e| Error::MalformedMessage(e.to_string()))
}

/// Turns an mls-rs error into ours, surfacing policy violations as such.
pub(crate) fn map_mls(e: MlsError) -> Error {
    if let MlsError::MlsRulesError(any) = &e {
        if let Some(v) = any.inner_dyn_error().downcast_ref::<PolicyViolation>() {
            return Error::Policy(v.clone());
        }
    }
    match e {
        MlsError::IdentityProviderError(any) => Error::Credential(any.to_string()),
        other => Error::mls(other),
    }
}

/// One device's membership in one room's MLS group.
pub struct Session {
    group: Group<Config>,
    suite: RoomCipherSuite,
    policy: RoomPolicy,
    /// Our commit waiting for the DS's verdict, as sent.
    pending_commit: Option<Vec<u8>>,
    /// The roster by leaf index, kept in step with the group (credentials never change inside
    /// a group, so only adds and removes touch it). Saves decoding and hashing every member's
    /// credential on every commit.
    roster: Vec<Option<RosterEntry>>,
    /// The epoch this session was reloaded in ([`Device::load`]): its SFrame counters were
    /// lost with the process, so sealing again under that epoch's key would reuse nonces. No
    /// media keys until the group moves to a new epoch (a self-update).
    pub(crate) reloaded_in: Option<u64>,
    /// The device's return secrets, which this session adds to on every epoch of a lobby.
    returns: ReturnKeys,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("epoch", &self.epoch())
            .field("own_leaf", &self.own_leaf())
            .field("members", &self.member_count())
            .field("policy", &self.policy.kind())
            .finish_non_exhaustive()
    }
}

fn roster_entry(suite: RoomCipherSuite, m: &Member) -> Result<RosterEntry> {
    let info = CredentialInfo::from_credential(&m.signing_identity.credential)?;
    Ok(RosterEntry {
        leaf: m.index,
        user_id: info.user_id,
        display_name: info.display_name,
        fingerprint: Fingerprint::of_key(suite, &m.signing_identity.signature_key)?,
    })
}

impl Session {
    pub(crate) fn new(
        group: Group<Config>,
        suite: RoomCipherSuite,
        policy: RoomPolicy,
        returns: ReturnKeys,
    ) -> Result<Self> {
        let mut session = Session {
            group,
            suite,
            policy,
            pending_commit: None,
            roster: Vec::new(),
            reloaded_in: None,
            returns,
        };
        session.fill_roster()?;
        session.keep_return_secret(true)?;
        Ok(session)
    }

    /// Adds roster entries for every member not in the cache yet; returns them.
    fn fill_roster(&mut self) -> Result<Vec<RosterEntry>> {
        let mut added = Vec::new();
        for m in self.group.roster().members_iter() {
            let i = m.index as usize;
            if self.roster.len() <= i {
                self.roster.resize(i + 1, None);
            }
            if self.roster[i].is_none() {
                let entry = roster_entry(self.suite, &m)?;
                added.push(entry.clone());
                self.roster[i] = Some(entry);
            }
        }
        Ok(added)
    }

    /// A copy of this session, secrets included. Two copies that both advance fork the group,
    /// so this is only for benchmarks (measuring one operation many times from the same state)
    /// and adversarial tests (modelling a stolen device).
    #[doc(hidden)]
    pub fn danger_clone(&self) -> Self {
        Session {
            group: self.group.clone(),
            suite: self.suite,
            policy: self.policy.clone(),
            pending_commit: self.pending_commit.clone(),
            roster: self.roster.clone(),
            reloaded_in: self.reloaded_in,
            returns: self.returns.clone(),
        }
    }

    /// The MLS group id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.current_epoch()
    }

    /// Our leaf index.
    pub fn own_leaf(&self) -> u32 {
        self.group.current_member_index()
    }

    /// The room's ciphersuite.
    pub fn suite(&self) -> RoomCipherSuite {
        self.suite
    }

    /// The room's admission policy (from the group context).
    pub fn policy(&self) -> &RoomPolicy {
        &self.policy
    }

    /// How many members the group has.
    pub fn member_count(&self) -> usize {
        self.roster.iter().flatten().count()
    }

    /// Leaf indices of all members.
    pub fn member_leaves(&self) -> Vec<u32> {
        self.roster.iter().flatten().map(|e| e.leaf).collect()
    }

    /// The authenticated roster, by leaf index.
    pub fn roster(&self) -> Result<Vec<RosterEntry>> {
        Ok(self.roster.iter().flatten().cloned().collect())
    }

    /// The roster entry of one leaf.
    pub fn member(&self, leaf: u32) -> Option<RosterEntry> {
        self.roster.get(leaf as usize).cloned().flatten()
    }

    /// The meeting security code of the current epoch.
    pub fn security_code(&self) -> Result<SecurityCode> {
        let auth = self.group.epoch_authenticator().map_err(Error::mls)?;
        let cs = suite_provider(self.suite)?;
        use mls_rs::CipherSuiteProvider;
        let digest = cs
            .hash(&[SECURITY_CODE_LABEL, auth.as_bytes()].concat())
            .map_err(|e| Error::Crypto(format!("{e:?}")))?;
        Ok(SecurityCode(digit_groups(&digest, 6)))
    }

    /// The SFrame secrets of the current epoch (RFC 9605 section 5.2), for
    /// [`MediaCrypto::install_epoch`](crate::MediaCrypto::install_epoch).
    pub fn epoch_secrets(&self) -> Result<EpochSecrets> {
        if self.reloaded_in == Some(self.epoch()) {
            return Err(Error::Usage(
                "a reloaded session has no media keys until its next epoch (self-update first): \
                 its SFrame counters for this epoch were lost",
            ));
        }
        let nk = sframe_suite(self.suite).key_len();
        let base_key = self
            .group
            .export_secret(SFRAME_EXPORTER_LABEL.as_bytes(), b"", nk)
            .map_err(Error::mls)?;
        Ok(EpochSecrets {
            epoch: self.epoch(),
            suite: self.suite,
            base_key: Zeroizing::new(base_key.as_bytes().to_vec()),
            own_leaf: self.own_leaf(),
            members: self.member_leaves(),
        })
    }

    /// Builds a commit that adds the members of `key_packages`, removes `remove` (leaf
    /// indices), and includes every valid proposal received since the last epoch (server
    /// removals, self-removals). The commit always carries an update path. It is pending until
    /// [`Session::confirm_commit`]; the caller sends it to the DS first.
    pub fn commit(
        &mut self,
        key_packages: &[Vec<u8>],
        remove: &[u32],
        now: Timestamp,
    ) -> Result<CommitBundle> {
        if self.group.has_pending_commit() {
            return Err(Error::Usage("a commit is already pending"));
        }
        let mut builder = self.group.commit_builder().commit_time(now.into());
        for kp in key_packages {
            builder = builder.add_member(parse_message(kp)?).map_err(map_mls)?;
        }
        for &leaf in remove {
            builder = builder.remove_member(leaf).map_err(map_mls)?;
        }
        let out = builder.build().map_err(map_mls)?;
        self.pend(out)
    }

    /// Keeps a built commit pending and bundles what the DS needs.
    fn pend(&mut self, out: mls_rs::group::CommitOutput) -> Result<CommitBundle> {
        let welcome = match out.welcome_messages().first() {
            Some(w) => Some(to_bytes(w)?),
            None => None,
        };
        // Joiners need the tree; members apply the commit to their own.
        let ratchet_tree = match (&welcome, out.ratchet_tree()) {
            (Some(_), Some(t)) => t.to_bytes().map_err(Error::mls)?,
            _ => Vec::new(),
        };
        let new_epoch = self.epoch() + 1;
        let commit = to_bytes(out.commit_message())?;
        self.pending_commit = Some(commit.clone());
        Ok(CommitBundle {
            commit,
            welcome,
            ratchet_tree,
            new_epoch,
        })
    }

    /// Checks a joiner's KeyPackage before it goes into a commit of ours: it reads as a
    /// Conclave KeyPackage of this room's suite, has not expired, and the room's policy lets
    /// this member add it (an invite-list room: listed or invited). One KeyPackage that fails here is left
    /// out; it does not sink the adds of the others.
    pub fn check_joiner(&self, key_package: &[u8], now: Timestamp) -> Result<KeyPackageCard> {
        let card = self.read_joiner(key_package, now)?;
        let add = AddProposal::try_from(parse_message(key_package)?).map_err(map_mls)?;
        let me = self
            .group
            .current_member_signing_identity()
            .map_err(Error::mls)?;
        conclave_mls::check_add(self.suite, &self.policy, me, &add)?;
        Ok(card)
    }

    /// Reads a joiner's KeyPackage: of this room's suite, not expired.
    fn read_joiner(&self, key_package: &[u8], now: Timestamp) -> Result<KeyPackageCard> {
        let card = KeyPackageCard::read(key_package)?;
        if card.suite != self.suite {
            return Err(Error::MalformedMessage(
                "the KeyPackage is for another ciphersuite".into(),
            ));
        }
        let add = AddProposal::try_from(parse_message(key_package)?).map_err(map_mls)?;
        let expires = add.key_package().expiration().map_err(map_mls)?;
        if expires.seconds_since_epoch().saturating_mul(1000) <= now.as_millis() {
            return Err(Error::MalformedMessage("the KeyPackage has expired".into()));
        }
        Ok(card)
    }

    /// An empty commit with a fresh path: post-compromise security for this member's leaf.
    pub fn self_update(&mut self, now: Timestamp) -> Result<CommitBundle> {
        self.commit(&[], &[], now)
    }

    /// Whether a commit built here waits for the DS's verdict.
    pub fn has_pending_commit(&self) -> bool {
        self.group.has_pending_commit()
    }

    /// Applies our pending commit after the DS accepted it.
    pub fn confirm_commit(&mut self) -> Result<EpochChange> {
        let desc = self.group.apply_pending_commit().map_err(map_mls)?;
        self.pending_commit = None;
        self.describe(desc.committer, &desc.effect)
    }

    /// Drops our pending commit (the DS refused it, or another commit won).
    pub fn discard_commit(&mut self) {
        self.group.clear_pending_commit();
        self.pending_commit = None;
    }

    /// A proposal to remove ourselves (a clean leave); the designated committer commits it.
    /// It is a standard RFC 9420 Remove proposal of our own leaf, which every MLS
    /// implementation can follow (mls-rs's SelfRemove is a private-use proposal type that
    /// others cannot decode); members and the DS still accept a SelfRemove from older clients.
    pub fn propose_leave(&mut self) -> Result<Vec<u8>> {
        let me = self.own_leaf();
        let msg = self.group.propose_remove(me, vec![]).map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// The mls-rs SelfRemove proposal (private-use type 0xF003) that Conclave clients sent
    /// before they left with a standard Remove: only for tests that check that members and
    /// the DS still accept what older clients send.
    #[doc(hidden)]
    pub fn danger_propose_legacy_self_remove(&mut self) -> Result<Vec<u8>> {
        let msg = self.group.propose_self_remove(vec![]).map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// An Add proposal by reference, which no Conclave client sends: only for adversarial
    /// tests that model a member running modified software.
    #[doc(hidden)]
    pub fn danger_propose_add(&mut self, key_package: &[u8]) -> Result<Vec<u8>> {
        let msg = self
            .group
            .propose_add(parse_message(key_package)?, vec![])
            .map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// Encrypts an application message to the group (e.g. a roster-view check).
    pub fn encrypt_application(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let msg = self
            .group
            .encrypt_application_message(data, vec![])
            .map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// Proposals received and waiting for a commit.
    pub fn pending_proposals(&self) -> usize {
        self.group.get_cached_proposals().len()
    }

    /// The ratchet tree of the current epoch (what the DS serves out of band).
    pub fn ratchet_tree(&self) -> Result<Vec<u8>> {
        self.group.export_tree().to_bytes().map_err(Error::mls)
    }

    /// The signed GroupInfo of the current epoch, without the tree.
    pub fn group_info(&self) -> Result<Vec<u8>> {
        let msg = self.group.group_info_message(false).map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// Which of `online` members should commit now: the one whose commit fills the most blank
    /// nodes of the tree (ties: lowest leaf), among those [`committer::eligible`] for the work
    /// (in lobby rooms with only joiners waiting, hosts). Every member computes the same
    /// answer from the same tree, and the delivery service schedules by the same rule.
    pub fn designated_committer(&self, online: &[u32], adds_waiting: bool) -> Option<u32> {
        let tree = self.group.export_tree();
        let work = committer::Work {
            adds: adds_waiting,
            proposals: self.pending_proposals() > 0,
        };
        let eligible = online.iter().copied().filter(|&leaf| {
            self.group.member_at_index(leaf).is_some_and(|m| {
                committer::eligible(&self.policy, &m.signing_identity.signature_key, work)
            })
        });
        committer::designated(&tree, eligible)
    }

    /// Persists the group state (to the device's [`GroupStore`]).
    pub fn save(&mut self) -> Result<()> {
        self.group
            .write_to_storage()
            .map_err(|e| Error::Storage(e.to_string()))
    }

    /// Processes an MLS message from the DS: a commit, a proposal or an application message.
    /// A commit that breaks the room's policy, is not signed by a member, or is for another
    /// group or epoch is rejected with an error and not applied; the session stays as it was.
    pub fn process(&mut self, message: &[u8], now: Timestamp) -> Result<Incoming> {
        if self.pending_commit.as_deref() == Some(message) {
            // The DS relayed our own commit back: it won. Apply it rather than refuse it.
            return Ok(Incoming::Commit {
                change: self.confirm_commit()?,
                discarded_own_commit: false,
            });
        }
        let msg = parse_message(message)?;
        let mut discarded = false;
        if self.group.has_pending_commit() {
            if let mls_rs::MlsMessageDescription::PublicProtocolMessage {
                content_type: mls_rs::group::ContentType::Commit,
                epoch_id,
                ..
            } = msg.description()
            {
                if epoch_id == self.epoch() {
                    // Another member's commit for our epoch: ours lost. Drop it, then apply
                    // theirs (if theirs is invalid, ours is gone too and the caller rebuilds).
                    self.group.clear_pending_commit();
                    self.pending_commit = None;
                    discarded = true;
                }
            }
        }
        let received = self
            .group
            .process_incoming_message_with_time(msg, now.into())
            .map_err(map_mls)?;
        match received {
            ReceivedMessage::Commit(desc) => Ok(Incoming::Commit {
                change: self.describe(desc.committer, &desc.effect)?,
                discarded_own_commit: discarded,
            }),
            ReceivedMessage::Proposal(p) => {
                if matches!(p.sender, mls_rs::group::ProposalSender::External(_))
                    && !matches!(p.proposal, Proposal::Remove(_))
                {
                    // Cached by MLS, but it will never be committed (the committer's rules
                    // leave it out); report it so the client can raise the alarm.
                    return Err(Error::Policy(PolicyViolation::ExternalSenderMayOnlyRemove(
                        "a non-remove proposal",
                    )));
                }
                if matches!(p.sender, mls_rs::group::ProposalSender::NewMember) {
                    return Err(Error::Policy(PolicyViolation::ExternalJoin));
                }
                let (kind, target) = match &p.proposal {
                    Proposal::Remove(r) => ("remove", Some(r.to_remove())),
                    Proposal::SelfRemove(_) => (
                        "self-remove",
                        match p.sender {
                            mls_rs::group::ProposalSender::Member(l) => Some(l),
                            _ => None,
                        },
                    ),
                    Proposal::Update(_) => ("update", None),
                    Proposal::Add(_) => ("add", None),
                    _ => ("other", None),
                };
                Ok(Incoming::Proposal {
                    kind,
                    target,
                    from_server: matches!(p.sender, mls_rs::group::ProposalSender::External(_)),
                })
            }
            ReceivedMessage::ApplicationMessage(app) => Ok(Incoming::Application {
                sender: app.sender_index,
                data: app.data().to_vec(),
            }),
            _ => Err(Error::MalformedMessage(
                "expected a commit, a proposal or an application message".into(),
            )),
        }
    }

    /// Describes an applied commit and brings the roster cache in step with it.
    fn describe(&mut self, committer: u32, effect: &CommitEffect) -> Result<EpochChange> {
        let (new_epoch, removed_self): (&NewEpoch, bool) = match effect {
            CommitEffect::NewEpoch(e) => (e, false),
            CommitEffect::Removed { new_epoch, .. } => (new_epoch, true),
            CommitEffect::ReInit(_) => {
                return Err(Error::Policy(PolicyViolation::ForbiddenProposal("re-init")))
            }
        };
        let mut removed = Vec::new();
        let mut has_adds = false;
        for p in &new_epoch.applied_proposals {
            let leaf = match (&p.proposal, p.sender) {
                (Proposal::Remove(r), _) => r.to_remove(),
                (Proposal::SelfRemove(_), mls_rs::group::Sender::Member(l)) => l,
                (Proposal::Add(_), _) => {
                    has_adds = true;
                    continue;
                }
                _ => continue,
            };
            if let Some(entry) = self.roster.get_mut(leaf as usize).and_then(Option::take) {
                removed.push(entry);
            }
        }
        // Added members land in blank leaves (possibly ones just freed): fill those in.
        let added = if has_adds {
            self.fill_roster()?
        } else {
            Vec::new()
        };
        if !removed_self {
            self.keep_return_secret(has_adds)?;
        }
        Ok(EpochChange {
            epoch: new_epoch.epoch,
            committer,
            added,
            removed,
            removed_self,
        })
    }
}

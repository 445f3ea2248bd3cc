//! Room admission policies, kept in the MLS group context so that every member enforces the
//! same one on every commit it processes.
//!
//! - [`Admission::Open`]: any member may add anyone the server let knock. The protection is
//!   visibility: every member sees every other in the roster, and the security code changes.
//! - [`Admission::Lobby`]: only a host's device may add (a person clicked "admit").
//! - [`Admission::InviteList`]: only devices whose fingerprint the host listed, or that carry
//!   an invite signed by a host's device key and bound to their own key, may be added.
//!
//! In every policy, the server (the group's external sender) may only propose removals, and
//! no one can join by external commit or by proposing their own add: the server can knock on a
//! member's door, never walk in.

use mls_rs::group::proposal::{AddProposal, BorrowedProposal};
use mls_rs::group::Sender;
use mls_rs::identity::SigningIdentity;
use mls_rs::mls_rules::{CommitSource, ProposalBundle, ProposalInfo};
use mls_rs::{CipherSuiteProvider, ExtensionList};
use mls_rs_codec::{MlsDecode, MlsEncode, MlsSize};
use mls_rs_core::crypto::SignaturePublicKey;
use mls_rs_core::extension::{ExtensionType, MlsCodecExtension};

use crate::crypto::{suite_provider, RoomCipherSuite};
use crate::error::{Error, Result};
use crate::host_return::HostReturn;
use crate::identity::Fingerprint;

/// Group context extension carrying the [`RoomPolicy`] (private-use range).
pub const ROOM_POLICY_EXTENSION: ExtensionType = ExtensionType::new(0xF0C1);
/// KeyPackage extension carrying an [`Invite`] (private-use range).
pub const INVITE_EXTENSION: ExtensionType = ExtensionType::new(0xF0C2);

const INVITE_LABEL: &[u8] = b"conclave invite v1";
/// Most hosts or invitees a policy may list.
pub const MAX_POLICY_ENTRIES: usize = 10_000;

/// The policy of one room, fixed when the room's group is created.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
pub struct RoomPolicy {
    /// The room this group belongs to (as the server names it).
    pub room_id: Vec<u8>,
    /// Who may be added, and by whom.
    pub admission: Admission,
}

/// How joiners get into the group.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
#[repr(u8)]
pub enum Admission {
    /// Any member admits any knocking device automatically.
    Open = 1u8,
    /// Only a host's device may add members.
    Lobby(Hosts) = 2u8,
    /// Only listed or invited devices may be added (by any member).
    InviteList(InviteList) = 3u8,
}

/// The host devices of a room, by signature public key.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
pub struct Hosts {
    /// Signature public keys of the host devices.
    pub keys: Vec<Vec<u8>>,
}

/// Who may be added to an invite-list room.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
pub struct InviteList {
    /// Host devices whose signed invites admit their bearer.
    pub hosts: Hosts,
    /// Fingerprints of devices admitted without an invite.
    pub allowed: Vec<Fingerprint>,
}

impl MlsCodecExtension for RoomPolicy {
    fn extension_type() -> ExtensionType {
        ROOM_POLICY_EXTENSION
    }
}

impl RoomPolicy {
    /// An open room.
    pub fn open(room_id: &str) -> Self {
        RoomPolicy {
            room_id: room_id.as_bytes().to_vec(),
            admission: Admission::Open,
        }
    }

    /// A lobby room hosted by the devices with signature keys `hosts`.
    pub fn lobby<K: AsRef<SignaturePublicKey>>(room_id: &str, hosts: &[K]) -> Self {
        RoomPolicy {
            room_id: room_id.as_bytes().to_vec(),
            admission: Admission::Lobby(Hosts::of(hosts)),
        }
    }

    /// An invite-list room hosted by `hosts`, admitting the `allowed` fingerprints and the
    /// bearers of invites signed by a host.
    pub fn invite_list<K: AsRef<SignaturePublicKey>>(
        room_id: &str,
        hosts: &[K],
        allowed: Vec<Fingerprint>,
    ) -> Self {
        RoomPolicy {
            room_id: room_id.as_bytes().to_vec(),
            admission: Admission::InviteList(InviteList {
                hosts: Hosts::of(hosts),
                allowed,
            }),
        }
    }

    /// A plain-words name of the policy.
    pub fn kind(&self) -> &'static str {
        match self.admission {
            Admission::Open => "open",
            Admission::Lobby(_) => "lobby",
            Admission::InviteList(_) => "invite-list",
        }
    }

    /// Whether `key` belongs to a host device of this room.
    pub fn is_host(&self, key: &SignaturePublicKey) -> bool {
        match &self.admission {
            Admission::Open => false,
            Admission::Lobby(h) => h.contains(key),
            Admission::InviteList(l) => l.hosts.contains(key),
        }
    }

    /// Refuses policies that list more than [`MAX_POLICY_ENTRIES`].
    pub fn check_size(&self) -> Result<()> {
        let n = match &self.admission {
            Admission::Open => 0,
            Admission::Lobby(h) => h.keys.len(),
            Admission::InviteList(l) => l.hosts.keys.len() + l.allowed.len(),
        };
        if n > MAX_POLICY_ENTRIES {
            return Err(Error::Usage("policy lists too many entries"));
        }
        Ok(())
    }
}

impl Hosts {
    fn of<K: AsRef<SignaturePublicKey>>(hosts: &[K]) -> Self {
        Hosts {
            keys: hosts
                .iter()
                .map(|h| h.as_ref().as_bytes().to_vec())
                .collect(),
        }
    }

    fn contains(&self, key: &SignaturePublicKey) -> bool {
        self.keys.iter().any(|k| k.as_slice() == key.as_bytes())
    }
}

/// Something that holds a device's signature key and can sign with it (without handing the
/// key out): the client's device identity.
pub trait DeviceSigner {
    /// The key's ciphersuite.
    fn suite(&self) -> RoomCipherSuite;
    /// The public half.
    fn public_key(&self) -> &SignaturePublicKey;
    /// Signs `data` with the secret half.
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>>;
}

/// An invitation, signed by a host device, that admits the device with fingerprint `invitee`
/// into `room_id`. The joiner carries it in its KeyPackage.
#[derive(Clone, Debug, PartialEq, Eq, MlsSize, MlsEncode, MlsDecode)]
pub struct Invite {
    /// Room the invite is for.
    pub room_id: Vec<u8>,
    /// Fingerprint of the invited device's signature key.
    pub invitee: Fingerprint,
    /// Signature public key of the host that signed.
    pub host_key: Vec<u8>,
    /// Signature over label, room id and invitee.
    pub signature: Vec<u8>,
}

impl MlsCodecExtension for Invite {
    fn extension_type() -> ExtensionType {
        INVITE_EXTENSION
    }
}

impl Invite {
    fn signed_content(room_id: &[u8], invitee: &Fingerprint) -> Vec<u8> {
        [
            INVITE_LABEL,
            &(room_id.len() as u32).to_be_bytes(),
            room_id,
            &invitee.0,
        ]
        .concat()
    }

    /// A host signs an invite for `invitee` into `room_id`.
    pub fn sign(host: &impl DeviceSigner, room_id: &str, invitee: Fingerprint) -> Result<Self> {
        let content = Self::signed_content(room_id.as_bytes(), &invitee);
        Ok(Invite {
            room_id: room_id.as_bytes().to_vec(),
            invitee,
            host_key: host.public_key().as_bytes().to_vec(),
            signature: host.sign(&content)?,
        })
    }

    /// Serializes for transport (e.g. in a link).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.mls_encode_to_vec()
            .map_err(|e| Error::Malformed(e.to_string()))
    }

    /// Parses an invite.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::mls_decode(&mut &*bytes).map_err(|e| Error::Malformed(e.to_string()))
    }

    fn verify(
        &self,
        suite: RoomCipherSuite,
        policy: &RoomPolicy,
        hosts: &Hosts,
        joiner: &Fingerprint,
    ) -> core::result::Result<(), PolicyViolation> {
        let bad = |why: &'static str| PolicyViolation::BadInvite {
            invitee: *joiner,
            reason: why,
        };
        if self.room_id != policy.room_id {
            return Err(bad("invite is for another room"));
        }
        if self.invitee != *joiner {
            return Err(bad("invite is bound to another device key"));
        }
        let host_key = SignaturePublicKey::new(self.host_key.clone());
        if !hosts.contains(&host_key) {
            return Err(bad("invite was not signed by a host of this room"));
        }
        let cs = suite_provider(suite).map_err(|_| bad("unsupported suite"))?;
        cs.verify(
            &host_key,
            &self.signature,
            &Self::signed_content(&self.room_id, &self.invitee),
        )
        .map_err(|_| bad("invite signature does not verify"))
    }
}

/// Why a commit was refused under the room's policy. Returned by every member that processes
/// such a commit; the commit is never applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// The group context has no (or an undecodable) room policy.
    #[error("the group has no valid room policy")]
    MissingPolicy,
    /// The server (external sender) proposed something other than a removal.
    #[error("the server may only propose removals, not {0}")]
    ExternalSenderMayOnlyRemove(&'static str),
    /// Someone tried to join without being added by a member (external commit or external add
    /// proposal).
    #[error("joining without a member's commit is not allowed in Conclave rooms")]
    ExternalJoin,
    /// A proposal type Conclave never accepts (policy changes, re-init, PSKs, custom).
    #[error("{0} proposals are not allowed in Conclave rooms")]
    ForbiddenProposal(&'static str),
    /// In a lobby room, a device that is not a host tried to add someone.
    #[error("only a host may admit members in a lobby room (adder {adder})")]
    NotAHost {
        /// Fingerprint of the device that tried.
        adder: Fingerprint,
    },
    /// In a lobby room, an add that another member proposed by reference: a host admits each
    /// joiner in its own commit, so an add a host did not put there itself is refused (and
    /// left out when a host builds a commit), whoever commits it.
    #[error("in a lobby room only a host's own commit may add a member (an add was proposed by reference)")]
    AddNotFromHost,
    /// In a lobby room, a member who is not a host added a host's device back without the
    /// proof (a PSK of an epoch the host was in) that the group is the one the host was in.
    #[error("a member who is not a host added this host's device without proof that the group is the one it hosted (adder {adder})")]
    ReturnUnproven {
        /// Fingerprint of the device that added it.
        adder: Fingerprint,
    },
    /// In an invite-list room, the added device is neither listed nor invited.
    #[error("device {invitee} is not on the room's invite list and has no invite")]
    NotInvited {
        /// Fingerprint of the device being added.
        invitee: Fingerprint,
    },
    /// An invite was present but not valid.
    #[error("invalid invite for {invitee}: {reason}")]
    BadInvite {
        /// Fingerprint of the device being added.
        invitee: Fingerprint,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The group uses a ciphersuite this build does not support.
    #[error("unsupported ciphersuite")]
    UnsupportedSuite,
}

impl mls_rs_core::error::IntoAnyError for PolicyViolation {
    fn into_dyn_error(
        self,
    ) -> core::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

/// Reads the room policy from group context extensions.
pub fn policy_of(extensions: &ExtensionList) -> core::result::Result<RoomPolicy, PolicyViolation> {
    extensions
        .get_as::<RoomPolicy>()
        .ok()
        .flatten()
        .ok_or(PolicyViolation::MissingPolicy)
}

fn proposal_name(p: &BorrowedProposal<'_>) -> &'static str {
    match p {
        BorrowedProposal::Add(_) => "add",
        BorrowedProposal::Update(_) => "update",
        BorrowedProposal::Remove(_) => "remove",
        BorrowedProposal::ReInit(_) => "re-init",
        BorrowedProposal::ExternalInit(_) => "external init",
        BorrowedProposal::GroupContextExtensions(_) => "group context extensions",
        BorrowedProposal::SelfRemove(_) => "self-remove",
        BorrowedProposal::Custom(_) => "custom",
        BorrowedProposal::Psk(_) => "pre-shared key",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Checks a received commit's proposals (and its committer) against the room's policy, in the
/// group `group_id`. Pure: the same inputs give the same verdict on every member, which keeps
/// the group from forking.
pub fn check_commit(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    group_id: &[u8],
    source: &CommitSource,
    proposals: &ProposalBundle,
) -> core::result::Result<(), PolicyViolation> {
    let committer = committer_of(source)?;
    let returning = host_return_in(policy, group_id, proposals);
    if let Some(ticket) = &returning {
        // A return adds exactly the host whose KeyPackage names this very ticket, and no one
        // else: the proof is for that device's way back.
        let adds: Vec<&AddProposal> = proposals
            .add_proposals()
            .iter()
            .map(|p| &p.proposal)
            .collect();
        let psks = proposals
            .iter_proposals()
            .filter(|i| matches!(i.proposal, BorrowedProposal::Psk(_)))
            .count();
        let named = |a: &AddProposal| {
            a.key_package_extensions()
                .get_as::<HostReturn>()
                .ok()
                .flatten()
                .is_some_and(|t| t == *ticket)
        };
        if adds.len() != 1 || psks != 1 || !adds.iter().all(|a| named(a)) {
            return Err(PolicyViolation::ReturnUnproven {
                adder: fingerprint(suite, committer)?,
            });
        }
    }
    for info in proposals.iter_proposals() {
        check_proposal(
            suite,
            policy,
            group_id,
            returning.is_some(),
            committer,
            &info,
        )?;
    }
    Ok(())
}

/// The ticket of the lobby host returning to this group, if the commit carries (by value) its
/// PSK: see [`crate::HostReturn`].
fn host_return_in(
    policy: &RoomPolicy,
    group_id: &[u8],
    proposals: &ProposalBundle,
) -> Option<HostReturn> {
    if !matches!(policy.admission, Admission::Lobby(_)) {
        return None;
    }
    proposals
        .iter_proposals()
        .find_map(|info| match info.proposal {
            BorrowedProposal::Psk(p) if info.is_by_value() => p
                .external_psk_id()
                .and_then(|id| HostReturn::from_psk_id(id))
                .filter(|t| t.group_id == group_id),
            _ => None,
        })
}

/// Before building a commit: leaves out proposals received by reference that the policy
/// forbids (a hostile server's add proposal, say), so that they cannot jam the group. What the
/// committer itself put in by value is checked by [`check_commit`] and refused loudly.
pub fn drop_forbidden_references(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    group_id: &[u8],
    source: &CommitSource,
    proposals: &mut ProposalBundle,
) -> core::result::Result<(), PolicyViolation> {
    let committer = committer_of(source)?.clone();
    let returning = host_return_in(policy, group_id, proposals).is_some();
    proposals.retain(|info| {
        Ok::<bool, PolicyViolation>(
            info.is_by_value()
                || check_proposal(suite, policy, group_id, returning, &committer, info).is_ok(),
        )
    })
}

fn committer_of(source: &CommitSource) -> core::result::Result<&SigningIdentity, PolicyViolation> {
    match source {
        CommitSource::ExistingMember(m) => Ok(&m.signing_identity),
        CommitSource::NewMember(_) => Err(PolicyViolation::ExternalJoin),
    }
}

fn check_proposal(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    group_id: &[u8],
    returning: bool,
    committer: &SigningIdentity,
    info: &ProposalInfo<BorrowedProposal<'_>>,
) -> core::result::Result<(), PolicyViolation> {
    let name = proposal_name(&info.proposal);
    match info.sender {
        Sender::Member(_) => {}
        Sender::External(_) => {
            if !matches!(info.proposal, BorrowedProposal::Remove(_)) {
                return Err(PolicyViolation::ExternalSenderMayOnlyRemove(name));
            }
        }
        _ => return Err(PolicyViolation::ExternalJoin),
    }
    match info.proposal {
        // In a lobby, the host decides on each add in its own commit; an add another member
        // slipped in by reference is no host's decision.
        BorrowedProposal::Add(_)
            if matches!(policy.admission, Admission::Lobby(_)) && info.is_by_reference() =>
        {
            Err(PolicyViolation::AddNotFromHost)
        }
        // A member who is not a host adds a returning host's device, proving with the PSK
        // that the group is the one the host was in.
        BorrowedProposal::Add(add)
            if returning && policy.is_host(&add.signing_identity().signature_key) =>
        {
            Ok(())
        }
        // Whoever proposed an add, the committer is the one who admits: it must qualify.
        BorrowedProposal::Add(add) => check_add(suite, policy, committer, add),
        // Only the committer's own proof for a returning lobby host, for this group.
        BorrowedProposal::Psk(p)
            if info.is_by_value()
                && matches!(policy.admission, Admission::Lobby(_))
                && p.external_psk_id()
                    .and_then(|id| HostReturn::from_psk_id(id))
                    .is_some_and(|t| t.group_id == group_id) =>
        {
            Ok(())
        }
        BorrowedProposal::Update(_)
        | BorrowedProposal::Remove(_)
        | BorrowedProposal::SelfRemove(_) => Ok(()),
        BorrowedProposal::ExternalInit(_) => Err(PolicyViolation::ExternalJoin),
        _ => Err(PolicyViolation::ForbiddenProposal(name)),
    }
}

fn fingerprint(
    suite: RoomCipherSuite,
    id: &SigningIdentity,
) -> core::result::Result<Fingerprint, PolicyViolation> {
    Fingerprint::of_key(suite, &id.signature_key).map_err(|_| PolicyViolation::UnsupportedSuite)
}

/// Whether `adder` may add the device of `add` under `policy`: what [`check_commit`] checks for
/// each add, for a committer to ask before it builds a commit (one KeyPackage the policy
/// refuses must not sink the adds of the others) and for the delivery service at a knock.
pub fn check_add(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    adder: &SigningIdentity,
    add: &AddProposal,
) -> core::result::Result<(), PolicyViolation> {
    match &policy.admission {
        Admission::Open => Ok(()),
        Admission::Lobby(hosts) => {
            // Only a host admits, even a host's own device coming back: a group that a
            // server's device made with the charter's exact policy must stay unable to take
            // in the host (and with it, everyone the host then admits).
            if hosts.contains(&adder.signature_key) {
                Ok(())
            } else {
                Err(PolicyViolation::NotAHost {
                    adder: fingerprint(suite, adder)?,
                })
            }
        }
        Admission::InviteList(_) => check_invited(suite, policy, add),
    }
}

/// In an invite-list room, whether the device of `add` is listed or carries a valid invite
/// (whoever adds it); in other rooms, `Ok`. What the delivery service checks at a knock.
pub fn check_invited(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    add: &AddProposal,
) -> core::result::Result<(), PolicyViolation> {
    check_listed(
        suite,
        policy,
        add.signing_identity(),
        &add.key_package_extensions(),
    )
}

/// In an invite-list room, whether a member of the group belongs there: a host, listed, or
/// carrying in its leaf a valid invite bound to its own key. What a joiner checks of every
/// member before it accepts a Welcome, so that a group that a device of the server's made
/// (with the charter's exact policy) shows itself: that device is none of these.
pub fn check_member_listed(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    member: &SigningIdentity,
    leaf_extensions: &ExtensionList,
) -> core::result::Result<(), PolicyViolation> {
    if policy.is_host(&member.signature_key) {
        return Ok(());
    }
    check_listed(suite, policy, member, leaf_extensions)
}

fn check_listed(
    suite: RoomCipherSuite,
    policy: &RoomPolicy,
    joiner: &SigningIdentity,
    extensions: &ExtensionList,
) -> core::result::Result<(), PolicyViolation> {
    let Admission::InviteList(list) = &policy.admission else {
        return Ok(());
    };
    let joiner = fingerprint(suite, joiner)?;
    if list.allowed.contains(&joiner) {
        return Ok(());
    }
    match extensions.get_as::<Invite>() {
        Ok(Some(invite)) => invite.verify(suite, policy, &list.hosts, &joiner),
        Ok(None) => Err(PolicyViolation::NotInvited { invitee: joiner }),
        Err(_) => Err(PolicyViolation::BadInvite {
            invitee: joiner,
            reason: "undecodable invite",
        }),
    }
}

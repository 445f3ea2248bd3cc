//! A member written against openmls 0.9.2 alone is a full member of a Conclave group.
//!
//! "olaf" runs openmls (with its RustCrypto provider) and nothing of Conclave's or mls-rs's:
//! he encodes the Conclave credential himself, derives the meeting security code himself, and
//! speaks the signaling protocol (`conclave_proto` messages, which are only the transport here)
//! by hand on a raw connection of the real delivery-service core. "ada" and "bea" are the real
//! participant core on mls-rs. The test follows the group through olaf's join, bea's join, a
//! self-update of ada's, one of olaf's own, bea's clean leave (committed by olaf) and olaf's
//! clean leave, and checks in every epoch olaf is in that all three compute the same security
//! code, and that olaf and ada see the same roster.
//!
//! What Conclave asks of a member, and how olaf does it with openmls:
//!
//! - Credential: an MLS basic credential whose identity is the MLS encoding of
//!   `struct { uint8 version = 1; opaque user_id<V>; opaque display_name<V>; }` (vectors with
//!   RFC 9420 section 2.1.2 variable-length headers). Built by [`conclave_credential`].
//! - KeyPackage: suite 1 (`MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519`), a leaf that lists the
//!   room-policy extension 0xF0C1 in its capabilities (the group context's RequiredCapabilities
//!   names it), a lifetime of 24 h back-dated by 1 h as Conclave's own clients do
//!   (`Lifetime::init`, since `Lifetime::new` reads the wall clock).
//! - Join: the Welcome carries no ratchet tree (`with_ratchet_tree_extension(false)`); the
//!   delivery service serves it beside the Welcome, and openmls takes it in
//!   `JoinBuilder::with_ratchet_tree` and checks it against the signed GroupInfo.
//! - Handshake messages are MLS public messages, so the delivery service can check and order
//!   them: `MIXED_PLAINTEXT_WIRE_FORMAT_POLICY` (outgoing handshake in plaintext, incoming
//!   either; application messages are encrypted in any case).
//! - Commits: only when the delivery service asks (`CommitRequest`), or a self-update; every
//!   commit carries an update path (`force_self_update(true)`); applied only once the delivery
//!   service answers `CommitAccepted`; no Welcome-embedded tree.
//! - Leaving: a standard Remove proposal of one's own leaf, which openmls 0.9.2's `leave_group`
//!   makes (not the SelfRemove of `leave_group_via_self_remove`); someone else commits it.
//!
//! One thing openmls cannot follow as the harness had it: simulated time far from the wall
//! clock. openmls checks the lifetime of every KeyPackage it processes (the leaf of an Add in a
//! received commit, `PublicGroup::validate_add_proposals` -> `validate_leaf_node` ->
//! `Lifetime::validate`, which reads `SystemTime::now()`), and has no way to pass another time
//! or to skip that check outside its own unit tests. The harness starts its clock in November
//! 2023, so bea's KeyPackage (valid for 24 h from then) would be refused as expired. So this
//! test starts the simulated clock at the wall clock; the harness then runs seconds ahead of
//! it, well inside the 1 h that every KeyPackage is back-dated. (For the ratchet tree of a
//! Welcome, openmls does offer `skip_lifetime_validation`, used below.) In production every
//! party reads a real clock, so this only means an openmls member needs a clock within the
//! KeyPackage back-dating (1 h) of the others'.

use conclave_sim::membership as common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    AdmitMode, Bytes, ConnId, KnockInfo, MembershipMsg, Net, NewRoomPolicy, ServerMsg, Timestamp,
};
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Capabilities, Ciphersuite, CredentialWithKey, ExtensionType, KeyPackage,
    LeafNodeParameters, Lifetime, MlsGroup, MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn,
    MlsMessageOut, ProcessedMessageContent, Proposal, ProtocolMessage, ProtocolVersion,
    QueuedProposal, RatchetTreeIn, Sender, SignatureScheme, StagedWelcome,
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use sha2::{Digest, Sha256};

/// olaf's connection to the delivery service (no `Participant`: the harness only records what
/// the server sends it in `net.seen[&OLAF]`).
const OLAF: ConnId = ConnId(5);
/// The only suite every Conclave client supports.
const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
/// Group context extension carrying the room policy (private-use range).
const ROOM_POLICY_EXTENSION: u16 = 0xF0C1;
/// `Admission::Open` in the room policy's encoding.
const ADMISSION_OPEN: u8 = 1;
const CREDENTIAL_VERSION: u8 = 1;
const SECURITY_CODE_LABEL: &[u8] = b"conclave security code v1";
const FINGERPRINT_LABEL: &[u8] = b"conclave fingerprint v1";
/// Conclave's KeyPackage lifetime (24 h) and how far back it is dated for skewed clocks (1 h).
const KEY_PACKAGE_LIFETIME_S: u64 = 24 * 3600;
const KEY_PACKAGE_BACKDATE_S: u64 = 3600;

// ---------------------------------------------------------------------------------------------
// The Conclave wire formats, written from their description (no Conclave code).

/// Appends an MLS variable-length vector header (RFC 9420 section 2.1.2: 1, 2 or 4 bytes, the
/// top two bits of the first byte saying which, always the shortest that fits).
fn encode_varint(n: usize, out: &mut Vec<u8>) {
    if n < 1 << 6 {
        out.push(u8::try_from(n).unwrap());
    } else if n < 1 << 14 {
        out.extend_from_slice(&(0x4000 | u16::try_from(n).unwrap()).to_be_bytes());
    } else if n < 1 << 30 {
        out.extend_from_slice(&(0x8000_0000 | u32::try_from(n).unwrap()).to_be_bytes());
    } else {
        panic!("{n} bytes is too long for an MLS vector");
    }
}

/// Reads an MLS variable-length vector header, refusing non-minimal encodings.
fn decode_varint(r: &mut &[u8]) -> Option<usize> {
    let (&first, rest) = r.split_first()?;
    let len = 1usize << (first >> 6);
    if len == 8 || rest.len() < len - 1 {
        return None;
    }
    let n = rest[..len - 1]
        .iter()
        .fold(usize::from(first & 0x3f), |n, &b| (n << 8) | usize::from(b));
    let minimal = match n {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        _ => 4,
    };
    if minimal != len {
        return None;
    }
    *r = &rest[len - 1..];
    Some(n)
}

fn encode_opaque(bytes: &[u8], out: &mut Vec<u8>) {
    encode_varint(bytes.len(), out);
    out.extend_from_slice(bytes);
}

fn decode_opaque<'a>(r: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = decode_varint(r)?;
    if r.len() < n {
        return None;
    }
    let (v, rest) = r.split_at(n);
    *r = rest;
    Some(v)
}

/// The identity of a Conclave basic credential.
fn conclave_credential(user_id: &str, display_name: &str) -> Vec<u8> {
    let mut out = vec![CREDENTIAL_VERSION];
    encode_opaque(user_id.as_bytes(), &mut out);
    encode_opaque(display_name.as_bytes(), &mut out);
    out
}

/// User id and display name from the identity of a Conclave basic credential.
fn decode_credential(identity: &[u8]) -> Option<(String, String)> {
    let (&version, mut r) = identity.split_first()?;
    if version != CREDENTIAL_VERSION {
        return None;
    }
    let user_id = decode_opaque(&mut r)?.to_vec();
    let display_name = decode_opaque(&mut r)?.to_vec();
    if !r.is_empty() {
        return None;
    }
    Some((
        String::from_utf8(user_id).ok()?,
        String::from_utf8(display_name).ok()?,
    ))
}

/// Room id and admission kind (1 open, 2 lobby, 3 invite list) of the room-policy extension
/// `struct { opaque room_id<V>; Admission admission; }`, `Admission` being a `uint8` tag and
/// its variant's fields (none for an open room).
fn room_policy(group: &MlsGroup) -> Option<(Vec<u8>, u8)> {
    let ext = group.extensions().unknown(ROOM_POLICY_EXTENSION)?;
    let mut r = ext.0.as_slice();
    let room_id = decode_opaque(&mut r)?.to_vec();
    let (&admission, _) = r.split_first()?;
    Some((room_id, admission))
}

/// `groups` groups of five digits: each is the next 5 bytes read as a big-endian integer,
/// reduced mod 10^5 and zero-padded; groups are separated by spaces.
fn digit_groups(bytes: &[u8], groups: usize) -> String {
    bytes
        .chunks(5)
        .take(groups)
        .map(|c| {
            let v = c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            format!("{:05}", v % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The meeting security code: SHA-256 over the label and the MLS epoch authenticator, as six
/// groups of five digits.
fn security_code(epoch_authenticator: &[u8]) -> String {
    let digest = Sha256::digest([SECURITY_CODE_LABEL, epoch_authenticator].concat());
    digit_groups(digest.as_slice(), 6)
}

/// A device fingerprint: SHA-256 over the label and the signature public key.
fn fingerprint(signature_key: &[u8]) -> [u8; 32] {
    let digest = Sha256::digest([FINGERPRINT_LABEL, signature_key].concat());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_slice());
    out
}

/// One roster line: leaf, user id, display name, fingerprint.
type RosterLine = (u32, String, String, [u8; 32]);

// ---------------------------------------------------------------------------------------------
// olaf: an openmls member driven by hand.

struct Olaf {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    user_id: String,
    group: Option<MlsGroup>,
    /// Pieces of the next Welcome's ratchet tree (`ServerMsg::TreePart`).
    tree_parts: Vec<u8>,
    /// How many of `net.seen[&OLAF]` were handled.
    seen: usize,
    /// Sent his own removal: never commits again.
    left: bool,
    /// A commit of his that the delivery service applied.
    accepted_commits: usize,
    /// Removals in those commits.
    removals_committed: usize,
}

impl Olaf {
    fn new(user_id: &str, display_name: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("an Ed25519 key");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(conclave_credential(user_id, display_name)).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Olaf {
            provider,
            signer,
            credential,
            user_id: user_id.to_owned(),
            group: None,
            tree_parts: Vec::new(),
            seen: 0,
            left: false,
            accepted_commits: 0,
            removals_committed: 0,
        }
    }

    fn group(&self) -> &MlsGroup {
        self.group.as_ref().expect("olaf is in the group")
    }

    fn epoch(&self) -> u64 {
        self.group().epoch().as_u64()
    }

    fn security_code(&self) -> String {
        security_code(self.group().epoch_authenticator().as_slice())
    }

    fn fingerprint(&self) -> [u8; 32] {
        fingerprint(self.signer.public())
    }

    /// The roster as olaf's tree says, credentials decoded by hand.
    fn roster(&self) -> Vec<RosterLine> {
        self.group()
            .members()
            .map(|m| {
                let basic = BasicCredential::try_from(m.credential.clone())
                    .expect("Conclave credentials are basic credentials");
                let (user_id, name) =
                    decode_credential(basic.identity()).expect("a well-formed Conclave credential");
                (m.index.u32(), user_id, name, fingerprint(&m.signature_key))
            })
            .collect()
    }

    /// A fresh KeyPackage (an MLS message) for a knock at `now`.
    fn key_package(&self, now: Timestamp) -> Vec<u8> {
        let now_s = now.as_millis() / 1000;
        let lifetime = Lifetime::init(
            now_s - KEY_PACKAGE_BACKDATE_S,
            now_s + KEY_PACKAGE_LIFETIME_S,
        );
        // The group requires the room-policy extension; the suite, protocol version and basic
        // credential type are the builder's defaults for the other fields.
        let capabilities = Capabilities::builder()
            .ciphersuites(vec![CIPHERSUITE])
            .extensions(vec![ExtensionType::Unknown(ROOM_POLICY_EXTENSION)])
            .build();
        let bundle = KeyPackage::builder()
            .key_package_lifetime(lifetime)
            .leaf_node_capabilities(capabilities)
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .expect("olaf's KeyPackage");
        MlsMessageOut::from(bundle.key_package().clone())
            .to_bytes()
            .expect("encodes")
    }

    /// Handles one message from the delivery service, as a Conclave participant would.
    fn handle(&mut self, net: &mut Net, msg: ServerMsg) {
        match msg {
            // Signaling is up: the room's group exists (ada made it), so knock.
            ServerMsg::Joined {
                create_group,
                user_id,
                ..
            } => {
                assert!(!create_group, "olaf is never the room's first connection");
                assert_eq!(user_id, self.user_id);
                let key_package = Bytes(self.key_package(net.now));
                send(net, MembershipMsg::KeyPackage { key_package });
            }
            ServerMsg::TreePart { part } => self.tree_parts.extend_from_slice(&part.0),
            ServerMsg::Welcome {
                welcome,
                ratchet_tree,
            } => {
                let tree = if ratchet_tree.0.is_empty() {
                    std::mem::take(&mut self.tree_parts)
                } else {
                    ratchet_tree.0
                };
                self.join(&welcome.0, &tree);
            }
            ServerMsg::Commit { commit } => self.process_commit(&commit.0),
            ServerMsg::Proposal { proposal } => self.process_proposal(&proposal.0),
            ServerMsg::CommitRequest { epoch, knocks } => {
                self.commit_requested(net, epoch, &knocks)
            }
            ServerMsg::CommitAccepted { epoch } => self.commit_accepted(epoch),
            ServerMsg::CommitRejected { epoch, reason } => {
                panic!("the delivery service refused olaf's commit for epoch {epoch}: {reason}")
            }
            ServerMsg::Error { code, reason } => {
                panic!("the delivery service refused a message of olaf's ({code:?}): {reason}")
            }
            ServerMsg::Denied { reason } => panic!("olaf's knock was turned away: {reason}"),
            // No application messages, knocks (open room) or media in this test.
            _ => {}
        }
    }

    /// Joins from the Welcome with the ratchet tree the delivery service served beside it.
    fn join(&mut self, welcome: &[u8], tree: &[u8]) {
        assert!(self.group.is_none(), "a second Welcome");
        let welcome = match MlsMessageIn::tls_deserialize_exact(welcome)
            .expect("the Welcome decodes")
            .extract()
        {
            MlsMessageBodyIn::Welcome(w) => w,
            other => panic!("expected a Welcome, got {other:?}"),
        };
        let tree = RatchetTreeIn::tls_deserialize_exact(tree).expect("the ratchet tree decodes");
        let config = MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(false)
            .build();
        let group = StagedWelcome::build_from_welcome(&self.provider, &config, welcome)
            .expect("the Welcome opens with olaf's KeyPackage")
            // Checked against the tree hash in the GroupInfo the committer signed.
            .with_ratchet_tree(tree)
            // A Conclave member that never commits keeps the 24 h lifetime of the KeyPackage
            // it joined with; RFC 9420 section 7.3 lets a joiner skip that check in the tree.
            .skip_lifetime_validation()
            .build()
            .expect("the Welcome and the tree are valid")
            .into_group(&self.provider)
            .expect("olaf joins");
        // The group is this room's (what Conclave's own clients check at a Welcome), with the
        // server as its only external sender and the room policy required of every member.
        let (room_id, admission) = room_policy(&group).expect("the group carries a room policy");
        assert_eq!(room_id, b"room");
        assert_eq!(admission, ADMISSION_OPEN);
        let extensions = group.extensions();
        assert_eq!(extensions.external_senders().map(Vec::len), Some(1));
        assert!(extensions
            .required_capabilities()
            .expect("RequiredCapabilities")
            .extension_types()
            .contains(&ExtensionType::Unknown(ROOM_POLICY_EXTENSION)));
        self.group = Some(group);
    }

    /// A commit by another member, relayed by the delivery service: process and apply it.
    fn process_commit(&mut self, bytes: &[u8]) {
        let group = self.group.as_mut().expect("commits go to members only");
        let processed = group
            .process_message(&self.provider, public_message(bytes))
            .unwrap_or_else(|e| panic!("openmls refused a commit of the Conclave group: {e:?}"));
        match processed.into_content() {
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                if !staged.self_removed() {
                    assert!(
                        staged.update_path_leaf_node().is_some(),
                        "a Conclave commit without an update path"
                    );
                }
                // (A commit that wins over a pending one of ours replaces it: merging clears
                // our pending commit, as Conclave's clients drop theirs.)
                group
                    .merge_staged_commit(&self.provider, *staged)
                    .expect("the commit applies");
            }
            other => panic!("expected a commit, got {other:?}"),
        }
    }

    /// A proposal relayed by the delivery service: a member leaving, or the server removing a
    /// vanished member. Kept for the next commit (the commit refers to it).
    fn process_proposal(&mut self, bytes: &[u8]) {
        let group = self.group.as_mut().expect("proposals go to members only");
        let processed = group
            .process_message(&self.provider, public_message(bytes))
            .unwrap_or_else(|e| panic!("openmls refused a proposal of the Conclave group: {e:?}"));
        match processed.into_content() {
            ProcessedMessageContent::ProposalMessage(p) => {
                assert!(
                    conclave_allows(&p),
                    "Conclave members and the server only propose removals: {:?}",
                    p.proposal()
                );
                group
                    .store_pending_proposal(self.provider.storage(), *p)
                    .expect("stored");
            }
            other => panic!("expected a proposal, got {other:?}"),
        }
    }

    /// The delivery service asks olaf to commit on `epoch`: the adds of `knocks` (as far as
    /// the room's policy lets him) and every pending proposal, with an update path.
    fn commit_requested(&mut self, net: &mut Net, epoch: u64, knocks: &[KnockInfo]) {
        if self.left {
            return;
        }
        let adds = self.admissible_key_packages(knocks);
        let group = self
            .group
            .as_mut()
            .expect("commit requests go to members only");
        if group.epoch().as_u64() != epoch || group.pending_commit().is_some() {
            return;
        }
        if adds.is_empty() && !group.has_pending_proposals() && !knocks.is_empty() {
            // Nothing olaf may admit: do not burn an epoch (as Conclave's clients do).
            return;
        }
        let bundle = group
            .commit_builder()
            .consume_proposal_store(true)
            .force_self_update(true)
            .propose_adds(adds)
            .load_psks(self.provider.storage())
            .expect("no PSKs")
            .build(
                self.provider.rand(),
                self.provider.crypto(),
                &self.signer,
                conclave_allows,
            )
            .expect("the commit builds")
            .stage_commit(&self.provider)
            .expect("the commit stages");
        let commit = bundle.commit().to_bytes().expect("encodes");
        let welcome = bundle
            .to_welcome_msg()
            .map(|w| w.to_bytes().expect("encodes"));
        self.send_commit(net, epoch, commit, welcome);
    }

    /// The KeyPackages of `knocks` that olaf may add: in an open room every valid one of the
    /// room's suite carrying a Conclave credential (one per device). olaf is no host, so in a
    /// lobby he adds nobody; invite-list rooms would need him to verify invites (the 0xF0C2
    /// KeyPackage extension), which this test does not implement, so he adds nobody there.
    fn admissible_key_packages(&self, knocks: &[KnockInfo]) -> Vec<KeyPackage> {
        let Some(group) = self.group.as_ref() else {
            return Vec::new();
        };
        if room_policy(group).map(|(_, a)| a) != Some(ADMISSION_OPEN) {
            return Vec::new();
        }
        let mut out: Vec<KeyPackage> = Vec::new();
        for k in knocks {
            let Ok(msg) = MlsMessageIn::tls_deserialize_exact(&k.key_package.0) else {
                continue;
            };
            let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
                continue;
            };
            let Ok(kp) = kp.validate(self.provider.crypto(), ProtocolVersion::Mls10) else {
                continue;
            };
            let conclave = BasicCredential::try_from(kp.leaf_node().credential().clone())
                .ok()
                .and_then(|b| decode_credential(b.identity()));
            let key = kp.leaf_node().signature_key().as_slice();
            let duplicate = out
                .iter()
                .any(|o| o.leaf_node().signature_key().as_slice() == key);
            if kp.ciphersuite() == group.ciphersuite() && conclave.is_some() && !duplicate {
                out.push(kp);
            }
        }
        out
    }

    /// A self-update: a commit with nothing but an update path (post-compromise security),
    /// sent without being asked; the delivery service decides whether it wins the epoch.
    fn self_update(&mut self, net: &mut Net) {
        let group = self.group.as_mut().expect("olaf is in the group");
        let epoch = group.epoch().as_u64();
        let bundle = group
            .self_update(&self.provider, &self.signer, LeafNodeParameters::default())
            .expect("the self-update builds");
        let commit = bundle.commit().to_bytes().expect("encodes");
        self.send_commit(net, epoch, commit, None);
    }

    /// Sends our staged commit; it stays pending until `CommitAccepted`.
    fn send_commit(
        &mut self,
        net: &mut Net,
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
    ) {
        let pending = self.group().pending_commit().expect("a staged commit");
        assert!(
            pending.update_path_leaf_node().is_some(),
            "every commit carries a path"
        );
        let wire = MlsMessageIn::tls_deserialize_exact(&commit).expect("decodes");
        assert!(
            matches!(wire.extract(), MlsMessageBodyIn::PublicMessage(_)),
            "handshake messages are public messages"
        );
        send(
            net,
            MembershipMsg::Commit {
                epoch,
                commit: Bytes(commit),
                welcome: welcome.map(Bytes),
            },
        );
    }

    /// Our commit won `epoch - 1`: apply it.
    fn commit_accepted(&mut self, epoch: u64) {
        let group = self.group.as_mut().expect("olaf is in the group");
        let pending = group
            .pending_commit()
            .expect("a verdict on a pending commit");
        assert_eq!(group.epoch().as_u64() + 1, epoch);
        let removals = pending.remove_proposals().count();
        group
            .merge_pending_commit(&self.provider)
            .expect("our commit applies");
        self.accepted_commits += 1;
        self.removals_committed += removals;
    }

    /// Leaves cleanly: a Remove proposal of his own leaf, which the next committer commits.
    fn leave(&mut self, net: &mut Net) {
        let group = self.group.as_mut().expect("olaf is in the group");
        let proposal = group
            .leave_group(&self.provider, &self.signer)
            .expect("the leave proposal builds")
            .to_bytes()
            .expect("encodes");
        // openmls 0.9.2's leave_group queues (and sends) a plain RFC 9420 Remove of our own
        // leaf, which the delivery service treats as a leave.
        let own = group.own_leaf_index();
        assert!(group.pending_proposals().any(|p| matches!(
            (p.proposal(), p.sender()),
            (Proposal::Remove(r), Sender::Member(s)) if r.removed() == own && *s == own
        )));
        self.left = true;
        send(
            net,
            MembershipMsg::Proposal {
                proposal: Bytes(proposal),
            },
        );
    }
}

/// What a Conclave commit may carry by reference: removals (by a member leaving, or by the
/// server as external sender). Adds olaf puts in himself pass too; nothing else does.
fn conclave_allows(p: &QueuedProposal) -> bool {
    matches!(
        (p.proposal(), p.sender()),
        (Proposal::Remove(_), Sender::Member(_) | Sender::External(_))
            | (Proposal::Add(_), Sender::Member(_))
    )
}

/// A handshake message from the delivery service, which is always an MLS public message.
fn public_message(bytes: &[u8]) -> ProtocolMessage {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .expect("decodes")
        .try_into_protocol_message()
        .expect("a protocol message");
    assert!(
        matches!(message, ProtocolMessage::PublicMessage(_)),
        "Conclave handshake messages are public messages"
    );
    message
}

fn send(net: &mut Net, msg: MembershipMsg) {
    let now = net.now;
    net.ds.handle(OLAF, msg, now);
}

/// olaf handles everything the server sent him since the last call; whether there was any.
fn olaf_step(net: &mut Net, olaf: &mut Olaf) -> bool {
    let new: Vec<ServerMsg> = net
        .seen
        .get(&OLAF)
        .map_or_else(Vec::new, |all| all[olaf.seen..].to_vec());
    olaf.seen += new.len();
    let any = !new.is_empty();
    for msg in new {
        olaf.handle(net, msg);
    }
    any
}

/// Runs the room (the mls-rs members are driven by the harness) and olaf until quiet.
fn run(net: &mut Net, olaf: &mut Olaf) {
    for _ in 0..100 {
        net.settle();
        if !olaf_step(net, olaf) {
            return;
        }
    }
    panic!("the room never went quiet");
}

fn wall_clock() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    Timestamp::from_millis(u64::try_from(ms).expect("before year 500 million"))
}

fn roster_of(net: &mut Net, conn: ConnId) -> Vec<RosterLine> {
    net.p(conn)
        .roster()
        .into_iter()
        .map(|e| (e.leaf, e.user_id, e.display_name, e.fingerprint.0))
        .collect()
}

/// Every mls-rs member in `conns`, olaf and the delivery service are at the same epoch, and
/// the members' security codes are olaf's (computed by hand from openmls's authenticator).
fn assert_codes_agree(net: &mut Net, olaf: &Olaf, conns: &[ConnId]) {
    let code = olaf.security_code();
    assert_eq!(code.len(), 6 * 5 + 5, "{code}");
    assert_eq!(net.ds.epoch("room"), Some(olaf.epoch()));
    for &c in conns {
        assert_eq!(net.alarms(c), 0, "alarms at {c}: {:?}", net.events_of(c));
        assert_eq!(net.p(c).epoch(), Some(olaf.epoch()), "epoch of {c}");
        let theirs = net.p(c).security_code().expect("in the group");
        assert_eq!(
            theirs.as_str(),
            code,
            "conn {c} (mls-rs) and olaf (openmls) disagree in epoch {}",
            olaf.epoch()
        );
    }
}

#[test]
fn an_openmls_member_follows_a_conclave_group_through_joins_leaves_updates_and_its_own_commits() {
    let mut net = Net::new();
    // openmls checks KeyPackage lifetimes against the wall clock only (see the module
    // comment): run the simulated clock from the wall clock, not from the harness's T0.
    net.now = wall_clock();

    // 1. ada (mls-rs) creates the open room's group.
    net.join(ConnId(1), "ada", NewRoomPolicy::Open, AdmitMode::Auto);
    assert_eq!(net.ds.member_count("room"), 1);

    // 2-3. olaf connects (the server checked his token naming "olaf"), knocks with his
    // openmls KeyPackage when the server says hello, is added by ada's commit and joins from
    // the Welcome and the tree the server serves.
    let mut olaf = Olaf::new("olaf", "Olaf (openmls)");
    net.ds.connect(OLAF, "room", "olaf", net.now);
    run(&mut net, &mut olaf);
    assert!(
        olaf.group.is_some(),
        "olaf was not welcomed: {:?}",
        net.seen.get(&OLAF)
    );
    assert_eq!(net.ds.member_count("room"), 2);

    // 4. Same security code; same roster on both sides (so olaf's credential reads on mls-rs
    // as he wrote it, and ada's reads on openmls).
    assert_codes_agree(&mut net, &olaf, &[ConnId(1)]);
    let roster = olaf.roster();
    assert_eq!(roster_of(&mut net, ConnId(1)), roster);
    assert!(roster.contains(&(
        olaf.group().own_leaf_index().u32(),
        "olaf".to_owned(),
        "Olaf (openmls)".to_owned(),
        olaf.fingerprint()
    )));

    // 5. bea (mls-rs) joins; olaf follows the commit that adds her.
    net.join(ConnId(2), "bea", NewRoomPolicy::Open, AdmitMode::Auto);
    run(&mut net, &mut olaf);
    assert_eq!(net.ds.member_count("room"), 3);
    assert_codes_agree(&mut net, &olaf, &[ConnId(1), ConnId(2)]);
    assert_eq!(roster_of(&mut net, ConnId(2)), olaf.roster());
    let users: Vec<String> = olaf.roster().into_iter().map(|l| l.1).collect();
    assert_eq!(users, ["ada", "olaf", "bea"]);

    // 6. ada refreshes her leaf; olaf follows.
    let epoch = olaf.epoch();
    let now = net.now;
    net.p(ConnId(1)).self_update(now).unwrap();
    run(&mut net, &mut olaf);
    assert_eq!(olaf.epoch(), epoch + 1);
    assert_codes_agree(&mut net, &olaf, &[ConnId(1), ConnId(2)]);

    // 7. olaf refreshes his: an openmls commit with only an update path. The delivery service
    // accepts it and ada and bea (mls-rs) apply it.
    let epoch = olaf.epoch();
    olaf.self_update(&mut net);
    run(&mut net, &mut olaf);
    assert_eq!(olaf.accepted_commits, 1);
    assert_eq!(olaf.epoch(), epoch + 1);
    assert_codes_agree(&mut net, &olaf, &[ConnId(1), ConnId(2)]);

    // 8. bea leaves cleanly (a Remove of her own leaf). ada is slow this time: the server's
    // requests to her go unanswered (withheld here), so after the commit timeout (5 s) the
    // delivery service asks olaf, who commits bea's proposal with an update path.
    net.rewrite.insert(
        ConnId(1),
        Box::new(|m| match m {
            ServerMsg::CommitRequest { .. } => vec![],
            m => vec![m],
        }),
    );
    net.p(ConnId(2)).leave().unwrap();
    run(&mut net, &mut olaf);
    if net.ds.member_count("room") == 3 {
        net.advance(Duration::from_secs(6));
        run(&mut net, &mut olaf);
    }
    net.rewrite.remove(&ConnId(1));
    assert_eq!(net.ds.member_count("room"), 2);
    assert_eq!(olaf.accepted_commits, 2);
    assert_eq!(olaf.removals_committed, 1, "olaf committed bea's removal");
    assert!(
        net.closed.contains(&ConnId(2)),
        "bea is disconnected once removed"
    );
    assert_codes_agree(&mut net, &olaf, &[ConnId(1)]);
    let roster = olaf.roster();
    assert_eq!(roster_of(&mut net, ConnId(1)), roster);
    assert!(roster.iter().all(|l| l.1 != "bea"));

    // 9. olaf leaves cleanly: openmls's leave_group, a Remove of his own leaf, committed by
    // ada (the delivery service never asks a leaving member).
    let epoch = olaf.epoch();
    olaf.leave(&mut net);
    run(&mut net, &mut olaf);
    assert!(
        !olaf.group().is_active(),
        "olaf's group knows he was removed"
    );
    assert_eq!(net.ds.member_count("room"), 1);
    assert_eq!(net.p(ConnId(1)).epoch(), Some(epoch + 1));
    assert_eq!(net.alarms(ConnId(1)), 0, "{:?}", net.events_of(ConnId(1)));
    let ada_roster = roster_of(&mut net, ConnId(1));
    assert_eq!(ada_roster.len(), 1);
    assert_eq!(ada_roster[0].1, "ada");
    assert!(
        net.closed.contains(&OLAF),
        "olaf is disconnected once removed"
    );
    assert_eq!(net.ds.stats().commits_rejected, 0);
}

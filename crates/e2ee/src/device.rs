//! A [`Device`]: a participant's identity and its MLS client, which makes KeyPackages and
//! creates, joins and reloads the [`Session`]s of its rooms' groups. A joiner checks the group
//! it is welcomed into here (`Device::check_welcome`).

use std::fmt;

use mls_rs::error::MlsError;
use mls_rs::extension::built_in::{ExternalSendersExt, RequiredCapabilitiesExt};
use mls_rs::group::ExportedTree;
use mls_rs::identity::SigningIdentity;
use mls_rs::{Client, ExtensionList, Group};
use mls_rs_codec::MlsEncode;
use zeroize::Zeroizing;

use conclave_mls::{
    check_member_listed, policy_of, provider, Admission, ConclaveIdentityProvider, ConclaveRules,
    Fingerprint, HostReturn, Invite, PolicyViolation, RoomCipherSuite, RoomPolicy, Timestamp,
    HOST_RETURN_EXTENSION, INVITE_EXTENSION, ROOM_POLICY_EXTENSION,
};

use crate::error::{Error, Result};
use crate::host_return::ReturnKeys;
use crate::identity::DeviceIdentity;
use crate::session::{map_mls, parse_message, to_bytes, Config, Session, MAX_TREE_LEN};
use crate::storage::GroupStore;

/// How far back a KeyPackage's lifetime starts: devices' clocks differ, and a KeyPackage whose
/// lifetime starts even a second after another member's clock is refused there as "not valid
/// yet" (mls-rs and openmls both check it against the checker's clock). One hour, as openmls
/// back-dates its own.
pub const KEY_PACKAGE_BACKDATE: core::time::Duration = core::time::Duration::from_secs(3600);
/// How long a KeyPackage stays valid after it was made.
pub const KEY_PACKAGE_VALIDITY: core::time::Duration = core::time::Duration::from_secs(24 * 3600);
/// A device: its identity and its MLS client.
pub struct Device {
    identity: DeviceIdentity,
    client: Client<Config>,
    /// Return secrets of the lobby groups this device is in or was in (module `host_return`).
    returns: ReturnKeys,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A device with `identity`, keeping group state in `store`.
    pub fn new(identity: DeviceIdentity, store: GroupStore) -> Result<Self> {
        Self::build(identity, store, ConclaveRules::default())
    }

    /// A device that neither enforces nor checks the room's admission policy: what a malicious
    /// member would run. Only for adversarial tests, which use it to build commits that honest
    /// members must reject.
    #[doc(hidden)]
    pub fn danger_without_policy_checks(
        identity: DeviceIdentity,
        store: GroupStore,
    ) -> Result<Self> {
        Self::build(identity, store, ConclaveRules { enforce: false })
    }

    fn build(identity: DeviceIdentity, store: GroupStore, rules: ConclaveRules) -> Result<Self> {
        let signing_identity = identity.signing_identity()?;
        let returns = ReturnKeys::default();
        let client = Client::builder()
            .crypto_provider(provider())
            .identity_provider(ConclaveIdentityProvider)
            .mls_rules(rules)
            .group_state_storage(store)
            .psk_store(returns.clone())
            .extension_type(ROOM_POLICY_EXTENSION)
            .extension_type(INVITE_EXTENSION)
            .extension_type(HOST_RETURN_EXTENSION)
            .key_package_lifetime(KEY_PACKAGE_BACKDATE + KEY_PACKAGE_VALIDITY)
            .signing_identity(
                signing_identity,
                identity.secret_key().clone(),
                identity.suite().mls(),
            )
            .build();
        Ok(Device {
            identity,
            client,
            returns,
        })
    }

    /// This device's identity.
    pub fn identity(&self) -> &DeviceIdentity {
        &self.identity
    }

    /// A fresh single-use KeyPackage (MLS message bytes) to upload when knocking, carrying
    /// `invite` for invite-list rooms.
    pub fn key_package(&self, invite: Option<&Invite>, now: Timestamp) -> Result<Vec<u8>> {
        self.key_package_with(invite, None, now)
    }

    /// A KeyPackage carrying `invite` (in the KeyPackage, and in its leaf, where every later
    /// joiner can check it) and a lobby host's `ticket` back into the group it hosted
    /// ([`Device::return_ticket`]).
    pub fn key_package_with(
        &self,
        invite: Option<&Invite>,
        ticket: Option<&HostReturn>,
        now: Timestamp,
    ) -> Result<Vec<u8>> {
        let mut kp_ext = ExtensionList::new();
        let mut leaf_ext = ExtensionList::new();
        if let Some(invite) = invite {
            kp_ext.set_from(invite.clone()).map_err(Error::mls)?;
            leaf_ext.set_from(invite.clone()).map_err(Error::mls)?;
        }
        if let Some(ticket) = ticket {
            kp_ext.set_from(ticket.clone()).map_err(Error::mls)?;
        }
        let msg = self
            .client
            .generate_key_package_message(
                kp_ext,
                leaf_ext,
                Some(now.saturating_back(KEY_PACKAGE_BACKDATE).into()),
            )
            .map_err(map_mls)?;
        to_bytes(&msg)
    }

    /// If this device hosted a lobby group of `room` and keeps the secret of the last epoch
    /// it saw there: the ticket to put in its KeyPackage so that a member who is not a host
    /// can add it back ([`conclave_mls::HostReturn`]).
    pub fn return_ticket(&self, room: &str) -> Option<HostReturn> {
        self.returns.ticket(room.as_bytes())
    }

    /// Creates the group of a room (this device becomes its first member), with `policy` in
    /// the group context and the server's key as the only external sender (so it can propose
    /// removals of members that vanish, and nothing else).
    pub fn create_room(
        &self,
        policy: RoomPolicy,
        server: Option<SigningIdentity>,
        now: Timestamp,
    ) -> Result<Session> {
        self.create(policy, server, None, now)
    }

    /// A group with a group id of the caller's choosing (a copy of another group's, say): only
    /// for adversarial tests of what a server's own device could make.
    #[doc(hidden)]
    pub fn danger_create_room_with_group_id(
        &self,
        policy: RoomPolicy,
        group_id: Vec<u8>,
        now: Timestamp,
    ) -> Result<Session> {
        self.create(policy, None, Some(group_id), now)
    }

    /// Puts a return secret of the caller's choosing in this device's store: only for
    /// adversarial tests (a server's device that guesses the secret of the real group).
    #[doc(hidden)]
    pub fn danger_keep_return_secret(&self, ticket: &HostReturn, room: &str, secret: Vec<u8>) {
        self.returns.record(
            &ticket.group_id,
            room.as_bytes(),
            false,
            ticket.epoch,
            Zeroizing::new(secret),
            Vec::new(),
            false,
        );
    }

    fn create(
        &self,
        policy: RoomPolicy,
        server: Option<SigningIdentity>,
        group_id: Option<Vec<u8>>,
        now: Timestamp,
    ) -> Result<Session> {
        policy.check_size()?;
        let mut ext = ExtensionList::new();
        ext.set_from(policy.clone()).map_err(Error::mls)?;
        ext.set_from(RequiredCapabilitiesExt::new(
            vec![ROOM_POLICY_EXTENSION],
            vec![],
            vec![],
        ))
        .map_err(Error::mls)?;
        if let Some(server) = server {
            ext.set_from(ExternalSendersExt::new(vec![server]))
                .map_err(Error::mls)?;
        }
        let group = match group_id {
            None => self
                .client
                .create_group(ext, ExtensionList::new(), Some(now.into())),
            Some(id) => {
                self.client
                    .create_group_with_id(id, ext, ExtensionList::new(), Some(now.into()))
            }
        }
        .map_err(map_mls)?;
        Session::new(group, self.identity.suite(), policy, self.returns.clone())
    }

    /// Joins from a Welcome, with the ratchet tree served out of band. mls-rs checks the tree
    /// against the tree hash in the GroupInfo that the committer signed; we also check that the
    /// group is the room we knocked on.
    pub fn join(
        &self,
        expected_room: &str,
        welcome: &[u8],
        tree: &[u8],
        now: Timestamp,
    ) -> Result<Session> {
        self.join_held_to(expected_room, None, welcome, tree, now)
    }

    /// [`Device::join`], refusing ([`Error::NotTheCharter`]) a group whose policy is not
    /// `charter`, before anything of the group is kept.
    pub fn join_held_to(
        &self,
        expected_room: &str,
        charter: Option<&RoomPolicy>,
        welcome: &[u8],
        tree: &[u8],
        now: Timestamp,
    ) -> Result<Session> {
        let welcome = parse_message(welcome)?;
        if tree.len() > MAX_TREE_LEN {
            return Err(Error::Tree(format!("{} bytes is too large", tree.len())));
        }
        let tree = ExportedTree::from_bytes(tree).map_err(|e| Error::Tree(e.to_string()))?;
        // A host returning to its group names this ticket (the newest epoch it kept of the
        // room's group); which return secrets mls-rs reads while it processes this Welcome,
        // and only those.
        let ticket = self.returns.ticket(expected_room.as_bytes());
        self.returns.take_used();
        let joined = self
            .client
            .join_group(Some(tree), &welcome, Some(now.into()))
            .map_err(|e| match e {
                MlsError::TreeHashMismatch => Error::Tree(e.to_string()),
                other => map_mls(other),
            });
        let used = self.returns.take_used();
        let (group, info) = joined?;
        let policy = policy_of(&group.context().extensions)?;
        if policy.room_id != expected_room.as_bytes() {
            return Err(Error::Policy(PolicyViolation::MissingPolicy))
                .or(Err(Error::Usage("the Welcome is for another room")));
        }
        if charter.is_some_and(|c| *c != policy) {
            return Err(Error::NotTheCharter {
                offered: Box::new(policy),
            });
        }
        let suite = RoomCipherSuite::from_mls(group.cipher_suite())
            .ok_or(PolicyViolation::UnsupportedSuite)?;
        let welcomed = Welcomed {
            sender: info.sender,
            ticket: ticket.as_ref(),
            used: &used,
        };
        self.check_welcome(&group, &policy, suite, welcomed)?;
        Session::new(group, suite, policy, self.returns.clone())
    }

    /// What a joiner checks of the group it is welcomed into, beyond what mls-rs checked (the
    /// tree against the signed GroupInfo, the committer's signature):
    /// - in a lobby, the member who added it is a host; or this device is a host, the Welcome
    ///   used exactly the return PSK of the ticket it knocked with, and every member of the
    ///   group was a member in that epoch (a member who helps the server cannot bring in the
    ///   server's devices);
    /// - in an invite-list room, every member is a host, listed, or invited.
    ///
    /// So a group a server's device made with the charter's exact policy cannot take anyone
    /// in: its device is no host and on no list, and knows no secret of the real group.
    fn check_welcome(
        &self,
        group: &Group<Config>,
        policy: &RoomPolicy,
        suite: RoomCipherSuite,
        welcomed: Welcomed<'_>,
    ) -> Result<()> {
        let adder = group
            .member_at_index(welcomed.sender)
            .ok_or(Error::Usage("the Welcome's committer is not in the group"))?;
        match &policy.admission {
            Admission::Open => Ok(()),
            Admission::Lobby(_) => {
                if policy.is_host(&adder.signing_identity.signature_key) {
                    return Ok(());
                }
                let adder = Fingerprint::of_key(suite, &adder.signing_identity.signature_key)?;
                if !policy.is_host(self.identity.public_key()) {
                    return Err(Error::Policy(PolicyViolation::NotAHost { adder }));
                }
                let unproven = Error::Policy(PolicyViolation::ReturnUnproven { adder });
                let Some(ticket) = welcomed.ticket.filter(|t| t.group_id == group.group_id())
                else {
                    return Err(unproven);
                };
                let exact = !welcomed.used.is_empty() && welcomed.used.iter().all(|u| u == ticket);
                let Some(roster) = self.returns.roster_of(ticket).filter(|_| exact) else {
                    return Err(unproven);
                };
                // Each member as it was then, key and credential alike (a member helping the
                // server cannot come back under another name).
                let me = self.identity.public_key().as_bytes();
                let strangers = group.roster().members_iter().any(|m| {
                    let was = m.signing_identity.mls_encode_to_vec().unwrap_or_default();
                    m.signing_identity.signature_key.as_bytes() != me && !roster.contains(&was)
                });
                if strangers {
                    return Err(unproven);
                }
                Ok(())
            }
            Admission::InviteList(_) => {
                for m in group.roster().members_iter() {
                    check_member_listed(suite, policy, &m.signing_identity, &m.extensions)?;
                }
                Ok(())
            }
        }
    }

    /// Reloads a group written by [`Session::save`] (after a restart). It gives no media keys
    /// until its next epoch ([`Session::epoch_secrets`]): the SFrame counters of the epoch it
    /// was saved in are gone, and restarting them would reuse nonces.
    pub fn load(&self, group_id: &[u8]) -> Result<Session> {
        let group = self
            .client
            .load_group(group_id)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let policy = policy_of(&group.context().extensions)?;
        let suite = RoomCipherSuite::from_mls(group.cipher_suite())
            .ok_or(PolicyViolation::UnsupportedSuite)?;
        let mut session = Session::new(group, suite, policy, self.returns.clone())?;
        session.reloaded_in = Some(session.epoch());
        Ok(session)
    }
}

/// What a joiner knows of how it was welcomed, for [`Device::check_welcome`].
struct Welcomed<'a> {
    /// The committer's leaf.
    sender: u32,
    /// The return ticket this device knocked with, if any.
    ticket: Option<&'a HostReturn>,
    /// The return PSKs mls-rs read to process the Welcome.
    used: &'a [HostReturn],
}

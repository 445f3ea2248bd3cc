//! Shared test scaffolding: devices, an in-memory stand-in for the delivery service's ordering
//! (apply a commit at its author, process it everywhere else), and a server external sender.
#![allow(dead_code, unreachable_pub)]

use conclave_e2ee::*;
use mls_rs::external_client::ExternalClient;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::identity::SigningIdentity;
use mls_rs::{CipherSuiteProvider, CryptoProvider, MlsMessage};

pub const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
pub const SUITE: RoomCipherSuite = RoomCipherSuite::Curve25519Aes128;

pub fn device(name: &str) -> Device {
    device_in(name, SUITE)
}

pub fn device_in(name: &str, suite: RoomCipherSuite) -> Device {
    let id = DeviceIdentity::generate(suite, CredentialInfo::new(name, name).unwrap()).unwrap();
    Device::new(id, GroupStore::memory()).unwrap()
}

/// A room: devices and their sessions (None until joined or after removal).
pub struct Room {
    pub devices: Vec<Device>,
    pub sessions: Vec<Option<Session>>,
}

impl Room {
    /// `n` members in an open room, member 0 the creator, everyone joined.
    pub fn open(n: usize) -> Room {
        Self::with_policy(n, |_| RoomPolicy::open("room"), None)
    }

    pub fn with_policy(
        n: usize,
        policy: impl FnOnce(&Device) -> RoomPolicy,
        server: Option<SigningIdentity>,
    ) -> Room {
        let creator = device("m0");
        let session = creator.create_room(policy(&creator), server, T0).unwrap();
        let mut room = Room {
            devices: vec![creator],
            sessions: vec![Some(session)],
        };
        if n > 1 {
            let joiners: Vec<Device> = (1..n).map(|i| device(&format!("m{i}"))).collect();
            room.add(0, joiners);
        }
        room
    }

    pub fn s(&mut self, i: usize) -> &mut Session {
        self.sessions[i].as_mut().expect("member is in the group")
    }

    /// Member `committer` adds `joiners` in one commit; everyone processes it; joiners join.
    /// Returns the indices of the joiners.
    pub fn add(&mut self, committer: usize, joiners: Vec<Device>) -> Vec<usize> {
        let kps: Vec<_> = joiners
            .iter()
            .map(|d| d.key_package(None, T0).unwrap())
            .collect();
        let bundle = self.s(committer).commit(&kps, &[], T0).unwrap();
        self.deliver(committer, &bundle.commit);
        let welcome = bundle.welcome.clone().unwrap();
        let mut idx = Vec::new();
        for d in joiners {
            let s = d.join("room", &welcome, &bundle.ratchet_tree, T0).unwrap();
            self.devices.push(d);
            self.sessions.push(Some(s));
            idx.push(self.devices.len() - 1);
        }
        idx
    }

    /// The DS accepted `commit` from `committer`: it confirms, the others process.
    pub fn deliver(&mut self, committer: usize, commit: &[u8]) {
        self.s(committer).confirm_commit().unwrap();
        for (i, s) in self.sessions.iter_mut().enumerate() {
            if i == committer {
                continue;
            }
            if let Some(s) = s {
                match s.process(commit, T0).unwrap() {
                    Incoming::Commit { change, .. } if change.removed_self => {}
                    Incoming::Commit { .. } => {}
                    other => panic!("expected a commit, got {other:?}"),
                }
            }
        }
        // Drop sessions of members that were removed.
        for s in self.sessions.iter_mut() {
            if s.as_ref()
                .is_some_and(|s| !s.member_leaves().contains(&s.own_leaf()))
            {
                *s = None;
            }
        }
    }

    /// Member `committer` removes the members at `victims` (room indices).
    pub fn remove(&mut self, committer: usize, victims: &[usize]) {
        let leaves: Vec<u32> = victims.iter().map(|&v| self.s(v).own_leaf()).collect();
        let bundle = self.s(committer).commit(&[], &leaves, T0).unwrap();
        let mut removed: Vec<Session> = Vec::new();
        for &v in victims {
            removed.push(self.sessions[v].take().unwrap());
        }
        self.deliver(committer, &bundle.commit);
        // The removed members process their own removal (they learn they are out).
        for mut s in removed {
            if let Ok(Incoming::Commit { change, .. }) = s.process(&bundle.commit, T0) {
                assert!(change.removed_self);
            }
        }
    }

    pub fn codes(&self) -> Vec<SecurityCode> {
        self.sessions
            .iter()
            .flatten()
            .map(|s| s.security_code().unwrap())
            .collect()
    }

    pub fn media(&mut self, i: usize) -> MediaCrypto {
        let mut m = MediaCrypto::default();
        m.install_epoch(self.s(i).epoch_secrets().unwrap(), T0)
            .unwrap();
        m
    }
}

/// The server's key, as a room's external sender.
pub fn server_identity() -> (SigningIdentity, mls_rs_core::crypto::SignatureSecretKey) {
    let cs = mls_rs_crypto_awslc::AwsLcCryptoProvider::default()
        .cipher_suite_provider(SUITE.mls())
        .unwrap();
    let (secret, public) = cs.signature_key_generate().unwrap();
    let cred = BasicCredential::new(b"conclave-server".to_vec()).into_credential();
    (SigningIdentity::new(cred, public), secret)
}

pub fn external_client(
    identity: SigningIdentity,
    secret: mls_rs_core::crypto::SignatureSecretKey,
) -> ExternalClient<impl mls_rs::external_client::builder::MlsConfig> {
    ExternalClient::builder()
        .crypto_provider(mls_rs_crypto_awslc::AwsLcCryptoProvider::default())
        .identity_provider(BasicIdentityProvider)
        .extension_type(ROOM_POLICY_EXTENSION)
        .signer(secret, identity)
        .build()
}

pub fn msg(bytes: &[u8]) -> MlsMessage {
    MlsMessage::from_bytes(bytes).unwrap()
}

/// The same frame with its SFrame header's KID replaced (what an attacker can do on the wire).
pub fn rewrite_kid(wire: &[u8], clear_len: usize, new_kid: u64) -> Vec<u8> {
    use sframe::header::SframeHeader;
    let (prefix, rest) = wire.split_at(clear_len);
    let header = SframeHeader::deserialize(rest).unwrap();
    let new = SframeHeader::new(new_kid, header.counter());
    [prefix, &Vec::from(&new), &rest[header.len()..]].concat()
}

/// KID of `leaf` in `epoch`.
pub fn kid_of(leaf: u32, epoch: u64) -> u64 {
    media::kid(leaf, epoch)
}

/// `d` joins "room" from the Welcome and ratchet tree of `bundle`.
pub fn join_by(d: &Device, bundle: &CommitBundle, now: Timestamp) -> Result<Session, Error> {
    let welcome = bundle.welcome.as_ref().expect("the commit has a Welcome");
    d.join("room", welcome, &bundle.ratchet_tree, now)
}

//! Knocks as a lobby host sees them, and the commits a member builds when the delivery
//! service asks: who is added (only what the person approved, in a lobby), and a host's way
//! back into its own group.

use conclave_e2ee::{Admission, Fingerprint, KeyPackageCard, Timestamp};
use conclave_proto::{Bytes, KnockId, KnockInfo, MembershipMsg};
use tracing::{debug, info};

use crate::trust::key_changed;
use crate::{AdmitMode, Error, Event, Participant};

/// Most knocks a participant keeps waiting for a decision (each KeyPackage is at most
/// [`conclave_e2ee::MAX_KEY_PACKAGE_LEN`] bytes, so at most 8 MiB in all).
pub const MAX_PENDING_KNOCKS: usize = 1024;

/// A knock as this participant was shown it: who the KeyPackage itself says knocks (never the
/// server's description beside it), and the exact KeyPackage an approval admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingKnock {
    /// The server's number for the knock (what [`Participant::admit`] takes).
    pub knock: KnockId,
    /// User id from the KeyPackage's credential.
    pub user_id: String,
    /// Display name from the KeyPackage's credential.
    pub name: String,
    /// Fingerprint of the knocking device's key.
    pub fingerprint: Fingerprint,
}

#[derive(Clone, Debug)]
pub(crate) struct Knock {
    pub(crate) card: KeyPackageCard,
    pub(crate) key_package: Vec<u8>,
}

/// Knock numbers a host is done with. The delivery service numbers knocks upwards and never
/// reuses one; this keeps the last [`RETIRED_KNOCKS`] and refuses every number at or below
/// the ones it let go.
#[derive(Debug, Default)]
pub(crate) struct RetiredKnocks {
    ids: std::collections::BTreeSet<KnockId>,
    floor: Option<KnockId>,
}

/// Retired knock numbers kept one by one (beyond that, a floor).
const RETIRED_KNOCKS: usize = 4096;

impl RetiredKnocks {
    pub(crate) fn insert(&mut self, id: KnockId) {
        self.ids.insert(id);
        while self.ids.len() > RETIRED_KNOCKS {
            if let Some(low) = self.ids.pop_first() {
                self.floor = Some(self.floor.map_or(low, |f| f.max(low)));
            }
        }
    }

    pub(crate) fn contains(&self, id: KnockId) -> bool {
        self.ids.contains(&id) || self.floor.is_some_and(|f| id <= f)
    }
}

impl Participant {
    /// Knocks waiting for this host's decision.
    pub fn pending_knocks(&self) -> Vec<PendingKnock> {
        self.knocks
            .iter()
            .filter(|(_, k)| !self.is_approved(&k.card))
            .map(|(&knock, k)| PendingKnock {
                knock,
                user_id: k.card.credential.user_id.clone(),
                name: k.card.credential.display_name.clone(),
                fingerprint: k.card.fingerprint,
            })
            .collect()
    }

    fn is_approved(&self, card: &KeyPackageCard) -> bool {
        self.approved.iter().any(|(d, _)| *d == card.digest)
    }

    /// The host admits a knock: the exact KeyPackage it was shown under that knock (never
    /// another one the server sends later under the same number), once. Commits the add now,
    /// with any other approved knocks and pending proposals; if a commit is already in flight,
    /// the add goes into the next one.
    pub fn admit(&mut self, knock: KnockId, now: Timestamp) -> Result<(), Error> {
        let Some(k) = self.knocks.get(&knock) else {
            return Err(Error::Unexpected(format!("no knock {knock}")));
        };
        if !self.is_approved(&k.card) {
            self.approved.push((k.card.digest, k.card.fingerprint));
        }
        let Some(epoch) = self.epoch() else {
            return Ok(());
        };
        let knocks: Vec<KnockInfo> = self
            .knocks
            .iter()
            .map(|(&knock, k)| KnockInfo {
                knock,
                user_id: k.card.credential.user_id.clone(),
                name: k.card.credential.display_name.clone(),
                key_package: Bytes(k.key_package.clone()),
            })
            .collect();
        self.commit_requested(epoch, knocks, now)
    }

    /// The host turns a knock away.
    pub fn deny(&mut self, knock: KnockId) {
        if let Some(k) = self.knocks.remove(&knock) {
            self.retired.insert(knock);
            self.approved.retain(|(d, _)| *d != k.card.digest);
        }
        self.out.push_back(MembershipMsg::Deny { knock });
    }

    /// Records a knock the first time its number is seen (later messages cannot change what
    /// the host was shown under it) and tells the UI who its KeyPackage says knocks.
    pub(crate) fn knocked(&mut self, knock: &KnockInfo) {
        if self.knocks.contains_key(&knock.knock) {
            return;
        }
        if self.retired.contains(knock.knock) {
            return self.alarm(format!(
                "the server sent knock {} again after it was done; ignored",
                knock.knock
            ));
        }
        if self.knocks.len() >= MAX_PENDING_KNOCKS {
            return self.alarm(format!(
                "more than {MAX_PENDING_KNOCKS} knocks waiting; knock {} dropped",
                knock.knock
            ));
        }
        let card = match KeyPackageCard::read(&knock.key_package.0) {
            Ok(card) => card,
            Err(e) => {
                return self.alarm(format!(
                    "knock {}: its KeyPackage is unusable: {e}",
                    knock.knock
                ))
            }
        };
        if card.credential.user_id != knock.user_id || card.credential.display_name != knock.name {
            self.alarm(format!(
                "the server described knock {} as {:?} ({:?}); its KeyPackage says {:?} ({:?}), which is shown",
                knock.knock,
                knock.name,
                knock.user_id,
                card.credential.display_name,
                card.credential.user_id
            ));
        }
        // A host sees a changed key before it admits, not after (a knock pins nothing).
        let pinned = self
            .trust
            .as_ref()
            .and_then(|t| t.pinned(&card.credential.user_id))
            .filter(|p| *p != card.fingerprint);
        if let Some(pinned) = pinned {
            self.alarm(key_changed(
                &card.credential.display_name,
                &card.credential.user_id,
                card.fingerprint,
                pinned,
            ));
        }
        self.events.push_back(Event::Knock {
            knock: knock.knock,
            user_id: card.credential.user_id.clone(),
            name: card.credential.display_name.clone(),
            fingerprint: card.fingerprint,
        });
        self.knocks.insert(
            knock.knock,
            Knock {
                card,
                key_package: knock.key_package.0.clone(),
            },
        );
    }

    pub(crate) fn commit_requested(
        &mut self,
        epoch: u64,
        knocks: Vec<KnockInfo>,
        now: Timestamp,
    ) -> Result<(), Error> {
        if self.left {
            return Ok(());
        }
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if s.epoch() != epoch || s.has_pending_commit() {
            return Ok(());
        }
        // Who decides on adds: in a lobby, a host's person (unless the host runs with
        // `AdmitMode::Auto`), and nobody else may add; elsewhere the policy alone.
        let (lobby, host) = match &s.policy().admission {
            Admission::Lobby(_) => (
                true,
                s.policy().is_host(self.device.identity().public_key()),
            ),
            _ => (false, false),
        };
        if lobby && host && self.admit_mode == AdmitMode::Ask {
            // A request sent before the DS saw our answer to a knock may still carry it:
            // that is a race, not the server showing a done knock again.
            for k in &knocks {
                if !self.retired.contains(k.knock) {
                    self.knocked(k);
                }
            }
        }
        if lobby && !host {
            // In a lobby only a host adds, but a member who is none may add back a host's own
            // device that proves this is its group (one per commit); otherwise it commits the
            // proposals alone.
            if let Some(bundle) = self.commit_returning_host(&knocks, now) {
                self.out.push_back(MembershipMsg::Commit {
                    epoch,
                    commit: Bytes(bundle.commit),
                    welcome: bundle.welcome.map(Bytes),
                });
                return Ok(());
            }
        }
        let Some(s) = self.session.as_ref() else {
            return Ok(());
        };
        let mut kps: Vec<Vec<u8>> = Vec::new();
        let mut devices: Vec<Fingerprint> = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        for k in &knocks {
            if lobby && !host {
                continue;
            }
            let card = match s.check_joiner(&k.key_package.0, now) {
                Ok(card) => card,
                Err(e) => {
                    refused.push(format!("knock {}: {e}", k.knock));
                    continue;
                }
            };
            // A lobby host adds only these exact bytes approved by its person (not whatever
            // the server now sends under the same knock number).
            let approved = self.approved.iter().any(|(d, _)| *d == card.digest);
            if lobby && self.admit_mode == AdmitMode::Ask && !approved {
                continue;
            }
            // One KeyPackage per device in one commit.
            if devices.contains(&card.fingerprint) {
                continue;
            }
            devices.push(card.fingerprint);
            kps.push(k.key_package.0.clone());
        }
        for reason in refused {
            self.alarm(format!("left out of the commit: {reason}"));
        }
        let Some(s) = self.session.as_mut() else {
            return Ok(());
        };
        if kps.is_empty() && s.pending_proposals() == 0 && !knocks.is_empty() {
            // Nothing we may admit yet (a host has not decided): do not burn an epoch.
            return Ok(());
        }
        match s.commit(&kps, &[], now) {
            Ok(bundle) => self.out.push_back(MembershipMsg::Commit {
                epoch,
                commit: Bytes(bundle.commit),
                welcome: bundle.welcome.map(Bytes),
            }),
            Err(e) => self.alarm(format!("could not build the requested commit: {e}")),
        }
        Ok(())
    }

    /// A commit adding back the first knocking host device whose KeyPackage names an epoch of
    /// this group this member keeps the secret of ([`Session::commit_host_return`]).
    fn commit_returning_host(
        &mut self,
        knocks: &[KnockInfo],
        now: Timestamp,
    ) -> Option<conclave_e2ee::CommitBundle> {
        let s = self.session.as_mut()?;
        for k in knocks {
            let is_host = KeyPackageCard::read(&k.key_package.0)
                .is_ok_and(|c| s.policy().is_host(&c.signature_key));
            if !is_host {
                continue;
            }
            match s.commit_host_return(&k.key_package.0, now) {
                Ok(bundle) => {
                    info!(knock = %k.knock, "adding back this lobby's host");
                    return Some(bundle);
                }
                Err(e) => debug!(knock = %k.knock, %e, "cannot add back the host"),
            }
        }
        None
    }
}

//! The secrets a device keeps so that a lobby host can come back into its own group (see
//! [`conclave_mls::HostReturn`] for the mechanism): for each lobby group it is in, the MLS
//! exporter secret of every epoch since the group's last add (at most
//! [`HOST_RETURN_WINDOW`]). They are the device's MLS external-PSK store, so mls-rs reads them
//! when it builds or processes a returning host's commit or Welcome; the store notes which it
//! was asked for, so that a returning host can tell whether its Welcome carried the proof.
//!
//! In memory only, and kept by the [`crate::Device`] across its sessions: a host whose
//! connection dropped returns with the same device (the native client and the browser worker
//! both keep it across reconnections). A process that restarts has none: it waits for another
//! host, or for the room to be started again.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use conclave_mls::{HostReturn, HOST_RETURN_WINDOW};
use mls_rs_core::psk::{ExternalPskId, PreSharedKey, PreSharedKeyStorage};
use zeroize::Zeroizing;

/// Lobby groups a device keeps return secrets for (the newest ones).
const MAX_GROUPS: usize = 8;

struct GroupKeys {
    group_id: Vec<u8>,
    room_id: Vec<u8>,
    /// Whether this device is a host of the group (only a host asks to return).
    host: bool,
    secrets: VecDeque<(u64, Zeroizing<Vec<u8>>)>,
    /// A host's: the members' signature keys in the newest epoch kept, to which a group it
    /// returns to must be limited (a member helping the server cannot bring its devices in).
    roster: Vec<Vec<u8>>,
}

#[derive(Default)]
struct Inner {
    groups: VecDeque<GroupKeys>,
    /// Return PSKs that mls-rs read since the last [`ReturnKeys::take_used`].
    used: Vec<HostReturn>,
}

/// A device's return secrets: cheap to clone (one shared store).
#[derive(Clone, Default)]
pub(crate) struct ReturnKeys(Arc<Mutex<Inner>>);

impl std::fmt::Debug for ReturnKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnKeys").finish_non_exhaustive()
    }
}

impl ReturnKeys {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // Nothing in here can leave the store half-written: a poisoned lock is still sound.
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut inner)
    }

    /// Notes the secret of `epoch` of a lobby group, and for a host its members' signature
    /// keys then (`roster`); `restart` first forgets the group's earlier epochs (the epoch
    /// added someone, who was not in them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        group_id: &[u8],
        room_id: &[u8],
        host: bool,
        epoch: u64,
        secret: Zeroizing<Vec<u8>>,
        roster: Vec<Vec<u8>>,
        restart: bool,
    ) {
        self.with(|inner| {
            let pos = inner.groups.iter().position(|g| g.group_id == group_id);
            let mut g = match pos.and_then(|i| inner.groups.remove(i)) {
                Some(g) => g,
                None => GroupKeys {
                    group_id: group_id.to_vec(),
                    room_id: room_id.to_vec(),
                    host,
                    secrets: VecDeque::new(),
                    roster: Vec::new(),
                },
            };
            g.host = host;
            g.roster = roster;
            if restart {
                g.secrets.clear();
            }
            g.secrets.retain(|(e, _)| *e != epoch);
            g.secrets.push_back((epoch, secret));
            while g.secrets.len() > HOST_RETURN_WINDOW {
                g.secrets.pop_front();
            }
            inner.groups.push_back(g);
            while inner.groups.len() > MAX_GROUPS {
                inner.groups.pop_front();
            }
        });
    }

    /// What this device, a host, names in its KeyPackage to return to room `room_id`: the
    /// last epoch it saw of the newest group of that room it hosted.
    pub(crate) fn ticket(&self, room_id: &[u8]) -> Option<HostReturn> {
        self.with(|inner| {
            let g = inner
                .groups
                .iter()
                .rev()
                .find(|g| g.host && g.room_id == room_id)?;
            let (epoch, _) = g.secrets.back()?;
            Some(HostReturn {
                group_id: g.group_id.clone(),
                epoch: *epoch,
            })
        })
    }

    /// A host's: the members' signature keys in the epoch of `ticket`, if it is the newest
    /// epoch kept of its group.
    pub(crate) fn roster_of(&self, ticket: &HostReturn) -> Option<Vec<Vec<u8>>> {
        self.with(|inner| {
            let g = inner
                .groups
                .iter()
                .find(|g| g.host && g.group_id == ticket.group_id)?;
            let (epoch, _) = g.secrets.back()?;
            (*epoch == ticket.epoch).then(|| g.roster.clone())
        })
    }

    /// Whether the secret for `ticket` is here (a member can build the returning commit).
    pub(crate) fn has(&self, ticket: &HostReturn) -> bool {
        self.with(|inner| secret(inner, ticket).is_some())
    }

    /// The return PSKs mls-rs read since the last call.
    pub(crate) fn take_used(&self) -> Vec<HostReturn> {
        self.with(|inner| std::mem::take(&mut inner.used))
    }
}

fn secret(inner: &Inner, ticket: &HostReturn) -> Option<Zeroizing<Vec<u8>>> {
    let g = inner
        .groups
        .iter()
        .find(|g| g.group_id == ticket.group_id)?;
    g.secrets
        .iter()
        .find(|(e, _)| *e == ticket.epoch)
        .map(|(_, s)| s.clone())
}

/// Never fails: an id that is not a return ticket, or one whose secret is gone, is "not
/// found", and mls-rs refuses the message that needs it.
#[derive(Debug, thiserror::Error)]
#[error("host return store")]
pub(crate) struct ReturnKeysError;

impl mls_rs_core::error::IntoAnyError for ReturnKeysError {
    fn into_dyn_error(self) -> Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

impl PreSharedKeyStorage for ReturnKeys {
    type Error = ReturnKeysError;

    fn get(&self, id: &ExternalPskId) -> Result<Option<PreSharedKey>, Self::Error> {
        let Some(ticket) = HostReturn::from_psk_id(id) else {
            return Ok(None);
        };
        Ok(self.with(|inner| {
            let found = secret(inner, &ticket)?;
            inner.used.push(ticket);
            Some(PreSharedKey::from(found))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 32])
    }

    #[test]
    fn keeps_a_bounded_window_per_group_and_forgets_it_on_an_add() {
        let keys = ReturnKeys::default();
        for e in 0..(HOST_RETURN_WINDOW as u64 + 5) {
            keys.record(b"g", b"room", true, e, s(1), vec![b"k".to_vec()], false);
        }
        let old = HostReturn {
            group_id: b"g".to_vec(),
            epoch: 0,
        };
        assert!(!keys.has(&old), "older than the window");
        let t = keys.ticket(b"room").expect("a ticket");
        assert_eq!(t.epoch, HOST_RETURN_WINDOW as u64 + 4);
        assert!(keys.has(&t));
        assert_eq!(keys.roster_of(&t), Some(vec![b"k".to_vec()]));
        keys.record(b"g", b"room", true, 100, s(2), vec![], true);
        assert!(!keys.has(&t), "an add forgets the earlier epochs");
        assert_eq!(keys.ticket(b"room").map(|t| t.epoch), Some(100));
        assert_eq!(keys.ticket(b"other"), None);
        keys.record(b"h", b"room2", false, 1, s(3), vec![], false);
        assert_eq!(keys.ticket(b"room2"), None, "not a host there");
    }

    #[test]
    fn reports_which_secrets_mls_read() {
        let keys = ReturnKeys::default();
        keys.record(b"g", b"room", true, 3, s(1), vec![], false);
        let t = HostReturn {
            group_id: b"g".to_vec(),
            epoch: 3,
        };
        assert!(keys
            .get(&ExternalPskId::new(b"other".to_vec()))
            .unwrap()
            .is_none());
        assert!(keys.take_used().is_empty());
        assert!(keys.get(&t.psk_id()).unwrap().is_some());
        assert_eq!(keys.take_used(), vec![t]);
        assert!(keys.take_used().is_empty());
    }
}

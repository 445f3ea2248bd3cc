//! Trust on first use: the fingerprint this device first saw for each user id, and the
//! alarm when a known user id comes with another key.

use conclave_e2ee::{Admission, Fingerprint, PinCheck, RoomPolicy, RosterEntry, TrustStore};

use crate::Participant;

/// The hosts of a policy, as fingerprint short codes, for messages. (Both Conclave suites
/// hash with SHA-256, so a host key's fingerprint does not depend on which.)
pub(crate) fn hosts_of(policy: &RoomPolicy) -> String {
    let keys: &[Vec<u8>] = match &policy.admission {
        Admission::Open => return "nobody".into(),
        Admission::Lobby(h) => &h.keys,
        Admission::InviteList(l) => &l.hosts.keys,
    };
    keys.iter()
        .map(|k| {
            let key = conclave_e2ee::mls::SignaturePublicKey::new(k.clone());
            Fingerprint::of_key(conclave_e2ee::RoomCipherSuite::Curve25519Aes128, &key)
                .map_or_else(|_| "?".to_owned(), |f| f.short_code())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The warning for a known user id with a new device key.
pub(crate) fn key_changed(
    name: &str,
    user_id: &str,
    now: Fingerprint,
    pinned: Fingerprint,
) -> String {
    format!(
        "{name} ({user_id}) comes with a new device key {}; this device knew {} for that user id. \
         Check with them (by voice, say) before trusting it",
        now.short_code(),
        pinned.short_code()
    )
}

impl Participant {
    /// Checks every member this participant sees against `pins` (trust on first use): a user
    /// id seen for the first time is pinned to its device fingerprint; a known user id that
    /// comes with another key raises an [`Event::Alarm`](crate::Event::Alarm) that names both fingerprints (the
    /// pin stays: a person decides). The runtime keeps the pins across calls
    /// ([`Participant::take_trust_update`]).
    pub fn set_trust_store(&mut self, mut pins: TrustStore) {
        // Our own user id is pinned to this device, so another device that claims it shows.
        let info = self.device.identity().info();
        if let (None, Ok(fp)) = (
            pins.pinned(&info.user_id),
            self.device.identity().fingerprint(),
        ) {
            pins.repin(&info.user_id, fp);
            self.trust_changed = true;
        }
        self.trust = Some(pins);
    }

    /// The pins as text ([`TrustStore::to_text`]) when they changed since the last call, for
    /// the runtime to save.
    pub fn take_trust_update(&mut self) -> Option<String> {
        if !std::mem::take(&mut self.trust_changed) {
            return None;
        }
        self.trust.as_ref().map(TrustStore::to_text)
    }

    /// Checks members against the pins (see [`Participant::set_trust_store`]).
    pub(crate) fn check_pins<'a>(&mut self, members: impl IntoIterator<Item = &'a RosterEntry>) {
        let Some(trust) = self.trust.as_mut() else {
            return;
        };
        let own = self.device.identity().fingerprint().ok();
        let mut alarms = Vec::new();
        for m in members {
            if Some(m.fingerprint) == own {
                continue;
            }
            match trust.check(&m.user_id, m.fingerprint) {
                PinCheck::FirstSeen => self.trust_changed = true,
                PinCheck::Matches => {}
                PinCheck::Changed { pinned } => alarms.push(key_changed(
                    &m.display_name,
                    &m.user_id,
                    m.fingerprint,
                    pinned,
                )),
            }
        }
        for a in alarms {
            self.alarm(a);
        }
    }
}

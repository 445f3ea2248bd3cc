//! What the page shows of a call ([`Call::state`]): JSON built from the participant core.

use conclave_client::SenderHealth;
use conclave_e2ee::RoomCipherSuite;
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::{ts, Call};

/// How long a sender counts as "decrypting" or "failing" after its last frame of that kind.
const HEALTH_WINDOW_MS: u64 = 2_000;

/// decrypting / waiting for key / failing / no media, from a sender's counts.
fn status(h: &SenderHealth, now_ms: u64) -> &'static str {
    let recent = |t: Option<u64>| t.is_some_and(|t| now_ms.saturating_sub(t) < HEALTH_WINDOW_MS);
    let newer = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => a > b,
        (Some(_), None) => true,
        _ => false,
    };
    if recent(h.last_failed_ms) && newer(h.last_failed_ms, h.last_opened_ms) {
        "failing"
    } else if recent(h.last_opened_ms) {
        "decrypting"
    } else if recent(h.last_held_ms) {
        "waiting for key"
    } else {
        "no media"
    }
}

/// Why the epoch last changed, for the encryption details panel.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LastChange {
    pub(crate) epoch: u64,
    pub(crate) at_ms: u64,
    pub(crate) reason: String,
}

/// Why an epoch changed, in words.
pub(crate) fn describe_change(change: &conclave_e2ee::EpochChange) -> String {
    let names = |v: &[conclave_e2ee::RosterEntry]| {
        v.iter()
            .map(|r| r.display_name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (change.added.is_empty(), change.removed.is_empty()) {
        (false, true) => format!("{} joined", names(&change.added)),
        (true, false) => format!("{} left", names(&change.removed)),
        (false, false) => format!(
            "{} joined; {} left",
            names(&change.added),
            names(&change.removed)
        ),
        (true, true) => "a member refreshed its keys (self-update)".to_owned(),
    }
}

#[wasm_bindgen]
impl Call {
    /// Everything the page shows, as JSON: epoch, security code, roster with fingerprints,
    /// per-sender health, pending knocks, the room's policy and ciphersuite, why the epoch
    /// last changed, and frame counters.
    pub fn state(&self, now_ms: f64) -> String {
        let t = ts(now_ms).as_millis();
        let me = self.p.session().map(|s| s.own_leaf());
        let roster: Vec<_> = self
            .p
            .roster()
            .into_iter()
            .map(|r| {
                let h = self.p.intake().senders().get(&r.leaf);
                serde_json::json!({
                    "leaf": r.leaf,
                    "user_id": r.user_id,
                    "name": r.display_name,
                    "fingerprint": r.fingerprint.to_string(),
                    "me": Some(r.leaf) == me,
                    "status": if Some(r.leaf) == me { "this device" } else { h.map_or("no media", |h| status(h, t)) },
                    "health": h,
                })
            })
            .collect();
        let knocks: Vec<_> = self
            .p
            .pending_knocks()
            .into_iter()
            .map(|k| serde_json::json!({"knock": k.knock, "user_id": k.user_id, "name": k.name, "fingerprint": k.fingerprint.to_string()}))
            .collect();
        let session = self.p.session();
        let media = self.p.media_ref();
        let stats = media.stats();
        serde_json::json!({
            "epoch": self.p.epoch(),
            "security_code": self.p.security_code().map(|c| c.as_str().to_owned()),
            "me": me,
            "roster": roster,
            "knocks": knocks,
            "policy": session.map(|s| s.policy().kind()),
            "charter": self.p.charter(),
            "held_to_charter": self.p.expected_charter().is_some(),
            "is_host": self.p.is_host(),
            "suite": session.map(|s| suite_name(s.suite())),
            "last_change": self.last_change,
            "live_epochs": media.live_epochs(),
            "sending_epoch": media.sending_epoch(),
            "frames": {
                "sealed": self.sealed,
                "unsealed_dropped": self.unsealed,
                "opened": stats.opened,
                "failed": self.p.intake().senders().values().map(|h| h.failed).sum::<u64>(),
                "duplicates": self.p.intake().senders().values().map(|h| h.duplicates).sum::<u64>(),
                "held_now": self.p.intake().held(),
                "held_dropped": self.p.intake().held_dropped(),
                "before_join": stats.before_join,
            },
        })
        .to_string()
    }
}

fn suite_name(s: RoomCipherSuite) -> &'static str {
    match s {
        RoomCipherSuite::Curve25519Aes128 => {
            "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (MLS suite 1); SFrame AES_128_GCM_SHA256_128"
        }
        RoomCipherSuite::MlKem768X25519 => {
            "X25519 + ML-KEM-768 hybrid KEM, AES-128-GCM, SHA-256, Ed25519; SFrame AES_128_GCM_SHA256_128"
        }
        #[allow(unreachable_patterns)]
        _ => "unknown",
    }
}

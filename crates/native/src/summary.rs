//! What a call leaves behind: the summary `conclave join --json` prints (roster, epochs,
//! media per sender), kept across the reconnections of one call.

use conclave_client::{Event, Participant};
use serde::Serialize;

use crate::media_side::MediaSide;

/// One roster line of the summary.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RosterLine {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Fingerprint short code.
    pub fingerprint: String,
}

/// Per remote sender media counts.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SenderLine {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Frames received.
    pub frames_received: u64,
    /// Frames that decrypted.
    pub frames_decrypted: u64,
    /// Of those, real media (a file or a device) that SFrame authenticated but that has no
    /// synthetic content to compare byte for byte.
    pub frames_unchecked: u64,
    /// Frames that did not.
    pub frames_failed: u64,
    /// Frames sealed before we joined (unreadable by design).
    pub frames_before_join: u64,
    /// Frames that arrived twice (retransmissions): the first copy was used.
    pub frames_duplicate: u64,
    /// Frames that arrived while this device held no keys (before its first epoch, or after
    /// it left).
    pub frames_without_keys: u64,
    /// Frames held for an epoch this device never reached in time (still held at the end,
    /// or dropped from the hold queue). With the counts above, every received frame is in
    /// exactly one: `frames_received` = decrypted + failed + before join + duplicate +
    /// without keys + held.
    pub frames_held: u64,
    /// Whether the first frame seen from this sender in every epoch was a keyframe (video).
    pub keyframe_first_in_each_epoch: bool,
    /// Why frames failed, by kind.
    pub failure_kinds: std::collections::BTreeMap<String, u64>,
    /// Speaking at the end (by the audio level on its packets).
    pub speaking: bool,
    /// Loud audio heard from this sender, in milliseconds.
    pub speech_ms: u64,
}

/// One epoch this participant was in.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EpochLine {
    /// The epoch.
    pub epoch: u64,
    /// Its security code.
    pub security_code: String,
    /// Members in it.
    pub members: usize,
}

/// What `conclave join --json` prints at exit.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Last epoch.
    pub epoch: Option<u64>,
    /// Last security code.
    pub security_code: Option<String>,
    /// Last roster.
    pub roster: Vec<RosterLine>,
    /// Media per remote sender (empty until the media path exists).
    pub senders: Vec<SenderLine>,
    /// Alarms raised.
    pub alarms: Vec<String>,
    /// Why the call ended.
    pub ended: String,
    /// The charter of the group this participant was in (`c1.…`), for the links it hands out.
    pub charter: Option<String>,
    /// Every epoch this participant was in, in order.
    pub history: Vec<EpochLine>,
    /// Frames this participant sealed and sent.
    pub frames_sent: u64,
    /// Times the connection was lost and joined again.
    pub reconnects: u32,
    /// Times the media session failed and a new one was started.
    pub media_restarts: u32,
    /// From admission (the first epoch) to the first frame from anyone that opened, in ms.
    pub first_frame_after_join_ms: Option<u64>,
    /// Frames held for an epoch this participant had not reached, then dropped (the hold
    /// queue was full or the commit came too late): frames lost to a key transition.
    pub frames_held_dropped: u64,
    /// Time this participant took to apply each commit of another member, in µs (not
    /// printed; the load test aggregates it).
    #[serde(skip)]
    pub commit_apply_us: Vec<u32>,
    /// Capture-to-open latency of recent synthetic frames, in µs (not printed; the load
    /// test aggregates it).
    #[serde(skip)]
    pub frame_latency_us: Vec<u32>,
}

/// What the runtime remembers of the call for its summary.
#[derive(Default)]
pub(crate) struct CallState {
    pub(crate) alarms: Vec<String>,
    pub(crate) history: Vec<EpochLine>,
    pub(crate) names: std::collections::BTreeMap<u32, (String, String)>,
    pub(crate) reconnects: u32,
    /// Time to apply each commit from another member, in µs.
    pub(crate) commit_apply_us: Vec<u32>,
    /// When this participant was admitted (its first epoch).
    pub(crate) joined_at: Option<std::time::Instant>,
}

impl CallState {
    pub(crate) fn observe(&mut self, p: &Participant, e: &Event, media: &MediaSide) {
        match e {
            Event::Alarm { reason } => self.alarms.push(reason.clone()),
            Event::Joined {
                epoch,
                security_code,
            }
            | Event::EpochChanged {
                change: conclave_e2ee::EpochChange { epoch, .. },
                security_code,
            } => {
                // Cheap per epoch (a meeting of 1,000 changes epoch often): names only for
                // leaves we hear from; the roster itself is read once, for the summary.
                for leaf in media.sender_leaves(p) {
                    if let std::collections::btree_map::Entry::Vacant(v) = self.names.entry(leaf) {
                        if let Some(r) = p.member(leaf) {
                            v.insert((r.user_id, r.display_name));
                        }
                    }
                }
                // Members who leave keep their names for the summary (their leaves are gone
                // from the roster by the time it is read).
                if let Event::EpochChanged { change, .. } = e {
                    for r in &change.removed {
                        self.names
                            .entry(r.leaf)
                            .or_insert_with(|| (r.user_id.clone(), r.display_name.clone()));
                    }
                }
                self.history.push(EpochLine {
                    epoch: *epoch,
                    security_code: security_code.to_string(),
                    members: p.member_count(),
                });
            }
            _ => {}
        }
    }

    pub(crate) fn summary(&self, p: &Participant, media: &MediaSide, ended: String) -> Summary {
        let last = self.history.last();
        // The roster once (the last epoch's, kept after leaving), for names and the summary.
        let roster = p.roster();
        let senders = media
            .counts(p)
            .into_iter()
            .map(|(leaf, c)| {
                let (id, name) = self
                    .names
                    .get(&leaf)
                    .cloned()
                    .or_else(|| {
                        roster
                            .iter()
                            .find(|r| r.leaf == leaf)
                            .map(|r| (r.user_id.clone(), r.display_name.clone()))
                    })
                    .unwrap_or_else(|| (format!("leaf-{leaf}"), String::new()));
                SenderLine {
                    id,
                    name,
                    frames_received: c.received,
                    frames_decrypted: c.decrypted,
                    frames_unchecked: c.unchecked,
                    frames_failed: c.failed,
                    frames_before_join: c.before_join,
                    frames_duplicate: c.duplicates,
                    frames_without_keys: c.without_keys,
                    frames_held: c.held,
                    keyframe_first_in_each_epoch: c.keyframe_first_per_epoch,
                    failure_kinds: c.failure_kinds.clone(),
                    speaking: c.speaking,
                    speech_ms: c.speech_ms,
                }
            })
            .collect();
        Summary {
            charter: p
                .charter()
                .or_else(|| p.expected_charter().and_then(|c| c.to_charter().ok())),
            epoch: p.epoch().or(last.map(|l| l.epoch)),
            security_code: p
                .security_code()
                .map(|c| c.to_string())
                .or(last.map(|l| l.security_code.clone())),
            roster: roster
                .into_iter()
                .map(|e| RosterLine {
                    fingerprint: e.fingerprint.short_code(),
                    id: e.user_id,
                    name: e.display_name,
                })
                .collect(),
            senders,
            alarms: self.alarms.clone(),
            ended,
            history: self.history.clone(),
            frames_sent: media.sent(),
            reconnects: self.reconnects,
            media_restarts: media.restarts,
            first_frame_after_join_ms: match (self.joined_at, media.first_opened()) {
                (Some(j), Some(f)) => Some(f.saturating_duration_since(j).as_millis() as u64),
                _ => None,
            },
            frames_held_dropped: media.held_dropped(p),
            commit_apply_us: self.commit_apply_us.clone(),
            frame_latency_us: media.latencies_us(),
        }
    }
}

/// One summary of a call made of several connections.
pub(crate) fn merge(earlier: Option<Summary>, mut later: Summary) -> Summary {
    let Some(earlier) = earlier else {
        return later;
    };
    later.frames_sent += earlier.frames_sent;
    later.media_restarts += earlier.media_restarts;
    later.frames_held_dropped += earlier.frames_held_dropped;
    later.first_frame_after_join_ms = earlier
        .first_frame_after_join_ms
        .or(later.first_frame_after_join_ms);
    let mut apply = earlier.commit_apply_us;
    apply.append(&mut later.commit_apply_us);
    later.commit_apply_us = apply;
    let mut lat = earlier.frame_latency_us;
    lat.append(&mut later.frame_latency_us);
    later.frame_latency_us = lat;
    for old in earlier.senders {
        match later.senders.iter_mut().find(|l| l.id == old.id) {
            Some(l) => {
                l.frames_received += old.frames_received;
                l.frames_decrypted += old.frames_decrypted;
                l.frames_unchecked += old.frames_unchecked;
                l.frames_failed += old.frames_failed;
                l.frames_before_join += old.frames_before_join;
                l.frames_duplicate += old.frames_duplicate;
                l.frames_without_keys += old.frames_without_keys;
                l.frames_held += old.frames_held;
                l.keyframe_first_in_each_epoch &= old.keyframe_first_in_each_epoch;
                l.speech_ms += old.speech_ms;
                for (k, v) in old.failure_kinds {
                    *l.failure_kinds.entry(k).or_default() += v;
                }
            }
            None => later.senders.push(old),
        }
    }
    later
}

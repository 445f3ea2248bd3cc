//! The load test's report: every figure as a distribution, written as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::baseline;

#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Dist {
    pub(crate) n: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p95_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

pub(crate) fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Dist {
        n: v.len(),
        p50_ms: at(0.5),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: v[v.len() - 1],
    }
}

/// The server process, read from outside.
#[derive(Debug, Default, Serialize)]
pub(crate) struct ServerFigures {
    /// Its RSS before anyone joined.
    pub(crate) rss_start_kib: u64,
    /// Its RSS once everyone was in.
    pub(crate) rss_all_in_kib: u64,
    /// (RSS all in - RSS at start) / participants.
    pub(crate) rss_per_participant_kib: f64,
    /// The rekey's server share (from the commit's arrival to the last byte of its fan-out
    /// written to the last member's socket), over the last 4,096 commits.
    pub(crate) rekey_share_p50_ms: f64,
    pub(crate) rekey_share_p99_ms: f64,
    pub(crate) rekey_share_max_ms: f64,
    /// Delivery-service time to validate a commit (part of the share above), p50.
    pub(crate) commit_validate_p50_ms: f64,
    /// During the steady phase: the server process's CPU time and what it forwarded.
    pub(crate) steady_cpu_s: f64,
    pub(crate) steady_wall_s: f64,
    pub(crate) packets_received: u64,
    pub(crate) packets_forwarded: u64,
    pub(crate) bytes_forwarded: u64,
    /// Server CPU per forwarded packet (all of the server's CPU in the steady phase:
    /// receiving, SRTP, RTCP, bandwidth estimation, pacing, signaling), in µs.
    pub(crate) cpu_us_per_forwarded_packet: f64,
    /// Forwarded packets per second of server CPU.
    pub(crate) forwarded_packets_per_core_s: f64,
    pub(crate) slow_clients_disconnected: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) participants: usize,
    pub(crate) participants_joined: usize,
    pub(crate) failed_joins: usize,
    /// Participants whose call ended in an error (or that did not end within 60 s of
    /// being asked to leave).
    pub(crate) participants_lost: usize,
    /// Why, by reason.
    pub(crate) lost_reasons: BTreeMap<String, usize>,
    pub(crate) video_senders: usize,
    pub(crate) audio_senders: usize,
    pub(crate) heavy_receivers: usize,
    /// Participants with a media session.
    pub(crate) media_members: usize,
    pub(crate) join_rate: f64,
    pub(crate) churn_per_s: f64,
    pub(crate) media_loss: f64,
    /// Wall time from the first start until every participant was in one epoch.
    pub(crate) all_in_s: Option<f64>,
    /// From a participant's start to its first epoch (simulated end to end).
    pub(crate) join_ms: Dist,
    /// Per epoch: from the first member on it (the committer, on the server's acceptance) to
    /// the last member on it (simulated end to end, every member sharing 2 cores).
    pub(crate) rekey_ms: Dist,
    /// Per member: time to apply one commit of another member (its own cost).
    pub(crate) commit_apply_ms: Dist,
    /// What a real meeting would see: round trip + server share p50 + one member's apply p50.
    pub(crate) derived_real_rekey_p50_ms: f64,
    pub(crate) derived_real_rekey_p99_ms: f64,
    pub(crate) epochs: usize,
    /// Epochs in which members showed different security codes (a fork).
    pub(crate) forks: usize,
    /// From admission to the first frame that opened (simulated end to end).
    pub(crate) first_frame_after_admit_ms: Dist,
    /// Capture to open of synthetic frames: sender, its socket, the SFU, the receiver's
    /// socket and decryption (recent frames of every receiver).
    pub(crate) frame_latency_ms: Dist,
    pub(crate) frames_sent: u64,
    pub(crate) frames_decrypted: u64,
    pub(crate) frames_failed: u64,
    /// Frames sealed under an epoch from before the receiver joined: unreadable by design.
    pub(crate) frames_before_join: u64,
    /// Frames held for an epoch the receiver had not reached and then dropped: lost to a key
    /// transition.
    pub(crate) frames_held_dropped: u64,
    pub(crate) failure_kinds: BTreeMap<String, u64>,
    /// Frames that opened (authenticated) but whose content was not what the sender sealed:
    /// a frame accepted under a wrong key would show here. Must be 0.
    pub(crate) frames_opened_wrong_content: u64,
    pub(crate) media_restarts: u64,
    pub(crate) reconnects: u64,
    pub(crate) server: ServerFigures,
    /// During the steady phase, every 10 s: (seconds into it, server RSS KiB, load-test
    /// process RSS KiB, members in the meeting). Flat is good.
    pub(crate) rss_steady: Vec<(f64, u64, u64, usize)>,
    pub(crate) baseline: Option<baseline::Figures>,
    /// Server forwarded packets per core-second over the raw baseline's.
    pub(crate) server_vs_baseline: Option<f64>,
    /// Cores a 1,000-viewer meeting (about 540,000 packets/s out) would need at the
    /// measured server rate.
    pub(crate) cores_for_540k_pps: Option<f64>,
    /// RSS of this process (every participant) once all were in, per participant.
    pub(crate) client_rss_per_participant_kib: f64,
    pub(crate) wall_s: f64,
}

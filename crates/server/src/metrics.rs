//! `/metrics` in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use conclave_ds::{Ds, DsStats};

const BUCKETS_MS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
/// Recent samples kept per latency for its quantiles.
const RECENT: usize = 4096;

/// A latency: a Prometheus histogram over all samples, plus quantiles of the recent ones.
#[derive(Default)]
struct Latency {
    buckets: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_s: f64,
    recent: std::collections::VecDeque<f64>,
}

impl Latency {
    fn observe(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            if ms <= *b {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum_s += ms / 1000.0;
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(ms / 1000.0);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {}",
                b / 1000.0,
                self.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            self.count, self.sum_s, self.count
        );
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(|a, b| a.total_cmp(b));
        let _ = writeln!(
            out,
            "# HELP {name}_recent The same, over the last {RECENT} samples.\n# TYPE {name}_recent summary"
        );
        for q in [0.5, 0.9, 0.99, 1.0] {
            let x = if v.is_empty() {
                0.0
            } else {
                v[((v.len() - 1) as f64 * q).round() as usize]
            };
            let _ = writeln!(out, "{name}_recent{{quantile=\"{q}\"}} {x}");
        }
        let _ = writeln!(
            out,
            "{name}_recent_sum {}\n{name}_recent_count {}",
            v.iter().sum::<f64>(),
            v.len()
        );
    }
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) connections: AtomicU64,
    pub(crate) unauthorized: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) too_slow: AtomicU64,
    rooms: AtomicU64,
    sfu: Mutex<(conclave_sfu::SfuStats, usize)>,
    ds: Mutex<DsStats>,
    commit: Mutex<Latency>,
    rekey: Mutex<Latency>,
}

impl Metrics {
    pub(crate) fn observe_commit(&self, d: Duration) {
        if let Ok(mut h) = self.commit.lock() {
            h.observe(d);
        }
    }

    /// The server's share of a rekey: from the commit's arrival to the last byte of its
    /// fan-out (commit, Welcome, verdict) handed to the last member's socket.
    pub(crate) fn observe_rekey(&self, d: Duration) {
        if let Ok(mut h) = self.rekey.lock() {
            h.observe(d);
        }
    }

    pub(crate) fn update(&self, ds: &Ds) {
        self.rooms.store(ds.room_count() as u64, Ordering::Relaxed);
        if let Ok(mut s) = self.ds.lock() {
            *s = ds.stats();
        }
    }

    pub(crate) fn update_sfu(&self, stats: conclave_sfu::SfuStats, participants: usize) {
        if let Ok(mut s) = self.sfu.lock() {
            *s = (stats, participants);
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        counter(
            "conclave_rooms",
            "Rooms with a group or a connection.",
            "gauge",
            self.rooms.load(Ordering::Relaxed),
        );
        counter(
            "conclave_connections",
            "Authenticated signaling connections.",
            "gauge",
            self.connections.load(Ordering::Relaxed),
        );
        counter(
            "conclave_slow_clients_disconnected_total",
            "Signaling connections cut because their outbound queue was full.",
            "counter",
            self.too_slow.load(Ordering::Relaxed),
        );
        counter(
            "conclave_tokens_refused_total",
            "Connections refused for their token.",
            "counter",
            self.unauthorized.load(Ordering::Relaxed),
        );
        counter(
            "conclave_rate_limited_total",
            "Connections refused by the per-IP rate limit.",
            "counter",
            self.rate_limited.load(Ordering::Relaxed),
        );
        counter(
            "conclave_messages_refused_total",
            "Malformed signaling messages.",
            "counter",
            self.refused.load(Ordering::Relaxed),
        );
        let s = self.ds.lock().map(|s| *s).unwrap_or_default();
        counter(
            "conclave_commits_accepted_total",
            "Commits that won their epoch.",
            "counter",
            s.commits_accepted,
        );
        counter(
            "conclave_commits_rejected_total",
            "Commits refused (lost the race or invalid).",
            "counter",
            s.commits_rejected,
        );
        counter(
            "conclave_removals_proposed_total",
            "Removals proposed by the server for vanished members.",
            "counter",
            s.removals_proposed,
        );
        counter(
            "conclave_ds_refused_total",
            "Messages the delivery service refused.",
            "counter",
            s.refused,
        );
        let (m, n) = self.sfu.lock().map(|s| *s).unwrap_or_default();
        counter(
            "conclave_media_participants",
            "Participants with a media session.",
            "gauge",
            n as u64,
        );
        counter(
            "conclave_packets_received_total",
            "RTP packets (of encrypted frames) the SFU received.",
            "counter",
            m.packets_in,
        );
        counter(
            "conclave_packets_forwarded_total",
            "RTP packets (of encrypted frames) the SFU forwarded.",
            "counter",
            m.packets_out,
        );
        counter(
            "conclave_bytes_forwarded_total",
            "RTP payload bytes the SFU forwarded.",
            "counter",
            m.bytes_out,
        );
        counter(
            "conclave_datagrams_dropped_total",
            "UDP datagrams no participant accepted.",
            "counter",
            m.unrouted,
        );
        counter(
            "conclave_keyframe_requests_total",
            "Keyframe requests sent to senders.",
            "counter",
            m.keyframe_requests,
        );
        counter(
            "conclave_keyframe_requests_coalesced_total",
            "Keyframe requests folded into one sent less than 500 ms before.",
            "counter",
            m.keyframe_requests_coalesced,
        );
        counter(
            "conclave_speaker_changes_total",
            "Times a sender started speaking (after 300 ms of speech).",
            "counter",
            m.speaker_changes,
        );
        counter(
            "conclave_packets_waiting_keyframe_total",
            "Video packets held back from a receiver until its source's next keyframe.",
            "counter",
            m.waiting_keyframe,
        );
        counter(
            "conclave_packets_no_slot_total",
            "Packets a receiver had no free slot for.",
            "counter",
            m.no_slot,
        );
        if let Some(kib) = resident_kib() {
            counter(
                "process_resident_memory_bytes",
                "Resident memory of the server process.",
                "gauge",
                kib * 1024,
            );
        }
        if let Ok(h) = self.commit.lock() {
            h.render(
                &mut out,
                "conclave_commit_seconds",
                "Delivery-service time to validate a commit and queue its fan-out.",
            );
        }
        if let Ok(h) = self.rekey.lock() {
            h.render(
                &mut out,
                "conclave_rekey_fanout_seconds",
                "From a commit's arrival to its fan-out's last byte written to the last member's socket.",
            );
        }
        out
    }
}

/// The process's resident set (`VmRSS` of `/proc/self/status`), where the system has it.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

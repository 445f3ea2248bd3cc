//! `conclave loadtest`: N real participants (real MLS, SFrame and WebRTC through str0m, real
//! sockets on loopback) in this process, against a real `conclave serve` started as a child
//! process, so that the server's own CPU time and memory can be read apart from the
//! participants'. Writes a JSON report and SVG plots.
//!
//! One machine runs the server and every simulated member together, so members queue for the
//! same CPU (at 1,000 members one commit costs about 1,000 × 2.5 ms of member processing in
//! all, which no member would wait for on its own device). So every figure is reported three
//! ways: the cost per member, the server's own share, and the simulated end-to-end figure
//! (inflated by that contention), plus the figure a real meeting would see, derived from them
//! (round trip + server share + one member's cost).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use conclave_native::{Control, Summary};
use conclave_server::ServerKeys;

mod baseline;
mod members;
mod plots;
mod progress;
mod report;
mod server;

use members::{Member, Shared, Spawner};
use progress::{bar, Progress};

use report::{dist, Report, ServerFigures};
use server::{metric, metrics, proc_cpu_s, rss_kib, ServerProc};

/// `conclave loadtest` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadtestArgs {
    /// Participants in the one meeting.
    #[arg(long, default_value_t = 50)]
    participants: usize,
    /// How many of them send video, three simulcast layers each (the first ones to join).
    #[arg(long, default_value_t = 1)]
    video_senders: usize,
    /// How many of them send audio (the first ones to join).
    #[arg(long, default_value_t = 3)]
    audio_senders: usize,
    /// How many receive video at the top layer (a large tile); the others ask for small
    /// tiles and get the low layer, as most viewers of a large meeting would.
    #[arg(long, default_value_t = 8)]
    heavy_receivers: usize,
    /// How many participants have a media session (WebRTC to the SFU): the senders, then
    /// others spread evenly over the join order [default: all]. The rest are members of
    /// the MLS group with all of its cryptography, but no media session: for measuring
    /// membership at sizes where every member's media would not fit on this machine.
    #[arg(long)]
    media_members: Option<usize>,
    /// New participants started per second while joining.
    #[arg(long, default_value_t = 50.0)]
    join_rate: f64,
    /// While the meeting runs: this many participants leave, and as many new ones join, per
    /// second (senders never leave).
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    /// How long the meeting runs once everyone is in, e.g. 20s or 10m.
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Give up if not everyone is in one epoch after this long, e.g. 5m.
    #[arg(long, default_value = "5m")]
    join_timeout: String,
    /// Write the JSON report here (it is also printed as the last line of output).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write the SVG plots into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Drop this fraction of media datagrams at random, each way, in every participant's
    /// socket layer (e.g. 0.01): packet loss for soak runs.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Round trip assumed for the derived real-meeting figures, in ms.
    #[arg(long, default_value_t = 50.0)]
    rtt_ms: f64,
}

pub(crate) fn run(args: LoadtestArgs) -> Result<()> {
    if args.participants == 0 {
        bail!("--participants must be at least 1");
    }
    if args.join_rate <= 0.0 {
        bail!("--join-rate must be positive");
    }
    let duration = crate::serve::parse_duration(&args.duration)?;
    let join_timeout = crate::serve::parse_duration(&args.join_timeout)?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(drive(&args, duration, join_timeout))?;
    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("{}", path.display()))?;
    }
    println!("{json}");
    let lost = report.frames_failed + report.frames_held_dropped;
    if report.failed_joins > 0 || report.forks > 0 || lost > 0 || report.all_in_s.is_none() {
        bail!(
            "{} failed joins, {} forks, {} failed frames, {} frames lost to key changes{}",
            report.failed_joins,
            report.forks,
            report.frames_failed,
            report.frames_held_dropped,
            if report.all_in_s.is_none() {
                ", and not everyone reached one epoch"
            } else {
                ""
            }
        );
    }
    Ok(())
}

async fn drive(args: &LoadtestArgs, duration: Duration, join_timeout: Duration) -> Result<Report> {
    let dir = std::env::temp_dir().join(format!(
        "conclave-loadtest-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    let token_key = ServerKeys::load_or_create(&dir)?.token;
    // Room for the churn: leavers stay members until the commit that removes them.
    let headroom = 16 + (args.churn * 30.0).ceil() as usize;
    let server = ServerProc::start(args.participants + headroom, dir)?;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_start = rss_kib(&pid.to_string());
    let own_rss_start = rss_kib("self");
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        last: Instant::now(),
    };
    progress.done(&format!(
        "loadtest: {} participants ({} video, {} audio senders) against {} (pid {pid})",
        args.participants, args.video_senders, args.audio_senders, server.url
    ));

    let shared = Arc::new(Shared::default());
    let spawner = Spawner {
        url: server.url.clone(),
        token_key,
        shared: shared.clone(),
        exp: SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 86_400,
        video_senders: args.video_senders,
        audio_senders: args.audio_senders,
        heavy_receivers: args.heavy_receivers,
        media_every: args
            .media_members
            .filter(|&m| m < args.participants)
            .map(|m| args.participants.div_ceil(m.max(1))),
        loss: args.loss,
    };
    let start = Instant::now();
    let mut members: Vec<Member> = Vec::new();
    let mut rss_curve: Vec<(f64, f64)> = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / args.join_rate);
    let mut next_start = Instant::now();
    let mut last_sample = Instant::now();
    let deadline = start + join_timeout;
    let mut all_in = None;
    // Join: start participants at the join rate, then wait for everyone to share an epoch.
    loop {
        while members.len() < args.participants && Instant::now() >= next_start {
            members.push(spawner.spawn(members.len())?);
            next_start += gap;
        }
        let admitted = shared.admitted.load(Ordering::Relaxed);
        let (newest, on_newest) = shared
            .epochs
            .lock()
            .ok()
            .and_then(|m| {
                m.iter()
                    .next_back()
                    .map(|(e, (_, _, c))| (*e, c.values().sum::<usize>()))
            })
            .unwrap_or((0, 0));
        if last_sample.elapsed() >= Duration::from_millis(500) {
            rss_curve.push((admitted as f64, rss_kib(&pid.to_string()) as f64 / 1024.0));
            last_sample = Instant::now();
        }
        progress.show(&format!(
            "joining {} {admitted}/{} admitted, {} started, epoch {newest} ({on_newest} on it), {:.1} s",
            bar(admitted, args.participants),
            args.participants,
            members.len(),
            start.elapsed().as_secs_f64()
        ));
        if members.len() == args.participants && on_newest >= args.participants {
            all_in = Some(start.elapsed().as_secs_f64());
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress.done(&match all_in {
        Some(s) => format!(
            "all {} participants in one epoch after {s:.1} s",
            args.participants
        ),
        None => format!(
            "gave up after {:.0} s: {} of {} admitted",
            join_timeout.as_secs_f64(),
            shared.admitted.load(Ordering::Relaxed),
            args.participants
        ),
    });
    let rss_all_in = rss_kib(&pid.to_string());
    rss_curve.push((
        shared.admitted.load(Ordering::Relaxed) as f64,
        rss_all_in as f64 / 1024.0,
    ));
    let own_rss_all_in = rss_kib("self");

    // Steady phase (with churn if asked): measure the server's CPU per forwarded packet.
    let m0 = metrics(&server.url).await.unwrap_or_default();
    let cpu0 = proc_cpu_s(pid);
    let steady_start = Instant::now();
    let mut next_churn = Instant::now();
    let churn_gap = (args.churn > 0.0).then(|| Duration::from_secs_f64(1.0 / args.churn));
    let mut departed: Vec<Member> = Vec::new();
    let mut spawned = members.len();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut rss_steady = Vec::new();
    let mut next_rss = Instant::now();
    while steady_start.elapsed() < duration {
        if Instant::now() >= next_rss {
            next_rss += Duration::from_secs(10);
            rss_steady.push((
                steady_start.elapsed().as_secs_f64(),
                rss_kib(&pid.to_string()),
                rss_kib("self"),
                members.len(),
            ));
        }
        if let Some(gap) = churn_gap {
            while Instant::now() >= next_churn {
                next_churn += gap;
                // One leaves (never a sender), one new participant joins.
                let candidates: Vec<usize> =
                    (0..members.len()).filter(|&i| !members[i].sender).collect();
                if !candidates.is_empty() {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let leaver = members.swap_remove(candidates[(rng as usize) % candidates.len()]);
                    let _ = leaver.control.try_send(Control::Leave);
                    departed.push(leaver);
                }
                members.push(spawner.spawn(spawned)?);
                spawned += 1;
            }
        }
        let left = duration.saturating_sub(steady_start.elapsed());
        progress.show(&format!(
            "running {} {:.0} s left, {} in the meeting, {} left, {} joined during it",
            bar(
                (duration - left).as_millis() as usize,
                duration.as_millis().max(1) as usize
            ),
            left.as_secs_f64(),
            members.len(),
            departed.len(),
            spawned - args.participants,
        ));
        tokio::time::sleep(Duration::from_millis(100).min(left)).await;
    }
    let cpu1 = proc_cpu_s(pid);
    let steady_wall = steady_start.elapsed().as_secs_f64();
    let m1 = metrics(&server.url).await.unwrap_or_default();
    progress.done(&format!("ran {steady_wall:.1} s; leaving"));

    // Leave, and collect what everyone saw.
    for m in &members {
        let _ = m.control.send(Control::Leave).await;
    }
    let mut summaries: Vec<Summary> = Vec::new();
    let mut failed_tasks = 0usize;
    let mut lost_reasons: BTreeMap<String, usize> = BTreeMap::new();
    for m in members.into_iter().chain(departed) {
        let reason = match tokio::time::timeout(Duration::from_secs(60), m.task).await {
            Ok(Ok(Ok(s))) => {
                summaries.push(s);
                continue;
            }
            Ok(Ok(Err(e))) => e.to_string(),
            Ok(Err(e)) => format!("task: {e}"),
            Err(_) => "did not leave within 60 s".to_owned(),
        };
        failed_tasks += 1;
        *lost_reasons.entry(reason).or_default() += 1;
    }
    let m_end = metrics(&server.url).await.unwrap_or_default();
    drop(server);

    let forwarded = (metric(&m1, "conclave_packets_forwarded_total")
        - metric(&m0, "conclave_packets_forwarded_total"))
    .max(0.0) as u64;
    let bytes = (metric(&m1, "conclave_bytes_forwarded_total")
        - metric(&m0, "conclave_bytes_forwarded_total"))
    .max(0.0) as u64;
    let received = (metric(&m1, "conclave_packets_received_total")
        - metric(&m0, "conclave_packets_received_total"))
    .max(0.0) as u64;
    let cpu = cpu1 - cpu0;
    let q = |name: &str, q: &str| {
        metric(&m_end, &format!("{name}_recent{{quantile=\"{q}\"}}")) * 1000.0
    };
    let mut server_fig = ServerFigures {
        rss_start_kib: rss_start,
        rss_all_in_kib: rss_all_in,
        rss_per_participant_kib: rss_all_in.saturating_sub(rss_start) as f64
            / args.participants as f64,
        rekey_share_p50_ms: q("conclave_rekey_fanout_seconds", "0.5"),
        rekey_share_p99_ms: q("conclave_rekey_fanout_seconds", "0.99"),
        rekey_share_max_ms: q("conclave_rekey_fanout_seconds", "1"),
        commit_validate_p50_ms: q("conclave_commit_seconds", "0.5"),
        steady_cpu_s: cpu,
        steady_wall_s: steady_wall,
        packets_received: received,
        packets_forwarded: forwarded,
        bytes_forwarded: bytes,
        slow_clients_disconnected: metric(&m_end, "conclave_slow_clients_disconnected_total")
            as u64,
        ..Default::default()
    };
    if forwarded > 0 && cpu > 0.0 {
        server_fig.cpu_us_per_forwarded_packet = cpu * 1e6 / forwarded as f64;
        server_fig.forwarded_packets_per_core_s = forwarded as f64 / cpu;
    }

    // The raw baseline: the same number of packets of the same mean size, fanned out with
    // sendmmsg, timed by its own thread's CPU.
    let baseline = if let Some(size) = bytes.checked_div(forwarded) {
        let size = size.max(1) as usize;
        let receivers = args.participants.clamp(1, 64);
        progress.done(&format!(
            "baseline: {forwarded} packets of {size} bytes with sendmmsg to {receivers} sockets"
        ));
        Some(
            tokio::task::spawn_blocking(move || baseline::run(forwarded, size, receivers))
                .await??,
        )
    } else {
        None
    };
    let server_vs_baseline = baseline.as_ref().and_then(|b| {
        (b.packets_per_core_s > 0.0 && server_fig.forwarded_packets_per_core_s > 0.0)
            .then(|| server_fig.forwarded_packets_per_core_s / b.packets_per_core_s)
    });
    let cores_for_540k_pps = (server_fig.forwarded_packets_per_core_s > 0.0)
        .then(|| 540_000.0 / server_fig.forwarded_packets_per_core_s);

    let joined: Vec<f64> = shared.joined.lock().map(|j| j.clone()).unwrap_or_default();
    let epochs = shared.epochs.lock().map(|m| m.clone()).unwrap_or_default();
    let rekey: Vec<f64> = epochs
        .values()
        .filter(|(_, _, codes)| codes.values().sum::<usize>() > 1)
        .map(|(a, b, _)| b.duration_since(*a).as_secs_f64() * 1000.0)
        .collect();
    let forks = epochs.values().filter(|(_, _, c)| c.len() > 1).count();
    let apply: Vec<f64> = summaries
        .iter()
        .flat_map(|s| s.commit_apply_us.iter())
        .map(|&us| f64::from(us) / 1000.0)
        .collect();
    let latency: Vec<f64> = summaries
        .iter()
        .flat_map(|s| s.frame_latency_us.iter())
        .map(|&us| f64::from(us) / 1000.0)
        .collect();
    let first_frame: Vec<f64> = summaries
        .iter()
        .filter_map(|s| s.first_frame_after_join_ms)
        .map(|ms| ms as f64)
        .collect();
    let lines = || summaries.iter().flat_map(|s| s.senders.iter());
    let commit_apply = dist(apply.clone());
    let derived = |share: f64, apply: f64| args.rtt_ms + share + apply;
    if let Some(dir) = &args.plots {
        std::fs::create_dir_all(dir)?;
        plots::write(
            dir,
            &plots::Inputs {
                joined: &joined,
                rekey: &rekey,
                apply: &apply,
                first_frame: &first_frame,
                latency: &latency,
                rss_curve: &rss_curve,
                rss_steady: &rss_steady
                    .iter()
                    .map(|(t, kib, _, _)| (*t, *kib as f64 / 1024.0))
                    .collect::<Vec<_>>(),
                failure_kinds: &lines().flat_map(|l| l.failure_kinds.iter()).fold(
                    BTreeMap::new(),
                    |mut m, (k, v)| {
                        *m.entry(k.clone()).or_default() += v;
                        m
                    },
                ),
                server_pps: server_fig.forwarded_packets_per_core_s,
                baseline_pps: baseline.as_ref().map_or(0.0, |b| b.packets_per_core_s),
            },
        )?;
    }
    let joined_n = joined.len().min(args.participants);
    Ok(Report {
        participants: args.participants,
        participants_joined: joined_n,
        failed_joins: args.participants - joined_n,
        participants_lost: failed_tasks,
        lost_reasons,
        video_senders: args.video_senders.min(args.participants),
        audio_senders: args.audio_senders.min(args.participants),
        heavy_receivers: args.heavy_receivers.min(args.participants),
        media_members: shared.media_members.load(Ordering::Relaxed),
        join_rate: args.join_rate,
        churn_per_s: args.churn,
        media_loss: args.loss,
        all_in_s: all_in,
        join_ms: dist(joined),
        rekey_ms: dist(rekey),
        derived_real_rekey_p50_ms: derived(server_fig.rekey_share_p50_ms, commit_apply.p50_ms),
        derived_real_rekey_p99_ms: derived(server_fig.rekey_share_p99_ms, commit_apply.p99_ms),
        commit_apply_ms: commit_apply,
        epochs: epochs.len(),
        forks,
        first_frame_after_admit_ms: dist(first_frame),
        frame_latency_ms: dist(latency),
        frames_sent: summaries.iter().map(|s| s.frames_sent).sum(),
        frames_decrypted: lines().map(|l| l.frames_decrypted).sum(),
        frames_failed: lines().map(|l| l.frames_failed).sum(),
        frames_before_join: lines().map(|l| l.frames_before_join).sum(),
        frames_held_dropped: summaries.iter().map(|s| s.frames_held_dropped).sum(),
        failure_kinds: lines().flat_map(|l| l.failure_kinds.iter()).fold(
            BTreeMap::new(),
            |mut m, (k, v)| {
                *m.entry(k.clone()).or_default() += v;
                m
            },
        ),
        frames_opened_wrong_content: lines()
            .filter_map(|l| l.failure_kinds.get("IntegrityCheck"))
            .sum(),
        media_restarts: summaries.iter().map(|s| u64::from(s.media_restarts)).sum(),
        reconnects: summaries.iter().map(|s| u64::from(s.reconnects)).sum(),
        server: server_fig,
        rss_steady,
        baseline,
        server_vs_baseline,
        cores_for_540k_pps,
        client_rss_per_participant_kib: own_rss_all_in.saturating_sub(own_rss_start) as f64
            / args.participants as f64,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

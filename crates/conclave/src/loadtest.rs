//! `conclave loadtest`: N real participants (real MLS, SFrame and WebRTC through str0m, real
//! sockets on loopback) in this process, against a real server (started here on loopback
//! unless `--url` names one). Writes a JSON report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use conclave_client::net::{Control, JoinOptions, MediaFiles, Summary};
use conclave_client::{AdmitMode, Event, NewRoomPolicy};
use conclave_e2ee::{CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite};
use conclave_server::{Claims, ServeArgs, ServerKeys};
use serde::Serialize;

/// `conclave loadtest` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadtestArgs {
    /// Participants in the one meeting.
    #[arg(long, default_value_t = 50)]
    participants: usize,
    /// How many of them send video (the first ones to join).
    #[arg(long, default_value_t = 1)]
    video_senders: usize,
    /// How many of them send audio (the first ones to join).
    #[arg(long, default_value_t = 3)]
    audio_senders: usize,
    /// New participants started per second while joining.
    #[arg(long, default_value_t = 20.0)]
    join_rate: f64,
    /// How long the meeting runs once everyone is in, e.g. 20s.
    #[arg(long, default_value = "20s")]
    duration: String,
    /// Write the JSON report here (it is also printed as the last line).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Default, Serialize)]
struct Dist {
    n: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
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

#[derive(Debug, Serialize)]
struct Report {
    participants: usize,
    joined: usize,
    failed_joins: usize,
    video_senders: usize,
    audio_senders: usize,
    /// Wall time from the first start until every participant was in one epoch with all.
    all_in_ms: Option<f64>,
    /// From a participant's start to its first epoch.
    join_time: Dist,
    /// Per epoch: from the first member on it to the last (every member that reached it).
    rekey_spread: Dist,
    epochs: usize,
    /// Epochs in which members showed different security codes (a fork).
    forks: usize,
    frames_sent: u64,
    frames_decrypted: u64,
    frames_failed: u64,
    /// Why frames failed, by kind, over all receivers.
    failure_kinds: BTreeMap<String, u64>,
    /// RSS of this whole process (server and every participant) at the end.
    process_rss_kib_end: u64,
    wall_s: f64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Everyone's view of every epoch: epoch → (when first seen, when last seen, codes seen,
/// members that saw it).
type Epochs = BTreeMap<u64, (Instant, Instant, BTreeMap<String, usize>)>;

pub(crate) fn run(args: LoadtestArgs) -> Result<()> {
    if args.participants == 0 {
        bail!("--participants must be at least 1");
    }
    let duration = crate::serve::parse_duration(&args.duration)?;
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(drive(&args, duration))?;
    let json = serde_json::to_string(&report)?;
    if let Some(path) = &args.report {
        std::fs::write(path, &json).with_context(|| format!("{}", path.display()))?;
    }
    println!("{json}");
    if report.failed_joins > 0 || report.forks > 0 || report.frames_failed > 0 {
        bail!(
            "{} failed joins, {} forks, {} failed frames",
            report.failed_joins,
            report.forks,
            report.frames_failed
        );
    }
    Ok(())
}

async fn drive(args: &LoadtestArgs, duration: Duration) -> Result<Report> {
    let dir = std::env::temp_dir().join(format!(
        "conclave-loadtest-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
    ));
    let mut config = ServeArgs {
        listen: Some("127.0.0.1:0".parse()?),
        media_listen: Some("127.0.0.1:0".parse()?),
        data_dir: Some(dir.clone()),
        max_room_size: Some(args.participants + 10),
        connections_per_ip_per_minute: Some(u32::MAX),
        ..Default::default()
    }
    .resolve()?;
    config.outbound_queue = 65_536;
    let keys = ServerKeys::load_or_create(&dir)?;
    let token_key = ServerKeys::load_or_create(&dir)?.token;
    let server = conclave_server::start(config, keys).await?;
    let url = server.url.clone();
    let start = Instant::now();
    let epochs: Arc<Mutex<Epochs>> = Arc::new(Mutex::new(BTreeMap::new()));
    let joined_at: Arc<Mutex<Vec<Option<f64>>>> =
        Arc::new(Mutex::new(vec![None; args.participants]));
    let mut tasks = Vec::new();
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    let gap = Duration::from_secs_f64(1.0 / args.join_rate.max(0.1));
    for i in 0..args.participants {
        let user = format!("p{i:04}");
        let token = token_key.issue(&Claims {
            room: "load".into(),
            sub: user.clone(),
            name: user.clone(),
            exp,
        });
        let id = DeviceIdentity::generate(
            RoomCipherSuite::Curve25519Aes128,
            CredentialInfo::new(&user, &user)?,
        )?;
        let device = Device::new(id, GroupStore::memory())?;
        let opts = JoinOptions {
            url: url.clone(),
            room: "load".into(),
            token,
            policy: NewRoomPolicy::Open,
            admit: AdmitMode::Auto,
            duration: None,
            self_update_every: Duration::from_secs(3600),
            media: true,
            send_audio: i < args.audio_senders,
            send_video: i < args.video_senders,
            audio_level: (i < args.audio_senders).then_some(-30),
            tile_width: None,
            files: MediaFiles::default(),
            ca_file: None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let epochs = epochs.clone();
        let joined_at = joined_at.clone();
        let started = Instant::now();
        let task = tokio::spawn(conclave_client::net::run(
            device,
            opts,
            rx,
            move |_, e: &Event| {
                let (epoch, code) = match e {
                    Event::Joined {
                        epoch,
                        security_code,
                    } => {
                        if let Ok(mut j) = joined_at.lock() {
                            j[i] = Some(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        (*epoch, security_code.to_string())
                    }
                    Event::EpochChanged {
                        change,
                        security_code,
                    } => (change.epoch, security_code.to_string()),
                    _ => return,
                };
                let now = Instant::now();
                if let Ok(mut m) = epochs.lock() {
                    let entry = m.entry(epoch).or_insert((now, now, BTreeMap::new()));
                    entry.1 = now;
                    *entry.2.entry(code).or_default() += 1;
                }
            },
        ));
        tasks.push((tx, task));
        tokio::time::sleep(gap).await;
    }
    // Wait until the newest epoch has been reached by everyone (or give up after 5 minutes).
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut all_in = None;
    while Instant::now() < deadline {
        let done = epochs.lock().ok().and_then(|m| {
            m.iter()
                .next_back()
                .map(|(_, (_, _, codes))| codes.values().sum::<usize>() >= args.participants)
        });
        if done == Some(true) {
            all_in = Some(start.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(duration).await;
    let mut summaries: Vec<Summary> = Vec::new();
    for (tx, _) in &tasks {
        let _ = tx.send(Control::Leave).await;
    }
    for (_, task) in tasks {
        if let Ok(Ok(s)) = task.await {
            summaries.push(s);
        }
    }
    let rss = rss_kib();
    server.stop().await;
    let joined: Vec<f64> = joined_at
        .lock()
        .map(|j| j.iter().flatten().copied().collect())
        .unwrap_or_default();
    let m = epochs.lock().map(|m| m.clone()).unwrap_or_default();
    let spread: Vec<f64> = m
        .values()
        .filter(|(_, _, codes)| codes.values().sum::<usize>() > 1)
        .map(|(a, b, _)| b.duration_since(*a).as_secs_f64() * 1000.0)
        .collect();
    let forks = m.values().filter(|(_, _, codes)| codes.len() > 1).count();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Report {
        participants: args.participants,
        joined: joined.len(),
        failed_joins: args.participants - joined.len(),
        video_senders: args.video_senders.min(args.participants),
        audio_senders: args.audio_senders.min(args.participants),
        all_in_ms: all_in,
        join_time: dist(joined),
        rekey_spread: dist(spread),
        epochs: m.len(),
        forks,
        frames_sent: summaries.iter().map(|s| s.frames_sent).sum(),
        frames_decrypted: summaries
            .iter()
            .flat_map(|s| s.senders.iter())
            .map(|l| l.frames_decrypted)
            .sum(),
        frames_failed: summaries
            .iter()
            .flat_map(|s| s.senders.iter())
            .map(|l| l.frames_failed)
            .sum(),
        failure_kinds: summaries
            .iter()
            .flat_map(|s| s.senders.iter())
            .flat_map(|l| l.failure_kinds.iter())
            .fold(BTreeMap::new(), |mut m, (k, v)| {
                *m.entry(k.clone()).or_default() += v;
                m
            }),
        process_rss_kib_end: rss,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

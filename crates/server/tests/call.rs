//! Real calls on loopback: `conclave serve`'s runtime and participants' runtimes over real
//! WebSockets.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use conclave_client::{AdmitMode, Event, NewRoomPolicy};
use conclave_e2ee::{CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite};
use conclave_native::media_file::{Ivf, OggOpus, VideoFrame};
use conclave_native::{self as net, Control, JoinOptions, MediaFiles, Summary};
use conclave_proto::{ClientMsg, MediaMsg, MembershipMsg, ServerMsg, PROTOCOL_VERSION};
use conclave_server::{Claims, RunningServer, ServeArgs, ServerKeys};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

struct Server {
    running: RunningServer,
    keys_dir: std::path::PathBuf,
}

async fn server(remove_after_secs: u64) -> Server {
    server_with_tap(remove_after_secs, 0).await
}

async fn server_with_tap(remove_after_secs: u64, tap: usize) -> Server {
    server_with(remove_after_secs, tap, None).await
}

async fn server_with(
    remove_after_secs: u64,
    tap: usize,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
) -> Server {
    server_config(remove_after_secs, |c| {
        c.media_tap = tap;
        c.tls = tls;
    })
    .await
}

async fn server_config(
    remove_after_secs: u64,
    adjust: impl FnOnce(&mut conclave_server::ServerConfig),
) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (args, dir) = support::loopback_args("conclave-it");
    let mut config = ServeArgs {
        remove_after_secs: Some(remove_after_secs),
        ..args
    }
    .resolve()
    .unwrap();
    adjust(&mut config);
    let keys = ServerKeys::load_or_create(&dir).unwrap();
    Server {
        running: conclave_server::start(config, keys).await.unwrap(),
        keys_dir: dir,
    }
}

impl Server {
    fn token(&self, room: &str, user: &str, ttl: i64) -> String {
        let keys = ServerKeys::load_or_create(&self.keys_dir).unwrap();
        let now = support::unix_now() as i64;
        keys.token.issue(&Claims {
            room: room.into(),
            sub: user.into(),
            name: user.to_uppercase(),
            exp: (now + ttl) as u64,
        })
    }

    fn url(&self) -> String {
        self.running.url.clone()
    }
}

/// What a client's event stream says, as (epoch, security code, roster size) after each change.
type Seen = mpsc::UnboundedReceiver<(u64, String, usize, Vec<String>)>;

struct Client {
    task: JoinHandle<Result<Summary, net::NetError>>,
    control: mpsc::Sender<Control>,
    seen: Seen,
    last: Option<(u64, String, usize, Vec<String>)>,
}

fn device(user: &str) -> Device {
    let id = DeviceIdentity::generate(
        RoomCipherSuite::Curve25519Aes128,
        CredentialInfo::new(user, &user.to_uppercase()).unwrap(),
    )
    .unwrap();
    Device::new(id, GroupStore::memory()).unwrap()
}

fn client(s: &Server, room: &str, user: &str) -> Client {
    client_at(s, &s.url(), room, user)
}

/// A client that reaches the server's HTTP side through `url` (a relay, say).
fn client_at(s: &Server, url: &str, room: &str, user: &str) -> Client {
    client_with(s, url, None, room, user)
}

fn client_with(
    s: &Server,
    url: &str,
    ca_file: Option<std::path::PathBuf>,
    room: &str,
    user: &str,
) -> Client {
    client_full(s, url, ca_file, MediaFiles::default(), room, user)
}

fn client_full(
    s: &Server,
    url: &str,
    ca_file: Option<std::path::PathBuf>,
    files: MediaFiles,
    room: &str,
    user: &str,
) -> Client {
    let opts = JoinOptions {
        url: url.into(),
        room: room.into(),
        token: s.token(room, user, 3600),
        policy: NewRoomPolicy::Open,
        admit: AdmitMode::Auto,
        duration: None,
        self_update_every: Duration::from_secs(3600),
        media: true,
        send_audio: true,
        send_video: true,
        audio_level: None,
        tile_width: None,
        files,
        ca_file,
        media_loss: 0.0,
        charter: None,
        pins_file: None,
    };
    let (tx, rx) = mpsc::channel(8);
    let (etx, erx) = mpsc::unbounded_channel();
    let d = device(user);
    let task = tokio::spawn(net::run(d, opts, rx, move |p, e| {
        if matches!(e, Event::Joined { .. } | Event::EpochChanged { .. }) {
            let roster: Vec<String> = p.roster().into_iter().map(|r| r.user_id).collect();
            let _ = etx.send((
                p.epoch().unwrap_or(0),
                p.security_code().map(|c| c.to_string()).unwrap_or_default(),
                roster.len(),
                roster,
            ));
        }
    }));
    Client {
        task,
        control: tx,
        seen: erx,
        last: None,
    }
}

impl Client {
    /// Waits until this client reaches a state that `want` accepts.
    async fn until(
        &mut self,
        what: &str,
        want: impl Fn(&(u64, String, usize, Vec<String>)) -> bool,
    ) -> (u64, String, Vec<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(l) = self.last.as_ref().filter(|l| want(l)) {
                return (l.0, l.1.clone(), l.3.clone());
            }
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) => self.last = Some(s),
                _ => panic!("never {what}; last {:?}", self.last),
            }
        }
    }

    /// Waits until this client is at a state with `members` members.
    async fn until_members(&mut self, members: usize) -> (u64, String) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = &self.last {
                if l.2 == members {
                    return (l.0, l.1.clone());
                }
            }
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(s)) => self.last = Some(s),
                _ => panic!("no state with {members} members; last {:?}", self.last),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_join_and_show_the_same_security_code_and_roster() {
    let s = server(10).await;
    let mut a = client(&s, "r", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "r", "bob");
    let mut c = client(&s, "r", "carol");
    let (ea, ca) = a.until_members(3).await;
    let (eb, cb) = b.until_members(3).await;
    let (ec, cc) = c.until_members(3).await;
    assert_eq!((ea, &ca), (eb, &cb));
    assert_eq!((eb, &cb), (ec, &cc));
    let mut roster = a.last.as_ref().unwrap().3.clone();
    roster.sort();
    assert_eq!(roster, ["alice", "bob", "carol"]);

    // A fourth joins late: everyone moves to a new epoch and a new code, and agrees.
    let mut d = client(&s, "r", "dave");
    let (e4, c4) = d.until_members(4).await;
    for x in [&mut a, &mut b, &mut c] {
        assert_eq!(x.until_members(4).await, (e4, c4.clone()));
    }
    assert_ne!(c4, ca);

    // Everyone leaves cleanly.
    for x in [a, b, c, d] {
        let _ = x.control.send(Control::Leave).await;
        let summary = x.task.await.unwrap().unwrap();
        assert!(summary.alarms.is_empty(), "{:?}", summary.alarms);
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_is_removed_within_bounded_time() {
    let s = server(1).await;
    let mut a = client(&s, "k", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "k", "bob");
    let c = client(&s, "k", "carol");
    let (epoch3, _) = a.until_members(3).await;
    b.until_members(3).await;

    // Kill carol's client: no leave, the connection just drops.
    let started = tokio::time::Instant::now();
    c.task.abort();
    let (epoch2, code_a) = a.until_members(2).await;
    let (_, code_b) = b.until_members(2).await;
    let took = started.elapsed();
    assert!(epoch2 > epoch3);
    assert_eq!(code_a, code_b);
    assert!(took < Duration::from_secs(5), "removed after {took:?}");
    assert!(!a.last.as_ref().unwrap().3.contains(&"carol".to_string()));
    s.running.stop().await;
}

async fn raw(
    s: &Server,
    room: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/ws/{room}", s.url().replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

async fn next_server_msg(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Option<ServerMsg> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
        {
            Ok(Message::Text(t)) => return ServerMsg::decode(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_media_flows_through_the_sfu_which_never_sees_plaintext() {
    let s = server_with_tap(10, 6_000).await;
    let mut a = client(&s, "media", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "media", "bob");
    let mut c = client(&s, "media", "carol");
    a.until_members(3).await;
    b.until_members(3).await;
    c.until_members(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A fourth joins late.
    let mut d = client(&s, "media", "dave");
    d.until_members(4).await;
    for x in [&mut a, &mut b, &mut c] {
        x.until_members(4).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut summaries = Vec::new();
    for x in [a, b, c, d] {
        let _ = x.control.send(Control::Leave).await;
        summaries.push(x.task.await.unwrap().unwrap());
    }
    let names = ["alice", "bob", "carol", "dave"];
    for (i, sum) in summaries.iter().enumerate() {
        assert!(
            sum.frames_sent > 50,
            "{} sent {}",
            names[i],
            sum.frames_sent
        );
        for other in names.iter().filter(|n| **n != names[i]) {
            let line = sum
                .senders
                .iter()
                .find(|l| l.id == *other)
                .unwrap_or_else(|| {
                    panic!("{} has no frames from {other}: {:?}", names[i], sum.senders)
                });
            assert!(
                line.frames_decrypted > 20,
                "{} from {other}: {line:?}",
                names[i]
            );
            assert_eq!(line.frames_failed, 0, "{} from {other}: {line:?}", names[i]);
            // Every received frame is in exactly one category, those after one's own leave
            // included.
            assert_eq!(
                line.frames_received,
                line.frames_decrypted
                    + line.frames_failed
                    + line.frames_before_join
                    + line.frames_duplicate
                    + line.frames_without_keys
                    + line.frames_held,
                "{} from {other}: {line:?}",
                names[i]
            );
            assert!(
                line.keyframe_first_in_each_epoch,
                "{} from {other}: first video frame of an epoch was not a keyframe",
                names[i]
            );
        }
    }
    // The late joiner opened nothing sealed before it joined (that would be a failure of
    // forward secrecy), only what came after.
    let dave = &summaries[3];
    assert!(dave.senders.iter().all(|l| l.frames_failed == 0));

    // What the SFU forwarded is ciphertext: no 32-byte run of any frame body the senders
    // encoded appears in any payload it forwarded.
    let tapped = s.running.tapped_payloads();
    assert!(tapped.len() > 500, "the tap saw {} payloads", tapped.len());
    let most = summaries.iter().map(|s| s.frames_sent).max().unwrap_or(0) as u32 + 10;
    let mut runs: HashMap<u64, Vec<[u8; 32]>> = HashMap::new();
    for leaf in 0..8u32 {
        for seq in 0..most {
            for (kind, kf) in [
                (str0m_kind(true), false),
                (str0m_kind(false), false),
                (str0m_kind(false), true),
            ] {
                let body = conclave_native::media_link::synthetic_body(leaf, seq, kind, kf);
                // The run after the clear VP8 header, and the body's last 32 bytes.
                for at in [body.len().min(20) - 10, body.len() - 32] {
                    let run: [u8; 32] = body[at..at + 32].try_into().unwrap();
                    let key = u64::from_be_bytes(run[..8].try_into().unwrap());
                    runs.entry(key).or_default().push(run);
                }
            }
        }
    }
    let leaks = |payload: &[u8]| {
        payload.windows(32).any(|w| {
            runs.get(&u64::from_be_bytes(w[..8].try_into().unwrap()))
                .is_some_and(|v| v.iter().any(|r| r == w))
        })
    };
    // The detector finds plaintext where there is some.
    let mut control = vec![0x90, 0x80, 0x12];
    control.extend_from_slice(&conclave_native::media_link::synthetic_body(
        2,
        7,
        str0m_kind(false),
        false,
    ));
    assert!(leaks(&control), "the leak detector misses a plaintext body");
    for payload in &tapped {
        assert!(
            !leaks(payload),
            "frame plaintext in an SFU payload: {payload:02x?}"
        );
    }
    s.running.stop().await;
}

fn str0m_kind(audio: bool) -> conclave_native::media_link::Kind {
    if audio {
        conclave_native::media_link::Kind::Audio
    } else {
        conclave_native::media_link::Kind::Video
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_commits_over_the_network_never_fork_the_group() {
    let s = server(10).await;
    let mut a = client(&s, "race", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "race", "bob");
    let mut c = client(&s, "race", "carol");
    let (e0, _) = a.until_members(3).await;
    b.until_members(3).await;
    c.until_members(3).await;
    for round in 0..5u64 {
        // Two members commit at once, several times.
        let (x, y) = tokio::join!(
            b.control.send(Control::SelfUpdate),
            c.control.send(Control::SelfUpdate)
        );
        x.unwrap();
        y.unwrap();
        let target = e0 + round + 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for (name, cl) in [("alice", &mut a), ("bob", &mut b), ("carol", &mut c)] {
            while cl.last.as_ref().is_none_or(|l| l.0 < target) {
                match tokio::time::timeout_at(deadline, cl.seen.recv()).await {
                    Ok(Some(st)) => cl.last = Some(st),
                    _ => panic!("round {round}: {name} stuck at {:?}", cl.last),
                }
            }
        }
    }
    // Let any second commit of a round settle, then compare.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cl in [&mut a, &mut b, &mut c] {
        while let Ok(st) = cl.seen.try_recv() {
            cl.last = Some(st);
        }
    }
    let states: Vec<_> = [&a, &b, &c]
        .iter()
        .map(|cl| cl.last.clone().unwrap())
        .collect();
    assert!(
        states
            .windows(2)
            .all(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1),
        "fork: {states:?}"
    );
    for cl in [a, b, c] {
        let _ = cl.control.send(Control::Leave).await;
        let sum = cl.task.await.unwrap().unwrap();
        assert!(sum.alarms.is_empty(), "{:?}", sum.alarms);
    }
    let m = reqwest_metrics(&s).await;
    assert!(m.contains("conclave_commits_accepted_total"), "{m}");
    s.running.stop().await;
}

/// A TCP relay in front of the server's HTTP side whose connections can be cut, as a lost
/// network would cut them.
struct Relay {
    url: String,
    conns: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: JoinHandle<()>,
}

async fn relay(to: &str) -> Relay {
    let upstream: std::net::SocketAddr = to.trim_start_matches("http://").parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let held = conns.clone();
    let stop = frozen.clone();
    let accept = tokio::spawn(async move {
        while let Ok((a, _)) = listener.accept().await {
            let stop = stop.clone();
            let c = tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(b) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut ar, mut aw) = a.into_split();
                let (mut br, mut bw) = b.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut ar, &mut bw).await;
                });
                // Server to client: stops reading while frozen, as a stalled client would.
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    match br.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if aw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                up.abort();
            });
            held.lock().unwrap().push(c);
        }
    });
    Relay {
        url,
        conns,
        frozen,
        accept,
    }
}

impl Relay {
    fn freeze(&self) {
        self.frozen
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connection_is_retried_and_the_device_rejoins_as_a_new_member() {
    // Vanished members are removed after a minute here: carol's stale leaf must go because
    // her device came back, not because of that timeout.
    let s = server(60).await;
    let relay = relay(&s.url()).await;
    let mut a = client(&s, "lost", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "lost", "bob");
    let mut c = client_at(&s, &relay.url, "lost", "carol");
    let (e3, _) = a.until_members(3).await;
    b.until_members(3).await;
    c.until_members(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let cut = tokio::time::Instant::now();
    relay.cut();
    let once = |l: &(u64, String, usize, Vec<String>)| {
        l.0 > e3 && l.2 == 3 && l.3.iter().filter(|u| *u == "carol").count() == 1
    };
    let (ea, code_a, _) = a.until("carol back once", once).await;
    let took = cut.elapsed();
    let (eb, code_b, _) = b.until("carol back once", once).await;
    let (ec, code_c, _) = c.until("carol back once", once).await;
    assert!(took < Duration::from_secs(10), "rejoined after {took:?}");
    assert_eq!((ea, &code_a), (eb, &code_b));
    assert_eq!((eb, &code_b), (ec, &code_c));
    // Media flows again after the rejoin.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let _ = c.control.send(Control::Leave).await;
    let sc = c.task.await.unwrap().unwrap();
    assert!(sc.reconnects >= 1, "{sc:?}");
    assert!(
        ["left", "removed from the group"].contains(&sc.ended.as_str()),
        "{}",
        sc.ended
    );
    for other in ["alice", "bob"] {
        let line = sc.senders.iter().find(|l| l.id == other).unwrap();
        assert!(line.frames_decrypted > 20, "{line:?}");
        assert_eq!(line.frames_failed, 0, "{line:?}");
    }
    for x in [a, b] {
        let _ = x.control.send(Control::Leave).await;
        let sum = x.task.await.unwrap().unwrap();
        assert!(sum.alarms.is_empty(), "{:?}", sum.alarms);
    }
    relay.accept.abort();
    s.running.stop().await;
}

/// A self-signed certificate for 127.0.0.1 and localhost, as PEM files in a fresh directory:
/// (certificate, key).
fn self_signed() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = support::temp_dir("conclave-tls");
    std::fs::create_dir_all(&dir).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_tls_with_a_private_certificate() {
    let (cert, key) = self_signed();
    let s = server_with(10, 0, Some((cert.clone(), key))).await;
    let url = s.url();
    assert!(url.starts_with("https://"), "{url}");

    // Without the certificate in its trust store a client refuses the server.
    let stranger = client_with(&s, &url, None, "tls", "mallory");
    let err = stranger.task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("connection"), "{err}");
    // Plain HTTP to the TLS port gets nowhere either.
    let plain = client_with(&s, &url.replace("https://", "http://"), None, "tls", "eve");
    assert!(plain.task.await.unwrap().is_err());

    let mut a = client_with(&s, &url, Some(cert.clone()), "tls", "alice");
    a.until_members(1).await;
    let mut b = client_with(&s, &url, Some(cert.clone()), "tls", "bob");
    let (ea, ca) = a.until_members(2).await;
    assert_eq!(b.until_members(2).await, (ea, ca));
    tokio::time::sleep(Duration::from_secs(1)).await;
    for x in [a, b] {
        let _ = x.control.send(Control::Leave).await;
        let sum = x.task.await.unwrap().unwrap();
        assert!(sum.alarms.is_empty(), "{:?}", sum.alarms);
        assert!(
            sum.senders.iter().any(|l| l.frames_decrypted > 10),
            "{:?}",
            sum.senders
        );
    }
    s.running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_encoded_files_are_sent_encrypted_and_open_at_the_receiver() {
    // A VP8 IVF file (keyframe every 20 frames) and an Ogg Opus file, written and parsed back
    // exactly as `conclave join --video-file/--audio-file` reads them.
    let ivf = Ivf {
        size: (320, 240),
        timebase: (1, 30),
        frames: (0..60u64)
            .map(|i| {
                let key = i % 20 == 0;
                let mut data = if key {
                    vec![0x50, 0x2d, 0x01, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]
                } else {
                    vec![0x31, 0x03, 0x00]
                };
                data.extend((0..700 + i as usize).map(|j| (j * 7 + i as usize) as u8));
                VideoFrame {
                    pts: i,
                    data,
                    keyframe: key,
                }
            })
            .collect(),
    };
    let ogg = OggOpus {
        channels: 1,
        packets: (0..50u8).map(|i| vec![0xfc, i, i ^ 0x5a, 7]).collect(),
    };
    let files = MediaFiles {
        video: Some(Ivf::parse(&ivf.write()).unwrap()),
        audio: Some(OggOpus::parse(&ogg.write(9)).unwrap()),
    };
    let s = server(10).await;
    let mut a = client_full(&s, &s.url(), None, files, "files", "alice");
    a.until_members(1).await;
    let mut b = client(&s, "files", "bob");
    b.until_members(2).await;
    a.until_members(2).await;
    // A third member joins: a new epoch, and the file source skips ahead to a keyframe.
    let mut c = client(&s, "files", "carol");
    c.until_members(3).await;
    b.until_members(3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for x in [c, b] {
        let _ = x.control.send(Control::Leave).await;
        let sum = x.task.await.unwrap().unwrap();
        let line = sum.senders.iter().find(|l| l.id == "alice").unwrap();
        assert!(line.frames_decrypted > 40, "{line:?}");
        assert_eq!(line.frames_unchecked, line.frames_decrypted, "{line:?}");
        assert_eq!(line.frames_failed, 0, "{line:?}");
        assert!(line.keyframe_first_in_each_epoch, "{line:?}");
    }
    let _ = a.control.send(Control::Leave).await;
    let sum = a.task.await.unwrap().unwrap();
    let line = sum.senders.iter().find(|l| l.id == "bob").unwrap();
    // Bob's synthetic frames are still checked byte for byte.
    assert_eq!(line.frames_unchecked, 0, "{line:?}");
    assert!(line.frames_decrypted > 20, "{line:?}");
    s.running.stop().await;
}

use adversarial::reqwest_metrics;

/// A misbehaving network, server port or participant: refused or dropped with a reason, and
/// the call goes on.
mod adversarial {
    use super::*;
    use conclave_client::Participant;
    use conclave_e2ee::Timestamp;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_tokens_are_refused_with_a_reason_and_the_call_goes_on() {
        let s = server(10).await;
        let mut a = client(&s, "t", "alice");
        a.until_members(1).await;

        let other = server(10).await;
        let cases = [
            ("no token", String::new()),
            ("garbage", "not-a-token".to_string()),
            ("another room", s.token("elsewhere", "eve", 3600)),
            ("expired", s.token("t", "eve", -10)),
            ("another server", other.token("t", "eve", 3600)),
            (
                "an invitation (it only gets guest tokens)",
                s.token("t", conclave_server::web::INVITE_SUBJECT, 3600),
            ),
        ];
        for (what, token) in cases {
            let mut ws = raw(&s, "t").await;
            ws.send(Message::Text(
                ClientMsg::Hello {
                    version: PROTOCOL_VERSION,
                    token,
                }
                .encode()
                .into(),
            ))
            .await
            .unwrap();
            match next_server_msg(&mut ws).await {
                Some(ServerMsg::Error {
                    code: conclave_proto::ErrorCode::Unauthorized,
                    reason,
                }) => assert!(!reason.is_empty(), "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // A wrong protocol version.
        let mut ws = raw(&s, "t").await;
        ws.send(Message::Text(
            r#"{"type":"hello","version":99,"token":"x"}"#.into(),
        ))
        .await
        .unwrap();
        assert!(matches!(
            next_server_msg(&mut ws).await,
            Some(ServerMsg::Error {
                code: conclave_proto::ErrorCode::Version,
                ..
            })
        ));

        // The call goes on: a good client still gets in.
        let mut b = client(&s, "t", "bob");
        let (_, cb) = b.until_members(2).await;
        let (_, ca) = a.until_members(2).await;
        assert_eq!(ca, cb);
        let metrics = reqwest_metrics(&s).await;
        assert!(
            metrics.contains("conclave_tokens_refused_total 6"),
            "{metrics}"
        );
        s.running.stop().await;
        other.running.stop().await;
    }

    pub(super) async fn reqwest_metrics(s: &Server) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(s.running.addr)
            .await
            .unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_and_oversized_signaling_is_refused_and_the_call_goes_on() {
        let s = server(10).await;
        let mut a = client(&s, "m", "alice");
        a.until_members(1).await;
        let mut b = client(&s, "m", "bob");
        let (e2, c2) = b.until_members(2).await;

        // A member-to-be that sends junk after a valid hello.
        let mut ws = raw(&s, "m").await;
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: s.token("m", "mallory", 3600),
        }
        .encode();
        ws.send(Message::Text(hello.clone().into())).await.unwrap();
        assert!(matches!(
            next_server_msg(&mut ws).await,
            Some(ServerMsg::Joined { .. })
        ));
        for junk in [
            "{",
            "[]",
            r#"{"type":"commit"}"#,
            r#"{"type":"key_package","key_package":"AAAA"}"#,
            r#"{"type":"deny","knock":1}"#,
        ] {
            ws.send(Message::Text(junk.into())).await.unwrap();
            match next_server_msg(&mut ws).await {
                Some(ServerMsg::Error { .. }) => {}
                other => panic!("{junk}: {other:?}"),
            }
        }
        // A second hello is the runtime's to refuse (the DS never sees one).
        ws.send(Message::Text(hello.into())).await.unwrap();
        assert!(matches!(
            next_server_msg(&mut ws).await,
            Some(ServerMsg::Error {
                code: conclave_proto::ErrorCode::Unexpected,
                ..
            })
        ));
        ws.send(Message::Binary(vec![0u8; 100].into()))
            .await
            .unwrap();
        assert!(matches!(
            next_server_msg(&mut ws).await,
            Some(ServerMsg::Error { .. })
        ));
        // Oversized: the server drops the connection.
        let big = format!(
            r#"{{"type":"key_package","key_package":"{}"}}"#,
            "A".repeat(conclave_proto::MAX_MESSAGE_LEN + 8)
        );
        let _ = ws.send(Message::Text(big.into())).await;
        assert!(
            next_server_msg(&mut ws).await.is_none(),
            "connection closed"
        );

        // Garbage on the media port is dropped and counted.
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for i in 0..200u32 {
            let junk: Vec<u8> = (0..(i % 300)).map(|j| (j * 7 + i) as u8).collect();
            udp.send_to(&junk, s.running.media_addr).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = reqwest_metrics(&s).await;
            let dropped = m
                .lines()
                .find_map(|l| l.strip_prefix("conclave_datagrams_dropped_total "))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if dropped >= 150 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "garbage not counted: {dropped}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The call is untouched and still admits people.
        assert_eq!(a.until_members(2).await, (e2, c2));
        let mut c = client(&s, "m", "carol");
        let (_, cc) = c.until_members(3).await;
        assert_eq!(a.until_members(3).await.1, cc);
        s.running.stop().await;
    }

    fn now_ts() -> Timestamp {
        Timestamp::from_millis(support::unix_now() * 1000)
    }

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A member driven by hand over a raw WebSocket, so that it can misbehave.
    async fn raw_member(s: &Server, room: &str, user: &str) -> (Ws, Participant) {
        let mut ws = raw(s, room).await;
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: s.token(room, user, 3600),
        };
        ws.send(Message::Text(hello.encode().into())).await.unwrap();
        let mut p = Participant::new(device(user), room, NewRoomPolicy::Open, AdmitMode::Auto);
        while p.epoch().is_none() {
            let msg = next_server_msg(&mut ws).await.expect("a server message");
            let _ = p.handle(msg, now_ts());
            while let Some(m) = p.poll_transmit() {
                ws.send(Message::Text(m.encode().into())).await.unwrap();
            }
        }
        (ws, p)
    }

    /// Messages from the server within `wait`, until the socket closes.
    async fn server_msgs_within(ws: &mut Ws, wait: Duration) -> Vec<ServerMsg> {
        let mut got = Vec::new();
        let end = tokio::time::Instant::now() + wait;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end, ws.next()).await {
            if let Message::Text(t) = m {
                if let Ok(msg) = ServerMsg::decode(&t) {
                    got.push(msg);
                }
            }
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sfu_forwards_nothing_to_a_connection_that_is_not_a_member() {
        let s = server(10).await;
        let mut a = client(&s, "m", "alice");
        a.until_members(1).await;
        let mut b = client(&s, "m", "bob");
        b.until_members(2).await;
        // Eve holds a valid token, opens a media session and never knocks.
        let mut ws = raw(&s, "m").await;
        let hello = ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: s.token("m", "eve", 3600),
        };
        ws.send(Message::Text(hello.encode().into())).await.unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (_link, offer) = conclave_native::media_link::MediaLink::offer(
            sock.local_addr().unwrap(),
            4,
            std::time::Instant::now(),
            Timestamp::from_millis(0),
        )
        .unwrap();
        let msg = MediaMsg::MediaOffer { sdp: offer };
        ws.send(Message::Text(msg.encode().into())).await.unwrap();
        let got = server_msgs_within(&mut ws, Duration::from_secs(3)).await;
        assert!(
            matches!(
                got.first(),
                Some(ServerMsg::Joined {
                    create_group: false,
                    ..
                })
            ),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|m| matches!(m, ServerMsg::MediaAnswer { .. })),
            "a connection that is not a member got a media session: {got:?}"
        );
        // Nothing reached its media socket either (no ICE, no media).
        sock.set_nonblocking(true).unwrap();
        assert!(
            sock.recv(&mut [0u8; 2048]).is_err(),
            "the SFU sent to a non-member"
        );
        // Once it is a member (it knocks and the open room admits it), its offer is answered.
        let mut p = Participant::new(device("eve"), "m", NewRoomPolicy::Open, AdmitMode::Auto);
        for m in got {
            let _ = p.handle(m, now_ts());
        }
        while let Some(m) = p.poll_transmit() {
            ws.send(Message::Text(m.encode().into())).await.unwrap();
        }
        let mut answered = false;
        for _ in 0..20 {
            let Some(msg) = next_server_msg(&mut ws).await else {
                break;
            };
            if matches!(msg, ServerMsg::MediaAnswer { .. }) {
                answered = true;
                break;
            }
            let _ = p.handle(msg, now_ts());
            while let Some(m) = p.poll_transmit() {
                ws.send(Message::Text(m.encode().into())).await.unwrap();
            }
        }
        assert!(p.epoch().is_some(), "eve was not admitted to the open room");
        assert!(answered, "a member's held media offer was never answered");
        s.running.stop().await;
    }

    /// The server's own `process_resident_memory_bytes`, in KiB.
    async fn rss_kib(s: &Server) -> u64 {
        let metrics = reqwest_metrics(s).await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the server reports its resident memory")
            / 1024
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_bad_token_connections_and_tcp_garbage_leave_the_call_going() {
        // The per-IP limit is lifted so that every attempt reaches the token check.
        let s = server_config(10, |c| c.connections_per_ip_per_minute = u32::MAX).await;
        let mut a = client(&s, "flood", "alice");
        a.until_members(1).await;
        let mut b = client(&s, "flood", "bob");
        let (e2, c2) = b.until_members(2).await;

        let rss_before = rss_kib(&s).await;
        let url = format!("{}/ws/flood", s.url().replace("http://", "ws://"));
        let mut refused = 0u32;
        for batch in 0..(10_000 / 50) {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..50 {
                let url = url.clone();
                set.spawn(async move {
                    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
                    let hello = ClientMsg::Hello {
                        version: PROTOCOL_VERSION,
                        token: format!("ct1.{batch}.{i}"),
                    };
                    ws.send(Message::Text(hello.encode().into())).await.ok()?;
                    match next_server_msg(&mut ws).await {
                        Some(ServerMsg::Error {
                            code: conclave_proto::ErrorCode::Unauthorized,
                            ..
                        }) => Some(()),
                        _ => None,
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                if matches!(r, Ok(Some(()))) {
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 10_000);
        // Raw garbage on the HTTP port.
        for i in 0..100u32 {
            use tokio::io::AsyncWriteExt;
            if let Ok(mut tcp) = tokio::net::TcpStream::connect(s.running.addr).await {
                let junk: Vec<u8> = (0..(i * 37 % 2000)).map(|j| (j * 13 + i) as u8).collect();
                let _ = tcp.write_all(&junk).await;
            }
        }
        let grown_mib = rss_kib(&s).await.saturating_sub(rss_before) / 1024;
        assert!(
            grown_mib < 64,
            "memory grew by {grown_mib} MiB over 10,000 attempts"
        );
        let metrics = reqwest_metrics(&s).await;
        assert!(
            metrics.contains("conclave_tokens_refused_total 10000"),
            "{metrics}"
        );
        assert!(metrics.contains("conclave_connections 2\n"), "{metrics}");

        // The call never noticed, and still admits people.
        assert_eq!(a.until_members(2).await, (e2, c2));
        let mut c = client(&s, "flood", "carol");
        let (_, cc) = c.until_members(3).await;
        assert_eq!(a.until_members(3).await.1, cc);
        s.running.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_websocket_reader_is_disconnected_and_the_room_goes_on() {
        let s = server_config(1, |c| c.outbound_queue = 32).await;
        let relay = relay(&s.url()).await;
        let mut a = client(&s, "slow", "alice");
        a.until_members(1).await;
        let mut b = client_at(&s, &relay.url, "slow", "bob");
        b.until_members(2).await;
        let (mut ws, mut m) = raw_member(&s, "slow", "mallory").await;
        a.until_members(3).await;

        // Bob stops reading; a member floods the room with large application messages, at
        // about 25 MB/s: far beyond what a reader that stopped can take, and within what an
        // honest one keeps up with on a loaded 2-core machine (unpaced, alice too fell more
        // than 32 messages behind in about 1 run in 6 and was cut off as well).
        relay.freeze();
        let session = m.danger_session_mut().unwrap();
        for _ in 0..150 {
            let message = session.encrypt_application(&vec![7u8; 256 * 1024]).unwrap();
            let msg = MembershipMsg::Application {
                message: conclave_proto::Bytes(message),
            };
            ws.send(Message::Text(msg.encode().into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let metrics = reqwest_metrics(&s).await;
            if !metrics.contains("conclave_slow_clients_disconnected_total 0") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "bob was never cut off"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The flooder is a hand-driven member that answers no commit request: it goes too,
        // so that the room's committer is an honest client.
        let _ = ws.close(None).await;
        drop(ws);
        // Bob's leaf goes (the server proposes its removal), the others move on together,
        // and someone new still gets in.
        a.until("bob removed", |l| !l.3.contains(&"bob".to_string()))
            .await;
        let mut c = client(&s, "slow", "carol");
        let (_, cc, _) = c
            .until("carol in without bob", |l| {
                l.3.contains(&"carol".to_string()) && !l.3.contains(&"bob".to_string())
            })
            .await;
        let (_, ca, _) = a
            .until("carol in", |l| l.3.contains(&"carol".to_string()))
            .await;
        assert_eq!(ca, cc);
        relay.accept.abort();
        s.running.stop().await;
    }
}

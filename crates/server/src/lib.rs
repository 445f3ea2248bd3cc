//! # Conclave server runtime
//!
//! The tokio/axum shell around the delivery-service core ([`conclave_ds::Ds`]): it accepts
//! WebSocket connections at `/ws/<room>`, checks the join token of the first message, feeds
//! the core, and writes what the core says to the right sockets. One task owns the core (no
//! locks around protocol state); each connection has a reader, a bounded outbound queue and a
//! writer task, so one slow client is disconnected rather than slowing the room.
//!
//! A second task owns the SFU core ([`conclave_sfu::Sfu`]) and the one UDP socket that carries
//! every participant's media; `media_offer` messages on a signaling connection open that
//! connection's media session.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod metrics;
pub mod token;
pub mod web;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use conclave_ds::{ConnId, Ds, DsConfig, Output};
use conclave_mls::{RoomCipherSuite, Timestamp};
use conclave_proto::{Bytes, ClientMsg, ErrorCode, ServerMsg, MAX_MESSAGE_LEN};
use futures_util::{SinkExt, StreamExt};
use mls_rs_core::crypto::SignatureSecretKey;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use config::{ServeArgs, ServerConfig};
use metrics::Metrics;
pub use token::{Claims, TokenError, TokenKey};

/// Outbound queue per connection; a client this far behind is disconnected.
/// Time a new connection has to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages per second a connection may send (sustained), and its burst.
const MSG_RATE: f64 = 50.0;
const MSG_BURST: f64 = 200.0;

pub(crate) fn now_ts() -> Timestamp {
    Timestamp::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// The server's long-lived keys, kept in its data directory.
pub struct ServerKeys {
    /// Signs join tokens.
    pub token: TokenKey,
    mls_secret: SignatureSecretKey,
    mls_public: Vec<u8>,
}

impl core::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ServerKeys(..)")
    }
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(data)?;
    Ok(())
}

impl ServerKeys {
    /// Loads the keys from `dir`, generating (from the OS CSPRNG) and saving any that are
    /// missing.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        let token_path = dir.join("token-key.pk8");
        let token = match std::fs::read(&token_path) {
            Ok(b) => TokenKey::from_pkcs8(&b)?,
            Err(_) => {
                let k = TokenKey::generate()?;
                write_private(&token_path, k.pkcs8())?;
                k
            }
        };
        let (sk, pk) = (
            dir.join("mls-external-sender.key"),
            dir.join("mls-external-sender.pub"),
        );
        let (mls_secret, mls_public) = match (std::fs::read(&sk), std::fs::read(&pk)) {
            (Ok(s), Ok(p)) => (SignatureSecretKey::new(s), p),
            _ => {
                let (secret, identity) =
                    conclave_ds::generate_server_identity(RoomCipherSuite::Curve25519Aes128)?;
                let public = identity.signature_key.as_bytes().to_vec();
                let _ = std::fs::remove_file(&sk);
                let _ = std::fs::remove_file(&pk);
                write_private(&sk, secret.as_bytes())?;
                std::fs::write(&pk, &public)?;
                (secret, public)
            }
        };
        Ok(ServerKeys {
            token,
            mls_secret,
            mls_public,
        })
    }
}

enum Outbound {
    /// A message; with a commit's fan-out, the tracker that times it (dropped once written).
    Msg(ServerMsg, Option<Arc<FanOut>>),
    Close(String),
}

/// Times one commit's fan-out: every message it caused holds a clone, and the last clone to
/// go (after its writer put it on the socket) records the time since the commit arrived.
struct FanOut {
    arrived: Instant,
    metrics: Arc<Metrics>,
}

impl Drop for FanOut {
    fn drop(&mut self) {
        self.metrics.observe_rekey(self.arrived.elapsed());
    }
}

enum DsCmd {
    Connect {
        conn: ConnId,
        room: String,
        user: String,
        out: mpsc::Sender<Outbound>,
    },
    Msg {
        conn: ConnId,
        msg: ClientMsg,
        /// When its frame was read from the socket.
        arrived: Instant,
    },
    Gone {
        conn: ConnId,
    },
}

enum SfuCmd {
    Add {
        conn: ConnId,
        room: String,
        sdp: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Remove {
        conn: ConnId,
    },
    Tiles {
        conn: ConnId,
        max_width: u32,
    },
    /// The DS says whether `conn` is a member of its room's group now.
    Member {
        conn: ConnId,
        member: bool,
    },
}

/// A media offer from a connection that is not (yet) a member: answered once it is.
struct HeldOffer {
    room: String,
    sdp: String,
    reply: oneshot::Sender<Result<String, String>>,
}

struct AppState {
    token: TokenKey,
    ds_tx: mpsc::Sender<DsCmd>,
    sfu_tx: mpsc::Sender<SfuCmd>,
    next_conn: AtomicU64,
    limiter: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    per_minute: u32,
    outbound_queue: usize,
    metrics: Arc<Metrics>,
    public_url: String,
    web: &'static [web::WebAsset],
}

impl AppState {
    /// Per-IP connection rate limit (fixed one-minute windows).
    fn allow(&self, ip: IpAddr) -> bool {
        let Ok(mut map) = self.limiter.lock() else {
            return false;
        };
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 <= self.per_minute
    }
}

/// A server running on the tokio runtime.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The SFU's UDP address.
    pub media_addr: SocketAddr,
    tapped: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The URL to print and to put in links.
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Frame payloads the SFU forwarded, as it saw them (only with `media_tap` set).
    pub fn tapped_payloads(&self) -> Vec<Vec<u8>> {
        self.tapped.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Stops accepting, closes connections, and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = self.join.await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) {
        let _ = self.join.await;
    }
}

/// Starts the server: binds, spawns the delivery-service task and the HTTP server.
pub async fn start(config: ServerConfig, keys: ServerKeys) -> anyhow::Result<RunningServer> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}"));
    let identity = conclave_ds::server_signing_identity(&keys.mls_public);
    let ds = Ds::new(
        DsConfig {
            remove_after: config.remove_after,
            max_room_size: config.max_room_size,
            ..DsConfig::default()
        },
        keys.mls_secret,
        identity,
    );
    let metrics = Arc::new(Metrics::default());
    let (ds_tx, ds_rx) = mpsc::channel(65_536);
    let (sfu_tx, sfu_rx) = mpsc::channel(1024);
    tokio::spawn(ds_task(ds, ds_rx, sfu_tx.clone(), metrics.clone()));
    let udp = tokio::net::UdpSocket::bind(config.media_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind the media port {}: {e}", config.media_listen))?;
    let media_addr = udp.local_addr()?;
    let mut sfu = conclave_sfu::Sfu::with_config(media_addr, config.sfu);
    if config.media_tap > 0 {
        sfu.set_tap(config.media_tap);
    }
    let tapped = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(sfu_task(sfu, udp, sfu_rx, metrics.clone(), tapped.clone()));
    let state = Arc::new(AppState {
        token: keys.token,
        ds_tx,
        sfu_tx,
        next_conn: AtomicU64::new(1),
        limiter: Mutex::new(HashMap::new()),
        per_minute: config.connections_per_ip_per_minute,
        outbound_queue: config.outbound_queue,
        metrics,
        public_url: url.clone(),
        web: config.web,
    });
    let app = Router::new()
        .route("/", get(web::index))
        .route("/app/{*file}", get(web::app_file))
        .route("/guest", axum::routing::post(web::guest))
        .route("/metrics", get(metrics_handler))
        .route("/ws/{room}", get(ws_handler))
        .with_state(state);
    let (tx, rx) = oneshot::channel::<()>();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    let join = match &config.tls {
        None => tokio::spawn(async move {
            let server = axum::serve(listener, make).with_graceful_shutdown(async {
                let _ = rx.await;
            });
            if let Err(e) = server.await {
                warn!(error = %e, "http server stopped");
            }
        }),
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "TLS certificate {} or key {}: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = rx.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            let std_listener = listener.into_std()?;
            let server = axum_server::from_tcp_rustls(std_listener, tls).handle(handle);
            tokio::spawn(async move {
                if let Err(e) = server.serve(make).await {
                    warn!(error = %e, "https server stopped");
                }
            })
        }
    };
    info!(%addr, "listening");
    Ok(RunningServer {
        addr,
        media_addr,
        tapped,
        url,
        shutdown: Some(tx),
        join,
    })
}

async fn metrics_handler(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}

fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 128
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    UrlPath(room): UrlPath<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<Arc<AppState>>,
) -> Response {
    if !state.allow(peer.ip()) {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "connection rate limit");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address",
        )
            .into_response();
    }
    if !valid_room(&room) {
        return (
            StatusCode::BAD_REQUEST,
            "room names are 1-128 of [A-Za-z0-9._-]",
        )
            .into_response();
    }
    // Small socket buffers: tungstenite's defaults (128 KiB each way) made a signaling
    // connection cost more memory than everything else a participant has on the server.
    // Large messages (a Welcome's tree) still arrive whole; they are read in more steps.
    ws.max_message_size(MAX_MESSAGE_LEN)
        .max_frame_size(MAX_MESSAGE_LEN)
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER)
        .on_upgrade(move |socket| connection(socket, room, peer, state))
}

/// A Welcome with a large tree goes as tree parts and then the Welcome without it: the
/// WebSocket writer keeps the capacity of the largest frame it ever wrote, and a tree of a
/// room of 1,000 is 283 KB (377 KB in JSON), which every joiner's connection would then hold.
fn split_tree(m: ServerMsg) -> Vec<ServerMsg> {
    match m {
        ServerMsg::Welcome {
            welcome,
            ratchet_tree,
        } if ratchet_tree.0.len() > conclave_proto::TREE_PART_LEN => {
            let mut out: Vec<ServerMsg> = ratchet_tree
                .0
                .chunks(conclave_proto::TREE_PART_LEN)
                .map(|c| ServerMsg::TreePart {
                    part: Bytes(c.to_vec()),
                })
                .collect();
            out.push(ServerMsg::Welcome {
                welcome,
                ratchet_tree: Bytes(Vec::new()),
            });
            out
        }
        m => vec![m],
    }
}

/// Read and write buffer of one signaling connection.
const WS_BUFFER: usize = 8 * 1024;

async fn send_now(socket: &mut WebSocket, msg: ServerMsg) {
    let _ = socket.send(Message::Text(msg.encode().into())).await;
}

async fn connection(mut socket: WebSocket, room: String, peer: SocketAddr, state: Arc<AppState>) {
    // The first message must be a Hello with a valid token for this room.
    let first = tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await;
    let token = match first {
        Ok(Some(Ok(Message::Text(t)))) => match ClientMsg::decode(&t) {
            Ok(ClientMsg::Hello { token, .. }) => token,
            Ok(_) => String::new(),
            Err(e) => {
                state.metrics.refused.fetch_add(1, Ordering::Relaxed);
                let code = if matches!(e, conclave_proto::ProtoError::Version { .. }) {
                    ErrorCode::Version
                } else {
                    ErrorCode::Malformed
                };
                send_now(
                    &mut socket,
                    ServerMsg::Error {
                        code,
                        reason: e.to_string(),
                    },
                )
                .await;
                return;
            }
        },
        _ => {
            warn!(%peer, "no hello");
            return;
        }
    };
    let now_unix = now_ts().as_millis() / 1000;
    let verified = state.token.verify(&token, &room, now_unix).and_then(|c| {
        if c.sub == web::INVITE_SUBJECT {
            Err(TokenError::Invitation)
        } else {
            Ok(c)
        }
    });
    let claims = match verified {
        Ok(c) => c,
        Err(e) => {
            state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, %room, reason = %e, "token refused");
            send_now(
                &mut socket,
                ServerMsg::Error {
                    code: ErrorCode::Unauthorized,
                    reason: e.to_string(),
                },
            )
            .await;
            let _ = socket
                .send(Message::Close(Some(CloseFrame {
                    code: 1008,
                    reason: "unauthorized".into(),
                })))
                .await;
            return;
        }
    };
    let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Outbound>(state.outbound_queue.max(1));
    if state
        .ds_tx
        .send(DsCmd::Connect {
            conn,
            room: room.clone(),
            user: claims.sub.clone(),
            out: tx.clone(),
        })
        .await
        .is_err()
    {
        return;
    }
    state.metrics.connections.fetch_add(1, Ordering::Relaxed);
    info!(conn, %peer, %room, user = %claims.sub, "authenticated");
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            match o {
                Outbound::Msg(m, fan_out) => {
                    let mut ok = true;
                    for part in split_tree(m) {
                        if sink
                            .send(Message::Text(part.encode().into()))
                            .await
                            .is_err()
                        {
                            ok = false;
                            break;
                        }
                    }
                    if !ok {
                        break;
                    }
                    drop(fan_out);
                }
                Outbound::Close(reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: reason.into(),
                        })))
                        .await;
                    break;
                }
            }
        }
    });
    let (mut tokens, mut last) = (MSG_BURST, Instant::now());
    while let Some(Ok(msg)) = stream.next().await {
        let reply = |code, reason: String| Outbound::Msg(ServerMsg::Error { code, reason }, None);
        let now = Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * MSG_RATE).min(MSG_BURST);
        last = now;
        if tokens < 1.0 {
            let _ = tx.try_send(reply(ErrorCode::RateLimited, "slow down".into()));
            continue;
        }
        tokens -= 1.0;
        match msg {
            Message::Text(t) => match ClientMsg::decode(&t) {
                Ok(ClientMsg::MediaOffer { sdp }) => {
                    let (rtx, rrx) = oneshot::channel();
                    let _ = state
                        .sfu_tx
                        .send(SfuCmd::Add {
                            conn,
                            room: room.clone(),
                            sdp,
                            reply: rtx,
                        })
                        .await;
                    // The SFU answers once the connection is a member of the group, which
                    // may be long after the offer: wait beside the signaling, not in it.
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let answer = match rrx.await {
                            Ok(Ok(sdp)) => ServerMsg::MediaAnswer { sdp },
                            Ok(Err(reason)) => ServerMsg::Error {
                                code: ErrorCode::Rejected,
                                reason,
                            },
                            // Replaced by a newer offer, or the connection left the group.
                            Err(_) => return,
                        };
                        let _ = tx.try_send(Outbound::Msg(answer, None));
                    });
                }
                Ok(ClientMsg::VideoTiles { max_width }) => {
                    let _ = state.sfu_tx.send(SfuCmd::Tiles { conn, max_width }).await;
                }
                Ok(m) => {
                    let arrived = Instant::now();
                    if state
                        .ds_tx
                        .send(DsCmd::Msg {
                            conn,
                            msg: m,
                            arrived,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    state.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(conn, reason = %e, "malformed message");
                    let _ = tx.try_send(reply(ErrorCode::Malformed, e.to_string()));
                }
            },
            Message::Binary(_) => {
                state.metrics.refused.fetch_add(1, Ordering::Relaxed);
                let _ = tx.try_send(reply(
                    ErrorCode::Malformed,
                    "signaling is JSON text frames".into(),
                ));
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    let _ = state.ds_tx.send(DsCmd::Gone { conn }).await;
    let _ = state.sfu_tx.send(SfuCmd::Remove { conn }).await;
    state.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    drop(tx);
    let _ = writer.await;
    info!(conn, "closed");
}

fn until(t: Timestamp) -> tokio::time::Instant {
    let now = now_ts();
    tokio::time::Instant::now() + t.saturating_since(now)
}

async fn ds_task(
    mut ds: Ds,
    mut rx: mpsc::Receiver<DsCmd>,
    sfu_tx: mpsc::Sender<SfuCmd>,
    metrics: Arc<Metrics>,
) {
    let mut routes: HashMap<ConnId, mpsc::Sender<Outbound>> = HashMap::new();
    loop {
        let deadline = ds.poll_timeout().map(until);
        let mut commit_arrived: Option<Instant> = None;
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    DsCmd::Connect { conn, room, user, out } => {
                        routes.insert(conn, out);
                        ds.connect(conn, &room, &user, now_ts());
                    }
                    DsCmd::Msg { conn, msg, arrived } => {
                        let commit = matches!(msg, ClientMsg::Commit { .. });
                        let started = Instant::now();
                        ds.handle(conn, msg, now_ts());
                        if commit {
                            metrics.observe_commit(started.elapsed());
                            commit_arrived = Some(arrived);
                        }
                    }
                    DsCmd::Gone { conn } => {
                        routes.remove(&conn);
                        ds.disconnect(conn, now_ts());
                    }
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                ds.handle_timeout(now_ts());
            }
        }
        let mut slow = Vec::new();
        let mut gone = Vec::new();
        // Only an accepted commit (one that is fanned out) is timed.
        let outputs: Vec<Output> = std::iter::from_fn(|| ds.poll_output()).collect();
        let fanned_out = outputs.iter().any(|o| {
            matches!(
                o,
                Output::Send {
                    msg: ServerMsg::Commit { .. },
                    ..
                }
            )
        });
        let fan_out = commit_arrived.filter(|_| fanned_out).map(|arrived| {
            Arc::new(FanOut {
                arrived,
                metrics: metrics.clone(),
            })
        });
        for o in outputs {
            match o {
                Output::Send { conn, msg } => {
                    if let Some(r) = routes.get(&conn) {
                        match r.try_send(Outbound::Msg(msg, fan_out.clone())) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => slow.push(conn),
                            // Its writer ended (the socket closed): it is leaving anyway.
                            Err(mpsc::error::TrySendError::Closed(_)) => gone.push(conn),
                        }
                    }
                }
                Output::Membership { conn, member } => {
                    let _ = sfu_tx.send(SfuCmd::Member { conn, member }).await;
                }
                Output::Close { conn, reason } => {
                    if let Some(r) = routes.remove(&conn) {
                        let _ = r.try_send(Outbound::Close(reason));
                    }
                }
                _ => {}
            }
        }
        for conn in gone {
            routes.remove(&conn);
        }
        for conn in slow {
            warn!(conn, "client too slow; disconnecting it");
            metrics.too_slow.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = routes.remove(&conn) {
                drop(r);
            }
            ds.disconnect(conn, now_ts());
        }
        metrics.update(&ds);
    }
}

async fn sfu_task(
    mut sfu: conclave_sfu::Sfu,
    socket: tokio::net::UdpSocket,
    mut rx: mpsc::Receiver<SfuCmd>,
    metrics: Arc<Metrics>,
    tapped: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mut buf = vec![0u8; 2000];
    // Media flows to and from a connection only while the DS says it is a group member.
    let mut members: HashSet<ConnId> = HashSet::new();
    let mut held: HashMap<ConnId, HeldOffer> = HashMap::new();
    let add = |sfu: &mut conclave_sfu::Sfu, conn: ConnId, offer: HeldOffer| {
        // A new offer from a connection that has a session replaces it (the client restarts
        // media after ICE or DTLS failed).
        sfu.remove_participant(conn, Instant::now());
        let r = sfu
            .add_participant(conn, &offer.room, &offer.sdp, Instant::now())
            .map_err(|e| e.to_string());
        if let Err(e) = &r {
            warn!(conn, error = %e, "media offer refused");
        }
        let _ = offer.reply.send(r);
    };
    loop {
        let now = Instant::now();
        let next = sfu
            .poll_timeout()
            .map_or(now + conclave_sfu::MAX_TIMEOUT, |t| {
                t.min(now + conclave_sfu::MAX_TIMEOUT)
            });
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break,
                Some(SfuCmd::Add { conn, room, sdp, reply }) => {
                    let offer = HeldOffer { room, sdp, reply };
                    if members.contains(&conn) {
                        add(&mut sfu, conn, offer);
                    } else {
                        held.insert(conn, offer);
                    }
                }
                Some(SfuCmd::Member { conn, member: true }) => {
                    members.insert(conn);
                    if let Some(offer) = held.remove(&conn) {
                        add(&mut sfu, conn, offer);
                    }
                }
                Some(SfuCmd::Member { conn, member: false } | SfuCmd::Remove { conn }) => {
                    members.remove(&conn);
                    held.remove(&conn);
                    sfu.remove_participant(conn, Instant::now());
                }
                Some(SfuCmd::Tiles { conn, max_width }) => {
                    sfu.set_max_video_width(conn, max_width, Instant::now())
                }
            },
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, source)) => sfu.handle_receive(Instant::now(), source, local, &buf[..n]),
                Err(e) => warn!(error = %e, "media socket"),
            },
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => sfu.handle_timeout(Instant::now()),
        }
        while let Some(t) = sfu.poll_transmit() {
            if let Err(e) = socket.send_to(&t.contents, t.destination).await {
                warn!(error = %e, dest = %t.destination, "media send");
            }
        }
        metrics.update_sfu(sfu.stats(), sfu.participant_count());
        let tap = sfu.take_tap();
        if !tap.is_empty() {
            if let Ok(mut t) = tapped.lock() {
                t.extend(tap);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_tree_goes_in_parts_that_join_back_into_the_same_welcome() {
        let tree: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        let msgs = split_tree(ServerMsg::Welcome {
            welcome: Bytes(vec![1, 2, 3]),
            ratchet_tree: Bytes(tree.clone()),
        });
        assert_eq!(
            msgs.len(),
            tree.len().div_ceil(conclave_proto::TREE_PART_LEN) + 1
        );
        let mut joined = Vec::new();
        for m in &msgs[..msgs.len() - 1] {
            let ServerMsg::TreePart { part } = m else {
                panic!("{m:?}")
            };
            assert!(part.0.len() <= conclave_proto::TREE_PART_LEN);
            // Each part is a small frame on the wire.
            assert!(m.encode().len() < 2 * conclave_proto::TREE_PART_LEN);
            joined.extend_from_slice(&part.0);
        }
        assert_eq!(joined, tree);
        assert!(matches!(
            msgs.last(),
            Some(ServerMsg::Welcome { welcome, ratchet_tree })
                if welcome.0 == [1, 2, 3] && ratchet_tree.0.is_empty()
        ));
        // A small tree stays inside its Welcome.
        let small = split_tree(ServerMsg::Welcome {
            welcome: Bytes(vec![1]),
            ratchet_tree: Bytes(vec![2; 100]),
        });
        assert_eq!(small.len(), 1);
    }
}

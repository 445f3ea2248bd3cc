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
mod delivery;
mod error;
mod keys;
mod media;
mod metrics;
mod signaling;
pub mod token;
pub mod web;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use conclave_ds::{Ds, DsConfig};
use conclave_mls::Timestamp;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

pub use config::{ServeArgs, ServerConfig};
use delivery::{ds_task, DsCmd};
use error::io;
pub use error::ServerError;
pub use keys::ServerKeys;
use media::{sfu_task, SfuCmd};
use metrics::Metrics;
use signaling::ws_handler;
pub use token::{Claims, TokenError, TokenKey};

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
pub async fn start(config: ServerConfig, keys: ServerKeys) -> Result<RunningServer, ServerError> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(io(format!("cannot listen on {}", config.listen)))?;
    let addr = listener.local_addr().map_err(io("the listening socket"))?;
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
        .map_err(io(format!(
            "cannot bind the media port {}",
            config.media_listen
        )))?;
    let media_addr = udp.local_addr().map_err(io("the media socket"))?;
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
                    ServerError::Tls(format!(
                        "TLS certificate {} or key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = rx.await;
                stopper.graceful_shutdown(Some(Duration::from_secs(2)));
            });
            let std_listener = listener.into_std().map_err(io("the listening socket"))?;
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

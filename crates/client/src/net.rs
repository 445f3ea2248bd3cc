//! The native runtime: one WebSocket to the server, the [`Participant`] core, the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_e2ee::{Device, SelfUpdateTimer, Timestamp};
use conclave_proto::{ClientMsg, ServerMsg, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use crate::{AdmitMode, Error, Event, NewRoomPolicy, Participant};

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The server's URL (`http://host:port` or `https://...`).
    pub url: String,
    /// The room.
    pub room: String,
    /// The join token.
    pub token: String,
    /// Policy if this participant ends up creating the room.
    pub policy: NewRoomPolicy,
    /// How to admit knocks when asked.
    pub admit: AdmitMode,
    /// Leave after this long (`None`: until [`Control::Leave`]).
    pub duration: Option<Duration>,
    /// Self-update period (post-compromise security), jittered by 20%.
    pub self_update_every: Duration,
}

/// Requests from the embedding program while the call runs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Leave cleanly now.
    Leave,
    /// Admit a knock (lobby host).
    Admit(u64),
    /// Deny a knock (lobby host).
    Deny(u64),
    /// Commit a self-update now.
    SelfUpdate,
}

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
    /// Frames that did not.
    pub frames_failed: u64,
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
}

fn now() -> Timestamp {
    Timestamp::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

fn ws_url(base: &str, room: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws/{room}")
}

/// Reads the claims of a token without checking its signature (the server checks it): the
/// identity and name the credential must carry.
pub fn token_identity(token: &str) -> Option<(String, String)> {
    use base64::Engine;
    let body = token.strip_prefix("ct1.")?.rsplit_once('.')?.0;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    Some((
        v.get("sub")?.as_str()?.to_owned(),
        v.get("name")?.as_str()?.to_owned(),
    ))
}

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Could not reach the server.
    #[error("connection: {0}")]
    Connect(String),
    /// The server refused us.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The core failed.
    #[error(transparent)]
    Core(#[from] Error),
}

/// Joins and runs the call until it ends; `on_event` sees every event; `control` takes
/// requests while it runs. Returns the summary.
pub async fn run(
    device: Device,
    opts: JoinOptions,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    mut on_event: impl FnMut(&Participant, &Event),
) -> Result<Summary, NetError> {
    let url = ws_url(&opts.url, &opts.room);
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .map_err(|e| NetError::Connect(format!("{url}: {e}")))?;
    let (mut sink, mut stream) = ws.split();
    let hello = ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: opts.token.clone(),
    };
    sink.send(Message::Text(hello.encode().into()))
        .await
        .map_err(|e| NetError::Connect(e.to_string()))?;

    let mut p = Participant::new(device, &opts.room, opts.policy.clone(), opts.admit);
    let mut alarms = Vec::new();
    let mut timer = SelfUpdateTimer::new(opts.self_update_every, 200);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut leaving: Option<tokio::time::Instant> = None;
    let ended;
    loop {
        // Flush what the core wants to send; surface events.
        while let Some(m) = p.poll_transmit() {
            if let Err(e) = sink.send(Message::Text(m.encode().into())).await {
                warn!(error = %e, "send failed");
            }
        }
        while let Some(e) = p.poll_event() {
            if let Event::Alarm { reason } = &e {
                alarms.push(reason.clone());
            }
            if matches!(e, Event::Joined { .. } | Event::EpochChanged { .. }) {
                timer.arm(now(), rand_u64());
            }
            on_event(&p, &e);
            if let Event::Ended { reason } = &e {
                let _ = sink.close().await;
                return Ok(summary(&p, alarms, reason.clone()));
            }
        }
        let until_update = timer.poll_timeout().map(|t| t.saturating_since(now()));
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => match ServerMsg::decode(&t) {
                    Ok(ServerMsg::Error {
                        code: conclave_proto::ErrorCode::Unauthorized
                        | conclave_proto::ErrorCode::Version
                        | conclave_proto::ErrorCode::RoomFull,
                        reason,
                    }) => {
                        return Err(NetError::Refused(reason));
                    }
                    Ok(m) => {
                        if let Err(e) = p.handle(m, now()) {
                            warn!(error = %e, "could not handle a server message");
                            alarms.push(e.to_string());
                        }
                    }
                    Err(e) => warn!(error = %e, "undecodable server message"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    ended = if leaving.is_some() { "left".to_owned() } else { "connection closed by the server".to_owned() };
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    ended = format!("connection lost: {e}");
                    break;
                }
            },
            c = control.recv(), if leaving.is_none() => match c {
                Some(Control::Leave) | None => {
                    p.leave()?;
                    leaving = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                }
                Some(Control::Admit(k)) => p.admit(k, now())?,
                Some(Control::Deny(k)) => p.deny(k),
                Some(Control::SelfUpdate) => p.self_update(now())?,
            },
            _ = tokio::time::sleep(until_update.unwrap_or(Duration::from_secs(3600))), if until_update.is_some() => {
                info!("periodic self-update");
                p.self_update(now())?;
                timer.arm(now(), rand_u64());
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && leaving.is_none() => {
                p.leave()?;
                leaving = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = sleep_until_opt(leaving), if leaving.is_some() => {
                // Our self-removal was sent; give the server a moment, then go.
                ended = "left".into();
                break;
            }
        }
    }
    while let Some(m) = p.poll_transmit() {
        let _ = sink.send(Message::Text(m.encode().into())).await;
    }
    let _ = sink.close().await;
    Ok(summary(&p, alarms, ended))
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

fn rand_u64() -> u64 {
    // Jitter only (not key material): the randomly keyed hasher of std is enough.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now().as_millis());
    h.finish()
}

fn summary(p: &Participant, alarms: Vec<String>, ended: String) -> Summary {
    Summary {
        epoch: p.epoch(),
        security_code: p.security_code().map(|c| c.to_string()),
        roster: p
            .roster()
            .into_iter()
            .map(|e| RosterLine {
                id: e.user_id,
                name: e.display_name,
                fingerprint: e.fingerprint.short_code(),
            })
            .collect(),
        senders: Vec::new(),
        alarms,
        ended,
    }
}

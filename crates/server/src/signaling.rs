//! One signaling connection: the WebSocket, its hello (the join token), its rate limit and
//! outbound queue, and the routing of its messages to the delivery service or the SFU.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use conclave_proto::{ClientMsg, ErrorCode, MediaMsg, ServerMsg, MAX_MESSAGE_LEN};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::delivery::DsCmd;
use crate::media::SfuCmd;
use crate::metrics::Metrics;
use crate::token::TokenError;
use crate::{now_ts, web, AppState, HELLO_TIMEOUT, MSG_BURST, MSG_RATE};
use conclave_ds::ConnId;

pub(crate) enum Outbound {
    /// A message; with a commit's fan-out, the tracker that times it (dropped once written).
    Msg(ServerMsg, Option<Arc<FanOut>>),
    Close(String),
}

/// Times one commit's fan-out: every message it caused holds a clone, and the last clone to
/// go (after its writer put it on the socket) records the time since the commit arrived.
pub(crate) struct FanOut {
    pub(crate) arrived: Instant,
    pub(crate) metrics: Arc<Metrics>,
}

impl Drop for FanOut {
    fn drop(&mut self) {
        self.metrics.observe_rekey(self.arrived.elapsed());
    }
}

pub(crate) fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 128
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

pub(crate) async fn ws_handler(
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

/// Read and write buffer of one signaling connection.
pub(crate) const WS_BUFFER: usize = 8 * 1024;

pub(crate) async fn send_now(socket: &mut WebSocket, msg: ServerMsg) {
    let _ = socket.send(Message::Text(msg.encode().into())).await;
}

pub(crate) async fn connection(
    mut socket: WebSocket,
    room: String,
    peer: SocketAddr,
    state: Arc<AppState>,
) {
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
    let conn = ConnId(state.next_conn.fetch_add(1, Ordering::Relaxed));
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
    info!(%conn, %peer, %room, user = %claims.sub, "authenticated");
    let (mut sink, mut stream) = socket.split();
    let writer = tokio::spawn(async move {
        while let Some(o) = rx.recv().await {
            match o {
                Outbound::Msg(m, fan_out) => {
                    let mut ok = true;
                    for part in conclave_proto::split_tree(m) {
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
                Ok(ClientMsg::Media(MediaMsg::MediaOffer { sdp })) => {
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
                Ok(ClientMsg::Media(MediaMsg::VideoTiles { max_width })) => {
                    let _ = state.sfu_tx.send(SfuCmd::Tiles { conn, max_width }).await;
                }
                Ok(ClientMsg::Hello { .. }) => {
                    let _ = tx.try_send(reply(ErrorCode::Unexpected, "already said hello".into()));
                }
                Ok(ClientMsg::Membership(m)) => {
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
                // A kind of message added to the protocol after this server was written.
                Ok(_) => {
                    let _ = tx.try_send(reply(ErrorCode::Unexpected, "not understood here".into()));
                }
                Err(e) => {
                    state.metrics.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%conn, reason = %e, "malformed message");
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
    info!(%conn, "closed");
}

//! The web client's files, and guest tokens for invitation links.
//!
//! The files are compiled into the binary that starts the server (the `conclave` binary
//! embeds what its build script produced: the WebAssembly module, its wasm-bindgen glue, the
//! page and the worker) and handed in as [`WebAsset`]s. They are served with a strict
//! Content-Security-Policy: scripts only from this origin, no inline script, no framing.
//!
//! An *invitation* is a token for a room whose subject is [`INVITE_SUBJECT`]. It cannot join
//! by itself: `POST /guest` exchanges it, with a display name, for a join token naming a
//! fresh random guest identity. So one printed link lets any number of people (or browser
//! tabs) join, each as a device of its own. Like every token, a guest token only lets its
//! bearer knock; in a lobby room a host still decides, and the roster shows the guest's name
//! and key fingerprint to everyone.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path as UrlPath, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{now_ts, AppState, Claims};

/// The subject of an invitation token (never a member's identity: the WebSocket refuses it).
pub const INVITE_SUBJECT: &str = "*invite*";
/// How long a guest token lasts at most (it only needs to get its bearer to the room).
const GUEST_TTL_SECS: u64 = 12 * 3600;

/// One file of the web client.
#[derive(Clone, Copy, Debug)]
pub struct WebAsset {
    /// File name under `/app/` (`index.html` is also served at `/`).
    pub path: &'static str,
    /// Content type.
    pub mime: &'static str,
    /// Contents.
    pub body: &'static [u8],
}

const CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
    worker-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; \
    media-src 'self' blob: mediastream:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn with_headers(mime: &'static str, body: Vec<u8>) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn asset(state: &AppState, path: &str) -> Option<&'static WebAsset> {
    state.web.iter().find(|a| a.path == path)
}

pub(crate) async fn index(State(state): State<Arc<AppState>>) -> Response {
    match asset(&state, "index.html") {
        Some(a) => with_headers(a.mime, a.body.to_vec()),
        None => with_headers(
            "text/html; charset=utf-8",
            format!(
                "<!doctype html><meta charset=utf-8><title>Conclave</title>\
                 <h1>Conclave</h1><p>This server relays end-to-end encrypted calls; it holds no \
                 key that opens them.</p><p>This build has no web client (it is built by the \
                 <code>conclave</code> binary's build script when the wasm32 target and \
                 wasm-bindgen-cli are installed; see the README). Join from the command line: \
                 <code>conclave join {} --room ROOM --token TOKEN</code>.</p>",
                state.public_url
            )
            .into_bytes(),
        ),
    }
}

pub(crate) async fn app_file(
    State(state): State<Arc<AppState>>,
    UrlPath(file): UrlPath<String>,
) -> Response {
    match asset(&state, &file) {
        Some(a) => with_headers(a.mime, a.body.to_vec()),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

/// `POST /guest` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GuestRequest {
    room: String,
    invite: String,
    name: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct GuestToken {
    token: String,
    user_id: String,
}

pub(crate) async fn guest(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    State(state): State<Arc<AppState>>,
    body: Result<Json<GuestRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !state.allow(peer.ip()) {
        state.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from this address",
        )
            .into_response();
    }
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("bad request: {e}")).into_response(),
    };
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return (
            StatusCode::BAD_REQUEST,
            "a name is 1-64 printable characters",
        )
            .into_response();
    }
    let now_unix = now_ts().as_millis() / 1000;
    let claims = match state.token.verify(&req.invite, &req.room, now_unix) {
        Ok(c) if c.sub == INVITE_SUBJECT => c,
        Ok(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "that is a join token, not an invitation: join with it directly",
            )
                .into_response()
        }
        Err(e) => {
            state.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            warn!(%peer, room = %req.room, reason = %e, "invitation refused");
            return (StatusCode::UNAUTHORIZED, format!("invitation refused: {e}")).into_response();
        }
    };
    let mut id = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut id).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no randomness").into_response();
    }
    let user_id = format!(
        "guest-{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let token = state.token.issue(&Claims {
        room: claims.room,
        sub: user_id.clone(),
        name: name.to_owned(),
        exp: claims.exp.min(now_unix + GUEST_TTL_SECS),
    });
    info!(%peer, room = %req.room, %user_id, "guest token issued");
    Json(GuestToken { token, user_id }).into_response()
}

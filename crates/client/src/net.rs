//! The native runtime: one WebSocket to the server, the [`Participant`] core, the time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_e2ee::{Device, SelfUpdateTimer, Timestamp};
use conclave_proto::{ClientMsg, ServerMsg, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

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
    /// Send synthetic audio (every 20 ms) and video (every 33 ms) and receive others' media
    /// through the SFU.
    pub media: bool,
    /// Send audio (with `media`); off: receive only.
    pub send_audio: bool,
    /// Send video (with `media`); off: receive only.
    pub send_video: bool,
    /// Audio level (RFC 6464, -dBov) sent with our audio: what a microphone's meter would say
    /// (`Some(-20)`: speaking; `None`: no level). The SFU picks speakers from it.
    pub audio_level: Option<i8>,
    /// Width of the largest video tile we show (the SFU sends no larger layer); `None`: full
    /// size.
    pub tile_width: Option<u32>,
    /// Pre-encoded media to send instead of the synthetic sources (looped; played at 30 video
    /// frames and 50 audio packets a second).
    pub files: MediaFiles,
    /// Extra trust anchors (PEM) for the server's TLS certificate, beside the public web
    /// roots: for a server with a private or self-signed certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Drop this fraction (0 to 1) of media datagrams, each way, at random: a network
    /// impairment for load and soak tests (0 in real use).
    pub media_loss: f64,
    /// The meeting's charter (`conclave join --charter`): join or create only a group with
    /// exactly this policy. `None`: take the group the room has.
    pub charter: Option<conclave_e2ee::RoomPolicy>,
    /// Where this participant keeps its trust-on-first-use pins (user id to the device
    /// fingerprint first seen for it), read at the start and written, mode 0600, when a pin
    /// is added. A known user id with another key raises an alarm. `None`: no pinning.
    pub pins_file: Option<std::path::PathBuf>,
}

/// The TLS connector for `wss://` URLs: the public web roots plus the certificates in
/// `ca_file`, if any.
fn tls_connector(
    ca_file: Option<&std::path::Path>,
) -> Result<Option<tokio_tungstenite::Connector>, NetError> {
    use rustls_pki_types::pem::PemObject;
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
    let mut added = 0;
    for cert in certs {
        let cert = cert.map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| NetError::Connect(format!("{}: {e}", path.display())))?;
        added += 1;
    }
    if added == 0 {
        return Err(NetError::Connect(format!(
            "{}: no certificate in it",
            path.display()
        )));
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| NetError::Connect(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Some(tokio_tungstenite::Connector::Rustls(
        std::sync::Arc::new(config),
    )))
}

/// Pre-encoded media sources.
#[derive(Clone, Debug, Default)]
pub struct MediaFiles {
    /// VP8 video from an IVF file.
    pub video: Option<crate::media_file::Ivf>,
    /// Opus audio from an Ogg file.
    pub audio: Option<crate::media_file::OggOpus>,
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
    /// Of those, real media (a file or a device) that SFrame authenticated but that has no
    /// synthetic content to compare byte for byte.
    pub frames_unchecked: u64,
    /// Frames that did not.
    pub frames_failed: u64,
    /// Frames sealed before we joined (unreadable by design).
    pub frames_before_join: u64,
    /// Frames that arrived twice (retransmissions): the first copy was used.
    pub frames_duplicate: u64,
    /// Frames that arrived while this device held no keys (before its first epoch, or after
    /// it left).
    pub frames_without_keys: u64,
    /// Frames held for an epoch this device never reached in time (still held at the end,
    /// or dropped from the hold queue). With the counts above, every received frame is in
    /// exactly one: `frames_received` = decrypted + failed + before join + duplicate +
    /// without keys + held.
    pub frames_held: u64,
    /// Whether the first frame seen from this sender in every epoch was a keyframe (video).
    pub keyframe_first_in_each_epoch: bool,
    /// Why frames failed, by kind.
    pub failure_kinds: std::collections::BTreeMap<String, u64>,
    /// Speaking at the end (by the audio level on its packets).
    pub speaking: bool,
    /// Loud audio heard from this sender, in milliseconds.
    pub speech_ms: u64,
}

/// One epoch this participant was in.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct EpochLine {
    /// The epoch.
    pub epoch: u64,
    /// Its security code.
    pub security_code: String,
    /// Members in it.
    pub members: usize,
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
    /// The charter of the group this participant was in (`c1.…`), for the links it hands out.
    pub charter: Option<String>,
    /// Every epoch this participant was in, in order.
    pub history: Vec<EpochLine>,
    /// Frames this participant sealed and sent.
    pub frames_sent: u64,
    /// Times the connection was lost and joined again.
    pub reconnects: u32,
    /// Times the media session failed and a new one was started.
    pub media_restarts: u32,
    /// From admission (the first epoch) to the first frame from anyone that opened, in ms.
    pub first_frame_after_join_ms: Option<u64>,
    /// Frames held for an epoch this participant had not reached, then dropped (the hold
    /// queue was full or the commit came too late): frames lost to a key transition.
    pub frames_held_dropped: u64,
    /// Time this participant took to apply each commit of another member, in µs (not
    /// printed; the load test aggregates it).
    #[serde(skip)]
    pub commit_apply_us: Vec<u32>,
    /// Capture-to-open latency of recent synthetic frames, in µs (not printed; the load
    /// test aggregates it).
    #[serde(skip)]
    pub frame_latency_us: Vec<u32>,
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
    let v = crate::token_claims(token)?;
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
    /// A local file (the pins) could not be read or written.
    #[error("local storage: {0}")]
    Storage(String),
}

/// The trust-on-first-use pins kept at `path` (none yet if it does not exist). A file that
/// does not parse is an error, not an empty store: forgetting pins would hide a changed key.
pub fn load_pins(path: &std::path::Path) -> Result<conclave_e2ee::TrustStore, NetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => conclave_e2ee::TrustStore::from_text(&text)
            .map_err(|e| NetError::Storage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(NetError::Storage(format!("{}: {e}", path.display()))),
    }
}

/// Reconnection after a lost connection: the first wait, doubled per failed attempt up to
/// [`RECONNECT_MAX_DELAY`], with 20% jitter; [`RECONNECT_ATTEMPTS`] failures in a row end
/// the call.
pub const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between reconnection attempts.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(8);
/// Failed reconnection attempts in a row before the call is given up.
pub const RECONNECT_ATTEMPTS: u32 = 8;

/// The wait before reconnection attempt `attempt` (0-based), jittered by `random`.
pub fn reconnect_delay(attempt: u32, random: u64) -> Duration {
    let base = RECONNECT_FIRST_DELAY
        .saturating_mul(1 << attempt.min(16))
        .min(RECONNECT_MAX_DELAY);
    // 80% to 120% of the base.
    let permille = 800 + (random % 401);
    base * permille as u32 / 1000
}

/// How one connection ended.
enum Once {
    /// The call is over (left, ended, deadline).
    Done(Box<Summary>),
    /// The connection was lost; the device comes back to join again.
    Lost {
        device: Device,
        summary: Box<Summary>,
        joined: bool,
    },
    /// Could not connect at all.
    Failed { device: Device, error: NetError },
}

/// Joins and runs the call until it ends; `on_event` sees every event; `control` takes
/// requests while it runs. Returns the summary.
///
/// A connection lost during the call is retried with backoff ([`reconnect_delay`]); the
/// device joins again as a new member (a new leaf and a new epoch: nothing of the old
/// session's keys is kept), and the server replaces its stale leaf as soon as it knocks.
/// Failing to connect the first time is an error.
pub async fn run(
    device: Device,
    opts: JoinOptions,
    mut control: tokio::sync::mpsc::Receiver<Control>,
    mut on_event: impl FnMut(&Participant, &Event),
) -> Result<Summary, NetError> {
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut state = CallState::default();
    let mut device = device;
    let mut carried: Option<Summary> = None;
    let mut failures = 0u32;
    let mut ever_connected = false;
    loop {
        let once = run_once(
            device,
            &opts,
            &mut control,
            &mut on_event,
            &mut state,
            deadline,
        )
        .await?;
        let (d, summary) = match once {
            Once::Done(s) => return Ok(merge(carried, *s)),
            Once::Failed { device: d, error } => {
                if !ever_connected {
                    return Err(error);
                }
                warn!(%error, "reconnection failed");
                failures += 1;
                (d, None)
            }
            Once::Lost {
                device: d,
                summary,
                joined,
            } => {
                ever_connected = true;
                if joined {
                    failures = 0;
                } else {
                    failures += 1;
                }
                (d, Some(*summary))
            }
        };
        device = d;
        if let Some(s) = summary {
            carried = Some(merge(carried, s));
        }
        let Some(mut last) = carried.clone() else {
            return Err(NetError::Connect("lost before the call began".into()));
        };
        if failures >= RECONNECT_ATTEMPTS {
            last.ended = format!("{} (gave up after {failures} attempts)", last.ended);
            return Ok(last);
        }
        let wait = reconnect_delay(failures, rand_u64());
        info!(?wait, attempt = failures + 1, reason = %last.ended, "connection lost; reconnecting");
        let until = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = sleep_until_opt(deadline), if deadline.is_some() => {
                last.ended = "left".into();
                return Ok(last);
            }
            c = control.recv() => if matches!(c, Some(Control::Leave) | None) {
                last.ended = "left".into();
                return Ok(last);
            },
        }
        state.reconnects += 1;
    }
}

/// One summary of a call made of several connections.
fn merge(earlier: Option<Summary>, mut later: Summary) -> Summary {
    let Some(earlier) = earlier else {
        return later;
    };
    later.frames_sent += earlier.frames_sent;
    later.media_restarts += earlier.media_restarts;
    later.frames_held_dropped += earlier.frames_held_dropped;
    later.first_frame_after_join_ms = earlier
        .first_frame_after_join_ms
        .or(later.first_frame_after_join_ms);
    let mut apply = earlier.commit_apply_us;
    apply.append(&mut later.commit_apply_us);
    later.commit_apply_us = apply;
    let mut lat = earlier.frame_latency_us;
    lat.append(&mut later.frame_latency_us);
    later.frame_latency_us = lat;
    for old in earlier.senders {
        match later.senders.iter_mut().find(|l| l.id == old.id) {
            Some(l) => {
                l.frames_received += old.frames_received;
                l.frames_decrypted += old.frames_decrypted;
                l.frames_unchecked += old.frames_unchecked;
                l.frames_failed += old.frames_failed;
                l.frames_before_join += old.frames_before_join;
                l.frames_duplicate += old.frames_duplicate;
                l.frames_without_keys += old.frames_without_keys;
                l.frames_held += old.frames_held;
                l.keyframe_first_in_each_epoch &= old.keyframe_first_in_each_epoch;
                l.speech_ms += old.speech_ms;
                for (k, v) in old.failure_kinds {
                    *l.failure_kinds.entry(k).or_default() += v;
                }
            }
            None => later.senders.push(old),
        }
    }
    later
}

async fn run_once(
    device: Device,
    opts: &JoinOptions,
    control: &mut tokio::sync::mpsc::Receiver<Control>,
    on_event: &mut impl FnMut(&Participant, &Event),
    state: &mut CallState,
    deadline: Option<tokio::time::Instant>,
) -> Result<Once, NetError> {
    let url = ws_url(&opts.url, &opts.room);
    let connector = match tls_connector(opts.ca_file.as_deref()) {
        Ok(c) => c,
        Err(error) => return Err(error),
    };
    // Small socket buffers (tungstenite's defaults are 128 KiB each way); a Welcome with its
    // tree still arrives whole, read in more steps.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024);
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(config),
        false,
        connector,
    );
    let ws = match connecting.await {
        Ok((ws, _)) => ws,
        Err(e) => {
            return Ok(Once::Failed {
                device,
                error: NetError::Connect(format!("{url}: {e}")),
            })
        }
    };
    let (mut sink, mut stream) = ws.split();
    let hello = ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: opts.token.clone(),
    };
    if let Err(e) = sink.send(Message::Text(hello.encode().into())).await {
        return Ok(Once::Failed {
            device,
            error: NetError::Connect(e.to_string()),
        });
    }

    let mut media = match MediaSide::new(&opts.url, opts.media).await {
        Ok(m) => m.with_files(&opts.files).with_loss(opts.media_loss),
        Err(error) => return Ok(Once::Failed { device, error }),
    };
    let mut p = Participant::new(device, &opts.room, opts.policy.clone(), opts.admit);
    if let Some(charter) = &opts.charter {
        p = p.with_charter(charter.clone())?;
    }
    if let Some(path) = &opts.pins_file {
        p.set_trust_store(load_pins(path)?);
    }
    let mut audio_tick = tokio::time::interval(Duration::from_millis(20));
    let mut video_tick = tokio::time::interval(Duration::from_millis(33));
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut timer = SelfUpdateTimer::new(opts.self_update_every, 200);
    let mut leaving: Option<tokio::time::Instant> = None;
    let mut joined = false;
    let ended;
    let mut lost = false;
    let mut restart_at: Option<tokio::time::Instant> = None;
    loop {
        // New pins are saved before anything else happens.
        if let (Some(path), Some(text)) = (&opts.pins_file, p.take_trust_update()) {
            conclave_e2ee::write_private(path, text.as_bytes())
                .map_err(|e| NetError::Storage(format!("{}: {e}", path.display())))?;
        }
        // Flush what the core wants to send; surface events.
        while let Some(m) = p.poll_transmit() {
            if let Err(e) = sink.send(Message::Text(m.encode().into())).await {
                warn!(error = %e, "send failed");
            }
        }
        while let Some(e) = p.poll_event() {
            state.observe(&p, &e, &media);
            if matches!(e, Event::Joined { .. }) {
                state.joined_at.get_or_insert_with(std::time::Instant::now);
            }
            if matches!(e, Event::Joined { .. } | Event::EpochChanged { .. }) {
                joined = true;
                timer.arm(now(), rand_u64());
                media.release_held(&mut p);
            }
            on_event(&p, &e);
            if let Event::Ended { reason } = &e {
                let _ = sink.close().await;
                return Ok(Once::Done(Box::new(state.summary(
                    &p,
                    &media,
                    reason.clone(),
                ))));
            }
        }
        media.flush().await;
        if media.failed() && restart_at.is_none() {
            // Back off: 1 s, 2 s, 4 s, then every 8 s.
            let wait = Duration::from_secs(1 << media.restarts.min(3));
            warn!(?wait, "media session failed; starting a new one");
            restart_at = Some(tokio::time::Instant::now() + wait);
        }
        let until_update = timer.poll_timeout().map(|t| t.saturating_since(now()));
        let (media_active, media_sending, media_deadline) =
            (media.active(), media.sending(), media.next_timeout());
        let media_socket = media.socket.clone();
        // Old epochs' keys are erased when their grace window ends, whether or not a frame
        // arrives then.
        let keys_deadline = p
            .media_ref()
            .poll_timeout()
            .map(|t| tokio::time::Instant::now() + t.saturating_since(now()));
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
                    Ok(ServerMsg::MediaAnswer { sdp }) => media.answer(&sdp, &mut p),
                    Ok(m) => {
                        let hello_answered = matches!(m, ServerMsg::Joined { .. });
                        let commit = matches!(m, ServerMsg::Commit { .. });
                        let started = std::time::Instant::now();
                        if let Err(e) = p.handle(m, now()) {
                            warn!(error = %e, "could not handle a server message");
                            state.alarms.push(e.to_string());
                        }
                        if commit {
                            let us = started.elapsed().as_micros().min(u128::from(u32::MAX));
                            state.commit_apply_us.push(us as u32);
                        }
                        if hello_answered {
                            if let Some(offer) = media.offer()? {
                                media.set_audio_level(opts.audio_level);
                                let mut msgs = vec![ClientMsg::MediaOffer { sdp: offer }];
                                if let Some(max_width) = opts.tile_width {
                                    msgs.push(ClientMsg::VideoTiles { max_width });
                                }
                                for msg in msgs {
                                    if let Err(e) = sink.send(Message::Text(msg.encode().into())).await {
                                        warn!(error = %e, "send failed");
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "undecodable server message"),
                },
                Some(Ok(Message::Close(_))) | None => {
                    lost = leaving.is_none();
                    ended = if lost { "connection closed by the server".to_owned() } else { "left".to_owned() };
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    lost = leaving.is_none();
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
            r = recv_owned(media_socket.as_deref()), if media_active => media.received(r, &mut p),
            _ = sleep_until_opt(media_deadline), if media_active => media.timeout(&mut p),
            _ = sleep_until_opt(keys_deadline), if keys_deadline.is_some() => p.media().handle_timeout(now()),
            _ = audio_tick.tick(), if media_sending && opts.send_audio => media.send(str0m::media::MediaKind::Audio, &mut p),
            _ = video_tick.tick(), if media_sending && opts.send_video => media.send(str0m::media::MediaKind::Video, &mut p),
            _ = tokio::time::sleep(until_update.unwrap_or(Duration::from_secs(3600))), if until_update.is_some() => {
                info!("periodic self-update");
                p.self_update(now())?;
                timer.arm(now(), rand_u64());
            }
            _ = sleep_until_opt(deadline), if deadline.is_some() && leaving.is_none() => {
                p.leave()?;
                leaving = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = sleep_until_opt(restart_at), if restart_at.is_some() => {
                restart_at = None;
                if let Some(offer) = media.restart()? {
                    let msg = ClientMsg::MediaOffer { sdp: offer };
                    if let Err(e) = sink.send(Message::Text(msg.encode().into())).await {
                        warn!(error = %e, "send failed");
                    }
                }
            }
            _ = sleep_until_opt(leaving), if leaving.is_some() => {
                // Our self-removal was sent; give the server a moment, then go.
                ended = "left".into();
                break;
            }
        }
    }
    let summary = Box::new(state.summary(&p, &media, ended));
    if lost {
        return Ok(Once::Lost {
            device: p.into_device(),
            summary,
            joined,
        });
    }
    while let Some(m) = p.poll_transmit() {
        let _ = sink.send(Message::Text(m.encode().into())).await;
    }
    let _ = sink.close().await;
    Ok(Once::Done(summary))
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

/// What the runtime remembers of the call for its summary.
#[derive(Default)]
struct CallState {
    alarms: Vec<String>,
    history: Vec<EpochLine>,
    names: std::collections::BTreeMap<u32, (String, String)>,
    reconnects: u32,
    /// Time to apply each commit from another member, in µs.
    commit_apply_us: Vec<u32>,
    /// When this participant was admitted (its first epoch).
    joined_at: Option<std::time::Instant>,
}

impl CallState {
    fn observe(&mut self, p: &Participant, e: &Event, media: &MediaSide) {
        match e {
            Event::Alarm { reason } => self.alarms.push(reason.clone()),
            Event::Joined {
                epoch,
                security_code,
            }
            | Event::EpochChanged {
                change: conclave_e2ee::EpochChange { epoch, .. },
                security_code,
            } => {
                // Cheap per epoch (a meeting of 1,000 changes epoch often): names only for
                // leaves we hear from; the roster itself is read once, for the summary.
                for leaf in media.sender_leaves() {
                    if let std::collections::btree_map::Entry::Vacant(v) = self.names.entry(leaf) {
                        if let Some(r) = p.member(leaf) {
                            v.insert((r.user_id, r.display_name));
                        }
                    }
                }
                // Members who leave keep their names for the summary (their leaves are gone
                // from the roster by the time it is read).
                if let Event::EpochChanged { change, .. } = e {
                    for r in &change.removed {
                        self.names
                            .entry(r.leaf)
                            .or_insert_with(|| (r.user_id.clone(), r.display_name.clone()));
                    }
                }
                self.history.push(EpochLine {
                    epoch: *epoch,
                    security_code: security_code.to_string(),
                    members: p.member_count(),
                });
            }
            _ => {}
        }
    }

    fn summary(&self, p: &Participant, media: &MediaSide, ended: String) -> Summary {
        let last = self.history.last();
        // The roster once (the last epoch's, kept after leaving), for names and the summary.
        let roster = p.roster();
        let senders = media
            .counts()
            .into_iter()
            .map(|(leaf, c)| {
                let (id, name) = self
                    .names
                    .get(&leaf)
                    .cloned()
                    .or_else(|| {
                        roster
                            .iter()
                            .find(|r| r.leaf == leaf)
                            .map(|r| (r.user_id.clone(), r.display_name.clone()))
                    })
                    .unwrap_or_else(|| (format!("leaf-{leaf}"), String::new()));
                SenderLine {
                    id,
                    name,
                    frames_received: c.received,
                    frames_decrypted: c.decrypted,
                    frames_unchecked: c.unchecked,
                    frames_failed: c.failed,
                    frames_before_join: c.before_join,
                    frames_duplicate: c.duplicates,
                    frames_without_keys: c.without_keys,
                    frames_held: c.held,
                    keyframe_first_in_each_epoch: c.keyframe_first_per_epoch,
                    failure_kinds: c.failure_kinds.clone(),
                    speaking: c.speaking,
                    speech_ms: c.speech_ms,
                }
            })
            .collect();
        Summary {
            charter: p
                .charter()
                .or_else(|| p.expected_charter().and_then(|c| c.to_charter().ok())),
            epoch: p.epoch().or(last.map(|l| l.epoch)),
            security_code: p
                .security_code()
                .map(|c| c.to_string())
                .or(last.map(|l| l.security_code.clone())),
            roster: roster
                .into_iter()
                .map(|e| RosterLine {
                    fingerprint: e.fingerprint.short_code(),
                    id: e.user_id,
                    name: e.display_name,
                })
                .collect(),
            senders,
            alarms: self.alarms.clone(),
            ended,
            history: self.history.clone(),
            frames_sent: media.sent(),
            reconnects: self.reconnects,
            media_restarts: media.restarts,
            first_frame_after_join_ms: match (self.joined_at, media.first_opened()) {
                (Some(j), Some(f)) => Some(f.saturating_duration_since(j).as_millis() as u64),
                _ => None,
            },
            frames_held_dropped: media.held_dropped(),
            commit_apply_us: self.commit_apply_us.clone(),
            frame_latency_us: media.latencies_us(),
        }
    }
}

/// The participant's media side: UDP socket, str0m session, synthetic sources.
struct MediaSide {
    /// Media sessions started again after one failed.
    restarts: u32,
    /// Fraction of datagrams dropped each way (test impairment), and its random state.
    loss: f64,
    rng: u64,
    socket: Option<std::sync::Arc<tokio::net::UdpSocket>>,
    local: Option<std::net::SocketAddr>,
    link: Option<crate::media_link::MediaLink>,
    video_file: Option<Looping<crate::media_file::VideoFrame>>,
    audio_file: Option<Looping<Vec<u8>>>,
}

use crate::media_file::Looping;

async fn recv_owned(
    socket: Option<&tokio::net::UdpSocket>,
) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let socket = match socket {
        Some(s) => s,
        None => return std::future::pending().await,
    };
    let mut buf = vec![0u8; 2000];
    let (n, from) = socket.recv_from(&mut buf).await.ok()?;
    buf.truncate(n);
    Some((buf, from))
}

impl MediaSide {
    async fn new(url: &str, enabled: bool) -> Result<Self, NetError> {
        let mut side = MediaSide {
            restarts: 0,
            loss: 0.0,
            rng: rand_u64() | 1,
            socket: None,
            local: None,
            link: None,
            video_file: None,
            audio_file: None,
        };
        if enabled {
            // Bind on the interface that routes to the server.
            let host = url
                .split("://")
                .nth(1)
                .unwrap_or(url)
                .split('/')
                .next()
                .unwrap_or("127.0.0.1:8480")
                .to_owned();
            let target = tokio::net::lookup_host(host.as_str())
                .await
                .map_err(|e| NetError::Connect(format!("{host}: {e}")))?
                .next()
                .ok_or_else(|| NetError::Connect(format!("{host}: no address")))?;
            let probe =
                std::net::UdpSocket::bind((if target.is_ipv4() { "0.0.0.0" } else { "::" }, 0))
                    .and_then(|s| s.connect(target).and(s.local_addr()))
                    .map_err(|e| NetError::Connect(e.to_string()))?;
            let socket = tokio::net::UdpSocket::bind((probe.ip(), 0))
                .await
                .map_err(|e| NetError::Connect(e.to_string()))?;
            side.local = socket.local_addr().ok();
            side.socket = Some(std::sync::Arc::new(socket));
        }
        Ok(side)
    }

    fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    /// Whether to drop the next datagram (the test impairment).
    fn lose(&mut self) -> bool {
        if self.loss <= 0.0 {
            return false;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64 <= self.loss
    }

    fn with_files(mut self, files: &MediaFiles) -> Self {
        self.video_file = files
            .video
            .as_ref()
            .and_then(|v| Looping::new(v.frames.clone()));
        self.audio_file = files
            .audio
            .as_ref()
            .and_then(|a| Looping::new(a.packets.clone()));
        self
    }

    fn offer(&mut self) -> Result<Option<String>, NetError> {
        let (Some(local), None) = (self.local, self.link.as_ref()) else {
            return Ok(None);
        };
        let (link, sdp) = crate::media_link::MediaLink::offer(
            local,
            crate::media_link::DEFAULT_SLOTS,
            std::time::Instant::now(),
        )
        .map_err(NetError::Connect)?;
        self.link = Some(link);
        self.set_wall_clock();
        Ok(Some(sdp))
    }

    fn set_wall_clock(&mut self) {
        if let Some(link) = self.link.as_mut() {
            let wall_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            link.set_wall_clock(std::time::Instant::now(), wall_us);
        }
    }

    /// If the media session failed (ICE or DTLS gave up), a new offer for a fresh one that
    /// keeps the old one's counts; the SFU replaces the old session when it gets it.
    fn restart(&mut self) -> Result<Option<String>, NetError> {
        if !self.link.as_ref().is_some_and(|l| l.has_failed()) {
            return Ok(None);
        }
        let Some(old) = self.link.take() else {
            return Ok(None);
        };
        let Some(offer) = self.offer()? else {
            return Ok(None);
        };
        if let Some(link) = self.link.as_mut() {
            link.inherit(old);
        }
        self.restarts += 1;
        Ok(Some(offer))
    }

    fn failed(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.has_failed())
    }

    fn set_audio_level(&mut self, level: Option<i8>) {
        if let Some(link) = self.link.as_mut() {
            link.set_audio_level(level);
        }
    }

    fn answer(&mut self, sdp: &str, p: &mut Participant) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.accept_answer(sdp, p.media(), std::time::Instant::now(), now()) {
                warn!(error = %e, "media answer");
            }
        }
    }

    fn active(&self) -> bool {
        self.link.is_some()
    }

    fn sending(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_connected())
    }

    fn next_timeout(&self) -> Option<tokio::time::Instant> {
        self.link
            .as_ref()
            .and_then(|l| l.poll_timeout())
            .map(tokio::time::Instant::from_std)
    }

    fn received(&mut self, r: Option<(Vec<u8>, std::net::SocketAddr)>, p: &mut Participant) {
        if self.lose() {
            return;
        }
        let (Some((bytes, source)), Some(local), Some(link)) = (r, self.local, self.link.as_mut())
        else {
            return;
        };
        link.handle_receive(
            source,
            local,
            &bytes,
            p.media(),
            std::time::Instant::now(),
            now(),
        );
    }

    fn timeout(&mut self, p: &mut Participant) {
        if let Some(link) = self.link.as_mut() {
            link.handle_timeout(p.media(), std::time::Instant::now(), now());
        }
    }

    fn send(&mut self, kind: str0m::media::MediaKind, p: &mut Participant) {
        let Some(leaf) = p.session().map(|s| s.own_leaf()) else {
            return;
        };
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let (t, ts) = (std::time::Instant::now(), now());
        match kind {
            str0m::media::MediaKind::Video if self.video_file.is_some() => {
                if let Some(file) = self.video_file.as_mut() {
                    if link.keyframe_due(p.media()) {
                        file.seek(|f| f.keyframe);
                    }
                    let f = file.next_frame();
                    link.send_frame(kind, &f.data, f.keyframe, 3000, p.media(), t, ts);
                }
            }
            str0m::media::MediaKind::Audio if self.audio_file.is_some() => {
                if let Some(file) = self.audio_file.as_mut() {
                    let packet = file.next_frame();
                    link.send_frame(kind, packet, false, 960, p.media(), t, ts);
                }
            }
            _ => {
                link.send_synthetic(kind, leaf, p.media(), t, ts);
            }
        }
    }

    fn release_held(&mut self, p: &mut Participant) {
        if let Some(link) = self.link.as_mut() {
            link.release_held(p.media(), std::time::Instant::now(), now());
        }
    }

    async fn flush(&mut self) {
        if self.link.is_none() {
            return;
        }
        while let Some((_, dest, bytes)) = self.link.as_mut().and_then(|l| l.poll_transmit()) {
            if self.lose() {
                continue;
            }
            let Some(socket) = self.socket.as_ref() else {
                return;
            };
            if let Err(e) = socket.send_to(&bytes, dest).await {
                debug!(error = %e, "media send");
            }
        }
    }

    fn sender_leaves(&self) -> Vec<u32> {
        self.link
            .as_ref()
            .map(|l| l.counts().keys().copied().collect())
            .unwrap_or_default()
    }

    fn counts(&self) -> Vec<(u32, crate::media_link::SenderCounts)> {
        self.link
            .as_ref()
            .map(|l| l.counts().iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    fn sent(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.sent)
    }

    fn first_opened(&self) -> Option<std::time::Instant> {
        self.link.as_ref().and_then(|l| l.first_opened())
    }

    fn held_dropped(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.held_dropped())
    }

    fn latencies_us(&self) -> Vec<u32> {
        self.link
            .as_ref()
            .map(|l| l.latencies_us().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_doubles_within_jitter_and_is_capped() {
        for attempt in 0..12 {
            let base = RECONNECT_FIRST_DELAY
                .saturating_mul(1 << attempt)
                .min(RECONNECT_MAX_DELAY);
            for r in [0u64, 200, 400, u64::MAX] {
                let d = reconnect_delay(attempt, r);
                assert!(
                    d >= base * 8 / 10 && d <= base * 12 / 10,
                    "{attempt} {r} {d:?}"
                );
            }
        }
        assert_eq!(reconnect_delay(0, 200), RECONNECT_FIRST_DELAY);
        assert_eq!(reconnect_delay(30, 200), RECONNECT_MAX_DELAY);
    }
}

//! The call's loop: one connection at a time ([`run_once`], a `select!` over the signaling
//! socket, the media socket, the embedding program's requests and the participant's
//! timers), and reconnection with backoff after a lost one ([`run`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_client::reconnect::{reconnect_delay, RECONNECT_ATTEMPTS};
use conclave_client::{Event, Participant};
use conclave_e2ee::{Device, Timestamp};
use conclave_proto::{ClientMsg, MediaMsg, ServerMsg, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use crate::media_side::{recv_owned, MediaSide};
use crate::options::load_pins;
use crate::summary::{merge, CallState};
use crate::{Control, JoinOptions, NetError, Summary};

pub(crate) fn now() -> Timestamp {
    Timestamp::from_millis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
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

async fn run_once(
    device: Device,
    opts: &JoinOptions,
    control: &mut tokio::sync::mpsc::Receiver<Control>,
    on_event: &mut impl FnMut(&Participant, &Event),
    state: &mut CallState,
    deadline: Option<tokio::time::Instant>,
) -> Result<Once, NetError> {
    let ws = match crate::connect::open(opts).await {
        Ok(ws) => ws,
        Err(error) => return Ok(Once::Failed { device, error }),
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
    // The core owns its timers (self-update, key erasure, held frames); the runtime gives
    // it the randomness for the self-update's jitter.
    p.set_self_update(opts.self_update_every, rand_u64());
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
                // The core released the frames held for this epoch: check what opened.
                media.take_released(&mut p);
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
        let (media_active, media_sending, media_deadline) =
            (media.active(), media.sending(), media.next_timeout());
        let media_socket = media.socket.clone();
        // The core's timers: old epochs' keys erased when their grace window ends (whether or
        // not a frame arrives then), held frames expiring, the periodic self-update.
        let core_deadline = p
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
                                let mut msgs = vec![MediaMsg::MediaOffer { sdp: offer }];
                                if let Some(max_width) = opts.tile_width {
                                    msgs.push(MediaMsg::VideoTiles { max_width });
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
            _ = sleep_until_opt(core_deadline), if core_deadline.is_some() => {
                p.handle_timeout(now())?;
                media.take_released(&mut p);
            }
            _ = audio_tick.tick(), if media_sending && opts.send_audio => media.send(str0m::media::MediaKind::Audio, &mut p),
            _ = video_tick.tick(), if media_sending && opts.send_video => media.send(str0m::media::MediaKind::Video, &mut p),
            _ = sleep_until_opt(deadline), if deadline.is_some() && leaving.is_none() => {
                p.leave()?;
                leaving = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = sleep_until_opt(restart_at), if restart_at.is_some() => {
                restart_at = None;
                if let Some(offer) = media.restart()? {
                    let msg = MediaMsg::MediaOffer { sdp: offer };
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

pub(crate) fn rand_u64() -> u64 {
    // Jitter only (not key material): the randomly keyed hasher of std is enough.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now().as_millis());
    h.finish()
}

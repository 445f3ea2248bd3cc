//! The task that owns the delivery-service core: connections, messages and time in, what to
//! send out (with each commit's fan-out timed).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use conclave_ds::{ConnId, Ds, Output};
use conclave_mls::Timestamp;
use conclave_proto::{MembershipMsg, ServerMsg};
use tokio::sync::mpsc;
use tracing::warn;

use crate::media::SfuCmd;
use crate::metrics::Metrics;
use crate::now_ts;
use crate::signaling::{FanOut, Outbound};

pub(crate) enum DsCmd {
    Connect {
        conn: ConnId,
        room: String,
        user: String,
        out: mpsc::Sender<Outbound>,
    },
    Msg {
        conn: ConnId,
        msg: MembershipMsg,
        /// When its frame was read from the socket.
        arrived: Instant,
    },
    Gone {
        conn: ConnId,
    },
}

pub(crate) fn until(t: Timestamp) -> tokio::time::Instant {
    let now = now_ts();
    tokio::time::Instant::now() + t.saturating_since(now)
}

pub(crate) async fn ds_task(
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
                        let commit = matches!(msg, MembershipMsg::Commit { .. });
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
            warn!(%conn, "client too slow; disconnecting it");
            metrics.too_slow.fetch_add(1, Ordering::Relaxed);
            if let Some(r) = routes.remove(&conn) {
                drop(r);
            }
            ds.disconnect(conn, now_ts());
        }
        metrics.update(&ds);
    }
}

//! The task that owns the SFU core and the media socket.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use conclave_ds::ConnId;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::metrics::Metrics;

pub(crate) enum SfuCmd {
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
pub(crate) struct HeldOffer {
    room: String,
    sdp: String,
    reply: oneshot::Sender<Result<String, String>>,
}

pub(crate) async fn sfu_task(
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
        sfu.remove_participant(conn.0, Instant::now());
        let r = sfu
            .add_participant(conn.0, &offer.room, &offer.sdp, Instant::now())
            .map_err(|e| e.to_string());
        if let Err(e) = &r {
            warn!(%conn, error = %e, "media offer refused");
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
                    sfu.remove_participant(conn.0, Instant::now());
                }
                Some(SfuCmd::Tiles { conn, max_width }) => {
                    sfu.set_max_video_width(conn.0, max_width, Instant::now())
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

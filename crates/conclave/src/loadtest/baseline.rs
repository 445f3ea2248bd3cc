//! The raw UDP fan-out baseline: the same number of packets of the same size as the SFU
//! forwarded, sent with `sendmmsg` in batches of 32 from one socket to receiver sockets on
//! loopback, timed by this thread's own CPU time. It does no receiving, no SRTP, no RTCP, no
//! bandwidth estimation and no pacing: it is the floor of what forwarding costs in the
//! kernel, which the SFU's rate is compared with.

use std::io::IoSlice;
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use serde::Serialize;

/// Packets per `sendmmsg` call.
const BATCH: usize = 32;

/// What the baseline did.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Figures {
    pub(crate) packets: u64,
    pub(crate) packet_bytes: usize,
    pub(crate) receivers: usize,
    pub(crate) cpu_s: f64,
    pub(crate) wall_s: f64,
    pub(crate) packets_per_core_s: f64,
}

/// CPU time of the calling thread so far, in seconds (from the scheduler's nanosecond count).
fn thread_cpu_s() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

pub(crate) fn run(packets: u64, size: usize, receivers: usize) -> Result<Figures> {
    let sinks: Vec<UdpSocket> = (0..receivers.max(1))
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .context("binding baseline receivers")?;
    let addrs: Vec<SockaddrIn> = sinks
        .iter()
        .map(|s| match s.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => Ok(SockaddrIn::from(a)),
            Ok(other) => anyhow::bail!("unexpected address {other}"),
            Err(e) => Err(e.into()),
        })
        .collect::<Result<_>>()?;
    let source = UdpSocket::bind(SocketAddrV4::new([127, 0, 0, 1].into(), 0))?;
    let payload = vec![0x5au8; size];
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let (cpu0, wall0) = (thread_cpu_s(), Instant::now());
    let mut sent = 0u64;
    let mut next = 0usize;
    while sent < packets {
        let n = (packets - sent).min(BATCH as u64) as usize;
        let iovs: Vec<[IoSlice<'_>; 1]> = (0..n).map(|_| [IoSlice::new(&payload)]).collect();
        let dests: Vec<Option<SockaddrIn>> = (0..n)
            .map(|k| Some(addrs[(next + k) % addrs.len()]))
            .collect();
        next = (next + n) % addrs.len();
        // Nobody reads the receivers: once a receiver's buffer is full the kernel drops what
        // comes, after doing the work of sending it, which is the work being measured.
        match sendmmsg(
            source.as_raw_fd(),
            &mut headers,
            &iovs,
            &dests,
            [],
            MsgFlags::empty(),
        ) {
            Ok(results) => sent += results.count().max(1) as u64,
            Err(e) => anyhow::bail!("sendmmsg: {e}"),
        }
    }
    let cpu_s = thread_cpu_s() - cpu0;
    let wall_s = wall0.elapsed().as_secs_f64();
    drop(sinks);
    Ok(Figures {
        packets: sent,
        packet_bytes: size,
        receivers,
        cpu_s,
        wall_s,
        packets_per_core_s: if cpu_s > 0.0 {
            sent as f64 / cpu_s
        } else {
            0.0
        },
    })
}

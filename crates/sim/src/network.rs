//! The media path on a simulated network: real participants' media sessions (str0m, SFrame,
//! through `conclave-native`'s `MediaLink` and the core's `FramePath`) and the real SFU core,
//! all sans-IO, driven through a network with loss, delay and bandwidth limits in simulated
//! time. No sockets; the addresses are labels.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use conclave_client::FramePath;
use conclave_e2ee::{EpochSecrets, RoomCipherSuite, Timestamp};
use conclave_native::media_link::{Kind, MediaLink, SenderCounts, DEFAULT_SLOTS};
use conclave_sfu::{Sfu, SfuConfig};

use crate::T0;

/// One direction of one participant's access link.
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub loss: f64,
    pub delay: Duration,
    /// Bits per second, if capped.
    pub rate: Option<u64>,
    pub busy_until: Option<Instant>,
}

pub struct Node {
    pub link: MediaLink,
    pub frames: FramePath,
    pub addr: SocketAddr,
    pub leaf: u32,
    pub sends: bool,
    pub next_audio: Instant,
    pub next_video: Instant,
    /// Keyframe requests per second this node sends, if it floods.
    pub pli_every: Option<Duration>,
    pub next_pli: Instant,
    pub up: Link,
    pub down: Link,
}

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub sfu: Sfu,
    pub sfu_addr: SocketAddr,
    pub nodes: Vec<Node>,
    pub queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    pub packets: Vec<Option<(SocketAddr, SocketAddr, Vec<u8>)>>,
    pub rng: u64,
    pub sent: u64,
    pub lost: u64,
}

impl Sim {
    pub fn new(n: usize, config: SfuConfig) -> Sim {
        let start = Instant::now();
        let sfu_addr: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut sfu = Sfu::with_config(sfu_addr, config);
        let members: Vec<u32> = (0..n as u32).collect();
        let mut nodes = Vec::new();
        for i in 0..n {
            let addr: SocketAddr = format!("10.0.1.{}:6000", i + 2).parse().unwrap();
            let mut frames = FramePath::default();
            let secrets = EpochSecrets::from_base_key(
                RoomCipherSuite::Curve25519Aes128,
                1,
                &[7u8; 16],
                i as u32,
                members.clone(),
            );
            frames.install_epoch(secrets, T0).unwrap();
            let (mut link, offer) = MediaLink::offer(addr, DEFAULT_SLOTS, start, T0).unwrap();
            let answer = sfu
                .add_participant(i as u64, "room", &offer, start)
                .unwrap();
            link.accept_answer(&answer, &mut frames, start).unwrap();
            nodes.push(Node {
                link,
                frames,
                addr,
                leaf: i as u32,
                sends: true,
                next_audio: start,
                // Stagger the senders a little, as real ones are.
                next_video: start + Duration::from_millis(3 * i as u64),
                pli_every: None,
                next_pli: start,
                up: Link::default(),
                down: Link::default(),
            });
        }
        Sim {
            start,
            now: start,
            sfu,
            sfu_addr,
            nodes,
            queue: BinaryHeap::new(),
            packets: Vec::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
            sent: 0,
            lost: 0,
        }
    }

    pub fn ts(&self) -> Timestamp {
        T0.saturating_add(self.now - self.start)
    }

    pub fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Puts a datagram on the wire of `node`'s link (`up` towards the SFU).
    pub fn transmit(
        &mut self,
        node: usize,
        up: bool,
        from: SocketAddr,
        to: SocketAddr,
        b: Vec<u8>,
    ) {
        self.sent += 1;
        let now = self.now;
        let link = if up {
            self.nodes[node].up
        } else {
            self.nodes[node].down
        };
        if link.loss > 0.0 && self.random() < link.loss {
            self.lost += 1;
            return;
        }
        let mut departs = now;
        if let Some(rate) = link.rate {
            let start = link.busy_until.map_or(now, |b| b.max(now));
            // A 300 ms queue in front of the bottleneck (a home router's), then drop-tail.
            if start > now + Duration::from_millis(300) {
                self.lost += 1;
                return;
            }
            departs = start + Duration::from_secs_f64(b.len() as f64 * 8.0 / rate as f64);
            let l = if up {
                &mut self.nodes[node].up
            } else {
                &mut self.nodes[node].down
            };
            l.busy_until = Some(departs);
        }
        let at = departs + link.delay;
        self.packets.push(Some((from, to, b)));
        let id = self.packets.len() - 1;
        self.queue.push(Reverse((at, id as u64, id)));
    }

    pub fn drain(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some((from, to, b)) = self.nodes[i].link.poll_transmit() {
                    moved = true;
                    self.transmit(i, true, from, to, b);
                }
            }
            while let Some(t) = self.sfu.poll_transmit() {
                moved = true;
                if let Some(i) = self.nodes.iter().position(|n| n.addr == t.destination) {
                    self.transmit(i, false, t.source, t.destination, t.contents);
                }
            }
            if !moved {
                break;
            }
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drain();
            let mut next = end;
            if let Some(Reverse((at, _, _))) = self.queue.peek() {
                next = next.min(*at);
            }
            if let Some(t) = self.sfu.poll_timeout() {
                next = next.min(t);
            }
            for n in &self.nodes {
                if let Some(t) = n.link.poll_timeout() {
                    next = next.min(t);
                }
                if n.sends && n.link.is_connected() {
                    next = next.min(n.next_audio).min(n.next_video);
                }
                if n.pli_every.is_some() {
                    next = next.min(n.next_pli);
                }
            }
            // Time always moves on, as a real clock does: str0m's pacer may ask to be woken
            // "now" again until the clock has advanced.
            self.now = self.now.max(next).max(self.now + Duration::from_micros(50));
            let now = self.now;
            while let Some(Reverse((at, _, id))) = self.queue.peek().copied() {
                if at > now {
                    break;
                }
                self.queue.pop();
                let Some((from, to, b)) = self.packets[id].take() else {
                    continue;
                };
                if to == self.sfu_addr {
                    self.sfu.handle_receive(now, from, to, &b);
                } else if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == to) {
                    n.link.handle_receive(from, to, &b, &mut n.frames, now);
                }
            }
            if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
                self.sfu.handle_timeout(now);
            }
            for n in &mut self.nodes {
                if n.link.poll_timeout().is_some_and(|t| t <= now) {
                    n.link.handle_timeout(&mut n.frames, now);
                }
                if n.sends && n.link.is_connected() {
                    if n.next_audio <= now {
                        n.link
                            .send_synthetic(Kind::Audio, n.leaf, &mut n.frames, now);
                        n.next_audio += Duration::from_millis(20);
                    }
                    if n.next_video <= now {
                        n.link
                            .send_synthetic(Kind::Video, n.leaf, &mut n.frames, now);
                        n.next_video += Duration::from_micros(33_333);
                    }
                } else {
                    n.next_audio = n.next_audio.max(now);
                    n.next_video = n.next_video.max(now);
                }
                if let Some(every) = n.pli_every {
                    if n.next_pli <= now {
                        n.link.request_keyframes();
                        n.next_pli += every;
                    }
                }
            }
            if self.now >= end {
                self.drain();
                return;
            }
        }
    }

    pub fn counts(&self, at: usize, from: usize) -> SenderCounts {
        let node = &self.nodes[at];
        node.link
            .counts(&node.frames)
            .get(&(from as u32))
            .cloned()
            .unwrap_or_default()
    }
}

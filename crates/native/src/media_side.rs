//! The participant's media side: the UDP socket, the str0m session ([`MediaLink`]) that
//! seals and opens through the participant's frame path, and the sources it sends (files or
//! synthetic frames).

use std::time::{SystemTime, UNIX_EPOCH};

use conclave_client::Participant;
use tracing::{debug, warn};

use crate::media_file::Looping;
use crate::media_link::MediaLink;
use crate::run::{now, rand_u64};
use crate::{MediaFiles, NetError};

/// The participant's media side: UDP socket, str0m session, synthetic sources.
pub(crate) struct MediaSide {
    /// Media sessions started again after one failed.
    pub(crate) restarts: u32,
    /// Fraction of datagrams dropped each way (test impairment), and its random state.
    loss: f64,
    rng: u64,
    pub(crate) socket: Option<std::sync::Arc<tokio::net::UdpSocket>>,
    local: Option<std::net::SocketAddr>,
    link: Option<MediaLink>,
    video_file: Option<Looping<crate::media_file::VideoFrame>>,
    audio_file: Option<Looping<Vec<u8>>>,
}

pub(crate) async fn recv_owned(
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
    pub(crate) async fn new(url: &str, enabled: bool) -> Result<Self, NetError> {
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

    pub(crate) fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss.clamp(0.0, 1.0);
        self
    }

    /// Whether to drop the next datagram (the test impairment).
    pub(crate) fn lose(&mut self) -> bool {
        if self.loss <= 0.0 {
            return false;
        }
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64 <= self.loss
    }

    pub(crate) fn with_files(mut self, files: &MediaFiles) -> Self {
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

    pub(crate) fn offer(&mut self) -> Result<Option<String>, NetError> {
        let (Some(local), None) = (self.local, self.link.as_ref()) else {
            return Ok(None);
        };
        let (link, sdp) = MediaLink::offer(
            local,
            crate::media_link::DEFAULT_SLOTS,
            std::time::Instant::now(),
            now(),
        )
        .map_err(NetError::Connect)?;
        self.link = Some(link);
        self.set_wall_clock();
        Ok(Some(sdp))
    }

    pub(crate) fn set_wall_clock(&mut self) {
        if let Some(link) = self.link.as_mut() {
            let wall_us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            link.set_wall_clock(std::time::Instant::now(), wall_us);
        }
    }

    /// If the media session failed (ICE or DTLS gave up), a new offer for a fresh one that
    /// keeps the old one's counts; the SFU replaces the old session when it gets it.
    pub(crate) fn restart(&mut self) -> Result<Option<String>, NetError> {
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

    pub(crate) fn failed(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.has_failed())
    }

    pub(crate) fn set_audio_level(&mut self, level: Option<i8>) {
        if let Some(link) = self.link.as_mut() {
            link.set_audio_level(level);
        }
    }

    pub(crate) fn answer(&mut self, sdp: &str, p: &mut Participant) {
        if let Some(link) = self.link.as_mut() {
            if let Err(e) = link.accept_answer(sdp, p.frames(), std::time::Instant::now()) {
                warn!(error = %e, "media answer");
            }
        }
    }

    pub(crate) fn active(&self) -> bool {
        self.link.is_some()
    }

    pub(crate) fn sending(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_connected())
    }

    pub(crate) fn next_timeout(&self) -> Option<tokio::time::Instant> {
        self.link
            .as_ref()
            .and_then(|l| l.poll_timeout())
            .map(tokio::time::Instant::from_std)
    }

    pub(crate) fn received(
        &mut self,
        r: Option<(Vec<u8>, std::net::SocketAddr)>,
        p: &mut Participant,
    ) {
        if self.lose() {
            return;
        }
        let (Some((bytes, source)), Some(local), Some(link)) = (r, self.local, self.link.as_mut())
        else {
            return;
        };
        link.handle_receive(source, local, &bytes, p.frames(), std::time::Instant::now());
    }

    pub(crate) fn timeout(&mut self, p: &mut Participant) {
        if let Some(link) = self.link.as_mut() {
            link.handle_timeout(p.frames(), std::time::Instant::now());
        }
    }

    pub(crate) fn send(&mut self, kind: str0m::media::MediaKind, p: &mut Participant) {
        let Some(leaf) = p.session().map(|s| s.own_leaf()) else {
            return;
        };
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let t = std::time::Instant::now();
        match kind {
            str0m::media::MediaKind::Video if self.video_file.is_some() => {
                if let Some(file) = self.video_file.as_mut() {
                    if link.keyframe_due(p.frames_ref()) {
                        file.seek(|f| f.keyframe);
                    }
                    let f = file.next_frame();
                    link.send_frame(kind, &f.data, f.keyframe, 3000, p.frames(), t);
                }
            }
            str0m::media::MediaKind::Audio if self.audio_file.is_some() => {
                if let Some(file) = self.audio_file.as_mut() {
                    let packet = file.next_frame();
                    link.send_frame(kind, packet, false, 960, p.frames(), t);
                }
            }
            _ => {
                link.send_synthetic(kind, leaf, p.frames(), t);
            }
        }
    }

    /// Checks the frames the core released (held for an epoch that has now come), and lets
    /// go of the ones it dropped.
    pub(crate) fn take_released(&mut self, p: &mut Participant) {
        match self.link.as_mut() {
            Some(link) => link.take_released(p.frames(), std::time::Instant::now()),
            None => {
                while p.poll_released().is_some() {}
                p.take_dropped_frames();
            }
        }
    }

    pub(crate) async fn flush(&mut self) {
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

    pub(crate) fn sender_leaves(&self, p: &Participant) -> Vec<u32> {
        p.intake().senders().keys().copied().collect()
    }

    pub(crate) fn counts(&self, p: &Participant) -> Vec<(u32, crate::media_link::SenderCounts)> {
        match self.link.as_ref() {
            Some(l) => l.counts(p.frames_ref()).into_iter().collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn sent(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.sent)
    }

    pub(crate) fn first_opened(&self) -> Option<std::time::Instant> {
        self.link.as_ref().and_then(|l| l.first_opened())
    }

    pub(crate) fn held_dropped(&self, p: &Participant) -> u64 {
        p.intake().held_dropped()
    }

    pub(crate) fn latencies_us(&self) -> Vec<u32> {
        self.link
            .as_ref()
            .map(|l| l.latencies_us().collect())
            .unwrap_or_default()
    }
}

//! The simulated members: each a real native participant (`conclave_native::run`) in a task of
//! this process, with callbacks that record when it joined and which security code it saw in
//! every epoch.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use conclave_client::{AdmitMode, Event, NewRoomPolicy};
use conclave_e2ee::{CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite};
use conclave_native::{Control, JoinOptions, MediaFiles, Summary};
use conclave_server::{Claims, TokenKey};

/// Everyone's view of every epoch: epoch → (first seen, last seen, security codes seen and
/// by how many members).
pub(crate) type Epochs = BTreeMap<u64, (Instant, Instant, BTreeMap<String, usize>)>;

/// What the participants' callbacks record.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) epochs: Mutex<Epochs>,
    /// Per participant admitted: ms from its start to its first epoch.
    pub(crate) joined: Mutex<Vec<f64>>,
    pub(crate) admitted: AtomicUsize,
    pub(crate) media_members: AtomicUsize,
}

pub(crate) struct Member {
    pub(crate) control: tokio::sync::mpsc::Sender<Control>,
    pub(crate) task: tokio::task::JoinHandle<Result<Summary, conclave_native::NetError>>,
    pub(crate) sender: bool,
}

pub(crate) struct Spawner {
    pub(crate) url: String,
    pub(crate) token_key: TokenKey,
    pub(crate) shared: Arc<Shared>,
    pub(crate) exp: u64,
    pub(crate) video_senders: usize,
    pub(crate) audio_senders: usize,
    pub(crate) heavy_receivers: usize,
    /// Every k-th participant has a media session (`None`: all).
    pub(crate) media_every: Option<usize>,
    pub(crate) loss: f64,
}

impl Spawner {
    pub(crate) fn spawn(&self, i: usize) -> Result<Member> {
        let user = format!("p{i:05}");
        let token = self.token_key.issue(&Claims {
            room: "load".into(),
            sub: user.clone(),
            name: user.clone(),
            exp: self.exp,
        });
        let id = DeviceIdentity::generate(
            RoomCipherSuite::Curve25519Aes128,
            CredentialInfo::new(&user, &user)?,
        )?;
        let device = Device::new(id, GroupStore::memory())?;
        let video = i < self.video_senders;
        let audio = i < self.audio_senders;
        let media = video || audio || self.media_every.is_none_or(|k| i.is_multiple_of(k));
        if media {
            self.shared.media_members.fetch_add(1, Ordering::Relaxed);
        }
        let opts = JoinOptions {
            url: self.url.clone(),
            room: "load".into(),
            token,
            policy: NewRoomPolicy::Open,
            admit: AdmitMode::Auto,
            duration: None,
            self_update_every: Duration::from_secs(3600),
            media,
            send_audio: audio,
            send_video: video,
            audio_level: audio.then_some(-30),
            // Small tiles (the low layer) for most; the heavy receivers take the top layer.
            tile_width: (i >= self.heavy_receivers).then_some(320),
            files: MediaFiles::default(),
            ca_file: None,
            media_loss: self.loss,
            charter: None,
            pins_file: None,
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let shared = self.shared.clone();
        let started = Instant::now();
        let mut first = true;
        let task = tokio::spawn(conclave_native::run(
            device,
            opts,
            rx,
            move |_, e: &Event| {
                let (epoch, code) = match e {
                    Event::Joined {
                        epoch,
                        security_code,
                    } => {
                        if first {
                            first = false;
                            shared.admitted.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut j) = shared.joined.lock() {
                                j.push(started.elapsed().as_secs_f64() * 1000.0);
                            }
                        }
                        (*epoch, security_code.to_string())
                    }
                    Event::EpochChanged {
                        change,
                        security_code,
                    } => (change.epoch, security_code.to_string()),
                    _ => return,
                };
                let now = Instant::now();
                if let Ok(mut m) = shared.epochs.lock() {
                    let entry = m.entry(epoch).or_insert((now, now, BTreeMap::new()));
                    entry.1 = now;
                    *entry.2.entry(code).or_default() += 1;
                }
            },
        ));
        Ok(Member {
            control: tx,
            task,
            sender: video || audio,
        })
    }
}

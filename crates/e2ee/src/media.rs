//! SFrame media encryption with keys from the MLS exporter (RFC 9605 section 5.2).
//!
//! Per MLS epoch, `base_key = MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`; each sender's
//! KID is `context (0) | leaf index (16 bits) | epoch (low 8 bits)`, and its key and salt are
//! derived from the base key and the KID (RFC 9605 section 4.4.2). So every sender has its own
//! key and nonce space in every epoch, and nothing but the MLS group state is needed to derive
//! them.
//!
//! [`MediaCrypto`] is the key ring of one participant: it seals outgoing frames under the
//! current epoch, opens incoming frames of the current epoch and, for a bounded grace window
//! after a change, of the previous ones, after which their keys are erased. It keeps one
//! replay window per sender and epoch, and counts every outcome. Frames that name an epoch
//! the receiver has not reached yet are reported as [`FrameError::FutureEpoch`] so the caller
//! can park them in a [`HoldQueue`] and open them once the commit is applied.
//!
//! A prefix of each frame may stay clear for RTP packetization ([`ClearPrefix`]); it is
//! authenticated as AAD (the `sframe` crate's "meta data"), so changing it breaks the frame.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;

use core::time::Duration;
use zeroize::Zeroizing;

mod epoch;
mod error;
mod hold;
mod replay;
#[doc(hidden)]
pub mod test_support;
mod wire;

pub use epoch::{kid, sframe_suite, split_kid, EpochSecrets};
pub use error::FrameError;
pub use hold::{HoldQueue, Released, DEFAULT_HOLD_BYTES};
use replay::ReplayWindow;
use wire::{open_frame, seal_frame};
pub use wire::{parse_header, ParsedHeader};

use crate::sframe_backend::{DecryptionKey, EncryptionKey};
use conclave_mls::RoomCipherSuite;
use conclave_mls::Timestamp;

/// Bits of the MLS epoch carried in the KID (RFC 9605 section 5.2's `E`).
pub const EPOCH_BITS: u8 = 8;
/// Bits of the sender's leaf index carried in the KID (`S`): up to 65,536 leaves.
pub const INDEX_BITS: u8 = 16;
/// Largest frame (clear prefix included) that is sealed or opened: 4 MiB.
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// How many epochs ahead of the newest known one a KID may name and still be held. While a
/// large meeting fills up, epochs can change several times a second and a busy receiver may
/// apply commits later than the senders; 16 keeps such frames (bounded by the hold queue).
pub const MAX_EPOCHS_AHEAD: u64 = 16;
/// Most epochs whose keys are kept at once (the current one plus those in their grace window).
/// The grace window ([`MediaConfig::grace`]) is what erases old keys; this cap only bounds
/// memory when epochs change faster than the window (16 epochs in 2 s while a meeting of
/// 1,000 fills up). It stays far below the 256 epochs that the KID's 8 epoch bits tell apart.
pub const MAX_LIVE_EPOCHS: usize = 16;
/// The MLS exporter label of RFC 9605 section 5.2.
pub const SFRAME_EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";

const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// Replay window per sender and epoch, in frame counters. A sender's counter advances for
/// every frame it seals, audio and each simulcast layer alike (about 150 a second with three
/// layers), so this covers several seconds of reordering and retransmission.
pub const REPLAY_WINDOW: u64 = 1024;

/// How many leading bytes of a frame stay clear (authenticated, not encrypted), so that the RTP
/// packetizer can read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClearPrefix {
    /// Everything is encrypted (Opus, and any codec whose packetizer needs nothing).
    None,
    /// A fixed number of bytes.
    Fixed(usize),
    /// VP8: the frame tag and, on keyframes, the start code and dimensions (RFC 6386 9.1):
    /// 10 bytes on a keyframe, 3 on a delta frame.
    Vp8,
}

impl ClearPrefix {
    /// The prefix length for a frame that starts with `bytes` (never more than `bytes.len()`).
    /// On the receiving side the prefix is read from the wire, where it is in the clear.
    pub fn len_for(self, bytes: &[u8]) -> usize {
        let n = match self {
            ClearPrefix::None => 0,
            ClearPrefix::Fixed(n) => n,
            ClearPrefix::Vp8 => conclave_media_meta::vp8::clear_header_len(bytes),
        };
        n.min(bytes.len())
    }
}

/// What a sealed or opened frame was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Leaf index of the sender.
    pub sender: u32,
    /// Full MLS epoch the frame was sealed in.
    pub epoch: u64,
    /// SFrame counter.
    pub counter: u64,
}

/// Counters of what happened to frames, for health display and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Frames sealed.
    pub sealed: u64,
    /// Frames opened.
    pub opened: u64,
    /// Frames that failed authentication.
    pub auth_failed: u64,
    /// Frames rejected as replays or as older than the window.
    pub replayed: u64,
    /// Frames whose epoch is unknown or erased, or whose sender is not a member.
    pub unknown_key: u64,
    /// Frames for a future epoch (to be held).
    pub future_epoch: u64,
    /// Frames under an epoch from before this member joined (unreadable by design; not
    /// counted as rejected).
    pub before_join: u64,
    /// Malformed or oversized frames.
    pub malformed: u64,
    /// Frames opened under a previous epoch's key inside its grace window.
    pub opened_in_grace: u64,
}

impl MediaStats {
    /// Every frame that was rejected for good (future-epoch frames are not counted: they are
    /// held, not lost).
    pub fn rejected(&self) -> u64 {
        self.auth_failed + self.replayed + self.unknown_key + self.malformed
    }
}

/// Tunables of [`MediaCrypto`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// How long a previous epoch's keys stay usable after a newer epoch is installed.
    pub grace: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            grace: Duration::from_secs(2),
        }
    }
}

struct Receiver {
    key: DecryptionKey,
    window: ReplayWindow,
}

struct EpochKeys {
    epoch: u64,
    base_key: Zeroizing<Vec<u8>>,
    /// Indexed by leaf: whether that leaf is a member in this epoch.
    members: Vec<bool>,
    /// By leaf; derived on the first frame from that sender. A map, not a table by leaf: at
    /// 1,000 members a handful of them send, and 16 epochs of a 1,000-slot table of keys
    /// would cost megabytes per participant.
    receivers: HashMap<u32, Receiver>,
    /// When the keys are erased; `None` while this is the newest epoch.
    expires: Option<Timestamp>,
}

impl EpochKeys {
    fn is_member(&self, leaf: u32) -> bool {
        self.members.get(leaf as usize).copied().unwrap_or(false)
    }
}

struct Sending {
    epoch: u64,
    leaf: u32,
    key: EncryptionKey,
    next_counter: u64,
}

/// One participant's SFrame key ring. Sans-IO: time comes in as [`Timestamp`]s, and
/// [`MediaCrypto::poll_timeout`] says when keys are next due for erasure.
pub struct MediaCrypto {
    config: MediaConfig,
    suite: Option<RoomCipherSuite>,
    sending: Option<Sending>,
    epochs: VecDeque<EpochKeys>,
    /// The first epoch installed since [`MediaCrypto::new`] or [`MediaCrypto::clear`]: the
    /// one this member joined in.
    first_epoch: Option<u64>,
    stats: MediaStats,
    aad: Vec<u8>,
}

impl fmt::Debug for MediaCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaCrypto")
            .field(
                "epochs",
                &self.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for MediaCrypto {
    fn default() -> Self {
        Self::new(MediaConfig::default())
    }
}

impl MediaCrypto {
    /// An empty key ring: nothing can be sealed or opened until an epoch is installed.
    pub fn new(config: MediaConfig) -> Self {
        MediaCrypto {
            config,
            suite: None,
            sending: None,
            epochs: VecDeque::new(),
            first_epoch: None,
            stats: MediaStats::default(),
            aad: Vec::with_capacity(64),
        }
    }

    /// Installs the keys of a new epoch. Sending switches to it at once; the previous epochs
    /// stay open for receiving until `now + grace`, then are erased.
    pub fn install_epoch(&mut self, secrets: EpochSecrets, now: Timestamp) -> crate::Result<()> {
        if let Some(newest) = self.epochs.back() {
            if secrets.epoch <= newest.epoch {
                return Err(crate::Error::Usage(
                    "epochs must be installed in increasing order",
                ));
            }
        }
        if self.suite.is_some_and(|s| s != secrets.suite) {
            return Err(crate::Error::Usage("the room's ciphersuite cannot change"));
        }
        // 16 bits of leaf index in the KID: leaf 65,536 would share leaf 0's KIDs (and nonces
        // under a key derived for another sender). Such a group gets no media keys at all.
        if std::iter::once(&secrets.own_leaf)
            .chain(&secrets.members)
            .any(|&l| u64::from(l) > INDEX_MASK)
        {
            return Err(crate::Error::WrongGroup(format!(
                "the group has a leaf index beyond {INDEX_MASK}, which SFrame KIDs cannot name"
            )));
        }
        let sframe_suite = sframe_suite(secrets.suite);
        let own_kid = kid(secrets.own_leaf, secrets.epoch);
        let key = EncryptionKey::derive_from(sframe_suite, own_kid, &*secrets.base_key)
            .map_err(|e| crate::Error::Crypto(e.to_string()))?;

        let expires = now.saturating_add(self.config.grace);
        for old in self.epochs.iter_mut() {
            old.expires = Some(old.expires.map_or(expires, |e| e.min(expires)));
        }
        // RFC 9605 5.2: an epoch whose low bits collide with the new one must go.
        self.epochs
            .retain(|e| (e.epoch & EPOCH_MASK) != (secrets.epoch & EPOCH_MASK));
        while self.epochs.len() >= MAX_LIVE_EPOCHS {
            self.epochs.pop_front();
        }

        let mut members = Vec::new();
        for &leaf in &secrets.members {
            let i = leaf as usize;
            if i >= members.len() {
                members.resize(i + 1, false);
            }
            members[i] = true;
        }
        self.suite = Some(secrets.suite);
        self.first_epoch.get_or_insert(secrets.epoch);
        self.sending = Some(Sending {
            epoch: secrets.epoch,
            leaf: secrets.own_leaf,
            key,
            next_counter: 0,
        });
        self.epochs.push_back(EpochKeys {
            epoch: secrets.epoch,
            base_key: secrets.base_key,
            receivers: HashMap::new(),
            members,
            expires: None,
        });
        Ok(())
    }

    /// Erases the keys of epochs whose grace window has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self
            .epochs
            .front()
            .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
        {
            self.epochs.retain(|e| e.expires.is_none_or(|t| t > now));
        }
    }

    /// When [`MediaCrypto::handle_timeout`] next has work to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.epochs.iter().filter_map(|e| e.expires).min()
    }

    /// Whether `leaf` is a member in an epoch whose keys this ring holds.
    pub fn is_member(&self, leaf: u32) -> bool {
        self.epochs.iter().any(|e| e.is_member(leaf))
    }

    /// Erases every key (on leaving the call).
    pub fn clear(&mut self) {
        self.sending = None;
        self.epochs.clear();
        self.first_epoch = None;
    }

    /// The epoch outgoing frames are sealed under.
    pub fn sending_epoch(&self) -> Option<u64> {
        self.sending.as_ref().map(|s| s.epoch)
    }

    /// Epochs whose keys are held now, oldest first.
    pub fn live_epochs(&self) -> Vec<u64> {
        self.epochs.iter().map(|e| e.epoch).collect()
    }

    /// Forgets which counters were seen (replay state) while keeping the keys. Only for
    /// benchmarks that open the same sealed frames many times; never in a call.
    #[doc(hidden)]
    pub fn danger_reset_replay_windows(&mut self) {
        for e in self.epochs.iter_mut() {
            for r in e.receivers.values_mut() {
                r.window = ReplayWindow::default();
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> MediaStats {
        self.stats
    }

    /// Seals `frame`, keeping `clear_len` leading bytes clear (authenticated). `out` receives
    /// `clear prefix | SFrame header | ciphertext | tag`; it is cleared first.
    pub fn seal(
        &mut self,
        frame: &[u8],
        clear: ClearPrefix,
        out: &mut Vec<u8>,
    ) -> Result<FrameInfo, FrameError> {
        out.clear();
        if frame.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(frame.len()));
        }
        let sending = self.sending.as_mut().ok_or(FrameError::NotReady)?;
        let n = clear.len_for(frame);
        let (meta, payload) = frame.split_at(n);
        let counter = sending.next_counter;
        sending.next_counter = counter.checked_add(1).ok_or(FrameError::CounterExhausted)?;
        if let Err(e) = seal_frame(&sending.key, counter, meta, payload, &mut self.aad, out) {
            out.clear();
            return Err(e);
        }
        self.stats.sealed += 1;
        Ok(FrameInfo {
            sender: sending.leaf,
            epoch: sending.epoch,
            counter,
        })
    }

    /// Reads the sender and epoch bits of a sealed frame without opening it (for routing and
    /// per-sender health; nothing here is authenticated yet).
    pub fn peek(wire: &[u8], clear: ClearPrefix) -> Result<(u32, u8), FrameError> {
        let n = clear.len_for(wire);
        let header = parse_header(&wire[n..]).ok_or(FrameError::Malformed("SFrame header"))?;
        let (_, leaf, bits) = split_kid(header.kid);
        Ok((leaf, bits))
    }

    /// Opens a sealed frame into `out` (`clear prefix | plaintext`, i.e. the sender's original
    /// frame). `out` is cleared first and left empty on error: nothing unauthenticated is ever
    /// handed to a decoder.
    pub fn open(
        &mut self,
        wire: &[u8],
        clear: ClearPrefix,
        out: &mut Vec<u8>,
        now: Timestamp,
    ) -> Result<FrameInfo, FrameError> {
        out.clear();
        let result = self.open_inner(wire, clear, out, now);
        match &result {
            Ok(_) => self.stats.opened += 1,
            Err(e) => {
                out.clear();
                match e {
                    FrameError::Authentication { .. } => self.stats.auth_failed += 1,
                    FrameError::Replayed { .. } | FrameError::TooOld { .. } => {
                        self.stats.replayed += 1
                    }
                    FrameError::UnknownEpoch { .. }
                    | FrameError::Expired { .. }
                    | FrameError::UnknownSender { .. }
                    | FrameError::ForeignContext(_)
                    | FrameError::NotReady => self.stats.unknown_key += 1,
                    FrameError::FutureEpoch { .. } => self.stats.future_epoch += 1,
                    FrameError::BeforeJoin { .. } => self.stats.before_join += 1,
                    _ => self.stats.malformed += 1,
                }
            }
        }
        result
    }

    fn open_inner(
        &mut self,
        wire: &[u8],
        clear: ClearPrefix,
        out: &mut Vec<u8>,
        now: Timestamp,
    ) -> Result<FrameInfo, FrameError> {
        if wire.len() > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(wire.len()));
        }
        self.handle_timeout(now);
        let suite = self.suite.ok_or(FrameError::NotReady)?;
        let n = clear.len_for(wire);
        let (meta, rest) = wire.split_at(n);
        let header = parse_header(rest).ok_or(FrameError::Malformed("SFrame header"))?;
        if rest.len() < header.len + sframe_suite(suite).auth_tag_len() {
            return Err(FrameError::Malformed("shorter than header and tag"));
        }
        let kid_value = header.kid;
        let (context, sender, epoch_bits) = split_kid(kid_value);
        if context != 0 {
            return Err(FrameError::ForeignContext(kid_value));
        }
        let newest = self
            .epochs
            .back()
            .map(|e| e.epoch)
            .ok_or(FrameError::NotReady)?;
        let Some(pos) = self
            .epochs
            .iter()
            .position(|e| (e.epoch & EPOCH_MASK) as u8 == epoch_bits)
        else {
            let ahead = (u64::from(epoch_bits).wrapping_sub(newest)) & EPOCH_MASK;
            if (1..=MAX_EPOCHS_AHEAD).contains(&ahead) {
                return Err(FrameError::FutureEpoch { epoch_bits, sender });
            }
            // Otherwise it is behind: the nearest earlier epoch with these low bits.
            let behind = newest.wrapping_sub(u64::from(epoch_bits)) & EPOCH_MASK;
            let oldest = self.epochs.front().map_or(newest, |e| e.epoch);
            return Err(match (newest.checked_sub(behind), self.first_epoch) {
                (Some(epoch), Some(first)) if epoch < first => {
                    FrameError::BeforeJoin { epoch, sender }
                }
                (Some(epoch), Some(_)) if epoch < oldest => FrameError::Expired { epoch, sender },
                _ => FrameError::UnknownEpoch { epoch_bits, sender },
            });
        };
        let is_newest = pos + 1 == self.epochs.len();
        let keys = &mut self.epochs[pos];
        let epoch = keys.epoch;
        if !keys.is_member(sender) {
            return Err(FrameError::UnknownSender { sender, epoch });
        }
        // `is_member` bounded `sender` by the member table: one receiver per member at most.
        let receiver = match keys.receivers.entry(sender) {
            Entry::Occupied(r) => r.into_mut(),
            Entry::Vacant(empty) => {
                let key =
                    DecryptionKey::derive_from(sframe_suite(suite), kid_value, &*keys.base_key)
                        .map_err(|_| FrameError::Malformed("key derivation"))?;
                empty.insert(Receiver {
                    key,
                    window: ReplayWindow::default(),
                })
            }
        };
        let counter = header.counter;
        receiver.window.check(sender, counter)?;
        open_frame(&receiver.key, &header, meta, rest, &mut self.aad, out)
            .map_err(|_| FrameError::Authentication { sender })?;
        receiver.window.accept(counter);
        if !is_newest {
            self.stats.opened_in_grace += 1;
        }
        Ok(FrameInfo {
            sender,
            epoch,
            counter,
        })
    }
}

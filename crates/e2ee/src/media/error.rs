//! Why a frame was not sealed or opened.

/// Why a frame was not sealed or opened. Every variant is counted in [`MediaStats`](super::MediaStats).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame is shorter than its clear prefix plus an SFrame header and tag, or its header
    /// does not parse.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// The frame is larger than [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN).
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    /// The KID's context bits are not zero (Conclave senders always use context 0).
    #[error("KID {0:#x} has a non-zero context")]
    ForeignContext(u64),
    /// The KID names an epoch whose keys this member does not hold (never had, or erased after
    /// the grace window).
    #[error("no keys for epoch bits {epoch_bits} (sender {sender})")]
    UnknownEpoch {
        /// Low bits of the epoch named by the KID.
        epoch_bits: u8,
        /// Leaf index named by the KID.
        sender: u32,
    },
    /// The KID names an epoch from before this member joined: unreadable by design (a joiner
    /// cannot read what came before it). Not a failure: a sender that has not applied the
    /// commit that added us yet is still sealing under the old epoch.
    #[error("frame from sender {sender} is for epoch {epoch}, before we joined")]
    BeforeJoin {
        /// The epoch (reconstructed from the KID's low bits).
        epoch: u64,
        /// Leaf index named by the KID.
        sender: u32,
    },
    /// The KID names an epoch this member was in, whose keys the grace window already
    /// erased: its sender applied the commits since then more than the grace window late.
    #[error("frame from sender {sender} is for epoch {epoch}, whose keys are erased")]
    Expired {
        /// The epoch (reconstructed from the KID's low bits).
        epoch: u64,
        /// Leaf index named by the KID.
        sender: u32,
    },
    /// The KID names an epoch just ahead of ours: hold the frame until the commit is applied.
    #[error("frame from sender {sender} is for a future epoch (bits {epoch_bits})")]
    FutureEpoch {
        /// Low bits of the epoch named by the KID.
        epoch_bits: u8,
        /// Leaf index named by the KID.
        sender: u32,
    },
    /// The KID names a leaf that is not a member in that epoch.
    #[error("sender {sender} is not a member in epoch {epoch}")]
    UnknownSender {
        /// Leaf index named by the KID.
        sender: u32,
        /// The epoch.
        epoch: u64,
    },
    /// The counter was already accepted from this sender in this epoch.
    #[error("replayed frame (sender {sender}, counter {counter})")]
    Replayed {
        /// Leaf index.
        sender: u32,
        /// SFrame counter.
        counter: u64,
    },
    /// The counter is older than the replay window.
    #[error("frame too old for the replay window (sender {sender}, counter {counter})")]
    TooOld {
        /// Leaf index.
        sender: u32,
        /// SFrame counter.
        counter: u64,
    },
    /// The AEAD tag did not verify: the frame (payload, header or clear prefix) was altered, or
    /// was sealed under another key.
    #[error("authentication failed (sender {sender})")]
    Authentication {
        /// Leaf index named by the KID.
        sender: u32,
    },
    /// No epoch has been installed yet: nothing can be sealed (media is held back, never sent
    /// in the clear).
    #[error("no media key yet")]
    NotReady,
    /// The sender's counter is exhausted for this epoch (a self-update gives a new epoch).
    #[error("frame counter exhausted")]
    CounterExhausted,
    /// The backend failed while sealing.
    #[error("encryption failed")]
    Encryption,
}

impl FrameError {
    /// The sender this error is about, where the KID could be read.
    pub fn sender(&self) -> Option<u32> {
        match self {
            FrameError::UnknownEpoch { sender, .. }
            | FrameError::BeforeJoin { sender, .. }
            | FrameError::Expired { sender, .. }
            | FrameError::FutureEpoch { sender, .. }
            | FrameError::UnknownSender { sender, .. }
            | FrameError::Replayed { sender, .. }
            | FrameError::TooOld { sender, .. }
            | FrameError::Authentication { sender } => Some(*sender),
            _ => None,
        }
    }
}

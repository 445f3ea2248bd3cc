//! What a native participant reports per sender: the frame path's counts (received, opened,
//! failed, held, ...) and what this runtime checked of the content.

use std::collections::BTreeMap;

use conclave_client::SenderHealth;
use serde::Serialize;

/// Per remote sender (by leaf index) what arrived and what opened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SenderCounts {
    /// Frames that arrived naming this sender.
    pub received: u64,
    /// Frames that opened (and, for synthetic frames, whose content checked out).
    pub decrypted: u64,
    /// Of those, frames of real media (a file or a device): authenticated by SFrame, but
    /// without synthetic content to compare byte for byte.
    pub unchecked: u64,
    /// Frames that did not open, or opened to the wrong content.
    pub failed: u64,
    /// Why frames failed, by kind of error.
    pub failure_kinds: BTreeMap<String, u64>,
    /// Of the decrypted frames, video frames.
    pub video_decrypted: u64,
    /// Synthetic video frames decrypted per simulcast layer (low, middle, high).
    pub video_layers: [u64; 3],
    /// The layer of the newest synthetic video frame.
    pub last_layer: Option<u8>,
    /// Speaking now, by the audio level on its packets (`conclave_media_meta::Voice`, the
    /// same detector the SFU ranks speakers with).
    pub speaking: bool,
    /// Loud audio heard from this sender, in milliseconds.
    pub speech_ms: u64,
    /// Frames that arrived twice (a retransmission duplicate): the first copy was used.
    pub duplicates: u64,
    /// Frames sealed under an epoch from before we joined (unreadable by design, not a
    /// failure).
    pub before_join: u64,
    /// Frames that arrived while this device held no keys at all (before its first epoch or
    /// after it left): not a failure.
    pub without_keys: u64,
    /// Frames held for an epoch not reached yet and not released (still held, or dropped by
    /// the hold queue's bounds).
    pub held: u64,
    /// Of the decrypted video frames, the first one seen in each epoch was a keyframe.
    pub keyframe_first_per_epoch: bool,
    /// Epochs in which video from this sender was decrypted.
    pub video_epochs: u64,
}

/// What this runtime adds to the frame path's counts for one sender: content checks of
/// synthetic frames, video layers, speech.
#[derive(Clone, Debug, Default)]
pub(crate) struct Extras {
    pub(crate) unchecked: u64,
    pub(crate) video_decrypted: u64,
    pub(crate) video_layers: [u64; 3],
    pub(crate) last_layer: Option<u8>,
    pub(crate) speaking: bool,
    pub(crate) speech_ms: u64,
    pub(crate) keyframe_first_per_epoch: bool,
    pub(crate) video_epochs: u64,
}

/// The counts of one sender: the frame path's, and this link's content checks.
pub(crate) fn sender_counts(h: &SenderHealth, x: &Extras) -> SenderCounts {
    SenderCounts {
        received: h.received,
        decrypted: h.decrypted,
        unchecked: x.unchecked,
        failed: h.failed,
        failure_kinds: h.failure_kinds.clone(),
        video_decrypted: x.video_decrypted,
        video_layers: x.video_layers,
        last_layer: x.last_layer,
        speaking: x.speaking,
        speech_ms: x.speech_ms,
        duplicates: h.duplicates,
        before_join: h.before_join,
        without_keys: h.without_keys,
        held: h.held + h.held_dropped,
        keyframe_first_per_epoch: x.keyframe_first_per_epoch,
        video_epochs: x.video_epochs,
    }
}

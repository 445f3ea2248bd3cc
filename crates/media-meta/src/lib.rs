//! # What anyone on the media path may read
//!
//! Every frame is SFrame ciphertext sealed by its sender; what stays outside the encryption is
//! what the forwarding decisions need, and this crate is the one place that reads it, so the
//! sender, the receivers and the SFU agree on its meaning:
//!
//! - [`speech`]: the RFC 6464 audio level on audio packets, turned into "speaking" (the SFU
//!   ranks speakers with it; a client shows who speaks with the same detector);
//! - [`simulcast`]: the RTP stream ids of the simulcast layers and the tile widths each layer
//!   serves;
//! - [`vp8`]: the VP8 payload descriptor (RFC 7741 4.2), whose picture ids the SFU renumbers,
//!   and the frame tag's keyframe bit (RFC 6386 9.1), which SFrame leaves in the clear.
//!
//! It holds no key and depends on nothing: the SFU can link it without reaching key code
//! (CI's `.ci/check-crate-graph` proves the participant no longer needs the SFU for this).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod simulcast;
pub mod speech;
pub mod vp8;

pub use speech::{Voice, SPEECH_LEVEL, SPEECH_STEP, SPEECH_TO_START};

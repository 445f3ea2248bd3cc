//! # Conclave's native participant runtime
//!
//! A thin driver of the participant core ([`conclave_client::Participant`]): it owns the IO
//! the core does not (the signaling WebSocket, the UDP socket, the clock, randomness for
//! jitter) and feeds the core every message, datagram and due timer.
//!
//! - [`run`] (`run.rs`): one call, connection after connection (reconnecting with backoff);
//!   each connection is one `select!` over the signaling socket, the media socket, the
//!   embedding program's [`Control`]s and the core's [`Participant::poll_timeout`];
//! - `connect.rs`: the WebSocket, over TLS for `https://` servers;
//! - `media_side.rs` and [`media_link`]: the WebRTC session to the SFU on str0m, sealing
//!   and opening through the core's frame path ([`conclave_client::FramePath`]);
//! - [`media_file`]: pre-encoded media (IVF/VP8, Ogg/Opus) to send;
//! - `summary.rs`: what `conclave join --json` prints at the end.
//!
//! [`Participant::poll_timeout`]: conclave_client::Participant::poll_timeout
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connect;
pub mod media_file;
pub mod media_link;
mod media_side;
mod options;
mod run;
mod summary;

pub use conclave_client::reconnect::{
    reconnect_delay, RECONNECT_ATTEMPTS, RECONNECT_FIRST_DELAY, RECONNECT_MAX_DELAY,
};
pub use conclave_proto::KnockId;
pub use options::{load_pins, token_identity, Control, JoinOptions, MediaFiles};
pub use run::run;
pub use summary::{EpochLine, RosterLine, SenderLine, Summary};

/// Errors of the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// Could not reach the server.
    #[error("connection: {0}")]
    Connect(String),
    /// The server refused us.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The core failed.
    #[error(transparent)]
    Core(#[from] conclave_client::Error),
    /// A local file (the pins) could not be read or written.
    #[error("local storage: {0}")]
    Storage(String),
    /// A media file could not be used.
    #[error("media file: {0}")]
    MediaFile(String),
}

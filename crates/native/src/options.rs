//! What the embedding program says: how to join, the media to send, requests while the call
//! runs, and the local files (pins) the runtime keeps.

use std::time::Duration;

use conclave_client::{AdmitMode, NewRoomPolicy};
use conclave_proto::KnockId;

use crate::NetError;

/// How to join.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The server's URL (`http://host:port` or `https://...`).
    pub url: String,
    /// The room.
    pub room: String,
    /// The join token.
    pub token: String,
    /// Policy if this participant ends up creating the room.
    pub policy: NewRoomPolicy,
    /// How to admit knocks when asked.
    pub admit: AdmitMode,
    /// Leave after this long (`None`: until [`Control::Leave`]).
    pub duration: Option<Duration>,
    /// Self-update period (post-compromise security), jittered by 20%.
    pub self_update_every: Duration,
    /// Send synthetic audio (every 20 ms) and video (every 33 ms) and receive others' media
    /// through the SFU.
    pub media: bool,
    /// Send audio (with `media`); off: receive only.
    pub send_audio: bool,
    /// Send video (with `media`); off: receive only.
    pub send_video: bool,
    /// Audio level (RFC 6464, -dBov) sent with our audio: what a microphone's meter would say
    /// (`Some(-20)`: speaking; `None`: no level). The SFU picks speakers from it.
    pub audio_level: Option<i8>,
    /// Width of the largest video tile we show (the SFU sends no larger layer); `None`: full
    /// size.
    pub tile_width: Option<u32>,
    /// Pre-encoded media to send instead of the synthetic sources (looped; played at 30 video
    /// frames and 50 audio packets a second).
    pub files: MediaFiles,
    /// Extra trust anchors (PEM) for the server's TLS certificate, beside the public web
    /// roots: for a server with a private or self-signed certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Drop this fraction (0 to 1) of media datagrams, each way, at random: a network
    /// impairment for load and soak tests (0 in real use).
    pub media_loss: f64,
    /// The meeting's charter (`conclave join --charter`): join or create only a group with
    /// exactly this policy. `None`: take the group the room has.
    pub charter: Option<conclave_e2ee::RoomPolicy>,
    /// Where this participant keeps its trust-on-first-use pins (user id to the device
    /// fingerprint first seen for it), read at the start and written, mode 0600, when a pin
    /// is added. A known user id with another key raises an alarm. `None`: no pinning.
    pub pins_file: Option<std::path::PathBuf>,
}

/// Pre-encoded media sources.
#[derive(Clone, Debug, Default)]
pub struct MediaFiles {
    /// VP8 video from an IVF file.
    pub video: Option<crate::media_file::Ivf>,
    /// Opus audio from an Ogg file.
    pub audio: Option<crate::media_file::OggOpus>,
}

/// Requests from the embedding program while the call runs.
#[derive(Debug)]
#[non_exhaustive]
pub enum Control {
    /// Leave cleanly now.
    Leave,
    /// Admit a knock (lobby host).
    Admit(KnockId),
    /// Deny a knock (lobby host).
    Deny(KnockId),
    /// Commit a self-update now.
    SelfUpdate,
}

/// The signaling WebSocket URL of a room on the server at `base`.
pub(crate) fn ws_url(base: &str, room: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/ws/{room}")
}

/// Reads the claims of a token without checking its signature (the server checks it): the
/// identity and name the credential must carry.
pub fn token_identity(token: &str) -> Option<(String, String)> {
    let v = conclave_client::token_claims(token)?;
    Some((
        v.get("sub")?.as_str()?.to_owned(),
        v.get("name")?.as_str()?.to_owned(),
    ))
}

/// The trust-on-first-use pins kept at `path` (none yet if it does not exist). A file that
/// does not parse is an error, not an empty store: forgetting pins would hide a changed key.
pub fn load_pins(path: &std::path::Path) -> Result<conclave_e2ee::TrustStore, NetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => conclave_e2ee::TrustStore::from_text(&text)
            .map_err(|e| NetError::Storage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(NetError::Storage(format!("{}: {e}", path.display()))),
    }
}

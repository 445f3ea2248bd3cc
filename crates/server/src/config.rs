//! Server configuration: embedded defaults, an optional TOML file, command-line flags on top
//! (flags win; unknown keys in the file are refused).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{io, ServerError};

/// `conclave serve` flags. Every flag is optional; unset ones come from the file or defaults.
// The field docs are clap's `--help` text, where `[default: …]` and `<listen>` are text.
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
#[derive(Clone, Debug, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML config file (keys as the long flags, with `_` for `-`).
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address for HTTP and WebSocket signaling [default: 127.0.0.1:8480].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// UDP address of the SFU (all media of all rooms on this one port)
    /// [default: 127.0.0.1:8481].
    #[arg(long)]
    pub media_listen: Option<SocketAddr>,
    /// Where the server keeps its keys [default: $XDG_DATA_HOME/conclave or ~/.local/share/conclave].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The URL people use to reach this server (printed, and put in join links)
    /// [default: http://<listen>].
    #[arg(long)]
    pub public_url: Option<String>,
    /// Most members plus knocks per room [default: 1000].
    #[arg(long)]
    pub max_room_size: Option<usize>,
    /// Seconds a member's connection may stay gone before the server proposes its removal
    /// [default: 10].
    #[arg(long)]
    pub remove_after_secs: Option<u64>,
    /// New WebSocket connections per IP per minute [default: 120].
    #[arg(long)]
    pub connections_per_ip_per_minute: Option<u32>,
    /// Video senders each participant receives: the most recent speakers [default: 8].
    #[arg(long)]
    pub last_n: Option<usize>,
    /// Audio senders each participant receives: the most recent speakers [default: 8].
    #[arg(long)]
    pub top_k_audio: Option<usize>,
    /// TLS certificate chain (PEM) for HTTPS and WSS; needs `--tls-key`. Without it the
    /// server speaks plain HTTP, which is for loopback only.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Audit: keep copies of up to N forwarded frame payloads as the SFU sees them, and write
    /// them to `--media-tap-file` when the server stops (to check what the server can see).
    #[arg(long, requires = "media_tap_file")]
    #[serde(skip)]
    pub media_tap: Option<usize>,
    /// Where `--media-tap` writes (each payload as a 4-byte big-endian length and its bytes).
    #[arg(long, requires = "media_tap")]
    #[serde(skip)]
    pub media_tap_file: Option<PathBuf>,
}

/// Resolved configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// HTTP/WebSocket address.
    pub listen: SocketAddr,
    /// SFU UDP address.
    pub media_listen: SocketAddr,
    /// Key directory.
    pub data_dir: PathBuf,
    /// Public URL.
    pub public_url: Option<String>,
    /// Room size limit.
    pub max_room_size: usize,
    /// Removal timeout.
    pub remove_after: Duration,
    /// Connection rate limit per IP.
    pub connections_per_ip_per_minute: u32,
    /// Forwarding choices of the SFU (last N video, top k audio).
    pub sfu: conclave_sfu::SfuConfig,
    /// TLS certificate chain and key (PEM files), if the server speaks HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Messages queued towards one signaling connection before it counts as too slow and is
    /// disconnected (so a slow reader never delays its room).
    pub outbound_queue: usize,
    /// Keep copies of up to this many forwarded frame payloads, as the SFU sees them (0: off).
    /// For audits and tests of what the server can see.
    pub media_tap: usize,
    /// The web client's files (empty: the server explains how to get a build that has them).
    pub web: &'static [crate::web::WebAsset],
}

/// The default data directory: `$XDG_DATA_HOME/conclave`, or `~/.local/share/conclave`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("conclave");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/conclave"),
        None => PathBuf::from("conclave-data"),
    }
}

fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>) -> Option<T> {
    flag.clone().or_else(|| file.clone())
}

impl ServeArgs {
    /// Flags over the file over the defaults.
    pub fn resolve(&self) -> Result<ServerConfig, ServerError> {
        let file: ServeArgs = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(io(path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?
            }
            None => ServeArgs::default(),
        };
        let tls = match (
            pick(&self.tls_cert, &file.tls_cert),
            pick(&self.tls_key, &file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ServerError::Config(
                    "tls_cert and tls_key go together".into(),
                ))
            }
        };
        let listen = pick(&self.listen, &file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8480)));
        if tls.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(
                %listen,
                "serving plain HTTP beyond loopback: tokens and signaling travel in the clear \
                 (media stays end-to-end encrypted); use --tls-cert and --tls-key"
            );
        }
        // Each default lives once, in the core it belongs to.
        let ds = conclave_ds::DsConfig::default();
        let defaults = conclave_sfu::SfuConfig::default();
        let sfu = conclave_sfu::SfuConfig {
            last_n: pick(&self.last_n, &file.last_n).unwrap_or(defaults.last_n),
            top_k_audio: pick(&self.top_k_audio, &file.top_k_audio).unwrap_or(defaults.top_k_audio),
        };
        Ok(ServerConfig {
            listen,
            sfu,
            tls,
            media_listen: pick(&self.media_listen, &file.media_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8481))),
            data_dir: pick(&self.data_dir, &file.data_dir).unwrap_or_else(default_data_dir),
            public_url: pick(&self.public_url, &file.public_url),
            max_room_size: pick(&self.max_room_size, &file.max_room_size)
                .unwrap_or(ds.max_room_size),
            remove_after: pick(&self.remove_after_secs, &file.remove_after_secs)
                .map_or(ds.remove_after, Duration::from_secs),
            connections_per_ip_per_minute: pick(
                &self.connections_per_ip_per_minute,
                &file.connections_per_ip_per_minute,
            )
            .unwrap_or(120),
            outbound_queue: 4096,
            media_tap: self.media_tap.unwrap_or(0),
            web: &[],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_unknown_keys_are_refused() {
        let dir = std::env::temp_dir().join(format!("conclave-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_room_size = 50\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            max_room_size: Some(7),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.max_room_size, 7);
        std::fs::write(&path, "listne = \"127.0.0.1:9000\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let d = ServeArgs::default().resolve().unwrap();
        assert_eq!(d.listen, SocketAddr::from(([127, 0, 0, 1], 8480)));
        // The defaults `--help` names are the cores' own.
        let ds = conclave_ds::DsConfig::default();
        assert_eq!(
            (d.max_room_size, d.remove_after),
            (1000, Duration::from_secs(10))
        );
        assert_eq!(
            (ds.max_room_size, ds.remove_after),
            (d.max_room_size, d.remove_after)
        );
    }
}

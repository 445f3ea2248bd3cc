//! What the server's integration tests share: a server on loopback with its own data folder.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use conclave_server::ServeArgs;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A new folder's path under the system's temporary folder, named for this process and moment.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

/// Arguments for a server on ephemeral loopback ports, with a new data folder (returned too).
pub fn loopback_args(prefix: &str) -> (ServeArgs, PathBuf) {
    let dir = temp_dir(prefix);
    let args = ServeArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        media_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.clone()),
        ..Default::default()
    };
    (args, dir)
}

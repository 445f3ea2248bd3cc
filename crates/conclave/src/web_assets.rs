//! The web client, as `build.rs` built it (or nothing, with `BUILT` false).

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

//! The server's TOML configuration and join tokens: never a panic; a token not signed by the
//! server's key never verifies.
#![no_main]
use conclave_server::{ServeArgs, TokenKey};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static KEY: TokenKey = TokenKey::generate().expect("token key");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = toml::from_str::<ServeArgs>(text);
    KEY.with(|k| {
        assert!(k.verify(text, "room", 1_700_000_000).is_err());
    });
});

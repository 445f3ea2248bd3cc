//! What the worker needs around a call: a device identity, a token's claims, the hello, and
//! when to try again after a lost connection.

use conclave_e2ee::{CredentialInfo, DeviceIdentity, RoomCipherSuite};
use conclave_proto::{ClientMsg, PROTOCOL_VERSION};
use wasm_bindgen::prelude::*;

use crate::{js, WebError};

/// A new device identity for `user_id` (the token's subject) named `name`: an Ed25519 key
/// generated here from the browser's CSPRNG. Returns its serialized form, which the worker
/// keeps in IndexedDB (and nowhere else).
#[wasm_bindgen(js_name = newIdentity)]
pub fn new_identity(user_id: &str, name: &str) -> Result<Vec<u8>, WebError> {
    let info = CredentialInfo::new(user_id, name).map_err(js)?;
    let id = DeviceIdentity::generate(RoomCipherSuite::Curve25519Aes128, info).map_err(js)?;
    Ok(id.to_bytes().map_err(js)?.to_vec())
}

/// The user id, display name and fingerprint (short code) of a stored identity, as JSON.
#[wasm_bindgen(js_name = identityInfo)]
pub fn identity_info(identity: &[u8]) -> Result<String, WebError> {
    let id = DeviceIdentity::from_bytes(identity).map_err(js)?;
    let fp = id.fingerprint().map_err(js)?;
    Ok(serde_json::json!({
        "user_id": id.info().user_id,
        "name": id.info().display_name,
        "fingerprint": fp.to_string(),
    })
    .to_string())
}

/// The claims a join token carries (`sub`, `name`, `room`, `exp`), as JSON, without checking
/// its signature (the server does); `undefined` if it is not a token.
#[wasm_bindgen(js_name = tokenClaims)]
pub fn token_claims(token: &str) -> Option<String> {
    conclave_client::token_claims(token).map(|v| v.to_string())
}

/// The first message on the signaling socket.
#[wasm_bindgen(js_name = helloMessage)]
pub fn hello_message(token: &str) -> String {
    ClientMsg::Hello {
        version: PROTOCOL_VERSION,
        token: token.to_owned(),
    }
    .encode()
}

/// The wait in milliseconds before reconnection attempt `attempt` (0-based), jittered by
/// `random`: the native client's schedule (`conclave_client::reconnect`, 250 ms doubling to
/// 8 s, 20% jitter); `undefined` once the attempts are used up.
#[wasm_bindgen(js_name = reconnectDelayMs)]
pub fn reconnect_delay_ms(attempt: u32, random: u32) -> Option<f64> {
    use conclave_client::reconnect::{reconnect_delay, RECONNECT_ATTEMPTS};
    (attempt < RECONNECT_ATTEMPTS)
        .then(|| reconnect_delay(attempt, u64::from(random)).as_secs_f64() * 1000.0)
}

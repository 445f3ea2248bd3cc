//! A client survives a restart: identity file plus group state on disk.

mod common;
use common::*;
use conclave_e2ee::*;

#[test]
fn client_survives_restart_with_state_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut room = Room::open(2);

    // Member 2 keeps its state under `dir`.
    let identity =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("disk", "Disk").unwrap()).unwrap();
    let identity_file = identity.to_bytes().unwrap();
    let fp = identity.fingerprint().unwrap();
    let d = Device::new(
        identity,
        GroupStore::dir(dir.path().join("groups")).unwrap(),
    )
    .unwrap();
    let idx = room.add(0, vec![d])[0];
    room.s(idx).save().unwrap();
    let group_id = room.s(idx).group_id().to_vec();
    let code = room.s(idx).security_code().unwrap();

    // The process dies.
    room.sessions[idx] = None;
    room.devices.pop();

    // A commit happens while it is down; it will be delivered after the restart.
    let b = room.s(0).self_update(T0).unwrap();
    room.deliver(0, &b.commit);

    // Restart: identity from its file, state from the directory.
    let identity = DeviceIdentity::from_bytes(&identity_file).unwrap();
    assert_eq!(identity.fingerprint().unwrap(), fp);
    let d = Device::new(
        identity,
        GroupStore::dir(dir.path().join("groups")).unwrap(),
    )
    .unwrap();
    let mut s = d.load(&group_id).unwrap();
    assert_eq!(
        s.security_code().unwrap(),
        code,
        "same state as before the crash"
    );
    // Its SFrame counters for this epoch died with the process: no media keys (no nonce
    // reuse) until the group moves on.
    assert!(matches!(s.epoch_secrets(), Err(Error::Usage(_))));
    s.process(&b.commit, T0).unwrap();
    assert_eq!(
        s.security_code().unwrap(),
        room.s(0).security_code().unwrap()
    );

    // And media flows.
    let mut m = MediaCrypto::default();
    m.install_epoch(s.epoch_secrets().unwrap(), T0).unwrap();
    let mut sender = room.media(0);
    let (mut wire, mut out) = (Vec::new(), Vec::new());
    sender
        .seal(b"welcome back", ClearPrefix::None, &mut wire)
        .unwrap();
    m.open(&wire, ClearPrefix::None, &mut out, T0).unwrap();
    assert_eq!(out, b"welcome back");

    // Only the newest epoch record stays on disk.
    let group_dir = std::fs::read_dir(dir.path().join("groups"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    s.save().unwrap();
    let epochs = std::fs::read_dir(&group_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("epoch-")
        })
        .count();
    assert!(epochs <= 1, "{epochs} epoch records kept");
}

#[test]
fn corrupted_identity_file_is_rejected() {
    let identity = DeviceIdentity::generate(SUITE, CredentialInfo::new("x", "X").unwrap()).unwrap();
    let bytes = identity.to_bytes().unwrap();
    assert!(DeviceIdentity::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    let mut bad = bytes.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1; // public key no longer matches the secret
    assert!(matches!(
        DeviceIdentity::from_bytes(&bad),
        Err(Error::Storage(_))
    ));
    assert!(DeviceIdentity::from_bytes(b"").is_err());
}

#[test]
fn trust_store_pins_first_key_and_warns_on_change() {
    let a =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("alice", "Alice").unwrap()).unwrap();
    let a2 =
        DeviceIdentity::generate(SUITE, CredentialInfo::new("alice", "Alice").unwrap()).unwrap();
    let mut pins = TrustStore::default();
    let fp = a.fingerprint().unwrap();
    assert_eq!(pins.check("alice", fp), PinCheck::FirstSeen);
    assert_eq!(pins.check("alice", fp), PinCheck::Matches);
    let fp2 = a2.fingerprint().unwrap();
    assert_eq!(pins.check("alice", fp2), PinCheck::Changed { pinned: fp });
    let pins = TrustStore::from_text(&pins.to_text()).unwrap();
    let mut pins = pins;
    assert_eq!(pins.check("alice", fp), PinCheck::Matches);
    assert!(TrustStore::from_text("zz alice").is_err());
    // Short codes are four groups of five digits.
    assert_eq!(fp.short_code().split(' ').count(), 4);
    assert_eq!(Fingerprint::from_hex(&fp.to_hex()), Some(fp));
}

#[test]
fn credentials_with_bad_names_are_refused() {
    assert!(CredentialInfo::new("", "x").is_err());
    assert!(CredentialInfo::new(&"u".repeat(MAX_USER_ID_LEN + 1), "x").is_err());
    assert!(CredentialInfo::new("u", &"n".repeat(MAX_DISPLAY_NAME_LEN + 1)).is_err());
    assert!(CredentialInfo::new("u", "line\nbreak").is_err());
    assert!(CredentialInfo::new("u", "Zoë 🎙").is_ok());
    // Look-alikes: a user id or name with an invisible or text-direction character renders
    // like another one in a roster.
    for sneaky in [
        "alice\u{200B}",
        "ali\u{202E}ecila",
        "\u{FEFF}bob",
        "bo\u{00AD}b",
        "x\u{2066}y",
    ] {
        assert!(CredentialInfo::new(sneaky, "x").is_err(), "{sneaky:?}");
        assert!(CredentialInfo::new("u", sneaky).is_err(), "{sneaky:?}");
    }
    assert!(CredentialInfo::new("عمر", "Ömer Şahin").is_ok());
}

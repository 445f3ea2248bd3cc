//! `conclave join`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use conclave_client::{AdmitMode, Event, NewRoomPolicy};
use conclave_e2ee::{CredentialInfo, Device, DeviceIdentity, GroupStore, RoomCipherSuite};
use conclave_native::{token_identity, Control, JoinOptions};

/// `conclave join` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct JoinArgs {
    /// The server URL (as `conclave serve` printed it).
    url: String,
    /// The room.
    #[arg(long)]
    room: String,
    /// Display name [default: the token's name].
    #[arg(long)]
    name: Option<String>,
    /// The join token (`conclave token`).
    #[arg(long)]
    token: String,
    /// Leave after this long (e.g. 30s); default: until Ctrl-C.
    #[arg(long)]
    duration: Option<String>,
    /// Print one JSON summary as the last line at exit.
    #[arg(long)]
    pub(crate) json: bool,
    /// If this participant creates the room: open (default), lobby (it becomes the host and
    /// admits each knock) or invite-list (only the devices given with --allow may be added,
    /// by any member).
    #[arg(long, default_value = "open")]
    policy: String,
    /// For --policy invite-list: the fingerprint (64 hex characters, as `--json` rosters and
    /// `conclave join` print them) of a device that may be added; repeat for each.
    #[arg(long)]
    allow: Vec<String>,
    /// How a lobby host admits knocks: `ask` (a y/N prompt per knock on the terminal, showing
    /// the name, user id and device fingerprint from the knocker's own KeyPackage), or
    /// `danger-auto`, which admits every knock the server passes on, so that the lobby
    /// protects nothing (for automation that knows this). Open rooms admit automatically.
    #[arg(long, default_value = "ask")]
    admit: String,
    /// Keep this device's identity here (created if missing, mode 0600) so its fingerprint
    /// stays the same across calls [default: `device-<user id>.key` in the data directory].
    #[arg(long)]
    identity_file: Option<PathBuf>,
    /// Where this participant keeps its device identity and its trust-on-first-use pins, one
    /// of each per user id, so that several participants on one machine each keep their own
    /// [default: $XDG_DATA_HOME/conclave/client or ~/.local/share/conclave/client].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A fresh device key for this call only, and no pins: nothing is read or written.
    #[arg(long, conflicts_with_all = ["identity_file", "data_dir"])]
    ephemeral: bool,
    /// Media to send: `synthetic` (audio every 20 ms, VP8-shaped video every 33 ms, each frame
    /// checkable by its receivers) or `none` (receive only).
    #[arg(long, default_value = "synthetic")]
    media: String,
    /// Put this audio level (dBov, -127 to 0; e.g. -20 for speech) on our audio packets, as
    /// a microphone's meter would; the SFU picks the active speakers from it.
    #[arg(long, allow_hyphen_values = true)]
    audio_level: Option<i8>,
    /// Width in pixels of the largest video tile this participant shows: the SFU sends no
    /// larger simulcast layer (up to 320: low, up to 640: middle).
    #[arg(long)]
    tile_width: Option<u32>,
    /// Send this IVF file's VP8 frames as video instead (looped, 30 frames a second).
    #[arg(long)]
    video_file: Option<PathBuf>,
    /// Send this Ogg file's Opus packets as audio instead (looped, one every 20 ms).
    #[arg(long)]
    audio_file: Option<PathBuf>,
    /// Trust this certificate (PEM) for the server's TLS, beside the public web roots: for a
    /// server with a private or self-signed certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// The meeting's charter (`c1.…`, as its maker printed it, or the `charter=` part of a
    /// link): join only a group with exactly that policy and those hosts, and create the
    /// group only if it lets this device. Without it, this participant takes whatever group
    /// the server's room has.
    #[arg(long)]
    charter: Option<String>,
}

/// A user id as a file name: letters, digits, `-`, `_` and `.` as they are, every other byte
/// as `%XX`.
fn file_id(user_id: &str) -> String {
    user_id
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Where `user_id`'s device identity and pins live (`None` each for `--ephemeral`).
fn local_files(args: &JoinArgs, user_id: &str) -> (Option<PathBuf>, Option<PathBuf>) {
    if args.ephemeral {
        return (None, None);
    }
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| conclave_server::config::default_data_dir().join("client"));
    let id = file_id(user_id);
    let identity = args
        .identity_file
        .clone()
        .unwrap_or_else(|| dir.join(format!("device-{id}.key")));
    (Some(identity), Some(dir.join(format!("pins-{id}.txt"))))
}

/// The device identity kept at `path` (made and written, mode 0600, on first use; its display
/// name follows `name`), or a fresh one for this call.
fn device_at(path: Option<&std::path::Path>, user_id: &str, name: &str) -> Result<Device> {
    let suite = RoomCipherSuite::Curve25519Aes128;
    let identity = match path {
        Some(path) if path.exists() => {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            let id = DeviceIdentity::from_bytes(&bytes)
                .with_context(|| format!("{}", path.display()))?;
            if id.info().user_id != user_id {
                bail!(
                    "{} holds the device key of {:?}, not {user_id:?}",
                    path.display(),
                    id.info().user_id
                );
            }
            id.with_display_name(name)?
        }
        Some(path) => {
            let id = DeviceIdentity::generate(suite, CredentialInfo::new(user_id, name)?)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
            }
            conclave_e2ee::write_private(path, &id.to_bytes()?)
                .with_context(|| format!("{}", path.display()))?;
            id
        }
        None => DeviceIdentity::generate(suite, CredentialInfo::new(user_id, name)?)?,
    };
    Ok(Device::new(identity, GroupStore::memory())?)
}

/// `--admit`: a lobby host is asked about every knock unless it says `danger-auto`; `auto`
/// (which once admitted everyone by default) is refused for a lobby.
fn admit_mode(admit: &str, policy: &NewRoomPolicy) -> Result<AdmitMode> {
    Ok(match (admit, policy) {
        ("ask", _) => AdmitMode::Ask,
        ("danger-auto", _) => AdmitMode::Auto,
        ("auto", NewRoomPolicy::Lobby) => bail!(
            "--admit auto in a lobby room would let in everyone the server sends: a lobby host \
             is asked (--admit ask, the default), or says --admit danger-auto"
        ),
        // Open rooms admit every knock whatever this says.
        ("auto", _) => AdmitMode::Ask,
        (other, _) => bail!("--admit {other}: ask or danger-auto"),
    })
}

pub(crate) fn join(args: JoinArgs) -> Result<()> {
    let media = match args.media.as_str() {
        "synthetic" => true,
        "none" => false,
        other => bail!("--media {other}: synthetic or none"),
    };
    let mut files = conclave_native::MediaFiles::default();
    if let Some(path) = &args.video_file {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        files.video = Some(
            conclave_native::media_file::Ivf::parse(&bytes)
                .with_context(|| format!("{}", path.display()))?,
        );
    }
    if let Some(path) = &args.audio_file {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        files.audio = Some(
            conclave_native::media_file::OggOpus::parse(&bytes)
                .with_context(|| format!("{}", path.display()))?,
        );
    }
    if !media && (files.video.is_some() || files.audio.is_some()) {
        bail!("--media none sends nothing: drop --video-file/--audio-file or --media none");
    }
    let (user_id, token_name) = token_identity(&args.token).context("the token does not parse")?;
    let name = args.name.clone().unwrap_or(token_name);
    let policy = match args.policy.as_str() {
        "open" => NewRoomPolicy::Open,
        "lobby" => NewRoomPolicy::Lobby,
        "invite-list" => {
            let allowed = args
                .allow
                .iter()
                .map(|f| {
                    conclave_e2ee::Fingerprint::from_hex(f)
                        .with_context(|| format!("--allow {f:?}: 64 hex characters"))
                })
                .collect::<Result<Vec<_>>>()?;
            NewRoomPolicy::InviteList(allowed)
        }
        other => bail!("--policy {other}: open, lobby or invite-list"),
    };
    if !args.allow.is_empty() && !matches!(policy, NewRoomPolicy::InviteList(_)) {
        bail!("--allow is for --policy invite-list");
    }
    let admit = admit_mode(&args.admit, &policy)?;
    let duration = args
        .duration
        .as_deref()
        .map(crate::serve::parse_duration)
        .transpose()?;
    let charter = args
        .charter
        .as_deref()
        .map(conclave_e2ee::RoomPolicy::from_charter)
        .transpose()
        .context("--charter")?;
    let (identity_file, pins_file) = local_files(&args, &user_id);
    let device = device_at(identity_file.as_deref(), &user_id, &name)?;
    let fingerprint = device.identity().fingerprint()?;
    let json = args.json;
    if !json {
        println!(
            "joining {} as {name} ({user_id}), device fingerprint {fingerprint} (in full, for \
             --allow: {})",
            args.room,
            fingerprint.to_hex()
        );
    }
    let opts = JoinOptions {
        url: args.url.clone(),
        room: args.room.clone(),
        token: args.token.clone(),
        policy,
        admit,
        duration,
        self_update_every: std::time::Duration::from_secs(300),
        media,
        send_audio: true,
        send_video: true,
        audio_level: args.audio_level,
        tile_width: args.tile_width,
        files,
        ca_file: args.ca_file.clone(),
        media_loss: 0.0,
        charter,
        pins_file,
    };
    let rt = tokio::runtime::Runtime::new()?;
    let summary = rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let ctrl = tx.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let _ = ctrl.send(Control::Leave).await;
            }
        });
        if admit == AdmitMode::Ask {
            // Admit/deny prompts on the terminal: "y" admits, anything else denies.
            let (ask_tx, mut ask_rx) =
                tokio::sync::mpsc::unbounded_channel::<(conclave_native::KnockId, String)>();
            let ctrl = tx.clone();
            std::thread::spawn(move || {
                let stdin = std::io::stdin();
                while let Some((knock, who)) = ask_rx.blocking_recv() {
                    eprint!("{who} is knocking. Admit? [y/N] ");
                    let mut line = String::new();
                    let _ = stdin.lock().read_line(&mut line);
                    let c = if line.trim().eq_ignore_ascii_case("y") {
                        Control::Admit(knock)
                    } else {
                        Control::Deny(knock)
                    };
                    let _ = ctrl.blocking_send(c);
                }
            });
            conclave_native::run(device, opts, rx, move |p, e| {
                report(p, e, json);
                if let Event::Knock {
                    knock,
                    user_id,
                    name,
                    fingerprint,
                } = e
                {
                    let fp = fingerprint.short_code();
                    let _ = ask_tx.send((*knock, format!("{name} ({user_id}, device {fp})")));
                }
            })
            .await
        } else {
            conclave_native::run(device, opts, rx, move |p, e| report(p, e, json)).await
        }
    })?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        for s in &summary.senders {
            println!(
                "from {} ({}): {} frames received, {} decrypted, {} failed; heard speaking for {:.1} s{}",
                s.name,
                s.id,
                s.frames_received,
                s.frames_decrypted,
                s.frames_failed,
                s.speech_ms as f64 / 1000.0,
                if s.speaking { " (speaking now)" } else { "" }
            );
        }
        println!(
            "call ended: {} ({} frames sent)",
            summary.ended, summary.frames_sent
        );
    }
    Ok(())
}

fn report(p: &conclave_client::Participant, e: &Event, json: bool) {
    if json {
        return;
    }
    match e {
        Event::Joined {
            epoch,
            security_code,
        } => {
            println!("in the call (epoch {epoch}); security code {security_code}");
            if let Some(charter) = p.charter().filter(|_| *epoch == 0) {
                // We made the meeting: what its links must carry.
                println!(
                    "meeting charter (give it with every link: `--charter {charter}`, or \
                     `&charter={charter}` in a browser link): {charter}"
                );
            }
            print_roster(p);
        }
        Event::EpochChanged {
            change,
            security_code,
        } => {
            for a in &change.added {
                println!("+ {} ({}) [{}]", a.display_name, a.user_id, a.fingerprint);
            }
            for r in &change.removed {
                println!("- {} ({})", r.display_name, r.user_id);
            }
            println!("epoch {}; security code {security_code}", change.epoch);
        }
        Event::Knock {
            user_id,
            name,
            fingerprint,
            ..
        } => println!(
            "knock: {name} ({user_id}) device {}",
            fingerprint.short_code()
        ),
        Event::KnockGone { knock, name } => println!("knock {knock} withdrawn: {name}"),
        Event::Alarm { reason } => println!("ALARM: {reason}"),
        Event::Ended { reason } => println!("ended: {reason}"),
        _ => {}
    }
}

fn print_roster(p: &conclave_client::Participant) {
    for e in p.roster() {
        println!("  {} ({}) [{}]", e.display_name, e.user_id, e.fingerprint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lobby_host_is_asked_unless_it_says_danger() {
        let lobby = NewRoomPolicy::Lobby;
        assert_eq!(admit_mode("ask", &lobby).unwrap(), AdmitMode::Ask);
        assert!(admit_mode("auto", &lobby).is_err());
        assert_eq!(admit_mode("danger-auto", &lobby).unwrap(), AdmitMode::Auto);
        assert!(admit_mode("yes", &lobby).is_err());
        // And the flag's default is to ask.
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            join: JoinArgs,
        }
        let cli = Cli::parse_from(["x", "http://h", "--room", "r", "--token", "t"]);
        assert_eq!(cli.join.admit, "ask");
    }

    fn args(extra: &[&str]) -> JoinArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            join: JoinArgs,
        }
        let mut argv = vec!["x", "http://h", "--room", "r", "--token", "t"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).join
    }

    #[test]
    fn a_device_keeps_its_identity_across_runs_one_per_user_id_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("conclave-join-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let a = args(&["--data-dir", d]);
        let (alice_key, alice_pins) = local_files(&a, "alice@clinic/1");
        let (bob_key, _) = local_files(&a, "bob");
        assert_ne!(alice_key, bob_key);
        assert!(alice_key
            .as_ref()
            .unwrap()
            .ends_with("device-alice%40clinic%2F1.key"));
        assert!(alice_pins.unwrap().ends_with("pins-alice%40clinic%2F1.txt"));
        let first = device_at(alice_key.as_deref(), "alice@clinic/1", "Alice").unwrap();
        let again = device_at(alice_key.as_deref(), "alice@clinic/1", "Alice B.").unwrap();
        let bob = device_at(bob_key.as_deref(), "bob", "Bob").unwrap();
        let fp = |d: &Device| d.identity().fingerprint().unwrap();
        assert_eq!(fp(&first), fp(&again), "a new key on the second run");
        assert_ne!(fp(&first), fp(&bob));
        assert_eq!(again.identity().info().display_name, "Alice B.");
        let mode = std::fs::metadata(alice_key.as_ref().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        // Another user's key file is refused, not used under the wrong name.
        assert!(device_at(bob_key.as_deref(), "alice@clinic/1", "Alice").is_err());
        // --ephemeral reads and writes nothing.
        assert_eq!(local_files(&args(&["--ephemeral"]), "alice"), (None, None));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

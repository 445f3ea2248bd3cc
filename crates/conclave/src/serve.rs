//! `conclave serve` and `conclave token`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use conclave_server::web::INVITE_SUBJECT;
use conclave_server::{Claims, ServeArgs, ServerKeys};

/// The room the printed invitation link opens.
const DEFAULT_ROOM: &str = "meeting";
/// How long the printed invitation link works.
const INVITE_TTL: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let mut config = args.resolve()?;
    config.web = crate::web_assets::ASSETS;
    let keys = ServerKeys::load_or_create(&config.data_dir)?;
    let invite = keys.token.issue(&Claims {
        room: DEFAULT_ROOM.into(),
        sub: INVITE_SUBJECT.into(),
        name: String::new(),
        exp: unix_now()? + INVITE_TTL.as_secs(),
    });
    let tap_file = args.media_tap_file.clone();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let data_dir = config.data_dir.clone();
        let server = conclave_server::start(config, keys).await?;
        println!("Conclave is serving at {}", server.url);
        if crate::web_assets::BUILT {
            println!(
                "Open in a browser (anyone with this link can knock on room {DEFAULT_ROOM:?} for 24 h):"
            );
            // The meeting's charter: an open room. Joiners holding it refuse any other group
            // (a lobby someone else made for the room, say).
            let charter = conclave_e2ee::RoomPolicy::open(DEFAULT_ROOM).to_charter()?;
            println!(
                "  {}/#room={DEFAULT_ROOM}&invite={invite}&charter={charter}",
                server.url
            );
        } else {
            println!("This build has no web client (see the README to build it); the command line can join.");
        }
        println!("Keys are in {}", data_dir.display());
        println!("Make a join token:  conclave token --room ROOM --identity ID --name NAME --data-dir {}", data_dir.display());
        println!("Join:               conclave join {} --room ROOM --token TOKEN", server.url);
        let stop = async {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                tokio::select! {
                    r = tokio::signal::ctrl_c() => r,
                    _ = term.recv() => Ok(()),
                }
            }
            #[cfg(not(unix))]
            tokio::signal::ctrl_c().await
        };
        stop.await?;
        println!("shutting down");
        if let Some(path) = tap_file {
            let payloads = server.tapped_payloads();
            let mut out = Vec::new();
            for p in &payloads {
                out.extend_from_slice(&(p.len() as u32).to_be_bytes());
                out.extend_from_slice(p);
            }
            std::fs::write(&path, out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            println!("wrote {} tapped payloads to {}", payloads.len(), path.display());
        }
        server.stop().await;
        Ok(())
    })
}

fn unix_now() -> Result<u64> {
    Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
}

/// Percent-encodes a link parameter (everything but unreserved characters).
fn encode_param(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `conclave token` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Room the bearer may knock on.
    #[arg(long)]
    room: String,
    /// Identity (user id) the bearer's credential must carry.
    #[arg(long, required_unless_present = "invite")]
    identity: Option<String>,
    /// Make an invitation instead: anyone with it gets a guest identity of their own (in the
    /// browser, who enters a name); it cannot join by itself. Use with `--link`.
    #[arg(long, conflicts_with_all = ["identity", "name"])]
    invite: bool,
    /// Display name [default: the identity].
    #[arg(long)]
    name: Option<String>,
    /// Lifetime, e.g. 30m, 1h, 2d [default: 1h].
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Print a join link (server URL with room, name and token) instead of the bare token.
    #[arg(long)]
    link: bool,
    /// The server's data directory (where its token key is).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The server URL for `--link` [default: http://127.0.0.1:8480].
    #[arg(long)]
    url: Option<String>,
    /// The meeting's charter (`c1.…`, as the participant who made the meeting printed it) to
    /// put in the `--link`, where the server never sees it: joiners then refuse any group
    /// with another policy or other hosts.
    #[arg(long)]
    charter: Option<String>,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad duration {s:?} (e.g. 30s, 10m, 1h, 2d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("bad duration unit in {s:?} (s, m, h, d)"),
    };
    Ok(Duration::from_secs(secs))
}

pub(crate) fn token(args: TokenArgs) -> Result<()> {
    let config = ServeArgs {
        data_dir: args.data_dir.clone(),
        ..ServeArgs::default()
    }
    .resolve()?;
    let keys = ServerKeys::load_or_create(&config.data_dir)?;
    let ttl = parse_duration(&args.ttl)?;
    let now = unix_now()?;
    let identity = match (&args.identity, args.invite) {
        (_, true) => INVITE_SUBJECT.to_owned(),
        (Some(id), false) => id.clone(),
        (None, false) => bail!("--identity is needed (or --invite)"),
    };
    let claims = Claims {
        room: args.room.clone(),
        name: if args.invite {
            String::new()
        } else {
            args.name.clone().unwrap_or_else(|| identity.clone())
        },
        sub: identity,
        exp: now + ttl.as_secs(),
    };
    let token = keys.token.issue(&claims);
    if args.link {
        let url = args.url.unwrap_or_else(|| "http://127.0.0.1:8480".into());
        let url = url.trim_end_matches('/');
        let room = encode_param(&claims.room);
        let charter = match &args.charter {
            Some(c) => {
                let policy = conclave_e2ee::RoomPolicy::from_charter(c).context("--charter")?;
                if policy.room() != claims.room {
                    bail!(
                        "--charter is for room {:?}, not {:?}",
                        policy.room(),
                        claims.room
                    );
                }
                format!("&charter={}", policy.to_charter()?)
            }
            None => String::new(),
        };
        if args.invite {
            println!("{url}/#room={room}&invite={token}{charter}");
        } else {
            println!(
                "{url}/#room={room}&name={}&token={token}{charter}",
                encode_param(&claims.name)
            );
        }
    } else {
        println!("{token}");
    }
    Ok(())
}

//! `conclave serve` and `conclave token`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use conclave_server::{Claims, ServeArgs, ServerKeys};

pub(crate) fn serve(args: ServeArgs) -> Result<()> {
    let config = args.resolve()?;
    let keys = ServerKeys::load_or_create(&config.data_dir)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let data_dir = config.data_dir.clone();
        let server = conclave_server::start(config, keys).await?;
        println!("Conclave is serving at {}", server.url);
        println!("Keys are in {}", data_dir.display());
        println!("Make a join token:  conclave token --room ROOM --identity ID --name NAME --data-dir {}", data_dir.display());
        println!("Join:               conclave join {} --room ROOM --token TOKEN", server.url);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("shutting down");
                server.stop().await;
            }
        }
        Ok(())
    })
}

/// `conclave token` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// Room the bearer may knock on.
    #[arg(long)]
    room: String,
    /// Identity (user id) the bearer's credential must carry.
    #[arg(long)]
    identity: String,
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
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        room: args.room.clone(),
        sub: args.identity.clone(),
        name: args.name.clone().unwrap_or_else(|| args.identity.clone()),
        exp: now + ttl.as_secs(),
    };
    let token = keys.token.issue(&claims);
    if args.link {
        let url = args.url.unwrap_or_else(|| "http://127.0.0.1:8480".into());
        println!(
            "{}/#room={}&name={}&token={}",
            url.trim_end_matches('/'),
            claims.room,
            claims.name,
            token
        );
    } else {
        println!("{token}");
    }
    Ok(())
}

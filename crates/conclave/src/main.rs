//! The `conclave` command.
// clap turns these doc comments into `--help`, where `[default: …]` is text, not a link.
#![allow(rustdoc::broken_intra_doc_links)]

use clap::{Parser, Subcommand};

mod demo;
mod join;
mod loadtest;
mod serve;
mod web_assets;

/// End-to-end encrypted group calls that anyone can host.
#[derive(Debug, Parser)]
#[command(name = "conclave", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (signaling, delivery service) on embedded defaults; prints the URL.
    Serve(conclave_server::ServeArgs),
    /// Print a join token (or a join link) signed by this server's key.
    Token(serve::TokenArgs),
    /// Join a room as a participant.
    Join(join::JoinArgs),
    /// Run a local meeting of in-process members through the real E2EE core: joins, a leave,
    /// a self-update, encrypted frames, and the security code at every epoch.
    Demo(demo::DemoArgs),
    /// Hold one meeting of N real participants in this process against a server started here
    /// on loopback; prints a JSON report (join times, rekey spread, forks, failed frames).
    Loadtest(loadtest::LoadtestArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet_logs = matches!(&cli.command, Command::Join(a) if a.json)
        || matches!(
            cli.command,
            Command::Token(_) | Command::Demo(_) | Command::Loadtest(_)
        );
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        if quiet_logs {
            "warn".into()
        } else {
            "info".into()
        }
    });
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Token(args) => serve::token(args),
        Command::Join(args) => join::join(args),
        Command::Demo(args) => demo::run(args),
        Command::Loadtest(args) => loadtest::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

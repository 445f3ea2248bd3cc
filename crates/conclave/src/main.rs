//! The `conclave` command.

use clap::{Parser, Subcommand};

mod demo;

/// End-to-end encrypted group calls that anyone can host.
#[derive(Debug, Parser)]
#[command(name = "conclave", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local meeting of in-process members through the real E2EE core: joins, a leave,
    /// a self-update, encrypted frames, and the security code at every epoch.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

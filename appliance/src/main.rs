//! `rialto`: the command line.

mod announce;
mod api;
mod control;
mod fault;
mod imports;
mod run;
mod takeover;
mod tools;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Rialto: a kernel-bypass border node between Kubernetes clusters.
///
/// An XDP program steers the traffic Rialto owns (service VIPs, VXLAN from
/// tunnel peers, replies to SNAT addresses) into AF_XDP sockets, one per
/// receive queue; a pinned worker per queue processes it and transmits it
/// back out of the same interface. Everything else goes to the kernel, also
/// when Rialto is not running.
///
/// Logging follows RUST_LOG (for example RUST_LOG=rialto=debug); default info.
#[derive(Debug, Parser)]
#[command(name = "rialto", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    // Parsed once, at start: its size does not matter.
    Run(Box<run::RunArgs>),
    Check(tools::CheckArgs),
    Stats(tools::StatsArgs),
    Drain(tools::DrainArgs),
    Replay(tools::ReplayArgs),
    Maglev(tools::MaglevArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let result = match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Check(args) => tools::check(&args),
        Command::Stats(args) => tools::stats(&args),
        Command::Drain(args) => tools::drain(&args),
        Command::Replay(args) => tools::replay(&args),
        Command::Maglev(args) => tools::maglev(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rialto: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

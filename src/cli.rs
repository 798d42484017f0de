//! The command line of the `o365-connector` binary.
//!
//! Every subcommand listed by `--help` works. Long-running commands print one
//! machine-readable readiness line on stdout (`listening …`) and log to stderr; they serve
//! until SIGINT or SIGTERM and then exit 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};
use crate::server::dev_certs::{self, DevCertOutcome};

/// Office 365 audit-log connector for UTMStack.
#[derive(Debug, Parser)]
#[command(name = "o365-connector", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run an emulator of a service the connector talks to (for tests, benchmarks, demos).
    #[command(subcommand)]
    Emulate(EmulateCommand),
    /// Certificate helpers.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `emulate …`
#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// Emulate the UTMStack engine: plugins.Engine/Input and Notify on a Unix socket.
    Engine(EngineArgs),
}

/// `emulate engine` options.
#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Unix socket to listen on (its directory is created).
    #[arg(long)]
    pub socket: PathBuf,
    /// Append each received Log and Message to this file as one JSON line.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Abort each Input stream when its Nth Log arrives (the Nth is not acknowledged).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub drop_after: Option<u64>,
    /// Wait this many milliseconds before acknowledging each Log.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub ack_delay_ms: u64,
    /// Never acknowledge Logs.
    #[arg(long)]
    pub no_ack: bool,
}

/// `certs …`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Write a development CA and a server certificate for localhost and 127.0.0.1.
    Dev(DevCertsArgs),
}

/// `certs dev` options.
#[derive(Debug, Args)]
pub struct DevCertsArgs {
    /// Directory for ca.pem, server.pem and server-key.pem.
    #[arg(long, default_value = "certs/dev")]
    pub dir: PathBuf,
    /// Replace an existing set (clients trusting the old CA must be given the new one).
    #[arg(long)]
    pub force: bool,
}

/// Runs a parsed command line until it is done or `shutdown` is cancelled.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> anyhow::Result<()> {
    match cli.command {
        Command::Emulate(EmulateCommand::Engine(args)) => emulate_engine(args, shutdown).await,
        Command::Certs(CertsCommand::Dev(args)) => certs_dev(args),
    }
}

async fn emulate_engine(args: EngineArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = EngineEmulatorConfig {
        socket: args.socket.clone(),
        out: args.out,
        keep_in_memory: false,
        faults: EngineFaults {
            drop_after: args.drop_after,
            ack_delay: Duration::from_millis(args.ack_delay_ms),
            no_ack: args.no_ack,
        },
    };
    let emulator = EngineEmulator::start(config)
        .await
        .context("cannot start the engine emulator")?;
    println!("listening unix:{}", args.socket.display());
    tracing::info!(socket = %args.socket.display(), "engine emulator ready");
    shutdown.cancelled().await;
    let counts = emulator.counts();
    emulator.shutdown().await;
    tracing::info!(
        logs_received = counts.logs_received,
        logs_acked = counts.logs_acked,
        messages_received = counts.messages_received,
        "engine emulator stopped"
    );
    Ok(())
}

fn certs_dev(args: DevCertsArgs) -> anyhow::Result<()> {
    let (paths, outcome) = dev_certs::write_dev_certs(&args.dir, args.force)?;
    let verb = match outcome {
        DevCertOutcome::Generated => "wrote",
        DevCertOutcome::Kept => "kept existing (use --force to replace)",
    };
    println!(
        "{verb} {} {} {}",
        paths.ca.display(),
        paths.server_cert.display(),
        paths.server_key.display()
    );
    Ok(())
}

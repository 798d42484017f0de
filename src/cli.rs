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

use crate::clock::Clock;
use crate::config::Config;
use crate::demo::{self, DemoOptions};
use crate::emulator::api::scenario::{Scenario, TenantScenario};
use crate::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use crate::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};
use crate::server::dev_certs::{self, DevCertOutcome};
use crate::service::{self, ServiceOptions};

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
    /// Run the connector with a configuration file until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Run the whole pipeline against the emulators and print what was lost.
    Demo(DemoArgs),
    /// Run an emulator of a service the connector talks to (for tests, benchmarks, demos).
    #[command(subcommand)]
    Emulate(EmulateCommand),
    /// Certificate helpers.
    #[command(subcommand)]
    Certs(CertsCommand),
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (TOML); environment overrides apply.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of publication before the drain.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Forward to the engine on this Unix socket instead of starting the emulator.
    #[arg(long, value_name = "PATH")]
    pub engine_socket: Option<PathBuf>,
}

/// `emulate …`
#[derive(Debug, Subcommand)]
pub enum EmulateCommand {
    /// Emulate the UTMStack engine: plugins.Engine/Input and Notify on a Unix socket.
    Engine(EngineArgs),
    /// Emulate Microsoft's Office 365 Management Activity API and its login endpoints.
    Api(Box<ApiArgs>),
}

/// `emulate api` options: one tenant from the flags, more from a scenario file.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to listen on (port 0 picks a free port; the bound one is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: std::net::SocketAddr,
    /// Tenant GUID of the single tenant given by flags.
    #[arg(long, requires_all = ["client_id", "client_secret"])]
    pub tenant_id: Option<String>,
    /// Client id of that tenant's app.
    #[arg(long, requires = "tenant_id")]
    pub client_id: Option<String>,
    /// Client secret of that tenant's app.
    #[arg(
        long,
        requires = "tenant_id",
        env = "O365_EMULATOR_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub client_secret: Option<String>,
    /// NDJSON records to publish byte-exact, cycling (default: synthetic records).
    #[arg(long, requires = "tenant_id")]
    pub records: Option<PathBuf>,
    /// Records per published blob.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub records_per_blob: u64,
    /// Blobs published per second per subscribed content type (0: only on demand).
    #[arg(long, default_value_t = 0.0)]
    pub blobs_per_second: f64,
    /// Items per content listing page before a NextPageUri.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub page_size: Option<u64>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Extra CA (PEM) trusted when POSTing to webhooks, e.g. certs/dev/ca.pem.
    #[arg(long)]
    pub webhook_ca: Option<PathBuf>,
    /// Scenario file (TOML) with tenants, publication, throttling and faults.
    #[arg(long)]
    pub scenario: Option<PathBuf>,
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
        Command::Run(args) => run_service(args, shutdown).await,
        Command::Demo(args) => run_demo(args).await,
        Command::Emulate(EmulateCommand::Engine(args)) => emulate_engine(args, shutdown).await,
        Command::Emulate(EmulateCommand::Api(args)) => emulate_api(*args, shutdown).await,
        Command::Certs(CertsCommand::Dev(args)) => certs_dev(args),
    }
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let summary = demo::run(DemoOptions {
        seconds: args.seconds,
        engine_socket: args.engine_socket,
        certs_dir: PathBuf::from("certs/dev"),
        drain_deadline: Duration::from_secs(60),
    })
    .await?;
    println!("{summary}");
    anyhow::ensure!(summary.lost == 0, "{} records were lost", summary.lost);
    Ok(())
}

async fn run_service(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Config::load(&args.config)?;
    let service = service::start(config, ServiceOptions::default()).await?;
    println!("listening {}", service.base_url);
    shutdown.cancelled().await;
    let report = service.stop().await;
    if !report.within_deadline {
        tracing::warn!("shutdown deadline passed; unfinished items will be redelivered");
    }
    Ok(())
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

async fn emulate_api(args: ApiArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let scenario = api_scenario(&args)?;
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        _ => None,
    };
    let config = ApiEmulatorConfig {
        listen: args.listen,
        scenario,
        tls,
        webhook_ca: args.webhook_ca,
        clock: Clock::system(),
    };
    let emulator = ApiEmulator::start(config)
        .await
        .context("cannot start the API emulator")?;
    println!("listening {}", emulator.base_url());
    tracing::info!(url = %emulator.base_url(), "API emulator ready");
    shutdown.cancelled().await;
    emulator.shutdown().await;
    tracing::info!("API emulator stopped");
    Ok(())
}

/// The scenario file, if any, plus the tenant given by flags, if any.
fn api_scenario(args: &ApiArgs) -> anyhow::Result<Scenario> {
    let mut tenants = Vec::new();
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::single_tenant(TenantScenario::with_secret("", "", "")),
    };
    if args.scenario.is_some() {
        tenants.append(&mut scenario.tenants);
    }
    if let (Some(tenant_id), Some(client_id), Some(secret)) =
        (&args.tenant_id, &args.client_id, &args.client_secret)
    {
        let mut tenant = TenantScenario::with_secret(tenant_id, client_id, secret);
        tenant.publication.records = args.records.clone();
        tenant.publication.records_per_blob = args.records_per_blob as usize;
        tenant.publication.blobs_per_second = args.blobs_per_second;
        tenants.push(tenant);
    }
    if tenants.is_empty() {
        anyhow::bail!(
            "give a tenant with --tenant-id, --client-id and --client-secret, or a --scenario file"
        );
    }
    scenario.tenants = tenants;
    if let Some(page_size) = args.page_size {
        scenario.page_size = page_size as usize;
    }
    scenario.validate()?;
    Ok(scenario)
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

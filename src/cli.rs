//! The command line of the `o365-connector` binary.
//!
//! Every subcommand listed by `--help` works. Long-running commands print one
//! machine-readable readiness line on stdout (`listening …`) and log to stderr; they serve
//! until SIGINT or SIGTERM and then exit 0.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::admin::{
    self,
    command::CommandTarget,
    protocol::{AdminRequest, BackfillRequest, DeadLetterSelection, SubscriptionSelection},
};
use crate::check;
use crate::clock::Clock;
use crate::config::ContentType;
use crate::demo::{self, DemoOptions};
use crate::emulator::api::scenario::{Scenario, TenantScenario};
use crate::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use crate::emulator::engine::{
    EngineEmulator, EngineEmulatorConfig, EngineFaults, GO_GRPC_MAX_RECEIVE_BYTES,
};
use crate::server::dev_certs::{self, DevCertOutcome};
use crate::server::tls_reload::ReloadRequests;
use crate::service::{self, ServiceOptions, utmstack_watch};
use crate::utmstack::{self, source::ConfigSource};

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
    /// Show, start or stop the API subscriptions (through the running service, else
    /// directly against the API).
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// List a past range of content again and enqueue what is new (the service must run).
    Backfill(BackfillArgs),
    /// List or requeue dead letters (the service must run).
    #[command(subcommand)]
    Deadletters(DeadLettersCommand),
    /// Check each tenant's app registration, subscriptions, webhook address and the engine
    /// socket, and say what to fix; exits non-zero when a check fails.
    Check(CheckArgs),
}

/// `check` options.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// POST a validation request to each tenant's public webhook address (must answer 200).
    #[arg(long)]
    pub probe_webhook: bool,
}

/// Where an operator command finds the service, and how it prints.
#[derive(Debug, Args)]
pub struct AdminTargetArgs {
    /// The service's configuration: `--config FILE`, or `--utmstack` as the service runs.
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// The service's admin socket. Default: `admin.sock` in the configuration's
    /// `store.path`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl AdminTargetArgs {
    fn target(&self) -> anyhow::Result<CommandTarget> {
        Ok(CommandTarget {
            source: self.source.source()?,
            admin_socket: self.admin_socket.clone(),
            json: self.json,
        })
    }
}

/// `subscriptions …`
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// The API's view of each tenant's subscriptions (status, webhook status and address).
    List(SubscriptionsArgs),
    /// Start subscriptions, with the configured webhook unless --no-webhook.
    Start(SubscriptionsArgs),
    /// Stop subscriptions (content published until they are started again is lost).
    Stop(SubscriptionsArgs),
}

/// `subscriptions list|start|stop` options.
#[derive(Debug, Args)]
pub struct SubscriptionsArgs {
    #[command(flatten)]
    target: AdminTargetArgs,
    /// Only this tenant (its configured name).
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// Only this content type (e.g. Audit.Exchange); default: each tenant's configured ones.
    #[arg(long, value_name = "T", value_parser = parse_content_type)]
    pub content_type: Option<ContentType>,
    /// `start`: register no webhook (poll only).
    #[arg(long)]
    pub no_webhook: bool,
}

impl SubscriptionsArgs {
    fn selection(&self) -> SubscriptionSelection {
        SubscriptionSelection {
            tenant: self.tenant.clone(),
            content_type: self
                .content_type
                .map(|content_type| content_type.to_string()),
        }
    }
}

/// `backfill` options.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    target: AdminTargetArgs,
    /// Start of the range (RFC 3339, e.g. 2026-11-20T00:00:00Z), at most 7 days back.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub from: DateTime<Utc>,
    /// End of the range (RFC 3339, exclusive; later than now means now).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub to: DateTime<Utc>,
    /// Only these tenants (configured names; repeat the option); default: all.
    #[arg(long = "tenant", value_name = "NAME")]
    pub tenants: Vec<String>,
    /// Only these content types (repeat the option); default: each tenant's configured ones.
    #[arg(long = "content-type", value_name = "T", value_parser = parse_content_type)]
    pub content_types: Vec<ContentType>,
}

/// `deadletters …`
#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead items (tenant, content type, contentId, reason, dead records) and dead records
    /// (index, byte range, SHA-256, reason; never content).
    List(DeadLettersListArgs),
    /// Put dead items back to pending, and send dead records of done blobs again.
    Requeue(DeadLettersRequeueArgs),
}

/// `deadletters list` options.
#[derive(Debug, Args)]
pub struct DeadLettersListArgs {
    #[command(flatten)]
    target: AdminTargetArgs,
    /// Only this tenant (its configured name).
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// Only this contentId.
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub content_id: Option<String>,
    /// Every dead letter (the default).
    #[arg(long)]
    pub all: bool,
}

/// `deadletters requeue` options: --content-id or --all is required.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["content_id", "all"])))]
pub struct DeadLettersRequeueArgs {
    #[command(flatten)]
    target: AdminTargetArgs,
    /// Only this tenant (its configured name).
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// The dead item, or the dead records, of the blob with this contentId.
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    pub content_id: Option<String>,
    /// Every dead item and dead record (of --tenant, if given).
    #[arg(long)]
    pub all: bool,
}

fn parse_content_type(text: &str) -> Result<ContentType, String> {
    text.parse().map_err(|_| {
        format!(
            "unknown content type {text:?}; use one of {}",
            ContentType::ALL
                .map(|content_type| content_type.as_str())
                .join(", ")
        )
    })
}

fn parse_rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| format!("{error}; give an RFC 3339 time such as 2026-11-20T00:00:00Z"))
}

/// `run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub source: ConfigSourceArgs,
    /// With --utmstack: seconds between two looks at UTMStack's files for changes (the
    /// tenants are reloaded when they change).
    #[arg(
        long,
        value_name = "SECONDS",
        env = "O365_CONNECTOR_UTMSTACK_WATCH_SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub watch_interval_secs: u64,
}

/// Where the configuration comes from: `--config FILE`, or `--utmstack` (tenants from
/// UTMStack's `system_plugins_o365.yaml`) with an optional `--config FILE` for the server
/// settings.
#[derive(Clone, Debug, Args)]
pub struct ConfigSourceArgs {
    /// The configuration file (TOML); environment overrides apply. With --utmstack: the
    /// server settings only (no [[tenants]]), optional.
    #[arg(long, value_name = "FILE", required_unless_present = "utmstack")]
    pub config: Option<PathBuf>,
    /// Take the tenants from UTMStack's configuration under WORK_DIR (default /workdir).
    #[arg(long)]
    pub utmstack: bool,
}

impl ConfigSourceArgs {
    /// The configuration source these arguments name.
    pub fn source(&self) -> anyhow::Result<ConfigSource> {
        if self.utmstack {
            return Ok(ConfigSource::Utmstack {
                settings: self.config.clone(),
            });
        }
        let path = self
            .config
            .clone()
            .context("give --config FILE or --utmstack")?;
        Ok(ConfigSource::File(path))
    }
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
    /// Register the webhook (on) or collect by polling alone (off).
    #[arg(long, value_enum, default_value = "on")]
    pub webhook: OnOff,
    /// Number of emulated tenants.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub tenants: u64,
    /// Inject the emulator's faults: 5xx, truncated bodies, throttling, duplicate
    /// notifications.
    #[arg(long)]
    pub faults: bool,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
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
    /// End each Input stream with Unavailable when its Nth Log arrives (not acknowledged).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub unavailable_after: Option<u64>,
    /// Refuse (InvalidArgument, ending the stream) every Log whose raw contains TEXT.
    #[arg(long, value_name = "TEXT", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub refuse_marker: Option<String>,
    /// Largest serialized Log accepted; a larger one ends its stream with ResourceExhausted,
    /// as the engine's Go gRPC server does (default: Go's 4 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = GO_GRPC_MAX_RECEIVE_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_message_bytes: usize,
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

/// Runs a parsed command line until it is done or `shutdown` is cancelled; `run` reloads
/// its TLS certificate on each of `tls_reload_requests` (SIGHUP).
pub async fn run(
    cli: Cli,
    shutdown: CancellationToken,
    tls_reload_requests: ReloadRequests,
) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_service(args, shutdown, tls_reload_requests).await,
        Command::Demo(args) => run_demo(args).await,
        Command::Emulate(EmulateCommand::Engine(args)) => emulate_engine(args, shutdown).await,
        Command::Emulate(EmulateCommand::Api(args)) => emulate_api(*args, shutdown).await,
        Command::Certs(CertsCommand::Dev(args)) => certs_dev(args),
        Command::Subscriptions(command) => run_subscriptions(command).await,
        Command::Check(args) => run_check(args).await,
        Command::Backfill(args) => {
            let request = BackfillRequest {
                tenants: args.tenants,
                content_types: args.content_types.iter().map(ToString::to_string).collect(),
                from: args.from,
                to: args.to,
            };
            admin::command::backfill(&args.target.target()?, request).await
        }
        Command::Deadletters(DeadLettersCommand::List(args)) => {
            let selection = DeadLetterSelection {
                tenant: args.tenant,
                content_id: args.content_id,
                all: args.all,
            };
            admin::command::deadletters_list(&args.target.target()?, selection).await
        }
        Command::Deadletters(DeadLettersCommand::Requeue(args)) => {
            let selection = DeadLetterSelection {
                tenant: args.tenant,
                content_id: args.content_id,
                all: args.all,
            };
            admin::command::deadletters_requeue(&args.target.target()?, selection).await
        }
    }
}

async fn run_check(args: CheckArgs) -> anyhow::Result<()> {
    let mut preface = check::CheckReport::default();
    let source = args.source.source()?;
    let config = if let ConfigSource::Utmstack { settings } = &source {
        let environment = utmstack::UtmstackEnvironment::from_process();
        let loaded = utmstack::load(&environment, settings.as_deref())?;
        for skip in &loaded.skipped {
            let detail = format!("skipped: {} {}", skip.key, skip.reason);
            let line =
                check::CheckLine::tenant(&skip.group, "config", check::Outcome::Fail, detail);
            preface.lines.push(line);
        }
        for warning in &loaded.warnings {
            let line = check::CheckLine::tenant(
                "utmstack",
                "config",
                check::Outcome::Warn,
                warning.clone(),
            );
            preface.lines.push(line);
        }
        loaded.config
    } else {
        source.load()?
    };
    let options = check::CheckOptions {
        probe_webhook: args.probe_webhook,
        utmstack: matches!(source, ConfigSource::Utmstack { .. }),
    };
    let report = check::run(&config, options, preface).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    anyhow::ensure!(!report.failed(), "some checks failed; see the table above");
    Ok(())
}

async fn run_subscriptions(command: SubscriptionsCommand) -> anyhow::Result<()> {
    let (args, request) = match command {
        SubscriptionsCommand::List(args) => {
            let request = AdminRequest::SubscriptionsList(args.selection());
            (args, request)
        }
        SubscriptionsCommand::Start(args) => {
            let request = AdminRequest::SubscriptionsStart {
                selection: args.selection(),
                no_webhook: args.no_webhook,
            };
            (args, request)
        }
        SubscriptionsCommand::Stop(args) => {
            let request = AdminRequest::SubscriptionsStop(args.selection());
            (args, request)
        }
    };
    admin::command::subscriptions(&args.target.target()?, request).await
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let summary = demo::run(DemoOptions {
        seconds: args.seconds,
        engine_socket: args.engine_socket,
        certs_dir: PathBuf::from("certs/dev"),
        drain_stall: Duration::from_secs(60),
        drain_cap: Duration::from_secs(600),
        webhook: args.webhook == OnOff::On,
        tenants: args.tenants as usize,
        faults: args.faults,
    })
    .await?;
    println!("{summary}");
    anyhow::ensure!(
        summary.succeeded(),
        "{} records were lost and {} are still queued",
        summary.lost,
        summary.pending
    );
    Ok(())
}

async fn run_service(
    args: RunArgs,
    shutdown: CancellationToken,
    tls_reload_requests: ReloadRequests,
) -> anyhow::Result<()> {
    let source = args.source.source()?;
    let config = source.load()?;
    let options = ServiceOptions {
        tls_reload_requests,
        ..ServiceOptions::default()
    };
    let service = service::start(config.clone(), options).await?;
    println!("listening {}", service.base_url);
    if let ConfigSource::Utmstack { settings } = source {
        let settings = utmstack_watch::WatchSettings {
            environment: utmstack::UtmstackEnvironment::from_process(),
            settings,
            interval: Duration::from_secs(args.watch_interval_secs),
        };
        // Stopped with the rest of the service: `shutdown` is cancelled before `stop`.
        tokio::spawn(utmstack_watch::run(
            service.tenant_supervisor(),
            settings,
            config,
            shutdown.clone(),
        ));
    }
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
            unavailable_after: args.unavailable_after,
            refuse_marker: args.refuse_marker,
        },
        max_message_bytes: args.max_message_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run_source(arguments: &[&str]) -> ConfigSource {
        let cli = Cli::try_parse_from(["o365-connector", "run"].iter().chain(arguments)).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("`run` parsed as another command");
        };
        args.source.source().unwrap()
    }

    #[test]
    fn config_flag_names_the_configuration_file() {
        assert_eq!(
            run_source(&["--config", "/etc/o365.toml"]),
            ConfigSource::File(PathBuf::from("/etc/o365.toml"))
        );
    }

    #[test]
    fn utmstack_flag_takes_config_as_the_server_settings() {
        assert_eq!(
            run_source(&["--utmstack", "--config", "/etc/server.toml"]),
            ConfigSource::Utmstack {
                settings: Some(PathBuf::from("/etc/server.toml"))
            }
        );
        assert_eq!(
            run_source(&["--utmstack"]),
            ConfigSource::Utmstack { settings: None }
        );
    }

    #[test]
    fn run_without_a_configuration_source_is_refused() {
        assert!(Cli::try_parse_from(["o365-connector", "run"]).is_err());
    }
}

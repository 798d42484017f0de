//! The running service (`o365-connector run`): wires the configuration into the
//! components and runs them until shutdown.
//!
//! Start order: store (leases of a run that died are released) → webhook secret → metrics
//! → HTTP client → tenants → engine forwarder → HTTP listener (webhook and ops routes; it
//! must answer before any subscription start, because Microsoft validates the webhook
//! synchronously; operations routes there only with `ops.public`), and the private ops
//! listener when `ops.listen` is set → the TLS
//! certificate reloader (file changes and SIGHUP) → workers → each tenant's poller and
//! subscription manager ([`tenants`]) → the admin socket → periodic upkeep.
//!
//! Stop order, bounded by `ops.shutdown_secs`: stop HTTP intake and the admin socket →
//! workers, pollers and subscription managers stop → workers stop reading
//! blobs → the forwarder drains (waits for in-flight acks until the deadline) → workers
//! record their progress and release their leases → the store closes. Whatever was not
//! acknowledged is redelivered after a restart; nothing is dropped.
//!
//! The tenants can change while the service runs: [`RunningService::tenant_supervisor`]
//! applies a new tenant list (see [`tenants`] for what happens to added, removed and
//! changed tenants and their queued work); with `run --utmstack`, [`utmstack_watch`] does
//! so when UTMStack's files change.

pub mod events;
pub mod tenants;
pub mod utmstack_watch;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use axum_server::tls_rustls::RustlsAcceptor;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminContext, AdminServer};
use crate::api::gate::RequestGate;
use crate::api::http::http_client;
use crate::api::types::WebhookRegistration;
use crate::clock::Clock;
use crate::cluster::Leadership;
use crate::config::{Config, StoreBackendKind};
use crate::forward::{Forwarder, ForwarderConfig, default_max_in_flight_bytes};
use crate::intake::Intake;
use crate::ops::events::ConsoleReporter;
use crate::ops::health::{EngineHealth, EngineStall, ProblemBoard, ReadinessProbe};
use crate::ops::metrics::StateLabels;
use crate::ops::status::{StatusSource, StatusTenant};
use crate::ops::{self, Metrics, OpsState, QueueLimit};
use crate::poller::{PollerDeps, TenantPoller};
use crate::queue::nats::leader::LeaderLease;
use crate::queue::nats::{NatsQueue, NatsSettings};
use crate::queue::{ContentQueue, EmbeddedQueue, MetaStore, QueueStore};
use crate::retry::RetryPolicy;
use crate::risk::{RiskCollector, RiskDeps};
use crate::server::connections::{self, ConnectionLimits, ConnectionTracker};
use crate::server::proxy::{ProxyPolicy, WebhookGate, enforce_webhook_allowlist};
use crate::server::tls_reload::{CertificateReloader, ReloadRequests, TlsFiles};
use crate::subscriptions::{SubscriptionBoard, SubscriptionContext, SubscriptionSettings};
use crate::tenant::{TenantSet, build_tenants};
use crate::webhook::auth_id::load_or_create_secrets;
use crate::webhook::{self, BodyLimits, WebhookSecrets, WebhookState, WebhookTenant};
use crate::worker::pool::{FailureReporter, WorkerContext, spawn_workers};
use tenants::{TenantRuntime, TenantSupervisor};

/// Settings that are not configuration: the clock and test knobs.
pub struct ServiceOptions {
    /// A listener already bound (tests bind port 0 first to know the public URL); when
    /// `None`, `server.listen` is bound.
    pub listener: Option<std::net::TcpListener>,
    /// The time source.
    pub clock: Clock,
    /// Sent in the `User-Agent` of every outbound request, when several replicas run.
    pub replica_id: Option<String>,
    /// Backoff of retried content items.
    pub retry: RetryPolicy,
    /// How often an idle worker looks at the queue without being woken.
    pub idle_poll: Duration,
    /// Requests to reload the TLS certificate now (`main` sends one on SIGHUP).
    pub tls_reload_requests: ReloadRequests,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            listener: None,
            clock: Clock::system(),
            replica_id: None,
            retry: RetryPolicy::standard(),
            idle_poll: Duration::from_secs(1),
            tls_reload_requests: ReloadRequests::none(),
        }
    }
}

/// A started service.
pub struct RunningService {
    /// Where the HTTP listener is bound.
    pub address: SocketAddr,
    /// `http(s)://address`.
    pub base_url: String,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The content queue.
    pub queue: Arc<dyn QueueStore>,
    /// Whether this replica runs the pollers and subscription managers.
    pub leadership: Leadership,
    /// The engine forwarder.
    pub forwarder: Arc<Forwarder>,
    /// The current tenants.
    pub tenants: Arc<TenantSet>,
    /// Current problems.
    pub problems: Arc<ProblemBoard>,
    /// What `/status` shows; components report subscription and notification state here.
    pub status: Arc<StatusSource>,
    /// Where the private ops listener (`ops.listen`) is bound, when configured.
    pub ops_address: Option<SocketAddr>,
    /// The poller of each tenant configured at start (tests drive extra cycles with
    /// `run_once`); tenants added by a reload are not listed.
    pub pollers: Vec<Arc<TenantPoller>>,
    /// The risk detection collector of each tenant configured at start with
    /// `risk_detections` (tests drive extra collections with [`RiskCollector::run_once`]).
    pub risk_collectors: Vec<Arc<RiskCollector>>,
    supervisor: Arc<TenantSupervisor>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http: axum_server::Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    ops_server: Option<Served>,
    /// The admin listener (operator commands), when its socket could be bound.
    admin: Option<AdminServer>,
    deadline: Duration,
    /// This replica's run marker in the store (see [`run_marker_key`]).
    run_marker: String,
}

/// Starts the service. Returns once the listener answers and the workers run.
pub async fn start(config: Config, mut options: ServiceOptions) -> anyhow::Result<RunningService> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let clock = options.clock.clone();
    let opened = open_store(&config, &clock, options.replica_id.take()).await?;
    let queue = opened.queue;
    let leadership = opened.leadership;
    let secrets = load_or_create_secrets(
        config.server.webhook_secret.as_ref(),
        config.server.webhook_secret_previous.as_ref(),
        queue.as_ref() as &dyn MetaStore,
    )
    .await
    .context("cannot load the webhook secret")?;
    let metrics = Arc::new(Metrics::new(
        config.tenants.iter().map(|tenant| tenant.name.as_str()),
        config.ops.max_tenant_series,
    ));
    events::OrphanedLeasesReleased {
        orphaned: opened.orphaned,
    }
    .emit(&metrics);
    let run_marker = run_marker_key(opened.replica_id.as_deref());
    let previous = queue
        .get_meta(&run_marker)
        .await
        .context("cannot read the store's run marker")?;
    events::PreviousRunEnded {
        unclean: previous.as_deref() == Some(RUNNING.as_bytes()),
        workers: config.workers.count.get(),
    }
    .emit(&metrics);
    queue
        .put_meta(&run_marker, RUNNING.as_bytes().to_vec())
        .await
        .context("cannot write the store's run marker")?;
    let http = http_client(&config.api, opened.replica_id.as_deref())?;
    let tenants = Arc::new(TenantSet::new(
        build_tenants(&config, &http, &clock, &metrics).await?,
    ));
    let forwarder = Arc::new(Forwarder::start(ForwarderConfig {
        clock: clock.clone(),
        max_message_bytes: config.engine.max_message_bytes,
        max_in_flight_bytes: default_max_in_flight_bytes(config.engine.max_message_bytes),
        stall_after: Duration::from_secs(config.engine.stall_secs.get()),
        ..ForwarderConfig::new(&config.engine.socket)
    }));
    let problems = Arc::new(ProblemBoard::default());
    let status = Arc::new(
        status_source(&config, &metrics, &problems, &queue, &clock, &forwarder)
            .with_cluster(leadership.clone())
            .with_queue_hard_limit(config.ops.queue_hard_limit()),
    );
    let queue_limit = Arc::new(QueueLimit::new(
        config.ops.queue_hard_limit(),
        queue.clone(),
        metrics.clone(),
    ));
    let intake = Intake::new(queue.clone(), metrics.clone(), Arc::new(Notify::new()))
        .with_limit(queue_limit);
    let shared = Shared {
        queue,
        metrics,
        problems,
        status,
        forwarder,
        tenants,
        clock,
        work_available: intake.work_available(),
        retry: options.retry,
        intake,
    };
    let routes = routes(&config, &shared, secrets);
    let webhook_state = routes.webhook_state.clone();
    let mut listeners = serve(&config, options.listener.take(), routes)?;
    let (address, http_handle, server) = listeners.main;
    let scheme = if config.server.serves_tls() {
        "https"
    } else {
        "http"
    };
    let base_url = format!("{scheme}://{address}");
    tracing::info!(%base_url, tenants = shared.tenants.current().len(), "listening");

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    if let Some(lease) = opened.lease {
        tracker.spawn(lease.run(shutdown.clone()));
    }
    if let Some(reloader) = listeners.reloader.take() {
        tracker.spawn(reloader.run(
            Duration::from_secs(config.server.tls_watch_interval_secs.get()),
            options.tls_reload_requests.clone(),
            shutdown.clone(),
        ));
    }
    spawn_workers(
        worker_context(&config, &shared, options.idle_poll),
        config.workers.count.get(),
        &tracker,
        shutdown.clone(),
    );
    let admin_webhooks = Arc::new(ArcSwap::from_pointee(HashMap::new()));
    let (supervisor, collectors) = TenantSupervisor::start(TenantRuntime {
        config: config.clone(),
        http,
        clock: shared.clock.clone(),
        metrics: shared.metrics.clone(),
        retry: shared.retry,
        gate: Arc::new(RequestGate::default()),
        poller: poller_deps(&shared),
        risk: risk_deps(&shared),
        subscriptions: subscription_context(&config, &shared),
        tenants: shared.tenants.clone(),
        webhook: webhook_state,
        admin_webhooks: admin_webhooks.clone(),
        status: shared.status.clone(),
        leadership: leadership.clone(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    });
    let admin = start_admin_listener(&config, admin_context(&config, &shared, admin_webhooks));
    tracker.spawn(crate::utmstack::failures::run(
        shared.problems.clone(),
        shared.forwarder.clone(),
        shared.clock.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(upkeep(
        shared.queue.clone(),
        shared.forwarder.clone(),
        shared.metrics.clone(),
        shared.clock.clone(),
        shutdown.clone(),
    ));
    Ok(RunningService {
        address,
        base_url,
        metrics: shared.metrics,
        queue: shared.queue,
        leadership,
        forwarder: shared.forwarder,
        tenants: shared.tenants,
        problems: shared.problems,
        status: shared.status,
        pollers: collectors.pollers,
        risk_collectors: collectors.risk,
        supervisor: Arc::new(supervisor),
        ops_address: listeners.ops.as_ref().map(|(address, _, _)| *address),
        shutdown,
        tracker,
        http: http_handle,
        server,
        ops_server: listeners.ops,
        admin,
        deadline: Duration::from_secs(config.ops.shutdown_secs.get()),
        run_marker,
    })
}

/// The run marker's value while a run is going on; a clean stop writes [`STOPPED`].
const RUNNING: &str = "running";
/// The run marker's value after a clean stop.
const STOPPED: &str = "stopped";

/// The metadata key of this replica's run marker: `running` from start to a clean stop, so a
/// start that finds `running` knows the previous run died (its in-flight work repeats).
fn run_marker_key(replica_id: Option<&str>) -> String {
    format!("ops/run/{}", replica_id.unwrap_or("local"))
}

/// What the components of one service share.
struct Shared {
    queue: Arc<dyn QueueStore>,
    metrics: Arc<Metrics>,
    problems: Arc<ProblemBoard>,
    status: Arc<StatusSource>,
    forwarder: Arc<Forwarder>,
    tenants: Arc<TenantSet>,
    clock: Clock,
    /// Woken by the intake (webhook, poller, backfill) when new items are queued.
    work_available: Arc<Notify>,
    retry: RetryPolicy,
    /// The one way into the queue for the webhook, the pollers and backfill (checks
    /// `ops.queue_hard_limit`, counts outcomes, wakes the workers).
    intake: Intake,
}

impl Shared {
    fn content_queue(&self) -> Arc<dyn ContentQueue> {
        self.queue.clone()
    }

    fn meta(&self) -> Arc<dyn MetaStore> {
        self.queue.clone()
    }
}

/// The store the service runs on, and who leads.
struct OpenedStore {
    queue: Arc<dyn QueueStore>,
    /// Sent in the `User-Agent`: the given id; with NATS, by default the host name.
    replica_id: Option<String>,
    leadership: Leadership,
    /// The leader lease to run (NATS only).
    lease: Option<LeaderLease>,
    /// Items a previous run held when it died (embedded store only), released at open.
    orphaned: u64,
}

/// Opens the configured store. Embedded: creates its directory (0700) and releases the leases of
/// a previous run (the store is locked by this process, so any lease found belongs to a
/// process that died); this instance always leads. NATS: connects, opens the stream and
/// buckets, and prepares the leader lease.
async fn open_store(
    config: &Config,
    clock: &Clock,
    replica_id: Option<String>,
) -> anyhow::Result<OpenedStore> {
    let path = &config.store.path;
    crate::queue::embedded::create_private_dir(path)
        .with_context(|| format!("store.path {}: cannot create the directory", path.display()))?;
    if config.store.backend == StoreBackendKind::Nats {
        let replica_id = replica_id.unwrap_or_else(|| replica_id_of(config));
        let settings = NatsSettings::from_config(config, replica_id.clone())?;
        let queue = NatsQueue::connect(&settings, clock.clone()).await?;
        let leadership = Leadership::contested(replica_id.clone());
        let lease = LeaderLease::open(
            queue.jetstream(),
            &settings.nats.prefix,
            settings.nats.stream_replicas,
            Duration::from_secs(settings.nats.leader_lease_secs.get()),
            replica_id.clone(),
            leadership.clone(),
            clock.clone(),
        )
        .await?;
        tracing::info!(replica = %replica_id, urls = %settings.nats.urls.join(","), "queue on NATS JetStream");
        return Ok(OpenedStore {
            queue: Arc::new(queue),
            replica_id: Some(replica_id),
            leadership,
            lease: Some(lease),
            orphaned: 0,
        });
    }
    let queue = EmbeddedQueue::open(path, clock.clone())
        .await
        .with_context(|| format!("store.path {}: cannot open the store", path.display()))?;
    let orphaned = queue.release_orphaned_leases().await?;
    Ok(OpenedStore {
        queue: Arc::new(queue),
        replica_id,
        leadership: Leadership::sole(),
        lease: None,
        orphaned,
    })
}

/// This replica's id: `store.nats.replica_id`, else the host name.
fn replica_id_of(config: &Config) -> String {
    if let Some(id) = config
        .store
        .nats
        .as_ref()
        .and_then(|nats| nats.replica_id.clone())
    {
        return id;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
}

fn status_source(
    config: &Config,
    metrics: &Arc<Metrics>,
    problems: &Arc<ProblemBoard>,
    queue: &Arc<dyn QueueStore>,
    clock: &Clock,
    forwarder: &Arc<Forwarder>,
) -> StatusSource {
    let tenants = config
        .tenants
        .iter()
        .map(|tenant| StatusTenant {
            name: tenant.name.clone(),
            tenant_id: tenant.tenant_id.to_string(),
            content_types: tenant.content_types.clone(),
            risk_detections: tenant.risk_detections,
        })
        .collect();
    StatusSource::new(
        tenants,
        metrics.clone(),
        problems.clone(),
        queue.clone(),
        queue.clone(),
        clock.clone(),
        engine_health(forwarder.clone()),
    )
}

/// The HTTP surface: the webhook, the probes, the status page and the metrics.
fn routes(config: &Config, shared: &Shared, secrets: WebhookSecrets) -> Routes {
    let current = shared.tenants.current();
    let webhook_tenants = current.values().map(|tenant| WebhookTenant {
        tenant_id: tenant.tenant_id.clone(),
        client_id: tenant.client_id.clone(),
        content_types: tenant.content_types.iter().copied().collect::<HashSet<_>>(),
        api_base: tenant.endpoints.api.clone(),
    });
    let webhook_state = WebhookState::new(
        webhook_tenants,
        secrets,
        shared.content_queue(),
        config.server.max_body_bytes.get(),
        shared.metrics.clone(),
        shared.work_available.clone(),
    )
    .with_status(shared.status.clone())
    .with_body_limits(BodyLimits {
        max_concurrent: config.server.max_concurrent_bodies.get(),
        ..BodyLimits::default()
    })
    .with_intake(shared.intake.clone());
    let readiness = ReadinessProbe::new(
        shared.queue.clone(),
        config.ops.queue_high_water.get(),
        shared.clock.clone(),
        engine_health(shared.forwarder.clone()),
        shared.problems.clone(),
    );
    let webhook_state = Arc::new(webhook_state);
    Routes {
        webhook: webhook::router(webhook_state.clone(), &config.server.local_path()),
        webhook_state,
        ops: Arc::new(OpsState {
            metrics: shared.metrics.clone(),
            readiness,
        }),
        status: shared.status.clone(),
        metrics: shared.metrics.clone(),
    }
}

fn worker_context(config: &Config, shared: &Shared, idle_poll: Duration) -> Arc<WorkerContext> {
    Arc::new(WorkerContext {
        queue: shared.content_queue(),
        tenants: shared.tenants.clone(),
        forwarder: shared.forwarder.clone(),
        metrics: shared.metrics.clone(),
        problems: shared.problems.clone(),
        clock: shared.clock.clone(),
        lease_duration: Duration::from_secs(config.workers.lease_secs.get()),
        work_available: shared.work_available.clone(),
        retry: shared.retry,
        missing_attempts: 5,
        idle_poll,
        reporter: FailureReporter::default(),
    })
}

fn poller_deps(shared: &Shared) -> PollerDeps {
    PollerDeps {
        intake: shared.intake.clone(),
        meta: shared.meta(),
        metrics: shared.metrics.clone(),
        problems: shared.problems.clone(),
        clock: shared.clock.clone(),
        retry: shared.retry,
    }
}

fn risk_deps(shared: &Shared) -> RiskDeps {
    RiskDeps {
        forwarder: shared.forwarder.clone(),
        meta: shared.meta(),
        metrics: shared.metrics.clone(),
        problems: shared.problems.clone(),
        status: Some(shared.status.clone()),
        reporter: Arc::new(ConsoleReporter::default()),
        clock: shared.clock.clone(),
        retry: shared.retry,
    }
}

/// What the subscription managers share; their state feeds the status page.
fn subscription_context(config: &Config, shared: &Shared) -> SubscriptionContext {
    let status = shared.status.clone();
    let board = SubscriptionBoard::with_listener(move |entry| {
        status.set_subscription(
            &entry.tenant_id,
            &entry.content_type,
            entry.subscription.as_str(),
            Some(entry.webhook.as_str()),
        );
    });
    SubscriptionContext {
        meta: shared.meta(),
        board: Arc::new(board),
        problems: shared.problems.clone(),
        metrics: shared.metrics.clone(),
        clock: shared.clock.clone(),
        settings: SubscriptionSettings::from_config(&config.subscriptions),
    }
}

fn admin_context(
    config: &Config,
    shared: &Shared,
    webhooks: Arc<ArcSwap<HashMap<String, WebhookRegistration>>>,
) -> AdminContext {
    AdminContext {
        queue: shared.content_queue(),
        tenants: shared.tenants.clone(),
        webhooks,
        clock: shared.clock.clone(),
        intake: shared.intake.clone(),
        max_window: chrono::Duration::seconds(
            i64::try_from(config.poller.max_window_secs.get()).unwrap_or(82_800),
        ),
    }
}

/// Starts the admin listener on `{store.path}/admin.sock`. A failure is logged, not fatal:
/// collection goes on, only the operator commands are unavailable.
fn start_admin_listener(config: &Config, context: AdminContext) -> Option<AdminServer> {
    match AdminServer::start(&admin::socket_path(config), context) {
        Ok(server) => Some(server),
        Err(error) => {
            tracing::error!(%error, "admin listener unavailable: the subscriptions, backfill and deadletters commands cannot reach this service");
            None
        }
    }
}

/// Reports a stall of the engine when it begins (once), and its end
/// ([`events::EngineStalled`], [`events::EngineStallEnded`]); returns whether a stall is
/// reported now.
fn report_stall(forwarder: &Forwarder, reported: bool) -> bool {
    match (forwarder.stall(), reported) {
        (Some(stall), false) => {
            events::EngineStalled { stall: &stall }.emit(forwarder);
            true
        }
        (None, true) => {
            events::EngineStallEnded.emit();
            false
        }
        (_, reported) => reported,
    }
}

/// The forwarder's connection, as readiness and status report it.
fn engine_health(forwarder: Arc<Forwarder>) -> Arc<dyn Fn() -> EngineHealth + Send + Sync> {
    Arc::new(move || {
        let stats = forwarder.stats();
        EngineHealth {
            connected: stats.engine_connected,
            in_flight: stats.in_flight,
            stalled: forwarder.stall().map(|stall| EngineStall::new(&stall)),
        }
    })
}

type Served = (
    SocketAddr,
    axum_server::Handle<SocketAddr>,
    JoinHandle<std::io::Result<()>>,
);

/// The routers the listeners serve.
struct Routes {
    webhook: axum::Router,
    webhook_state: Arc<WebhookState>,
    ops: Arc<OpsState>,
    status: Arc<StatusSource>,
    metrics: Arc<Metrics>,
}

/// The started listeners, and the certificate reloader to run when TLS is served.
struct Listeners {
    main: Served,
    ops: Option<Served>,
    reloader: Option<CertificateReloader>,
}

/// Binds and serves the webhook listener (HTTPS with a reloadable certificate, or plain
/// HTTP) and, with `ops.listen`, the private plain-HTTP ops listener, the one place that
/// serves `/status`, `/status.html`, `/metrics` and the `/readyz` detail (unless
/// `ops.public` puts them on the webhook listener too).
fn serve(
    config: &Config,
    listener: Option<std::net::TcpListener>,
    routes: Routes,
) -> anyhow::Result<Listeners> {
    let routes_metrics = routes.metrics.clone();
    let (app, ops_app) = listener_apps(config, routes);
    let listen = config.server.listen;
    let listener = match listener {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(listen)
            .with_context(|| format!("server.listen {listen}: cannot bind"))?,
    };
    let reloader = load_tls(config)?;
    // Bind everything before serving anything, so a failed start leaves nothing running.
    let ops_listener = match config.ops.listen {
        Some(ops_listen) => Some(
            std::net::TcpListener::bind(ops_listen)
                .with_context(|| format!("ops.listen {ops_listen}: cannot bind"))?,
        ),
        None => None,
    };
    let header_timeout = Duration::from_secs(config.server.header_read_timeout_secs.get());
    let limits = ConnectionLimits {
        max_connections: connections::fit_to_descriptor_limit(config.server.max_connections.get()),
        idle_timeout: Duration::from_secs(config.server.idle_timeout_secs.get()),
        handshake_timeout: header_timeout,
    };
    let tracker = ConnectionTracker::new("webhook", limits, routes_metrics.clone());
    let main = serve_on(listener, app, reloader.as_ref(), header_timeout, tracker)?;
    let ops = match (ops_listener, ops_app) {
        (Some(ops_listener), Some(ops_app)) => {
            let tracker = ConnectionTracker::new("ops", limits, routes_metrics);
            Some(serve_on(
                ops_listener,
                ops_app,
                None,
                header_timeout,
                tracker,
            )?)
        }
        _ => None,
    };
    Ok(Listeners {
        main,
        ops,
        reloader,
    })
}

/// The webhook listener's router and, with `ops.listen`, the ops listener's. The webhook
/// routes pass the source allowlist first (see [`crate::server::proxy`]). Operations are
/// private by default: the webhook listener serves `/healthz` and a detail-less `/readyz`,
/// and the rest only with `ops.public`.
fn listener_apps(config: &Config, routes: Routes) -> (axum::Router, Option<axum::Router>) {
    if !config.server.serves_tls()
        && !config.server.webhook_allowed_networks.is_empty()
        && config.server.trusted_proxies.is_empty()
    {
        tracing::warn!(
            "server.webhook_allowed_networks is set on a plain-HTTP listener without \
             server.trusted_proxies: behind a proxy every request comes from the proxy's \
             address and is refused; list the proxy in trusted_proxies"
        );
    }
    let gate = WebhookGate {
        policy: Arc::new(ProxyPolicy::new(
            config.server.trusted_proxies.clone(),
            config.server.webhook_allowed_networks.clone(),
        )),
        metrics: routes.metrics.clone(),
    };
    let request_timeout = Duration::from_secs(config.server.request_timeout_secs.get());
    let webhook = routes
        .webhook
        .layer(axum::middleware::from_fn_with_state(
            gate,
            enforce_webhook_allowlist,
        ))
        // A client that trickles its body cannot hold a request (and its worker) forever.
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ));
    let private = ops::metrics_routes(routes.ops.clone())
        .merge(ops::status::routes(routes.status))
        .merge(ops::probe_routes(routes.ops.clone()));
    let public = if config.ops.public {
        tracing::warn!(
            "ops.public = true: /status, /status.html, /metrics and the /readyz detail are \
             served on server.listen too, to anyone who can reach it"
        );
        webhook.merge(private.clone())
    } else {
        webhook.merge(ops::public_probe_routes(routes.ops))
    };
    if config.ops.listen.is_none() && !config.ops.public {
        tracing::info!(
            "ops.listen is not set: /status, /status.html and /metrics are not served \
             (set ops.listen to a private address to see them)"
        );
    }
    (public, config.ops.listen.map(|_| private))
}

/// The certificate (and client CA) of the webhook listener, when it serves TLS.
fn load_tls(config: &Config) -> anyhow::Result<Option<CertificateReloader>> {
    let (Some(cert), Some(key)) = (&config.server.tls_cert, &config.server.tls_key) else {
        anyhow::ensure!(
            config.server.client_ca.is_none(),
            "server.client_ca: client certificates need TLS here; set tls_cert and tls_key too"
        );
        return Ok(None);
    };
    let reloader = CertificateReloader::load(TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: config.server.client_ca.clone(),
    })?;
    Ok(Some(reloader))
}

/// Serves `app` on `listener` (with TLS when given); handlers can read the peer address
/// (`ConnectInfo<SocketAddr>`). Every connection state has a deadline: the TLS handshake
/// and HTTP/1 headers `header_timeout`, a connection with no request in flight the
/// tracker's idle timeout (protocol detection, HTTP/1 keep-alive, an idle HTTP/2
/// session); HTTP/2 peers are pinged and limited in concurrent streams; the tracker caps
/// the connections (see [`crate::server::connections`]).
fn serve_on(
    listener: std::net::TcpListener,
    app: axum::Router,
    tls: Option<&CertificateReloader>,
    header_timeout: Duration,
    tracker: ConnectionTracker,
) -> anyhow::Result<Served> {
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let service = app.into_make_service_with_connect_info::<SocketAddr>();
    let on_accept_error = tracker.accept_error_handler();
    let handshake_timeout = tracker.limits().handshake_timeout;
    let mut server = axum_server::from_tcp(listener)?
        .handle(handle.clone())
        .accept_error_handler(on_accept_error);
    server
        .http_builder()
        .http1()
        .keep_alive(true)
        .header_read_timeout(Some(header_timeout))
        .http2()
        .max_concurrent_streams(connections::HTTP2_MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(Some(connections::HTTP2_KEEP_ALIVE_INTERVAL))
        .keep_alive_timeout(connections::HTTP2_KEEP_ALIVE_INTERVAL);
    let server = match tls {
        Some(reloader) => {
            let acceptor = RustlsAcceptor::new(reloader.rustls_config())
                .handshake_timeout(handshake_timeout)
                .acceptor(tracker);
            tokio::spawn(server.acceptor(acceptor).serve(service))
        }
        None => tokio::spawn(server.acceptor(tracker).serve(service)),
    };
    Ok((address, handle, server))
}

/// Every few seconds: queue and engine gauges; hourly: purge expired tombstones.
async fn upkeep(
    queue: Arc<dyn QueueStore>,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_purge = tokio::time::Instant::now();
    let mut reconnects_counted = 0;
    let mut store_failures_counted = 0;
    let mut stall_reported = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(stats) = queue.stats().await {
            for (state, count) in [
                ("pending", stats.pending),
                ("leased", stats.leased),
                ("done", stats.done),
                ("dead", stats.dead),
            ] {
                metrics
                    .queue_items
                    .get_or_create(&StateLabels { state })
                    .set(count as i64);
            }
            let age = stats.oldest_open_enqueued.map_or(0.0, |oldest| {
                (clock.now() - oldest).num_milliseconds() as f64 / 1e3
            });
            metrics.queue_oldest_age_seconds.set(age.max(0.0));
            metrics.dead_records_lost.set(stats.lost_records() as i64);
        }
        stall_reported = report_stall(&forwarder, stall_reported);
        let engine = forwarder.stats();
        metrics
            .engine_connected
            .set(i64::from(engine.engine_connected));
        metrics.engine_in_flight.set(engine.in_flight as i64);
        metrics
            .engine_reconnects
            .inc_by(engine.reconnects.saturating_sub(reconnects_counted));
        reconnects_counted = reconnects_counted.max(engine.reconnects);
        let store_failures = queue.store_failures();
        metrics
            .store_errors
            .inc_by(store_failures.saturating_sub(store_failures_counted));
        store_failures_counted = store_failures_counted.max(store_failures);
        if last_purge.elapsed() >= Duration::from_secs(3600) {
            last_purge = tokio::time::Instant::now();
            match queue.purge_expired_tombstones().await {
                Ok(purged) => events::TombstonesPurged { purged }.emit(),
                Err(error) => events::TombstonePurgeFailed { error: &error }.emit(),
            }
        }
    }
}

/// What a stop left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Records forwarded but not acknowledged when the forwarder stopped (their items
    /// were released and will be delivered again).
    pub unacked: u64,
    /// Everything stopped within the deadline.
    pub within_deadline: bool,
}

impl RunningService {
    /// Applies a new tenant list while the service runs (see [`tenants`]).
    pub fn tenant_supervisor(&self) -> Arc<TenantSupervisor> {
        self.supervisor.clone()
    }

    /// Stops gracefully (see the module doc), within `ops.shutdown_secs`.
    pub async fn stop(self) -> StopReport {
        let started = tokio::time::Instant::now();
        self.http.graceful_shutdown(Some(Duration::from_secs(2)));
        if let Some((_, ops_http, _)) = &self.ops_server {
            ops_http.graceful_shutdown(Some(Duration::from_secs(2)));
        }
        // Admin listener: stopped before the store closes (its operations use the queue).
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        self.shutdown.cancel();
        let report = self.forwarder.shutdown(self.deadline).await;
        self.tracker.close();
        let remaining = self.deadline.saturating_sub(started.elapsed()) + Duration::from_secs(2);
        let within_deadline = tokio::time::timeout(remaining, self.tracker.wait())
            .await
            .is_ok();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.server).await;
        if let Some((_, _, ops_server)) = self.ops_server {
            let _ = tokio::time::timeout(Duration::from_secs(3), ops_server).await;
        }
        // Every task has stopped and its completions are stored: the next start need not
        // expect repeated work.
        if within_deadline
            && let Err(error) = self
                .queue
                .put_meta(&self.run_marker, STOPPED.as_bytes().to_vec())
                .await
        {
            events::RunMarkerUnwritten { error: &error }.emit();
        }
        if let Err(error) = self.queue.close().await {
            events::StoreCloseFailed { error: &error }.emit();
        }
        tracing::info!(
            unacked = report.unacked,
            within_deadline,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "stopped"
        );
        StopReport {
            unacked: report.unacked,
            within_deadline,
        }
    }
}

//! The running service (`o365-connector run`): wires the configuration into the
//! components and runs them until shutdown.
//!
//! Start order: store → webhook secret → metrics → HTTP client → tenants → engine
//! forwarder → HTTP listener (webhook and ops routes; it must answer before any
//! subscription start, because Microsoft validates the webhook synchronously) → workers →
//! subscriptions → periodic upkeep.
//!
//! Stop order, bounded by `ops.shutdown_secs`: stop HTTP intake → workers stop reading
//! blobs → the forwarder drains (waits for in-flight acks until the deadline) → workers
//! record their progress and release their leases → the store closes. Whatever was not
//! acknowledged is redelivered after a restart; nothing is dropped.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::http::http_client;
use crate::api::types::WebhookRegistration;
use crate::clock::Clock;
use crate::config::Config;
use crate::forward::{Forwarder, ForwarderConfig};
use crate::ops::health::{EngineHealth, ProblemBoard, ReadinessProbe};
use crate::ops::metrics::StateLabels;
use crate::ops::{self, Metrics, OpsState};
use crate::queue::{ContentQueue, EmbeddedQueue, MetaStore};
use crate::retry::RetryPolicy;
use crate::subscriptions::keep_subscribed;
use crate::tenant::{Tenants, build_tenants};
use crate::webhook::auth_id::load_or_create_secrets;
use crate::webhook::{self, WebhookState, WebhookTenant};
use crate::worker::pool::{FailureReporter, WorkerContext, spawn_workers};

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
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            listener: None,
            clock: Clock::system(),
            replica_id: None,
            retry: RetryPolicy::standard(),
            idle_poll: Duration::from_secs(1),
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
    pub queue: Arc<EmbeddedQueue>,
    /// The engine forwarder.
    pub forwarder: Arc<Forwarder>,
    /// The tenants.
    pub tenants: Arc<Tenants>,
    /// Current problems.
    pub problems: Arc<ProblemBoard>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    http: axum_server::Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
    deadline: Duration,
}

/// Starts the service. Returns once the listener answers and the workers run.
pub async fn start(config: Config, mut options: ServiceOptions) -> anyhow::Result<RunningService> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let clock = options.clock.clone();
    std::fs::create_dir_all(&config.store.path).with_context(|| {
        format!(
            "store.path {}: cannot create the directory",
            config.store.path.display()
        )
    })?;
    let queue = Arc::new(
        EmbeddedQueue::open(&config.store.path, clock.clone())
            .await
            .with_context(|| {
                format!(
                    "store.path {}: cannot open the store",
                    config.store.path.display()
                )
            })?,
    );
    // The store is locked by this process: leases found now belong to a process that died.
    let orphaned = queue.release_orphaned_leases().await?;
    if orphaned > 0 {
        tracing::warn!(
            orphaned,
            "released the leases of a previous run that did not stop cleanly"
        );
    }
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
    let http = http_client(&config.api, options.replica_id.as_deref())?;
    let tenants = Arc::new(build_tenants(&config, &http, &clock, &metrics).await?);
    let forwarder = Arc::new(Forwarder::start(ForwarderConfig {
        clock: clock.clone(),
        ..ForwarderConfig::new(&config.engine.socket)
    }));
    let problems = Arc::new(ProblemBoard::default());
    let work_available = Arc::new(Notify::new());
    let registrations: Vec<(String, Option<WebhookRegistration>)> = tenants
        .values()
        .map(|tenant| {
            let registration = config
                .server
                .webhook_url(tenant_guid(&tenant.tenant_id))
                .map(|url| WebhookRegistration {
                    address: url.to_string(),
                    auth_id: secrets.auth_id(&tenant.tenant_id),
                    expiration: String::new(),
                });
            (tenant.tenant_id.clone(), registration)
        })
        .collect();
    let webhook_state = Arc::new(WebhookState::new(
        tenants.values().map(|tenant| WebhookTenant {
            tenant_id: tenant.tenant_id.clone(),
            client_id: tenant.client_id.clone(),
            content_types: tenant.content_types.iter().copied().collect::<HashSet<_>>(),
            api_base: tenant.endpoints.api.clone(),
        }),
        secrets,
        queue.clone() as Arc<dyn ContentQueue>,
        config.server.max_body_bytes.get(),
        metrics.clone(),
        work_available.clone(),
    ));
    let engine_forwarder = forwarder.clone();
    let ops_state = Arc::new(OpsState {
        metrics: metrics.clone(),
        readiness: ReadinessProbe::new(
            queue.clone() as Arc<dyn ContentQueue>,
            queue.clone() as Arc<dyn MetaStore>,
            config.ops.queue_high_water.get(),
            clock.clone(),
            Arc::new(move || {
                let stats = engine_forwarder.stats();
                EngineHealth {
                    connected: stats.engine_connected,
                    in_flight: stats.in_flight,
                }
            }),
            problems.clone(),
        ),
    });
    let app =
        webhook::router(webhook_state, &config.server.local_path()).merge(ops::routes(ops_state));
    let (address, http_handle, server) = serve(&config, options.listener.take(), app)?;
    let scheme = if config.server.serves_tls() {
        "https"
    } else {
        "http"
    };
    let base_url = format!("{scheme}://{address}");
    tracing::info!(%base_url, tenants = tenants.len(), "listening");

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let worker_context = Arc::new(WorkerContext {
        queue: queue.clone() as Arc<dyn ContentQueue>,
        tenants: tenants.clone(),
        forwarder: forwarder.clone(),
        metrics: metrics.clone(),
        problems: problems.clone(),
        clock: clock.clone(),
        lease_duration: Duration::from_secs(config.workers.lease_secs.get()),
        work_available,
        retry: options.retry,
        missing_attempts: 5,
        idle_poll: options.idle_poll,
        reporter: FailureReporter::default(),
    });
    spawn_workers(
        worker_context,
        config.workers.count.get(),
        &tracker,
        shutdown.clone(),
    );
    for (tenant_id, registration) in registrations {
        tracker.spawn(keep_subscribed(
            tenants[&tenant_id].clone(),
            registration,
            problems.clone(),
            clock.clone(),
            options.retry,
            shutdown.clone(),
        ));
    }
    tracker.spawn(upkeep(
        queue.clone(),
        forwarder.clone(),
        metrics.clone(),
        clock.clone(),
        shutdown.clone(),
    ));
    Ok(RunningService {
        address,
        base_url,
        metrics,
        queue,
        forwarder,
        tenants,
        problems,
        shutdown,
        tracker,
        http: http_handle,
        server,
        deadline: Duration::from_secs(config.ops.shutdown_secs.get()),
    })
}

/// The GUID type of the configuration, from a tenant id already validated as a GUID.
fn tenant_guid(tenant_id: &str) -> crate::config::Guid {
    tenant_id
        .parse()
        .expect("tenant ids were validated as GUIDs")
}

type Served = (
    SocketAddr,
    axum_server::Handle<SocketAddr>,
    JoinHandle<std::io::Result<()>>,
);

fn serve(
    config: &Config,
    listener: Option<std::net::TcpListener>,
    app: axum::Router,
) -> anyhow::Result<Served> {
    let listen = config.server.listen;
    let listener = match listener {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(listen)
            .with_context(|| format!("server.listen {listen}: cannot bind"))?,
    };
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let service = app.into_make_service();
    let server = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = crate::server::server_config(cert, key)?;
            let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
            let server = axum_server::from_tcp_rustls(listener, rustls)?.handle(handle.clone());
            tokio::spawn(server.serve(service))
        }
        _ => {
            let server = axum_server::from_tcp(listener)?.handle(handle.clone());
            tokio::spawn(server.serve(service))
        }
    };
    Ok((address, handle, server))
}

/// Every few seconds: queue and engine gauges; hourly: purge expired tombstones.
async fn upkeep(
    queue: Arc<EmbeddedQueue>,
    forwarder: Arc<Forwarder>,
    metrics: Arc<Metrics>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut last_purge = tokio::time::Instant::now();
    let mut reconnects_counted = 0;
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
        }
        let engine = forwarder.stats();
        metrics
            .engine_connected
            .set(i64::from(engine.engine_connected));
        metrics.engine_in_flight.set(engine.in_flight as i64);
        metrics
            .engine_reconnects
            .inc_by(engine.reconnects.saturating_sub(reconnects_counted));
        reconnects_counted = reconnects_counted.max(engine.reconnects);
        if last_purge.elapsed() >= Duration::from_secs(3600) {
            last_purge = tokio::time::Instant::now();
            match queue.purge_expired_tombstones().await {
                Ok(purged) => tracing::debug!(purged, "expired tombstones purged"),
                Err(error) => tracing::warn!(%error, "cannot purge expired tombstones"),
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
    /// Stops gracefully (see the module doc), within `ops.shutdown_secs`.
    pub async fn stop(self) -> StopReport {
        let started = tokio::time::Instant::now();
        self.http.graceful_shutdown(Some(Duration::from_secs(2)));
        self.shutdown.cancel();
        let report = self.forwarder.shutdown(self.deadline).await;
        self.tracker.close();
        let remaining = self.deadline.saturating_sub(started.elapsed()) + Duration::from_secs(2);
        let within_deadline = tokio::time::timeout(remaining, self.tracker.wait())
            .await
            .is_ok();
        let _ = tokio::time::timeout(Duration::from_secs(3), self.server).await;
        if let Err(error) = self.queue.close().await {
            tracing::warn!(%error, "closing the store");
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

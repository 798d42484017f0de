//! The tenants of a running service and the tasks that run for each: its poller and its
//! subscription manager, under a cancellation token of its own.
//!
//! [`TenantSupervisor::apply`] moves the service to a new list of tenants without a
//! restart (the UTMStack drop-in calls it when `system_plugins_o365.yaml` changes):
//!
//! - a tenant compared equal ([`same_tenant_settings`]) keeps running untouched;
//! - a removed tenant's tasks are cancelled and awaited, so it sends no request to the API
//!   once `apply` returns; the webhook refuses its notifications (404); its queued items
//!   stay in the queue (a worker that meets one puts it back for an hour: "tenant no longer
//!   configured"), so they are collected if it returns, and its poller resumes from its
//!   cursor; its API subscriptions are left as they are; its
//!   problems leave the problem board (no more console notices for it);
//! - a new tenant is built, the webhook accepts it, its tasks start;
//! - a changed tenant (e.g. a new secret) is built anew (new token cache and API client),
//!   then its old tasks stop, its problems are cleared (the new tasks report again what
//!   still holds) and new ones start; items a worker already holds finish with the old
//!   client.
//!
//! Building comes first: if any new or changed tenant cannot be built, nothing changes and
//! the error says why. Applies are serialized. Metrics keep the per-tenant series chosen at
//! start (`ops.max_tenant_series`): a tenant added later counts under the aggregate label.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::gate::RequestGate;
use crate::api::types::WebhookRegistration;
use crate::clock::Clock;
use crate::cluster::Leadership;
use crate::config::{Config, TenantConfig};
use crate::ops::Metrics;
use crate::ops::status::{StatusSource, StatusTenant};
use crate::poller::{PollTarget, PollerDeps, TenantPoller};
use crate::retry::RetryPolicy;
use crate::risk::{RiskCollector, RiskDeps, RiskTarget};
use crate::subscriptions::{SubscriptionContext, SubscriptionManager};
use crate::tenant::{Tenant, TenantSet, TenantSetupError, build_tenants, same_tenant_settings};
use crate::webhook::{WebhookState, WebhookTenant};

/// How long `apply` waits for a stopped tenant's tasks to finish their request in flight.
const TASK_STOP_DEADLINE: Duration = Duration::from_secs(30);

/// What building and running a tenant needs; shared by the service's components.
pub(super) struct TenantRuntime {
    /// The service's configuration: API, poller, subscription and server settings; its
    /// `tenants` are those at start.
    pub config: Config,
    /// The outbound HTTP client every tenant's API client shares.
    pub http: reqwest::Client,
    /// The time source.
    pub clock: Clock,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// Backoff of the subscription managers.
    pub retry: RetryPolicy,
    /// Bounds the polls, subscription checks and risk collections of all tenants that run
    /// at once.
    pub gate: Arc<RequestGate>,
    /// What every poller shares.
    pub poller: PollerDeps,
    /// What every risk detection collector shares.
    pub risk: RiskDeps,
    /// What every subscription manager shares.
    pub subscriptions: SubscriptionContext,
    /// The current tenants, as workers and the admin listener see them.
    pub tenants: Arc<TenantSet>,
    /// The webhook's tenants (and the authIds).
    pub webhook: Arc<WebhookState>,
    /// Each current tenant's webhook registration, for the admin listener.
    pub admin_webhooks: Arc<ArcSwap<HashMap<String, WebhookRegistration>>>,
    /// The status page's tenants.
    pub status: Arc<StatusSource>,
    /// Pollers and subscription managers run only while this replica leads.
    pub leadership: Leadership,
    /// The service's tracker: stop waits for every tenant's tasks.
    pub tracker: TaskTracker,
    /// The service's root token; each tenant's token is a child of it.
    pub shutdown: CancellationToken,
}

/// What an [`TenantSupervisor::apply`] changed, by tenant name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantChanges {
    /// Tenants started.
    pub added: Vec<String>,
    /// Tenants stopped.
    pub removed: Vec<String>,
    /// Tenants restarted with new settings.
    pub changed: Vec<String>,
}

impl TenantChanges {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The tasks of one running tenant.
struct TenantTasks {
    config: TenantConfig,
    name: String,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl TenantTasks {
    async fn stop(self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(TASK_STOP_DEADLINE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(tenant = %self.name, "the tenant's tasks did not stop in time; they stop after their request in flight");
        }
    }
}

/// Starts, stops and restarts the tenants of a running service (see the module doc).
pub struct TenantSupervisor {
    runtime: TenantRuntime,
    /// Running tenants by lowercase tenant GUID; the lock serializes applies.
    running: tokio::sync::Mutex<HashMap<String, TenantTasks>>,
}

impl TenantSupervisor {
    /// Starts the tasks of the tenants already in `runtime.tenants` (configured by
    /// `runtime.config.tenants`); returns their collectors.
    pub(super) fn start(runtime: TenantRuntime) -> (Self, Collectors) {
        let tenants = runtime.tenants.current();
        runtime.publish(&runtime.config.tenants, &tenants);
        let mut running = HashMap::new();
        let mut collectors = Collectors::default();
        for tenant_config in &runtime.config.tenants {
            let tenant = &tenants[&tenant_id(tenant_config)];
            let (tasks, poller, risk) = runtime.spawn_tenant(tenant_config, tenant.clone());
            collectors.pollers.push(poller);
            collectors.risk.extend(risk);
            running.insert(tenant.tenant_id.clone(), tasks);
        }
        let supervisor = Self {
            runtime,
            running: tokio::sync::Mutex::new(running),
        };
        (supervisor, collectors)
    }

    /// Moves the service to `config`'s tenants (the rest of `config` is not applied).
    /// On error nothing changed.
    pub async fn apply(&self, config: &Config) -> Result<TenantChanges, TenantSetupError> {
        let mut running = self.running.lock().await;
        let mut changes = TenantChanges::default();
        let mut to_build = Vec::new();
        for tenant_config in &config.tenants {
            match running.get(&tenant_id(tenant_config)) {
                Some(tasks) if same_tenant_settings(&tasks.config, tenant_config) => {}
                Some(_) => {
                    changes.changed.push(tenant_config.name.clone());
                    to_build.push(tenant_config.clone());
                }
                None => {
                    changes.added.push(tenant_config.name.clone());
                    to_build.push(tenant_config.clone());
                }
            }
        }
        let wanted: HashSet<String> = config.tenants.iter().map(tenant_id).collect();
        let removed: Vec<String> = running
            .keys()
            .filter(|id| !wanted.contains(*id))
            .cloned()
            .collect();
        if removed.is_empty() && to_build.is_empty() {
            return Ok(changes);
        }
        let mut build_config = self.runtime.config.clone();
        build_config.tenants = to_build;
        let runtime = &self.runtime;
        let built = build_tenants(
            &build_config,
            &runtime.http,
            &runtime.clock,
            &runtime.metrics,
        )
        .await?;
        let mut tenants = (*runtime.tenants.current()).clone();
        for id in removed.iter().chain(built.keys()) {
            if let Some(tasks) = running.remove(id) {
                if !wanted.contains(id) {
                    changes.removed.push(tasks.name.clone());
                }
                let name = tasks.name.clone();
                tasks.stop().await;
                runtime.poller.problems.clear_tenant(&name);
            }
            tenants.remove(id);
        }
        tenants.extend(built.clone());
        runtime.tenants.replace(tenants.clone());
        runtime.publish(&config.tenants, &tenants);
        for tenant_config in &build_config.tenants {
            let id = tenant_id(tenant_config);
            let (tasks, _, _) = runtime.spawn_tenant(tenant_config, built[&id].clone());
            running.insert(id, tasks);
        }
        Ok(changes)
    }
}

impl TenantRuntime {
    /// Shows `tenants` to the webhook, the status page and the admin listener.
    fn publish(&self, configs: &[TenantConfig], tenants: &HashMap<String, Arc<Tenant>>) {
        self.webhook
            .replace_tenants(tenants.values().map(|tenant| WebhookTenant {
                tenant_id: tenant.tenant_id.clone(),
                client_id: tenant.client_id.clone(),
                content_types: tenant.content_types.iter().copied().collect(),
                api_base: tenant.endpoints.api.clone(),
            }));
        self.status.replace_tenants(
            configs
                .iter()
                .map(|tenant| StatusTenant {
                    name: tenant.name.clone(),
                    tenant_id: tenant_id(tenant),
                    content_types: tenant.content_types.clone(),
                    risk_detections: tenant.risk_detections,
                })
                .collect(),
        );
        let webhooks = tenants
            .keys()
            .filter_map(|id| Some((id.clone(), self.registration(id)?)))
            .collect();
        self.admin_webhooks.store(Arc::new(webhooks));
    }

    /// The tenant's webhook (`{public URL}/{tenant id}` with its authId), or `None` when
    /// the connector collects by polling alone.
    fn registration(&self, tenant_id: &str) -> Option<WebhookRegistration> {
        let guid = tenant_id.parse().ok()?;
        let url = self.config.server.webhook_url(guid)?;
        Some(WebhookRegistration {
            address: url.to_string(),
            auth_id: self.webhook.auth_id(tenant_id),
            expiration: String::new(),
        })
    }

    /// Starts the tenant's poller, subscription manager and (when enabled) risk detection
    /// collector under a token of its own; its polls and checks pass the shared `gate`.
    fn spawn_tenant(
        &self,
        tenant_config: &TenantConfig,
        tenant: Arc<Tenant>,
    ) -> (TenantTasks, Arc<TenantPoller>, Option<Arc<RiskCollector>>) {
        let registration = self.registration(&tenant.tenant_id);
        let stop = self.shutdown.child_token();
        let tracker = TaskTracker::new();
        let manager = Arc::new(
            SubscriptionManager::new(
                tenant.clone(),
                registration.clone(),
                self.subscriptions.clone(),
            )
            .with_gate(self.gate.clone()),
        );
        let poller = Arc::new(
            TenantPoller::new(
                PollTarget {
                    name: tenant.name.clone(),
                    client: tenant.client.clone(),
                    content_types: tenant.content_types.clone(),
                    webhook: registration,
                    subscriptions_changed: Some(manager.check_soon_handle()),
                },
                self.config.poller.clone(),
                self.poller.clone(),
            )
            .with_gate(self.gate.clone()),
        );
        let risk = tenant.graph.as_ref().map(|graph| {
            Arc::new(
                RiskCollector::new(
                    RiskTarget {
                        name: tenant.name.clone(),
                        tenant_id: tenant.tenant_id.clone(),
                        graph: graph.clone(),
                        log_context: tenant.log_context.clone(),
                    },
                    &self.config.poller,
                    self.risk.clone(),
                )
                .with_gate(self.gate.clone()),
            )
        });
        // Polling, subscription management and risk detections run on the leading
        // replica only.
        let (leadership, polling, retry) = (self.leadership.clone(), poller.clone(), self.retry);
        let collecting = risk.clone();
        self.tracker.spawn(tracker.track_future({
            let stop = stop.clone();
            async move {
                leadership
                    .run_while_leading(stop, |token| {
                        let polling = polling.clone();
                        let manager = manager.clone();
                        let collecting = collecting.clone();
                        async move {
                            let risk = async {
                                if let Some(collector) = collecting {
                                    collector.run(token.clone()).await;
                                }
                            };
                            tokio::join!(
                                polling.run(token.clone()),
                                manager.run(retry, token.clone()),
                                risk
                            );
                        }
                    })
                    .await;
            }
        }));
        let tasks = TenantTasks {
            config: tenant_config.clone(),
            name: tenant.name.clone(),
            stop,
            tracker,
        };
        (tasks, poller, risk)
    }
}

/// The collectors of the tenants configured at start (tests drive extra cycles with them).
#[derive(Default)]
pub struct Collectors {
    /// Each tenant's poller.
    pub pollers: Vec<Arc<TenantPoller>>,
    /// Each tenant's risk detection collector, for the tenants that have one.
    pub risk: Vec<Arc<RiskCollector>>,
}

fn tenant_id(tenant: &TenantConfig) -> String {
    tenant.tenant_id.to_string().to_ascii_lowercase()
}

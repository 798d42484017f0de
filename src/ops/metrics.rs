//! The connector's Prometheus metrics: one registry, every name prefixed
//! `o365_connector_`, label sets bounded.
//!
//! Labels are content type, outcome, operation, AF code, source and queue state (all from
//! small fixed sets) and the tenant's configured name only for the first
//! `max_tenant_series` tenants; every tenant beyond shares the label `other`. Ids
//! (contentId, record id, tenant GUID) never become labels; per-tenant detail beyond the
//! limit lives in `/status`.
//!
//! The README lists every metric with its meaning; a test scrapes `/metrics` and checks
//! that each listed name is exposed.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of the tenants beyond the per-tenant series limit.
pub const OTHER_TENANTS: &str = "other";

/// `{listener}`: `webhook` or `ops`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// Which HTTP listener.
    pub listener: &'static str,
}

/// `{listener, reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReasonLabels {
    /// Which HTTP listener.
    pub listener: &'static str,
    /// Why (see [`crate::server::connections::CloseReason`]).
    pub reason: &'static str,
}

/// `{outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: &'static str,
}

/// `{source}`: webhook, poll or backfill.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// How the content reference arrived.
    pub source: &'static str,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// `{tenant, content_type}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContentLabels {
    /// The tenant's configured name, or `other` beyond the limit.
    pub tenant: String,
    /// The content type.
    pub content_type: String,
}

/// `{tenant, content_type, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContentOutcomeLabels {
    /// The tenant's configured name, or `other` beyond the limit.
    pub tenant: String,
    /// The content type.
    pub content_type: String,
    /// What happened.
    pub outcome: &'static str,
}

/// `{operation, outcome, af_code}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// `subscriptions/start`, `content`, `blob`, `token`, …
    pub operation: &'static str,
    /// `ok`, `throttled`, `transient`, `refused`, …
    pub outcome: &'static str,
    /// The AF code, or empty.
    pub af_code: String,
}

/// `{tenant}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    /// The tenant's configured name, or `other` beyond the limit.
    pub tenant: String,
}

/// `{tenant, outcome}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOutcomeLabels {
    /// The tenant's configured name, or `other` beyond the limit.
    pub tenant: String,
    /// What happened.
    pub outcome: &'static str,
}

/// `{state}` of queue items.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// pending, leased, done or dead.
    pub state: &'static str,
}

/// Every metric of the connector.
pub struct Metrics {
    registry: Registry,
    tenant_labels: HashMap<String, String>,
    /// Webhook POSTs by outcome (validation, accepted, unauthenticated, too_large, …).
    pub notifications: Family<OutcomeLabels, Counter>,
    /// Notification items by outcome (enqueued, duplicate, invalid).
    pub notification_items: Family<OutcomeLabels, Counter>,
    /// Content references newly enqueued, by source.
    pub enqueued: Family<SourceLabels, Counter>,
    /// Content references already known (deduplicated), by source.
    pub deduplicated: Family<SourceLabels, Counter>,
    /// Listed items not enqueued, each counted once, by reason (`content_uri_off_host`,
    /// `content_type_mismatch`).
    pub listed_skipped: Family<ReasonLabels, Counter>,
    /// Enqueues refused because the queue reached `ops.queue_hard_limit`, by source
    /// (`webhook`: answered 503; `poll`: retried later; `backfill`: reported).
    pub queue_hard_limit_refusals: Family<SourceLabels, Counter>,
    /// Webhook bodies being read now (at most `server.max_concurrent_bodies`).
    pub webhook_bodies_in_flight: Gauge,
    /// Blob fetches by tenant, content type and outcome.
    pub blobs_fetched: Family<ContentOutcomeLabels, Counter>,
    /// Records sent to the engine (resends included).
    pub records_forwarded: Family<ContentLabels, Counter>,
    /// Records acknowledged by the engine.
    pub records_acked: Family<ContentLabels, Counter>,
    /// Records that are not valid JSON objects, dead-lettered by reference.
    pub records_invalid: Family<ContentLabels, Counter>,
    /// Records whose Log would exceed the engine's message limit, dead-lettered by
    /// reference and never sent.
    pub records_oversized: Family<ContentLabels, Counter>,
    /// Records the engine refused as poison (every time they were sent alone),
    /// dead-lettered by reference.
    pub records_refused: Family<ContentLabels, Counter>,
    /// Blobs Microsoft reported expired (AF20051) before they were fetched: a counted loss.
    pub content_expired: Family<ContentLabels, Counter>,
    /// Blobs Microsoft kept reporting missing (AF20050) after retries.
    pub content_missing: Family<ContentLabels, Counter>,
    /// Blobs whose structure could not be recovered, dead-lettered from that point.
    pub content_unrecoverable: Family<ContentLabels, Counter>,
    /// Blobs the API kept refusing without an AF code (400, 403, 404) until after their
    /// `contentExpiration` by Microsoft's clock: dead-lettered by reference, a counted loss.
    pub content_refused: Family<ContentLabels, Counter>,
    /// Management API requests by operation, outcome and AF code.
    pub api_requests: Family<ApiRequestLabels, Counter>,
    /// Throttling answers received, by tenant.
    pub throttled: Family<TenantLabels, Counter>,
    /// Token requests by tenant and outcome.
    pub token_requests: Family<TenantOutcomeLabels, Counter>,
    /// Content items a previous run held when it died, released at start: their records
    /// acknowledged since their last stored progress are sent again (bounded duplicates).
    pub items_recovered: Counter,
    /// 1 when this run started after one that did not stop cleanly (its in-flight work
    /// repeats), else 0.
    pub unclean_restarts: Counter,
    /// Entra ID risk detections by tenant and outcome (`forwarded`, `oversized`,
    /// `refused`).
    pub risk_detections: Family<TenantOutcomeLabels, Counter>,
    /// Collections of risk detections by tenant and outcome (`ok`, `forbidden`, `failed`).
    pub risk_detection_runs: Family<TenantOutcomeLabels, Counter>,
    /// Queue items by state.
    pub queue_items: Family<StateLabels, Gauge>,
    /// Age in seconds of the oldest item not yet done.
    pub queue_oldest_age_seconds: Gauge<f64, AtomicU64>,
    /// Dead-lettered records not requeued: lost until an operator requeues them.
    pub dead_records_lost: Gauge,
    /// Storage failures (full disk, i/o error) that failed a store commit and took the store
    /// down until it was reopened.
    pub store_errors: Counter,
    /// 1 while a stream to the engine is open.
    pub engine_connected: Gauge,
    /// Records sent to the engine and not yet acknowledged.
    pub engine_in_flight: Gauge,
    /// Reconnections to the engine.
    pub engine_reconnects: Counter,
    /// Poll cycles by tenant, content type and outcome (`ok`, `failed`).
    pub poll_cycles: Family<ContentOutcomeLabels, Counter>,
    /// Content items listed by the poller (regular cycles and tail re-scans; an item
    /// listed twice counts twice), by tenant and content type.
    pub poll_listed: Family<ContentLabels, Counter>,
    /// Seconds of `contentCreated` time the poller could no longer list (its cursor fell
    /// more than 7 days behind): a gap in listing, not a counted loss of known content.
    pub poll_gap_seconds: Family<ContentLabels, Counter>,
    /// Seconds between now and the poller's cursor (the end of the last window fully
    /// listed), by tenant and content type.
    pub poll_cursor_age_seconds: Family<ContentLabels, Gauge>,
    /// Subscription starts by tenant, content type and outcome (`ok`, `already_enabled`,
    /// `poll_only`, `webhook_not_validated`, `failed`).
    pub subscription_starts: Family<ContentOutcomeLabels, Counter>,
    /// Subscription stops (content types removed from the configuration, opt-in).
    pub subscription_stops: Family<ContentLabels, Counter>,
    /// Webhooks Microsoft could not validate (AF20021), left off and retried later while
    /// content is collected by polling: the current number of (tenant, content type).
    pub webhooks_deferred: Gauge,
    /// Seconds until a tenant's client certificate expires (negative once expired).
    pub certificate_expiry_seconds: Family<TenantLabels, Gauge>,
    /// Connections open on each HTTP listener.
    pub connections_open: Family<ListenerLabels, Gauge>,
    /// Connections the listener closed or refused, by listener and reason (`idle_timeout`,
    /// `evicted`, `refused_at_cap`, `handshake_failed`).
    pub connections_closed: Family<ListenerReasonLabels, Counter>,
    /// Failed `accept` calls (EMFILE and the like), by listener.
    pub accept_errors: Family<ListenerLabels, Counter>,
}

impl Metrics {
    /// A registry for `tenant_names` (in configuration order); the first
    /// `max_tenant_series` get their own series.
    pub fn new<'a>(
        tenant_names: impl IntoIterator<Item = &'a str>,
        max_tenant_series: usize,
    ) -> Self {
        let tenant_labels = tenant_names
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                let label = if index < max_tenant_series {
                    name.to_string()
                } else {
                    OTHER_TENANTS.to_string()
                };
                (name.to_string(), label)
            })
            .collect();
        let mut metrics = Self {
            registry: Registry::with_prefix("o365_connector"),
            tenant_labels,
            notifications: Family::default(),
            notification_items: Family::default(),
            enqueued: Family::default(),
            deduplicated: Family::default(),
            listed_skipped: Family::default(),
            queue_hard_limit_refusals: Family::default(),
            webhook_bodies_in_flight: Gauge::default(),
            blobs_fetched: Family::default(),
            records_forwarded: Family::default(),
            records_acked: Family::default(),
            records_invalid: Family::default(),
            records_oversized: Family::default(),
            records_refused: Family::default(),
            content_expired: Family::default(),
            content_missing: Family::default(),
            content_unrecoverable: Family::default(),
            content_refused: Family::default(),
            api_requests: Family::default(),
            throttled: Family::default(),
            token_requests: Family::default(),
            items_recovered: Counter::default(),
            unclean_restarts: Counter::default(),
            risk_detections: Family::default(),
            risk_detection_runs: Family::default(),
            queue_items: Family::default(),
            queue_oldest_age_seconds: Gauge::default(),
            dead_records_lost: Gauge::default(),
            store_errors: Counter::default(),
            engine_connected: Gauge::default(),
            engine_in_flight: Gauge::default(),
            engine_reconnects: Counter::default(),
            poll_cycles: Family::default(),
            poll_listed: Family::default(),
            poll_gap_seconds: Family::default(),
            poll_cursor_age_seconds: Family::default(),
            subscription_starts: Family::default(),
            subscription_stops: Family::default(),
            webhooks_deferred: Gauge::default(),
            certificate_expiry_seconds: Family::default(),
            connections_open: Family::default(),
            connections_closed: Family::default(),
            accept_errors: Family::default(),
        };
        metrics.register();
        metrics.create_series();
        metrics
    }

    /// Creates every series whose labels are known at start at zero, so dashboards and
    /// alerts see a 0 rather than an absent series.
    fn create_series(&self) {
        let mut tenants: Vec<String> = self.tenant_labels.values().cloned().collect();
        tenants.sort();
        tenants.dedup();
        for tenant in &tenants {
            self.throttled
                .get_or_create(&TenantLabels {
                    tenant: tenant.clone(),
                })
                .inc_by(0);
            self.token_requests
                .get_or_create(&TenantOutcomeLabels {
                    tenant: tenant.clone(),
                    outcome: "ok",
                })
                .inc_by(0);
            for content_type in crate::config::ContentType::ALL {
                let labels = self.content_for_label(tenant, content_type.as_str());
                for family in [
                    &self.poll_listed,
                    &self.poll_gap_seconds,
                    &self.records_forwarded,
                    &self.records_acked,
                    &self.records_invalid,
                    &self.records_oversized,
                    &self.records_refused,
                    &self.content_expired,
                    &self.content_missing,
                    &self.content_unrecoverable,
                    &self.content_refused,
                    &self.subscription_stops,
                ] {
                    family.get_or_create(&labels).inc_by(0);
                }
                self.blobs_fetched
                    .get_or_create(&ContentOutcomeLabels {
                        tenant: tenant.clone(),
                        content_type: content_type.as_str().to_string(),
                        outcome: "ok",
                    })
                    .inc_by(0);
                self.subscription_starts
                    .get_or_create(&ContentOutcomeLabels {
                        tenant: tenant.clone(),
                        content_type: content_type.as_str().to_string(),
                        outcome: "ok",
                    })
                    .inc_by(0);
            }
        }
        for outcome in ["accepted", "validation", "unauthenticated"] {
            self.notifications
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for outcome in ["enqueued", "duplicate", "invalid"] {
            self.notification_items
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        for source in ["webhook", "poll", "backfill"] {
            self.enqueued
                .get_or_create(&SourceLabels { source })
                .inc_by(0);
            self.deduplicated
                .get_or_create(&SourceLabels { source })
                .inc_by(0);
        }
        for reason in crate::intake::SkipReason::ALL {
            self.listed_skipped
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
        for source in ["webhook", "poll", "backfill"] {
            self.queue_hard_limit_refusals
                .get_or_create(&SourceLabels { source })
                .inc_by(0);
        }
        for state in ["pending", "leased", "done", "dead"] {
            self.queue_items
                .get_or_create(&StateLabels { state })
                .set(0);
        }
        let listener = "webhook";
        self.connections_open
            .get_or_create(&ListenerLabels { listener })
            .set(0);
        self.accept_errors
            .get_or_create(&ListenerLabels { listener })
            .inc_by(0);
        for reason in crate::server::connections::CloseReason::ALL {
            self.connections_closed
                .get_or_create(&ListenerReasonLabels {
                    listener,
                    reason: reason.as_str(),
                })
                .inc_by(0);
        }
        self.api_requests
            .get_or_create(&ApiRequestLabels {
                operation: "blob",
                outcome: "ok",
                af_code: String::new(),
            })
            .inc_by(0);
    }

    fn content_for_label(&self, tenant_label: &str, content_type: &str) -> ContentLabels {
        ContentLabels {
            tenant: tenant_label.to_string(),
            content_type: content_type.to_string(),
        }
    }

    fn register(&mut self) {
        let registry = &mut self.registry;
        registry.register(
            "notifications",
            "Webhook POSTs by outcome",
            self.notifications.clone(),
        );
        registry.register(
            "notification_items",
            "Notification items by outcome",
            self.notification_items.clone(),
        );
        registry.register(
            "enqueued",
            "Content references newly enqueued, by source",
            self.enqueued.clone(),
        );
        registry.register(
            "deduplicated",
            "Content references already known, by source",
            self.deduplicated.clone(),
        );
        registry.register(
            "listed_skipped",
            "Listed items not enqueued, each counted once, by reason",
            self.listed_skipped.clone(),
        );
        registry.register(
            "queue_hard_limit_refusals",
            "Enqueues refused at ops.queue_hard_limit, by source",
            self.queue_hard_limit_refusals.clone(),
        );
        registry.register(
            "webhook_bodies_in_flight",
            "Webhook bodies being read now",
            self.webhook_bodies_in_flight.clone(),
        );
        registry.register(
            "blobs_fetched",
            "Blob fetches by tenant, content type and outcome",
            self.blobs_fetched.clone(),
        );
        registry.register(
            "records_forwarded",
            "Records sent to the engine, resends included",
            self.records_forwarded.clone(),
        );
        registry.register(
            "records_acked",
            "Records acknowledged by the engine",
            self.records_acked.clone(),
        );
        registry.register(
            "records_invalid",
            "Records that are not valid JSON objects, dead-lettered by reference",
            self.records_invalid.clone(),
        );
        registry.register(
            "records_oversized",
            "Records whose Log would exceed the engine's message limit, dead-lettered by reference",
            self.records_oversized.clone(),
        );
        registry.register(
            "records_refused",
            "Records the engine refused every time they were sent alone, dead-lettered by reference",
            self.records_refused.clone(),
        );
        registry.register(
            "content_expired",
            "Blobs Microsoft reported expired (AF20051) before they were fetched: lost",
            self.content_expired.clone(),
        );
        registry.register(
            "content_missing",
            "Blobs Microsoft kept reporting missing (AF20050) after retries",
            self.content_missing.clone(),
        );
        registry.register(
            "content_unrecoverable",
            "Blobs whose JSON structure could not be recovered",
            self.content_unrecoverable.clone(),
        );
        registry.register(
            "content_refused",
            "Blobs the API refused without an AF code until after their contentExpiration: lost",
            self.content_refused.clone(),
        );
        registry.register(
            "api_requests",
            "Management API requests by operation, outcome and AF code",
            self.api_requests.clone(),
        );
        registry.register(
            "throttled",
            "Throttling answers from the Management API, by tenant",
            self.throttled.clone(),
        );
        registry.register(
            "token_requests",
            "Token requests by tenant and outcome",
            self.token_requests.clone(),
        );
        registry.register(
            "items_recovered",
            "Content items a previous run held when it died, released at start (their records since the last stored progress are sent again)",
            self.items_recovered.clone(),
        );
        registry.register(
            "unclean_restarts",
            "1 when this run started after one that did not stop cleanly (records of the blobs it had in flight are sent again)",
            self.unclean_restarts.clone(),
        );
        registry.register(
            "risk_detections",
            "Entra ID risk detections by tenant and outcome (forwarded, oversized, refused)",
            self.risk_detections.clone(),
        );
        registry.register(
            "risk_detection_runs",
            "Collections of Entra ID risk detections by tenant and outcome (ok, forbidden, failed)",
            self.risk_detection_runs.clone(),
        );
        registry.register(
            "queue_items",
            "Content queue items by state",
            self.queue_items.clone(),
        );
        registry.register(
            "queue_oldest_age_seconds",
            "Age of the oldest content queue item not yet done",
            self.queue_oldest_age_seconds.clone(),
        );
        registry.register(
            "dead_records_lost",
            "Dead-lettered records not requeued: lost until an operator requeues them (deadletters requeue)",
            self.dead_records_lost.clone(),
        );
        registry.register(
            "store_errors",
            "Storage failures (full disk, i/o) that failed a store commit; each takes the store down until it is reopened",
            self.store_errors.clone(),
        );
        registry.register(
            "engine_connected",
            "1 while a stream to the UTMStack engine is open",
            self.engine_connected.clone(),
        );
        registry.register(
            "engine_in_flight",
            "Records sent to the engine and not yet acknowledged",
            self.engine_in_flight.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until a tenant's client certificate expires (negative once expired)",
            self.certificate_expiry_seconds.clone(),
        );
        registry.register(
            "engine_reconnects",
            "Reconnections to the UTMStack engine",
            self.engine_reconnects.clone(),
        );
        registry.register(
            "poll_cycles",
            "Poll cycles by tenant, content type and outcome",
            self.poll_cycles.clone(),
        );
        registry.register(
            "poll_listed",
            "Content items listed by the poller, by tenant and content type",
            self.poll_listed.clone(),
        );
        registry.register(
            "poll_gap_seconds",
            "Seconds of content the poller could no longer list (cursor older than 7 days)",
            self.poll_gap_seconds.clone(),
        );
        registry.register(
            "poll_cursor_age_seconds",
            "Seconds between now and the poller's cursor, by tenant and content type",
            self.poll_cursor_age_seconds.clone(),
        );
        registry.register(
            "subscription_starts",
            "Subscription starts by tenant, content type and outcome",
            self.subscription_starts.clone(),
        );
        registry.register(
            "subscription_stops",
            "Subscription stops of content types removed from the configuration",
            self.subscription_stops.clone(),
        );
        registry.register(
            "webhooks_deferred",
            "Webhooks Microsoft could not validate, left off and retried while polling collects",
            self.webhooks_deferred.clone(),
        );
        registry.register(
            "connections_open",
            "Connections open on each HTTP listener",
            self.connections_open.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the listener closed or refused, by listener and reason",
            self.connections_closed.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts of a new connection (file-descriptor limit), by listener",
            self.accept_errors.clone(),
        );
    }

    /// The label of a tenant: its name, or `other` beyond the per-tenant series limit (and
    /// for names not configured).
    pub fn tenant_label(&self, tenant_name: &str) -> String {
        self.tenant_labels
            .get(tenant_name)
            .cloned()
            .unwrap_or_else(|| OTHER_TENANTS.to_string())
    }

    /// `{tenant, content_type}` labels for a tenant name.
    pub fn content(&self, tenant_name: &str, content_type: &str) -> ContentLabels {
        ContentLabels {
            tenant: self.tenant_label(tenant_name),
            content_type: content_type.to_string(),
        }
    }

    /// The exposition text (OpenMetrics, which Prometheus scrapes).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Default for Metrics {
    /// A registry without tenant series (tests and tools).
    fn default() -> Self {
        Self::new([], 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_beyond_the_limit_share_one_label_and_names_are_prefixed() {
        let metrics = Metrics::new(["contoso", "fabrikam", "northwind"], 2);
        assert_eq!(metrics.tenant_label("contoso"), "contoso");
        assert_eq!(metrics.tenant_label("northwind"), OTHER_TENANTS);
        assert_eq!(metrics.tenant_label("unknown"), OTHER_TENANTS);
        metrics
            .records_acked
            .get_or_create(&metrics.content("northwind", "DLP.All"))
            .inc();
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"o365_connector_records_acked_total{tenant="other",content_type="DLP.All"} 1"#
            ),
            "{text}"
        );
    }
}

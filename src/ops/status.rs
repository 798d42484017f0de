//! `/status` (JSON) and `/status.html`: per tenant and content type, what an operator
//! checks first — subscription and webhook state, last notification, poll cursor and lag,
//! records forwarded, losses, and the current errors with what to do about them.
//!
//! The JSON shape is a contract (dashboards and scripts read it); fields are only added:
//!
//! ```text
//! {"generated_at", "queue": {"pending","leased","dead","dead_records","lost_records",
//!    "oldest_age_seconds", "hard_limit", "hard_limit_refusals"},
//!  "engine": {"connected","in_flight","stalled"},
//!  "cluster": {"replica_id","leading","leader","leader_since"},   (several replicas only)
//!  "tenants": [{"name", "tenant_id", "errors": [...],
//!    "risk_detections": {"enabled", "watermark", "last_run", "forwarded", "errors": [...]},
//!    "content_types": [{"content_type", "subscription", "webhook", "last_notification",
//!      "cursor", "lag_seconds", "queue_depth", "records_forwarded", "lost",
//!      "errors": [{"kind", "message", "advice", "since", "count"?}]}]}]}
//! ```
//!
//! A field is `null` when nothing reports it (yet): `subscription`, `webhook` and
//! `last_notification` come from whoever calls [`StatusSource::set_subscription`] and
//! [`StatusSource::note_notification`]; `cursor` is the poller's, read from the metadata
//! store under `poller/cursor/{tenant id}/{content type}` (RFC 3339 text); `queue_depth`
//! per content type needs a queue that counts by content type (the whole queue's counts
//! are in `queue`); `records_forwarded` (records the engine acknowledged) and `lost`
//! (blobs Microsoft expired, AF20051, kept missing, AF20050, or kept refusing without an
//! AF code past their expiration; records dead-lettered as oversized or refused by the
//! engine) come from the metrics, and are `null` for tenants beyond
//! `ops.max_tenant_series`, whose series are aggregated. Tenant-wide problems (content type
//! `*` on the problem board) are the tenant's `errors`. An error about particular blobs is
//! one entry with their `count` (absent on the others). A tenant's `risk_detections`:
//! `watermark` is the collector's (`risk/watermark/{tenant id}` in the metadata store),
//! `last_run` what it reports through [`StatusSource::note_risk_run`], `forwarded` from the
//! metrics (`null` beyond the per-tenant series), `errors` its problems on the board
//! (content type `riskDetections`).
//!
//! Nothing secret is shown: no client secret, no token, no authId, no webhook secret.
//! Problem messages are written never to carry one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Serialize;

use crate::clock::Clock;
use crate::cluster::{ClusterStatus, Leadership};
use crate::config::ContentType;
use crate::ops::Metrics;
use crate::ops::health::{EngineHealth, Problem, ProblemBoard};
use crate::ops::metrics::{ContentLabels, OTHER_TENANTS, SourceLabels};
use crate::queue::{ContentQueue, MetaStore};

/// A tenant as the status lists it.
#[derive(Clone, Debug)]
pub struct StatusTenant {
    /// The configured name.
    pub name: String,
    /// The tenant GUID, lowercase.
    pub tenant_id: String,
    /// The content types collected, in configuration order.
    pub content_types: Vec<ContentType>,
    /// Its Entra ID risk detections are collected.
    pub risk_detections: bool,
}

/// What other components report about one (tenant, content type).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Reported {
    subscription: Option<String>,
    webhook: Option<String>,
    last_notification: Option<DateTime<Utc>>,
    /// For the tenant's risk detections (content type [`RISK_KEY`]): the last collection.
    last_risk_run: Option<DateTime<Utc>>,
}

/// The content type under which risk detections are reported and their problems held.
const RISK_KEY: &str = crate::risk::BOARD_KEY;

/// Gathers the status from the metrics, the problem board, the queue and the metadata
/// store, plus what components report through its setters.
pub struct StatusSource {
    /// Replaced when the tenants are reloaded ([`StatusSource::replace_tenants`]).
    tenants: ArcSwap<Vec<StatusTenant>>,
    metrics: Arc<Metrics>,
    problems: Arc<ProblemBoard>,
    queue: Arc<dyn ContentQueue>,
    meta: Arc<dyn MetaStore>,
    clock: Clock,
    engine: Arc<dyn Fn() -> EngineHealth + Send + Sync>,
    cluster: Option<Leadership>,
    queue_hard_limit: Option<u64>,
    reported: Mutex<HashMap<(String, String), Reported>>,
}

/// The whole status (see the module doc for the shape).
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    /// When this report was made.
    pub generated_at: DateTime<Utc>,
    /// The content queue as a whole.
    pub queue: QueueStatus,
    /// The engine connection.
    pub engine: EngineHealth,
    /// The replicas: this one's id and who runs the pollers (absent for a single instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// Every configured tenant, in configuration order.
    pub tenants: Vec<TenantStatus>,
}

/// The content queue's counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct QueueStatus {
    /// Items waiting for a worker.
    pub pending: u64,
    /// Items held by a worker.
    pub leased: u64,
    /// Dead-lettered items.
    pub dead: u64,
    /// Dead-lettered records.
    pub dead_records: u64,
    /// Of those, the ones not requeued: lost until an operator requeues them.
    pub lost_records: u64,
    /// Age of the oldest item not yet done, in seconds; `null` when none is open.
    pub oldest_age_seconds: Option<i64>,
    /// `ops.queue_hard_limit`: at or above this many open items nothing more is enqueued;
    /// `null` when not reported.
    pub hard_limit: Option<u64>,
    /// Enqueues refused at the hard limit since start (webhook and poller).
    pub hard_limit_refusals: u64,
}

/// One tenant.
#[derive(Clone, Debug, Serialize)]
pub struct TenantStatus {
    /// The configured name.
    pub name: String,
    /// The tenant GUID.
    pub tenant_id: String,
    /// Problems of the whole tenant (token refused, consent missing, …).
    pub errors: Vec<StatusError>,
    /// Its Entra ID risk detections.
    pub risk_detections: RiskStatus,
    /// Each collected content type.
    pub content_types: Vec<ContentTypeStatus>,
}

/// A tenant's Entra ID risk detections.
#[derive(Clone, Debug, Serialize)]
pub struct RiskStatus {
    /// They are collected (`tenants.risk_detections`; always in UTMStack mode).
    pub enabled: bool,
    /// The greatest `lastUpdatedDateTime` the engine acknowledged, as Graph wrote it;
    /// `null`: none yet.
    pub watermark: Option<String>,
    /// When the last collection ran (on this replica); `null`: not yet.
    pub last_run: Option<DateTime<Utc>>,
    /// Detections the engine acknowledged since start; `null` beyond the per-tenant series.
    pub forwarded: Option<u64>,
    /// Current problems (403: permission or licence missing; other failures).
    pub errors: Vec<StatusError>,
}

/// One (tenant, content type).
#[derive(Clone, Debug, Serialize)]
pub struct ContentTypeStatus {
    /// The content type.
    pub content_type: String,
    /// The subscription's state (`enabled`, `disabled`, `starting`, …); `null`: not
    /// reported.
    pub subscription: Option<String>,
    /// The webhook's state (`enabled`, `disabled`, `expired`, `none`, …); `null`: not
    /// reported.
    pub webhook: Option<String>,
    /// When the last notification for it arrived; `null`: none seen or not reported.
    pub last_notification: Option<DateTime<Utc>>,
    /// The poller's cursor: content created before it was listed; `null`: no cursor.
    pub cursor: Option<DateTime<Utc>>,
    /// Seconds from the cursor to now; `null` without a cursor.
    pub lag_seconds: Option<i64>,
    /// Queue items pending or leased for it; `null`: not counted per content type.
    pub queue_depth: Option<u64>,
    /// Records the engine acknowledged since start; `null` beyond the per-tenant series.
    pub records_forwarded: Option<u64>,
    /// Blobs and records given up since start: blobs expired or missing at Microsoft, or
    /// refused by it until they expired, and records dead-lettered as oversized or refused
    /// by the engine (lost until requeued); `null` beyond the per-tenant series.
    pub lost: Option<u64>,
    /// Current problems.
    pub errors: Vec<StatusError>,
}

/// A current problem.
#[derive(Clone, Debug, Serialize)]
pub struct StatusError {
    /// Machine-readable kind.
    pub kind: String,
    /// What happened.
    pub message: String,
    /// What to do.
    pub advice: String,
    /// Since when.
    pub since: DateTime<Utc>,
    /// How many blobs the problem covers, for a problem about particular blobs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl From<Problem> for StatusError {
    fn from(problem: Problem) -> Self {
        Self {
            kind: problem.kind,
            message: problem.message,
            advice: problem.advice,
            since: problem.since,
            count: problem.count,
        }
    }
}

/// The metadata key of the poller's cursor of a (tenant, content type).
pub fn cursor_key(tenant_id: &str, content_type: &str) -> String {
    format!("poller/cursor/{tenant_id}/{content_type}")
}

impl StatusSource {
    /// A source over these tenants and components; `engine` reports the forwarder's
    /// connection.
    pub fn new(
        tenants: Vec<StatusTenant>,
        metrics: Arc<Metrics>,
        problems: Arc<ProblemBoard>,
        queue: Arc<dyn ContentQueue>,
        meta: Arc<dyn MetaStore>,
        clock: Clock,
        engine: Arc<dyn Fn() -> EngineHealth + Send + Sync>,
    ) -> Self {
        Self {
            tenants: ArcSwap::from_pointee(tenants),
            metrics,
            problems,
            queue,
            meta,
            clock,
            engine,
            cluster: None,
            queue_hard_limit: None,
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Also shows the leader (when several replicas may run: the handle has a replica id).
    pub fn with_cluster(mut self, leadership: Leadership) -> Self {
        self.cluster = leadership
            .status()
            .replica_id
            .is_some()
            .then_some(leadership);
        self
    }

    /// Also shows the queue's hard limit (`ops.queue_hard_limit`).
    pub fn with_queue_hard_limit(mut self, limit: u64) -> Self {
        self.queue_hard_limit = Some(limit);
        self
    }

    /// Makes `tenants` the tenants the status lists (after a reload).
    pub fn replace_tenants(&self, tenants: Vec<StatusTenant>) {
        self.tenants.store(Arc::new(tenants));
    }

    /// Reports the subscription state (and the webhook's, when known) of a (tenant id,
    /// content type).
    pub fn set_subscription(
        &self,
        tenant_id: &str,
        content_type: &str,
        subscription: &str,
        webhook: Option<&str>,
    ) {
        self.update(tenant_id, content_type, |reported| {
            reported.subscription = Some(subscription.to_string());
            reported.webhook = webhook.map(str::to_string);
        });
    }

    /// [`StatusSource::note_notification`] at the current time.
    pub fn note_notification_now(&self, tenant_id: &str, content_type: &str) {
        self.note_notification(tenant_id, content_type, self.clock.now());
    }

    /// Notes that a notification for `tenant_id` / `content_type` arrived at `at`.
    pub fn note_notification(&self, tenant_id: &str, content_type: &str, at: DateTime<Utc>) {
        self.update(tenant_id, content_type, |reported| {
            reported.last_notification =
                Some(reported.last_notification.map_or(at, |last| last.max(at)));
        });
    }

    /// Notes that a collection of `tenant_id`'s risk detections ran at `at`.
    pub fn note_risk_run(&self, tenant_id: &str, at: DateTime<Utc>) {
        self.update(tenant_id, RISK_KEY, |reported| {
            reported.last_risk_run = Some(at);
        });
    }

    fn update(&self, tenant_id: &str, content_type: &str, change: impl FnOnce(&mut Reported)) {
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(
            reported
                .entry((tenant_id.to_ascii_lowercase(), content_type.to_string()))
                .or_default(),
        );
    }

    fn reported(&self, tenant_id: &str, content_type: &str) -> Reported {
        self.reported
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(tenant_id.to_string(), content_type.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// The status now.
    pub async fn report(&self) -> StatusReport {
        let now = self.clock.now();
        let mut problems: HashMap<(String, String), Vec<StatusError>> = HashMap::new();
        for (key, problem) in self.problems.snapshot() {
            problems.entry(key).or_default().push(problem.into());
        }
        let listed = self.tenants.load_full();
        let mut tenants = Vec::with_capacity(listed.len());
        for tenant in listed.iter() {
            let mut content_types = Vec::with_capacity(tenant.content_types.len());
            for content_type in &tenant.content_types {
                content_types.push(
                    self.content_type_status(tenant, content_type.as_str(), now, &mut problems)
                        .await,
                );
            }
            tenants.push(TenantStatus {
                name: tenant.name.clone(),
                tenant_id: tenant.tenant_id.clone(),
                errors: problems
                    .remove(&(tenant.name.clone(), "*".to_string()))
                    .unwrap_or_default(),
                risk_detections: self.risk_status(tenant, &mut problems).await,
                content_types,
            });
        }
        StatusReport {
            generated_at: now,
            queue: self.queue_status(now).await,
            engine: (self.engine)(),
            cluster: self.cluster.as_ref().map(Leadership::status),
            tenants,
        }
    }

    async fn content_type_status(
        &self,
        tenant: &StatusTenant,
        content_type: &str,
        now: DateTime<Utc>,
        problems: &mut HashMap<(String, String), Vec<StatusError>>,
    ) -> ContentTypeStatus {
        let reported = self.reported(&tenant.tenant_id, content_type);
        let cursor = self.cursor(&tenant.tenant_id, content_type).await;
        let labels = self.metrics.content(&tenant.name, content_type);
        let own_series = labels.tenant != OTHER_TENANTS;
        let count = |family: &Family<ContentLabels, Counter>| {
            family.get(&labels).map_or(0, |counter| counter.get())
        };
        ContentTypeStatus {
            content_type: content_type.to_string(),
            subscription: reported.subscription,
            webhook: reported.webhook,
            last_notification: reported.last_notification,
            cursor,
            lag_seconds: cursor.map(|cursor| (now - cursor).num_seconds().max(0)),
            queue_depth: None,
            records_forwarded: own_series.then(|| count(&self.metrics.records_acked)),
            lost: own_series.then(|| {
                count(&self.metrics.content_expired)
                    + count(&self.metrics.content_missing)
                    + count(&self.metrics.records_oversized)
                    + count(&self.metrics.records_refused)
                    + count(&self.metrics.content_refused)
            }),
            errors: problems
                .remove(&(tenant.name.clone(), content_type.to_string()))
                .unwrap_or_default(),
        }
    }

    async fn risk_status(
        &self,
        tenant: &StatusTenant,
        problems: &mut HashMap<(String, String), Vec<StatusError>>,
    ) -> RiskStatus {
        let watermark = crate::risk::detection::Watermark::load(&*self.meta, &tenant.tenant_id)
            .await
            .ok()
            .flatten()
            .map(|mark| mark.last_updated);
        let label = self.metrics.tenant_label(&tenant.name);
        let forwarded = (label != OTHER_TENANTS).then(|| {
            self.metrics
                .risk_detections
                .get(&crate::ops::metrics::TenantOutcomeLabels {
                    tenant: label,
                    outcome: "forwarded",
                })
                .map_or(0, |counter| counter.get())
        });
        RiskStatus {
            enabled: tenant.risk_detections,
            watermark,
            last_run: self.reported(&tenant.tenant_id, RISK_KEY).last_risk_run,
            forwarded,
            errors: problems
                .remove(&(tenant.name.clone(), RISK_KEY.to_string()))
                .unwrap_or_default(),
        }
    }

    /// The poller's cursor, when it stored one this status can read.
    async fn cursor(&self, tenant_id: &str, content_type: &str) -> Option<DateTime<Utc>> {
        let bytes = self
            .meta
            .get_meta(&cursor_key(tenant_id, content_type))
            .await
            .ok()??;
        parse_cursor(&bytes)
    }

    async fn queue_status(&self, now: DateTime<Utc>) -> QueueStatus {
        let hard_limit_refusals = ["webhook", "poll"]
            .into_iter()
            .map(|source| {
                self.metrics
                    .queue_hard_limit_refusals
                    .get(&SourceLabels { source })
                    .map_or(0, |counter| counter.get())
            })
            .sum();
        let Ok(stats) = self.queue.stats().await else {
            return QueueStatus {
                hard_limit: self.queue_hard_limit,
                hard_limit_refusals,
                ..QueueStatus::default()
            };
        };
        QueueStatus {
            hard_limit: self.queue_hard_limit,
            hard_limit_refusals,
            pending: stats.pending,
            leased: stats.leased,
            dead: stats.dead,
            dead_records: stats.dead_records,
            lost_records: stats.lost_records(),
            oldest_age_seconds: stats
                .oldest_open_enqueued
                .map(|oldest| (now - oldest).num_seconds().max(0)),
        }
    }
}

/// A cursor stored as RFC 3339 text, bare or as a JSON string.
fn parse_cursor(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(bytes).ok()?.trim().trim_matches('"');
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|time| time.with_timezone(&Utc))
}

/// `/status` and `/status.html`.
pub fn routes(source: Arc<StatusSource>) -> Router {
    Router::new()
        .route("/status", get(handle_status_json))
        .route("/status.html", get(handle_status_html))
        .with_state(source)
}

async fn handle_status_json(State(source): State<Arc<StatusSource>>) -> Response {
    axum::Json(source.report().await).into_response()
}

async fn handle_status_html(State(source): State<Arc<StatusSource>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        render_html(&source.report().await),
    )
        .into_response()
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

const NOT_REPORTED: &str = "<span class=\"none\" title=\"not reported\">–</span>";

fn optional(value: Option<String>) -> String {
    value.map_or_else(|| NOT_REPORTED.to_string(), |value| escape(&value))
}

fn time(value: Option<DateTime<Utc>>) -> String {
    optional(value.map(|time| time.to_rfc3339_opts(SecondsFormat::Secs, true)))
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;\
padding:.3em .6em;text-align:left;vertical-align:top;white-space:nowrap}\
th{background:#f3f3f3}td.errors{white-space:normal;min-width:16em;max-width:32em}\
.ok{color:#176f2c}.bad{color:#b00020;font-weight:600}.none{color:#999}\
.advice{color:#555;font-size:.9em}";

/// The status as a small self-contained HTML page (no script).
pub fn render_html(report: &StatusReport) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>o365-connector status</title>\
         <style>{STYLE}</style></head><body><h1>o365-connector status</h1>\
         <p id=\"summary\">Generated {generated} · engine <span class=\"{engine_class}\">{engine}</span> \
         · queue: {pending} pending, {leased} leased, {dead} dead ({dead_records} dead records){oldest}</p>",
        generated = report
            .generated_at
            .to_rfc3339_opts(SecondsFormat::Secs, true),
        engine_class = if report.engine.connected { "ok" } else { "bad" },
        engine = if report.engine.connected {
            "connected"
        } else {
            "disconnected"
        },
        pending = report.queue.pending,
        leased = report.queue.leased,
        dead = report.queue.dead,
        dead_records = report.queue.dead_records,
        oldest = report
            .queue
            .oldest_age_seconds
            .map(|age| format!(", oldest open item {age} s old"))
            .unwrap_or_default(),
    );
    if let Some(stall) = &report.engine.stalled {
        let _ = write!(
            page,
            "<p id=\"engine-stall\" class=\"bad\">{message}. {advice}</p>",
            message = escape(&stall.message),
            advice = escape(stall.advice),
        );
    }
    if let Some(cluster) = &report.cluster {
        let _ = write!(
            page,
            "<p id=\"cluster\">Replica {replica} · polling and subscriptions on {leader}</p>",
            replica = escape(cluster.replica_id.as_deref().unwrap_or("?")),
            leader = match (&cluster.leader, cluster.leading) {
                (_, true) => "<span class=\"ok\">this replica</span>".to_owned(),
                (Some(leader), false) => escape(leader),
                (None, false) => "<span class=\"bad\">no replica (lease vacant)</span>".to_owned(),
            },
        );
    }
    for tenant in &report.tenants {
        render_tenant(&mut page, tenant);
    }
    page.push_str("</body></html>\n");
    page
}

fn render_tenant(page: &mut String, tenant: &TenantStatus) {
    let _ = write!(
        page,
        "<h2 class=\"tenant\">{name} <small class=\"none\">{id}</small></h2>",
        name = escape(&tenant.name),
        id = escape(&tenant.tenant_id),
    );
    if !tenant.errors.is_empty() {
        let _ = write!(
            page,
            "<div class=\"tenant-errors\">{}</div>",
            errors_html(&tenant.errors)
        );
    }
    page.push_str(
        "<table><thead><tr><th>content type</th><th>subscription</th><th>webhook</th>\
         <th>last notification</th><th>cursor</th><th>lag (s)</th><th>queued</th>\
         <th>records forwarded</th><th>lost</th><th>errors</th></tr></thead><tbody>",
    );
    for status in &tenant.content_types {
        let lost_class = if status.lost.unwrap_or(0) > 0 {
            "bad"
        } else {
            ""
        };
        let _ = write!(
            page,
            "<tr><td>{content_type}</td><td>{subscription}</td><td>{webhook}</td>\
             <td>{last_notification}</td><td>{cursor}</td><td>{lag}</td><td>{depth}</td>\
             <td>{forwarded}</td><td class=\"{lost_class}\">{lost}</td><td class=\"errors\">{errors}</td></tr>",
            content_type = escape(&status.content_type),
            subscription = optional(status.subscription.clone()),
            webhook = optional(status.webhook.clone()),
            last_notification = time(status.last_notification),
            cursor = time(status.cursor),
            lag = optional(status.lag_seconds.map(|lag| lag.to_string())),
            depth = optional(status.queue_depth.map(|depth| depth.to_string())),
            forwarded = optional(status.records_forwarded.map(|count| count.to_string())),
            lost = optional(status.lost.map(|count| count.to_string())),
            errors = if status.errors.is_empty() {
                "<span class=\"ok\">none</span>".to_string()
            } else {
                errors_html(&status.errors)
            },
        );
    }
    page.push_str("</tbody></table>");
    let risk = &tenant.risk_detections;
    if risk.enabled {
        let _ = write!(
            page,
            "<p class=\"risk\">Entra ID risk detections: watermark {watermark} · last run {last_run} \
             · forwarded {forwarded}{errors}</p>",
            watermark = optional(risk.watermark.clone()),
            last_run = time(risk.last_run),
            forwarded = optional(risk.forwarded.map(|count| count.to_string())),
            errors = if risk.errors.is_empty() {
                String::new()
            } else {
                format!(" · {}", errors_html(&risk.errors))
            },
        );
    }
}

fn errors_html(errors: &[StatusError]) -> String {
    errors
        .iter()
        .map(|error| {
            format!(
                "<div><span class=\"bad\">{kind}</span>: {message}<div class=\"advice\">{advice}</div></div>",
                kind = escape(&error.kind),
                message = escape(&error.message),
                advice = escape(&error.advice),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_it_shows() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn page_escapes_names_and_problem_texts_and_has_no_script() {
        let now = Utc::now();
        let report = StatusReport {
            generated_at: now,
            cluster: None,
            queue: QueueStatus::default(),
            engine: EngineHealth {
                connected: false,
                in_flight: 0,
                stalled: None,
            },
            tenants: vec![TenantStatus {
                name: "<b>contoso</b>".into(),
                tenant_id: "41463f53-8812-40f4-890f-865bf6e35190".into(),
                errors: vec![],
                risk_detections: RiskStatus {
                    enabled: true,
                    watermark: Some("<i>2026</i>".into()),
                    last_run: None,
                    forwarded: Some(2),
                    errors: vec![],
                },
                content_types: vec![ContentTypeStatus {
                    content_type: "DLP.All".into(),
                    subscription: None,
                    webhook: None,
                    last_notification: None,
                    cursor: None,
                    lag_seconds: None,
                    queue_depth: None,
                    records_forwarded: Some(3),
                    lost: Some(1),
                    errors: vec![StatusError {
                        kind: "refused".into(),
                        message: "<script>alert(1)</script>".into(),
                        advice: "fix \"it\"".into(),
                        since: now,
                        count: None,
                    }],
                }],
            }],
        };
        let page = render_html(&report);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("&lt;b&gt;contoso&lt;/b&gt;"));
        assert!(page.contains("watermark &lt;i&gt;2026&lt;/i&gt;"));
        assert!(page.contains("fix &quot;it&quot;"));
        assert!(
            page.contains("<td class=\"bad\">1</td>"),
            "a loss stands out"
        );
        assert!(page.contains("disconnected"));
    }

    #[test]
    fn cursors_are_read_as_rfc3339_text_or_json_string() {
        let expected = DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_cursor(b"2026-11-26T10:00:00Z"), Some(expected));
        assert_eq!(
            parse_cursor(b"\"2026-11-26T10:00:00+00:00\""),
            Some(expected)
        );
        assert_eq!(parse_cursor(&[0, 1, 2]), None);
    }
}

//! Microsoft Entra ID Identity Protection risk detections, collected through Microsoft
//! Graph as UTMStack's own plugin collects them (spec `utmstack-engine.md` §6b), one Log
//! per detection, beside the audit feed and independent of it.
//!
//! Files: [`graph`] (the tenant's Graph client: token, origin, errors), [`detection`] (the
//! Log of a detection and the watermark), [`events`] (what the operator sees).
//!
//! # One collection of one tenant ([`RiskCollector::run_once`])
//!
//! From the stored watermark (first run: `poller.initial_lookback_secs` back), list
//! `riskDetections?$filter=lastUpdatedDateTime ge {watermark}&$orderby=lastUpdatedDateTime
//! asc&$top=500`, following `@odata.nextLink` verbatim while it stays on the Graph origin,
//! at most [`MAX_PAGES`] pages. Each page's detections not yet acknowledged go to the
//! engine; once the engine acknowledged all of them, the watermark moves over them and is
//! stored. So a crash or an engine outage repeats at most the page in flight (ids the
//! engine already has), and skips nothing.
//!
//! A detection that can never be delivered (over `engine.max_message_bytes`, or refused by
//! the engine as poison) is a counted loss ([`events::DetectionLost`]) and the watermark
//! passes it. A detection without `lastUpdatedDateTime` is forwarded but cannot move the
//! watermark.
//!
//! # Schedule and errors
//!
//! On the leading replica only (the service runs it beside the tenant's poller), every
//! `poller.poll_interval_secs` after a success. A 403 (the app lacks
//! `IdentityRiskEvent.Read.All`, or the tenant lacks Entra ID P2) stops this tenant's risk
//! detections for [`FORBIDDEN_RETRY`], with a problem naming the permission and the
//! licence; 429 and 503 wait for `Retry-After` (or the backoff, whichever is longer); any
//! other failure backs off with the [`RetryPolicy`]. Nothing here touches the audit feed:
//! its own token, its own requests, its own problem key ([`BOARD_KEY`]).

pub mod detection;
pub mod events;
pub mod graph;

use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::gate::RequestGate;
use crate::clock::Clock;
use crate::config::PollerConfig;
use crate::forward::log::LogContext;
use crate::forward::{AckReceipt, ForwardError, Forwarder};
use crate::ops::Metrics;
use crate::ops::events::{Console, ConsoleReporter, Telemetry};
use crate::ops::health::ProblemBoard;
use crate::ops::status::StatusSource;
use crate::queue::{MetaStore, QueueError};
use crate::retry::{Backoff, RetryPolicy};
use detection::{Detection, Watermark, WatermarkLoadError, build_log, watermark_key};
use graph::{GraphClient, GraphError};

/// The problem board's and the console's "content type" for risk detections.
pub const BOARD_KEY: &str = "riskDetections";

/// Most pages one collection follows (UTMStack's plugin stops at the same number); the
/// next collection goes on from the watermark.
pub const MAX_PAGES: u32 = 200;

/// How long a tenant whose risk detections Graph refused (403) waits before the next try.
pub const FORBIDDEN_RETRY: Duration = Duration::from_secs(3600);

/// The tenant a collector collects.
#[derive(Clone)]
pub struct RiskTarget {
    /// The configured name (logs, metric label, problem board).
    pub name: String,
    /// The tenant GUID, lowercase (the watermark's key).
    pub tenant_id: String,
    /// The tenant's Graph client.
    pub graph: Arc<GraphClient>,
    /// What the tenant's Logs carry.
    pub log_context: LogContext,
}

/// What every tenant's collector shares.
#[derive(Clone)]
pub struct RiskDeps {
    /// Where the Logs go.
    pub forwarder: Arc<Forwarder>,
    /// Where watermarks live.
    pub meta: Arc<dyn MetaStore>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Current problems.
    pub problems: Arc<ProblemBoard>,
    /// The status page, told when each collection ran.
    pub status: Option<Arc<StatusSource>>,
    /// The rate limit of console reports of lost detections.
    pub reporter: Arc<ConsoleReporter>,
    /// The time source of every rule.
    pub clock: Clock,
    /// Backoff of failures other than 403.
    pub retry: RetryPolicy,
}

/// Why a collection stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RiskError {
    /// Microsoft Graph (or its token) failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The watermark could not be read or stored.
    #[error("the risk detection watermark cannot be read or stored: {0}")]
    Store(#[from] QueueError),
    /// The forwarder is stopping: the page in flight is listed again next time.
    #[error("{0}")]
    Forward(ForwardError),
}

/// What one collection did, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RiskReport {
    /// Pages fetched.
    pub pages: u32,
    /// Detections listed.
    pub listed: u64,
    /// Detections the engine acknowledged.
    pub forwarded: u64,
    /// Detections skipped as already acknowledged (at the watermark's instant).
    pub skipped: u64,
    /// Detections given up (oversized, refused).
    pub lost: u64,
    /// The page limit stopped the run with more to list.
    pub more: bool,
    /// The watermark after the run.
    pub watermark: Option<String>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// When the next run is due: the interval after a success, the backoff after a failure.
    pub retry_in: Duration,
}

/// The risk detection collector of one tenant.
pub struct RiskCollector {
    target: RiskTarget,
    deps: RiskDeps,
    interval: Duration,
    initial_lookback: chrono::Duration,
    /// The backoff of the current failure streak; `None` after a success.
    streak: tokio::sync::Mutex<Option<Backoff>>,
    /// Bounds the scheduled requests of every tenant at once ([`RiskCollector::with_gate`]).
    gate: Option<Arc<RequestGate>>,
}

impl RiskCollector {
    /// A collector for `target` on the poller's schedule (`poll_interval_secs`,
    /// `initial_lookback_secs`); nothing runs until [`RiskCollector::run`] or
    /// [`RiskCollector::run_once`].
    pub fn new(target: RiskTarget, poller: &PollerConfig, deps: RiskDeps) -> Self {
        events::create_series(&deps.metrics, &target.name);
        Self {
            target,
            deps,
            interval: Duration::from_secs(poller.poll_interval_secs.get()),
            initial_lookback: chrono::Duration::seconds(
                i64::try_from(poller.initial_lookback_secs).unwrap_or(86_400),
            ),
            streak: tokio::sync::Mutex::new(None),
            gate: None,
        }
    }

    /// Each page request first passes `gate`, shared with every tenant's poller and
    /// subscription manager, so thousands of tenants due together open a bounded number of
    /// connections (see [`crate::api::gate`]). The pass is held for the request only, never
    /// while the engine acknowledges.
    pub fn with_gate(mut self, gate: Arc<RequestGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The tenant's name.
    pub fn tenant(&self) -> &str {
        &self.target.name
    }

    /// Collects now, then whenever the last run says, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let report = tokio::select! {
                _ = shutdown.cancelled() => return,
                report = self.run_once() => report,
            };
            let next = Instant::now() + report.retry_in;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// One collection now; returns what it did and when the next one is due.
    pub async fn run_once(&self) -> RiskReport {
        let mut streak = self.streak.lock().await;
        let mut report = RiskReport::default();
        let outcome = self.collect(&mut report).await;
        if let Some(status) = &self.deps.status {
            status.note_risk_run(&self.target.tenant_id, self.deps.clock.now());
        }
        match outcome {
            Ok(()) => {
                events::RunSucceeded {
                    tenant: &self.target.name,
                    recovered: streak.take().is_some(),
                    forwarded: report.forwarded,
                }
                .emit(&self.telemetry());
                report.retry_in = self.interval;
            }
            Err(error) => {
                let first_failure = streak.is_none();
                let backoff = streak.get_or_insert_with(|| self.deps.retry.backoff());
                let forbidden = matches!(&error, RiskError::Graph(graph) if graph.is_forbidden());
                let retry_after = match &error {
                    RiskError::Graph(graph) => graph.retry_after(),
                    _ => None,
                };
                let delay = if forbidden {
                    FORBIDDEN_RETRY
                } else {
                    backoff
                        .next_delay(retry_after)
                        .unwrap_or(self.deps.retry.max_delay)
                };
                events::RunFailed {
                    tenant: &self.target.name,
                    error: &error,
                    forbidden,
                    first_failure,
                    retry_in: delay,
                }
                .emit(&self.telemetry());
                report.error = Some(error.to_string());
                report.retry_in = delay;
            }
        }
        report
    }

    fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            metrics: &self.deps.metrics,
            problems: &self.deps.problems,
            console: Some(Console {
                reporter: &self.deps.reporter,
                forwarder: &self.deps.forwarder,
            }),
            now: self.deps.clock.now(),
        }
    }

    /// The pages of one collection, each forwarded and acknowledged before the watermark
    /// moves over it.
    async fn collect(&self, report: &mut RiskReport) -> Result<(), RiskError> {
        let key = watermark_key(&self.target.tenant_id);
        let mut watermark = match Watermark::load(&*self.deps.meta, &self.target.tenant_id).await {
            Ok(mark) => mark,
            Err(WatermarkLoadError::Store(error)) => return Err(error.into()),
            // Started over from the lookback (repeats, never a gap) rather than stuck.
            Err(WatermarkLoadError::Unreadable(error)) => {
                events::WatermarkUnreadable {
                    tenant: &self.target.name,
                    error: &error,
                }
                .emit();
                None
            }
        };
        let since = match watermark.as_ref().and_then(Watermark::filter_value) {
            Some(since) => since,
            None => (self.deps.clock.now() - self.initial_lookback)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        };
        report.watermark = watermark.as_ref().map(|mark| mark.last_updated.clone());
        let graph = &self.target.graph;
        let mut url = graph.first_page_url(&since);
        loop {
            let page = {
                let _pass = RequestGate::enter_if(self.gate.as_deref()).await;
                graph.page(url).await?
            };
            report.pages += 1;
            report.listed += page.detections.len() as u64;
            let collected_at = self.deps.clock.now();
            let mut accepted = Vec::with_capacity(page.detections.len());
            for raw in &page.detections {
                let detection = Detection::read(raw.get());
                if watermark
                    .as_ref()
                    .is_some_and(|mark| mark.covers(&detection))
                {
                    report.skipped += 1;
                    continue;
                }
                let log = build_log(
                    &self.target.log_context,
                    raw.get(),
                    &detection,
                    collected_at,
                );
                let sent = self.deps.forwarder.send(log).await;
                accepted.push((detection, sent));
            }
            let (moved, stopped) = self.settle(accepted, report).await;
            if !moved.is_empty() {
                let mark = watermark.get_or_insert_with(Watermark::default);
                for detection in &moved {
                    mark.advance(detection);
                }
                if !mark.last_updated.is_empty() {
                    let bytes = serde_json::to_vec(&*mark).unwrap_or_default();
                    self.deps.meta.put_meta(&key, bytes).await?;
                    report.watermark = Some(mark.last_updated.clone());
                }
            }
            if let Some(error) = stopped {
                return Err(RiskError::Forward(error));
            }
            let Some(next) = page.next_link else {
                return Ok(());
            };
            if report.pages >= MAX_PAGES {
                report.more = true;
                tracing::info!(tenant = %self.target.name, pages = report.pages, "risk detections: page limit reached; the next collection goes on from the watermark");
                return Ok(());
            }
            url = graph.next_page_url(&next)?;
        }
    }

    /// Waits for the engine's verdict on each sent detection, in order; returns those the
    /// watermark may pass (acknowledged, or lost for good) and, when the forwarder stopped
    /// before a verdict, why. Nothing after the first detection without a verdict is
    /// passed: the detections are in `lastUpdatedDateTime` order.
    async fn settle(
        &self,
        accepted: Vec<(Detection, Result<AckReceipt, ForwardError>)>,
        report: &mut RiskReport,
    ) -> (Vec<Detection>, Option<ForwardError>) {
        let mut moved = Vec::with_capacity(accepted.len());
        let mut forwarded = 0;
        let mut stopped = None;
        for (detection, sent) in accepted {
            let verdict = match sent {
                Ok(receipt) => receipt.await,
                Err(error) => Err(error),
            };
            let (outcome, error) = match verdict {
                Ok(()) => {
                    forwarded += 1;
                    moved.push(detection);
                    continue;
                }
                Err(error @ ForwardError::TooLarge { .. }) => ("oversized", error),
                Err(error @ ForwardError::Refused { .. }) => ("refused", error),
                Err(error @ (ForwardError::Closed | ForwardError::NotAcknowledged)) => {
                    stopped = Some(error);
                    break;
                }
            };
            events::DetectionLost {
                tenant: &self.target.name,
                detection_id: &detection.id,
                outcome,
                reason: &error,
            }
            .emit(&self.telemetry());
            report.lost += 1;
            moved.push(detection);
        }
        report.forwarded += forwarded;
        events::DetectionsForwarded {
            tenant: &self.target.name,
            count: forwarded,
        }
        .emit(&self.telemetry());
        (moved, stopped)
    }
}

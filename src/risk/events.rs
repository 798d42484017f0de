//! The risk detection collector's telemetry events (see `ops::events`). Its problems sit on
//! the board under the tenant and [`super::BOARD_KEY`], so `/status` shows them with the
//! tenant's risk detections and the console hears of them through the board, once and then
//! hourly (`utmstack::failures`); they never touch the audit feed's problems or
//! readiness.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::ops::events::{Telemetry, problem_kind};
use crate::ops::metrics::TenantOutcomeLabels;

use super::BOARD_KEY;

/// What to do about a 403 from Microsoft Graph.
pub const FORBIDDEN_ADVICE: &str = "grant the app registration the Microsoft Graph application permission IdentityRiskEvent.Read.All and have an administrator consent to it in this tenant; the tenant also needs Microsoft Entra ID P2 for risk detections. Retried hourly; the audit feed is not affected";

/// What to do about any other failed collection.
pub const FAILED_ADVICE: &str = "retried with backoff (honouring Retry-After); check the connector's network access to Microsoft Graph (api.graph_url) if it persists; the audit feed is not affected";

/// A collection of a tenant's risk detections failed; the next one is in `retry_in`.
pub struct RunFailed<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The failure, as shown (never a secret).
    pub error: &'a dyn std::fmt::Display,
    /// Graph answered 403: permission or licence missing.
    pub forbidden: bool,
    /// The first failure since the last success.
    pub first_failure: bool,
    /// When the next collection is.
    pub retry_in: Duration,
}

impl RunFailed<'_> {
    /// Counts the run, logs it (ERROR the first time when the operator must act, WARN the
    /// first time otherwise, DEBUG while it repeats) and holds the problem with its advice.
    pub fn emit(self, telemetry: &Telemetry) {
        let (tenant, error) = (self.tenant, self.error);
        let retry_in_secs = self.retry_in.as_secs();
        let (outcome, kind, other_kind, advice) = if self.forbidden {
            (
                "forbidden",
                problem_kind::RISK_DETECTIONS_FORBIDDEN,
                problem_kind::RISK_DETECTIONS_FAILED,
                FORBIDDEN_ADVICE,
            )
        } else {
            (
                "failed",
                problem_kind::RISK_DETECTIONS_FAILED,
                problem_kind::RISK_DETECTIONS_FORBIDDEN,
                FAILED_ADVICE,
            )
        };
        count(
            telemetry,
            &telemetry.metrics.risk_detection_runs,
            tenant,
            outcome,
            1,
        );
        match (self.first_failure, self.forbidden) {
            (true, true) => {
                tracing::error!(%tenant, %error, retry_in_secs, advice, "risk detections refused by Microsoft Graph")
            }
            (true, false) => {
                tracing::warn!(%tenant, %error, retry_in_secs, "collecting risk detections failed")
            }
            (false, _) => {
                tracing::debug!(%tenant, %error, retry_in_secs, "collecting risk detections failed again")
            }
        }
        telemetry.problems.clear(tenant, BOARD_KEY, &[other_kind]);
        telemetry.problems.set(
            tenant,
            BOARD_KEY,
            kind,
            error.to_string(),
            advice,
            telemetry.now,
        );
    }
}

/// A collection of a tenant's risk detections ended well.
pub struct RunSucceeded<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// It had failed before: collection works again.
    pub recovered: bool,
    /// Detections the engine acknowledged in this run.
    pub forwarded: u64,
}

impl RunSucceeded<'_> {
    /// Counts the run, says so once after failures, and clears the problems.
    pub fn emit(self, telemetry: &Telemetry) {
        let tenant = self.tenant;
        count(
            telemetry,
            &telemetry.metrics.risk_detection_runs,
            tenant,
            "ok",
            1,
        );
        if self.recovered {
            tracing::info!(%tenant, "collecting risk detections works again");
        }
        tracing::debug!(%tenant, forwarded = self.forwarded, "risk detections collected");
        telemetry.problems.clear(
            tenant,
            BOARD_KEY,
            &[
                problem_kind::RISK_DETECTIONS_FORBIDDEN,
                problem_kind::RISK_DETECTIONS_FAILED,
            ],
        );
    }
}

/// Detections the engine acknowledged.
pub struct DetectionsForwarded<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// How many.
    pub count: u64,
}

impl DetectionsForwarded<'_> {
    /// Counts them (`risk_detections_total{outcome="forwarded"}`).
    pub fn emit(self, telemetry: &Telemetry) {
        count(
            telemetry,
            &telemetry.metrics.risk_detections,
            self.tenant,
            "forwarded",
            self.count,
        );
    }
}

/// A detection that can never reach the engine: its Log is over `engine.max_message_bytes`
/// (`oversized`) or the engine refused it as poison (`refused`). The watermark moves past
/// it, so it is a loss: counted, logged at ERROR with its id, reported to the console.
pub struct DetectionLost<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The detection's id.
    pub detection_id: &'a str,
    /// `oversized` or `refused`.
    pub outcome: &'static str,
    /// Why (the forwarder's error; never the detection's content).
    pub reason: &'a dyn std::fmt::Display,
}

impl DetectionLost<'_> {
    /// Counts, logs and reports the loss.
    pub fn emit(self, telemetry: &Telemetry) {
        let (tenant, detection_id, reason) = (self.tenant, self.detection_id, self.reason);
        count(
            telemetry,
            &telemetry.metrics.risk_detections,
            tenant,
            self.outcome,
            1,
        );
        tracing::error!(%tenant, %detection_id, outcome = self.outcome, %reason, "a risk detection cannot be delivered to the engine and is skipped");
        telemetry.report(
            tenant,
            BOARD_KEY,
            &format!(
                "risk detection {detection_id} skipped ({}): {reason}",
                self.outcome
            ),
        );
    }
}

/// Creates the tenant's `forwarded` and `ok` series at zero, so dashboards and alerts see
/// a 0 from the start rather than an absent series.
pub fn create_series(metrics: &crate::ops::Metrics, tenant: &str) {
    let tenant = metrics.tenant_label(tenant);
    for (family, outcome) in [
        (&metrics.risk_detections, "forwarded"),
        (&metrics.risk_detection_runs, "ok"),
    ] {
        family
            .get_or_create(&TenantOutcomeLabels {
                tenant: tenant.clone(),
                outcome,
            })
            .inc_by(0);
    }
}

/// The stored watermark is not the documented JSON: the collection starts over from
/// `poller.initial_lookback_secs` (detections since then are sent again, none is skipped)
/// and the next acknowledged page replaces it.
pub struct WatermarkUnreadable<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The parse error.
    pub error: &'a serde_json::Error,
}

impl WatermarkUnreadable<'_> {
    /// Logs an ERROR.
    pub fn emit(self) {
        let (tenant, error) = (self.tenant, self.error);
        tracing::error!(%tenant, %error, "the stored risk detection watermark is unreadable: collecting again from poller.initial_lookback_secs; it is replaced at the next acknowledged page");
    }
}

/// Adds `amount` to `family` under the tenant's bounded label and `outcome`.
fn count(
    telemetry: &Telemetry,
    family: &Family<TenantOutcomeLabels, Counter>,
    tenant: &str,
    outcome: &'static str,
    amount: u64,
) {
    family
        .get_or_create(&TenantOutcomeLabels {
            tenant: telemetry.metrics.tenant_label(tenant),
            outcome,
        })
        .inc_by(amount);
}

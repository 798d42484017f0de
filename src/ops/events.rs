//! Typed telemetry events: the one way a notable occurrence reaches the operator.
//!
//! Each occurrence is one type (per area, beside the code that meets it:
//! `worker::events`, `poller::events`) whose `emit` does everything the occurrence owes,
//! in one place: the log line (its level by who must act: ERROR for a loss or what needs
//! an operator), the metric, the `/status` problem with its advice, and the console
//! notice. A call site builds the event and emits it; it cannot count without logging,
//! or set a problem without its advice, and two sites cannot describe one occurrence
//! differently.
//!
//! This file holds what the areas share: [`Telemetry`], where events land; the problem
//! kinds ([`problem_kind`]), each set and cleared only through events; and
//! [`ConsoleReporter`], the rate-limited console notice of losses that are not on the
//! board. Console notices reach UTMStack two ways, and each event says which:
//! a problem on the board is announced by `utmstack::failures` (per tenant and kind, then
//! hourly), and a loss that is counted rather than held (content expired, records
//! dead-lettered) is reported here, once per (tenant, content type) and then at most
//! hourly with the count since the last report.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::forward::Forwarder;
use crate::ops::Metrics;
use crate::ops::health::ProblemBoard;
use crate::ops::metrics::{ContentLabels, ContentOutcomeLabels};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// The problem kinds on the board, each owned by the events that set and clear it.
pub mod problem_kind {
    /// A blob fetch failed for a reason the tenant's configuration or the endpoint must
    /// fix (set by the worker, cleared when a blob of the type completes).
    pub const FETCH_REFUSED: &str = "fetch_refused";
    /// Records given up alone (oversized, refused by the engine): stays until the records
    /// are requeued or the service restarts, as the loss does.
    pub const RECORDS_DEAD_LETTERED: &str = "records_dead_lettered";
    /// Blobs the API refuses without an AF code, held per blob until each completes or is
    /// dead-lettered.
    pub const CONTENT_REFUSED: &str = "content_refused";
    /// A poll of a content type failed (set by the poller, cleared by its next success).
    pub const POLL_FAILED: &str = "poll_failed";
    /// Microsoft Graph refused a tenant's risk detections (403: permission or licence
    /// missing); set and cleared by the risk detection collector.
    pub const RISK_DETECTIONS_FORBIDDEN: &str = "risk_detections_forbidden";
    /// A collection of a tenant's risk detections failed otherwise; set and cleared by the
    /// risk detection collector.
    pub const RISK_DETECTIONS_FAILED: &str = "risk_detections_failed";
}

/// Where events land: the metrics, the board and, for counted losses, the console.
pub struct Telemetry<'a> {
    /// The metrics registry.
    pub metrics: &'a Metrics,
    /// Current problems per tenant and content type.
    pub problems: &'a ProblemBoard,
    /// The console reporter, where the emitting component has one (the workers); the
    /// poller's failures reach the console through the board.
    pub console: Option<Console<'a>>,
    /// The time of the occurrence (the service clock).
    pub now: DateTime<Utc>,
}

/// The reporter and the forwarder carrying its notices.
#[derive(Clone, Copy)]
pub struct Console<'a> {
    /// The rate limit of reports.
    pub reporter: &'a ConsoleReporter,
    /// Sends the notice to the engine (`Notify`, topic `integration_failure`).
    pub forwarder: &'a Forwarder,
}

impl Telemetry<'_> {
    /// Counts one blob pass of `tenant`'s `content_type` ending in `outcome`
    /// (`blobs_fetched_total`).
    pub fn count_blob(&self, tenant: &str, content_type: &str, outcome: &'static str) {
        self.count_outcome(&self.metrics.blobs_fetched, tenant, content_type, outcome);
    }

    /// Adds one to `family`'s series of `tenant`'s `content_type` ending in `outcome`.
    pub fn count_outcome(
        &self,
        family: &Family<ContentOutcomeLabels, Counter>,
        tenant: &str,
        content_type: &str,
        outcome: &'static str,
    ) {
        family
            .get_or_create(&ContentOutcomeLabels {
                tenant: self.metrics.tenant_label(tenant),
                content_type: content_type.to_string(),
                outcome,
            })
            .inc();
    }

    /// Adds one to `family`'s series of `tenant`'s `content_type`.
    pub fn count_content(
        &self,
        family: &Family<ContentLabels, Counter>,
        tenant: &str,
        content_type: &str,
    ) {
        family
            .get_or_create(&self.metrics.content(tenant, content_type))
            .inc();
    }

    /// Reports a counted loss to the console, rate-limited per (tenant, content type);
    /// nothing where this component has no console.
    pub fn report(&self, tenant: &str, content_type: &str, what: &str) {
        if let Some(console) = self.console {
            console
                .reporter
                .report(console.forwarder, self.now, tenant, content_type, what);
        }
    }
}

/// Reports counted losses to the engine (`Notify`, topic `integration_failure`) once per
/// (tenant, content type) and then at most hourly while they recur, with the count since
/// the last report — never once per record.
#[derive(Debug, Default)]
pub struct ConsoleReporter {
    last: Mutex<HashMap<(String, String), ReportState>>,
}

/// When the last report of a (tenant, content type) went out, and the occurrences since.
type ReportState = (Option<DateTime<Utc>>, u64);

/// Shortest interval between two reports of one (tenant, content type).
const REPORT_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl ConsoleReporter {
    fn report(
        &self,
        forwarder: &Forwarder,
        now: DateTime<Utc>,
        tenant: &str,
        content_type: &str,
        what: &str,
    ) {
        let Some(message) = self.due(now, tenant, content_type, what) else {
            return;
        };
        forwarder.notify_integration_failure(tenant, &message);
    }

    /// The notice to send now, if one is due; counts the occurrence either way.
    fn due(
        &self,
        now: DateTime<Utc>,
        tenant: &str,
        content_type: &str,
        what: &str,
    ) -> Option<String> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = last
            .entry((tenant.to_string(), content_type.to_string()))
            .or_insert((None, 0));
        entry.1 += 1;
        if entry.0.is_some_and(|sent| now - sent < REPORT_INTERVAL) {
            return None;
        }
        let message = format!(
            "{content_type}: {what} ({} occurrence(s) since the last report)",
            entry.1
        );
        *entry = (Some(now), 0);
        Some(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_go_out_once_then_hourly_with_the_count_since() {
        let reporter = ConsoleReporter::default();
        let start = Utc::now();
        let first = reporter.due(start, "contoso", "DLP.All", "content expired");
        assert_eq!(
            first.as_deref(),
            Some("DLP.All: content expired (1 occurrence(s) since the last report)")
        );
        let minute = chrono::TimeDelta::minutes(1);
        assert_eq!(
            reporter.due(start + minute, "contoso", "DLP.All", "content expired"),
            None
        );
        assert!(
            reporter
                .due(
                    start + minute,
                    "contoso",
                    "Audit.General",
                    "content expired"
                )
                .is_some(),
            "another content type has its own limit"
        );
        let hour = start + REPORT_INTERVAL;
        let again = reporter.due(hour, "contoso", "DLP.All", "content expired");
        assert!(again.unwrap().contains("(2 occurrence(s)"));
    }
}

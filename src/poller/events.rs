//! The poller's telemetry events (see `ops::events`): how a poll of one (tenant, content
//! type) ended. [`PollFailed`] counts the cycle, logs it (ERROR the first time when the
//! operator must act, WARN the first time otherwise, DEBUG while it repeats) and holds
//! `poll_failed` on the board with advice that matches the delay actually chosen, so the
//! board never calls "transient" what is retried only every 15 minutes. [`PollSucceeded`]
//! counts the cycle and clears the problem. The console hears of a failure through the
//! board (`utmstack::failures`).

use std::time::Duration;

use crate::api::ErrorKind;
use crate::ops::events::{Telemetry, problem_kind};
use crate::ops::metrics::ContentOutcomeLabels;

/// Advice of a failure that backoff retries and that names no advice of its own.
pub const TRANSIENT_ADVICE: &str = "transient: retried with backoff; check the connector's network access and the store's disk if it persists";

/// A poll of `content_type` failed; it is polled again after `retry_in`.
pub struct PollFailed<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: &'a str,
    /// The failure, as shown (never a secret).
    pub error: &'a dyn std::fmt::Display,
    /// Its classification, when the API gave one (for its own advice).
    pub kind: Option<ErrorKind>,
    /// The first failure since the last success.
    pub first_failure: bool,
    /// The failure waits on the operator (retried on the long configuration delay, not
    /// backoff).
    pub needs_operator: bool,
    /// When the content type is polled again.
    pub retry_in: Duration,
}

impl PollFailed<'_> {
    /// What the operator should do: the kind's own advice, else what the chosen delay
    /// means.
    pub fn advice(&self) -> String {
        if let Some(advice) = self.kind.and_then(ErrorKind::advice) {
            return advice.to_string();
        }
        if !self.needs_operator {
            return TRANSIENT_ADVICE.to_string();
        }
        format!(
            "not transient: the request was refused and is retried only every {} s; check the tenant's configuration (tenant_id, cloud, publisher_id) and credentials, and report the message if it persists",
            self.retry_in.as_secs()
        )
    }

    /// Counts the failed cycle, logs it and holds the problem with its advice.
    pub fn emit(self, telemetry: &Telemetry) {
        let (tenant, content_type, error) = (self.tenant, self.content_type, self.error);
        count_cycle(telemetry, tenant, content_type, "failed");
        let retry_in_secs = self.retry_in.as_secs();
        match (self.first_failure, self.needs_operator) {
            (true, true) => {
                tracing::error!(%tenant, %content_type, %error, retry_in_secs, "polling failed")
            }
            (true, false) => {
                tracing::warn!(%tenant, %content_type, %error, retry_in_secs, "polling failed")
            }
            (false, _) => {
                tracing::debug!(%tenant, %content_type, %error, retry_in_secs, "polling failed again")
            }
        }
        telemetry.problems.set(
            tenant,
            content_type,
            problem_kind::POLL_FAILED,
            error.to_string(),
            &self.advice(),
            telemetry.now,
        );
    }
}

/// A poll of `content_type` succeeded.
pub struct PollSucceeded<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: &'a str,
    /// It had failed before: polling works again.
    pub recovered: bool,
}

impl PollSucceeded<'_> {
    /// Counts the cycle, says so once after failures, and clears the problem.
    pub fn emit(self, telemetry: &Telemetry) {
        let (tenant, content_type) = (self.tenant, self.content_type);
        count_cycle(telemetry, tenant, content_type, "ok");
        if self.recovered {
            tracing::info!(%tenant, %content_type, "polling works again");
        }
        telemetry
            .problems
            .clear(tenant, content_type, &[problem_kind::POLL_FAILED]);
    }
}

fn count_cycle(telemetry: &Telemetry, tenant: &str, content_type: &str, outcome: &'static str) {
    telemetry
        .metrics
        .poll_cycles
        .get_or_create(&ContentOutcomeLabels {
            tenant: telemetry.metrics.tenant_label(tenant),
            content_type: content_type.to_string(),
            outcome,
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed<'a>(
        error: &'a dyn std::fmt::Display,
        kind: Option<ErrorKind>,
        needs_operator: bool,
        retry_in: Duration,
    ) -> PollFailed<'a> {
        PollFailed {
            tenant: "contoso",
            content_type: "Audit.General",
            error,
            kind,
            first_failure: true,
            needs_operator,
            retry_in,
        }
    }

    #[test]
    fn a_failure_retried_every_15_minutes_is_never_advised_as_transient() {
        let error = "tenant t: content failed with HTTP 404: null";
        let advice = failed(
            &error,
            Some(ErrorKind::BadRequest),
            true,
            Duration::from_secs(900),
        )
        .advice();
        assert!(
            !advice.contains("transient: retried with backoff"),
            "{advice}"
        );
        assert!(advice.contains("every 900 s"), "{advice}");
        let refused_token = failed(&"token refused", None, true, Duration::from_secs(900));
        assert!(refused_token.advice().starts_with("not transient"));
    }

    #[test]
    fn backoff_failures_say_transient_and_known_kinds_keep_their_advice() {
        let error = "HTTP 503";
        let transient = failed(
            &error,
            Some(ErrorKind::Transient),
            false,
            Duration::from_secs(2),
        );
        assert_eq!(transient.advice(), TRANSIENT_ADVICE);
        let permission = failed(
            &error,
            Some(ErrorKind::PermissionMissing),
            true,
            Duration::from_secs(900),
        );
        assert!(permission.advice().contains("ActivityFeed.ReadDlp"));
    }
}

//! The subscription manager's telemetry events (see `ops::events`): one type per
//! occurrence of a check, whose `emit` writes the log line, counts it and sets or clears
//! the manager's problem with its advice. The manager decides what to call; these say
//! what came of it. The console hears of a problem through the board
//! (`utmstack::failures`).
//!
//! The manager owns three problem kinds ([`OWN_PROBLEMS`]) and clears only those: the
//! poller and the workers keep theirs on the same board.
//!
//! | event                          | level | metric (`subscription_starts` outcome, family) | board                                    |
//! |--------------------------------|-------|--------------------------------------------|------------------------------------------|
//! | [`SubscriptionsListed`]        | —     | —                                          | clears the tenant-wide (`*`) problems    |
//! | [`SubscriptionsUnlisted`]      | WARN  | —                                          | `subscriptions_unlisted` on `*`, with advice |
//! | [`SubscriptionAsWanted`]       | —     | —                                          | clears the content type's problems       |
//! | [`StartWaitingForSpacing`]     | INFO  | —                                          | —                                        |
//! | [`StartRecordUnavailable`]     | —     | —                                          | `subscription_failed`: check the disk    |
//! | [`RecordNotUpdated`]           | WARN  | —                                          | —                                        |
//! | [`SubscriptionStarted`]        | INFO  | `ok` or `already_enabled`                  | clears the content type's problems       |
//! | [`StartRetrying`]              | WARN  | `failed`                                   | —                                        |
//! | [`StartFailed`]                | ERROR | `failed`                                   | `subscription_failed` with advice (unless the webhook is deferred) |
//! | [`WebhookNotValidated`]        | WARN  | `webhook_not_validated`                    | — (then [`WebhookDeferred`])             |
//! | [`PollOnlyStarted`]            | INFO  | `poll_only`                                | —                                        |
//! | [`WebhookDeferred`]            | —     | —                                          | `webhook_deferred` with Microsoft's causes |
//! | [`DeferredWebhookRegistered`]  | INFO  | —                                          | —                                        |
//! | [`DeferredWebhooksCounted`]    | —     | gauge `webhooks_deferred`                  | —                                        |
//! | [`RemovedSubscriptionKept`]    | INFO  | —                                          | —                                        |
//! | [`RemovedSubscriptionStopped`] | WARN  | `subscription_stops`                       | —                                        |
//! | [`RemovedStopFailed`]          | WARN  | —                                          | —                                        |

use chrono::{DateTime, Utc};

use super::board::{SubscriptionState, WebhookState};
use crate::api::{ApiError, ErrorKind, StartOutcome};
use crate::config::ContentType;
use crate::ops::events::Telemetry;
use crate::queue::QueueError;

/// What Microsoft needs to validate a webhook, logged and shown with AF20021.
const WEBHOOK_CAUSES: &str = "Microsoft could not validate the webhook (AF20021): it must be reachable from the internet over HTTPS with a publicly trusted certificate and answer 200; check the reverse proxy, the firewall (service tag M365ManagementActivityApiWebhook) and server.public_url. Content is collected by polling meanwhile";

/// What to do when the start record cannot be read or written.
const STORE_ADVICE: &str = "check the disk and the store directory";

/// A start failed, or a recorded start could not be kept (set by the manager, cleared
/// when the content type is as wanted).
const PROBLEM_START_FAILED: &str = "subscription_failed";
/// Microsoft could not validate the webhook (AF20021): collected by polling meanwhile.
const PROBLEM_WEBHOOK_DEFERRED: &str = "webhook_deferred";
/// `/subscriptions/list` failed (tenant-wide, content type `*`).
const PROBLEM_LIST_FAILED: &str = "subscriptions_unlisted";
/// The problem kinds this module sets, and so may clear.
pub const OWN_PROBLEMS: [&str; 3] = [
    PROBLEM_START_FAILED,
    PROBLEM_WEBHOOK_DEFERRED,
    PROBLEM_LIST_FAILED,
];

/// The content type of tenant-wide problems.
const TENANT_WIDE: &str = "*";

/// What the operator should do about `error`.
fn advice(error: &ApiError) -> &'static str {
    error
        .kind()
        .and_then(ErrorKind::advice)
        .unwrap_or("check the tenant's app registration and the connector's network access")
}

/// The subscription an event is about.
#[derive(Clone, Copy, Debug)]
pub struct Subscription<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: ContentType,
}

impl Subscription<'_> {
    fn count_start(self, telemetry: &Telemetry, outcome: &'static str) {
        telemetry.count_outcome(
            &telemetry.metrics.subscription_starts,
            self.tenant,
            self.content_type.as_str(),
            outcome,
        );
    }

    fn show(self, telemetry: &Telemetry, kind: &str, message: String, advice: &str) {
        telemetry.problems.set(
            self.tenant,
            self.content_type.as_str(),
            kind,
            message,
            advice,
            telemetry.now,
        );
    }

    fn clear(self, telemetry: &Telemetry) {
        telemetry
            .problems
            .clear(self.tenant, self.content_type.as_str(), &OWN_PROBLEMS);
    }
}

/// `/subscriptions/list` answered.
pub struct SubscriptionsListed<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
}

impl SubscriptionsListed<'_> {
    /// Clears the tenant-wide problems.
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry
            .problems
            .clear(self.tenant, TENANT_WIDE, &OWN_PROBLEMS);
    }
}

/// `/subscriptions/list` failed: nothing of the tenant is decided this check.
pub struct SubscriptionsUnlisted<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The failure.
    pub error: &'a ApiError,
}

impl SubscriptionsUnlisted<'_> {
    /// Warns and shows the tenant-wide problem with the error's advice.
    pub fn emit(self, telemetry: &Telemetry) {
        let (tenant, error) = (self.tenant, self.error);
        tracing::warn!(%tenant, %error, "cannot list subscriptions");
        telemetry.problems.set(
            tenant,
            TENANT_WIDE,
            PROBLEM_LIST_FAILED,
            error.to_string(),
            advice(error),
            telemetry.now,
        );
    }
}

/// Nothing to do: the subscription is as wanted (or pending validation).
pub struct SubscriptionAsWanted<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
}

impl SubscriptionAsWanted<'_> {
    /// Clears the content type's problems.
    pub fn emit(self, telemetry: &Telemetry) {
        self.subscription.clear(telemetry);
    }
}

/// A start is needed but the last one was less than 15 minutes ago.
pub struct StartWaitingForSpacing<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// Its state as listed.
    pub state: SubscriptionState,
    /// Its webhook as understood.
    pub webhook: WebhookState,
    /// When the start becomes allowed.
    pub until: DateTime<Utc>,
}

impl StartWaitingForSpacing<'_> {
    /// Logs it.
    pub fn emit(self, _telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let (subscription, webhook, until) = (self.state, self.webhook, self.until);
        tracing::info!(%tenant, %content_type, ?subscription, ?webhook, %until, "subscription needs a start; waiting for the 15-minute spacing");
    }
}

/// The start record could not be read or written: nothing is started, since the spacing
/// could not be kept across restarts.
pub struct StartRecordUnavailable<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// What failed (also the entry's `last_error`).
    pub message: &'a str,
}

impl StartRecordUnavailable<'_> {
    /// Shows `subscription_failed` with the store's advice.
    pub fn emit(self, telemetry: &Telemetry) {
        self.subscription.show(
            telemetry,
            PROBLEM_START_FAILED,
            self.message.to_string(),
            STORE_ADVICE,
        );
    }
}

/// An updated start record could not be stored (the next check tries again).
pub struct RecordNotUpdated<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The store's failure.
    pub error: &'a QueueError,
}

impl RecordNotUpdated<'_> {
    /// Warns.
    pub fn emit(self, _telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let error = self.error;
        tracing::warn!(%tenant, %content_type, %error, "cannot update the subscription record");
    }
}

/// `/start` succeeded, or answered AF20024 (already enabled, nothing changed).
pub struct SubscriptionStarted<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// A webhook was asked for.
    pub with_webhook: bool,
    /// What Microsoft answered.
    pub outcome: &'a StartOutcome,
}

impl SubscriptionStarted<'_> {
    /// Logs it, counts `ok` or `already_enabled` and clears the content type's problems.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let outcome = match self.outcome {
            StartOutcome::Started(_) => "ok",
            StartOutcome::AlreadyEnabled => "already_enabled",
        };
        tracing::info!(%tenant, %content_type, webhook = self.with_webhook, outcome, "subscription started");
        self.subscription.count_start(telemetry, outcome);
        self.subscription.clear(telemetry);
    }
}

/// `/start` failed transiently (5xx, throttling, transport): retried shortly, not counted
/// against the spacing.
pub struct StartRetrying<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The failure.
    pub error: &'a ApiError,
}

impl StartRetrying<'_> {
    /// Warns and counts `failed`.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let error = self.error;
        tracing::warn!(%tenant, %content_type, %error, "subscription start failed; retrying shortly");
        self.subscription.count_start(telemetry, "failed");
    }
}

/// `/start` was refused for a reason the operator must fix.
pub struct StartFailed<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The refusal.
    pub error: &'a ApiError,
    /// It was the start without a webhook after AF20021: the board shows the deferred
    /// webhook ([`WebhookDeferred`]) instead.
    pub webhook_deferred: bool,
}

impl StartFailed<'_> {
    /// Logs it as an ERROR with its advice, counts `failed` and, unless the webhook is
    /// deferred, shows `subscription_failed` with the same advice.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let error = self.error;
        tracing::error!(%tenant, %content_type, %error, advice = advice(error), "cannot start the subscription");
        self.subscription.count_start(telemetry, "failed");
        if self.webhook_deferred {
            return;
        }
        self.subscription.show(
            telemetry,
            PROBLEM_START_FAILED,
            error.to_string(),
            advice(error),
        );
    }
}

/// AF20021: Microsoft could not validate the webhook at `address`.
pub struct WebhookNotValidated<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The address Microsoft could not reach.
    pub address: &'a str,
}

impl WebhookNotValidated<'_> {
    /// Warns with the usual causes and counts `webhook_not_validated`.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let address = self.address;
        tracing::warn!(%tenant, %content_type, address, "{WEBHOOK_CAUSES}");
        self.subscription
            .count_start(telemetry, "webhook_not_validated");
    }
}

/// After AF20021, the subscription was started without a webhook: collected by polling.
pub struct PollOnlyStarted<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
}

impl PollOnlyStarted<'_> {
    /// Logs it and counts `poll_only`.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        tracing::info!(%tenant, %content_type, "subscription started without webhook; collecting by polling");
        self.subscription.count_start(telemetry, "poll_only");
    }
}

/// The webhook is deferred (AF20021 remembered): retried on its own interval.
pub struct WebhookDeferred<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The address Microsoft could not reach.
    pub address: &'a str,
}

impl WebhookDeferred<'_> {
    /// Shows `webhook_deferred` with what Microsoft needs.
    pub fn emit(self, telemetry: &Telemetry) {
        let address = self.address;
        self.subscription.show(
            telemetry,
            PROBLEM_WEBHOOK_DEFERRED,
            format!("Microsoft could not validate the webhook {address} (AF20021); content is collected by polling and the webhook is retried"),
            ErrorKind::WebhookNotValidated.advice().unwrap_or(WEBHOOK_CAUSES),
        );
    }
}

/// A webhook deferred earlier is now registered and enabled.
pub struct DeferredWebhookRegistered<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
}

impl DeferredWebhookRegistered<'_> {
    /// Logs it.
    pub fn emit(self, _telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        tracing::info!(%tenant, %content_type, "the deferred webhook is registered now");
    }
}

/// How many subscriptions have their webhook deferred, after a check.
pub struct DeferredWebhooksCounted {
    /// The count, across tenants.
    pub deferred: usize,
}

impl DeferredWebhooksCounted {
    /// Sets the `webhooks_deferred` gauge.
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry
            .metrics
            .webhooks_deferred
            .set(i64::try_from(self.deferred).unwrap_or(i64::MAX));
    }
}

/// Still subscribed to a content type no longer configured, left as it is (reported once
/// per content type; the manager remembers which).
pub struct RemovedSubscriptionKept<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
}

impl RemovedSubscriptionKept<'_> {
    /// Logs it with how to stop it.
    pub fn emit(self, _telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        tracing::info!(%tenant, %content_type, "still subscribed to a content type no longer configured; left as it is (set subscriptions.stop_removed = true to stop it, which loses the content of the gap)");
    }
}

/// The subscription of a content type no longer configured was stopped
/// (`subscriptions.stop_removed`): content from now until a later start is lost.
pub struct RemovedSubscriptionStopped<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
}

impl RemovedSubscriptionStopped<'_> {
    /// Warns and counts `subscription_stops`.
    pub fn emit(self, telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        tracing::warn!(%tenant, %content_type, "stopped the subscription of a content type no longer configured (subscriptions.stop_removed); content from now until a later start is lost");
        telemetry.count_content(
            &telemetry.metrics.subscription_stops,
            tenant,
            content_type.as_str(),
        );
    }
}

/// Stopping the subscription of a content type no longer configured failed (tried again
/// at the next check).
pub struct RemovedStopFailed<'a> {
    /// The subscription.
    pub subscription: Subscription<'a>,
    /// The failure.
    pub error: &'a ApiError,
}

impl RemovedStopFailed<'_> {
    /// Warns.
    pub fn emit(self, _telemetry: &Telemetry) {
        let Subscription {
            tenant,
            content_type,
        } = self.subscription;
        let error = self.error;
        tracing::warn!(%tenant, %content_type, %error, "cannot stop the subscription of a content type no longer configured");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Metrics;
    use crate::ops::events::problem_kind;
    use crate::ops::health::ProblemBoard;

    fn kinds(problems: &ProblemBoard) -> Vec<String> {
        problems
            .snapshot()
            .into_iter()
            .map(|(_, problem)| problem.kind)
            .collect()
    }

    #[test]
    fn a_refused_start_is_shown_with_the_advice_it_logs_and_a_start_clears_only_the_managers_problems()
     {
        let metrics = Metrics::default();
        let problems = ProblemBoard::default();
        let telemetry = Telemetry {
            metrics: &metrics,
            problems: &problems,
            console: None,
            now: Utc::now(),
        };
        let subscription = Subscription {
            tenant: "contoso",
            content_type: ContentType::DlpAll,
        };
        let refusal = ApiError::Service {
            tenant_id: "t".into(),
            operation: "subscriptions/start",
            kind: ErrorKind::PermissionMissing,
            status: 401,
            af_code: Some("AF10001".into()),
            message: "no permission".into(),
            retry_after: None,
            server_date: None,
        };
        problems.set(
            "contoso",
            "DLP.All",
            problem_kind::POLL_FAILED,
            "the poller's".into(),
            "its advice",
            telemetry.now,
        );
        StartFailed {
            subscription,
            error: &refusal,
            webhook_deferred: false,
        }
        .emit(&telemetry);
        let shown = problems
            .snapshot()
            .into_iter()
            .find(|(_, problem)| problem.kind == PROBLEM_START_FAILED)
            .expect("the refused start is on the board")
            .1;
        assert_eq!(shown.advice, advice(&refusal));
        assert!(shown.advice.contains("ActivityFeed.ReadDlp"), "{shown:?}");

        SubscriptionStarted {
            subscription,
            with_webhook: true,
            outcome: &StartOutcome::AlreadyEnabled,
        }
        .emit(&telemetry);
        assert_eq!(kinds(&problems), [problem_kind::POLL_FAILED]);
        let exposition = metrics.encode();
        for outcome in ["failed", "already_enabled"] {
            assert!(
                exposition.lines().any(|line| line
                    .starts_with("o365_connector_subscription_starts_total{")
                    && line.contains(&format!("outcome=\"{outcome}\""))
                    && line.ends_with(" 1")),
                "{outcome} counted once:\n{exposition}"
            );
        }
    }
}

//! The webhook's telemetry events (see `ops::events`): one type per occurrence of a
//! notification request, whose `emit` writes the log line and counts it. The handler
//! decides the answer; these say so.
//!
//! The webhook holds no problem on the board and sends no console notice: what it refuses
//! is Microsoft's to retry (or an attacker's), and what it accepts is the workers' from
//! then on. Refusals and skipped items are counted always and logged at a bounded rate,
//! with one rate limiter per reason ([`LOGGED_REASONS`]), so a flood of one kind cannot
//! silence the others; text from the request is logged only escaped ([`loggable`]).
//!
//! | event                    | level                      | metric (family, `outcome`)                                   | `/status`                 |
//! |--------------------------|----------------------------|--------------------------------------------------------------|---------------------------|
//! | [`RequestRefused`]       | WARN, limited per reason   | `notifications`, the reason ([`WebhookError::outcome`])      | —                         |
//! | [`ValidationAnswered`]   | INFO                       | `notifications`, `validation`                                | —                         |
//! | [`ItemSkipped`]          | WARN, limited (`item_skipped`) | `notification_items`, `invalid`                          | —                         |
//! | [`EnqueueFailed`]        | ERROR                      | — (the 503 that follows is a [`RequestRefused`])             | —                         |
//! | [`NotificationAccepted`] | —                          | `notification_items` `enqueued`/`duplicate`, `notifications` `accepted` | `last_notification` of each content type |

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::WebhookError;
use crate::intake::Admitted;
use crate::ops::Metrics;
use crate::ops::metrics::OutcomeLabels;
use crate::ops::status::StatusSource;
use crate::queue::QueueError;
use prometheus_client::metrics::counter::Counter;

/// Why a refusal was logged: each reason has its own log rate limiter.
const LOGGED_REASONS: [&str; 11] = [
    "not_a_tenant",
    "too_large",
    "unauthenticated",
    "unknown_tenant",
    "unsupported_media_type",
    "malformed",
    "unavailable",
    "body_unreadable",
    "busy",
    "queue_full",
    "item_skipped",
];

/// Warnings logged per reason and minute, at most.
const LOG_LINES_PER_MINUTE: u32 = 20;

/// One log rate limiter per reason ([`LOGGED_REASONS`]), so a flood of one kind of bad
/// request cannot silence the warnings of another.
struct LogLimiters(HashMap<&'static str, DefaultDirectRateLimiter>);

impl LogLimiters {
    fn new() -> Self {
        let quota =
            Quota::per_minute(NonZeroU32::new(LOG_LINES_PER_MINUTE).expect("non-zero constant"));
        Self(
            LOGGED_REASONS
                .into_iter()
                .map(|reason| (reason, RateLimiter::direct(quota)))
                .collect(),
        )
    }

    /// True when a line for `reason` may be logged now. A reason without a limiter is
    /// never logged (every reason has one: a unit test checks it).
    fn allows(&self, reason: &str) -> bool {
        self.0
            .get(reason)
            .is_some_and(|limiter| limiter.check().is_ok())
    }
}

/// Request-derived text as it may be logged: control characters (line breaks, escape
/// sequences) escaped, at most 200 characters. Log fields are written as they are, so
/// anything from the request goes through this first.
pub fn loggable(text: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut escaped = String::with_capacity(text.len().min(MAX_CHARS));
    for (index, character) in text.chars().enumerate() {
        if index == MAX_CHARS {
            escaped.push('…');
            break;
        }
        if character.is_control() {
            escaped.extend(character.escape_default());
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// Where the webhook's events land: the metrics, the log limiters and, when the service
/// has one, `/status`.
pub struct WebhookTelemetry {
    /// The metrics registry.
    pub(super) metrics: Arc<Metrics>,
    /// One log rate limiter per reason.
    limiters: LogLimiters,
    /// Where each accepted notification's time is noted (`last_notification`).
    pub(super) status: Option<Arc<StatusSource>>,
    /// The counters every accepted notification moves, resolved once instead of a label
    /// lookup in their families per request.
    accepted: AcceptedCounters,
}

/// `notifications{outcome="accepted"}` and `notification_items{outcome="enqueued"|"duplicate"}`.
struct AcceptedCounters {
    notifications: Counter,
    enqueued_items: Counter,
    duplicate_items: Counter,
}

impl AcceptedCounters {
    fn new(metrics: &Metrics) -> Self {
        let notification = |outcome| {
            metrics
                .notifications
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        };
        let items = |outcome| {
            metrics
                .notification_items
                .get_or_create(&OutcomeLabels { outcome })
                .clone()
        };
        Self {
            notifications: notification("accepted"),
            enqueued_items: items("enqueued"),
            duplicate_items: items("duplicate"),
        }
    }
}

impl WebhookTelemetry {
    /// Telemetry into `metrics`, with fresh limiters and no `/status`.
    pub(super) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            accepted: AcceptedCounters::new(&metrics),
            metrics,
            limiters: LogLimiters::new(),
            status: None,
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .notifications
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    fn count_items(&self, outcome: &'static str, count: u64) {
        self.metrics
            .notification_items
            .get_or_create(&OutcomeLabels { outcome })
            .inc_by(count);
    }
}

/// A request was refused before its items were read (the answer is the error's).
pub struct RequestRefused<'a> {
    /// The tenant segment of the path, as requested: logged only when it passed the GUID
    /// check (a [`WebhookError::NotATenant`] is logged without it).
    pub tenant_id: &'a str,
    /// Why.
    pub error: &'a WebhookError,
}

impl RequestRefused<'_> {
    /// Counts the reason and warns, at the reason's rate.
    pub fn emit(self, telemetry: &WebhookTelemetry) {
        let (tenant_id, error) = (self.tenant_id, self.error);
        let outcome = error.outcome();
        telemetry.count(outcome);
        if !telemetry.limiters.allows(outcome) {
            return;
        }
        if matches!(error, WebhookError::NotATenant) {
            tracing::warn!(%outcome, %error, "webhook request refused");
        } else {
            let error = loggable(&error.to_string());
            tracing::warn!(tenant = %tenant_id, %outcome, %error, "webhook request refused");
        }
    }
}

/// Microsoft's validation handshake was answered 200.
pub struct ValidationAnswered<'a> {
    /// The tenant GUID, lowercase.
    pub tenant_id: &'a str,
}

impl ValidationAnswered<'_> {
    /// Counts `validation` and logs it.
    pub fn emit(self, telemetry: &WebhookTelemetry) {
        telemetry.count("validation");
        tracing::info!(tenant = %self.tenant_id, "webhook validation request answered");
    }
}

/// An item of an authenticated batch broke a rule ([`super::validate_item`]): skipped.
pub struct ItemSkipped<'a> {
    /// The tenant GUID, lowercase.
    pub tenant_id: &'a str,
    /// The rule it broke (may quote the item: logged escaped).
    pub reason: &'a str,
}

impl ItemSkipped<'_> {
    /// Counts `invalid` and warns, at the `item_skipped` rate.
    pub fn emit(self, telemetry: &WebhookTelemetry) {
        telemetry.count_items("invalid", 1);
        if telemetry.limiters.allows("item_skipped") {
            let reason = loggable(self.reason);
            tracing::warn!(tenant = %self.tenant_id, %reason, "notification item skipped");
        }
    }
}

/// The queue could not store the valid items: answered 503 so Microsoft retries.
pub struct EnqueueFailed<'a> {
    /// The tenant GUID, lowercase.
    pub tenant_id: &'a str,
    /// The queue's failure.
    pub error: &'a QueueError,
}

impl EnqueueFailed<'_> {
    /// Logs it as an ERROR (the refusal that follows is counted as `unavailable`).
    pub fn emit(self, _telemetry: &WebhookTelemetry) {
        let (tenant_id, error) = (self.tenant_id, self.error);
        tracing::error!(tenant = %tenant_id, %error, "cannot enqueue notified content; answering 503 so Microsoft retries");
    }
}

/// A notification batch is durably enqueued: answered 200.
pub struct NotificationAccepted<'a> {
    /// The tenant GUID, lowercase.
    pub tenant_id: &'a str,
    /// The content type of each valid item, in the body's order.
    pub content_types: &'a [String],
    /// What the enqueue did.
    pub admitted: Admitted,
}

impl NotificationAccepted<'_> {
    /// Counts the items by outcome and the request as `accepted`, and notes each content
    /// type's notification time on `/status`.
    pub fn emit(self, telemetry: &WebhookTelemetry) {
        let Admitted {
            enqueued,
            duplicates,
        } = self.admitted;
        let counters = &telemetry.accepted;
        counters.enqueued_items.inc_by(enqueued);
        counters.duplicate_items.inc_by(duplicates);
        counters.notifications.inc();
        if let Some(status) = &telemetry.status {
            for content_type in self.content_types {
                status.note_notification_now(self.tenant_id, content_type);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::QueueFull;

    #[test]
    fn every_refusal_reason_has_its_own_log_limiter() {
        let limiters = LogLimiters::new();
        let refusals = [
            WebhookError::NotATenant,
            WebhookError::TooLarge { limit: 1 },
            WebhookError::Unauthenticated,
            WebhookError::UnknownTenant,
            WebhookError::UnsupportedMediaType,
            WebhookError::Malformed(String::new()),
            WebhookError::Unavailable,
            WebhookError::BodyRead,
            WebhookError::Busy,
            WebhookError::QueueFull(QueueFull { open: 2, limit: 1 }),
        ];
        for refusal in &refusals {
            assert!(limiters.0.contains_key(refusal.outcome()), "{refusal:?}");
        }
        // Exhausting one reason leaves the others their whole quota.
        while limiters.allows("unauthenticated") {}
        assert!(limiters.allows("item_skipped"));
        assert!(limiters.allows("unsupported_media_type"));
    }

    #[test]
    fn loggable_text_has_no_line_break_or_escape_sequence_and_is_bounded() {
        let forged = "x\n2026-01-01T00:00:00Z ERROR FORGED\r\u{1b}[31m";
        let escaped = loggable(forged);
        assert!(!escaped.chars().any(char::is_control), "{escaped}");
        assert!(escaped.contains("\\n2026"), "{escaped}");
        assert!(loggable(&"a".repeat(10_000)).chars().count() <= 201);
    }
}

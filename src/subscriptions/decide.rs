//! The decision for one (tenant, content type), from what `/subscriptions/list` shows,
//! what we want and what we remember: a pure function, so every rule is unit-tested.
//!
//! Rules (spec §2.1, §2.3, §3.3, §7.8–7.9):
//! - start only when the subscription is missing or disabled, or (when a webhook is
//!   wanted) the webhook is missing, disabled, expired, or registered with another
//!   address or authId;
//! - `webhook: null` within the grace period after a start that asked for a webhook is
//!   pending validation, not missing;
//! - a deferred webhook (AF20021) is tried again only on the deferred-webhook interval,
//!   unless the subscription itself needs a start;
//! - never two starts within [`START_SPACING`] of the same (tenant, content type).

use chrono::{DateTime, Duration, Utc};

use super::board::{SubscriptionState, WebhookState};
use super::record::StartRecord;
use crate::api::types::{SubscriptionStatus, WebhookRegistration};

/// Least time between two `/start` calls of one (tenant, content type) (spec §2.1).
pub const START_SPACING: Duration = Duration::minutes(15);

/// The time settings the decision depends on.
#[derive(Clone, Copy, Debug)]
pub struct DecisionSettings {
    /// How long `webhook: null` after a start with a webhook counts as pending.
    pub pending_grace: Duration,
    /// How often a deferred webhook is tried again.
    pub deferred_retry: Duration,
}

/// What to do about one subscription now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: it is as wanted (or pending, or deferred and not due).
    Keep,
    /// Call `/start` (with the wanted webhook, if any).
    Start,
    /// A start is needed but the last one was less than [`START_SPACING`] ago.
    WaitForSpacing {
        /// When the start becomes allowed.
        until: DateTime<Utc>,
    },
}

/// The reading of one subscription and what to do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// The subscription as listed.
    pub subscription: SubscriptionState,
    /// The webhook as understood.
    pub webhook: WebhookState,
    /// What to do.
    pub action: Action,
    /// When this subscription should be looked at again, sooner than the regular
    /// interval (end of the grace period, of the spacing, or the deferred retry).
    pub recheck_at: Option<DateTime<Utc>>,
}

/// Decides for one subscription: `listed` is its `/subscriptions/list` entry (`None`
/// when absent), `wanted` the webhook we register (`None`: poll only).
pub fn assess(
    listed: Option<&SubscriptionStatus>,
    wanted: Option<&WebhookRegistration>,
    record: &StartRecord,
    now: DateTime<Utc>,
    settings: DecisionSettings,
) -> Assessment {
    let subscription = match listed {
        None => SubscriptionState::Missing,
        Some(status) if is(status.status.as_deref(), "disabled") => SubscriptionState::Disabled,
        // REF's own sample omits `status`; an entry without one is taken as enabled.
        Some(_) => SubscriptionState::Enabled,
    };
    let webhook = webhook_state(listed, wanted, record, now, settings);
    let mut recheck_at = None;
    let wants_start = match webhook {
        _ if subscription != SubscriptionState::Enabled => true,
        _ if wanted.is_none() => false,
        WebhookState::Enabled => false,
        WebhookState::Pending => {
            recheck_at = record
                .last_start
                .map(|start| start + settings.pending_grace);
            false
        }
        WebhookState::Deferred => {
            let due = record
                .last_webhook_attempt
                .map_or(now, |attempt| attempt + settings.deferred_retry);
            recheck_at = Some(due);
            now >= due
        }
        WebhookState::None
        | WebhookState::Disabled
        | WebhookState::Expired
        | WebhookState::Outdated => true,
    };
    let action = match record.last_start {
        _ if !wants_start => Action::Keep,
        Some(last) if now < last + START_SPACING => {
            recheck_at = Some(last + START_SPACING);
            Action::WaitForSpacing {
                until: last + START_SPACING,
            }
        }
        _ => Action::Start,
    };
    Assessment {
        subscription,
        webhook,
        action,
        recheck_at,
    }
}

/// The webhook's state: as listed, then pending (null within the grace period) or
/// deferred (AF20021 remembered) where that explains a webhook that is not enabled.
fn webhook_state(
    listed: Option<&SubscriptionStatus>,
    wanted: Option<&WebhookRegistration>,
    record: &StartRecord,
    now: DateTime<Utc>,
    settings: DecisionSettings,
) -> WebhookState {
    let registered = listed.and_then(|status| status.webhook.as_ref());
    let raw = match (registered, wanted) {
        (None, _) => WebhookState::None,
        (Some(webhook), _) if is(webhook.status.as_deref(), "disabled") => WebhookState::Disabled,
        (Some(webhook), _) if is(webhook.status.as_deref(), "expired") => WebhookState::Expired,
        (Some(webhook), Some(wanted))
            if webhook.address.as_deref() != Some(wanted.address.as_str())
                || webhook.auth_id.as_deref() != Some(wanted.auth_id.as_str()) =>
        {
            WebhookState::Outdated
        }
        (Some(_), _) => WebhookState::Enabled,
    };
    if wanted.is_none() || raw == WebhookState::Enabled {
        return raw;
    }
    if record.webhook_deferred_since.is_some() {
        return WebhookState::Deferred;
    }
    let within_grace = record.last_start_with_webhook
        && record
            .last_start
            .is_some_and(|start| now < start + settings.pending_grace);
    if raw == WebhookState::None && within_grace {
        return WebhookState::Pending;
    }
    raw
}

fn is(value: Option<&str>, expected: &str) -> bool {
    value.is_some_and(|value| value.eq_ignore_ascii_case(expected))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::WebhookStatus;

    const SETTINGS: DecisionSettings = DecisionSettings {
        pending_grace: Duration::minutes(10),
        deferred_retry: Duration::hours(1),
    };

    fn now() -> DateTime<Utc> {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn wanted() -> WebhookRegistration {
        WebhookRegistration {
            address: "https://hook.example/t".into(),
            auth_id: "auth".into(),
            expiration: String::new(),
        }
    }

    fn listed(status: &str, webhook: Option<(&str, &str, &str)>) -> SubscriptionStatus {
        SubscriptionStatus {
            content_type: "Audit.Exchange".into(),
            status: Some(status.into()),
            webhook: webhook.map(|(status, address, auth_id)| WebhookStatus {
                status: Some(status.into()),
                address: Some(address.into()),
                auth_id: Some(auth_id.into()),
                expiration: None,
            }),
        }
    }

    fn started(minutes_ago: i64, with_webhook: bool) -> StartRecord {
        StartRecord {
            last_start: Some(now() - Duration::minutes(minutes_ago)),
            last_start_with_webhook: with_webhook,
            ..StartRecord::default()
        }
    }

    #[test]
    fn enabled_with_our_webhook_is_kept() {
        let current = listed(
            "enabled",
            Some(("enabled", "https://hook.example/t", "auth")),
        );
        let assessment = assess(
            Some(&current),
            Some(&wanted()),
            &StartRecord::default(),
            now(),
            SETTINGS,
        );
        assert_eq!(assessment.action, Action::Keep);
        assert_eq!(assessment.webhook, WebhookState::Enabled);
    }

    #[test]
    fn missing_disabled_expired_and_rotated_are_started() {
        let record = StartRecord::default();
        let cases = [
            (None, SubscriptionState::Missing, WebhookState::None),
            (
                Some(listed("disabled", None)),
                SubscriptionState::Disabled,
                WebhookState::None,
            ),
            (
                Some(listed(
                    "enabled",
                    Some(("disabled", "https://hook.example/t", "auth")),
                )),
                SubscriptionState::Enabled,
                WebhookState::Disabled,
            ),
            (
                Some(listed(
                    "enabled",
                    Some(("expired", "https://hook.example/t", "auth")),
                )),
                SubscriptionState::Enabled,
                WebhookState::Expired,
            ),
            (
                Some(listed(
                    "enabled",
                    Some(("enabled", "https://hook.example/t", "old")),
                )),
                SubscriptionState::Enabled,
                WebhookState::Outdated,
            ),
            (
                Some(listed("enabled", None)),
                SubscriptionState::Enabled,
                WebhookState::None,
            ),
        ];
        for (current, subscription, webhook) in cases {
            let assessment = assess(current.as_ref(), Some(&wanted()), &record, now(), SETTINGS);
            assert_eq!(assessment.action, Action::Start, "{current:?}");
            assert_eq!(assessment.subscription, subscription);
            assert_eq!(assessment.webhook, webhook);
        }
    }

    #[test]
    fn a_second_start_within_fifteen_minutes_waits() {
        let assessment = assess(None, Some(&wanted()), &started(14, true), now(), SETTINGS);
        let until = now() + Duration::minutes(1);
        assert_eq!(assessment.action, Action::WaitForSpacing { until });
        assert_eq!(assessment.recheck_at, Some(until));
        let later = assess(None, Some(&wanted()), &started(15, true), now(), SETTINGS);
        assert_eq!(later.action, Action::Start);
    }

    #[test]
    fn null_webhook_after_a_start_is_pending_for_the_grace_period() {
        let current = listed("enabled", None);
        let pending = assess(
            Some(&current),
            Some(&wanted()),
            &started(9, true),
            now(),
            SETTINGS,
        );
        assert_eq!(pending.webhook, WebhookState::Pending);
        assert_eq!(pending.action, Action::Keep);
        let overdue = assess(
            Some(&current),
            Some(&wanted()),
            &started(16, true),
            now(),
            SETTINGS,
        );
        assert_eq!(overdue.webhook, WebhookState::None);
        assert_eq!(overdue.action, Action::Start);
        let poll_only_start = assess(
            Some(&current),
            Some(&wanted()),
            &started(9, false),
            now(),
            SETTINGS,
        );
        assert_eq!(poll_only_start.webhook, WebhookState::None);
    }

    #[test]
    fn a_deferred_webhook_is_retried_on_its_own_interval() {
        let current = listed("enabled", None);
        let mut record = started(30, false);
        record.webhook_deferred_since = Some(now() - Duration::minutes(30));
        record.last_webhook_attempt = Some(now() - Duration::minutes(30));
        let waiting = assess(Some(&current), Some(&wanted()), &record, now(), SETTINGS);
        assert_eq!(waiting.webhook, WebhookState::Deferred);
        assert_eq!(waiting.action, Action::Keep);
        assert_eq!(waiting.recheck_at, Some(now() + Duration::minutes(30)));
        let due = assess(
            Some(&current),
            Some(&wanted()),
            &record,
            now() + Duration::minutes(30),
            SETTINGS,
        );
        assert_eq!(due.action, Action::Start);
    }

    #[test]
    fn poll_only_needs_just_an_enabled_subscription() {
        let current = listed("enabled", None);
        let assessment = assess(
            Some(&current),
            None,
            &StartRecord::default(),
            now(),
            SETTINGS,
        );
        assert_eq!(assessment.action, Action::Keep);
        let stopped = listed("disabled", None);
        let assessment = assess(
            Some(&stopped),
            None,
            &StartRecord::default(),
            now(),
            SETTINGS,
        );
        assert_eq!(assessment.action, Action::Start);
    }
}

//! `POST subscriptions/start`, `POST subscriptions/stop`, `GET subscriptions/list`.
//!
//! Start, in order: the common checks; the body (optional; `{"webhook": {address,
//! authId, expiration}}`, any or no `Content-Type`); a non-https address → AF20021; a
//! past expiration → AF20003; an enabled subscription asked for exactly what it has
//! (same webhook, still enabled, or no webhook on either side) → HTTP 400 AF20024; then
//! the validation POST through the publisher, with no lock held; not 200 → AF20021 and
//! nothing changes (a new subscription is not created, an existing one stays as it was).
//! Otherwise the subscription is enabled with exactly the webhook asked for (none
//! removes it; a disabled or expired one is revived), and a subscription that was not
//! enabled starts afresh: only content stored from now on is served.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::FeedState;
use super::format_api_time;
use super::request::{Caller, Params, authorize, content_type, invalid_parameter};
use super::window::parse_api_time;
use super::world::{Subscription, Webhook};
use crate::emulator::api::ApiState;
use crate::emulator::api::error::AfError;

/// Longest `webhook_pending_secs` honoured (a year); larger values are clamped.
const MAX_PENDING_SECS: u64 = 365 * 24 * 3600;

/// A subscription as `/start` and `/list` show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct SubscriptionView {
    content_type: String,
    status: &'static str,
    webhook: Option<WebhookView>,
}

/// A webhook as `/start` and `/list` show it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookView {
    status: &'static str,
    address: String,
    auth_id: Option<String>,
    expiration: Option<String>,
}

/// The body of `/start`, leniently: unknown keys are ignored.
#[derive(Deserialize)]
struct StartBody {
    #[serde(default)]
    webhook: Option<WebhookBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody {
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    auth_id: Option<String>,
    #[serde(default)]
    expiration: Option<String>,
}

/// `POST subscriptions/start`.
pub(super) async fn handle_start(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SubscriptionView>, AfError> {
    let params = Params(params);
    let caller = authorize(&state, &tenant, &headers, &params)?;
    let content_type = content_type(&params, &caller)?;
    let now = state.clock.now();
    let webhook = parse_start_body(&body, now)?;
    state
        .feed
        .check_property_change(&caller.tenant_id, content_type, webhook.as_ref())?;
    if let Some(webhook) = &webhook {
        let validated = state
            .publisher
            .validate_webhook(&webhook.address, webhook.auth_id.as_deref())
            .await;
        if !validated {
            return Err(webhook_not_validated(
                &webhook.address,
                "The endpoint did not return HTTP 200.",
                "webhook_validation_failed",
            ));
        }
    }
    let view = state.feed.apply_start(&caller, content_type, webhook)?;
    Ok(Json(view))
}

/// `POST subscriptions/stop`: 200 with an empty body; AF20022 for a type never subscribed.
pub(super) async fn handle_stop(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<StatusCode, AfError> {
    let params = Params(params);
    let caller = authorize(&state, &tenant, &headers, &params)?;
    let content_type = content_type(&params, &caller)?;
    state.feed.stop(&caller.tenant_id, content_type)?;
    Ok(StatusCode::OK)
}

/// `GET subscriptions/list`: every subscription ever started, by content type.
pub(super) async fn handle_list(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Json<Vec<SubscriptionView>>, AfError> {
    let params = Params(params);
    let caller = authorize(&state, &tenant, &headers, &params)?;
    Ok(Json(state.feed.list_subscriptions(&caller.tenant_id)))
}

/// The webhook asked for, if any, checked: https address, expiration not past.
fn parse_start_body(body: &Bytes, now: DateTime<Utc>) -> Result<Option<Webhook>, AfError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let parsed: StartBody = serde_json::from_slice(body).map_err(|_| {
        AfError::bad_request(
            "AF20002",
            "start_body_invalid",
            "Invalid parameter type: webhook. Expected type: object",
        )
    })?;
    let Some(webhook) = parsed.webhook else {
        return Ok(None);
    };
    let address = webhook
        .address
        .filter(|address| !address.trim().is_empty())
        .ok_or_else(|| {
            AfError::bad_request(
                "AF20001",
                "webhook_address_missing",
                "Missing parameter: address.",
            )
        })?;
    if !address
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(webhook_not_validated(
            &address,
            "The address must begin with HTTPS.",
            "webhook_not_https",
        ));
    }
    let expiration = parse_expiration(webhook.expiration.as_deref(), now)?;
    Ok(Some(Webhook {
        address,
        auth_id: webhook.auth_id.filter(|auth_id| !auth_id.is_empty()),
        expiration,
        disabled: false,
    }))
}

/// Empty or absent means none; unparsable → AF20002; not after `now` → AF20003.
fn parse_expiration(
    expiration: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, AfError> {
    let Some(text) = expiration.filter(|text| !text.trim().is_empty()) else {
        return Ok(None);
    };
    let time = parse_api_time(text).ok_or_else(|| invalid_parameter("expiration", "datetime"))?;
    if time <= now {
        return Err(AfError::bad_request(
            "AF20003",
            "webhook_expiration_past",
            format!("Expiration {text} provided is set to past date and time."),
        ));
    }
    Ok(Some(time))
}

fn webhook_not_validated(address: &str, reason: &str, rule: &'static str) -> AfError {
    AfError::bad_request(
        "AF20021",
        rule,
        format!("The webhook endpoint {address} could not be validated. {reason}"),
    )
}

/// The view at `now`; with `hide_pending`, a webhook still within its
/// `webhook_pending_secs` shows as `null`.
fn subscription_view(
    content_type: &str,
    subscription: &Subscription,
    now: DateTime<Utc>,
    hide_pending: bool,
) -> SubscriptionView {
    let hidden = hide_pending
        && subscription
            .webhook_hidden_until
            .is_some_and(|until| now < until);
    let webhook = subscription
        .webhook
        .as_ref()
        .filter(|_| !hidden)
        .map(|webhook| WebhookView {
            status: webhook.status(now).as_str(),
            address: webhook.address.clone(),
            auth_id: webhook.auth_id.clone(),
            expiration: webhook.expiration.as_ref().map(format_api_time),
        });
    SubscriptionView {
        content_type: content_type.to_string(),
        status: if subscription.enabled {
            "enabled"
        } else {
            "disabled"
        },
        webhook,
    }
}

impl FeedState {
    /// AF20024 when an enabled subscription is asked for exactly what it already has.
    fn check_property_change(
        &self,
        tenant_id: &str,
        content_type: &str,
        requested: Option<&Webhook>,
    ) -> Result<(), AfError> {
        let now = self.clock.now();
        let world = self.world();
        let Some(subscription) = world
            .tenant(tenant_id)
            .and_then(|tenant| tenant.subscriptions.get(content_type))
        else {
            return Ok(());
        };
        let unchanged = match (&subscription.webhook, requested) {
            (None, None) => true,
            (Some(current), Some(requested)) => {
                current.address == requested.address
                    && current.auth_id == requested.auth_id
                    && current.expiration == requested.expiration
                    && current.status(now) == super::world::WebhookStatus::Enabled
            }
            _ => false,
        };
        if subscription.enabled && unchanged {
            return Err(AfError::bad_request(
                "AF20024",
                "subscription_unchanged",
                "The subscription is already enabled. No property change.",
            ));
        }
        Ok(())
    }

    /// Enables the subscription with exactly `webhook`; a subscription that was not
    /// enabled starts afresh at now. AF20011 only if the tenant vanished from the world,
    /// which holds every scenario tenant.
    fn apply_start(
        &self,
        caller: &Caller,
        content_type: &str,
        webhook: Option<Webhook>,
    ) -> Result<SubscriptionView, AfError> {
        let now = self.clock.now();
        let mut world = self.world();
        let tenant = world.tenant_mut(&caller.tenant_id).ok_or_else(|| {
            AfError::bad_request(
                "AF20011",
                "tenant_unknown",
                "Specified tenant ID does not exist in the system or has been deleted.",
            )
        })?;
        let pending_secs = tenant.faults.webhook_pending_secs;
        let hidden_until = (webhook.is_some() && pending_secs > 0).then(|| {
            let seconds = i64::try_from(pending_secs.min(MAX_PENDING_SECS)).unwrap_or_default();
            now.checked_add_signed(Duration::seconds(seconds))
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        });
        let subscription = tenant
            .subscriptions
            .entry(content_type.to_string())
            .or_insert_with(|| Subscription {
                enabled: false,
                webhook: None,
                started_at: now,
                webhook_hidden_until: None,
            });
        if !subscription.enabled {
            subscription.enabled = true;
            subscription.started_at = now;
        }
        subscription.webhook = webhook;
        subscription.webhook_hidden_until = hidden_until;
        // The start response shows the webhook just set, as REF's sample does, even while
        // `/list` hides it.
        Ok(subscription_view(content_type, subscription, now, false))
    }

    /// Disables the subscription; AF20022 when it was never started.
    fn stop(&self, tenant_id: &str, content_type: &str) -> Result<(), AfError> {
        let mut world = self.world();
        let subscription = world
            .tenant_mut(tenant_id)
            .and_then(|tenant| tenant.subscriptions.get_mut(content_type))
            .ok_or_else(no_subscription)?;
        subscription.enabled = false;
        Ok(())
    }

    /// Every subscription of the tenant, as `/list` shows it.
    fn list_subscriptions(&self, tenant_id: &str) -> Vec<SubscriptionView> {
        let now = self.clock.now();
        let world = self.world();
        let Some(tenant) = world.tenant(tenant_id) else {
            return Vec::new();
        };
        tenant
            .subscriptions
            .iter()
            .map(|(content_type, subscription)| {
                subscription_view(content_type, subscription, now, true)
            })
            .collect()
    }
}

/// HTTP 400 AF20022.
pub(super) fn no_subscription() -> AfError {
    AfError::bad_request(
        "AF20022",
        "subscription_missing",
        "No subscription found for the specified content type.",
    )
}

/// HTTP 400 AF20023.
pub(super) fn subscription_disabled() -> AfError {
    AfError::bad_request(
        "AF20023",
        "subscription_disabled",
        "The subscription was disabled by a tenant admin.",
    )
}

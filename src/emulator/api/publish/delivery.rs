//! Webhook delivery as Microsoft performs it: the validation POST of `/start` (spec §3.1)
//! and notification POSTs (§3.2) with retries, backoff and disablement (§3.3).
//!
//! Guarantees:
//! - Only `https` addresses are ever called; the client trusts the webpki roots plus the
//!   extra CA given to the emulator (`--webhook-ca`), follows no redirect, and gives up
//!   after a few seconds (connect and total timeouts).
//! - A validation POST carries `Content-Type: application/json; charset=utf-8`,
//!   `Webhook-ValidationCode` (a fresh random code), `Webhook-AuthID` when one was set, and
//!   the body `{"validationCode": <the same code>}`; it succeeds only on HTTP 200.
//! - A notification POST carries Microsoft's non-standard
//!   `Content-Type: application/json; utf-8`, `Webhook-AuthID` when set, and a JSON array
//!   of `{tenantId, clientId, contentType, contentId, contentUri, contentCreated,
//!   contentExpiration}` (after a UTF-8 byte-order mark with the tenant's `bom_bodies`
//!   fault). Anything but HTTP 200 is a failure and is retried with
//!   exponential backoff (`base_delay_ms * 2^(attempt-1)`, capped at `max_delay_ms`,
//!   deterministic so tests can reason about it). Every attempt is recorded for
//!   `/subscriptions/notifications`. After `max_failures` consecutive failed attempts for
//!   a webhook (across all its notifications) the webhook is disabled and retrying stops;
//!   content stays listable.
//! - Delivery never blocks publication: each notification runs in its own task, which
//!   stops on emulator shutdown, when the webhook is disabled or replaced, or when the
//!   `webhook_delivery_off` fault is set.
//! - Auth ids and validation codes never appear in log lines or error messages, and
//!   addresses are logged without their query string.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::feed::{ContentEntry, WebhookTarget};
use super::super::{ApiEmulatorError, ApiState};
use super::records::random_guid;

/// `User-Agent` of every POST to a webhook: a service agent, not our connector.
pub const USER_AGENT: &str = "Microsoft-Office365-ManagementActivityApi-Webhook/1.0";
/// `Content-Type` of the validation POST, as REF shows it.
pub const VALIDATION_CONTENT_TYPE: &str = "application/json; charset=utf-8";
/// `Content-Type` of notification POSTs: Microsoft's non-standard spelling, kept on purpose.
pub const NOTIFICATION_CONTENT_TYPE: &str = "application/json; utf-8";

/// Connect timeout of webhook POSTs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Total timeout of one webhook POST.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Notification POSTs in flight at once, over all webhooks; later ones wait their turn,
/// so a slow webhook under a high publication rate cannot open unbounded connections.
const MAX_NOTIFICATIONS_IN_FLIGHT: usize = 32;

/// How notifications are retried and when a failing webhook is disabled. Microsoft
/// documents no numbers; the defaults are ours. Changed at run time with the
/// `delivery_policy` control command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryPolicy {
    /// Delay before the first retry, in milliseconds; default 1,000. Doubles per retry.
    pub base_delay_ms: u64,
    /// Longest delay between retries, in milliseconds; default 60,000.
    pub max_delay_ms: u64,
    /// Consecutive failed attempts after which the webhook is disabled; default 5.
    pub max_failures: NonZeroU32,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            base_delay_ms: 1_000,
            max_delay_ms: 60_000,
            max_failures: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
        }
    }
}

impl DeliveryPolicy {
    /// The wait after the `attempt`-th failed attempt (1-based) of one notification.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let delay = self.base_delay_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(delay.min(self.max_delay_ms))
    }
}

/// Why a POST to a webhook failed. Never carries an auth id or validation code.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The address is not an https URL; it is never called.
    #[error("webhook address {address} is not an https url")]
    NotHttps {
        /// The address without its query string.
        address: String,
    },
    /// The webhook answered something other than HTTP 200.
    #[error("webhook {address} answered http {status}")]
    Status {
        /// The address without its query string.
        address: String,
        /// The status it answered.
        status: u16,
    },
    /// The webhook could not be reached or did not answer in time.
    #[error("cannot reach webhook {address}: {reason}")]
    Transport {
        /// The address without its query string.
        address: String,
        /// The transport error, without the URL.
        reason: String,
    },
}

/// The HTTPS client that calls webhooks.
#[derive(Debug)]
pub struct WebhookClient {
    client: reqwest::Client,
    in_flight: tokio::sync::Semaphore,
}

impl WebhookClient {
    /// A client trusting the webpki roots plus every certificate of `extra_ca` (PEM).
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, ApiEmulatorError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(USER_AGENT);
        if let Some(path) = extra_ca {
            for der in crate::server::read_certificates(path)? {
                let certificate =
                    reqwest::Certificate::from_der(der.as_ref()).map_err(|error| {
                        ApiEmulatorError::Scenario(format!(
                            "unusable webhook ca {}: {error}",
                            path.display()
                        ))
                    })?;
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder.build().map_err(|error| {
            ApiEmulatorError::Scenario(format!("cannot build the webhook client: {error}"))
        })?;
        Ok(Self {
            client,
            in_flight: tokio::sync::Semaphore::new(MAX_NOTIFICATIONS_IN_FLIGHT),
        })
    }

    /// The validation POST of `/start` (spec §3.1); `Ok` only on HTTP 200.
    pub async fn post_validation(
        &self,
        address: &str,
        auth_id: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let code = random_guid().replace('-', "");
        let body = serde_json::json!({ "validationCode": code }).to_string();
        let request = self
            .post(address, auth_id, VALIDATION_CONTENT_TYPE)?
            .header("Webhook-ValidationCode", code)
            .body(body);
        expect_ok(address, request).await
    }

    /// One notification POST (spec §3.2) of an already serialised JSON array.
    pub async fn post_notification(
        &self,
        address: &str,
        auth_id: Option<&str>,
        body: Bytes,
    ) -> Result<(), DeliveryError> {
        let request = self
            .post(address, auth_id, NOTIFICATION_CONTENT_TYPE)?
            .body(body);
        // Never closed, so acquiring only waits for a free slot.
        let _permit = self.in_flight.acquire().await.ok();
        expect_ok(address, request).await
    }

    fn post(
        &self,
        address: &str,
        auth_id: Option<&str>,
        content_type: &'static str,
    ) -> Result<reqwest::RequestBuilder, DeliveryError> {
        let url = reqwest::Url::parse(address)
            .ok()
            .filter(|url| url.scheme() == "https")
            .ok_or_else(|| DeliveryError::NotHttps {
                address: without_query(address),
            })?;
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type);
        if let Some(auth_id) = auth_id {
            request = request.header("Webhook-AuthID", auth_id);
        }
        Ok(request)
    }
}

async fn expect_ok(address: &str, request: reqwest::RequestBuilder) -> Result<(), DeliveryError> {
    let response = request
        .send()
        .await
        .map_err(|error| DeliveryError::Transport {
            address: without_query(address),
            reason: error.without_url().to_string(),
        })?;
    match response.status().as_u16() {
        200 => Ok(()),
        status => Err(DeliveryError::Status {
            address: without_query(address),
            status,
        }),
    }
}

/// An address fit for logs: its query string (which may hold a secret) removed.
fn without_query(address: &str) -> String {
    address
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Consecutive failed attempts per webhook (tenant, content type, address).
#[derive(Debug, Default)]
pub(super) struct FailureCounts {
    counts: Mutex<HashMap<(String, String, String), u32>>,
}

impl FailureCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, String), u32>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one more failure; returns the consecutive count.
    fn increment(&self, key: &(String, String, String)) -> u32 {
        let mut counts = self.lock();
        let count = counts.entry(key.clone()).or_default();
        *count += 1;
        *count
    }

    /// Forgets the failures (after a success or a disablement).
    fn reset(&self, key: &(String, String, String)) {
        self.lock().remove(key);
    }
}

/// One notification to deliver: the entries of one (tenant, content type) for one webhook.
#[derive(Clone, Debug)]
pub(super) struct Notification {
    /// Tenant GUID, as in the scenario.
    pub tenant_id: String,
    /// Content type.
    pub content_type: String,
    /// Where it goes.
    pub target: WebhookTarget,
    /// The entries notified.
    pub entries: Vec<ContentEntry>,
    /// The JSON array POSTed.
    pub body: Bytes,
}

/// The JSON array body of a notification for `entries`.
pub fn notification_body(tenant_id: &str, client_id: &str, entries: &[ContentEntry]) -> Bytes {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Item<'a> {
        tenant_id: &'a str,
        client_id: &'a str,
        #[serde(flatten)]
        entry: &'a ContentEntry,
    }
    let items: Vec<Item<'_>> = entries
        .iter()
        .map(|entry| Item {
            tenant_id,
            client_id,
            entry,
        })
        .collect();
    Bytes::from(serde_json::to_vec(&items).unwrap_or_else(|_| b"[]".to_vec()))
}

/// Delivers `notification` `copies` times (2 with the `duplicate_notifications` fault),
/// each copy retried until success, disablement, or a reason to stop.
pub(super) async fn deliver(state: Arc<ApiState>, notification: Notification, copies: usize) {
    for _ in 0..copies {
        if !deliver_with_retries(&state, &notification).await {
            return;
        }
    }
}

/// Delivers one copy; false when delivery stopped without success.
async fn deliver_with_retries(state: &ApiState, notification: &Notification) -> bool {
    let key = (
        notification.tenant_id.to_ascii_lowercase(),
        notification.content_type.clone(),
        notification.target.address.clone(),
    );
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let body = if state.feed.faults(&notification.tenant_id).bom_bodies {
            super::super::bom::prefixed(&notification.body)
        } else {
            notification.body.clone()
        };
        let post = state.publisher.client().post_notification(
            &notification.target.address,
            notification.target.auth_id.as_deref(),
            body,
        );
        let result = tokio::select! {
            () = state.shutdown.cancelled() => return false,
            result = post => result,
        };
        record_attempt(state, notification, result.is_ok());
        let Err(error) = result else {
            state.publisher.failures().reset(&key);
            return true;
        };
        let policy = state.publisher.delivery_policy();
        let failures = state.publisher.failures().increment(&key);
        if failures >= policy.max_failures.get() {
            disable_after_failures(state, notification, &key, failures, &error);
            return false;
        }
        tracing::debug!(tenant = %notification.tenant_id, content_type = %notification.content_type,
            attempt, %error, "notification failed, will retry");
        tokio::select! {
            () = state.shutdown.cancelled() => return false,
            () = tokio::time::sleep(policy.delay_after(attempt)) => {}
        }
        if !still_deliverable(state, notification) {
            return false;
        }
    }
}

fn record_attempt(state: &ApiState, notification: &Notification, success: bool) {
    let sent = state.clock.now();
    let status = if success { "success" } else { "failed" };
    for entry in &notification.entries {
        state
            .feed
            .record_notification(&notification.tenant_id, entry, sent, status);
    }
}

fn disable_after_failures(
    state: &ApiState,
    notification: &Notification,
    key: &(String, String, String),
    failures: u32,
    error: &DeliveryError,
) {
    state
        .feed
        .disable_webhook(&notification.tenant_id, &notification.content_type);
    state.publisher.failures().reset(key);
    tracing::warn!(tenant = %notification.tenant_id, content_type = %notification.content_type,
        failures, %error, "webhook disabled after consecutive delivery failures");
}

/// The webhook is still the active one and delivery is not switched off.
fn still_deliverable(state: &ApiState, notification: &Notification) -> bool {
    let tenant = &notification.tenant_id;
    let active = state
        .feed
        .active_webhook(tenant, &notification.content_type);
    active.as_ref() == Some(&notification.target) && !state.feed.faults(tenant).webhook_delivery_off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let policy = DeliveryPolicy {
            base_delay_ms: 100,
            max_delay_ms: 500,
            max_failures: NonZeroU32::MIN,
        };
        let delays: Vec<u128> = (1..=5)
            .map(|attempt| policy.delay_after(attempt).as_millis())
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 500, 500]);
        assert_eq!(policy.delay_after(u32::MAX).as_millis(), 500);
    }

    #[test]
    fn logged_addresses_lose_their_query_string() {
        assert_eq!(
            without_query("https://hook.example/o365?code=secret"),
            "https://hook.example/o365"
        );
    }
}

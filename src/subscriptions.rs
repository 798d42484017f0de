//! Subscriptions, first cut: at start, every (tenant, content type) is started with the
//! tenant's webhook unless `/subscriptions/list` already shows it so.
//!
//! Rules kept here (spec §2.1, §3.1):
//! - `/start` only when `/list` shows the subscription missing, disabled, or with another
//!   webhook address or authId (a start with a webhook makes Microsoft validate it, and
//!   starts count against the tenant's quota); AF20024 (already enabled) is success.
//! - One content type's answer never affects another's.
//! - AF20021 (Microsoft could not validate the webhook): a NEW subscription is started at
//!   once without a webhook so collection goes on by polling; an existing one is left as
//!   it was. Either way the address Microsoft could not reach is logged with the usual
//!   causes.
//!
//! The periodic health check, the 15-minute spacing and deferred webhooks come with the
//! poller.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::types::{SubscriptionStatus, WebhookRegistration};
use crate::api::{ApiClient, ApiError, ErrorKind, StartOutcome};
use crate::clock::Clock;
use crate::config::ContentType;
use crate::ops::health::ProblemBoard;
use crate::retry::RetryPolicy;
use crate::tenant::Tenant;

/// What became of one content type's subscription.
#[derive(Debug)]
pub enum SubscriptionOutcome {
    /// `/list` already showed it enabled with the wanted webhook.
    AlreadyCurrent,
    /// Started (or AF20024: already enabled with these properties).
    Started,
    /// Microsoft could not validate the webhook; started for polling only.
    StartedWithoutWebhook,
    /// Could not be started; the error says why.
    Failed(ApiError),
}

/// Ensures each of `content_types` is subscribed with `webhook` (or poll-only when
/// `None`). Fails as a whole only when `/subscriptions/list` fails.
pub async fn ensure_subscriptions(
    client: &ApiClient,
    content_types: &[ContentType],
    webhook: Option<&WebhookRegistration>,
) -> Result<Vec<(ContentType, SubscriptionOutcome)>, ApiError> {
    let listed = client.list_subscriptions().await?;
    let mut outcomes = Vec::with_capacity(content_types.len());
    for content_type in content_types {
        let current = listed.iter().find(|status| {
            status
                .content_type
                .eq_ignore_ascii_case(content_type.as_str())
        });
        let outcome = ensure_one(client, *content_type, current, webhook).await;
        outcomes.push((*content_type, outcome));
    }
    Ok(outcomes)
}

/// How long a configuration problem (consent, role, audit off) waits before the next try.
const CONFIGURATION_RETRY: Duration = Duration::from_secs(900);

/// Runs [`ensure_subscriptions`] for a tenant until every content type is subscribed:
/// transient failures are retried with `retry`'s backoff, configuration problems every 15
/// minutes, each shown on the problem board until it is solved.
pub async fn keep_subscribed(
    tenant: Arc<Tenant>,
    webhook: Option<WebhookRegistration>,
    problems: Arc<ProblemBoard>,
    clock: Clock,
    retry: RetryPolicy,
    shutdown: CancellationToken,
) {
    let mut remaining = tenant.content_types.clone();
    let mut backoff = retry.backoff();
    while !remaining.is_empty() {
        let mut transient = false;
        match ensure_subscriptions(&tenant.client, &remaining, webhook.as_ref()).await {
            Ok(outcomes) => {
                remaining.clear();
                for (content_type, outcome) in outcomes {
                    let SubscriptionOutcome::Failed(error) = outcome else {
                        problems.clear(&tenant.name, content_type.as_str());
                        continue;
                    };
                    transient |= error.is_retryable();
                    show_problem(
                        &problems,
                        &tenant.name,
                        content_type.as_str(),
                        &error,
                        &clock,
                    );
                    remaining.push(content_type);
                }
            }
            Err(error) => {
                transient = error.is_retryable();
                tracing::warn!(tenant = %tenant.name, %error, "cannot list subscriptions");
                show_problem(&problems, &tenant.name, "*", &error, &clock);
            }
        }
        if remaining.is_empty() {
            problems.clear(&tenant.name, "*");
            return;
        }
        let delay = if transient {
            backoff.next_delay(None).unwrap_or(retry.max_delay)
        } else {
            CONFIGURATION_RETRY
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn show_problem(
    problems: &ProblemBoard,
    tenant: &str,
    content_type: &str,
    error: &ApiError,
    clock: &Clock,
) {
    let advice = error
        .kind()
        .and_then(ErrorKind::advice)
        .unwrap_or("check the tenant's app registration and the connector's network access");
    problems.set(
        tenant,
        content_type,
        "subscription_failed",
        error.to_string(),
        advice,
        clock.now(),
    );
}

/// True when the listed subscription is enabled with the wanted webhook.
fn is_current(current: &SubscriptionStatus, webhook: Option<&WebhookRegistration>) -> bool {
    let enabled = current
        .status
        .as_deref()
        .is_some_and(|status| status.eq_ignore_ascii_case("enabled"));
    let Some(wanted) = webhook else {
        return enabled;
    };
    let Some(registered) = &current.webhook else {
        return false;
    };
    enabled
        && registered
            .status
            .as_deref()
            .is_some_and(|status| status.eq_ignore_ascii_case("enabled"))
        && registered.address.as_deref() == Some(wanted.address.as_str())
        && registered.auth_id.as_deref() == Some(wanted.auth_id.as_str())
}

async fn ensure_one(
    client: &ApiClient,
    content_type: ContentType,
    current: Option<&SubscriptionStatus>,
    webhook: Option<&WebhookRegistration>,
) -> SubscriptionOutcome {
    let tenant = client.tenant_id();
    if current.is_some_and(|current| is_current(current, webhook)) {
        tracing::info!(tenant, %content_type, "subscription already current");
        return SubscriptionOutcome::AlreadyCurrent;
    }
    match client
        .start_subscription(content_type.as_str(), webhook)
        .await
    {
        Ok(StartOutcome::Started(_) | StartOutcome::AlreadyEnabled) => {
            tracing::info!(tenant, %content_type, webhook = webhook.is_some(), "subscription started");
            SubscriptionOutcome::Started
        }
        Err(error) if error.kind() == Some(ErrorKind::WebhookNotValidated) => {
            let address = webhook
                .map(|webhook| webhook.address.as_str())
                .unwrap_or("");
            tracing::warn!(
                tenant, %content_type, address,
                "Microsoft could not validate the webhook (AF20021): it must be reachable from the internet over HTTPS with a publicly trusted certificate and answer 200; check the reverse proxy, firewall (service tag M365ManagementActivityApiWebhook) and server.public_url"
            );
            if current.is_some() {
                return SubscriptionOutcome::Failed(error);
            }
            start_poll_only(client, content_type).await
        }
        Err(error) => {
            let advice = error.kind().and_then(ErrorKind::advice).unwrap_or("");
            tracing::error!(tenant, %content_type, %error, advice, "cannot start the subscription");
            SubscriptionOutcome::Failed(error)
        }
    }
}

async fn start_poll_only(client: &ApiClient, content_type: ContentType) -> SubscriptionOutcome {
    match client.start_subscription(content_type.as_str(), None).await {
        Ok(_) => {
            tracing::info!(tenant = client.tenant_id(), %content_type, "subscription started without webhook; collecting by polling");
            SubscriptionOutcome::StartedWithoutWebhook
        }
        Err(error) => {
            tracing::error!(tenant = client.tenant_id(), %content_type, %error, "cannot start the subscription");
            SubscriptionOutcome::Failed(error)
        }
    }
}

//! The subscription webhook: where Microsoft POSTs the validation request and the
//! content-availability notifications.
//!
//! One URL per tenant, `{public URL}/{tenant id}`, so even the validation request (which
//! names no tenant) maps to one. Checks run in this order, each answering at once:
//!
//! 1. body size: over the limit → 413;
//! 2. `Webhook-AuthID` (any case) must be the tenant's authId ([`auth_id`]), compared in
//!    constant time → 401;
//! 3. the tenant in the path must be configured → 404;
//! 4. a request carrying `Webhook-ValidationCode` is the validation handshake → 200,
//!    whatever its body (Microsoft's documented body is not even JSON);
//! 5. content type must be JSON; Microsoft's non-standard `application/json; utf-8` is
//!    accepted, as are `charset=utf-8` and no parameter → 415;
//! 6. the body must be a JSON array of objects, with or without a leading UTF-8 byte-order
//!    mark ([`parse_notifications`]) → 400.
//!
//! Then every item is validated ([`validate_item`]): the tenant matches the URL, the
//! clientId is the tenant's app, the content type is enabled for the tenant, and the
//! contentUri is on the tenant's API base (scheme, host and port) with the tenant id in
//! its path — otherwise our token would later be sent to whatever host a forged
//! notification named. Invalid items of an authenticated batch are skipped, logged and
//! counted. The valid ones are enqueued durably, and only then is 200 answered: a 200
//! means every valid item is on disk. When the queue cannot accept, 503 makes Microsoft
//! retry later.

pub mod auth_id;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Duration;
use reqwest::Url;
use serde::Deserialize;

use crate::api::json;
use crate::api::types::parse_api_time;
use crate::config::ContentType;
use crate::ops::Metrics;
use crate::ops::metrics::{OutcomeLabels, SourceLabels};
use crate::ops::status::StatusSource;
use crate::queue::{ContentQueue, ContentRef, EnqueueOutcome, Source};
pub use auth_id::WebhookSecrets;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// Default limit of a notification body: Microsoft's batches are far smaller.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the webhook knows of one tenant.
#[derive(Clone, Debug)]
pub struct WebhookTenant {
    /// Tenant GUID, lowercase.
    pub tenant_id: String,
    /// The app registration whose subscriptions notify us.
    pub client_id: String,
    /// Content types collected for this tenant.
    pub content_types: HashSet<ContentType>,
    /// The tenant's API base: contentUris must be on it.
    pub api_base: Url,
}

/// Everything the webhook handlers need.
pub struct WebhookState {
    /// Replaced as a whole when the tenants are reloaded ([`WebhookState::replace_tenants`]).
    tenants: ArcSwap<HashMap<String, WebhookTenant>>,
    secrets: WebhookSecrets,
    queue: Arc<dyn ContentQueue>,
    max_body_bytes: usize,
    metrics: Arc<Metrics>,
    work_available: Arc<Notify>,
    log_limiter: DefaultDirectRateLimiter,
    status: Option<Arc<StatusSource>>,
}

impl WebhookState {
    /// Webhook state over `tenants`, authenticating with `secrets`, enqueuing into `queue`
    /// and waking the workers through `work_available` after each new item.
    pub fn new(
        tenants: impl IntoIterator<Item = WebhookTenant>,
        secrets: WebhookSecrets,
        queue: Arc<dyn ContentQueue>,
        max_body_bytes: usize,
        metrics: Arc<Metrics>,
        work_available: Arc<Notify>,
    ) -> Self {
        Self {
            tenants: ArcSwap::from_pointee(tenants_by_id(tenants)),
            secrets,
            queue,
            max_body_bytes,
            metrics,
            work_available,
            log_limiter: RateLimiter::direct(Quota::per_minute(
                NonZeroU32::new(20).expect("non-zero constant"),
            )),
            status: None,
        }
    }

    /// Makes `tenants` the tenants the webhook accepts: a request for a tenant no longer
    /// among them is refused (404) from now on, one for a new tenant accepted.
    pub fn replace_tenants(&self, tenants: impl IntoIterator<Item = WebhookTenant>) {
        self.tenants.store(Arc::new(tenants_by_id(tenants)));
    }

    /// Notes each accepted notification's time in `status` (`last_notification`).
    pub fn with_status(mut self, status: Arc<StatusSource>) -> Self {
        self.status = Some(status);
        self
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

    /// The authId to register for a tenant.
    pub fn auth_id(&self, tenant_id: &str) -> String {
        self.secrets.auth_id(tenant_id)
    }
}

/// The webhook routes: `POST {path}/{tenant id}`. `path` is the local path (e.g. `/hook`,
/// or empty for the root); the proxy in front may publish it under another one.
pub fn router(state: Arc<WebhookState>, path: &str) -> Router {
    let route = format!("{}/{{tenant_id}}", path.trim_end_matches('/'));
    Router::new()
        .route(&route, post(handle_post))
        .with_state(state)
}

/// Why a request was refused before its items were read.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Body over the limit.
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Missing or wrong `Webhook-AuthID`.
    #[error("missing or wrong Webhook-AuthID")]
    Unauthenticated,
    /// The tenant in the path is not configured.
    #[error("unknown tenant")]
    UnknownTenant,
    /// Not a JSON content type.
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Not a JSON array of objects.
    #[error("body is not a JSON array of notifications: {0}")]
    Malformed(String),
    /// The queue could not store the items.
    #[error("cannot store notifications now; retry later")]
    Unavailable,
    /// The body could not be read.
    #[error("cannot read the request body")]
    BodyRead,
}

impl WebhookError {
    /// The `outcome` label of the refused request.
    fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::UnknownTenant => "unknown_tenant",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Malformed(_) => "malformed",
            Self::Unavailable => "unavailable",
            Self::BodyRead => "body_unreadable",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::UnknownTenant => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Malformed(_) | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

async fn handle_post(
    State(state): State<Arc<WebhookState>>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle_notification(&state, &tenant_id.to_ascii_lowercase(), &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            state.count(error.outcome());
            // Counted always; logged at a bounded rate, so a flood of bad requests cannot
            // flood the log.
            if state.log_limiter.check().is_ok() {
                tracing::warn!(tenant = %tenant_id, %error, "webhook request refused");
            }
            error.into_response()
        }
    }
}

async fn handle_notification(
    state: &WebhookState,
    tenant_id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, WebhookError> {
    let limit = state.max_body_bytes;
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > limit as u64) {
        return Err(WebhookError::TooLarge { limit });
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|error| {
        // The limit is the only error `to_bytes` raises for a well-formed stream.
        if std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
        {
            WebhookError::TooLarge { limit }
        } else {
            WebhookError::BodyRead
        }
    })?;
    let presented = headers
        .get("webhook-authid")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !state.secrets.verify(tenant_id, presented) {
        return Err(WebhookError::Unauthenticated);
    }
    let tenants = state.tenants.load_full();
    let tenant = tenants.get(tenant_id).ok_or(WebhookError::UnknownTenant)?;
    if headers.contains_key("webhook-validationcode") {
        state.count("validation");
        tracing::info!(tenant = %tenant_id, "webhook validation request answered");
        return Ok(StatusCode::OK.into_response());
    }
    if !is_json_content_type(headers) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let items = parse_notifications(tenant, &body)?;
    let mut valid = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(content) => valid.push(content),
            Err(reason) => {
                state.count_items("invalid", 1);
                if state.log_limiter.check().is_ok() {
                    tracing::warn!(tenant = %tenant_id, %reason, "notification item skipped");
                }
            }
        }
    }
    let notified: Vec<String> = valid
        .iter()
        .map(|content| content.content_type.clone())
        .collect();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        state.queue.enqueue(valid).await.map_err(|error| {
            tracing::error!(tenant = %tenant_id, %error, "cannot enqueue notified content; answering 503 so Microsoft retries");
            WebhookError::Unavailable
        })?
    };
    let enqueued = outcomes
        .iter()
        .filter(|o| **o == EnqueueOutcome::Enqueued)
        .count();
    let duplicates = outcomes.len() - enqueued;
    state.count_items("enqueued", enqueued as u64);
    state.count_items("duplicate", duplicates as u64);
    let source = SourceLabels { source: "webhook" };
    state
        .metrics
        .enqueued
        .get_or_create(&source)
        .inc_by(enqueued as u64);
    state
        .metrics
        .deduplicated
        .get_or_create(&source)
        .inc_by(duplicates as u64);
    state.count("accepted");
    if let Some(status) = &state.status {
        for content_type in &notified {
            status.note_notification_now(tenant_id, content_type);
        }
    }
    if enqueued > 0 {
        state.work_available.notify_waiters();
    }
    Ok(
        axum::Json(serde_json::json!({ "enqueued": enqueued, "duplicates": duplicates }))
            .into_response(),
    )
}

fn tenants_by_id(
    tenants: impl IntoIterator<Item = WebhookTenant>,
) -> HashMap<String, WebhookTenant> {
    tenants
        .into_iter()
        .map(|tenant| (tenant.tenant_id.to_ascii_lowercase(), tenant))
        .collect()
}

/// `application/json`, with no parameter, `charset=utf-8`, or Microsoft's bare `utf-8`.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';').map(str::trim);
    let media_type = parts.next().unwrap_or("");
    if !media_type.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|parameter| {
        let parameter = parameter.to_ascii_lowercase().replace(' ', "");
        parameter.is_empty()
            || parameter == "utf-8"
            || parameter == "charset=utf-8"
            || parameter == "charset=\"utf-8\""
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotificationItem {
    tenant_id: String,
    client_id: String,
    content_type: String,
    content_id: String,
    content_uri: String,
    content_created: String,
    #[serde(default)]
    content_expiration: Option<String>,
}

/// Parses a notification body (a JSON array of objects, with or without a leading UTF-8
/// byte-order mark, else [`WebhookError::Malformed`])
/// and checks each item against `tenant` ([`validate_item`]): one verdict per item, in the
/// body's order. Pure: the handler counts, logs and enqueues; the fuzz target calls it too.
pub fn parse_notifications(
    tenant: &WebhookTenant,
    body: &[u8],
) -> Result<Vec<Result<ContentRef, String>>, WebhookError> {
    let notifications: Vec<serde_json::Map<String, serde_json::Value>> =
        json::from_slice(body).map_err(|error| WebhookError::Malformed(error.to_string()))?;
    Ok(notifications
        .into_iter()
        .map(|notification| validate_item(tenant, notification))
        .collect())
}

/// Checks one notification item against the tenant and turns it into a content reference.
/// The error says which rule it broke (it may quote the item's own fields, never ours).
pub fn validate_item(
    tenant: &WebhookTenant,
    item: serde_json::Map<String, serde_json::Value>,
) -> Result<ContentRef, String> {
    let item: NotificationItem = serde_json::from_value(serde_json::Value::Object(item))
        .map_err(|error| format!("malformed item: {error}"))?;
    if !item.tenant_id.eq_ignore_ascii_case(&tenant.tenant_id) {
        return Err(format!(
            "tenantId {} is not this webhook's tenant",
            item.tenant_id
        ));
    }
    if !item.client_id.eq_ignore_ascii_case(&tenant.client_id) {
        return Err(format!(
            "clientId {} is not this tenant's app",
            item.client_id
        ));
    }
    let content_type: ContentType = item
        .content_type
        .parse()
        .map_err(|_| format!("unknown contentType {:?}", item.content_type))?;
    if !tenant.content_types.contains(&content_type) {
        return Err(format!(
            "contentType {content_type} is not collected for this tenant"
        ));
    }
    if item.content_id.trim().is_empty() {
        return Err("empty contentId".into());
    }
    check_content_uri(tenant, &item.content_uri)?;
    let created = parse_api_time(&item.content_created).ok_or_else(|| {
        format!(
            "contentCreated {:?} is not a date-time",
            item.content_created
        )
    })?;
    let expiration = match item.content_expiration.as_deref().map(parse_api_time) {
        Some(Some(expiration)) => expiration,
        Some(None) => return Err("contentExpiration is not a date-time".into()),
        // Microsoft always sends it; without it, keep the documented seven days.
        None => created + Duration::days(7),
    };
    Ok(ContentRef {
        tenant_id: tenant.tenant_id.clone(),
        content_type: content_type.as_str().to_string(),
        content_id: item.content_id,
        content_uri: item.content_uri,
        content_created: created,
        content_expiration: expiration,
        source: Source::Webhook,
    })
}

/// The contentUri must be in the tenant's feed on its API base: same scheme, host and
/// port, no user info, query or fragment, and a path under
/// `{base path}/api/v1.0/{tenant}/activity/feed/` ([`crate::api::feed_uri`], the same rule
/// the poller and the API client apply).
fn check_content_uri(tenant: &WebhookTenant, content_uri: &str) -> Result<(), String> {
    use crate::api::feed_uri::{FeedUriKind, check_feed_uri};
    let uri = Url::parse(content_uri).map_err(|_| "contentUri is not a URL".to_string())?;
    check_feed_uri(
        FeedUriKind::ContentUri,
        &tenant.api_base,
        &tenant.tenant_id,
        &uri,
    )
    .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with_content_type(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_notification_body_with_a_byte_order_mark_parses_like_one_without() {
        let tenant = WebhookTenant {
            tenant_id: "41463f53-8812-40f4-890f-865bf6e35190".into(),
            client_id: "a1b2c3d4-0000-4000-8000-00000000c11e".into(),
            content_types: HashSet::from([ContentType::AuditExchange]),
            api_base: Url::parse("https://manage.office.com").unwrap(),
        };
        let body = r#"[{"tenantId":"41463f53-8812-40f4-890f-865bf6e35190","clientId":"a1b2c3d4-0000-4000-8000-00000000c11e","contentType":"Audit.Exchange","contentId":"20260101$1","contentUri":"https://manage.office.com/api/v1.0/41463f53-8812-40f4-890f-865bf6e35190/activity/feed/audit/20260101$1","contentCreated":"2026-01-01T00:00:00.000Z","contentExpiration":"2026-01-08T00:00:00.000Z"}]"#;
        let plain = parse_notifications(&tenant, body.as_bytes()).unwrap();
        let marked = parse_notifications(&tenant, format!("\u{FEFF}{body}").as_bytes()).unwrap();
        assert_eq!(plain.len(), 1);
        assert_eq!(
            plain[0].as_ref().unwrap(),
            marked[0].as_ref().expect("the marked item is valid")
        );
    }

    #[test]
    fn microsofts_content_type_variants_are_json() {
        for accepted in [
            "application/json; utf-8",
            "application/json; charset=utf-8",
            "application/json",
            "Application/JSON;charset=UTF-8",
        ] {
            assert!(
                is_json_content_type(&headers_with_content_type(accepted)),
                "{accepted}"
            );
        }
        for refused in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
        ] {
            assert!(
                !is_json_content_type(&headers_with_content_type(refused)),
                "{refused}"
            );
        }
        assert!(!is_json_content_type(&HeaderMap::new()));
    }
}

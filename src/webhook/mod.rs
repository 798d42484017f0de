//! The subscription webhook: where Microsoft POSTs the validation request and the
//! content-availability notifications.
//!
//! One URL per tenant, `{public URL}/{tenant id}`, so even the validation request (which
//! names no tenant) maps to one. Everything up to step 6 is decided from the path and the
//! headers alone: no byte of the body is read for a request that is not authenticated, so
//! an unauthenticated client cannot make the listener hold bodies in memory. Checks run in
//! this order, each answering at once:
//!
//! 1. the tenant segment of the path must be a hyphenated GUID → 404, refused before it is
//!    logged (it is attacker-controlled text);
//! 2. declared body size (`Content-Length`): over the limit → 413;
//! 3. `Webhook-AuthID` (any case) must be the tenant's authId ([`auth_id`]), compared in
//!    constant time → 401;
//! 4. the tenant in the path must be configured → 404;
//! 5. a request carrying `Webhook-ValidationCode` is the validation handshake → 200,
//!    whatever its body, which is never read (Microsoft's documented body is not even
//!    JSON);
//! 6. content type must be JSON; Microsoft's non-standard `application/json; utf-8` is
//!    accepted, as are `charset=utf-8` and no parameter → 415;
//! 7. the queue must be below its hard limit ([`QueueLimit`], `ops.queue_hard_limit`) →
//!    503, so Microsoft retries later;
//! 8. a body slot: at most [`BodyLimits::max_concurrent`] bodies are read at once; a
//!    request past the cap waits [`BodyLimits::wait`] for a slot → 503;
//! 9. the body is read under its limit (a chunked body over it → 413) and must be a JSON
//!    array of objects, with or without a leading UTF-8 byte-order mark
//!    ([`parse_notifications`]) → 400.
//!
//! Then every item is validated ([`validate_item`]): the tenant matches the URL, the
//! clientId is the tenant's app, the content type is enabled for the tenant, and the
//! contentUri is on the tenant's API base (scheme, host and port) with the tenant id in
//! its path — otherwise our token would later be sent to whatever host a forged
//! notification named. Invalid items of an authenticated batch are skipped, logged and
//! counted. The valid ones are enqueued durably, and only then is 200 answered: a 200
//! means every valid item is on disk. When the queue cannot accept, 503 makes Microsoft
//! retry later.
//!
//! What the webhook tells the operator is in [`events`]: refusals are counted always and
//! logged at a bounded rate, with one rate limiter per refusal reason (and one for skipped
//! items), so a flood of one kind cannot silence the others. Text that comes from the
//! request is logged only escaped ([`loggable`]).

pub mod auth_id;
pub mod events;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Duration;
use reqwest::Url;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::json;
use crate::api::types::parse_api_time;
use crate::config::ContentType;
use crate::intake::{Intake, IntakePermit};
use crate::ops::status::StatusSource;
use crate::ops::{Metrics, QueueFull, QueueLimit};
use crate::queue::{ContentQueue, ContentRef, Source};
pub use auth_id::WebhookSecrets;
use events::WebhookTelemetry;
pub use events::loggable;
use tokio::sync::{Notify, Semaphore};

/// Default limit of a notification body: Microsoft's batches are far smaller.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// How many notification bodies are read at once, and how long a request waits for a
/// slot when they all are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// Bodies read at once, across all connections (`server.max_concurrent_bodies`).
    /// Default: 64.
    pub max_concurrent: usize,
    /// How long a request past the cap waits for a slot before it is answered 503.
    /// Default: 1 s.
    pub wait: StdDuration,
}

impl Default for BodyLimits {
    fn default() -> Self {
        Self {
            max_concurrent: 64,
            wait: StdDuration::from_secs(1),
        }
    }
}

/// True for a tenant id as Microsoft writes it: a hyphenated GUID, any case.
fn is_hyphenated_guid(text: &str) -> bool {
    text.len() == 36 && uuid::Uuid::try_parse(text).is_ok()
}

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
    intake: Intake,
    max_body_bytes: usize,
    telemetry: WebhookTelemetry,
    body_permits: Semaphore,
    body_wait: StdDuration,
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
            intake: Intake::new(queue, metrics.clone(), work_available),
            max_body_bytes,
            telemetry: WebhookTelemetry::new(metrics),
            body_permits: Semaphore::new(BodyLimits::default().max_concurrent),
            body_wait: BodyLimits::default().wait,
        }
    }

    /// Reads at most `limits.max_concurrent` bodies at once (default: [`BodyLimits`]'s).
    pub fn with_body_limits(mut self, limits: BodyLimits) -> Self {
        self.body_permits = Semaphore::new(limits.max_concurrent.max(1));
        self.body_wait = limits.wait;
        self
    }

    /// Answers 503 while the queue is at its hard limit (default: unbounded).
    pub fn with_queue_limit(mut self, limit: Arc<QueueLimit>) -> Self {
        self.intake = self.intake.with_limit(limit);
        self
    }

    /// Enqueues through `intake` (the service's, shared with the poller and backfill)
    /// instead of the one built over `new`'s queue.
    pub fn with_intake(mut self, intake: Intake) -> Self {
        self.intake = intake;
        self
    }

    /// Makes `tenants` the tenants the webhook accepts: a request for a tenant no longer
    /// among them is refused (404) from now on, one for a new tenant accepted.
    pub fn replace_tenants(&self, tenants: impl IntoIterator<Item = WebhookTenant>) {
        self.tenants.store(Arc::new(tenants_by_id(tenants)));
    }

    /// Notes each accepted notification's time in `status` (`last_notification`).
    pub fn with_status(mut self, status: Arc<StatusSource>) -> Self {
        self.telemetry.status = Some(status);
        self
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
    /// The tenant segment of the path is not a GUID (never logged: attacker text).
    #[error("the path does not end with a tenant id")]
    NotATenant,
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
    /// Every body slot stayed taken for the whole wait.
    #[error("too many notifications at once; retry later")]
    Busy,
    /// The queue is at its hard limit.
    #[error("{0}")]
    QueueFull(QueueFull),
}

impl WebhookError {
    /// The `outcome` label of the refused request.
    fn outcome(&self) -> &'static str {
        match self {
            Self::NotATenant => "not_a_tenant",
            Self::TooLarge { .. } => "too_large",
            Self::Unauthenticated => "unauthenticated",
            Self::UnknownTenant => "unknown_tenant",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Malformed(_) => "malformed",
            Self::Unavailable => "unavailable",
            Self::BodyRead => "body_unreadable",
            Self::Busy => "busy",
            Self::QueueFull(_) => "queue_full",
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotATenant | Self::UnknownTenant => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Malformed(_) | Self::BodyRead => StatusCode::BAD_REQUEST,
            Self::Unavailable | Self::Busy | Self::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
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
    request: Request,
) -> Response {
    // The request's own header map, not a copy (the `HeaderMap` extractor clones it).
    let (parts, body) = request.into_parts();
    // Checked before anything logs it: what passes is hex digits and hyphens.
    let result = if is_hyphenated_guid(&tenant_id) {
        let tenant = lowercase(&tenant_id);
        handle_notification(&state, &tenant, &parts.headers, body).await
    } else {
        Err(WebhookError::NotATenant)
    };
    match result {
        Ok(response) => response,
        Err(error) => {
            events::RequestRefused {
                tenant_id: &tenant_id,
                error: &error,
            }
            .emit(&state.telemetry);
            error.into_response()
        }
    }
}

/// `text` in lowercase, borrowed when it already is (Microsoft writes tenant ids so).
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// Steps 2 to 9 of the module doc: everything but the body first.
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
        events::ValidationAnswered { tenant_id }.emit(&state.telemetry);
        return Ok(StatusCode::OK.into_response());
    }
    if !is_json_content_type(headers) {
        return Err(WebhookError::UnsupportedMediaType);
    }
    let permit = state
        .intake
        .reserve(Source::Webhook)
        .await
        .map_err(WebhookError::QueueFull)?;
    let body = read_body(state, body).await?;
    let items = parse_notifications(tenant, &body)?;
    drop(body);
    let mut valid = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(content) => valid.push(content),
            Err(reason) => events::ItemSkipped {
                tenant_id,
                reason: &reason,
            }
            .emit(&state.telemetry),
        }
    }
    enqueue_valid(state, permit, tenant_id, valid).await
}

/// Reads the body under its limit, holding one of the body slots meanwhile (waiting for
/// one at most [`BodyLimits::wait`]).
async fn read_body(state: &WebhookState, body: Body) -> Result<axum::body::Bytes, WebhookError> {
    let limit = state.max_body_bytes;
    // A free slot is taken at once; only a request that must wait arms the wait's timer.
    let _permit = match state.body_permits.try_acquire() {
        Ok(permit) => permit,
        Err(_) => tokio::time::timeout(state.body_wait, state.body_permits.acquire())
            .await
            .map_err(|_| WebhookError::Busy)?
            .map_err(|_| WebhookError::Busy)?,
    };
    let in_flight = &state.telemetry.metrics.webhook_bodies_in_flight;
    in_flight.inc();
    let read = axum::body::to_bytes(body, limit).await;
    in_flight.dec();
    read.map_err(|error| {
        // The limit is the only error `to_bytes` raises for a well-formed stream.
        if std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>())
        {
            WebhookError::TooLarge { limit }
        } else {
            WebhookError::BodyRead
        }
    })
}

/// Enqueues the valid items durably, then answers 200 with what was new.
async fn enqueue_valid(
    state: &WebhookState,
    permit: IntakePermit<'_>,
    tenant_id: &str,
    valid: Vec<ContentRef>,
) -> Result<Response, WebhookError> {
    // Each content type once: a notification's items are usually all of one type.
    let mut notified: Vec<String> = Vec::with_capacity(1);
    for content in &valid {
        if !notified.contains(&content.content_type) {
            notified.push(content.content_type.clone());
        }
    }
    let admitted = permit.enqueue(valid).await.map_err(|error| {
        events::EnqueueFailed {
            tenant_id,
            error: &error,
        }
        .emit(&state.telemetry);
        WebhookError::Unavailable
    })?;
    events::NotificationAccepted {
        tenant_id,
        content_types: &notified,
        admitted,
    }
    .emit(&state.telemetry);
    // Two numbers: written directly rather than through a JSON value.
    let body = format!(
        r#"{{"enqueued":{},"duplicates":{}}}"#,
        admitted.enqueued, admitted.duplicates
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
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

/// One notification item, read straight from its bytes: the fields that are only compared
/// borrow the body unless they hold escapes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NotificationItem<'body> {
    #[serde(borrow)]
    tenant_id: Cow<'body, str>,
    #[serde(borrow)]
    client_id: Cow<'body, str>,
    #[serde(borrow)]
    content_type: Cow<'body, str>,
    content_id: String,
    content_uri: String,
    #[serde(borrow)]
    content_created: Cow<'body, str>,
    #[serde(default, borrow)]
    content_expiration: Option<Cow<'body, str>>,
}

/// Parses a notification body (a JSON array of objects, with or without a leading UTF-8
/// byte-order mark, else [`WebhookError::Malformed`])
/// and checks each item against `tenant` ([`validate_item`]): one verdict per item, in the
/// body's order. Pure: the handler counts, logs and enqueues; the fuzz target calls it too.
pub fn parse_notifications(
    tenant: &WebhookTenant,
    body: &[u8],
) -> Result<Vec<Result<ContentRef, String>>, WebhookError> {
    // One pass over the body checks it is an array and delimits its elements; each element
    // is then read once, straight into its fields (no intermediate map of values).
    let notifications: Vec<Box<RawValue>> =
        json::from_slice(body).map_err(|error| WebhookError::Malformed(error.to_string()))?;
    if notifications
        .iter()
        .any(|notification| !notification.get().starts_with('{'))
    {
        return Err(WebhookError::Malformed(
            "an element of the array is not an object".to_string(),
        ));
    }
    Ok(notifications
        .iter()
        .map(|notification| validate_item(tenant, notification))
        .collect())
}

/// Checks one notification item (a JSON object) against the tenant and turns it into a
/// content reference. The error says which rule it broke (it may quote the item's own
/// fields, never ours).
pub fn validate_item(tenant: &WebhookTenant, item: &RawValue) -> Result<ContentRef, String> {
    let item: NotificationItem<'_> =
        serde_json::from_str(item.get()).map_err(|error| format!("malformed item: {error}"))?;
    if !item.tenant_id.eq_ignore_ascii_case(&tenant.tenant_id) {
        return Err(format!(
            "tenantId {:?} is not this webhook's tenant",
            item.tenant_id
        ));
    }
    if !item.client_id.eq_ignore_ascii_case(&tenant.client_id) {
        return Err(format!(
            "clientId {:?} is not this tenant's app",
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

    fn commercial_tenant() -> WebhookTenant {
        WebhookTenant {
            tenant_id: "41463f53-8812-40f4-890f-865bf6e35190".into(),
            client_id: "a1b2c3d4-0000-4000-8000-00000000c11e".into(),
            content_types: HashSet::from([ContentType::AuditExchange]),
            api_base: Url::parse("https://manage.office.com").unwrap(),
        }
    }

    #[test]
    fn escaped_fields_parse_like_plain_ones_and_a_bad_item_is_skipped_alone() {
        let tenant = commercial_tenant();
        // `\u0034` is "4" and `\/` is "/": the same item, written with escapes.
        let escaped = r#"{"tenantId":"\u00341463f53-8812-40f4-890f-865bf6e35190","clientId":"a1b2c3d4-0000-4000-8000-00000000c11e","contentType":"Audit.Exchange","contentId":"20260101$1","contentUri":"https:\/\/manage.office.com\/api\/v1.0\/41463f53-8812-40f4-890f-865bf6e35190\/activity\/feed\/audit\/20260101$1","contentCreated":"2026-01-01T00:00:00.000Z","contentExpiration":"2026-01-08T00:00:00.000Z"}"#;
        let body = format!(
            r#"[{escaped}, {{"tenantId":"41463f53-8812-40f4-890f-865bf6e35190"}}, {escaped}]"#
        );
        let items = parse_notifications(&tenant, body.as_bytes()).unwrap();
        assert_eq!(items.len(), 3);
        let first = items[0].as_ref().expect("the escaped item is valid");
        assert_eq!(
            first.content_uri,
            "https://manage.office.com/api/v1.0/41463f53-8812-40f4-890f-865bf6e35190/activity/feed/audit/20260101$1"
        );
        assert!(items[1].as_ref().unwrap_err().starts_with("malformed item"));
        assert_eq!(items[2].as_ref().unwrap(), first);
    }

    #[test]
    fn a_body_whose_elements_are_not_all_objects_is_malformed() {
        let tenant = commercial_tenant();
        for body in [r#"[{}, 1]"#, r#"["x"]"#, r#"{"tenantId":"x"}"#, "[{}"] {
            assert!(
                matches!(
                    parse_notifications(&tenant, body.as_bytes()),
                    Err(WebhookError::Malformed(_))
                ),
                "{body}"
            );
        }
        assert!(parse_notifications(&tenant, b" [ ] ").unwrap().is_empty());
    }

    #[test]
    fn only_a_hyphenated_guid_is_a_tenant_segment() {
        assert!(is_hyphenated_guid("41463F53-8812-40f4-890f-865bf6e35190"));
        for refused in [
            "41463f53881240f4890f865bf6e35190",
            "{41463f53-8812-40f4-890f-865bf6e35190}",
            "x\n2026",
            "",
            "41463f53-8812-40f4-890f-865bf6e3519g",
        ] {
            assert!(!is_hyphenated_guid(refused), "{refused}");
        }
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

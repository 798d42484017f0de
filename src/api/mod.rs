//! Client of the Office 365 Management Activity API for one tenant.
//!
//! Guarantees:
//! - A token is only ever sent to the tenant's configured API base: before every request
//!   that carries one the URL's scheme, host and port must equal the base's, and a
//!   `NextPageUri` to follow or a contentUri to fetch must moreover be in the tenant's
//!   feed ([`feed_uri`]: no user info, query or fragment where none belongs, the path
//!   under `{base path}/api/v1.0/{tenant}/activity/feed/`), or the call fails unsent
//!   with [`ApiError::ForeignUrl`].
//! - No redirect is followed ([`http`]): a 3xx answer fails the call as
//!   [`ErrorKind::Redirected`], naming the `Location` host, and is retried on the
//!   caller's backoff like any failing endpoint.
//! - Every call of the tenant shares one request budget (default 2,000 per minute, the
//!   documented baseline); a throttling answer pauses the whole tenant for its
//!   `Retry-After` (or a default pause) before any further call.
//! - A 401 renews the token once and retries once.
//! - `PublisherIdentifier` is sent on every operation and blob fetch when configured.
//! - Errors are classified once, here ([`error::classify`]); callers decide by
//!   [`ErrorKind`], never by parsing messages.
//! - Every JSON answer is parsed by [`json::from_slice`], so a leading UTF-8 byte-order
//!   mark (which Microsoft sends since May 2025) is accepted everywhere.
//!
//! Single attempts otherwise: retry policies belong to the callers (workers, poller,
//! subscription manager), which know what a retry costs.

pub mod error;
pub mod feed_uri;
pub mod gate;
pub mod http;
pub mod json;
pub mod types;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderMap};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::time::Instant;

use crate::auth::TokenProvider;
use crate::cloud::Endpoints;
use crate::ops::Metrics;
use crate::ops::metrics::{ApiRequestLabels, TenantLabels};
pub use error::{ApiError, ErrorKind};
use feed_uri::{FeedUriError, FeedUriKind, check_feed_uri};
use types::{ContentItem, SubscriptionStatus, WebhookRegistration, format_api_time};

/// Pause after a throttling answer that names no `Retry-After`.
pub const DEFAULT_THROTTLE_PAUSE: Duration = Duration::from_secs(30);

/// Settings of one tenant's client.
#[derive(Clone, Debug)]
pub struct ApiClientConfig {
    /// The tenant GUID.
    pub tenant_id: String,
    /// The tenant's login and API bases.
    pub endpoints: Endpoints,
    /// `PublisherIdentifier`: the vendor's tenant GUID.
    pub publisher_id: Option<String>,
    /// The tenant's request budget per minute.
    pub requests_per_minute: NonZeroU32,
}

/// The outcome of a subscription start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartOutcome {
    /// Started or updated; the service's view of it.
    Started(SubscriptionStatus),
    /// AF20024: already enabled with these properties.
    AlreadyEnabled,
}

/// The tenant's shared request budget and throttling pause.
struct RequestBudget {
    limiter: DefaultDirectRateLimiter,
    paused_until: Mutex<Option<Instant>>,
    /// True while `paused_until` may hold a pause (set and cleared under its lock): lets
    /// [`RequestBudget::paused`], which the workers ask of every tenant before each lease,
    /// and `acquire` answer without the lock when the tenant was not throttled.
    pause_set: AtomicBool,
}

impl RequestBudget {
    /// Requests are spaced evenly at `per_minute`, with a burst of a tenth of a second's
    /// share. A full minute's burst would let a fresh or idle client send the whole
    /// minute's budget at once, which a service counting from the first request answers
    /// with throttling, and the pause after it wastes far more than the burst gained.
    fn new(per_minute: NonZeroU32) -> Self {
        let burst = NonZeroU32::new(per_minute.get() / 600).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst)),
            paused_until: Mutex::new(None),
            pause_set: AtomicBool::new(false),
        }
    }

    /// Waits out a throttling pause, then for a slot in the budget.
    async fn acquire(&self) {
        while let Some(until) = self.pause() {
            tokio::time::sleep_until(until).await;
        }
        self.limiter.until_ready().await;
    }

    fn pause_for(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut paused_until = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused_until.is_none_or(|current| current < until) {
            *paused_until = Some(until);
        }
        self.pause_set.store(true, Ordering::Release);
    }

    /// The end of the current pause, if the tenant is paused now (an ended pause is
    /// cleared).
    fn pause(&self) -> Option<Instant> {
        if !self.pause_set.load(Ordering::Acquire) {
            return None;
        }
        let mut paused_until = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        match *paused_until {
            Some(until) if until > Instant::now() => Some(until),
            _ => {
                *paused_until = None;
                self.pause_set.store(false, Ordering::Release);
                None
            }
        }
    }

    fn paused(&self) -> bool {
        self.pause().is_some()
    }
}

/// One tenant's API client. Cheap to share behind an `Arc`.
pub struct ApiClient {
    http: reqwest::Client,
    config: ApiClientConfig,
    tokens: Arc<TokenProvider>,
    budget: RequestBudget,
    metrics: Option<ClientMetrics>,
    /// The `Date` header of the latest answer (success or error), for clock-skew checks.
    last_server_date: Mutex<Option<DateTime<Utc>>>,
}

/// Where a client counts its requests.
struct ClientMetrics {
    metrics: Arc<Metrics>,
    tenant_label: String,
}

impl ApiClient {
    /// A client using `http` (proxy, CA, User-Agent set by the caller) and `tokens`.
    pub fn new(http: reqwest::Client, config: ApiClientConfig, tokens: Arc<TokenProvider>) -> Self {
        let budget = RequestBudget::new(config.requests_per_minute);
        Self {
            http,
            config,
            tokens,
            budget,
            metrics: None,
            last_server_date: Mutex::new(None),
        }
    }

    /// Counts this client's requests and throttles in `metrics` under `tenant_name`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, tenant_name: &str) -> Self {
        let tenant_label = metrics.tenant_label(tenant_name);
        self.metrics = Some(ClientMetrics {
            metrics,
            tenant_label,
        });
        self
    }

    fn count(&self, operation: &'static str, outcome: Result<(), &ApiError>) {
        let Some(client_metrics) = &self.metrics else {
            return;
        };
        let (outcome, af_code) = match outcome {
            Ok(()) => ("ok", String::new()),
            Err(error) => (
                error_outcome(error),
                error.af_code().unwrap_or_default().to_string(),
            ),
        };
        let metrics = &client_metrics.metrics;
        metrics
            .api_requests
            .get_or_create(&ApiRequestLabels {
                operation,
                outcome,
                af_code,
            })
            .inc();
        if outcome == "throttled" {
            metrics
                .throttled
                .get_or_create(&TenantLabels {
                    tenant: client_metrics.tenant_label.clone(),
                })
                .inc();
        }
    }

    /// The tenant GUID.
    pub fn tenant_id(&self) -> &str {
        &self.config.tenant_id
    }

    /// The token provider of this tenant.
    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// The service's time as its latest answer's `Date` header gave it (second
    /// precision), success or error; `None` before any answer carried one. The poller
    /// compares it with its clock when a listing window is refused (AF20030/AF20055).
    pub fn last_server_date(&self) -> Option<DateTime<Utc>> {
        *self
            .last_server_date
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn note_server_date(&self, headers: &HeaderMap) {
        if let Some(date) = server_date(headers) {
            *self
                .last_server_date
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(date);
        }
    }

    /// True while the tenant is paused by a throttling answer.
    pub fn is_throttled(&self) -> bool {
        self.budget.paused()
    }

    /// True while no call of the tenant can succeed for now: throttled, or its token
    /// endpoint failing with the next attempt not yet due. Workers skip its content then.
    pub fn is_paused(&self) -> bool {
        self.is_throttled() || self.tokens.in_outage()
    }

    /// `{api base}/api/v1.0/{tenant}/activity/feed/{operation}?{query}&PublisherIdentifier=…`.
    fn feed_url(&self, operation: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.config.endpoints.feed_root(&self.config.tenant_id);
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.extend(operation.split('/'));
        }
        {
            let mut pairs = url.query_pairs_mut();
            for (key, value) in query {
                pairs.append_pair(key, value);
            }
            if let Some(publisher) = &self.config.publisher_id {
                pairs.append_pair("PublisherIdentifier", publisher);
            }
        }
        url
    }

    /// Fails unless `url` has the API base's scheme, host and port.
    pub fn check_origin(&self, url: &Url) -> Result<(), ApiError> {
        if self.config.endpoints.is_on_api_origin(url) {
            return Ok(());
        }
        Err(self.foreign(FeedUriError::ForeignOrigin {
            kind: "request URL",
            origin: url.origin().ascii_serialization(),
            expected: self.config.endpoints.api.origin().ascii_serialization(),
        }))
    }

    /// Parses a contentUri and fails unless it is in the tenant's feed ([`feed_uri`]): the
    /// check made before fetching it and before enqueueing a listed item.
    pub fn check_content_uri(&self, content_uri: &str) -> Result<Url, ApiError> {
        let url = Url::parse(content_uri).map_err(|error| ApiError::Decode {
            tenant_id: self.config.tenant_id.clone(),
            operation: "blob",
            reason: format!("contentUri is not a URL: {error}"),
        })?;
        self.check_feed_uri(FeedUriKind::ContentUri, &url)?;
        Ok(url)
    }

    fn check_feed_uri(&self, kind: FeedUriKind, url: &Url) -> Result<(), ApiError> {
        let endpoints = &self.config.endpoints;
        check_feed_uri(kind, &endpoints.api, &self.config.tenant_id, url)
            .map_err(|reason| self.foreign(reason))
    }

    fn foreign(&self, reason: FeedUriError) -> ApiError {
        ApiError::ForeignUrl {
            tenant_id: self.config.tenant_id.clone(),
            reason,
        }
    }

    /// Sends one request with the tenant's token, after the origin check and the budget;
    /// renews the token once on 401. Returns the response if it is a success.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        let result = self.send_once(operation, method, url, json_body).await;
        self.count(operation, result.as_ref().map(drop));
        result
    }

    async fn send_once(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        json_body: Option<&serde_json::Value>,
    ) -> Result<Response, ApiError> {
        self.check_origin(&url)?;
        let mut token = self.tokens.token().await?;
        for attempt in 0..2 {
            self.budget.acquire().await;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.bearer()));
            if let Some(body) = json_body {
                request = request.json(body);
            }
            let response = request
                .send()
                .await
                .map_err(|error| self.transport(operation, error))?;
            self.note_server_date(response.headers());
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                token = self.tokens.renew_after_rejection(&token).await?;
                continue;
            }
            if response.status().is_success() {
                return Ok(response);
            }
            return Err(self.service_error(operation, response).await);
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn transport(&self, operation: &'static str, error: reqwest::Error) -> ApiError {
        ApiError::Transport {
            tenant_id: self.config.tenant_id.clone(),
            operation,
            reason: error.to_string(),
        }
    }

    async fn service_error(&self, operation: &'static str, response: Response) -> ApiError {
        let status = response.status();
        let retry_after = http::retry_after(response.headers());
        let server_date = server_date(response.headers());
        if let Some(target) = http::redirect_target(status, response.headers(), response.url()) {
            return ApiError::Service {
                tenant_id: self.config.tenant_id.clone(),
                operation,
                kind: ErrorKind::Redirected,
                status: status.as_u16(),
                af_code: None,
                message: format!("redirected to {target}, which is never followed"),
                retry_after,
                server_date,
            };
        }
        let body = response.bytes().await.unwrap_or_default();
        let (af_code, message) = error::parse_error_body(&body);
        let kind = error::classify(status, af_code.as_deref(), &message);
        if kind == ErrorKind::Throttled {
            self.budget
                .pause_for(retry_after.unwrap_or(DEFAULT_THROTTLE_PAUSE));
        }
        ApiError::Service {
            tenant_id: self.config.tenant_id.clone(),
            operation,
            kind,
            status: status.as_u16(),
            af_code,
            message,
            retry_after,
            server_date,
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        response: Response,
    ) -> Result<T, ApiError> {
        let body = response
            .bytes()
            .await
            .map_err(|error| self.transport(operation, error))?;
        json::from_slice(&body).map_err(|error| ApiError::Decode {
            tenant_id: self.config.tenant_id.clone(),
            operation,
            reason: error.to_string(),
        })
    }

    /// `POST subscriptions/start`; with a webhook, Microsoft validates it before answering.
    pub async fn start_subscription(
        &self,
        content_type: &str,
        webhook: Option<&WebhookRegistration>,
    ) -> Result<StartOutcome, ApiError> {
        const OPERATION: &str = "subscriptions/start";
        let url = self.feed_url("subscriptions/start", &[("contentType", content_type)]);
        let body = webhook.map(|webhook| serde_json::json!({ "webhook": webhook }));
        match self.send(OPERATION, Method::POST, url, body.as_ref()).await {
            Ok(response) => Ok(StartOutcome::Started(self.json(OPERATION, response).await?)),
            Err(error) if error.kind() == Some(ErrorKind::AlreadyEnabled) => {
                Ok(StartOutcome::AlreadyEnabled)
            }
            Err(error) => Err(error),
        }
    }

    /// `POST subscriptions/stop` (loses the gap until a later start).
    pub async fn stop_subscription(&self, content_type: &str) -> Result<(), ApiError> {
        let url = self.feed_url("subscriptions/stop", &[("contentType", content_type)]);
        self.send("subscriptions/stop", Method::POST, url, None)
            .await
            .map(drop)
    }

    /// `GET subscriptions/list`.
    pub async fn list_subscriptions(&self) -> Result<Vec<SubscriptionStatus>, ApiError> {
        const OPERATION: &str = "subscriptions/list";
        let url = self.feed_url("subscriptions/list", &[]);
        let response = self.send(OPERATION, Method::GET, url, None).await?;
        self.json(OPERATION, response).await
    }

    /// The first page of `GET subscriptions/content` for `[start, end)`.
    pub async fn list_content(
        &self,
        content_type: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<ContentPage, ApiError> {
        let (start, end) = (format_api_time(start), format_api_time(end));
        let url = self.feed_url(
            "subscriptions/content",
            &[
                ("contentType", content_type),
                ("startTime", &start),
                ("endTime", &end),
            ],
        );
        self.content_page(url).await
    }

    /// A further page, from a `NextPageUri` followed verbatim (after the origin check).
    pub async fn content_page(&self, url: Url) -> Result<ContentPage, ApiError> {
        const OPERATION: &str = "subscriptions/content";
        let response = self.send(OPERATION, Method::GET, url, None).await?;
        let next_page = next_page(response.headers());
        let server_date = server_date(response.headers());
        let items = self.json(OPERATION, response).await?;
        let next_page = match next_page {
            Some(text) => Some(Url::parse(&text).map_err(|error| ApiError::Decode {
                tenant_id: self.config.tenant_id.clone(),
                operation: OPERATION,
                reason: format!("NextPageUri is not a URL: {error}"),
            })?),
            None => None,
        };
        if let Some(url) = &next_page {
            self.check_feed_uri(FeedUriKind::NextPageUri, url)?;
        }
        Ok(ContentPage {
            items,
            next_page,
            server_date,
        })
    }

    /// `GET {contentUri}?PublisherIdentifier=…`: the blob response, body unread, so the
    /// caller can stream it. The contentUri is checked first ([`Self::check_content_uri`]).
    pub async fn fetch_blob(&self, content_uri: &str) -> Result<Response, ApiError> {
        let checked = self.check_content_uri(content_uri);
        if let Err(error) = &checked {
            self.count("blob", Err(error));
        }
        let mut url = checked?;
        if let Some(publisher) = &self.config.publisher_id {
            url.query_pairs_mut()
                .append_pair("PublisherIdentifier", publisher);
        }
        self.send("blob", Method::GET, url, None).await
    }
}

/// The `outcome` label of a failed request.
fn error_outcome(error: &ApiError) -> &'static str {
    match error {
        ApiError::Service { kind, .. } => match kind {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::ContentExpired => "expired",
            ErrorKind::ContentMissing => "missing",
            ErrorKind::AlreadyEnabled => "already_enabled",
            ErrorKind::Redirected => "redirected",
            _ => "refused",
        },
        ApiError::Auth(_) => "token_failed",
        ApiError::Transport { .. } => "transport",
        ApiError::ForeignUrl { .. } => "foreign_url",
        ApiError::Decode { .. } => "decode",
    }
}

/// One page of a content listing.
#[derive(Clone, Debug)]
pub struct ContentPage {
    /// The entries of this page.
    pub items: Vec<ContentItem>,
    /// The next page to follow, already checked to be on the API base.
    pub next_page: Option<Url>,
    /// The answer's `Date` header: the service's time, to second precision.
    pub server_date: Option<DateTime<Utc>>,
}

/// The `Date` header (RFC 7231 IMF-fixdate, e.g. `Thu, 26 Nov 2026 13:30:12 GMT`).
fn server_date(headers: &HeaderMap) -> Option<DateTime<Utc>> {
    let text = headers.get(reqwest::header::DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(text.trim())
        .ok()
        .map(|date| date.with_timezone(&Utc))
}

/// `NextPageUri` or `NextPageUrl` (header names are case-insensitive).
fn next_page(headers: &HeaderMap) -> Option<String> {
    ["NextPageUri", "NextPageUrl"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

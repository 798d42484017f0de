//! Emulator of Microsoft's Office 365 Management Activity API, with its login endpoints,
//! on one listener (plain HTTP or HTTPS).
//!
//! Faithful to `../shared/spec/o365-management-api.md`, not to our client: where
//! Microsoft rejects a request, so does the emulator, with the same status and AF code,
//! and what it sends (notifications, validation requests) looks like what Microsoft
//! sends, down to the odd `Content-Type: application/json; utf-8` header.
//!
//! Files:
//! - [`scenario`]: the tenants, apps, publication and faults (TOML or CLI flags).
//! - [`token`]: token endpoints v1/v2 (secret, Basic, client assertion), OpenID
//!   discovery, and the verification of bearer tokens on the feed.
//! - [`feed`]: subscriptions, content listing, notifications listing, DLP types, blobs,
//!   per-tenant throttling and fault injection.
//! - [`graph`]: Microsoft Graph's risk detections (`/v1.0/identityProtection/riskDetections`),
//!   on the same listener, with Graph's tokens, errors, paging and faults.
//! - [`publish`]: blob publication and webhook delivery (validation and notifications).
//! - [`control`]: `/_emulator/*`, inspection and run-time control.
//! - [`error`]: Microsoft's error envelope and the rejection bookkeeping.
//! - [`bom`]: the `bom_bodies` fault, a UTF-8 byte-order mark in front of every JSON body
//!   of a tenant, as Microsoft sends since May 2025.
//! - [`redirect`]: the `redirect_to` fault, a redirect to another host from the token,
//!   listing or blob endpoint.
//!
//! Every request is logged (time, tenant, endpoint, status, `User-Agent`) and every
//! rejection counted by code and rule, for `GET /_emulator/requests` and `/rejections`.
//! Time comes from the library's [`Clock`], so tests move it to exercise 24-hour and
//! 7-day rules; every answer's `Date` header reads that clock too, as Microsoft's `Date`
//! is Microsoft's time (the client judges clock skew and content expiration by it).

pub mod bom;
pub mod control;
pub mod error;
pub mod feed;
pub mod graph;
pub mod publish;
pub mod redirect;
pub mod scenario;
pub mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use error::Rejection;
use scenario::Scenario;

/// How to start an [`ApiEmulator`].
#[derive(Clone, Debug)]
pub struct ApiEmulatorConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The emulated world.
    pub scenario: Scenario,
    /// Serve HTTPS with this PEM certificate chain and key; plain HTTP when `None`.
    pub tls: Option<TlsFiles>,
    /// Extra CA (PEM) trusted when POSTing to webhooks (e.g. `certs/dev/ca.pem`).
    pub webhook_ca: Option<PathBuf>,
    /// The time source shared with the test, if any.
    pub clock: Clock,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiEmulatorError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] crate::server::TlsError),
    /// The scenario cannot be served (a records file or certificate unreadable…).
    #[error("cannot load the scenario: {0}")]
    Scenario(String),
}

/// One request as the emulator saw it, for `GET /_emulator/requests`.
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// When it was answered, by the emulator's clock.
    pub time: DateTime<Utc>,
    /// The tenant in the path, if any.
    pub tenant: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The route template that matched (e.g. `/{tenant}/oauth2/v2.0/token`), or the path.
    pub endpoint: String,
    /// HTTP status answered.
    pub status: u16,
    /// The client's `User-Agent`.
    #[serde(rename = "userAgent")]
    pub user_agent: Option<String>,
}

/// Counts of rejected requests, for `GET /_emulator/rejections`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RejectionCounts {
    /// By error code (`AF20030`, `AADSTS7000215`, …).
    pub by_code: BTreeMap<String, u64>,
    /// By emulator rule (`window_too_long`, `bad_secret`, …).
    pub by_rule: BTreeMap<String, u64>,
}

/// What the emulator observed, for inspection.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Every request, in order of answer.
    pub requests: Vec<RequestRecord>,
    /// Rejections by code and rule.
    pub rejections: RejectionCounts,
}

/// The state shared by every handler and background task of one emulator.
pub struct ApiState {
    /// The emulator's time source.
    pub clock: Clock,
    /// The fixed world description.
    pub scenario: Scenario,
    /// Base URL clients reach this emulator at (`http(s)://127.0.0.1:PORT`), serving both
    /// the login endpoints and the API: the API host of every emulated tenant.
    pub base_url: String,
    /// Token issuance and verification (keys, certificates).
    pub tokens: token::TokenState,
    /// Subscriptions, content, faults, throttling: the mutable world.
    pub feed: feed::FeedState,
    /// Webhook delivery (HTTP client, retry state).
    pub publisher: publish::Publisher,
    /// Microsoft Graph: Graph roles, licences and risk detections per tenant.
    pub graph: graph::GraphState,
    /// Request log and rejection counts.
    pub inspection: Mutex<Inspection>,
    /// Cancelled when the emulator stops; background tasks watch it.
    pub shutdown: CancellationToken,
}

impl ApiState {
    /// Locks the inspection record.
    pub fn inspection(&self) -> std::sync::MutexGuard<'_, Inspection> {
        self.inspection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running API emulator.
pub struct ApiEmulator {
    state: Arc<ApiState>,
    address: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    server: JoinHandle<std::io::Result<()>>,
}

impl ApiEmulator {
    /// Binds, loads the scenario, starts publication and serving. Ready when it returns.
    pub async fn start(config: ApiEmulatorConfig) -> Result<Self, ApiEmulatorError> {
        let listener = std::net::TcpListener::bind(config.listen).map_err(|source| {
            ApiEmulatorError::Bind {
                address: config.listen,
                source,
            }
        })?;
        let bind_error = |source| ApiEmulatorError::Bind {
            address: config.listen,
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let address = listener.local_addr().map_err(bind_error)?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let base_url = format!("{scheme}://{address}");
        let shutdown = CancellationToken::new();
        let state = Arc::new(ApiState {
            tokens: token::TokenState::new(&config.scenario)?,
            feed: feed::FeedState::new(&config.scenario, &config.clock)?,
            publisher: publish::Publisher::new(config.webhook_ca.as_deref())?,
            graph: graph::GraphState::new(&config.scenario, &config.clock),
            clock: config.clock,
            scenario: config.scenario,
            base_url,
            inspection: Mutex::new(Inspection::default()),
            shutdown: shutdown.clone(),
        });
        // An unreadable or empty records file fails the start, not the first publication.
        state.publisher.load_records(&state.scenario)?;
        let app = router(state.clone());
        let handle = axum_server::Handle::new();
        let service = app.into_make_service();
        let server = match &config.tls {
            Some(files) => {
                let tls = crate::server::server_config(&files.cert, &files.key)?;
                let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
                let server = axum_server::from_tcp_rustls(listener, rustls)
                    .map_err(bind_error)?
                    .handle(handle.clone());
                tokio::spawn(server.serve(service))
            }
            None => {
                let server = axum_server::from_tcp(listener)
                    .map_err(bind_error)?
                    .handle(handle.clone());
                tokio::spawn(server.serve(service))
            }
        };
        publish::spawn_publishers(&state);
        graph::spawn_publishers(&state);
        Ok(Self {
            state,
            address,
            handle,
            server,
        })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http(s)://127.0.0.1:PORT`: the login authority and API host of every tenant.
    pub fn base_url(&self) -> &str {
        &self.state.base_url
    }

    /// The shared state, for in-process tests that inspect or steer the world.
    pub fn state(&self) -> &Arc<ApiState> {
        &self.state
    }

    /// Stops publishing and serving; open connections get a short grace period.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        self.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

/// The whole HTTP surface: login endpoints, the feed, and `/_emulator/*`, behind the
/// `bom_bodies` fault and the inspection middleware.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .merge(token::routes())
        .merge(feed::routes(state.clone()))
        .merge(graph::routes())
        .merge(control::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            redirect::redirect_fault,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            bom::prefix_json_bodies,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), inspect))
        .layer(middleware::from_fn_with_state(state.clone(), stamp_date))
        .with_state(state)
}

/// Sets `Date` (IMF-fixdate, RFC 9110) from the emulator's clock; the HTTP server only
/// adds its own system-time `Date` when the answer has none.
async fn stamp_date(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let date = state
        .clock
        .now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(value) = header::HeaderValue::from_str(&date) {
        response.headers_mut().insert(header::DATE, value);
    }
    response
}

/// Logs every request and counts every rejection.
async fn inspect(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let response = next.run(request).await;
    if path.starts_with("/_emulator/") {
        return response;
    }
    // Graph paths name no tenant: its handler tells which one the token was for.
    let tenant = tenant_in_path(&path).or_else(|| {
        response
            .extensions()
            .get::<graph::GraphTenant>()
            .map(|graph::GraphTenant(tenant)| tenant.clone())
    });
    let record = RequestRecord {
        time: state.clock.now(),
        tenant,
        method,
        endpoint,
        status: response.status().as_u16(),
        user_agent,
    };
    let mut inspection = state.inspection();
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        let counts = &mut inspection.rejections;
        *counts.by_code.entry(rejection.code.clone()).or_default() += 1;
        *counts
            .by_rule
            .entry(rejection.rule.to_string())
            .or_default() += 1;
    }
    inspection.requests.push(record);
    drop(inspection);
    response
}

/// The tenant segment of a login path (`/{tenant}/oauth2/…`, `/{tenant}/v2.0/…`) or an
/// API path (`/api/v1.0/{tenant}/…`); none for Graph paths (`/v1.0/…`, `/beta/…`).
fn tenant_in_path(path: &str) -> Option<String> {
    let mut segments = path.trim_start_matches('/').split('/');
    match segments.next()? {
        "api" => {
            segments.next()?;
            segments.next().map(str::to_string)
        }
        "" | "v1.0" | "beta" => None,
        first => Some(first.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::tenant_in_path;

    #[test]
    fn tenant_is_read_from_login_and_api_paths() {
        assert_eq!(
            tenant_in_path("/contoso.onmicrosoft.com/oauth2/v2.0/token").as_deref(),
            Some("contoso.onmicrosoft.com")
        );
        assert_eq!(
            tenant_in_path("/api/v1.0/41463f53/activity/feed/subscriptions/list").as_deref(),
            Some("41463f53")
        );
        assert_eq!(tenant_in_path("/").as_deref(), None);
        assert_eq!(
            tenant_in_path("/v1.0/identityProtection/riskDetections").as_deref(),
            None
        );
    }
}

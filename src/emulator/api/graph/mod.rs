//! Microsoft Graph's `GET /v1.0/identityProtection/riskDetections` (Microsoft Entra ID
//! Protection risk detections), on the emulator's listener: `{graph}` is the emulator's
//! base URL, as login and the Management API are.
//!
//! A request is judged in this order, each failure in Graph's envelope ([`error`]):
//! 1. the bearer token verifies and was issued for Graph (`aud` one of
//!    [`GRAPH_RESOURCES`](super::token::GRAPH_RESOURCES)), else HTTP 401
//!    `InvalidAuthenticationToken` (a Management API token is refused); the tenant is the
//!    token's `tid`;
//! 2. the tenant's `graph_throttle` / `graph_unavailable` faults: HTTP 429
//!    `TooManyRequests` / 503 `ServiceUnavailable` with `Retry-After`;
//! 3. the token has `IdentityRiskEvent.Read.All`, else HTTP 403
//!    `Authorization_RequestDenied` "Insufficient privileges to complete the operation.";
//! 4. the tenant has an Entra ID P1/P2 licence (`entra_p2`), else HTTP 403 `Forbidden`
//!    "Your tenant is not licensed for this feature." (what Graph answers for this API);
//! 5. the query ([`query`]), else HTTP 400 `BadRequest`.
//!
//! Then a page: `{"@odata.context","@odata.nextLink"?,"value":[…]}` where each element is
//! the detection's exact stored JSON ([`GraphState::risk_detections`] shows the same
//! bytes), and `@odata.nextLink` (absolute, on the emulator's base, with the query and an
//! opaque `$skiptoken`) is present only while more remain. Pages of one listing are a
//! snapshot: a detection published or updated after the first page shows in none of the
//! following ones, and every matching one shows exactly once, in (`lastUpdatedDateTime`,
//! `id`) order.
//!
//! Publication: `initial` detections at start (spread over `initial_spread_hours` before
//! the clock's now), then `per_second`, and on demand ([`GraphState::publish`]);
//! [`GraphState::update`] moves a detection's `lastUpdatedDateTime` to now and changes its
//! `riskState`, as remediation does. Every answer carries the tenant as a [`GraphTenant`]
//! extension, so the request log, `bom_bodies` and `redirect_to` apply per tenant.
//!
//! Files: [`detection`] (the resource), [`query`] (OData and skip tokens), [`error`].

pub mod detection;
pub mod error;
pub mod query;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ApiState;
use super::scenario::{ROLE_IDENTITY_RISK_EVENT_READ, Scenario};
use super::token::{Audience, verify_bearer_for};
use crate::clock::Clock;
use detection::{RiskDetection, RiskyUser, format_graph_time, synthesize};
use error::{GraphError, RequestIds};
use query::{ListQuery, SkipToken};

/// The route of the collection.
pub const RISK_DETECTIONS_PATH: &str = "/v1.0/identityProtection/riskDetections";

/// `@odata.context` of every page, as Graph writes it.
const ODATA_CONTEXT: &str =
    "https://graph.microsoft.com/v1.0/$metadata#identityProtection/riskDetections";

/// Graph's content type for JSON answers.
const GRAPH_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Largest number of detections one publish call makes.
pub const MAX_PUBLISH_PER_CALL: usize = 100_000;

/// The tenant a Graph answer was for (a response extension).
#[derive(Clone, Debug)]
pub struct GraphTenant(pub String);

/// One published detection as the endpoint serves it, for `GET /_emulator/risk_detections`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedDetection {
    /// Tenant GUID.
    pub tenant_id: String,
    /// The detection's id.
    pub id: String,
    /// Its `lastUpdatedDateTime`, as served.
    pub last_updated_date_time: String,
    /// The exact JSON of the element in `value`.
    pub json: String,
}

struct StoredDetection {
    detection: RiskDetection,
    /// Sequence number of this version (publication or update): the snapshot key.
    version: u64,
    body: Bytes,
}

impl StoredDetection {
    fn new(detection: RiskDetection, version: u64) -> Self {
        // Serializing plain strings, numbers and times cannot fail.
        let body = Bytes::from(serde_json::to_vec(&detection).unwrap_or_default());
        Self {
            detection,
            version,
            body,
        }
    }

    fn key(&self) -> (DateTime<Utc>, &str) {
        (self.detection.last_updated_date_time, &self.detection.id)
    }
}

struct TenantGraph {
    tenant_id: String,
    roles: Vec<String>,
    entra_p2: bool,
    users: Vec<RiskyUser>,
    detections: Vec<StoredDetection>,
    positions: HashMap<String, usize>,
    published: u64,
}

/// The Graph side of the world: per tenant, its Graph roles, licence and detections.
pub struct GraphState {
    clock: Clock,
    world: Mutex<GraphWorld>,
}

/// Behind one lock, so a version number and the detection carrying it appear together.
struct GraphWorld {
    tenants: Vec<TenantGraph>,
    /// The last version number handed out, across tenants.
    versions: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data; a panicking writer leaves nothing half-done that matters to a test.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl GraphState {
    /// Every tenant of the scenario, with its `initial` detections published.
    pub fn new(scenario: &Scenario, clock: &Clock) -> Self {
        let tenants = scenario
            .tenants
            .iter()
            .map(|tenant| TenantGraph {
                tenant_id: tenant.tenant_id.clone(),
                roles: tenant.graph_roles.clone(),
                entra_p2: tenant.entra_p2,
                users: RiskyUser::directory(
                    tenant
                        .domain
                        .as_deref()
                        .unwrap_or("contoso.onmicrosoft.com"),
                ),
                detections: Vec::new(),
                positions: HashMap::new(),
                published: 0,
            })
            .collect();
        let state = Self {
            clock: clock.clone(),
            world: Mutex::new(GraphWorld {
                tenants,
                versions: 0,
            }),
        };
        let now = clock.now();
        for tenant in &scenario.tenants {
            let plan = &tenant.risk_detections;
            let count = plan.initial.min(MAX_PUBLISH_PER_CALL);
            let spread =
                chrono::Duration::hours(i64::try_from(plan.initial_spread_hours).unwrap_or(0));
            for index in 0..count {
                // Evenly over the spread, the last one at `now`.
                let before = spread * i32::try_from(count - 1 - index).unwrap_or(0)
                    / i32::try_from(count).unwrap_or(1);
                state.publish_at(&tenant.tenant_id, now - before);
            }
        }
        state
    }

    /// The Graph roles tokens of the tenant carry (none for an unknown tenant).
    pub fn roles(&self, tenant_id: &str) -> Vec<String> {
        self.with_tenant(tenant_id, |tenant, _| tenant.roles.clone())
            .unwrap_or_default()
    }

    /// Changes the tenant's Graph roles (tokens issued from now on) and licence; `false`
    /// for an unknown tenant.
    pub fn set_access(
        &self,
        tenant_id: &str,
        roles: Option<Vec<String>>,
        entra_p2: Option<bool>,
    ) -> bool {
        self.with_tenant(tenant_id, |tenant, _| {
            if let Some(roles) = roles {
                tenant.roles = roles;
            }
            if let Some(entra_p2) = entra_p2 {
                tenant.entra_p2 = entra_p2;
            }
        })
        .is_some()
    }

    /// Runs `action` on the tenant, with the version counter, under the lock.
    fn with_tenant<T>(
        &self,
        tenant_id: &str,
        action: impl FnOnce(&mut TenantGraph, &mut u64) -> T,
    ) -> Option<T> {
        let mut world = lock(&self.world);
        let GraphWorld { tenants, versions } = &mut *world;
        tenants
            .iter_mut()
            .find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
            .map(|tenant| action(tenant, versions))
    }

    /// Publishes `count` new detections last updated now; their ids (`None` for an unknown
    /// tenant).
    pub fn publish(&self, tenant_id: &str, count: usize) -> Option<Vec<String>> {
        let now = self.clock.now();
        (0..count.min(MAX_PUBLISH_PER_CALL))
            .map(|_| self.publish_at(tenant_id, now))
            .collect()
    }

    fn publish_at(&self, tenant_id: &str, last_updated: DateTime<Utc>) -> Option<String> {
        self.with_tenant(tenant_id, |tenant, versions| {
            *versions += 1;
            let version = *versions;
            let sequence = tenant.published;
            tenant.published += 1;
            let user = &tenant.users[(sequence as usize) % tenant.users.len()];
            let detection = synthesize(&tenant.tenant_id, sequence, user, last_updated);
            let id = detection.id.clone();
            tenant.positions.insert(id.clone(), tenant.detections.len());
            tenant
                .detections
                .push(StoredDetection::new(detection, version));
            id
        })
    }

    /// Updates a detection as remediation or dismissal does: `riskState` (and
    /// `riskDetail`) change and `lastUpdatedDateTime` moves to now. `None` when the tenant
    /// or detection is unknown.
    pub fn update(
        &self,
        tenant_id: &str,
        id: &str,
        risk_state: &str,
        risk_detail: &str,
    ) -> Option<PublishedDetection> {
        let now = detection::to_ticks(self.clock.now());
        self.with_tenant(tenant_id, |tenant, versions| {
            let position = *tenant.positions.get(id)?;
            *versions += 1;
            let version = *versions;
            let stored = &mut tenant.detections[position];
            let mut detection = stored.detection.clone();
            detection.risk_state = risk_state.to_string();
            detection.risk_detail = risk_detail.to_string();
            detection.last_updated_date_time = now;
            *stored = StoredDetection::new(detection, version);
            Some(published(&tenant.tenant_id, stored))
        })
        .flatten()
    }

    /// Every detection of the tenant (all tenants when `None`), in publication order, as
    /// the endpoint serves it now.
    pub fn risk_detections(&self, tenant_id: Option<&str>) -> Vec<PublishedDetection> {
        let world = lock(&self.world);
        world
            .tenants
            .iter()
            .filter(|tenant| {
                tenant_id.is_none_or(|wanted| tenant.tenant_id.eq_ignore_ascii_case(wanted))
            })
            .flat_map(|tenant| {
                tenant
                    .detections
                    .iter()
                    .map(|stored| published(&tenant.tenant_id, stored))
            })
            .collect()
    }

    fn entra_p2(&self, tenant_id: &str) -> bool {
        self.with_tenant(tenant_id, |tenant, _| tenant.entra_p2)
            .unwrap_or(false)
    }

    /// The page asked for.
    fn page(&self, tenant_id: &str, query: &ListQuery, token: Option<&SkipToken>) -> Page {
        let world = lock(&self.world);
        let cutoff_now = world.versions;
        let Some(tenant) = world
            .tenants
            .iter()
            .find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
        else {
            return Page::default();
        };
        let cutoff = token.map_or(cutoff_now, |token| token.cutoff);
        let mut matching: Vec<&StoredDetection> = tenant
            .detections
            .iter()
            .filter(|stored| {
                stored.version <= cutoff && query.matches(stored.detection.last_updated_date_time)
            })
            .collect();
        matching.sort_by(|a, b| a.key().cmp(&b.key()));
        if query.descending {
            matching.reverse();
        }
        let remaining: Vec<&StoredDetection> = match token {
            None => matching,
            Some(token) => {
                let after = (token.after.0, token.after.1.as_str());
                matching
                    .into_iter()
                    .filter(|stored| {
                        if query.descending {
                            stored.key() < after
                        } else {
                            stored.key() > after
                        }
                    })
                    .collect()
            }
        };
        let served = &remaining[..remaining.len().min(query.top)];
        let next = (remaining.len() > served.len())
            .then(|| served.last())
            .flatten()
            .map(|last| query.skip_token(&tenant.tenant_id, cutoff, last.key()));
        Page {
            values: served.iter().map(|stored| stored.body.clone()).collect(),
            next_token: next,
        }
    }
}

fn published(tenant_id: &str, stored: &StoredDetection) -> PublishedDetection {
    PublishedDetection {
        tenant_id: tenant_id.to_string(),
        id: stored.detection.id.clone(),
        last_updated_date_time: format_graph_time(&stored.detection.last_updated_date_time),
        json: String::from_utf8_lossy(&stored.body).into_owned(),
    }
}

#[derive(Default)]
struct Page {
    values: Vec<Bytes>,
    next_token: Option<String>,
}

/// Routes of Graph.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new().route(RISK_DETECTIONS_PATH, get(handle_risk_detections))
}

async fn handle_risk_detections(
    State(state): State<Arc<ApiState>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let ids = RequestIds::for_request(&headers);
    let mut tenant_id = None;
    let result = serve(&state, &params, &headers, &ids, &mut tenant_id);
    let mut response = match result {
        Ok(response) => response,
        Err(error) => error.into_response_for(&ids, state.clock.now()),
    };
    if let Some(tenant_id) = tenant_id {
        response.extensions_mut().insert(GraphTenant(tenant_id));
    }
    response
}

fn serve(
    state: &ApiState,
    params: &[(String, String)],
    headers: &HeaderMap,
    ids: &RequestIds,
    tenant_out: &mut Option<String>,
) -> Result<Response, GraphError> {
    let claims =
        verify_bearer_for(state, headers, Audience::Graph).map_err(GraphError::from_bearer)?;
    let tenant = state.scenario.tenant(&claims.tid).ok_or_else(|| {
        GraphError::new(
            StatusCode::UNAUTHORIZED,
            super::token::BEARER_ERROR_CODE,
            "bearer_unknown_tenant",
            "Access token validation failure. Invalid tenant.",
        )
    })?;
    let tenant_id = tenant.tenant_id.clone();
    *tenant_out = Some(tenant_id.clone());
    if let Some(fault) = state.feed.take_graph_fault(&tenant_id) {
        return Err(fault_error(fault));
    }
    if !claims
        .roles
        .iter()
        .any(|role| role == ROLE_IDENTITY_RISK_EVENT_READ)
    {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "graph_role_missing",
            "Insufficient privileges to complete the operation.",
        ));
    }
    if !state.graph.entra_p2(&tenant_id) {
        return Err(GraphError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "graph_not_licensed",
            "Your tenant is not licensed for this feature.",
        ));
    }
    let (query, token) = query::parse(params, &tenant_id)?;
    let page = state.graph.page(&tenant_id, &query, token.as_ref());
    let next_link = page
        .next_token
        .map(|token| next_link(&state.base_url, params, &token));
    Ok(page_response(&page.values, next_link.as_deref(), ids))
}

/// The decision of a Graph fault, from [`crate::emulator::api::feed::FeedState::take_graph_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFault {
    /// HTTP 429 with this `Retry-After`.
    Throttled(u64),
    /// HTTP 503 with this `Retry-After`.
    Unavailable(u64),
}

fn fault_error(fault: GraphFault) -> GraphError {
    let (status, code, rule, message, seconds) = match fault {
        GraphFault::Throttled(seconds) => (
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            "graph_throttled",
            "Too many requests. Please retry after the time given in Retry-After.",
            seconds,
        ),
        GraphFault::Unavailable(seconds) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "graph_unavailable",
            "The service is temporarily unavailable. Please retry after the time given in Retry-After.",
            seconds,
        ),
    };
    let mut error = GraphError::new(status, code, rule, message);
    error.retry_after_secs = Some(seconds.max(1));
    error
}

/// The request's URL with `$skiptoken` replaced: absolute, on the emulator's base, the
/// option names' `$` literal as in Graph's own links.
fn next_link(base_url: &str, params: &[(String, String)], token: &str) -> String {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let pairs: Vec<String> = params
        .iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("$skiptoken"))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .chain([("$skiptoken", token)])
        .map(|(name, value)| format!("{}={}", encode(name).replace("%24", "$"), encode(value)))
        .collect();
    format!(
        "{}{RISK_DETECTIONS_PATH}?{}",
        base_url.trim_end_matches('/'),
        pairs.join("&")
    )
}

fn page_response(values: &[Bytes], next_link: Option<&str>, ids: &RequestIds) -> Response {
    let mut body = Vec::with_capacity(values.iter().map(Bytes::len).sum::<usize>() + 256);
    body.extend_from_slice(b"{\"@odata.context\":");
    body.extend_from_slice(
        serde_json::Value::from(ODATA_CONTEXT)
            .to_string()
            .as_bytes(),
    );
    if let Some(link) = next_link {
        body.extend_from_slice(b",\"@odata.nextLink\":");
        body.extend_from_slice(serde_json::Value::from(link).to_string().as_bytes());
    }
    body.extend_from_slice(b",\"value\":[");
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(value);
    }
    body.extend_from_slice(b"]}");
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(GRAPH_JSON))],
        body,
    )
        .into_response();
    ids.stamp(response.headers_mut());
    response
}

/// Publishes each tenant's `per_second` detections until shutdown.
pub fn spawn_publishers(state: &Arc<ApiState>) {
    for tenant in &state.scenario.tenants {
        let rate = tenant.risk_detections.per_second;
        if rate.is_finite() && rate > 0.0 {
            tokio::spawn(run_publication(
                state.clone(),
                tenant.tenant_id.clone(),
                rate,
            ));
        }
    }
}

async fn run_publication(state: Arc<ApiState>, tenant_id: String, rate: f64) {
    let tick = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(Duration::MAX)
        .max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let per_tick = (rate * tick.as_secs_f64()).round().max(1.0) as usize;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        state.graph.publish(&tenant_id, per_tick);
    }
}

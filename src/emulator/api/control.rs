//! `/_emulator/*`: the emulator's own inspection and run-time control routes. They need
//! no token, are not throttled, and are left out of the request log.
//!
//! Inspection:
//! - `GET /_emulator/published`: NDJSON (`application/x-ndjson`), one published record
//!   per line: `{"tenantId","contentType","contentId","contentUri","index","recordId",
//!   "sha256"}`; only content created while a subscription existed.
//! - `GET /_emulator/rejections`: `{"by_code":{"AF20030":2,…},"by_rule":{"window_too_long":2,…}}`.
//! - `GET /_emulator/requests`: NDJSON, one request per line:
//!   `{"time","tenant","method","endpoint","status","userAgent"}` (Graph requests have the
//!   endpoint `/v1.0/identityProtection/riskDetections` and their token's tenant).
//! - `GET /_emulator/risk_detections?tenant_id=…` (every tenant without it): NDJSON, one
//!   published risk detection per line, in publication order:
//!   `{"tenantId","id","lastUpdatedDateTime","json"}`, `json` being the exact bytes Graph
//!   serves for it now.
//!
//! Control: `POST /_emulator/control` with one JSON command object. Every command
//! answers HTTP 200 `{"ok":true,…}`; bad JSON, an unknown command, an unknown tenant or
//! an invalid value answers HTTP 400 `{"ok":false,"error":"…"}` naming what is accepted.
//!
//! - Set faults (the complete set: omitted fields are off) of one tenant, or of every
//!   tenant when `tenant` is omitted:
//!   `{"faults": {"tenant": "41463f53-…", "duplicate_notifications": true, "late_content_hours": 3}}`
//!   (every field of [`FaultScenario`], e.g. `"bom_bodies": true` for byte-order marks);
//!   listed blobs answering `404` with body `null`: `{"faults": {"blob_404_null": "all"}}`
//!   (or a content type, or one contentId); a redirect to another host instead of an
//!   answer: `{"faults": {"redirect_to": "http://127.0.0.1:9", "redirect_endpoints": ["blob"]}}`
//! - Disable a webhook as Microsoft does after failures:
//!   `{"disable_webhook": {"tenant": "41463f53-…", "content_type": "Audit.Exchange"}}`
//! - Move the clock (seconds, may be negative): `{"advance_clock_secs": 3600}`
//! - Set the clock: `{"set_clock": "2026-01-01T00:00:00Z"}`
//! - Publish now (answers the created entries under `entries`):
//!   `{"publish": {"tenant": "41463f53-…", "content_type": "Audit.Exchange", "blobs": 3}}`
//! - Lifetime of tokens issued from now on: `{"token_lifetime_secs": 60}`
//! - Publish risk detections now, last updated now (answers their `ids`):
//!   `{"publish_risk_detections": {"tenant": "41463f53-…", "count": 3}}`
//! - Update a risk detection as remediation does (`lastUpdatedDateTime` moves to now;
//!   `risk_state` defaults to `remediated`, `risk_detail` to
//!   `userPerformedSecuredPasswordReset`; answers the detection as served):
//!   `{"update_risk_detection": {"tenant": "41463f53-…", "id": "…", "risk_state": "dismissed", "risk_detail": "adminDismissedAllRiskForUser"}}`
//! - A tenant's Graph access (each key optional; roles apply to tokens issued from now on):
//!   `{"graph_access": {"tenant": "41463f53-…", "graph_roles": [], "entra_p2": false}}`
//! - Graph throttling is a fault: `{"faults": {"tenant": "…", "graph_throttle":
//!   {"next_requests": 2, "retry_after_secs": 3}}}` (and `graph_unavailable` for 503)
//! - Notification retry policy:
//!   `{"delivery_policy": {"base_delay_ms": 50, "max_delay_ms": 200, "max_failures": 3}}`

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiState;
use super::graph::MAX_PUBLISH_PER_CALL;
use super::publish::{self, delivery::DeliveryPolicy};
use super::scenario::FaultScenario;

/// The commands `POST /_emulator/control` accepts, named in error messages.
pub const COMMANDS: &str = "faults, disable_webhook, advance_clock_secs, set_clock, publish, \
     token_lifetime_secs, delivery_policy, publish_risk_detections, update_risk_detection, \
     graph_access";

/// Routes under `/_emulator/`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/_emulator/published", get(handle_published))
        .route("/_emulator/rejections", get(handle_rejections))
        .route("/_emulator/requests", get(handle_requests))
        .route("/_emulator/risk_detections", get(handle_risk_detections))
        .route("/_emulator/control", post(handle_control))
}

fn ndjson(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn handle_published(State(state): State<Arc<ApiState>>) -> Response {
    ndjson(state.publisher.published_ndjson())
}

#[derive(Debug, Deserialize)]
struct TenantFilter {
    tenant_id: Option<String>,
}

async fn handle_risk_detections(
    State(state): State<Arc<ApiState>>,
    Query(filter): Query<TenantFilter>,
) -> Response {
    let mut body = String::new();
    for detection in state.graph.risk_detections(filter.tenant_id.as_deref()) {
        if let Ok(line) = serde_json::to_string(&detection) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    ndjson(body)
}

async fn handle_rejections(State(state): State<Arc<ApiState>>) -> Response {
    let rejections = state.inspection().rejections.clone();
    Json(rejections).into_response()
}

async fn handle_requests(State(state): State<Arc<ApiState>>) -> Response {
    let inspection = state.inspection();
    let mut body = String::new();
    for request in &inspection.requests {
        if let Ok(line) = serde_json::to_string(request) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    drop(inspection);
    ndjson(body)
}

/// A control request that cannot be carried out; answered HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The body is not a JSON object with exactly one known command.
    #[error("{0}; send one JSON object with one of: {COMMANDS}")]
    BadCommand(String),
    /// The tenant is not in the scenario.
    #[error("unknown tenant {0:?}")]
    UnknownTenant(String),
    /// The content type is not one of the API's five.
    #[error("unknown content type {0:?}, expected one of {types:?}", types = super::scenario::CONTENT_TYPES)]
    UnknownContentType(String),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let body = json!({"ok": false, "error": self.to_string()});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// One control command (externally tagged: `{"name": arguments}`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Command {
    Faults(serde_json::Map<String, Value>),
    DisableWebhook(PairArguments),
    AdvanceClockSecs(i64),
    SetClock(DateTime<Utc>),
    Publish(PublishArguments),
    TokenLifetimeSecs(u64),
    DeliveryPolicy(DeliveryPolicy),
    PublishRiskDetections(PublishRiskArguments),
    UpdateRiskDetection(UpdateRiskArguments),
    GraphAccess(GraphAccessArguments),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRiskArguments {
    tenant: String,
    #[serde(default = "one")]
    count: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRiskArguments {
    tenant: String,
    id: String,
    #[serde(default = "remediated")]
    risk_state: String,
    #[serde(default = "password_reset")]
    risk_detail: String,
}

fn remediated() -> String {
    "remediated".to_string()
}

fn password_reset() -> String {
    "userPerformedSecuredPasswordReset".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphAccessArguments {
    tenant: String,
    graph_roles: Option<Vec<String>>,
    entra_p2: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairArguments {
    tenant: String,
    content_type: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishArguments {
    tenant: String,
    content_type: String,
    #[serde(default = "one")]
    blobs: usize,
}

fn one() -> usize {
    1
}

/// Largest `blobs` of one publish command, so one request cannot exhaust memory.
const MAX_BLOBS_PER_COMMAND: usize = 10_000;

async fn handle_control(
    State(state): State<Arc<ApiState>>,
    body: Bytes,
) -> Result<Json<Value>, ControlError> {
    let command: Command = serde_json::from_slice(&body)
        .map_err(|error| ControlError::BadCommand(format!("invalid command: {error}")))?;
    match command {
        Command::Faults(arguments) => set_faults(&state, arguments),
        Command::DisableWebhook(pair) => {
            let tenant = known_pair(&state, &pair.tenant, &pair.content_type)?;
            state.feed.disable_webhook(&tenant, &pair.content_type);
            Ok(Json(json!({"ok": true})))
        }
        Command::AdvanceClockSecs(seconds) => {
            let by = chrono::Duration::try_seconds(seconds).ok_or_else(|| {
                ControlError::BadCommand("advance_clock_secs out of range".into())
            })?;
            state.clock.advance(by);
            Ok(Json(json!({"ok": true, "now": state.clock.now()})))
        }
        Command::SetClock(to) => {
            state.clock.set(to);
            Ok(Json(json!({"ok": true, "now": state.clock.now()})))
        }
        Command::Publish(arguments) => publish_command(&state, arguments).await,
        Command::TokenLifetimeSecs(seconds) => {
            state.tokens.set_lifetime_secs(seconds);
            Ok(Json(json!({"ok": true})))
        }
        Command::DeliveryPolicy(policy) => {
            state.publisher.set_delivery_policy(policy);
            Ok(Json(json!({"ok": true, "delivery_policy": policy})))
        }
        Command::PublishRiskDetections(arguments) => {
            let tenant = known_tenant(&state, &arguments.tenant)?;
            if arguments.count > MAX_PUBLISH_PER_CALL {
                return Err(ControlError::BadCommand(format!(
                    "publish_risk_detections.count is at most {MAX_PUBLISH_PER_CALL}"
                )));
            }
            let ids = state
                .graph
                .publish(&tenant, arguments.count)
                .unwrap_or_default();
            Ok(Json(json!({"ok": true, "ids": ids})))
        }
        Command::UpdateRiskDetection(arguments) => {
            let tenant = known_tenant(&state, &arguments.tenant)?;
            let detection = state
                .graph
                .update(
                    &tenant,
                    &arguments.id,
                    &arguments.risk_state,
                    &arguments.risk_detail,
                )
                .ok_or_else(|| {
                    ControlError::BadCommand(format!(
                        "tenant {tenant} has no risk detection {:?}",
                        arguments.id
                    ))
                })?;
            Ok(Json(json!({"ok": true, "detection": detection})))
        }
        Command::GraphAccess(arguments) => {
            let tenant = known_tenant(&state, &arguments.tenant)?;
            state
                .graph
                .set_access(&tenant, arguments.graph_roles, arguments.entra_p2);
            Ok(Json(json!({"ok": true})))
        }
    }
}

/// `{"faults": {"tenant"?: …, …FaultScenario fields}}`: replaces the faults.
fn set_faults(
    state: &ApiState,
    mut arguments: serde_json::Map<String, Value>,
) -> Result<Json<Value>, ControlError> {
    let tenant = match arguments.remove("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(tenant)) => Some(known_tenant(state, &tenant)?),
        Some(_) => {
            return Err(ControlError::BadCommand(
                "faults.tenant must be a string".into(),
            ));
        }
    };
    let faults: FaultScenario = serde_json::from_value(Value::Object(arguments))
        .map_err(|error| ControlError::BadCommand(format!("invalid faults: {error}")))?;
    if let Some(problem) = faults.problem() {
        return Err(ControlError::BadCommand(problem));
    }
    state.feed.set_faults(tenant.as_deref(), faults);
    Ok(Json(json!({"ok": true})))
}

async fn publish_command(
    state: &Arc<ApiState>,
    arguments: PublishArguments,
) -> Result<Json<Value>, ControlError> {
    let tenant = known_pair(state, &arguments.tenant, &arguments.content_type)?;
    if arguments.blobs > MAX_BLOBS_PER_COMMAND {
        return Err(ControlError::BadCommand(format!(
            "publish.blobs is at most {MAX_BLOBS_PER_COMMAND}"
        )));
    }
    let entries =
        publish::publish_now(state, &tenant, &arguments.content_type, arguments.blobs).await;
    Ok(Json(json!({"ok": true, "entries": entries})))
}

/// The scenario's spelling of `tenant`, or an error.
fn known_tenant(state: &ApiState, tenant: &str) -> Result<String, ControlError> {
    state
        .scenario
        .tenant(tenant)
        .map(|found| found.tenant_id.clone())
        .ok_or_else(|| ControlError::UnknownTenant(tenant.to_string()))
}

fn known_pair(state: &ApiState, tenant: &str, content_type: &str) -> Result<String, ControlError> {
    if !super::scenario::CONTENT_TYPES.contains(&content_type) {
        return Err(ControlError::UnknownContentType(content_type.to_string()));
    }
    known_tenant(state, tenant)
}

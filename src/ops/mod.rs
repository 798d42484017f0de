//! Operations: metrics (Prometheus), health and readiness, the status page, and the HTTP
//! routes serving them (`/healthz`, `/readyz`, `/metrics`; `/status` in [`status`]). Which
//! listener serves which routes is decided in `service` (`ops.listen`, `ops.public`).

pub mod events;
pub mod health;
pub mod metrics;
pub mod queue_limit;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use health::{ProblemBoard, ReadinessProbe};
pub use metrics::Metrics;
pub use queue_limit::{QueueFull, QueueLimit};

/// What the ops routes read.
pub struct OpsState {
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// The readiness probe.
    pub readiness: ReadinessProbe,
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn routes(state: Arc<OpsState>) -> Router {
    probe_routes(state.clone()).merge(metrics_routes(state))
}

/// `/healthz` and `/readyz` with its detail (tenants, problems): for a private listener.
pub fn probe_routes(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(handle_readyz))
        .with_state(state)
}

/// `/healthz` and `/readyz` answering `{"ready": …}` alone (same status codes): what load
/// balancers and orchestrators probe on the public listener, which must not tell strangers
/// the tenants and their errors.
pub fn public_probe_routes(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(handle_public_readyz))
        .with_state(state)
}

/// `/metrics` alone (it may be served on the private `ops.listen` listener).
pub fn metrics_routes(state: Arc<OpsState>) -> Router {
    Router::new()
        .route("/metrics", get(handle_metrics))
        .with_state(state)
}

async fn handle_readyz(State(state): State<Arc<OpsState>>) -> Response {
    let readiness = state.readiness.check().await;
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness)).into_response()
}

async fn handle_public_readyz(State(state): State<Arc<OpsState>>) -> Response {
    let summary = state.readiness.check().await.summary();
    let status = if summary.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(summary)).into_response()
}

async fn handle_metrics(State(state): State<Arc<OpsState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

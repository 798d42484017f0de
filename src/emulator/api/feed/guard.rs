//! The layer in front of every feed and blob route: per-tenant throttling, then the
//! tenant's latency and server-error faults. Only tenants of the scenario are counted
//! (so the state stays bounded); other requests pass to the handlers, which reject them.
//!
//! Throttling is a fixed window of real time per tenant (`throttle.window_secs`, so
//! tests compress time at the same rate) admitting `throttle.requests_per_window`
//! requests (0 = off). An excess request is not counted and is answered, as the scenario
//! says, HTTP 403 AF429 `Too many requests. Method=…, PublisherId=…` (Microsoft's
//! troubleshooting page) or HTTP 429 with `Retry-After` (seconds left in the window).
//!
//! A `throttle_storm` fault throttles every request of the tenant (not counted in its
//! window), asking for [`STORM_RETRY_AFTER`].
//!
//! Faults: `latency_ms` is slept (real time) before the handler runs;
//! `server_error_rate` answers that deterministic share of admitted requests (see
//! `world::take_credit`) HTTP 500 AF50000.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::FeedState;
use super::world::take_credit;
use crate::emulator::api::ApiState;
use crate::emulator::api::error::AfError;
use crate::emulator::api::graph::GraphFault;
use crate::emulator::api::scenario::{GraphFaultScenario, ThrottleResponse, ThrottleScenario};

/// `PublisherId` printed in AF429 when the request named none (as Microsoft prints it).
const NO_PUBLISHER: &str = "00000000-0000-0000-0000-000000000000";

/// How long a throttling storm asks clients to wait (HTTP 429 `Retry-After: 1`).
const STORM_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the guard decided for an admitted request.
struct Admission {
    latency: Duration,
    server_error: bool,
}

/// The middleware (see the module doc).
pub(super) async fn guard(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let Some(tenant) = path_tenant(path).and_then(|tenant| state.scenario.tenant(tenant)) else {
        return next.run(request).await;
    };
    let tenant_id = tenant.tenant_id.clone();
    let budget = tenant.throttle.as_ref().unwrap_or(&state.scenario.throttle);
    let operation = operation_name(path);
    let publisher = Query::<Vec<(String, String)>>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(pairs)| {
            pairs
                .into_iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("PublisherIdentifier"))
                .map(|(_, value)| value)
        });
    let admission = match state.feed.admit(&tenant_id, budget) {
        Ok(admission) => admission,
        Err(retry_after) => {
            let publisher = publisher.as_deref().unwrap_or(NO_PUBLISHER);
            return throttled(budget, operation, publisher, retry_after).into_response();
        }
    };
    if !admission.latency.is_zero() {
        tokio::time::sleep(admission.latency).await;
    }
    if admission.server_error {
        return AfError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "AF50000",
            "server_error_fault",
            "An internal server error occurred. Retry the request.",
        )
        .into_response();
    }
    next.run(request).await
}

impl FeedState {
    /// Counts the request in the tenant's window; `Err(time left in the window)` when the
    /// window is full. For an admitted request, draws the latency and server-error
    /// faults.
    fn admit(&self, tenant_id: &str, throttle: &ThrottleScenario) -> Result<Admission, Duration> {
        let mut world = self.world();
        let Some(tenant) = world.tenant_mut(tenant_id) else {
            return Ok(Admission {
                latency: Duration::ZERO,
                server_error: false,
            });
        };
        if tenant.faults.throttle_storm {
            return Err(STORM_RETRY_AFTER);
        }
        if throttle.requests_per_window > 0 {
            let window = Duration::try_from_secs_f64(throttle.window_secs.max(0.001))
                .unwrap_or(Duration::MAX);
            let now = Instant::now();
            let opened = *tenant.throttle.opened.get_or_insert(now);
            if now.duration_since(opened) >= window {
                tenant.throttle.opened = Some(now);
                tenant.throttle.admitted = 0;
            }
            if tenant.throttle.admitted >= throttle.requests_per_window {
                let opened = tenant.throttle.opened.unwrap_or(now);
                return Err(window.saturating_sub(now.duration_since(opened)));
            }
            tenant.throttle.admitted += 1;
        }
        let rate = tenant.faults.server_error_rate;
        Ok(Admission {
            latency: Duration::from_millis(tenant.faults.latency_ms),
            server_error: take_credit(&mut tenant.server_error_credit, rate),
        })
    }
}

impl FeedState {
    /// Whether the tenant's `graph_throttle` or `graph_unavailable` fault answers this
    /// Graph request (throttling first). `next_requests` counts down as it fires; `rate`
    /// fires that share of requests, evenly spread.
    pub fn take_graph_fault(&self, tenant_id: &str) -> Option<GraphFault> {
        let mut world = self.world();
        let tenant = world.tenant_mut(tenant_id)?;
        if let Some(fault) = tenant.faults.graph_throttle.as_mut()
            && fires(fault, &mut tenant.graph_throttle_credit)
        {
            return Some(GraphFault::Throttled(fault.retry_after_secs));
        }
        if let Some(fault) = tenant.faults.graph_unavailable.as_mut()
            && fires(fault, &mut tenant.graph_unavailable_credit)
        {
            return Some(GraphFault::Unavailable(fault.retry_after_secs));
        }
        None
    }
}

fn fires(fault: &mut GraphFaultScenario, credit: &mut f64) -> bool {
    if fault.next_requests > 0 {
        fault.next_requests -= 1;
        return true;
    }
    take_credit(credit, fault.rate)
}

fn throttled(
    throttle: &ThrottleScenario,
    operation: &str,
    publisher: &str,
    retry_after: Duration,
) -> AfError {
    let message = format!("Too many requests. Method={operation}, PublisherId={publisher}");
    match throttle.response {
        ThrottleResponse::Af429 => {
            AfError::new(StatusCode::FORBIDDEN, "AF429", "throttled", message)
        }
        ThrottleResponse::Http429 => {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            AfError::new(StatusCode::TOO_MANY_REQUESTS, "AF429", "throttled", message)
                .with_retry_after(seconds)
        }
    }
}

/// The `{tenant}` of `/api/v1.0/{tenant}/…`.
fn path_tenant(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    (segments.next()? == "api").then_some(())?;
    segments.next()?;
    segments.next()
}

/// The operation's name in AF429 messages (`GetBlob` as Microsoft prints it).
fn operation_name(path: &str) -> &'static str {
    let mut segments = path.rsplit('/');
    let last = segments.next().unwrap_or_default();
    let parent = segments.next().unwrap_or_default();
    match (parent, last) {
        ("audit", _) => "GetBlob",
        (_, "start") => "StartSubscription",
        (_, "stop") => "StopSubscription",
        (_, "list") => "ListSubscriptions",
        (_, "content") => "ListContent",
        (_, "notifications") => "ListNotifications",
        (_, "dlpSensitiveTypes") => "GetDlpSensitiveTypes",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_and_tenant_are_read_from_the_path() {
        let blob = "/api/v1.0/41463f53-8812-40f4-890f-865bf6e35190/activity/feed/audit/1$2";
        assert_eq!(operation_name(blob), "GetBlob");
        assert_eq!(
            path_tenant(blob),
            Some("41463f53-8812-40f4-890f-865bf6e35190")
        );
        assert_eq!(
            operation_name("/api/v1.0/t/activity/feed/subscriptions/content"),
            "ListContent"
        );
        assert_eq!(path_tenant("/t/oauth2/token"), None);
    }
}

//! The `redirect_to` fault ([`FaultScenario::redirect_to`]): a covered endpoint of a
//! tenant answers with a redirect to another base URL instead of being served, the
//! request's path and query kept. The token endpoints answer HTTP 307 (method and body
//! kept: a client that followed it would re-POST its form, credential included, to the
//! other host); listings, blobs and Graph's risk detections answer HTTP 302 (a client
//! that followed it would read the other host's answer as the tenant's content, or send
//! its Graph token there). Graph paths name no tenant: its token's `tid` does. Nothing else about the request is
//! checked first, as a misconfigured proxy or a hostile middlebox answers before the
//! service does.
//!
//! [`FaultScenario::redirect_to`]: super::scenario::FaultScenario::redirect_to

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::graph::{GraphTenant, RISK_DETECTIONS_PATH};
use super::scenario::RedirectedEndpoint;
use super::token::{bearer_tenant, find_tenant};

/// The middleware (see the module doc).
pub(super) async fn redirect_fault(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let (tenant, endpoint) = if path == RISK_DETECTIONS_PATH {
        let Some(tenant) = bearer_tenant(&state, request.headers()) else {
            return next.run(request).await;
        };
        (tenant, RedirectedEndpoint::Graph)
    } else {
        let Some((tenant, endpoint)) = endpoint_of(path) else {
            return next.run(request).await;
        };
        (tenant.to_string(), endpoint)
    };
    let Some(tenant) = find_tenant(&state.scenario, &tenant) else {
        return next.run(request).await;
    };
    let faults = state.feed.faults(&tenant.tenant_id);
    let Some(base) = faults
        .redirect_to
        .as_deref()
        .filter(|_| faults.redirects(endpoint))
    else {
        return next.run(request).await;
    };
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or(path, |path_and_query| path_and_query.as_str());
    let target = format!("{}{path_and_query}", base.trim_end_matches('/'));
    let Ok(location) = HeaderValue::from_str(&target) else {
        return next.run(request).await;
    };
    let status = match endpoint {
        RedirectedEndpoint::Token => StatusCode::TEMPORARY_REDIRECT,
        RedirectedEndpoint::Listing | RedirectedEndpoint::Blob | RedirectedEndpoint::Graph => {
            StatusCode::FOUND
        }
    };
    let mut response = (status, [(header::LOCATION, location)]).into_response();
    if endpoint == RedirectedEndpoint::Graph {
        response
            .extensions_mut()
            .insert(GraphTenant(tenant.tenant_id.clone()));
    }
    response
}

/// The tenant segment and endpoint family of a path the fault can cover.
fn endpoint_of(path: &str) -> Option<(&str, RedirectedEndpoint)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        [tenant, "oauth2", "token"] | [tenant, "oauth2", "v2.0", "token"] => {
            Some((tenant, RedirectedEndpoint::Token))
        }
        [
            "api",
            _,
            tenant,
            "activity",
            "feed",
            "subscriptions",
            "content",
        ] => Some((tenant, RedirectedEndpoint::Listing)),
        ["api", _, tenant, "activity", "feed", "audit", _] => {
            Some((tenant, RedirectedEndpoint::Blob))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_listing_and_blob_paths_are_recognised_and_others_are_not() {
        let tenant = "41463f53-8812-40f4-890f-865bf6e35190";
        assert_eq!(
            endpoint_of(&format!("/{tenant}/oauth2/v2.0/token")),
            Some((tenant, RedirectedEndpoint::Token))
        );
        assert_eq!(
            endpoint_of("/contoso.onmicrosoft.com/oauth2/token"),
            Some(("contoso.onmicrosoft.com", RedirectedEndpoint::Token))
        );
        assert_eq!(
            endpoint_of(&format!(
                "/api/v1.0/{tenant}/activity/feed/subscriptions/content"
            )),
            Some((tenant, RedirectedEndpoint::Listing))
        );
        assert_eq!(
            endpoint_of(&format!("/api/v1.0/{tenant}/activity/feed/audit/1$2")),
            Some((tenant, RedirectedEndpoint::Blob))
        );
        assert_eq!(
            endpoint_of(&format!(
                "/api/v1.0/{tenant}/activity/feed/subscriptions/list"
            )),
            None
        );
        assert_eq!(
            endpoint_of(&format!("/{tenant}/v2.0/.well-known/openid-configuration")),
            None
        );
    }
}

//! OpenID Connect discovery documents of the emulated tenants, so a client given a tenant
//! domain resolves it to the tenant GUID (the GUID is in `issuer` and every endpoint).
//!
//! - v2 `GET /{tenant}/v2.0/.well-known/openid-configuration`: `issuer` is
//!   `{base}/{GUID}/v2.0`, as Microsoft's is `https://login.microsoftonline.com/{GUID}/v2.0`.
//! - v1 `GET /{tenant}/.well-known/openid-configuration`: `issuer` is `{base}/{GUID}/`, the
//!   emulator's stand-in for `https://sts.windows.net/{GUID}/`.
//!
//! `jwks_uri` answers an empty key set (see [`handle_keys`]).
//!
//! `{tenant}` is the GUID or the domain, ignoring case. An unknown tenant is HTTP 400
//! `invalid_tenant` AADSTS90002, as Microsoft answers it.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::aadsts::{AadstsError, unknown_tenant_description};
use super::find_tenant;
use crate::emulator::api::ApiState;

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`.
pub async fn handle_openid_configuration_v2(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    configuration(&state, &tenant, &headers, openid_configuration_v2)
}

/// `GET /{tenant}/.well-known/openid-configuration`.
pub async fn handle_openid_configuration_v1(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    configuration(&state, &tenant, &headers, openid_configuration_v1)
}

/// `GET /{tenant}/discovery/v2.0/keys` and `/{tenant}/discovery/keys` (the documents'
/// `jwks_uri`): an empty key set, because the emulator signs its tokens with a private
/// HMAC key that has no public half; clients only read the payload.
pub async fn handle_keys() -> Json<Value> {
    Json(json!({ "keys": [] }))
}

fn configuration(
    state: &ApiState,
    tenant: &str,
    headers: &HeaderMap,
    document: fn(&str, &str) -> Value,
) -> Response {
    match find_tenant(&state.scenario, tenant) {
        Some(found) => {
            let base = state.base_url.trim_end_matches('/');
            Json(document(base, &found.tenant_id)).into_response()
        }
        None => AadstsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            "unknown_tenant",
            unknown_tenant_description(tenant),
        )
        .into_response_at(&state.base_url, state.clock.now(), headers),
    }
}

/// The v2.0 document, shaped like Microsoft's for a tenant.
pub fn openid_configuration_v2(base: &str, tenant_id: &str) -> Value {
    let authority = format!("{base}/{tenant_id}");
    json!({
        "token_endpoint": format!("{authority}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{authority}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{authority}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{authority}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{authority}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{authority}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver", "oid"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    })
}

/// The v1 document, shaped like Microsoft's for a tenant.
pub fn openid_configuration_v1(base: &str, tenant_id: &str) -> Value {
    let authority = format!("{base}/{tenant_id}");
    json!({
        "token_endpoint": format!("{authority}/oauth2/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/common/discovery/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
        "scopes_supported": ["openid"],
        "issuer": format!("{authority}/"),
        "authorization_endpoint": format!("{authority}/oauth2/authorize"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{authority}/oauth2/logout"),
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "tid", "ver", "oid", "appid"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    })
}

//! The client-credentials token endpoints: v1 `POST /{tenant}/oauth2/token` (`resource=`,
//! `?api-version=1.0` accepted) and v2 `POST /{tenant}/oauth2/v2.0/token`
//! (`scope=<resource>/.default`). `{tenant}` is the tenant GUID or its domain.
//!
//! A request is judged in this order, each failure answered as Entra does (see
//! [`AadstsError`]): tenant known (AADSTS90002) and its token endpoint up (HTTP 503);
//! `grant_type` (AADSTS900144, AADSTS70003); client id (AADSTS900144, AADSTS700016);
//! resource or scope well-formed (AADSTS900144, AADSTS1002012, AADSTS70011); client
//! authentication by secret (body or HTTP Basic, RFC 6749 §2.3.1; AADSTS7000215,
//! AADSTS7000222) or certificate assertion ([`super::assertion`]; AADSTS7000216 when
//! neither; AADSTS9002313 for two credentials or conflicting client ids); the resource
//! exists (AADSTS500011): the Management API (one of four clouds, or the emulator's own
//! base URL) or Microsoft Graph ([`super::GRAPH_RESOURCES`]). Then a token is issued with
//! the tenant's granted roles on that resource (`roles`, or `graph_roles` for Graph): v1 answers `expires_in`/`expires_on`/`not_before` as JSON strings, v2
//! answers `expires_in`/`ext_expires_in` as numbers, as Microsoft's samples show.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::aadsts::{AadstsError, printable};
use super::assertion::{AssertionExpectation, JWT_BEARER_ASSERTION_TYPE, verify_client_assertion};
use super::{ClientAuthMethod, TokenRequest, find_tenant, is_accepted_resource, is_graph_resource};
use crate::emulator::api::ApiState;
use crate::emulator::api::scenario::TenantScenario;

/// The two protocol versions of the token endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointVersion {
    /// `/oauth2/token`, `resource=`, string-typed lifetimes.
    V1,
    /// `/oauth2/v2.0/token`, `scope=…/.default`, number-typed lifetimes.
    V2,
}

/// The form body of a token request.
type FormBody = Result<Form<Vec<(String, String)>>, FormRejection>;

/// `POST /{tenant}/oauth2/token`.
pub async fn handle_token_v1(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    form: FormBody,
) -> Response {
    handle_token(
        &state,
        EndpointVersion::V1,
        &tenant,
        uri.path(),
        &headers,
        form,
    )
}

/// `POST /{tenant}/oauth2/v2.0/token`.
pub async fn handle_token_v2(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    form: FormBody,
) -> Response {
    handle_token(
        &state,
        EndpointVersion::V2,
        &tenant,
        uri.path(),
        &headers,
        form,
    )
}

/// `GET` on either token endpoint: Entra answers AADSTS900561 rather than HTTP 405.
pub async fn handle_token_get(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    AadstsError::invalid_request(
        900561,
        "token_endpoint_not_post",
        "The endpoint only accepts POST requests. Received a GET request.",
    )
    .into_response_at(&state.base_url, state.clock.now(), &headers)
}

fn handle_token(
    state: &ApiState,
    version: EndpointVersion,
    tenant: &str,
    path: &str,
    headers: &HeaderMap,
    form: FormBody,
) -> Response {
    // A body that is not a form (wrong content type, bad encoding) has no parameters,
    // so it fails on the first required one, as Entra answers a JSON body.
    let params = form.map(|Form(pairs)| pairs).unwrap_or_default();
    let request = RequestParts {
        version,
        tenant,
        token_url: format!("{}{path}", state.base_url.trim_end_matches('/')),
        headers,
        params: &params,
    };
    match issue_for_request(state, &request) {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(
                tenant,
                code = %error.code_name(),
                rule = error.rule,
                "token request rejected"
            );
            error.into_response_at(&state.base_url, state.clock.now(), headers)
        }
    }
}

/// One token request, as received.
struct RequestParts<'a> {
    version: EndpointVersion,
    tenant: &'a str,
    token_url: String,
    headers: &'a HeaderMap,
    params: &'a [(String, String)],
}

impl RequestParts<'_> {
    /// The first non-empty value of a body parameter.
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }
}

fn issue_for_request(
    state: &ApiState,
    request: &RequestParts<'_>,
) -> Result<Response, AadstsError> {
    let tenant = find_tenant(&state.scenario, request.tenant)
        .ok_or_else(|| AadstsError::unknown_tenant(request.tenant))?;
    if state.feed.faults(&tenant.tenant_id).token_endpoint_down {
        return Err(endpoint_down());
    }
    let grant_type = request
        .param("grant_type")
        .ok_or_else(|| AadstsError::missing_parameter("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadstsError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "unsupported_grant_type",
            format!(
                "The app requested an unsupported grant type '{}'.",
                printable(grant_type)
            ),
        ));
    }
    let basic = basic_credentials(request.headers)?;
    let client_id = client_id(request, basic.as_ref())?;
    let resource = requested_resource(request)?;
    if !client_id.eq_ignore_ascii_case(&tenant.client_id) {
        return Err(unknown_client(&client_id, request.tenant));
    }
    let method = authenticate_client(state, tenant, request, basic.as_ref())?;
    // A Graph token carries the Graph roles only, a Management API token never does.
    let roles = if is_graph_resource(&resource.requested) {
        state.graph.roles(&tenant.tenant_id)
    } else if is_accepted_resource(&state.base_url, &resource.requested) {
        tenant.roles.clone()
    } else {
        return Err(unknown_resource(&resource.requested, request.tenant));
    };
    let token_request = TokenRequest {
        tenant_id: &tenant.tenant_id,
        client_id: &tenant.client_id,
        audience: &resource.audience,
        roles: &roles,
        method,
    };
    let (token, issued_at) = state.tokens.issue(&state.clock, &token_request);
    Ok(token_response(
        request.version,
        &resource.requested,
        token,
        issued_at,
    ))
}

/// The resource a request asks for, and the audience its token gets.
struct RequestedResource {
    /// As sent (`resource=`, or the scope without `/.default`).
    requested: String,
    /// The token's `aud`: v1 echoes the resource; v2 drops a trailing slash.
    audience: String,
}

fn requested_resource(request: &RequestParts<'_>) -> Result<RequestedResource, AadstsError> {
    if request.version == EndpointVersion::V1 {
        let resource = request
            .param("resource")
            .ok_or_else(|| AadstsError::missing_parameter("resource"))?;
        return Ok(RequestedResource {
            requested: resource.to_string(),
            audience: resource.to_string(),
        });
    }
    let scope = request
        .param("scope")
        .ok_or_else(|| AadstsError::missing_parameter("scope"))?;
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let [single] = scopes.as_slice() else {
        return Err(invalid_scope_parameter());
    };
    let Some(resource) = single.strip_suffix("/.default").filter(|r| !r.is_empty()) else {
        return Err(AadstsError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "scope_without_default",
            format!(
                "The provided value for scope {} is not valid. Client credential flows must \
                 have a scope value with /.default suffixed to the resource identifier \
                 (application ID URI).",
                printable(single)
            ),
        ));
    };
    Ok(RequestedResource {
        requested: resource.to_string(),
        audience: resource.trim_end_matches('/').to_string(),
    })
}

/// AADSTS70011: the scope names no resource or several.
fn invalid_scope_parameter() -> AadstsError {
    AadstsError::new(
        StatusCode::BAD_REQUEST,
        "invalid_scope",
        70011,
        "invalid_scope",
        "The provided request must include a 'scope' input parameter. The provided value for \
         the input parameter 'scope' is not valid.",
    )
}

/// Client id and secret from an `Authorization: Basic` header.
struct BasicCredentials {
    client_id: String,
    secret: String,
}

/// Reads `Authorization: Basic base64(urlencode(id):urlencode(secret))` (RFC 6749
/// §2.3.1); `None` without such a header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<BasicCredentials>, AadstsError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| malformed_request("basic_malformed"))?;
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return Err(malformed_request("basic_malformed"));
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // Other schemes carry no client credentials; the token endpoint ignores them.
        return Ok(None);
    }
    let decoded = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| malformed_request("basic_malformed"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| malformed_request("basic_malformed"))?;
    Ok(Some(BasicCredentials {
        client_id: form_decode(id),
        secret: form_decode(secret),
    }))
}

/// Decodes one `application/x-www-form-urlencoded` value (`+` is a space).
fn form_decode(value: &str) -> String {
    form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, decoded)| decoded.into_owned())
        .unwrap_or_default()
}

fn client_id(
    request: &RequestParts<'_>,
    basic: Option<&BasicCredentials>,
) -> Result<String, AadstsError> {
    match (request.param("client_id"), basic) {
        (Some(body), Some(basic)) if !body.eq_ignore_ascii_case(&basic.client_id) => {
            Err(malformed_request("client_id_conflict"))
        }
        (Some(body), _) => Ok(body.to_string()),
        (None, Some(basic)) if !basic.client_id.is_empty() => Ok(basic.client_id.clone()),
        _ => Err(AadstsError::missing_parameter("client_id")),
    }
}

/// Checks the one client credential the request carries and tells how it authenticated.
fn authenticate_client(
    state: &ApiState,
    tenant: &TenantScenario,
    request: &RequestParts<'_>,
    basic: Option<&BasicCredentials>,
) -> Result<ClientAuthMethod, AadstsError> {
    let body_secret = request.param("client_secret");
    let assertion = request.param("client_assertion");
    let secret = match (body_secret, basic) {
        (Some(_), Some(_)) => return Err(malformed_request("multiple_client_credentials")),
        (Some(secret), None) => Some(secret),
        (None, Some(basic)) => Some(basic.secret.as_str()),
        (None, None) => None,
    };
    match (secret, assertion) {
        (Some(_), Some(_)) => Err(malformed_request("multiple_client_credentials")),
        (Some(secret), None) => {
            check_secret(tenant, secret)?;
            Ok(ClientAuthMethod::Secret)
        }
        (None, Some(assertion)) => {
            check_assertion(state, tenant, request, assertion)?;
            Ok(ClientAuthMethod::Certificate)
        }
        (None, None) => Err(AadstsError::invalid_client(
            7000216,
            "client_credential_missing",
            "'client_assertion', 'client_secret' or 'request' is required for the \
             'client_credentials' grant type.",
        )),
    }
}

/// Compares in constant time (over SHA-256 digests, so lengths leak nothing either).
fn check_secret(tenant: &TenantScenario, presented: &str) -> Result<(), AadstsError> {
    let matches = tenant.client_secret.as_deref().is_some_and(|expected| {
        let expected = Sha256::digest(expected.as_bytes());
        let presented = Sha256::digest(presented.as_bytes());
        bool::from(expected.ct_eq(&presented))
    });
    if !matches {
        return Err(AadstsError::invalid_client(
            7000215,
            "bad_secret",
            format!(
                "Invalid client secret provided. Ensure the secret being sent in the request \
                 is the client secret value, not the client secret ID, for a secret added to \
                 app '{}'.",
                tenant.client_id
            ),
        ));
    }
    if tenant.secret_expired {
        return Err(AadstsError::invalid_client(
            7000222,
            "secret_expired",
            format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure \
                 portal to create new keys for your app: https://aka.ms/NewClientSecret, or \
                 consider using certificate credentials for added security: \
                 https://aka.ms/certCreds.",
                tenant.client_id
            ),
        ));
    }
    Ok(())
}

fn check_assertion(
    state: &ApiState,
    tenant: &TenantScenario,
    request: &RequestParts<'_>,
    assertion: &str,
) -> Result<(), AadstsError> {
    let assertion_type = request
        .param("client_assertion_type")
        .ok_or_else(|| AadstsError::missing_parameter("client_assertion_type"))?;
    if assertion_type != JWT_BEARER_ASSERTION_TYPE {
        return Err(malformed_request("assertion_type_unsupported"));
    }
    let expected = AssertionExpectation {
        client_id: &tenant.client_id,
        token_url: &request.token_url,
        now: state.clock.now().timestamp(),
    };
    verify_client_assertion(
        state.tokens.certificate(&tenant.tenant_id),
        assertion,
        &expected,
    )
}

/// The successful answer, in the version's shape.
fn token_response(
    version: EndpointVersion,
    resource: &str,
    token: super::IssuedToken,
    issued_at: i64,
) -> Response {
    let lifetime = token.expires_in_secs;
    let body = match version {
        EndpointVersion::V1 => {
            let expires_on = issued_at.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX));
            serde_json::json!({
                "token_type": "Bearer",
                "expires_in": lifetime.to_string(),
                "expires_on": expires_on.to_string(),
                "not_before": issued_at.to_string(),
                "resource": resource,
                "access_token": token.access_token,
            })
        }
        EndpointVersion::V2 => serde_json::json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token.access_token,
        }),
    };
    let mut response = (StatusCode::OK, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// HTTP 503 while the scenario's `token_endpoint_down` fault is on.
fn endpoint_down() -> AadstsError {
    let mut error = AadstsError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        90033,
        "token_endpoint_down",
        "A transient error has occurred. Please try again.",
    );
    error.retry_after_secs = Some(5);
    error
}

/// AADSTS9002313, Entra's generic "request is malformed" answer.
fn malformed_request(rule: &'static str) -> AadstsError {
    AadstsError::invalid_request(
        9002313,
        rule,
        "Invalid request. Request is malformed or invalid.",
    )
}

fn unknown_client(client_id: &str, tenant: &str) -> AadstsError {
    AadstsError::new(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
        "unknown_client",
        format!(
            "Application with identifier '{}' was not found in the directory '{}'. This can \
             happen if the application has not been installed by the administrator of the \
             tenant or consented to by any user in the tenant. You may have sent your \
             authentication request to the wrong tenant.",
            printable(client_id),
            printable(tenant)
        ),
    )
}

fn unknown_resource(resource: &str, tenant: &str) -> AadstsError {
    AadstsError::new(
        StatusCode::BAD_REQUEST,
        "invalid_resource",
        500011,
        "unknown_resource",
        format!(
            "The resource principal named {} was not found in the tenant named {}. This can \
             happen if the application has not been installed by the administrator of the \
             tenant or consented to by any user in the tenant. You might have sent your \
             authentication request to the wrong tenant.",
            printable(resource),
            printable(tenant)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_with(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn basic_credentials_undo_base64_then_form_encoding() {
        // "a%2Bb:s+%3A%25x" is urlencode("a+b") ":" urlencode("s :%x").
        let encoded = STANDARD.encode("a%2Bb:s+%3A%25x");
        let credentials = basic_credentials(&headers_with(&format!("basic {encoded}")))
            .unwrap()
            .unwrap();
        assert_eq!(credentials.client_id, "a+b");
        assert_eq!(credentials.secret, "s :%x");
    }

    #[test]
    fn other_schemes_carry_no_client_credentials() {
        assert!(
            basic_credentials(&headers_with("Bearer abc"))
                .unwrap()
                .is_none()
        );
        assert!(basic_credentials(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn malformed_basic_is_rejected_as_a_malformed_request() {
        for value in ["Basic !!!", "Basic bm8tY29sb24="] {
            let error = basic_credentials(&headers_with(value)).err().unwrap();
            assert_eq!(
                (error.code, error.rule),
                (9002313, "basic_malformed"),
                "{value}"
            );
        }
    }
}

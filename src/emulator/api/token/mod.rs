//! Login endpoints of the emulated Microsoft Entra ID, and bearer verification.
//!
//! Owns everything about tokens: issuing them (v1 and v2 client-credentials endpoints,
//! client secret in the body or as HTTP Basic, certificate client assertions), OpenID
//! discovery (so a tenant domain resolves to its GUID), and verifying the bearer tokens the
//! feed and Graph receive. Tokens are issued for the Management API or for Microsoft Graph
//! ([`GRAPH_RESOURCES`]); each API accepts only its own ([`Audience`]).
//!
//! Guarantees:
//! - Access tokens are JWT-shaped like Microsoft's app-only v1 tokens (`aud`, `iss`, `iat`,
//!   `nbf`, `exp`, `ver` "1.0", `tid`, `roles`, `oid`, `sub`, `appid`, …), signed HS256 with
//!   a random key private to this emulator instance: clients read the payload, only the
//!   emulator can make one.
//! - Expiry is judged by the emulator's [`Clock`], so tests move time to expire tokens.
//! - Every rejection carries a [`Rejection`](super::error::Rejection) naming its code
//!   (`AADSTS7000215`, `InvalidAuthenticationToken`, …) and rule, and no error message
//!   ever contains a secret or a token.
//!
//! Routes (all under `{tenant}` = tenant GUID or domain, any case):
//! `POST /{tenant}/oauth2/token` (v1), `POST /{tenant}/oauth2/v2.0/token` (v2), `GET` on
//! either (AADSTS900561, as Entra), `GET /{tenant}/v2.0/.well-known/openid-configuration`
//! and `/{tenant}/.well-known/openid-configuration`, and their `jwks_uri`.
//!
//! Files: [`endpoint`] (token endpoints and client authentication), [`assertion`]
//! (certificates and client assertions), [`discovery`] (OpenID configuration),
//! [`aadsts`] (Entra's error envelope).

pub mod aadsts;
pub mod assertion;
pub mod discovery;
pub mod endpoint;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::AfError;
use super::scenario::{Scenario, TenantScenario};
use super::{ApiEmulatorError, ApiState};
use crate::clock::Clock;
use assertion::AppCertificate;

/// Lifetime of access tokens unless changed with [`TokenState::set_lifetime_secs`].
pub const DEFAULT_LIFETIME_SECS: u64 = 3599;

/// Resources (token audiences) of the real clouds' Management Activity API; the
/// emulator's own base URL is accepted too.
pub const CLOUD_RESOURCES: [&str; 4] = [
    "https://manage.office.com",
    "https://manage-gcc.office.com",
    "https://manage.office365.us",
    "https://manage.protection.apps.mil",
];

/// Resources (token audiences) of Microsoft Graph in the real clouds: Commercial and GCC,
/// GCC High, DoD. A Graph token carries the tenant's Graph roles, never the Management
/// API's, and only Graph accepts it.
pub const GRAPH_RESOURCES: [&str; 3] = [
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
];

/// The API a bearer token must be issued for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The Management Activity API (one of [`CLOUD_RESOURCES`] or the emulator's base URL).
    ManagementApi,
    /// Microsoft Graph (one of [`GRAPH_RESOURCES`]).
    Graph,
}

/// Error code of every bearer rejection, in the feed's `{"error":{"code",…}}` envelope.
pub const BEARER_ERROR_CODE: &str = "InvalidAuthenticationToken";

/// Allowed clock skew, in seconds, when judging a token's `nbf`.
const NOT_BEFORE_SKEW_SECS: i64 = 300;

/// Keys and certificates used to issue and verify tokens.
pub struct TokenState {
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    lifetime_secs: AtomicU64,
    /// The app certificate of each tenant that has one, by lowercase tenant GUID.
    certificates: HashMap<String, AppCertificate>,
}

impl TokenState {
    /// Prepares token issuance for the scenario's tenants (loads their certificates).
    pub fn new(scenario: &Scenario) -> Result<Self, ApiEmulatorError> {
        let secret: [u8; 32] = rand::random();
        let mut certificates = HashMap::new();
        for tenant in &scenario.tenants {
            if let Some(path) = &tenant.certificate {
                let certificate = AppCertificate::load(path)
                    .map_err(|error| ApiEmulatorError::Scenario(error.to_string()))?;
                certificates.insert(tenant.tenant_id.to_ascii_lowercase(), certificate);
            }
        }
        Ok(Self {
            encoding_key: EncodingKey::from_secret(&secret),
            decoding_key: DecodingKey::from_secret(&secret),
            lifetime_secs: AtomicU64::new(DEFAULT_LIFETIME_SECS),
            certificates,
        })
    }

    /// Sets the lifetime of tokens issued from now on (default 3,599 s).
    pub fn set_lifetime_secs(&self, seconds: u64) {
        self.lifetime_secs.store(seconds, Ordering::Relaxed);
    }

    /// The lifetime given to tokens issued now.
    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs.load(Ordering::Relaxed)
    }

    /// The app certificate registered for a tenant, if any.
    pub fn certificate(&self, tenant_id: &str) -> Option<&AppCertificate> {
        self.certificates.get(&tenant_id.to_ascii_lowercase())
    }

    /// Issues an access token as the token endpoints do (JWT-shaped: `tid`, `aud`, `appid`,
    /// `roles`, `exp` by `clock`). Used by the endpoints and by tests of the feed.
    pub fn issue_access_token(
        &self,
        clock: &Clock,
        tenant_id: &str,
        client_id: &str,
        audience: &str,
        roles: &[String],
    ) -> IssuedToken {
        let request = TokenRequest {
            tenant_id,
            client_id,
            audience,
            roles,
            method: ClientAuthMethod::Secret,
        };
        self.issue(clock, &request).0
    }

    /// Issues a token and also returns its `nbf` (= `iat`), for the v1 response.
    fn issue(&self, clock: &Clock, request: &TokenRequest<'_>) -> (IssuedToken, i64) {
        let now = clock.now().timestamp();
        let lifetime = self.lifetime_secs();
        let claims = AccessTokenClaims::new(request, now, lifetime);
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".to_string());
        header.kid = Some("o365-emulator".to_string());
        // Encoding our own serializable claims with an HMAC key cannot fail; an empty token
        // would be rejected by verify_bearer anyway.
        let access_token =
            jsonwebtoken::encode(&header, &claims, &self.encoding_key).unwrap_or_default();
        let token = IssuedToken {
            access_token,
            expires_in_secs: lifetime,
        };
        (token, now)
    }
}

/// What a token is issued for.
struct TokenRequest<'a> {
    tenant_id: &'a str,
    client_id: &'a str,
    audience: &'a str,
    roles: &'a [String],
    method: ClientAuthMethod,
}

/// How the client authenticated, as the `appidacr` claim tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientAuthMethod {
    /// A client secret (`appidacr` "1").
    Secret,
    /// A certificate client assertion (`appidacr` "2").
    Certificate,
}

/// A freshly issued access token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The bearer token (a JWT).
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
}

/// The payload of an emulated app-only access token, shaped like Microsoft's v1 tokens
/// (`tests/fixtures/ms-docs/ms_docs_app_only_access_token_claims.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct AccessTokenClaims {
    aud: String,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    ver: String,
    tid: String,
    #[serde(default)]
    roles: Vec<String>,
    oid: String,
    sub: String,
    idp: String,
    appid: String,
    appidacr: String,
}

impl AccessTokenClaims {
    fn new(request: &TokenRequest<'_>, now: i64, lifetime_secs: u64) -> Self {
        let issuer = format!("https://sts.windows.net/{}/", request.tenant_id);
        let object_id = service_principal_id(request.tenant_id, request.client_id);
        let lifetime = i64::try_from(lifetime_secs).unwrap_or(i64::MAX);
        Self {
            aud: request.audience.to_string(),
            iss: issuer.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(lifetime),
            ver: "1.0".to_string(),
            tid: request.tenant_id.to_string(),
            roles: request.roles.to_vec(),
            oid: object_id.clone(),
            sub: object_id,
            idp: issuer,
            appid: request.client_id.to_string(),
            appidacr: match request.method {
                ClientAuthMethod::Secret => "1",
                ClientAuthMethod::Certificate => "2",
            }
            .to_string(),
        }
    }
}

/// A stable GUID-shaped object id for the app's service principal in a tenant.
fn service_principal_id(tenant_id: &str, client_id: &str) -> String {
    let digest = Sha256::digest(format!("{tenant_id}/{client_id}").to_ascii_lowercase());
    let hex = hex::encode(&digest[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The claims of a verified access token.
#[derive(Clone, Debug)]
pub struct BearerClaims {
    /// Tenant the token was issued in.
    pub tid: String,
    /// Client id of the app.
    pub appid: String,
    /// Granted application roles.
    pub roles: Vec<String>,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

/// Verifies the `Authorization: Bearer` header of a feed request: signature, audience and
/// expiry (by the emulator's clock). The tenant and role checks are the feed's.
///
/// Rejections are HTTP 401 with code [`BEARER_ERROR_CODE`] and rule `bearer_missing`,
/// `bearer_invalid`, `bearer_wrong_audience` or `bearer_expired`; the response carries
/// `WWW-Authenticate: Bearer`.
pub fn verify_bearer(state: &ApiState, headers: &HeaderMap) -> Result<BearerClaims, AfError> {
    verify_bearer_for(state, headers, Audience::ManagementApi)
}

/// [`verify_bearer`] for the given API: a token issued for the other one is rejected
/// `bearer_wrong_audience`.
pub fn verify_bearer_for(
    state: &ApiState,
    headers: &HeaderMap,
    audience: Audience,
) -> Result<BearerClaims, AfError> {
    let token = bearer_token(headers)?;
    let claims = decode_claims(state, token)?;
    let audience_accepted = match audience {
        Audience::ManagementApi => is_accepted_resource(&state.base_url, &claims.aud),
        Audience::Graph => is_graph_resource(&claims.aud),
    };
    if !audience_accepted || claims.aud.ends_with('/') {
        return Err(bearer_error(
            "bearer_wrong_audience",
            "Access token validation failure. Invalid audience.",
        ));
    }
    let now = state.clock.now().timestamp();
    if now >= claims.exp {
        return Err(bearer_error(
            "bearer_expired",
            "Lifetime validation failed, the token is expired.",
        ));
    }
    if claims.nbf > now.saturating_add(NOT_BEFORE_SKEW_SECS) {
        return Err(bearer_error(
            "bearer_invalid",
            "Lifetime validation failed, the token is not yet valid.",
        ));
    }
    Ok(BearerClaims {
        tid: claims.tid,
        appid: claims.appid,
        roles: claims.roles,
        aud: claims.aud,
        exp: claims.exp,
    })
}

/// The claims of a token this emulator signed; time and audience are not judged here.
fn decode_claims(state: &ApiState, token: &str) -> Result<AccessTokenClaims, AfError> {
    let mut validation = Validation::new(Algorithm::HS256);
    // Time and audience are judged by the callers, by the emulator's clock and resource lists.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<AccessTokenClaims>(token, &state.tokens.decoding_key, &validation)
        .map(|data| data.claims)
        .map_err(|_| bearer_error("bearer_invalid", "Access token validation failure."))
}

/// The `tid` of the request's bearer token when this emulator signed it, whatever its
/// audience or expiry: how middleware in front of Graph (whose paths name no tenant)
/// finds the tenant a request is for.
pub fn bearer_tenant(state: &ApiState, headers: &HeaderMap) -> Option<String> {
    let token = bearer_token(headers).ok()?;
    decode_claims(state, token).ok().map(|claims| claims.tid)
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, AfError> {
    let missing = || bearer_error("bearer_missing", "Access token is empty.");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(missing)?;
    let value = value
        .to_str()
        .map_err(|_| bearer_error("bearer_invalid", "Access token validation failure."))?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(missing());
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(missing());
    }
    Ok(token)
}

/// An HTTP 401 bearer rejection (the envelope adds `WWW-Authenticate: Bearer`).
fn bearer_error(rule: &'static str, message: &str) -> AfError {
    AfError::new(StatusCode::UNAUTHORIZED, BEARER_ERROR_CODE, rule, message)
}

/// True when `resource` names the Management API: one of the four clouds or this
/// emulator (`base_url`), ignoring case and one trailing slash.
pub fn is_accepted_resource(base_url: &str, resource: &str) -> bool {
    let wanted = resource.strip_suffix('/').unwrap_or(resource);
    CLOUD_RESOURCES
        .iter()
        .copied()
        .chain([base_url.trim_end_matches('/')])
        .any(|accepted| accepted.eq_ignore_ascii_case(wanted))
}

/// True when `resource` names Microsoft Graph in one of the clouds, ignoring case and one
/// trailing slash.
pub fn is_graph_resource(resource: &str) -> bool {
    let wanted = resource.strip_suffix('/').unwrap_or(resource);
    GRAPH_RESOURCES
        .iter()
        .any(|graph| graph.eq_ignore_ascii_case(wanted))
}

/// The scenario tenant named by a login path segment: its GUID or its domain, ignoring case.
pub fn find_tenant<'a>(scenario: &'a Scenario, tenant: &str) -> Option<&'a TenantScenario> {
    scenario.tenants.iter().find(|candidate| {
        candidate.tenant_id.eq_ignore_ascii_case(tenant)
            || candidate
                .domain
                .as_deref()
                .is_some_and(|domain| domain.eq_ignore_ascii_case(tenant))
    })
}

/// Routes of the login endpoints.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(
            "/{tenant}/oauth2/token",
            post(endpoint::handle_token_v1).get(endpoint::handle_token_get),
        )
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(endpoint::handle_token_v2).get(endpoint::handle_token_get),
        )
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery::handle_openid_configuration_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(discovery::handle_openid_configuration_v1),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(discovery::handle_keys))
        .route("/{tenant}/discovery/keys", get(discovery::handle_keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_resources_are_the_four_clouds_and_the_emulator() {
        let base = "http://127.0.0.1:8443";
        for resource in CLOUD_RESOURCES
            .into_iter()
            .chain([base, "HTTPS://MANAGE.OFFICE.COM/"])
        {
            assert!(is_accepted_resource(base, resource), "{resource}");
        }
        for resource in [
            "https://graph.microsoft.com",
            "https://manage.office.com.evil.example",
            "http://127.0.0.1:8444",
        ] {
            assert!(!is_accepted_resource(base, resource), "{resource}");
        }
    }

    #[test]
    fn graph_resources_are_the_three_graph_hosts_only() {
        for resource in GRAPH_RESOURCES
            .into_iter()
            .chain(["HTTPS://GRAPH.MICROSOFT.COM/"])
        {
            assert!(is_graph_resource(resource), "{resource}");
        }
        for resource in [
            "https://manage.office.com",
            "https://graph.microsoft.com.evil.example",
            "https://graph.microsoft.com//",
        ] {
            assert!(!is_graph_resource(resource), "{resource}");
        }
    }

    #[test]
    fn service_principal_id_is_a_stable_guid() {
        let id = service_principal_id("T", "C");
        assert!(aadsts::is_guid(&id), "{id}");
        assert_eq!(id, service_principal_id("t", "c"));
        assert_ne!(id, service_principal_id("T", "D"));
    }
}

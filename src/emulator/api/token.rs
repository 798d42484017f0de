//! Login endpoints of the emulated Microsoft Entra ID, and bearer verification.
//! (Being written; the public signatures below are the contract other files use.)

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;

use super::error::AfError;
use super::scenario::Scenario;
use super::{ApiEmulatorError, ApiState};
use crate::clock::Clock;

/// Keys and certificates used to issue and verify tokens.
pub struct TokenState {}

impl TokenState {
    /// Prepares token issuance for the scenario's tenants (loads their certificates).
    pub fn new(_scenario: &Scenario) -> Result<Self, ApiEmulatorError> {
        Ok(Self {})
    }

    /// Sets the lifetime of tokens issued from now on (default 3,599 s).
    pub fn set_lifetime_secs(&self, _seconds: u64) {}

    /// Issues an access token as the token endpoints do (JWT-shaped: `tid`, `aud`, `appid`,
    /// `roles`, `exp` by `clock`). Used by the endpoints and by tests of the feed.
    pub fn issue_access_token(
        &self,
        _clock: &Clock,
        _tenant_id: &str,
        _client_id: &str,
        _audience: &str,
        _roles: &[String],
    ) -> IssuedToken {
        IssuedToken {
            access_token: String::new(),
            expires_in_secs: 0,
        }
    }
}

/// A freshly issued access token.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The bearer token (a JWT).
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
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
pub fn verify_bearer(_state: &ApiState, _headers: &HeaderMap) -> Result<BearerClaims, AfError> {
    Err(AfError::new(
        axum::http::StatusCode::UNAUTHORIZED,
        "InvalidAuthenticationToken",
        "bearer_invalid",
        "not yet implemented",
    ))
}

/// Routes of the login endpoints.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
}

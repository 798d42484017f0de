//! Login endpoints of the emulated Microsoft Entra ID, and bearer verification.
//! (Being written; the public signatures below are the contract other files use.)

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderMap;

use super::error::AfError;
use super::scenario::Scenario;
use super::{ApiEmulatorError, ApiState};

/// Keys and certificates used to issue and verify tokens.
pub struct TokenState {}

impl TokenState {
    /// Prepares token issuance for the scenario's tenants (loads their certificates).
    pub fn new(_scenario: &Scenario) -> Result<Self, ApiEmulatorError> {
        Ok(Self {})
    }

    /// Sets the lifetime of tokens issued from now on (default 3,599 s).
    pub fn set_lifetime_secs(&self, _seconds: u64) {}
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

//! Access tokens for the Management Activity API: client credentials on the Microsoft
//! identity platform's v2 endpoint, one cache per tenant.
//!
//! Guarantees:
//! - At most one token request per tenant is in flight: callers that find the cache empty
//!   or due for refresh queue on one lock and reuse the token the first of them fetched.
//! - A token is refreshed ahead of its expiry (at half its lifetime or five minutes before
//!   it ends, whichever is later), so a request never leaves with a token about to lapse.
//! - After a 401 the API client calls [`TokenProvider::renew_after_rejection`] with the
//!   token that was refused; only if that token is still the cached one is a new one
//!   fetched, so a burst of 401s causes one renewal, not one each.
//! - The secret, the client assertion and the token never appear in a log line, an error
//!   or a `Debug` output ([`SecretString`] masks them).
//! - A token request goes only to the tenant's token URL on the login origin: a redirect
//!   answer is never followed (a 307 would re-POST the form, credential included, to the
//!   host it names); it is [`AuthError::Redirected`], paced like an unavailable endpoint.
//!
//! Expiry is measured on the library's [`Clock`], so tests move time instead of waiting.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api::json;
use crate::clock::Clock;
use crate::ops::Metrics;
use crate::ops::metrics::TenantOutcomeLabels;
use std::sync::Arc;

/// How the app proves its identity to the token endpoint.
#[derive(Clone)]
pub enum Credential {
    /// A client secret, sent in the form body.
    Secret(SecretString),
    /// A certificate: a signed client assertion JWT (PS256, `x5t#S256` header).
    Certificate(CertificateCredential),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => formatter.write_str("Credential::Secret(***)"),
            Self::Certificate(certificate) => formatter
                .debug_tuple("Credential::Certificate")
                .field(&certificate.thumbprint_sha256)
                .finish(),
        }
    }
}

/// A certificate's private key and the thumbprint Microsoft identifies it by.
#[derive(Clone)]
pub struct CertificateCredential {
    key: EncodingKey,
    /// base64url SHA-256 of the certificate's DER encoding (the `x5t#S256` header).
    thumbprint_sha256: String,
    /// base64url SHA-1 of the certificate's DER encoding (the legacy `x5t` header).
    thumbprint_sha1: String,
    /// PS256 with `x5t#S256`, or RS256 with `x5t`.
    legacy_rs256: bool,
    /// The certificate's `notAfter`.
    not_after: Option<DateTime<Utc>>,
}

impl CertificateCredential {
    /// Reads a PEM certificate and its RSA private key (PKCS#8 or PKCS#1).
    pub fn from_pem(certificate_pem: &[u8], key_pem: &[u8]) -> Result<Self, AuthError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let certificate = CertificateDer::from_pem_slice(certificate_pem).map_err(|error| {
            AuthError::Credential(format!("the certificate is not a PEM certificate: {error}"))
        })?;
        let key = EncodingKey::from_rsa_pem(key_pem).map_err(|error| {
            AuthError::Credential(format!("the key is not a PEM RSA private key: {error}"))
        })?;
        let not_after = x509_parser::parse_x509_certificate(certificate.as_ref())
            .ok()
            .and_then(|(_, parsed)| {
                DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0)
            });
        Ok(Self {
            key,
            thumbprint_sha256: URL_SAFE_NO_PAD.encode(Sha256::digest(certificate.as_ref())),
            thumbprint_sha1: URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(certificate.as_ref())),
            legacy_rs256: false,
            not_after,
        })
    }

    /// Signs assertions the older way: RS256, naming the certificate by its SHA-1
    /// thumbprint (`x5t`), for setups that expect it.
    pub fn with_legacy_rs256(mut self) -> Self {
        self.legacy_rs256 = true;
        self
    }

    /// When the certificate stops being valid (Entra ID then refuses its assertions).
    pub fn not_after(&self) -> Option<DateTime<Utc>> {
        self.not_after
    }

    /// A client assertion for `token_url`, valid for ten minutes from `now`.
    fn assertion(
        &self,
        client_id: &str,
        token_url: &Url,
        now: DateTime<Utc>,
    ) -> Result<String, AuthError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            iss: &'a str,
            sub: &'a str,
            jti: String,
            nbf: i64,
            iat: i64,
            exp: i64,
        }
        let mut header = if self.legacy_rs256 {
            let mut header = Header::new(Algorithm::RS256);
            header.x5t = Some(self.thumbprint_sha1.clone());
            header
        } else {
            let mut header = Header::new(Algorithm::PS256);
            header.x5t_s256 = Some(self.thumbprint_sha256.clone());
            header
        };
        header.typ = Some("JWT".into());
        let claims = Claims {
            aud: token_url.as_str(),
            iss: client_id,
            sub: client_id,
            jti: format!("{:032x}", rand::random::<u128>()),
            nbf: now.timestamp(),
            iat: now.timestamp(),
            exp: (now + Duration::minutes(10)).timestamp(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|error| AuthError::Credential(format!("cannot sign the assertion: {error}")))
    }
}

/// Where and as whom a tenant's tokens are requested.
#[derive(Debug)]
pub struct TokenSourceConfig {
    /// The tenant GUID (for messages; it is also in the URL).
    pub tenant_id: String,
    /// `{login}/{tenant}/oauth2/v2.0/token` ([`crate::cloud::Endpoints::token_url`]).
    pub token_url: Url,
    /// The app's client id.
    pub client_id: String,
    /// `{api resource}/.default`.
    pub scope: String,
    /// Secret or certificate.
    pub credential: Credential,
}

/// A token handed to a caller; keep it to report a rejection.
#[derive(Clone, Debug)]
pub struct AccessToken {
    value: SecretString,
    generation: u64,
}

impl AccessToken {
    /// The bearer value, for the `Authorization` header only.
    pub fn bearer(&self) -> &str {
        self.value.expose_secret()
    }
}

struct CachedToken {
    token: AccessToken,
    refresh_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// The token endpoint failing with a retryable error: no new request before `retry_at`,
/// so a backlog of callers meets one paced series of requests instead of one each.
struct Outage {
    retry_at: DateTime<Utc>,
    failures: u32,
    reason: String,
}

/// Pacing of token requests while the endpoint fails: 1 s doubling to a minute.
const OUTAGE_RETRY: crate::retry::RetryPolicy = crate::retry::RetryPolicy {
    min_delay: std::time::Duration::from_secs(1),
    max_delay: std::time::Duration::from_secs(60),
    max_attempts: None,
    jitter: true,
};

/// Why no token could be had. Messages name the tenant and say what to fix; they never
/// hold the secret, the assertion or a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The identity platform refused the request: a configuration problem to fix.
    #[error("tenant {tenant_id}: token request refused ({error}{code}): {advice}")]
    Refused {
        /// The tenant.
        tenant_id: String,
        /// HTTP status.
        status: u16,
        /// OAuth error (`invalid_client`, …).
        error: String,
        /// `, AADSTSnnnn` when known, for the message.
        code: String,
        /// The AADSTS number, when given.
        aadsts: Option<u32>,
        /// What the operator should do.
        advice: &'static str,
    },
    /// The token endpoint could not be reached or failed (transport, 5xx, 429): retry later.
    #[error("tenant {tenant_id}: token endpoint unavailable: {reason}")]
    Unavailable {
        /// The tenant.
        tenant_id: String,
        /// What went wrong.
        reason: String,
    },
    /// The token endpoint answered with a redirect (3xx), which is never followed: the
    /// form it would re-send carries the credential. Retried later, as an unavailable
    /// endpoint, since a misbehaving proxy may recover.
    #[error(
        "tenant {tenant_id}: the token endpoint answered HTTP {status} redirecting to {target}, which is never followed: if a proxy or gateway in between redirects, fix it; to use another login address on purpose, set api.login_url (or O365_CONNECTOR_LOGIN_URL) to it"
    )]
    Redirected {
        /// The tenant.
        tenant_id: String,
        /// HTTP status (301, 302, 303, 307, 308).
        status: u16,
        /// The host the `Location` header names.
        target: String,
    },
    /// The credential itself is unusable (unreadable certificate or key).
    #[error("client credential unusable: {0}")]
    Credential(String),
    /// A publisher id given as a domain could not be resolved to its tenant GUID.
    #[error(
        "cannot resolve publisher_id {domain:?} to a tenant GUID: {reason}; set the vendor tenant's GUID instead"
    )]
    PublisherDiscovery {
        /// The domain that was given.
        domain: String,
        /// What went wrong.
        reason: String,
    },
}

impl AuthError {
    /// True when retrying later may succeed without an operator's change.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Redirected { .. })
    }
}

/// Resolves a tenant domain (`contoso.onmicrosoft.com`) to its tenant GUID, once, from the
/// login authority's OpenID configuration: the GUID is the path segment of its `issuer`
/// (`https://login.microsoftonline.com/{guid}/v2.0`). A GUID is returned as it is.
pub async fn resolve_publisher_id(
    http: &reqwest::Client,
    endpoints: &crate::cloud::Endpoints,
    publisher: &crate::config::PublisherId,
) -> Result<String, AuthError> {
    use crate::config::PublisherId;
    let domain = match publisher {
        PublisherId::Guid(guid) => return Ok(guid.to_string()),
        PublisherId::Domain(domain) => domain,
    };
    let failed = |reason: String| AuthError::PublisherDiscovery {
        domain: domain.clone(),
        reason,
    };
    #[derive(Deserialize)]
    struct OpenIdConfiguration {
        issuer: String,
    }
    let response = http
        .get(endpoints.openid_configuration_url(domain))
        .send()
        .await
        .map_err(|error| failed(error.to_string()))?;
    let status = response.status();
    if let Some(target) =
        crate::api::http::redirect_target(status, response.headers(), response.url())
    {
        return Err(failed(format!(
            "the login authority answered HTTP {status} redirecting to {target}, which is never followed"
        )));
    }
    if !status.is_success() {
        return Err(failed(format!(
            "the login authority answered HTTP {status}"
        )));
    }
    let body = response
        .bytes()
        .await
        .map_err(|error| failed(error.to_string()))?;
    let configuration: OpenIdConfiguration = json::from_slice(&body)
        .map_err(|error| failed(format!("unexpected OpenID configuration: {error}")))?;
    Url::parse(&configuration.issuer)
        .ok()
        .and_then(|issuer| {
            issuer
                .path_segments()?
                .find_map(|segment| uuid::Uuid::parse_str(segment).ok())
        })
        .map(|guid| guid.hyphenated().to_string())
        .ok_or_else(|| {
            failed(format!(
                "no tenant GUID in issuer {:?}",
                configuration.issuer
            ))
        })
}

/// A token cache for one tenant. See the module doc for its guarantees.
pub struct TokenProvider {
    http: reqwest::Client,
    config: TokenSourceConfig,
    clock: Clock,
    cached: tokio::sync::Mutex<Option<CachedToken>>,
    /// The token endpoint's current outage; written only by holders of `cached`'s lock
    /// (`fetch`), read by anyone (`in_outage`).
    outage: std::sync::Mutex<Option<Outage>>,
    /// True while `outage` holds one (written with it, under its lock): lets `in_outage`,
    /// which the workers ask of every tenant before each lease, answer without the lock.
    failing: AtomicBool,
    generation: AtomicU64,
    requests: AtomicU64,
    metrics: Option<(Arc<Metrics>, String)>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: SecretString,
    /// A number on v2, a string on v1.
    expires_in: NumberOrString,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(i64),
    String(String),
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<u32>,
}

impl TokenProvider {
    /// A provider that requests tokens with `http` (which carries the proxy and CA settings).
    pub fn new(http: reqwest::Client, config: TokenSourceConfig, clock: Clock) -> Self {
        Self {
            http,
            config,
            clock,
            cached: tokio::sync::Mutex::new(None),
            outage: std::sync::Mutex::new(None),
            failing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            metrics: None,
        }
    }

    /// Counts this provider's token requests in `metrics` under `tenant_name`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>, tenant_name: &str) -> Self {
        let label = metrics.tenant_label(tenant_name);
        self.metrics = Some((metrics, label));
        self
    }

    fn count(&self, result: &Result<CachedToken, AuthError>) {
        let Some((metrics, tenant)) = &self.metrics else {
            return;
        };
        let outcome = match result {
            Ok(_) => "ok",
            Err(AuthError::Refused { .. }) => "refused",
            Err(AuthError::Unavailable { .. }) => "unavailable",
            Err(AuthError::Redirected { .. }) => "redirected",
            Err(_) => "error",
        };
        metrics
            .token_requests
            .get_or_create(&TenantOutcomeLabels {
                tenant: tenant.clone(),
                outcome,
            })
            .inc();
    }

    /// The tenant this provider serves.
    pub fn tenant_id(&self) -> &str {
        &self.config.tenant_id
    }

    /// Token requests made so far (for metrics and tests).
    pub fn token_requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// A valid token: the cached one unless it is due for refresh.
    pub async fn token(&self) -> Result<AccessToken, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref() {
            let now = self.clock.now();
            if now < current.refresh_at {
                return Ok(current.token.clone());
            }
            // Due for refresh: keep serving the current token if the endpoint fails
            // while it is still valid, rather than failing requests that would succeed.
            return match self.fetch().await {
                Ok(fresh) => Ok(Self::store(&mut cached, fresh)),
                Err(error) if error.is_retryable() && now < current.expires_at => {
                    tracing::warn!(tenant = %self.config.tenant_id, %error, "token refresh failed; the current token is still valid");
                    Ok(current.token.clone())
                }
                Err(error) => Err(error),
            };
        }
        let fresh = self.fetch().await?;
        Ok(Self::store(&mut cached, fresh))
    }

    /// Called after the API answered 401 to `rejected`: fetches a new token unless another
    /// caller already replaced that one.
    pub async fn renew_after_rejection(
        &self,
        rejected: &AccessToken,
    ) -> Result<AccessToken, AuthError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && current.token.generation != rejected.generation
        {
            return Ok(current.token.clone());
        }
        let fresh = self.fetch().await?;
        Ok(Self::store(&mut cached, fresh))
    }

    /// Drops the cached token unless another caller already replaced `stale`, so the next
    /// [`TokenProvider::token`] asks for a new one. For a token the resource refused for
    /// lack of a role (403): roles granted since are only in a new token.
    pub async fn forget(&self, stale: &AccessToken) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|current| current.token.generation == stale.generation)
        {
            *cached = None;
        }
    }

    fn store(cached: &mut Option<CachedToken>, fresh: CachedToken) -> AccessToken {
        let token = fresh.token.clone();
        *cached = Some(fresh);
        token
    }

    /// Asks the token endpoint, unless it is failing and its next attempt is not due: then
    /// fails at once with the last failure. Callers hold `cached`'s lock.
    async fn fetch(&self) -> Result<CachedToken, AuthError> {
        let now = self.clock.now();
        if let Some(outage) = self.outage_guard().as_ref()
            && now < outage.retry_at
        {
            let wait = (outage.retry_at - now).num_milliseconds().max(0) as f64 / 1000.0;
            return Err(AuthError::Unavailable {
                tenant_id: self.config.tenant_id.clone(),
                reason: format!("{}; next attempt in {wait:.1} s", outage.reason),
            });
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_once().await;
        self.count(&result);
        let mut outage = self.outage_guard();
        match &result {
            Err(AuthError::Redirected { status, target, .. }) => self.note_outage(
                &mut outage,
                format!("HTTP {status} redirecting to {target}, which is never followed"),
            ),
            Err(AuthError::Unavailable { reason, .. }) => {
                self.note_outage(&mut outage, reason.clone())
            }
            _ => {
                *outage = None;
                self.failing.store(false, Ordering::Release);
            }
        }
        result
    }

    /// Records one more failure of the token endpoint and when to ask it again.
    fn note_outage(&self, outage: &mut Option<Outage>, reason: String) {
        let failures = outage.as_ref().map_or(0, |outage| outage.failures) + 1;
        let delay = OUTAGE_RETRY
            .delay_for_attempt(failures)
            .unwrap_or(OUTAGE_RETRY.max_delay);
        *outage = Some(Outage {
            retry_at: self.clock.now() + Duration::from_std(delay).unwrap_or(Duration::seconds(60)),
            failures,
            reason,
        });
        self.failing.store(true, Ordering::Release);
    }

    /// True while the token endpoint is failing and its next attempt is not due: any call
    /// needing a new token fails at once until then.
    pub fn in_outage(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return false;
        }
        self.outage_guard()
            .as_ref()
            .is_some_and(|outage| self.clock.now() < outage.retry_at)
    }

    fn outage_guard(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.outage
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn fetch_once(&self) -> Result<CachedToken, AuthError> {
        let config = &self.config;
        let issued_at = self.clock.now();
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", config.client_id.clone()),
            ("scope", config.scope.clone()),
        ];
        match &config.credential {
            Credential::Secret(secret) => {
                form.push(("client_secret", secret.expose_secret().to_string()))
            }
            Credential::Certificate(certificate) => {
                let assertion =
                    certificate.assertion(&config.client_id, &config.token_url, issued_at)?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion));
            }
        }
        let unavailable = |reason: String| AuthError::Unavailable {
            tenant_id: config.tenant_id.clone(),
            reason,
        };
        let response = self
            .http
            .post(config.token_url.clone())
            .form(&form)
            .send()
            .await
            // reqwest errors name the URL, never the form body.
            .map_err(|error| unavailable(error.without_url().to_string()))?;
        let status = response.status();
        if let Some(target) =
            crate::api::http::redirect_target(status, response.headers(), &config.token_url)
        {
            return Err(AuthError::Redirected {
                tenant_id: config.tenant_id.clone(),
                status: status.as_u16(),
                target,
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| unavailable(error.without_url().to_string()))?;
        if status.is_success() {
            let parsed: TokenResponse = json::from_slice(&body).map_err(|error| {
                unavailable(format!("token response is not the expected JSON: {error}"))
            })?;
            return Ok(self.cache_entry(parsed, issued_at));
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(unavailable(format!("HTTP {status}")));
        }
        let error_body: TokenErrorBody = json::from_slice(&body).unwrap_or_default();
        let aadsts = error_body.error_codes.first().copied();
        Err(AuthError::Refused {
            tenant_id: config.tenant_id.clone(),
            status: status.as_u16(),
            error: if error_body.error.is_empty() {
                format!("HTTP {status}")
            } else {
                error_body.error
            },
            code: aadsts
                .map(|code| format!(", AADSTS{code}"))
                .unwrap_or_default(),
            aadsts,
            advice: advice_for(aadsts),
        })
    }

    fn cache_entry(&self, parsed: TokenResponse, issued_at: DateTime<Utc>) -> CachedToken {
        let lifetime_secs = match parsed.expires_in {
            NumberOrString::Number(seconds) => seconds,
            NumberOrString::String(text) => text.trim().parse().unwrap_or(0),
        }
        .max(0);
        let lifetime = Duration::seconds(lifetime_secs);
        let refresh_after = std::cmp::max(lifetime / 2, lifetime - Duration::minutes(5));
        CachedToken {
            token: AccessToken {
                value: parsed.access_token,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            },
            refresh_at: issued_at + refresh_after,
            expires_at: issued_at + lifetime,
        }
    }
}

/// What to do about a refused token request, in the operator's terms.
fn advice_for(aadsts: Option<u32>) -> &'static str {
    match aadsts {
        Some(7000215) => {
            "the client secret is wrong: copy the secret's Value (not its Secret ID) from the app registration's Certificates & secrets"
        }
        Some(7000222) => {
            "the client secret has expired: create a new secret in the app registration and update the configuration"
        }
        Some(700016) => {
            "the client id is not known in this tenant: check client_id and tenant_id, and that admin consent was granted in this tenant"
        }
        Some(90002) | Some(90023) => "the tenant was not found: check tenant_id and the cloud",
        Some(700027) | Some(700024) | Some(700021) => {
            "the certificate assertion was refused: upload this certificate to the app registration and check the machine's clock"
        }
        Some(70011) | Some(500011) => {
            "the API scope was refused: check the tenant's cloud (Commercial, GCC, GCCHigh, DoD)"
        }
        Some(7000216) | Some(7000218) => {
            "no client credential was accepted: set client_secret or certificate"
        }
        _ => "check tenant_id, client_id and the credential in the app registration",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential() -> CertificateCredential {
        CertificateCredential::from_pem(
            &std::fs::read("tests/fixtures/app-cert/app.pem").unwrap(),
            &std::fs::read("tests/fixtures/app-cert/app-key.pem").unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn token_answers_with_a_byte_order_mark_parse() {
        let success =
            "\u{FEFF}{\"token_type\":\"Bearer\",\"expires_in\":\"3599\",\"access_token\":\"eyJ0\"}";
        let parsed: TokenResponse = json::from_slice(success.as_bytes()).unwrap();
        assert_eq!(parsed.access_token.expose_secret(), "eyJ0");
        assert!(matches!(parsed.expires_in, NumberOrString::String(ref text) if text == "3599"));
        let refused = "\u{FEFF}{\"error\":\"invalid_client\",\"error_codes\":[7000215]}";
        let parsed: TokenErrorBody = json::from_slice(refused.as_bytes()).unwrap();
        assert_eq!(
            (parsed.error.as_str(), parsed.error_codes),
            ("invalid_client", vec![7000215])
        );
    }

    #[test]
    fn assertions_are_ps256_with_x5t_s256_or_legacy_rs256_with_x5t() {
        let url = Url::parse("https://login.microsoftonline.com/t/oauth2/v2.0/token").unwrap();
        let now = Utc::now();
        let current = credential().assertion("client", &url, now).unwrap();
        let header = jsonwebtoken::decode_header(&current).unwrap();
        assert_eq!(header.alg, Algorithm::PS256);
        assert!(header.x5t_s256.is_some() && header.x5t.is_none());
        let legacy = credential()
            .with_legacy_rs256()
            .assertion("client", &url, now)
            .unwrap();
        let header = jsonwebtoken::decode_header(&legacy).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert!(header.x5t.is_some() && header.x5t_s256.is_none());
        assert!(credential().not_after().is_some());
    }
}

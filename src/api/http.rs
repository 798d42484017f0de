//! The one outbound HTTP client of the connector (login and API calls): rustls with the
//! platform's web PKI roots plus an optional extra CA, the configured or environment proxy,
//! timeouts, and a `User-Agent` naming the connector and its version.
//!
//! Guarantee: the client never follows a redirect. Requests go only to the login and API
//! origins of the cloud preset or of the `api.login_url` / `api.api_url` overrides (the one
//! explicit way to point elsewhere); a 3xx answer reaches the caller, which fails the call
//! naming the `Location` host ([`redirect_target`]). Following one would re-POST a token
//! request's form, client secret included, to whatever host the answer names (a 307), or
//! read a foreign host's answer as the tenant's content (a 302 on a blob).

use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use crate::config::ApiConfig;

/// Idle connections kept per host. Above the workers' and the scheduled operations'
/// concurrency ([`super::gate`]), so steady traffic reuses connections; a burst beyond it
/// closes its extra connections instead of keeping one per tenant (each holds buffers and a
/// task).
pub const MAX_IDLE_CONNECTIONS_PER_HOST: usize = 64;

/// Why the HTTP client could not be built; names the file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The extra CA file is unreadable or not PEM.
    #[error("api.ca_file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The proxy URL was refused.
    #[error("api.proxy: {0}")]
    Proxy(String),
    /// reqwest could not build the client.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// `o365-connector/{version}`, optionally with a replica id.
pub fn user_agent(replica: Option<&str>) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match replica {
        Some(replica) => format!("o365-connector/{version} (replica {replica})"),
        None => format!("o365-connector/{version}"),
    }
}

/// Builds the client from `[api]`. Without `api.proxy`, the standard `HTTPS_PROXY`,
/// `ALL_PROXY` and `NO_PROXY` environment variables apply (reqwest reads them).
pub fn http_client(
    api: &ApiConfig,
    replica: Option<&str>,
) -> Result<reqwest::Client, HttpClientError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .https_only(false)
        .user_agent(user_agent(replica))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300))
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS_PER_HOST)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = &api.ca_file {
        let ca_error = |reason: String| HttpClientError::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|error| ca_error(error.to_string()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|error| ca_error(error.to_string()))?;
        if certificates.is_empty() {
            return Err(ca_error("no CERTIFICATE block in the file".into()));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    if let Some(proxy) = &api.proxy {
        let proxy = reqwest::Proxy::all(proxy.as_str())
            .map_err(|error| HttpClientError::Proxy(error.to_string()))?;
        builder = builder.proxy(proxy);
    }
    builder
        .build()
        .map_err(|error| HttpClientError::Build(error.to_string()))
}

/// `Retry-After` in seconds, as the Management API and Microsoft Graph send it (their
/// answers do not use the HTTP-date form).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// For a redirect answer (3xx) to a request for `requested`: the host its `Location` names
/// (a relative `Location` names the requested host), for the error that refuses to follow
/// it; `None` for any other status. Only the host is given, never the path or query,
/// which may carry what the redirecting party wants logged.
pub fn redirect_target(status: StatusCode, headers: &HeaderMap, requested: &Url) -> Option<String> {
    if !status.is_redirection() {
        return None;
    }
    let location = headers
        .get(LOCATION)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let Some(location) = location else {
        return Some("no Location".to_string());
    };
    Some(match requested.join(location) {
        Ok(target) => match (target.host_str(), target.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => "an address without a host".to_string(),
        },
        Err(_) => "an unreadable Location".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(LOCATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn a_redirect_names_the_location_host_and_other_answers_name_none() {
        let requested =
            Url::parse("https://manage.office.com/api/v1.0/t/activity/feed/audit/1").unwrap();
        let found = StatusCode::FOUND;
        assert_eq!(
            redirect_target(
                found,
                &location("http://evil.example:8080/x?secret=1"),
                &requested
            )
            .as_deref(),
            Some("evil.example:8080")
        );
        assert_eq!(
            redirect_target(found, &location("/elsewhere"), &requested).as_deref(),
            Some("manage.office.com")
        );
        assert_eq!(
            redirect_target(
                StatusCode::TEMPORARY_REDIRECT,
                &HeaderMap::new(),
                &requested
            )
            .as_deref(),
            Some("no Location")
        );
        assert_eq!(
            redirect_target(
                StatusCode::OK,
                &location("http://evil.example/"),
                &requested
            ),
            None
        );
    }
}

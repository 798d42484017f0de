//! The one outbound HTTP client of the connector (login and API calls): rustls with the
//! platform's web PKI roots plus an optional extra CA, the configured or environment proxy,
//! timeouts, and a `User-Agent` naming the connector and its version.

use std::time::Duration;

use crate::config::ApiConfig;

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
        .pool_idle_timeout(Duration::from_secs(60));
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

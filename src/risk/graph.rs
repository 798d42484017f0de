//! The Microsoft Graph client of one tenant, for its risk detections: its own token (the
//! cloud's Graph scope, from the tenant's login authority, secret or certificate, cached
//! and renewed by a [`TokenProvider`] like the Management API's) and one operation,
//! fetching a page of `identityProtection/riskDetections`.
//!
//! Guarantees, the same as every other request the connector makes:
//! - the token goes only to the Graph base's origin (`api.graph_url` or the cloud's
//!   preset): an `@odata.nextLink` elsewhere is refused before any request;
//! - redirects are never followed (the shared HTTP client follows none); one is an error
//!   naming the host it pointed to;
//! - a leading byte-order mark is tolerated on every body;
//! - a page's detections are kept byte for byte as Graph sent them;
//! - 401 renews the token once; 429 and 503 carry `Retry-After`; 403 is
//!   [`GraphError::Forbidden`], which the collector treats as "permission or licence
//!   missing" for this tenant alone, and drops the cached token (an admin consent given
//!   since shows only in a new token's roles).

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use crate::api::error::parse_error_body;
use crate::api::{http, json};
use crate::auth::{AuthError, TokenProvider};
use crate::cloud::Endpoints;

/// Detections per page asked of Graph (`$top`), as UTMStack's plugin asks.
pub const PAGE_SIZE: u32 = 500;

/// Why a page of risk detections could not be had. Messages name the tenant, never a
/// token or a secret.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// 403: the app lacks `IdentityRiskEvent.Read.All` (or its admin consent), or the
    /// tenant lacks Microsoft Entra ID P2.
    #[error(
        "tenant {tenant_id}: Microsoft Graph refused the risk detections (HTTP 403{code}): {message}"
    )]
    Forbidden {
        /// The tenant GUID.
        tenant_id: String,
        /// `, <Graph error code>` when Graph named one.
        code: String,
        /// Graph's message.
        message: String,
    },
    /// 429 or 503: Graph asks to come back later.
    #[error("tenant {tenant_id}: Microsoft Graph answered HTTP {status} (throttled or busy){}", retry_text(*retry_after))]
    Throttled {
        /// The tenant GUID.
        tenant_id: String,
        /// 429 or 503.
        status: u16,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// Any other answer that is not a success.
    #[error("tenant {tenant_id}: Microsoft Graph answered HTTP {status}{code}: {message}")]
    Service {
        /// The tenant GUID.
        tenant_id: String,
        /// The status.
        status: u16,
        /// `, <Graph error code>` when Graph named one.
        code: String,
        /// Graph's message (or the status text).
        message: String,
    },
    /// A redirect, which is never followed.
    #[error(
        "tenant {tenant_id}: Microsoft Graph answered HTTP {status} redirecting to {target}, which is never followed: if a proxy or gateway in between redirects, fix it; to use another Graph address on purpose, set api.graph_url (or O365_CONNECTOR_GRAPH_URL) to it"
    )]
    Redirected {
        /// The tenant GUID.
        tenant_id: String,
        /// The 3xx status.
        status: u16,
        /// The host it pointed to.
        target: String,
    },
    /// A URL (an `@odata.nextLink`) off the Graph origin: no request was made.
    #[error(
        "tenant {tenant_id}: refusing to send the Graph token to {host}, which is not the Graph origin {graph}"
    )]
    ForeignUrl {
        /// The tenant GUID.
        tenant_id: String,
        /// The host named.
        host: String,
        /// The Graph origin.
        graph: String,
    },
    /// The connection failed or the body could not be read.
    #[error("tenant {tenant_id}: Microsoft Graph unreachable: {reason}")]
    Transport {
        /// The tenant GUID.
        tenant_id: String,
        /// What failed (never a URL's query, never a token).
        reason: String,
    },
    /// A success whose body is not the documented page.
    #[error(
        "tenant {tenant_id}: Microsoft Graph's risk detections page is not the expected JSON: {reason}"
    )]
    Decode {
        /// The tenant GUID.
        tenant_id: String,
        /// The parse error.
        reason: String,
    },
    /// No Graph token.
    #[error("Microsoft Graph token: {0}")]
    Token(#[from] AuthError),
}

fn retry_text(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|wait| format!("; Retry-After {} s", wait.as_secs()))
        .unwrap_or_default()
}

impl GraphError {
    /// `Retry-After` from Graph, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for the 403 that means "permission or licence missing".
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden { .. })
    }
}

/// One page of risk detections.
#[derive(Debug, Default)]
pub struct DetectionPage {
    /// Each detection's JSON, exactly as Graph sent it.
    pub detections: Vec<Box<RawValue>>,
    /// `@odata.nextLink`, verbatim, when more pages follow.
    pub next_link: Option<String>,
}

/// The page as Graph sends it; the detections borrowed from the body.
#[derive(Deserialize)]
struct PageBody<'a> {
    #[serde(borrow, default)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

/// One tenant's Microsoft Graph client.
pub struct GraphClient {
    http: reqwest::Client,
    tenant_id: String,
    endpoints: Endpoints,
    tokens: TokenProvider,
}

impl GraphClient {
    /// A client for `tenant_id` at `endpoints.graph`, with `tokens` asking the cloud's
    /// Graph scope.
    pub fn new(
        http: reqwest::Client,
        tenant_id: String,
        endpoints: Endpoints,
        tokens: TokenProvider,
    ) -> Self {
        Self {
            http,
            tenant_id,
            endpoints,
            tokens,
        }
    }

    /// The Graph token cache.
    pub fn tokens(&self) -> &TokenProvider {
        &self.tokens
    }

    /// The first page's URL: detections updated at or after `since` (RFC 3339, used
    /// verbatim; its characters need no escaping), oldest first, [`PAGE_SIZE`] a page.
    pub fn first_page_url(&self, since: &str) -> Url {
        let mut url = self.endpoints.risk_detections_url();
        url.set_query(Some(&format!(
            "$filter=lastUpdatedDateTime%20ge%20{since}&$orderby=lastUpdatedDateTime%20asc&$top={PAGE_SIZE}"
        )));
        url
    }

    /// Parses an `@odata.nextLink` and checks it is on the Graph origin.
    pub fn next_page_url(&self, next_link: &str) -> Result<Url, GraphError> {
        let url = Url::parse(next_link).map_err(|error| GraphError::Decode {
            tenant_id: self.tenant_id.clone(),
            reason: format!("@odata.nextLink is not a URL: {error}"),
        })?;
        self.check_origin(&url)?;
        Ok(url)
    }

    fn check_origin(&self, url: &Url) -> Result<(), GraphError> {
        if self.endpoints.is_on_graph_origin(url) {
            return Ok(());
        }
        Err(GraphError::ForeignUrl {
            tenant_id: self.tenant_id.clone(),
            host: url.host_str().unwrap_or("(no host)").to_string(),
            graph: self.endpoints.graph.origin().ascii_serialization(),
        })
    }

    /// Fetches one page at `url` (a first page or a checked next link).
    pub async fn page(&self, url: Url) -> Result<DetectionPage, GraphError> {
        self.check_origin(&url)?;
        let mut token = self.tokens.token().await?;
        for attempt in 0..2 {
            let response = self
                .http
                .get(url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.bearer()))
                .send()
                .await
                .map_err(|error| self.transport(error))?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                token = self.tokens.renew_after_rejection(&token).await?;
                continue;
            }
            if let Some(target) = http::redirect_target(status, response.headers(), &url) {
                return Err(GraphError::Redirected {
                    tenant_id: self.tenant_id.clone(),
                    status: status.as_u16(),
                    target,
                });
            }
            let retry_after = http::retry_after(response.headers());
            let body = response
                .bytes()
                .await
                .map_err(|error| self.transport(error))?;
            if status.is_success() {
                return self.parse_page(&body);
            }
            if status == StatusCode::FORBIDDEN {
                // A permission granted later is only in a new token: the next try asks one.
                self.tokens.forget(&token).await;
            }
            return Err(self.service_error(status, retry_after, &body));
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn parse_page(&self, body: &[u8]) -> Result<DetectionPage, GraphError> {
        let page: PageBody<'_> =
            serde_json::from_slice(json::without_bom(body)).map_err(|error| {
                GraphError::Decode {
                    tenant_id: self.tenant_id.clone(),
                    reason: error.to_string(),
                }
            })?;
        Ok(DetectionPage {
            detections: page.value.into_iter().map(RawValue::to_owned).collect(),
            next_link: page.next_link.filter(|link| !link.is_empty()),
        })
    }

    fn service_error(
        &self,
        status: StatusCode,
        retry_after: Option<Duration>,
        body: &[u8],
    ) -> GraphError {
        let (code, message) = parse_error_body(body);
        let code = code
            .filter(|code| !code.is_empty())
            .map(|code| format!(", {code}"))
            .unwrap_or_default();
        let message = if message.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            message
        };
        let tenant_id = self.tenant_id.clone();
        match status.as_u16() {
            403 => GraphError::Forbidden {
                tenant_id,
                code,
                message,
            },
            429 | 503 => GraphError::Throttled {
                tenant_id,
                status: status.as_u16(),
                retry_after,
            },
            status => GraphError::Service {
                tenant_id,
                status,
                code,
                message,
            },
        }
    }

    fn transport(&self, error: reqwest::Error) -> GraphError {
        GraphError::Transport {
            tenant_id: self.tenant_id.clone(),
            reason: error.without_url().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Credential, TokenSourceConfig};
    use crate::clock::Clock;
    use crate::cloud::Cloud;

    fn client(graph: &str) -> GraphClient {
        let endpoints =
            Endpoints::for_cloud(Cloud::GccHigh).with_graph(Some(&graph.parse().unwrap()));
        let tokens = TokenProvider::new(
            reqwest::Client::new(),
            TokenSourceConfig {
                tenant_id: "t".into(),
                token_url: endpoints.token_url("t"),
                client_id: "c".into(),
                scope: endpoints.graph_scope().into(),
                credential: Credential::Secret("s".to_string().into()),
            },
            Clock::system(),
        );
        GraphClient::new(reqwest::Client::new(), "t".into(), endpoints, tokens)
    }

    #[test]
    fn the_first_page_asks_what_utmstack_asks_and_next_links_stay_on_the_graph_origin() {
        let client = client("https://graph.example:8443/prefix/");
        assert_eq!(
            client
                .first_page_url("2026-12-01T08:08:53.8512617Z")
                .as_str(),
            "https://graph.example:8443/prefix/v1.0/identityProtection/riskDetections?$filter=lastUpdatedDateTime%20ge%202026-12-01T08:08:53.8512617Z&$orderby=lastUpdatedDateTime%20asc&$top=500"
        );
        assert_eq!(
            client.endpoints.graph_scope(),
            "https://graph.microsoft.us/.default"
        );
        let next = "https://graph.example:8443/v1.0/identityProtection/riskDetections?$skiptoken=x";
        assert_eq!(client.next_page_url(next).unwrap().as_str(), next);
        for foreign in [
            "https://evil.example/v1.0/identityProtection/riskDetections",
            "http://graph.example:8443/v1.0/x",
            "https://graph.example/v1.0/x",
        ] {
            let error = client.next_page_url(foreign).unwrap_err();
            assert!(
                matches!(error, GraphError::ForeignUrl { .. }),
                "{foreign}: {error}"
            );
        }
    }

    #[test]
    fn pages_keep_each_detection_byte_for_byte_with_or_without_a_bom() {
        let client = client("https://graph.microsoft.us");
        let body = "\u{FEFF}{\"@odata.context\":\"x\",\"value\":[{\"id\":\"a\",\"n\":1.50},\n {\"id\":\"b\"}],\"@odata.nextLink\":\"https://graph.microsoft.us/v1.0/x?$skiptoken=1\"}";
        let page = client.parse_page(body.as_bytes()).unwrap();
        let raw: Vec<&str> = page.detections.iter().map(|raw| raw.get()).collect();
        assert_eq!(raw, ["{\"id\":\"a\",\"n\":1.50}", "{\"id\":\"b\"}"]);
        assert!(page.next_link.is_some());
        let last = client.parse_page(br#"{"value":[]}"#).unwrap();
        assert!(last.detections.is_empty() && last.next_link.is_none());
    }

    #[test]
    fn graph_errors_are_classified_with_their_code_and_retry_after() {
        let client = client("https://graph.microsoft.us");
        let body = br#"{"error":{"code":"Authorization_RequestDenied","message":"Insufficient privileges"}}"#;
        let forbidden = client.service_error(StatusCode::FORBIDDEN, None, body);
        assert!(forbidden.is_forbidden());
        assert!(
            forbidden
                .to_string()
                .contains("Authorization_RequestDenied")
        );
        let throttled = client.service_error(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(7)),
            b"",
        );
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(7)));
        let other = client.service_error(StatusCode::BAD_REQUEST, None, b"null");
        assert!(matches!(other, GraphError::Service { status: 400, .. }));
    }
}

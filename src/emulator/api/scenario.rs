//! The emulated world's fixed description: tenants, their app registrations, what they
//! publish and which faults they inject. Read from a TOML scenario file
//! (`emulate api --scenario FILE.toml`) or built from the single-tenant command-line
//! flags. Faults can later be changed at run time through `POST /_emulator/control`;
//! the scenario is the starting point.
//!
//! ```toml
//! page_size = 100                       # items per /content page before NextPageUri
//!
//! [throttle]                            # per tenant
//! requests_per_window = 2000
//! window_secs = 60
//! response = "af429"                    # "af429" (HTTP 403) or "http429" (with Retry-After)
//!
//! [[tenants]]
//! tenant_id = "41463f53-8812-40f4-890f-865bf6e35190"
//! domain = "contoso.onmicrosoft.com"    # resolvable through OpenID discovery
//! client_id = "a1b2…"
//! client_secret = "…"                   # optional when a certificate is given
//! secret_expired = false
//! certificate = "certs/app.pem"         # PEM certificate for client assertions (optional)
//! roles = ["ActivityFeed.Read", "ActivityFeed.ReadDlp"]
//! audit_enabled = true
//! graph_roles = ["IdentityRiskEvent.Read.All"]   # Microsoft Graph application roles (the default)
//! entra_p2 = true                       # false: Graph answers 403 "not licensed" for risk detections
//!
//! [tenants.risk_detections]             # Entra ID Protection risk detections served by Graph
//! initial = 50                          # published at start, lastUpdatedDateTime over the last hours
//! initial_spread_hours = 6
//! per_second = 0.5                      # published afterwards; default 0 (only on demand)
//!
//! [tenants.publication]
//! content_types = ["Audit.Exchange"]    # default: all five
//! records = "fixtures/events/04-sharepoint.ndjson"   # default: synthetic records
//! records_per_blob = 10
//! blobs_per_second = 1.0                # 0 publishes nothing until told to
//!
//! [tenants.faults]
//! server_error_rate = 0.1               # share of API requests answered 5xx
//! bom_bodies = true                     # a UTF-8 BOM before every JSON body, as since May 2025
//! blob_404_null = "Audit.Exchange"      # listed blobs answer 404 `null`: "all", a content type or a contentId
//! redirect_to = "http://127.0.0.1:9"    # answer with a redirect to this base instead of serving
//! redirect_endpoints = ["token", "listing", "blob", "graph"]   # which ones; default all four
//! graph_throttle = { next_requests = 3, rate = 0.0, retry_after_secs = 2 }  # Graph 429 TooManyRequests
//! graph_unavailable = { rate = 0.1 }    # Graph 503 ServiceUnavailable with Retry-After
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The five content types of the Management Activity API, in the API's spelling.
pub const CONTENT_TYPES: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

/// Role required for every feed operation.
pub const ROLE_READ: &str = "ActivityFeed.Read";
/// Role required for `DLP.All` (our choice where Microsoft documents nothing).
pub const ROLE_READ_DLP: &str = "ActivityFeed.ReadDlp";
/// Microsoft Graph application role required to list risk detections.
pub const ROLE_IDENTITY_RISK_EVENT_READ: &str = "IdentityRiskEvent.Read.All";

/// A whole emulated world.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Items per `/subscriptions/content` (and `/notifications`) page; default 100.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
    /// Per-tenant request budget.
    #[serde(default)]
    pub throttle: ThrottleScenario,
    /// The tenants; at least one.
    pub tenants: Vec<TenantScenario>,
}

/// The per-tenant request budget and how excess requests are answered.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleScenario {
    /// Requests per window per tenant; default 2,000. Zero turns throttling off.
    #[serde(default = "default_requests_per_window")]
    pub requests_per_window: u32,
    /// Window length in seconds of real time; default 60. Tests shorten it to compress time.
    #[serde(default = "default_window_secs")]
    pub window_secs: f64,
    /// How an excess request is answered.
    #[serde(default)]
    pub response: ThrottleResponse,
}

/// How a throttled request is answered.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleResponse {
    /// HTTP 403 with `{"error":{"code":"AF429",…}}`, as Microsoft's troubleshooting page shows.
    #[default]
    Af429,
    /// HTTP 429 with a `Retry-After` header (seconds).
    Http429,
}

/// One Microsoft 365 tenant and the one app registered in it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantScenario {
    /// Tenant GUID.
    pub tenant_id: String,
    /// Tenant domain (e.g. `contoso.onmicrosoft.com`), resolvable through OpenID discovery.
    #[serde(default)]
    pub domain: Option<String>,
    /// The app registration's client id.
    pub client_id: String,
    /// The app's client secret, when it has one.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The secret exists but has expired (AADSTS7000222).
    #[serde(default)]
    pub secret_expired: bool,
    /// PEM certificate whose key signs client assertions, when the app has one.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// Application roles granted (admin-consented) on the Office 365 Management APIs.
    #[serde(default = "default_roles")]
    pub roles: Vec<String>,
    /// Unified audit logging is on. When off, feed calls fail as §5 of the API spec says.
    #[serde(default = "default_true")]
    pub audit_enabled: bool,
    /// Application roles granted (admin-consented) on Microsoft Graph; they go into Graph
    /// tokens only. Default `["IdentityRiskEvent.Read.All"]`.
    #[serde(default = "default_graph_roles")]
    pub graph_roles: Vec<String>,
    /// The tenant has a Microsoft Entra ID P1/P2 licence; default true. Without one, Graph
    /// answers risk detection requests HTTP 403 `Forbidden` "Your tenant is not licensed
    /// for this feature." (the API needs P1 or P2).
    #[serde(default = "default_true")]
    pub entra_p2: bool,
    /// The Entra ID Protection risk detections the tenant publishes on Graph.
    #[serde(default)]
    pub risk_detections: RiskDetectionScenario,
    /// What the tenant publishes.
    #[serde(default)]
    pub publication: PublicationScenario,
    /// Faults injected for this tenant from the start.
    #[serde(default)]
    pub faults: FaultScenario,
    /// This tenant's own request budget, instead of the scenario's `[throttle]`.
    #[serde(default)]
    pub throttle: Option<ThrottleScenario>,
}

/// What a tenant publishes: blobs of `records_per_blob` records at `blobs_per_second`,
/// for each content type with an enabled subscription.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicationScenario {
    /// Content types that publish; default all five.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// NDJSON file of records served byte-exact, cycling; default synthetic records with
    /// unique `Id`s.
    #[serde(default)]
    pub records: Option<PathBuf>,
    /// Records per blob; default 10.
    #[serde(default = "default_records_per_blob")]
    pub records_per_blob: usize,
    /// Blobs per second per (tenant, content type); default 0 (publish only on demand).
    #[serde(default)]
    pub blobs_per_second: f64,
}

/// Risk detections a tenant publishes on Microsoft Graph
/// (`GET /v1.0/identityProtection/riskDetections`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RiskDetectionScenario {
    /// Detections published when the emulator starts; default 0.
    pub initial: usize,
    /// The initial detections' `lastUpdatedDateTime`s are spread evenly over this many
    /// hours before the start (emulator clock); default 0 (all at the start).
    pub initial_spread_hours: u64,
    /// Detections published per second afterwards (real time); default 0 (only on demand).
    pub per_second: f64,
}

/// A Microsoft Graph fault: which requests it answers instead of serving them.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphFaultScenario {
    /// The next this many Graph requests of the tenant (counted down as they are
    /// answered); default 0.
    pub next_requests: u64,
    /// Then this share (0..=1) of the tenant's Graph requests, evenly spread; default 0.
    pub rate: f64,
    /// `Retry-After` of the answer, in seconds; default 1.
    pub retry_after_secs: u64,
}

impl Default for GraphFaultScenario {
    fn default() -> Self {
        Self {
            next_requests: 0,
            rate: 0.0,
            retry_after_secs: 1,
        }
    }
}

/// Faults a tenant injects. All off by default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FaultScenario {
    /// Share (0..=1) of feed and blob requests answered HTTP 500 AF50000.
    pub server_error_rate: f64,
    /// Added latency per feed and blob response, in milliseconds.
    pub latency_ms: u64,
    /// Share (0..=1) of blob responses cut short: the connection closes before the
    /// declared length or the last chunk (a transport error, never a short complete body).
    pub truncate_rate: f64,
    /// Post every notification twice.
    pub duplicate_notifications: bool,
    /// New blobs get a `contentCreated` this many hours in the past (late content).
    pub late_content_hours: u64,
    /// Do not deliver notifications to webhooks (they are neither sent nor retried).
    pub webhook_delivery_off: bool,
    /// The token endpoints answer HTTP 503 for this tenant.
    pub token_endpoint_down: bool,
    /// A throttling storm: every feed and blob request of the tenant is throttled,
    /// whatever its budget, answered as `throttle.response` says (HTTP 429 asks for
    /// `Retry-After: 1`). Switched on and off at run time with the `faults` command.
    pub throttle_storm: bool,
    /// `NextPageUri` headers point at this foreign base URL instead of the emulator.
    pub foreign_next_page_base: Option<String>,
    /// contentUris (in listings and notifications) point at this foreign base URL.
    pub foreign_content_uri_base: Option<String>,
    /// For this many seconds (emulator clock) after a `/start` with a webhook,
    /// `/subscriptions/list` shows `webhook: null`, as Microsoft does until validation
    /// settles; 0 (default) turns it off.
    #[serde(default)]
    pub webhook_pending_secs: u64,
    /// Put the UTF-8 byte-order mark `EF BB BF` in front of every JSON body served for
    /// the tenant (token and error answers, OpenID discovery, subscriptions, listings, AF
    /// errors, blobs) and of every notification POSTed to its webhook, as Microsoft has
    /// since May 2025 (see [`super::bom`]).
    pub bom_bodies: bool,
    /// Listed blobs answer HTTP 404 with the body `null` (no AF code), as an independent
    /// mock of the API answered expired content, whatever their expiration: `"all"`, the
    /// blobs of one content type (API spelling), or the one blob with this contentId.
    /// Off when absent.
    pub blob_404_null: Option<String>,
    /// Answer the endpoints of `redirect_endpoints` with a redirect to this base URL (the
    /// request's path and query appended) instead of serving them: HTTP 307 from the
    /// token endpoints (a client that followed it would re-POST its credentials there),
    /// 302 from listings and blobs (a client that followed it would read foreign content
    /// as the tenant's). Off when absent.
    pub redirect_to: Option<String>,
    /// Which endpoints `redirect_to` covers; empty (the default) means all four.
    pub redirect_endpoints: Vec<RedirectedEndpoint>,
    /// Graph requests answered HTTP 429 `TooManyRequests` with `Retry-After`, as Graph
    /// throttles. Off when absent.
    pub graph_throttle: Option<GraphFaultScenario>,
    /// Graph requests answered HTTP 503 `ServiceUnavailable` with `Retry-After`. Off when
    /// absent.
    pub graph_unavailable: Option<GraphFaultScenario>,
}

/// An endpoint family the `redirect_to` fault can cover.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedirectedEndpoint {
    /// The token endpoints (v1 and v2): HTTP 307.
    Token,
    /// `subscriptions/content` (first pages and `NextPageUri`s): HTTP 302.
    Listing,
    /// Blob retrieval (`…/audit/{contentId}`): HTTP 302.
    Blob,
    /// Microsoft Graph risk detections (first pages and `@odata.nextLink`s): HTTP 302.
    Graph,
}

impl FaultScenario {
    /// Why these faults cannot be injected, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let graph_rates = [&self.graph_throttle, &self.graph_unavailable]
            .into_iter()
            .flatten()
            .map(|fault| fault.rate);
        for rate in [self.server_error_rate, self.truncate_rate]
            .into_iter()
            .chain(graph_rates)
        {
            if !(0.0..=1.0).contains(&rate) {
                return Some("fault rates are between 0 and 1".into());
            }
        }
        if self
            .blob_404_null
            .as_deref()
            .is_some_and(|selector| selector.trim().is_empty())
        {
            return Some(
                "blob_404_null is \"all\", a content type or a contentId, not empty".into(),
            );
        }
        if let Some(base) = &self.redirect_to
            && !(base.starts_with("http://") || base.starts_with("https://"))
        {
            return Some("redirect_to is an http:// or https:// base URL".into());
        }
        None
    }

    /// True when the `redirect_to` fault covers `endpoint`.
    pub fn redirects(&self, endpoint: RedirectedEndpoint) -> bool {
        self.redirect_to.is_some()
            && (self.redirect_endpoints.is_empty() || self.redirect_endpoints.contains(&endpoint))
    }

    /// True when the `blob_404_null` fault covers this blob.
    pub fn answers_404_null(&self, content_type: &str, content_id: &str) -> bool {
        self.blob_404_null.as_deref().is_some_and(|selector| {
            [BLOB_SELECTOR_ALL, content_type, content_id].contains(&selector)
        })
    }
}

/// The `blob_404_null` selector of every blob.
pub const BLOB_SELECTOR_ALL: &str = "all";

impl Default for ThrottleScenario {
    fn default() -> Self {
        Self {
            requests_per_window: default_requests_per_window(),
            window_secs: default_window_secs(),
            response: ThrottleResponse::default(),
        }
    }
}

impl Default for PublicationScenario {
    fn default() -> Self {
        Self {
            content_types: default_content_types(),
            records: None,
            records_per_blob: default_records_per_blob(),
            blobs_per_second: 0.0,
        }
    }
}

fn default_page_size() -> usize {
    100
}
fn default_requests_per_window() -> u32 {
    2000
}
fn default_window_secs() -> f64 {
    60.0
}
fn default_roles() -> Vec<String> {
    vec![ROLE_READ.to_string(), ROLE_READ_DLP.to_string()]
}
fn default_graph_roles() -> Vec<String> {
    vec![ROLE_IDENTITY_RISK_EVENT_READ.to_string()]
}
fn default_true() -> bool {
    true
}
fn default_content_types() -> Vec<String> {
    CONTENT_TYPES.iter().map(|ct| ct.to_string()).collect()
}
fn default_records_per_blob() -> usize {
    10
}

/// A scenario file that cannot be used; the message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The TOML does not parse or has unknown keys.
    #[error("invalid scenario {path}: {message}")]
    Parse {
        /// The scenario file.
        path: PathBuf,
        /// The parser's message (names the key and line).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

impl TenantScenario {
    /// A tenant whose app authenticates with a client secret; everything else default:
    /// both roles, audit on, all five content types publishing on demand, no faults.
    pub fn with_secret(tenant_id: &str, client_id: &str, client_secret: &str) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            domain: None,
            client_id: client_id.to_string(),
            client_secret: Some(client_secret.to_string()),
            secret_expired: false,
            certificate: None,
            roles: default_roles(),
            audit_enabled: true,
            graph_roles: default_graph_roles(),
            entra_p2: true,
            risk_detections: RiskDetectionScenario::default(),
            publication: PublicationScenario::default(),
            faults: FaultScenario::default(),
            throttle: None,
        }
    }
}

impl Scenario {
    /// A scenario with the one given tenant and default settings.
    pub fn single_tenant(tenant: TenantScenario) -> Self {
        Self {
            page_size: default_page_size(),
            throttle: ThrottleScenario::default(),
            tenants: vec![tenant],
        }
    }

    /// Reads and validates a scenario file. Relative paths inside it (records,
    /// certificates) are resolved against the file's directory.
    pub fn from_file(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut scenario: Scenario =
            toml::from_str(&text).map_err(|error| ScenarioError::Parse {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for tenant in &mut scenario.tenants {
            for file in [&mut tenant.certificate, &mut tenant.publication.records]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |message: String| Err(ScenarioError::Invalid(message));
        if self.tenants.is_empty() {
            return invalid("at least one [[tenants]] entry is required".into());
        }
        if self.page_size == 0 {
            return invalid("page_size must be at least 1".into());
        }
        if self.throttle.window_secs <= 0.0 {
            return invalid("throttle.window_secs must be positive".into());
        }
        for tenant in &self.tenants {
            let name = &tenant.tenant_id;
            if tenant.client_secret.is_none() && tenant.certificate.is_none() {
                return invalid(format!(
                    "tenant {name}: give client_secret, certificate or both"
                ));
            }
            if tenant.publication.records_per_blob == 0 {
                return invalid(format!(
                    "tenant {name}: publication.records_per_blob must be at least 1"
                ));
            }
            if tenant.publication.blobs_per_second.is_nan()
                || tenant.publication.blobs_per_second < 0.0
            {
                return invalid(format!(
                    "tenant {name}: publication.blobs_per_second must be 0 or more"
                ));
            }
            for content_type in &tenant.publication.content_types {
                if !CONTENT_TYPES.contains(&content_type.as_str()) {
                    return invalid(format!(
                        "tenant {name}: unknown content type {content_type:?} (one of {CONTENT_TYPES:?})"
                    ));
                }
            }
            let per_second = tenant.risk_detections.per_second;
            if !per_second.is_finite() || per_second < 0.0 {
                return invalid(format!(
                    "tenant {name}: risk_detections.per_second must be 0 or more"
                ));
            }
            if let Some(problem) = tenant.faults.problem() {
                return invalid(format!("tenant {name}: {problem}"));
            }
        }
        Ok(())
    }

    /// The tenant with this GUID.
    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantScenario> {
        self.tenants
            .iter()
            .find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
    }
}

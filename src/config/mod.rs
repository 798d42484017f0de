//! The connector's configuration: a TOML file, overridden from the environment, with
//! secrets read from environment variables or files, validated at start.
//!
//! `deploy/config.example.toml` documents every key (it is parsed by a test, so it cannot
//! rot). Loading ([`Config::load`]) is, in order:
//!
//! 1. read and parse the TOML file (a syntax error names the file, line and column);
//! 2. apply the environment overrides (see below);
//! 3. deserialize into these types, with `deny_unknown_fields` everywhere: a typo, a wrong
//!    type or a bad value names the key, and the file's line (or the variable that set it);
//! 4. read every secret reference (errors name the key and the variable or file);
//! 5. [`Config::validate`]: the rules that span keys; every problem is reported, not only
//!    the first.
//!
//! Then [`Config::warnings`] lists what start-up should log (plain-http overrides, literal
//! secrets in the file, several tenants without a publisher id, poll-only mode).
//!
//! # Environment overrides
//!
//! Every key can be set as `O365_CONNECTOR__SECTION__KEY` (case-insensitive key segments;
//! a number indexes a list: `O365_CONNECTOR__TENANTS__0__CLIENT_ID`, for a tenant the file
//! defines). The value is read as a TOML value when it is one (`2000`, `true`,
//! `["DLP.All"]`, `{ env = "X" }`) and as a string otherwise; a value that parses as another
//! type where a string is expected is taken as a string. An empty value removes the key, so
//! its default applies. `O365_CONNECTOR_LOGIN_URL`, `O365_CONNECTOR_API_URL` and
//! `O365_CONNECTOR_GRAPH_URL` are short forms of `api.login_url`, `api.api_url` and
//! `api.graph_url` (which apply to every tenant); they are applied last, so they win. The outbound HTTP client also
//! honours `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (reqwest reads them) unless
//! `api.proxy` is set.
//!
//! Relative paths are relative to the working directory, not to the config file.

mod load;
mod types;
mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use url::Url;

pub use load::{ConfigError, ENV_API_URL, ENV_GRAPH_URL, ENV_LOGIN_URL, ENV_PREFIX, Location};
pub use types::{
    ContentType, Guid, InvalidPublisherId, NotAGuid, PublisherId, TimestampSource,
    UnknownContentType,
};
pub use validate::ValidationError;

use crate::cloud::{Cloud, Endpoints};
use crate::secret::{Secret, SecretSource};

/// The whole configuration. A value returned by [`Config::load`] is validated and has every
/// secret resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: the webhook listener. Required.
    pub server: ServerConfig,
    /// `[store]`: where the durable state lives. Required.
    pub store: StoreConfig,
    /// `[engine]`: the UTMStack engine. Default: every key's default.
    #[serde(default)]
    pub engine: EngineConfig,
    /// `[api]`: settings shared by all tenants' API clients. Default: every key's default.
    #[serde(default)]
    pub api: ApiConfig,
    /// `[workers]`: the content fetch workers. Default: every key's default.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// `[ops]`: health, readiness and metrics. Default: every key's default.
    #[serde(default)]
    pub ops: OpsConfig,
    /// `[subscriptions]`: the subscription manager. Default: every key's default.
    #[serde(default)]
    pub subscriptions: SubscriptionsConfig,
    /// `[poller]`: the content listing that finds what webhooks miss. Default: every key's
    /// default.
    #[serde(default)]
    pub poller: PollerConfig,
    /// `[[tenants]]`: the Microsoft 365 tenants to collect. At least one.
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// The environment overrides that were applied (for the start-up log and warnings).
    #[serde(skip)]
    applied_overrides: Vec<AppliedOverride>,
}

/// One environment variable that overrode a key. Holds no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOverride {
    /// The variable, e.g. `O365_CONNECTOR__API__API_URL`.
    pub variable: String,
    /// The key it set, e.g. `api.api_url` or `tenants[0].client_id`.
    pub key: String,
}

/// `[server]`: the HTTPS (or plain HTTP) listener that receives Microsoft's notifications.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on (e.g. `"0.0.0.0:8443"`; port 0 picks a free port).
    /// Required.
    #[serde(deserialize_with = "deserialize_socket_address")]
    pub listen: SocketAddr,
    /// The URL Microsoft calls; `/{tenant id}` is appended per tenant. Default: none, which
    /// means poll only (no webhook subscriptions).
    pub public_url: Option<Url>,
    /// The local path served, when the proxy rewrites it. Default: the path of
    /// `public_url` (`/` without one).
    pub path: Option<String>,
    /// PEM certificate chain for HTTPS. Default: none (plain HTTP behind a TLS-terminating
    /// proxy). Set together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS. Default: none. Set together with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// The server secret the per-tenant authIds are derived from (`{ env = … }` or
    /// `{ file = … }`). Default: none, which means generated once and kept in the store.
    /// At least 32 bytes (random); a shorter one is used, with a warning at start.
    pub webhook_secret: Option<Secret>,
    /// While rotating `webhook_secret`: the previous secret, whose authIds are still
    /// accepted until every subscription was re-started with the new ones. Default: none.
    #[serde(default)]
    pub webhook_secret_previous: Option<Secret>,
    /// Largest notification body accepted, in bytes; larger ones get 413. Default: 1048576
    /// (1 MiB).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: NonZeroUsize,
    /// Webhook bodies read at once, across all connections: a request past the cap waits
    /// briefly for a slot, then gets 503 (Microsoft retries). Only authenticated requests
    /// take a slot. Default: 64.
    #[serde(default = "default_max_concurrent_bodies")]
    pub max_concurrent_bodies: NonZeroUsize,
    /// A client must send a request's headers within this many seconds of connecting (or of
    /// its previous request), or the connection is closed: slow clients cannot hold
    /// connections open. Default: 10.
    #[serde(default = "default_header_read_timeout_secs")]
    pub header_read_timeout_secs: NonZeroU64,
    /// A webhook request, body included, must complete within this many seconds, or it is
    /// answered 408. Default: 30.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: NonZeroU64,
    /// How often the `tls_cert`, `tls_key` and `client_ca` files are checked for a change
    /// (then reloaded without dropping connections; SIGHUP reloads at once), in seconds.
    /// Default: 5.
    #[serde(default = "default_tls_watch_interval_secs")]
    pub tls_watch_interval_secs: NonZeroU64,
    /// PEM CA certificates: when set, every TLS client must present a certificate signed
    /// by one of them (needs `tls_cert`). Default: none (no client certificate asked).
    pub client_ca: Option<PathBuf>,
    /// Reverse proxies (CIDRs or addresses) whose `X-Forwarded-For` is believed: the
    /// client is the last address of that header not itself a trusted proxy. Default:
    /// none (the header is ignored; the client is the TCP peer).
    #[serde(default, deserialize_with = "deserialize_networks")]
    pub trusted_proxies: Vec<IpNet>,
    /// Source networks (CIDRs or addresses) allowed to POST to the webhook, e.g. the
    /// ranges of Microsoft's `M365ManagementActivityApiWebhook` service tag; others get
    /// 403. Default: none (every source allowed; the authId still applies).
    #[serde(default, deserialize_with = "deserialize_networks")]
    pub webhook_allowed_networks: Vec<IpNet>,
    /// Most connections the webhook listener keeps open at once (the ops listener counts
    /// its own). At the cap, the oldest connection with no request in flight is closed to
    /// make room. Lowered at start to what the file-descriptor limit allows (logged).
    /// Default: 4096 connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: NonZeroUsize,
    /// A connection with no request in flight (in its TLS handshake, before its first
    /// request, or between requests, HTTP/1 or HTTP/2) is closed after this many seconds.
    /// Default: 60.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: NonZeroU64,
}

/// `[store]`: the durable state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A directory: the store file and the admin socket live here. Required.
    pub path: PathBuf,
    /// Where the queue, cursors and subscription state live: `"embedded"` (a file under
    /// `path`, one instance) or `"nats"` (NATS JetStream, shared by several replicas; needs
    /// `[store.nats]`). Default: `"embedded"`.
    #[serde(default)]
    pub backend: StoreBackendKind,
    /// `[store.nats]`: the JetStream the replicas share. Required when `backend = "nats"`.
    pub nats: Option<NatsConfig>,
}

/// `store.backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackendKind {
    /// One file under `store.path`; one instance.
    #[default]
    Embedded,
    /// NATS JetStream; any number of replicas.
    Nats,
}

/// `[store.nats]`: the NATS JetStream shared by the replicas.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, or `tls://host:4222` to require TLS), without
    /// credentials (`creds_file` or a TLS client certificate authenticates). Required.
    pub urls: Vec<String>,
    /// A NATS credentials file (user JWT and NKey seed), e.g. from `nsc`. Default: none.
    pub creds_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the NATS servers' certificates; setting it turns TLS on.
    /// Default: none (the system roots when a `tls://` URL is given).
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for servers that verify clients; needs `tls_key_file`.
    /// Default: none.
    pub tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert_file`. Default: none.
    pub tls_key_file: Option<PathBuf>,
    /// This replica's name: in the `User-Agent` of every request to Microsoft, in `/status`
    /// and in the leader lease. Unique per replica. Default: the host name.
    pub replica_id: Option<String>,
    /// Prefix of the stream and bucket names, so that several deployments can share one
    /// NATS account. Letters, digits, `-` and `_`. Default: `"o365"`.
    #[serde(default = "default_nats_prefix")]
    pub prefix: String,
    /// Replicas of the stream and buckets in a NATS cluster (1, 3 or 5): with 3, an
    /// acknowledged write survives the loss of one NATS server. Default: 1.
    #[serde(default = "default_nats_stream_replicas")]
    pub stream_replicas: usize,
    /// How long the active poller's lease lasts without renewal: a dead replica's polling
    /// and subscription duties move to another replica after at most this long. Default: 15.
    #[serde(default = "default_leader_lease_secs")]
    pub leader_lease_secs: NonZeroU64,
    /// How long to wait for the NATS servers at start, in seconds. Default: 10.
    #[serde(default = "default_nats_connect_timeout_secs")]
    pub connect_timeout_secs: NonZeroU64,
    /// The credentials UTMStack's `NATS_URL` carried, taken out of `urls` so that no URL
    /// shown in a log, an error or `/status` holds them. Never read from the TOML file (a
    /// URL there must not carry credentials); set only in UTMStack mode. Default: none.
    #[serde(skip)]
    pub url_credentials: Option<NatsUrlCredentials>,
}

/// Credentials from a NATS URL's user part, for the server's user/password or token
/// authentication. `Debug` shows the kind and the user name, never the password or token.
#[derive(Clone)]
pub enum NatsUrlCredentials {
    /// `nats://user:password@host:port`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: secrecy::SecretString,
    },
    /// `nats://token@host:port`.
    Token(secrecy::SecretString),
}

impl std::fmt::Debug for NatsUrlCredentials {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsUrlCredentials::UserPassword { user, .. } => {
                write!(formatter, "user {user:?} with a password")
            }
            NatsUrlCredentials::Token(_) => formatter.write_str("a token"),
        }
    }
}

fn default_nats_prefix() -> String {
    "o365".to_owned()
}

fn default_nats_stream_replicas() -> usize {
    1
}

fn default_leader_lease_secs() -> NonZeroU64 {
    NonZeroU64::new(15).expect("non-zero constant")
}

fn default_nats_connect_timeout_secs() -> NonZeroU64 {
    NonZeroU64::new(10).expect("non-zero constant")
}

/// `[engine]`: the UTMStack engine the records go to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// The engine's gRPC Unix socket. Default: `/workdir/sockets/engine_server.sock`.
    #[serde(default = "default_engine_socket")]
    pub socket: PathBuf,
    /// UTMStack tenant id put on every `Log` (and into `Log.id`). Default:
    /// `ce66672c-e36d-4761-a8c8-90058fee1a24` (UTMStack's default tenant).
    #[serde(default = "default_utm_tenant_id")]
    pub utm_tenant_id: String,
    /// What `Log.timestamp` carries: `"event"` (the record's `CreationTime`) or
    /// `"collection"` (when collected). Default: `"event"`.
    #[serde(default)]
    pub timestamp: TimestampSource,
    /// The largest message the engine accepts, in bytes: its gRPC receive limit. A record
    /// whose Log would be larger is never sent; it is dead-lettered by reference as
    /// oversized. Default: 4194304 (4 MiB, gRPC's default receive limit); at least 65536.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Logs in flight with no Ack from the engine for this long is a stall, shown on
    /// `/readyz` and `/status` and reported to the console, in seconds. Default: 60.
    #[serde(default = "default_stall_secs")]
    pub stall_secs: NonZeroU64,
}

/// `[api]`: settings of the Management Activity API clients, shared by all tenants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `PublisherIdentifier` sent on every call: the vendor's tenant GUID or domain.
    /// Default: none, which means each tenant's own id.
    pub publisher_id: Option<PublisherId>,
    /// Login authority replacing the cloud preset for every tenant. Default: none (the
    /// tenant's cloud). An `http://` URL is honoured with a start-up warning.
    pub login_url: Option<Url>,
    /// API base replacing the cloud preset for every tenant. Default: none (the tenant's
    /// cloud). An `http://` URL is honoured with a start-up warning.
    pub api_url: Option<Url>,
    /// Microsoft Graph base replacing the cloud preset for every tenant (risk detections).
    /// Default: none (the tenant's cloud). An `http://` URL is honoured with a start-up
    /// warning.
    pub graph_url: Option<Url>,
    /// Extra PEM CA certificates trusted for outbound HTTPS, besides the built-in roots.
    /// Default: none.
    pub ca_file: Option<PathBuf>,
    /// Outbound proxy for all API and login calls (`http://` or `https://` URL). Default:
    /// none, in which case `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY` are honoured.
    pub proxy: Option<Url>,
    /// Request budget of each tenant, in requests per minute, shared by all its calls.
    /// Default: 2000 (Microsoft's documented limit).
    #[serde(default = "default_requests_per_minute")]
    pub requests_per_minute: NonZeroU32,
}

/// `[workers]`: the pool that fetches content blobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Number of concurrent fetch workers, shared by all tenants. Default: 16.
    #[serde(default = "default_worker_count")]
    pub count: NonZeroUsize,
    /// How long a worker holds a queue item before it returns to pending, in seconds.
    /// Default: 300.
    #[serde(default = "default_lease_secs")]
    pub lease_secs: NonZeroU64,
}

/// `[ops]`: health, readiness and metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    /// Tenants (in configuration order) that get their own metric series; the rest share
    /// the tenant label `other`, so the number of series stays bounded. Default: 100.
    #[serde(default = "default_max_tenant_series")]
    pub max_tenant_series: usize,
    /// `/readyz` fails (so load balancers send webhooks elsewhere) while this many content
    /// references or more are pending or leased. Default: 100000.
    #[serde(default = "default_queue_high_water")]
    pub queue_high_water: NonZeroU64,
    /// Above this many open (pending or leased) content references the webhook answers
    /// 503 (Microsoft retries) and the poller stops enqueueing and retries later; counted
    /// and shown on `/status`. At least `queue_high_water`. Default: 10 ×
    /// `queue_high_water`.
    #[serde(default)]
    pub queue_hard_limit: Option<NonZeroU64>,
    /// Longest a graceful shutdown waits for in-flight work before releasing it, in
    /// seconds. Default: 20.
    #[serde(default = "default_shutdown_secs")]
    pub shutdown_secs: NonZeroU64,
    /// A private listener (plain HTTP) for `/status`, `/status.html`, `/metrics` and the
    /// detail of `/readyz` (`/healthz` and `/readyz` are on both listeners). Default: none
    /// (then those are not served at all, unless `ops.public`).
    #[serde(default, deserialize_with = "deserialize_optional_socket_address")]
    pub listen: Option<SocketAddr>,
    /// Serve `/status`, `/status.html`, `/metrics` and the detail of `/readyz` on the
    /// public listener (`server.listen`) too, on purpose: they name tenants and their
    /// errors. Without it they are served only on `ops.listen`, or not at all when that is
    /// unset. Default: false.
    #[serde(default)]
    pub public: bool,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            public: false,
            max_tenant_series: default_max_tenant_series(),
            queue_high_water: default_queue_high_water(),
            queue_hard_limit: None,
            shutdown_secs: default_shutdown_secs(),
        }
    }
}

impl OpsConfig {
    /// `queue_hard_limit`, or its default: 10 × `queue_high_water`.
    pub fn queue_hard_limit(&self) -> u64 {
        self.queue_hard_limit.map_or_else(
            || self.queue_high_water.get().saturating_mul(10),
            NonZeroU64::get,
        )
    }
}

fn default_max_tenant_series() -> usize {
    100
}

fn default_queue_high_water() -> NonZeroU64 {
    NonZeroU64::new(100_000).expect("non-zero constant")
}

/// `[subscriptions]`: how each tenant's subscriptions are kept started with the webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// How often each tenant's `/subscriptions/list` is checked, in seconds. Default: 900.
    #[serde(default = "default_subscription_check_interval_secs")]
    pub check_interval_secs: NonZeroU64,
    /// How long `webhook: null` right after a start with a webhook counts as "pending
    /// validation" rather than missing, in seconds. Default: 600.
    #[serde(default = "default_webhook_pending_secs")]
    pub webhook_pending_secs: u64,
    /// How often a webhook Microsoft could not validate (AF20021) is tried again, in
    /// seconds; meanwhile content is collected by polling. Default: 3600.
    #[serde(default = "default_deferred_webhook_retry_secs")]
    pub deferred_webhook_retry_secs: NonZeroU64,
    /// Stop the subscriptions of content types no longer configured. A stop loses the
    /// content of the gap until a later start, so it is opt-in. Default: false.
    #[serde(default)]
    pub stop_removed: bool,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        Self {
            check_interval_secs: default_subscription_check_interval_secs(),
            webhook_pending_secs: default_webhook_pending_secs(),
            deferred_webhook_retry_secs: default_deferred_webhook_retry_secs(),
            stop_removed: false,
        }
    }
}

fn default_subscription_check_interval_secs() -> NonZeroU64 {
    NonZeroU64::new(900).expect("non-zero constant")
}

fn default_webhook_pending_secs() -> u64 {
    600
}

fn default_deferred_webhook_retry_secs() -> NonZeroU64 {
    NonZeroU64::new(3600).expect("non-zero constant")
}

/// `[poller]`: how each (tenant, content type) is listed on a schedule (spec §7, "suggested
/// polling loop"). Every duration is in seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    /// How often each (tenant, content type) is listed. Default: 300.
    #[serde(default = "default_poll_interval_secs")]
    pub poll_interval_secs: NonZeroU64,
    /// How far before its cursor each listing starts again, to catch content that became
    /// listable after its window was listed. Default: 3600.
    #[serde(default = "default_poll_overlap_secs")]
    pub overlap_secs: u64,
    /// Distance kept from the API's 7-day limit on `startTime` (Microsoft rejects starts
    /// older than about 7 days). Default: 3600.
    #[serde(default = "default_poll_retention_margin_secs")]
    pub retention_margin_secs: u64,
    /// Listings end this long before now. Default: 60.
    #[serde(default = "default_poll_lag_secs")]
    pub lag_secs: u64,
    /// Longest listing window; less than 86400 (Microsoft refuses more than 24 hours and
    /// was seen to refuse exactly 24). Default: 82800 (23 hours).
    #[serde(default = "default_poll_max_window_secs")]
    pub max_window_secs: NonZeroU64,
    /// Where the first listing of a (tenant, content type) without a cursor starts, before
    /// now; at most 604800 (7 days). Default: 86400.
    #[serde(default = "default_poll_initial_lookback_secs")]
    pub initial_lookback_secs: u64,
    /// How often the tail re-scan lists the last `tail_window_secs` again, for content
    /// that appears late. Default: 3600.
    #[serde(default = "default_poll_tail_interval_secs")]
    pub tail_interval_secs: NonZeroU64,
    /// How far back the tail re-scan lists; 0 turns it off; at most 604800. Default:
    /// 86400.
    #[serde(default = "default_poll_tail_window_secs")]
    pub tail_window_secs: u64,
    /// A difference between the service's `Date` and this host's clock beyond which,
    /// after a refused window (AF20030/AF20055), windows are computed on the service's
    /// time. Default: 300.
    #[serde(default = "default_poll_clock_skew_secs")]
    pub clock_skew_secs: u64,
}

impl Default for PollerConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: default_poll_interval_secs(),
            overlap_secs: default_poll_overlap_secs(),
            retention_margin_secs: default_poll_retention_margin_secs(),
            lag_secs: default_poll_lag_secs(),
            max_window_secs: default_poll_max_window_secs(),
            initial_lookback_secs: default_poll_initial_lookback_secs(),
            tail_interval_secs: default_poll_tail_interval_secs(),
            tail_window_secs: default_poll_tail_window_secs(),
            clock_skew_secs: default_poll_clock_skew_secs(),
        }
    }
}

impl PollerConfig {
    /// The 7 days the API lists, in seconds.
    pub const RETENTION_SECS: u64 = 7 * 24 * 3600;

    /// Range problems, each naming its `poller.` key.
    pub fn problems(&self) -> Vec<ValidationError> {
        let problem = |key: &str, message: &str| ValidationError {
            key: format!("poller.{key}"),
            message: message.to_string(),
        };
        let mut problems = Vec::new();
        if self.max_window_secs.get() >= 24 * 3600 || self.max_window_secs.get() < 60 {
            problems.push(problem(
                "max_window_secs",
                "must be at least 60 and less than 86400 (Microsoft lists at most 24 hours)",
            ));
        }
        if self.initial_lookback_secs > Self::RETENTION_SECS {
            problems.push(problem(
                "initial_lookback_secs",
                "must be at most 604800: the API lists 7 days back at most",
            ));
        }
        if self.tail_window_secs > Self::RETENTION_SECS {
            problems.push(problem(
                "tail_window_secs",
                "must be at most 604800: the API lists 7 days back at most",
            ));
        }
        if self.poll_interval_secs.get() > 24 * 3600 {
            problems.push(problem(
                "poll_interval_secs",
                "must be at most 86400: content older than 7 days can no longer be listed",
            ));
        }
        if self.overlap_secs > Self::RETENTION_SECS {
            problems.push(problem("overlap_secs", "must be at most 604800"));
        }
        if self.lag_secs > 24 * 3600 {
            problems.push(problem("lag_secs", "must be at most 86400"));
        }
        if self.retention_margin_secs >= Self::RETENTION_SECS / 2 {
            problems.push(problem(
                "retention_margin_secs",
                "must be less than 302400 (half the 7 days the API lists)",
            ));
        }
        problems
    }
}

fn default_poll_interval_secs() -> NonZeroU64 {
    NonZeroU64::new(300).expect("non-zero constant")
}

fn default_poll_overlap_secs() -> u64 {
    3600
}

fn default_poll_retention_margin_secs() -> u64 {
    3600
}

fn default_poll_lag_secs() -> u64 {
    60
}

fn default_poll_max_window_secs() -> NonZeroU64 {
    NonZeroU64::new(23 * 3600).expect("non-zero constant")
}

fn default_poll_initial_lookback_secs() -> u64 {
    24 * 3600
}

fn default_poll_tail_interval_secs() -> NonZeroU64 {
    NonZeroU64::new(3600).expect("non-zero constant")
}

fn default_poll_tail_window_secs() -> u64 {
    24 * 3600
}

fn default_poll_clock_skew_secs() -> u64 {
    300
}

fn default_shutdown_secs() -> NonZeroU64 {
    NonZeroU64::new(20).expect("non-zero constant")
}

/// `[[tenants]]`: one Microsoft 365 tenant and the app registration that reads it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Unique, non-empty name; becomes `Log.dataSource`. Required.
    pub name: String,
    /// The tenant's directory (tenant) GUID. Required.
    pub tenant_id: Guid,
    /// The app registration's application (client) GUID. Required.
    pub client_id: Guid,
    /// The app's client secret. Exactly one of `client_secret` and `certificate`.
    pub client_secret: Option<Secret>,
    /// The app's certificate credential. Exactly one of `client_secret` and `certificate`.
    pub certificate: Option<CertificateConfig>,
    /// `"Commercial"`, `"GCC"`, `"GCCHigh"` or `"DoD"`. Default: `"Commercial"`.
    #[serde(default)]
    pub cloud: Cloud,
    /// Content types to collect, without duplicates. Default: all five.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<ContentType>,
    /// Overrides `api.publisher_id` for this tenant. Default: none.
    pub publisher_id: Option<PublisherId>,
    /// Overrides `engine.utm_tenant_id` (`Log.tenantId`, and part of `Log.id`) for this
    /// tenant: the UTMStack tenant it belongs to. Default: none (`engine.utm_tenant_id`).
    pub utm_tenant_id: Option<String>,
    /// Also collect this tenant's Microsoft Entra ID Identity Protection risk detections
    /// through Microsoft Graph (needs the Graph application permission
    /// `IdentityRiskEvent.Read.All` and, for the full data, Entra ID P2). Default: false
    /// (true for every group in UTMStack mode, as UTMStack's own plugin does).
    #[serde(default)]
    pub risk_detections: bool,
}

/// A certificate credential: PEM files of the certificate and its RSA private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM certificate registered on the app. Required.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8 or PKCS#1, at least 2048 bits). Required.
    pub key: PathBuf,
    /// How client assertions are signed: `PS256` with the `x5t#S256` header (current
    /// Microsoft guidance) or `RS256` with `x5t` (for older setups). Default: `PS256`.
    #[serde(default)]
    pub algorithm: AssertionAlgorithm,
}

/// The signature of client assertions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256; the certificate named by its SHA-256 thumbprint (`x5t#S256`).
    #[default]
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256; the certificate named by its SHA-1 thumbprint (`x5t`).
    #[serde(rename = "RS256")]
    Rs256,
}

/// How a tenant's app authenticates.
#[derive(Debug, Clone, Copy)]
pub enum TenantCredential<'a> {
    /// A client secret.
    Secret(&'a Secret),
    /// A certificate and key.
    Certificate(&'a CertificateConfig),
}

impl Config {
    /// Loads, overrides from the process environment, resolves secrets and validates.
    /// Variables whose name or value is not UTF-8 are ignored.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let env = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        Self::load_with_env(path, env)
    }

    /// As [`Config::load`], with the environment given (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let parsed = load::parse_file(path, &env)?;
        Self::finish(path, parsed, &env)
    }

    /// As [`Config::load_with_env`], from TOML text (tests that build a configuration);
    /// errors name the file as `<string>`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env.into_iter().collect();
        let path = Path::new("<string>");
        let parsed = load::parse_text(path, text, &env)?;
        Self::finish(path, parsed, &env)
    }

    /// Resolves the secrets of a parsed configuration and validates it.
    fn finish(
        path: &Path,
        (mut config, applied_overrides): (Config, Vec<AppliedOverride>),
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        config.applied_overrides = applied_overrides;
        let mut problems = config.resolve_secrets(env);
        if let Err(invalid) = config.validate() {
            problems.extend(invalid);
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(config)
    }

    /// Checks the rules that span keys; every problem is returned, each naming its key.
    pub fn validate(&self) -> Result<(), Vec<ValidationError>> {
        let mut problems = validate::problems(self);
        problems.extend(self.poller.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// What start-up should log as warnings (each names its key).
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }

    /// The environment variables that overrode keys of the file.
    pub fn applied_overrides(&self) -> &[AppliedOverride] {
        &self.applied_overrides
    }

    /// The tenant with this tenant id.
    pub fn tenant(&self, tenant_id: Guid) -> Option<&TenantConfig> {
        self.tenants
            .iter()
            .find(|tenant| tenant.tenant_id == tenant_id)
    }

    /// Reads every secret reference; one error per secret that cannot be read.
    fn resolve_secrets(&mut self, env: &HashMap<String, String>) -> Vec<ValidationError> {
        let mut secrets: Vec<(String, &mut Secret)> = Vec::new();
        if let Some(secret) = self.server.webhook_secret.as_mut() {
            secrets.push(("server.webhook_secret".into(), secret));
        }
        if let Some(secret) = self.server.webhook_secret_previous.as_mut() {
            secrets.push(("server.webhook_secret_previous".into(), secret));
        }
        for (index, tenant) in self.tenants.iter_mut().enumerate() {
            if let Some(secret) = tenant.client_secret.as_mut() {
                secrets.push((format!("tenants[{index}].client_secret"), secret));
            }
        }
        secrets
            .into_iter()
            .filter_map(|(key, secret)| secret.resolve(&key, env).err().map(|error| (key, error)))
            .map(|(key, error)| ValidationError::from_secret_error(key, &error))
            .collect()
    }

    /// True when an environment variable set this key (or a key inside it).
    fn is_overridden(&self, key: &str) -> bool {
        self.applied_overrides
            .iter()
            .any(|applied| applied.key == key || applied.key.starts_with(&format!("{key}.")))
    }
}

impl ServerConfig {
    /// The local path the webhook is served under, without a trailing slash (`""` for the
    /// root): `path`, else the path of `public_url`.
    pub fn local_path(&self) -> String {
        let path = match (&self.path, &self.public_url) {
            (Some(path), _) => path.as_str(),
            (None, Some(url)) => url.path(),
            (None, None) => "",
        };
        path.trim_end_matches('/').to_string()
    }

    /// The URL Microsoft is given for a tenant: `{public_url}/{tenant id}`; `None` when
    /// polling only.
    pub fn webhook_url(&self, tenant_id: Guid) -> Option<Url> {
        let mut url = self.public_url.clone()?;
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(&tenant_id.to_string());
        }
        Some(url)
    }

    /// True when HTTPS is served here (both `tls_cert` and `tls_key` set).
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

impl TenantConfig {
    /// The endpoints of this tenant: its cloud's preset, with `api.login_url` and
    /// `api.api_url` applied.
    pub fn endpoints(&self, api: &ApiConfig) -> Endpoints {
        Endpoints::with_overrides(self.cloud, api.login_url.as_ref(), api.api_url.as_ref())
            .with_graph(api.graph_url.as_ref())
    }

    /// The publisher id to send for this tenant: its own override, else `api.publisher_id`,
    /// else the tenant's own id.
    pub fn publisher_id(&self, api: &ApiConfig) -> PublisherId {
        self.publisher_id
            .clone()
            .or_else(|| api.publisher_id.clone())
            .unwrap_or(PublisherId::Guid(self.tenant_id))
    }

    /// The credential; `None` only on a configuration that failed validation (neither or
    /// both of `client_secret` and `certificate`).
    pub fn credential(&self) -> Option<TenantCredential<'_>> {
        match (&self.client_secret, &self.certificate) {
            (Some(secret), None) => Some(TenantCredential::Secret(secret)),
            (None, Some(certificate)) => Some(TenantCredential::Certificate(certificate)),
            _ => None,
        }
    }

    /// The UTMStack tenant id its Logs carry: its own override, else
    /// `engine.utm_tenant_id`.
    pub fn utm_tenant_id<'a>(&'a self, engine: &'a EngineConfig) -> &'a str {
        self.utm_tenant_id
            .as_deref()
            .unwrap_or(engine.utm_tenant_id.as_str())
    }

    /// True when this content type is collected for this tenant.
    pub fn collects(&self, content_type: ContentType) -> bool {
        self.content_types.contains(&content_type)
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            socket: default_engine_socket(),
            utm_tenant_id: default_utm_tenant_id(),
            timestamp: TimestampSource::default(),
            max_message_bytes: default_max_message_bytes(),
            stall_secs: default_stall_secs(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            publisher_id: None,
            login_url: None,
            api_url: None,
            graph_url: None,
            ca_file: None,
            proxy: None,
            requests_per_minute: default_requests_per_minute(),
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self {
            count: default_worker_count(),
            lease_secs: default_lease_secs(),
        }
    }
}

/// Where a secret of the file came from, for the literal-secret warning.
fn is_literal(secret: &Secret) -> bool {
    matches!(secret.source(), SecretSource::Literal)
}

/// A socket address, with an error that shows the expected form.
fn deserialize_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address:port (like \"0.0.0.0:8443\" or \"[::1]:8443\")"
        ))
    })
}

/// An optional socket address (see [`deserialize_socket_address`]).
fn deserialize_optional_socket_address<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    struct Address(#[serde(deserialize_with = "deserialize_socket_address")] SocketAddr);
    Ok(Option::<Address>::deserialize(deserializer)?.map(|address| address.0))
}

/// A list of networks: each a CIDR (`"10.0.0.0/8"`, `"2603:1000::/25"`) or a single
/// address (taken as /32 or /128).
fn deserialize_networks<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is not a network (like \"10.0.0.0/8\", \"2603:1000::/25\" or \"192.0.2.7\")"
                    ))
                })
        })
        .collect()
}

fn default_tls_watch_interval_secs() -> NonZeroU64 {
    NonZeroU64::new(5).expect("non-zero constant")
}

fn default_header_read_timeout_secs() -> NonZeroU64 {
    NonZeroU64::new(10).expect("non-zero constant")
}

fn default_max_connections() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero constant")
}

fn default_idle_timeout_secs() -> NonZeroU64 {
    NonZeroU64::new(60).expect("non-zero constant")
}

fn default_request_timeout_secs() -> NonZeroU64 {
    NonZeroU64::new(30).expect("non-zero constant")
}

fn default_max_body_bytes() -> NonZeroUsize {
    NonZeroUsize::new(1024 * 1024).expect("non-zero constant")
}

fn default_max_concurrent_bodies() -> NonZeroUsize {
    NonZeroUsize::new(64).expect("non-zero constant")
}

fn default_max_message_bytes() -> usize {
    crate::forward::DEFAULT_MAX_MESSAGE_BYTES
}

fn default_stall_secs() -> NonZeroU64 {
    NonZeroU64::new(60).expect("non-zero constant")
}

fn default_engine_socket() -> PathBuf {
    PathBuf::from("/workdir/sockets/engine_server.sock")
}

fn default_utm_tenant_id() -> String {
    "ce66672c-e36d-4761-a8c8-90058fee1a24".to_string()
}

fn default_requests_per_minute() -> NonZeroU32 {
    NonZeroU32::new(2000).expect("non-zero constant")
}

fn default_worker_count() -> NonZeroUsize {
    NonZeroUsize::new(16).expect("non-zero constant")
}

fn default_lease_secs() -> NonZeroU64 {
    NonZeroU64::new(300).expect("non-zero constant")
}

fn default_content_types() -> Vec<ContentType> {
    ContentType::ALL.to_vec()
}

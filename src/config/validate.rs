//! The rules of the configuration that types alone cannot state (keys that go together,
//! uniqueness across tenants, URL shapes), and the start-up warnings.
//!
//! Every rule reports through a [`ValidationError`] naming its key, and all problems are
//! collected, so an operator fixes the file in one pass.

use std::collections::HashMap;
use std::fmt;

use url::Url;

use super::{Config, ServerConfig, TenantConfig, is_literal};
use crate::secret::SecretError;

/// The smallest `engine.max_message_bytes` accepted: below it, ordinary audit records
/// (a few KiB, some tens of KiB) would be dead-lettered as oversized.
const MIN_MESSAGE_BYTES: usize = 64 * 1024;

/// One problem in the configuration: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The key, e.g. `tenants[1].tenant_id` or `server.tls_key`.
    pub key: String,
    /// What is wrong and what to do, lowercase.
    pub message: String,
}

impl ValidationError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// A secret that could not be read (its message already names the key).
    pub(super) fn from_secret_error(key: String, error: &SecretError) -> Self {
        let message = error.to_string();
        let message = message
            .strip_prefix(&format!("{key}: "))
            .unwrap_or(&message)
            .to_string();
        Self { key, message }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.key, self.message)
    }
}

/// Every problem of `config`, in the order of the file.
pub(super) fn problems(config: &Config) -> Vec<ValidationError> {
    let mut problems = Vec::new();
    check_server(&config.server, &mut problems);
    if config.store.path.as_os_str().is_empty() {
        problems.push(ValidationError::new(
            "store.path",
            "is empty: give a directory",
        ));
    }
    check_store(&config.store, &mut problems);
    if config.engine.socket.as_os_str().is_empty() {
        problems.push(ValidationError::new(
            "engine.socket",
            "is empty: give the engine's Unix socket",
        ));
    }
    if config.engine.max_message_bytes < MIN_MESSAGE_BYTES {
        problems.push(ValidationError::new(
            "engine.max_message_bytes",
            format!(
                "is {}: give the engine's gRPC receive limit in bytes, at least {MIN_MESSAGE_BYTES} (default 4194304)",
                config.engine.max_message_bytes
            ),
        ));
    }
    if config.engine.utm_tenant_id.trim().is_empty() {
        problems.push(ValidationError::new("engine.utm_tenant_id", "is empty"));
    }
    check_base_url(
        "api.login_url",
        config.api.login_url.as_ref(),
        &mut problems,
    );
    check_base_url("api.api_url", config.api.api_url.as_ref(), &mut problems);
    check_base_url(
        "api.graph_url",
        config.api.graph_url.as_ref(),
        &mut problems,
    );
    check_base_url("api.proxy", config.api.proxy.as_ref(), &mut problems);
    check_tenants(&config.tenants, &mut problems);
    if let Some(hard_limit) = config.ops.queue_hard_limit
        && hard_limit < config.ops.queue_high_water
    {
        problems.push(ValidationError::new(
            "ops.queue_hard_limit",
            format!(
                "is {hard_limit}, below ops.queue_high_water ({}): give at least the high-water mark, or remove the key for 10 × queue_high_water",
                config.ops.queue_high_water
            ),
        ));
    }
    problems
}

fn check_server(server: &ServerConfig, problems: &mut Vec<ValidationError>) {
    if server.tls_cert.is_some() != server.tls_key.is_some() {
        let missing = if server.tls_cert.is_some() {
            "server.tls_key"
        } else {
            "server.tls_cert"
        };
        problems.push(ValidationError::new(
            missing,
            "set tls_cert and tls_key together (or neither, for plain HTTP behind a TLS proxy)",
        ));
    }
    if let Some(url) = &server.public_url {
        check_base_url("server.public_url", Some(url), problems);
    }
    if let Some(path) = &server.path
        && !path.starts_with('/')
    {
        problems.push(ValidationError::new(
            "server.path",
            format!("{path:?} must start with '/'"),
        ));
    }
}

/// An override, proxy or public URL: http or https, with a host, without query or
/// fragment (paths are appended to it).
fn check_base_url(key: &str, url: Option<&Url>, problems: &mut Vec<ValidationError>) {
    let Some(url) = url else { return };
    if !matches!(url.scheme(), "http" | "https") {
        problems.push(ValidationError::new(
            key,
            format!("{url} must be an https:// (or, for test rigs, http://) URL"),
        ));
    } else if url.host().is_none() {
        problems.push(ValidationError::new(key, format!("{url} has no host")));
    } else if url.query().is_some() || url.fragment().is_some() {
        problems.push(ValidationError::new(
            key,
            format!("{url} must not carry a query or fragment"),
        ));
    }
}

fn check_tenants(tenants: &[TenantConfig], problems: &mut Vec<ValidationError>) {
    if tenants.is_empty() {
        problems.push(ValidationError::new(
            "tenants",
            "no tenant configured: add at least one [[tenants]] table",
        ));
    }
    let mut first_with_name: HashMap<&str, usize> = HashMap::new();
    let mut first_with_id = HashMap::new();
    for (index, tenant) in tenants.iter().enumerate() {
        let key = |field: &str| format!("tenants[{index}].{field}");
        let name = tenant.name.trim();
        if name.is_empty() {
            problems.push(ValidationError::new(
                key("name"),
                "is empty: give the data source name",
            ));
        } else if let Some(first) = first_with_name.insert(name, index) {
            problems.push(ValidationError::new(
                key("name"),
                format!("{name:?} is already the name of tenants[{first}]: names must be unique"),
            ));
        }
        if let Some(first) = first_with_id.insert(tenant.tenant_id, index) {
            problems.push(ValidationError::new(
                key("tenant_id"),
                format!(
                    "{} is already configured as tenants[{first}]",
                    tenant.tenant_id
                ),
            ));
        }
        if tenant
            .utm_tenant_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            problems.push(ValidationError::new(
                key("utm_tenant_id"),
                "is empty: give the UTMStack tenant id, or remove the key for engine.utm_tenant_id",
            ));
        }
        check_tenant_credential(tenant, &key, problems);
        check_content_types(tenant, &key, problems);
    }
}

fn check_tenant_credential(
    tenant: &TenantConfig,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<ValidationError>,
) {
    match (&tenant.client_secret, &tenant.certificate) {
        (Some(_), Some(_)) => problems.push(ValidationError::new(
            key("certificate"),
            "set either client_secret or certificate, not both",
        )),
        (None, None) => problems.push(ValidationError::new(
            key("client_secret"),
            "missing: set client_secret (or certificate = { cert = \"…\", key = \"…\" })",
        )),
        _ => {}
    }
}

fn check_content_types(
    tenant: &TenantConfig,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<ValidationError>,
) {
    if tenant.content_types.is_empty() {
        problems.push(ValidationError::new(
            key("content_types"),
            "is empty: list at least one content type, or remove the key for all five",
        ));
    }
    for (position, content_type) in tenant.content_types.iter().enumerate() {
        if tenant.content_types[..position].contains(content_type) {
            problems.push(ValidationError::new(
                format!("{}[{position}]", key("content_types")),
                format!("{content_type} is listed twice"),
            ));
        }
    }
}

/// What start-up logs as warnings.
pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    for (key, url) in [
        ("api.login_url", &config.api.login_url),
        ("api.api_url", &config.api.api_url),
        ("api.graph_url", &config.api.graph_url),
    ] {
        if let Some(url) = url.as_ref().filter(|url| url.scheme() == "http") {
            warnings.push(format!(
                "{key}: plain http:// override {url} is honoured: tokens and audit records travel \
                 unencrypted (acceptable for test rigs only)"
            ));
        }
    }
    match &config.server.public_url {
        None => warnings.push(
            "server.public_url: not set, so no webhook is registered: content is found by polling only"
                .to_string(),
        ),
        Some(url) if url.scheme() == "http" => warnings.push(format!(
            "server.public_url: {url} is http://; Microsoft delivers notifications only to https URLs"
        )),
        Some(_) => {}
    }
    literal_secret_warnings(config, &mut warnings);
    publisher_id_warning(config, &mut warnings);
    short_webhook_secret_warning(config, &mut warnings);
    warnings
}

/// Shortest `server.webhook_secret` start-up accepts without a warning, in bytes: the
/// authIds are HMAC-SHA256 under it, and a short secret can be guessed offline from one
/// authId. Not refused, so that an upgrade keeps running with the secret it has.
const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

fn short_webhook_secret_warning(config: &Config, warnings: &mut Vec<String>) {
    use crate::secret::ExposeSecret;
    let Some(secret) = &config.server.webhook_secret else {
        return;
    };
    let length = secret.expose_secret().len();
    if length < MIN_WEBHOOK_SECRET_BYTES {
        warnings.push(format!(
            "server.webhook_secret: {length} bytes, shorter than {MIN_WEBHOOK_SECRET_BYTES}: the \
             authIds Microsoft sends are derived from it and a short secret can be guessed from \
             one of them; set a random secret of at least {MIN_WEBHOOK_SECRET_BYTES} bytes \
             (e.g. `openssl rand -hex 32`), then rotate with server.webhook_secret_previous"
        ));
    }
}

fn literal_secret_warnings(config: &Config, warnings: &mut Vec<String>) {
    let mut secrets = Vec::new();
    if let Some(secret) = &config.server.webhook_secret {
        secrets.push(("server.webhook_secret".to_string(), secret));
    }
    if let Some(secret) = &config.server.webhook_secret_previous {
        secrets.push(("server.webhook_secret_previous".to_string(), secret));
    }
    for (index, tenant) in config.tenants.iter().enumerate() {
        if let Some(secret) = &tenant.client_secret {
            secrets.push((format!("tenants[{index}].client_secret"), secret));
        }
    }
    for (key, secret) in secrets {
        if is_literal(secret) && !config.is_overridden(&key) {
            warnings.push(format!(
                "{key}: the secret is written in the config file; prefer {{ env = \"VARIABLE\" }} \
                 or {{ file = \"path\" }}"
            ));
        }
    }
}

fn publisher_id_warning(config: &Config, warnings: &mut Vec<String>) {
    let without_override = config
        .tenants
        .iter()
        .filter(|tenant| tenant.publisher_id.is_none())
        .count();
    if config.tenants.len() > 1 && config.api.publisher_id.is_none() && without_override > 0 {
        warnings.push(format!(
            "api.publisher_id: not set, so {without_override} of {} tenants send their own tenant id \
             as PublisherIdentifier; set it to your (the vendor's) tenant GUID or domain, \
             as Microsoft asks publishers serving several tenants to do",
            config.tenants.len()
        ));
    }
}

fn check_store(store: &super::StoreConfig, problems: &mut Vec<ValidationError>) {
    use super::StoreBackendKind;
    let Some(nats) = &store.nats else {
        if store.backend == StoreBackendKind::Nats {
            problems.push(ValidationError::new(
                "store.nats",
                "is missing: backend = \"nats\" needs [store.nats] with urls",
            ));
        }
        return;
    };
    if nats.urls.is_empty() {
        problems.push(ValidationError::new(
            "store.nats.urls",
            "is empty: give at least one server, e.g. \"nats://nats:4222\"",
        ));
    }
    for url in &nats.urls {
        // Never echoed: a URL may carry a password or token.
        if url.contains('@') {
            problems.push(ValidationError::new(
                "store.nats.urls",
                "a URL carries credentials (user:password@ or token@), which would show in logs: give NATS credentials in store.nats.creds_file or TLS client certificates instead",
            ));
            continue;
        }
        let scheme = url.split_once("://").map(|(scheme, _)| scheme);
        if !matches!(scheme, Some("nats" | "tls")) {
            problems.push(ValidationError::new(
                "store.nats.urls",
                format!("{url:?} is not a NATS URL: write nats://host:port or tls://host:port"),
            ));
        }
    }
    if nats.tls_cert_file.is_some() != nats.tls_key_file.is_some() {
        problems.push(ValidationError::new(
            "store.nats.tls_cert_file",
            "and store.nats.tls_key_file go together: give both or neither",
        ));
    }
    let prefix_ok = !nats.prefix.is_empty()
        && nats
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !prefix_ok {
        problems.push(ValidationError::new(
            "store.nats.prefix",
            "may hold only letters, digits, '-' and '_', and not be empty",
        ));
    }
    if !matches!(nats.stream_replicas, 1 | 3 | 5) {
        problems.push(ValidationError::new(
            "store.nats.stream_replicas",
            "must be 1, 3 or 5",
        ));
    }
    if nats.leader_lease_secs.get() < 2 {
        problems.push(ValidationError::new(
            "store.nats.leader_lease_secs",
            "must be at least 2 seconds",
        ));
    }
    if let Some(replica) = &nats.replica_id {
        let ok = !replica.is_empty()
            && replica.len() <= 64
            && replica
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            problems.push(ValidationError::new(
                "store.nats.replica_id",
                "must be 1 to 64 letters, digits, '-', '_' or '.'",
            ));
        }
    }
}

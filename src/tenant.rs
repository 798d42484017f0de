//! A configured tenant at run time: its API client (with its token cache and request
//! budget) and what its Logs carry. Built at start from the configuration, and again for
//! the tenants a reload adds or changes.
//!
//! [`TenantSet`] holds the current tenants. A reload replaces the whole map at once
//! (readers see the old map or the new one, never a mix); a reader that already holds a
//! tenant keeps using it until it lets go, so work in flight finishes with the settings it
//! started with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;

use crate::api::http::HttpClientError;
use crate::api::{ApiClient, ApiClientConfig};
use crate::auth::{
    CertificateCredential, Credential, TokenProvider, TokenSourceConfig, resolve_publisher_id,
};
use crate::clock::Clock;
use crate::cloud::Endpoints;
use crate::config::{AssertionAlgorithm, Config, ContentType, TenantConfig, TenantCredential};
use crate::forward::log::LogContext;
use crate::ops::Metrics;
use crate::risk::graph::GraphClient;

/// One tenant, ready to call the API and to label its Logs.
pub struct Tenant {
    /// The configured name (`Log.dataSource`, metric label).
    pub name: String,
    /// Tenant GUID, lowercase.
    pub tenant_id: String,
    /// The app's client id, lowercase.
    pub client_id: String,
    /// Content types collected.
    pub content_types: Vec<ContentType>,
    /// Login and API bases.
    pub endpoints: Endpoints,
    /// The API client (token cache and request budget inside).
    pub client: Arc<ApiClient>,
    /// What this tenant's Logs carry.
    pub log_context: LogContext,
    /// Its Microsoft Graph client, when its risk detections are collected.
    pub graph: Option<Arc<GraphClient>>,
}

/// Why the tenants could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TenantSetupError {
    /// A certificate or key file of a tenant is unusable.
    #[error("tenant {tenant}: {reason}")]
    Credential {
        /// The tenant's name.
        tenant: String,
        /// What is wrong.
        reason: String,
    },
    /// A certificate or key file could not be read.
    #[error("tenant {tenant}: cannot read {path}: {source}")]
    CredentialFile {
        /// The tenant's name.
        tenant: String,
        /// The file.
        path: String,
        /// The read error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error(transparent)]
    Http(#[from] HttpClientError),
}

/// The tenants by lowercase tenant GUID.
pub type Tenants = HashMap<String, Arc<Tenant>>;

/// The current tenants of a running service, replaced as a whole on reload.
pub struct TenantSet {
    current: ArcSwap<Tenants>,
}

impl TenantSet {
    /// A set holding `tenants`.
    pub fn new(tenants: Tenants) -> Self {
        Self {
            current: ArcSwap::from_pointee(tenants),
        }
    }

    /// The tenants now (a snapshot: later reloads do not change it).
    pub fn current(&self) -> Arc<Tenants> {
        self.current.load_full()
    }

    /// The tenant with this lowercase GUID, if it is configured now.
    pub fn get(&self, tenant_id: &str) -> Option<Arc<Tenant>> {
        self.current.load().get(tenant_id).cloned()
    }

    /// Makes `tenants` the current tenants.
    pub fn replace(&self, tenants: Tenants) {
        self.current.store(Arc::new(tenants));
    }
}

/// True when the two configurations of one tenant would build the same [`Tenant`]: same
/// name, ids, cloud, content types, publisher, UTMStack tenant, risk detections and
/// credential (the secret
/// compared by value, the certificate by its file paths).
pub fn same_tenant_settings(left: &TenantConfig, right: &TenantConfig) -> bool {
    let secret = |tenant: &TenantConfig| {
        tenant
            .client_secret
            .as_ref()
            .map(|secret| secret.expose_secret().to_string())
    };
    left.name == right.name
        && left.tenant_id == right.tenant_id
        && left.client_id == right.client_id
        && left.cloud == right.cloud
        && left.content_types == right.content_types
        && left.publisher_id == right.publisher_id
        && left.utm_tenant_id == right.utm_tenant_id
        && left.certificate == right.certificate
        && left.risk_detections == right.risk_detections
        && secret(left) == secret(right)
}

/// Builds every tenant of `config`. A publisher id given as a domain is resolved once per
/// domain; when that fails the tenant goes on without `PublisherIdentifier` (collection
/// works, in the shared throttling pool) and the failure is logged with what to set.
pub async fn build_tenants(
    config: &Config,
    http: &reqwest::Client,
    clock: &Clock,
    metrics: &Arc<Metrics>,
) -> Result<Tenants, TenantSetupError> {
    let mut resolved: HashMap<String, Option<String>> = HashMap::new();
    let mut tenants = HashMap::new();
    for tenant_config in &config.tenants {
        let endpoints = tenant_config.endpoints(&config.api);
        let publisher = tenant_config.publisher_id(&config.api);
        let key = publisher.to_string();
        if !resolved.contains_key(&key) {
            let guid = match resolve_publisher_id(http, &endpoints, &publisher).await {
                Ok(guid) => Some(guid),
                Err(error) => {
                    tracing::error!(%error, "PublisherIdentifier will not be sent");
                    None
                }
            };
            resolved.insert(key.clone(), guid);
        }
        let tenant = build_tenant(
            config,
            tenant_config,
            endpoints,
            resolved[&key].clone(),
            http,
            clock,
            metrics,
        )?;
        tenants.insert(tenant.tenant_id.clone(), Arc::new(tenant));
    }
    Ok(tenants)
}

fn build_tenant(
    config: &Config,
    tenant_config: &TenantConfig,
    endpoints: Endpoints,
    publisher_id: Option<String>,
    http: &reqwest::Client,
    clock: &Clock,
    metrics: &Arc<Metrics>,
) -> Result<Tenant, TenantSetupError> {
    let tenant_id = tenant_config.tenant_id.to_string().to_ascii_lowercase();
    let credential = credential(tenant_config)?;
    watch_certificate_expiry(tenant_config, &credential, clock, metrics);
    let token_source = |scope: &str, credential: Credential| TokenSourceConfig {
        tenant_id: tenant_id.clone(),
        token_url: endpoints.token_url(&tenant_id),
        client_id: tenant_config.client_id.to_string(),
        scope: scope.to_string(),
        credential,
    };
    let graph = tenant_config.risk_detections.then(|| {
        let tokens = TokenProvider::new(
            http.clone(),
            token_source(endpoints.graph_scope(), credential.clone()),
            clock.clone(),
        )
        .with_metrics(metrics.clone(), &tenant_config.name);
        Arc::new(GraphClient::new(
            http.clone(),
            tenant_id.clone(),
            endpoints.clone(),
            tokens,
        ))
    });
    let tokens = TokenProvider::new(
        http.clone(),
        token_source(endpoints.token_scope(), credential),
        clock.clone(),
    )
    .with_metrics(metrics.clone(), &tenant_config.name);
    let client = ApiClient::new(
        http.clone(),
        ApiClientConfig {
            tenant_id: tenant_id.clone(),
            endpoints: endpoints.clone(),
            publisher_id,
            requests_per_minute: config.api.requests_per_minute,
        },
        Arc::new(tokens),
    )
    .with_metrics(metrics.clone(), &tenant_config.name);
    Ok(Tenant {
        name: tenant_config.name.clone(),
        tenant_id,
        client_id: tenant_config.client_id.to_string().to_ascii_lowercase(),
        content_types: tenant_config.content_types.clone(),
        endpoints,
        client: Arc::new(client),
        log_context: LogContext {
            utm_tenant_id: tenant_config.utm_tenant_id(&config.engine).to_string(),
            group_name: tenant_config.name.clone(),
            timestamp: config.engine.timestamp,
        },
        graph,
    })
}

/// Warn this long before a client certificate expires.
const CERTIFICATE_WARNING: chrono::TimeDelta = chrono::TimeDelta::days(30);

/// Publishes the certificate's remaining validity and warns when it is near its end.
fn watch_certificate_expiry(
    tenant: &TenantConfig,
    credential: &Credential,
    clock: &Clock,
    metrics: &Metrics,
) {
    let Credential::Certificate(certificate) = credential else {
        return;
    };
    let Some(not_after) = certificate.not_after() else {
        return;
    };
    let remaining = not_after - clock.now();
    metrics
        .certificate_expiry_seconds
        .get_or_create(&crate::ops::metrics::TenantLabels {
            tenant: metrics.tenant_label(&tenant.name),
        })
        .set(remaining.num_seconds());
    if remaining < chrono::TimeDelta::zero() {
        tracing::error!(tenant = %tenant.name, %not_after, "the client certificate has expired: upload a new certificate to the app registration and set it in the configuration");
    } else if remaining < CERTIFICATE_WARNING {
        tracing::warn!(tenant = %tenant.name, %not_after, days_left = remaining.num_days(), "the client certificate expires soon: upload a new one to the app registration and set it in the configuration");
    }
}

fn credential(tenant: &TenantConfig) -> Result<Credential, TenantSetupError> {
    match tenant.credential() {
        Some(TenantCredential::Secret(secret)) => Ok(Credential::Secret(secret.value().clone())),
        Some(TenantCredential::Certificate(files)) => {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| TenantSetupError::CredentialFile {
                    tenant: tenant.name.clone(),
                    path: path.display().to_string(),
                    source,
                })
            };
            let certificate =
                CertificateCredential::from_pem(&read(&files.cert)?, &read(&files.key)?).map_err(
                    |error| TenantSetupError::Credential {
                        tenant: tenant.name.clone(),
                        reason: error.to_string(),
                    },
                )?;
            let certificate = match files.algorithm {
                AssertionAlgorithm::Ps256 => certificate,
                AssertionAlgorithm::Rs256 => certificate.with_legacy_rs256(),
            };
            Ok(Credential::Certificate(certificate))
        }
        None => Err(TenantSetupError::Credential {
            tenant: tenant.name.clone(),
            reason: "set client_secret or certificate".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(secret: &str, content_types: &str) -> TenantConfig {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"/tmp/store\"\n\
             [engine]\nsocket = \"/tmp/engine.sock\"\n[[tenants]]\nname = \"contoso\"\n\
             tenant_id = \"41463f53-8812-40f4-890f-865bf6e35190\"\n\
             client_id = \"a1b2c3d4-0000-4000-8000-00000000c11e\"\n\
             client_secret = {{ env = \"SECRET\" }}\ncontent_types = [{content_types}]\n"
        );
        let env = [("SECRET".to_string(), secret.to_string())];
        Config::from_toml_with_env(&text, env)
            .unwrap()
            .tenants
            .remove(0)
    }

    #[test]
    fn same_settings_compare_equal_and_a_new_secret_or_content_type_does_not() {
        let exchange = "\"Audit.Exchange\"";
        assert!(same_tenant_settings(
            &tenant("one", exchange),
            &tenant("one", exchange)
        ));
        assert!(!same_tenant_settings(
            &tenant("one", exchange),
            &tenant("two", exchange)
        ));
        assert!(!same_tenant_settings(
            &tenant("one", exchange),
            &tenant("one", "\"Audit.Exchange\", \"DLP.All\"")
        ));
    }
}

//! The UTMStack drop-in: the configuration UTMStack's console writes for its Office 365
//! integration, turned into a [`Config`] (spec utmstack-engine.md §5).
//!
//! Where things are, for a work directory `WORK_DIR` (environment variable, default
//! `/workdir`):
//!
//! - the pipeline files `{WORK_DIR}/pipeline/*.yaml`, merged (see [`files`]), give
//!   `plugins.com.utmstack.pipelineDir` (default `{WORK_DIR}/pipeline`) and
//!   `plugins.com.utmstack.encryptionKey`;
//! - `{pipelineDir}/system_plugins_o365.yaml` holds the groups. A missing file, or one
//!   without groups, means the module is inactive: [`load`] returns
//!   [`UtmstackError::Inactive`].
//!
//! Each group becomes one `[[tenants]]` entry: `name` = the group name (`Log.dataSource`),
//! `utm_tenant_id` = its UTMStack tenant's `id` (`Log.tenantId`), and from its `config`:
//! `office365_tenant_id`, `office365_client_id`, `office365_client_secret` (required),
//! `office365_cloud_environment` (`Commercial`, `GCC`, `GCCHigh`, `DoD`; absent =
//! Commercial), and our optional string keys `office365_content_types` (comma-separated;
//! default all five) and `office365_publisher_id`. Every group's Entra ID risk detections
//! are collected (`risk_detections = true`), as UTMStack's own plugin does. A blank value (UTMStack writes a single
//! space) counts as absent. A group missing a required key, or with a value that cannot be
//! used, is skipped with a warning naming the key; the others go on.
//!
//! Secrets follow the Go plugin's rule ([`crypto`]): decrypted when they look encrypted,
//! else used as written with a warning. Secret values never appear in a warning or error:
//! they reach the [`Config`] as `{ env = … }` references resolved from a private copy of the
//! environment.
//!
//! Server settings (listen address, public URL, TLS, server secret, store path, …) come
//! from an optional TOML file (the same keys as `--config`, without `[[tenants]]`) and the
//! `O365_CONNECTOR__…` environment overrides; `O365_CONNECTOR_LOGIN_URL` and
//! `O365_CONNECTOR_API_URL` override every tenant's endpoints. Defaults that fit UTMStack's
//! layout fill what the file leaves out: `server.listen = "127.0.0.1:8443"`, `store.path =
//! {WORK_DIR}/o365-connector`, `engine.socket = {WORK_DIR}/sockets/engine_server.sock`.
//!
//! With `NATS_URL` set and no store chosen by the settings, the store is NATS JetStream at
//! that URL with the prefix `o365_connector` (see [`nats`]), shared by the copies on every
//! worker node.
//!
//! [`failures`] sends the tenants' problems to UTMStack's console (in every mode).
//!
//! [`source`] says where the binary's configuration comes from (a TOML file or these files);
//! the service's `utmstack_watch` reloads the tenants when these files change
//! (`run --utmstack`).

pub mod crypto;
pub mod failures;
pub mod files;
pub mod nats;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use toml::{Table, Value};

use crate::cloud::Cloud;
use crate::config::{Config, ConfigError, ContentType, Guid, PublisherId};
use crypto::{DerivedKey, SecretValue};
use files::RawGroup;

/// The environment variable naming UTMStack's work directory.
pub const ENV_WORK_DIR: &str = "WORK_DIR";
/// The work directory when `WORK_DIR` is not set.
pub const DEFAULT_WORK_DIR: &str = "/workdir";
/// The o365 integration's file name in the pipeline directory.
pub const O365_FILE_NAME: &str = "system_plugins_o365.yaml";
/// Listen address when the TOML file does not set `server.listen`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// Group config keys.
const KEY_TENANT_ID: &str = "office365_tenant_id";
const KEY_CLIENT_ID: &str = "office365_client_id";
const KEY_CLIENT_SECRET: &str = "office365_client_secret";
const KEY_CLOUD: &str = "office365_cloud_environment";
const KEY_CONTENT_TYPES: &str = "office365_content_types";
const KEY_PUBLISHER_ID: &str = "office365_publisher_id";

/// Prefix of the private variables that carry decrypted secrets into the [`Config`].
const SECRET_VARIABLE_PREFIX: &str = "O365_CONNECTOR_UTMSTACK_GROUP_SECRET_";

/// Where UTMStack's files are and the environment to read (injectable for tests).
#[derive(Debug, Clone)]
pub struct UtmstackEnvironment {
    /// UTMStack's work directory (`WORK_DIR`).
    pub work_dir: PathBuf,
    /// The environment: `O365_CONNECTOR__…` overrides and secret references.
    pub env: HashMap<String, String>,
}

impl UtmstackEnvironment {
    /// The process environment; `work_dir` from `WORK_DIR`, default `/workdir`. Variables
    /// whose name or value is not UTF-8 are ignored.
    pub fn from_process() -> Self {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Self::from_env(env)
    }

    /// `work_dir` from `env`'s `WORK_DIR` (default `/workdir`).
    pub fn from_env(env: HashMap<String, String>) -> Self {
        let work_dir = env
            .get(ENV_WORK_DIR)
            .filter(|dir| !dir.trim().is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_WORK_DIR), PathBuf::from);
        Self { work_dir, env }
    }

    /// `{WORK_DIR}/pipeline`, where the pipeline files are.
    pub fn pipeline_files_dir(&self) -> PathBuf {
        self.work_dir.join("pipeline")
    }
}

/// The configuration built from UTMStack's files, with what was skipped and why.
#[derive(Debug)]
pub struct UtmstackConfig {
    /// The validated configuration; one tenant per usable group.
    pub config: Config,
    /// The o365 file that was read.
    pub o365_file: PathBuf,
    /// Groups left out, each with the key at fault.
    pub skipped: Vec<SkippedGroup>,
    /// Start-up warnings (plaintext secrets, unreadable pipeline files); no values.
    pub warnings: Vec<String>,
}

/// A group that was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedGroup {
    /// The group name (may be empty when that is the fault).
    pub group: String,
    /// The config key at fault (e.g. `office365_client_secret`).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for SkippedGroup {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "o365 group {:?} skipped: {} {}",
            self.group, self.key, self.reason
        )
    }
}

/// UTMStack's configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UtmstackError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The o365 file is not valid YAML.
    #[error("{path}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// No usable group: the integration is not configured in UTMStack (or every group was
    /// skipped, each with its reason logged).
    #[error(
        "the Office 365 module is inactive ({path}: {reason}); add a tenant group in \
         UTMStack's Office 365 integration"
    )]
    Inactive {
        /// The o365 file.
        path: PathBuf,
        /// Why: missing file, no group, or every group skipped.
        reason: String,
        /// Groups left out, each naming its key.
        skipped: Vec<SkippedGroup>,
    },
    /// The TOML file has `[[tenants]]`, which the YAML provides with `--utmstack`.
    #[error(
        "{path}: remove [[tenants]]: with --utmstack the tenants come from UTMStack's {O365_FILE_NAME}"
    )]
    TenantsInToml {
        /// The TOML file.
        path: PathBuf,
    },
    /// The TOML file could not be read or parsed.
    #[error("{path}: {message}")]
    Toml {
        /// The TOML file.
        path: PathBuf,
        /// What is wrong (no file content).
        message: String,
    },
    /// UTMStack's `NATS_URL` cannot be used (its value is never shown: it may carry
    /// credentials).
    #[error(
        "environment variable NATS_URL: {reason} (the value is not shown: it may carry credentials)"
    )]
    NatsUrl {
        /// What is wrong.
        reason: &'static str,
    },
    /// The resulting configuration is invalid (keys of the TOML file or of `tenants[i]`,
    /// in the order of the usable groups).
    #[error(
        "the configuration built from UTMStack's files is invalid (tenants[i] is the i-th usable \
         o365 group): {0}"
    )]
    Config(#[source] ConfigError),
}

/// Reads UTMStack's files (and the optional TOML `settings` file) into a validated
/// [`Config`]. Skipped groups and warnings are logged here and returned.
pub fn load(
    environment: &UtmstackEnvironment,
    settings: Option<&Path>,
) -> Result<UtmstackConfig, UtmstackError> {
    let mut warnings = Vec::new();
    let pipeline = files::merged_pipeline(&environment.pipeline_files_dir(), &mut warnings);
    let o365_file = o365_file_in(&pipeline, environment);
    let key = files::utmstack_key(&pipeline, "encryptionKey").map(|key| DerivedKey::derive(&key));
    let Some(groups) = files::read_groups(&o365_file)? else {
        return Err(inactive(&o365_file, "the file does not exist", Vec::new()));
    };
    from_groups(
        environment,
        settings,
        o365_file,
        &groups,
        key.as_ref(),
        warnings,
    )
}

/// The rest of [`load`] once the o365 file's groups are read: each group checked and turned
/// into a tenant, then merged with the `settings` file and validated. `key` decrypts the
/// groups' secrets; `warnings` holds those of the pipeline files so far. Reads no file but
/// `settings` (the fuzz target passes none).
pub fn from_groups(
    environment: &UtmstackEnvironment,
    settings: Option<&Path>,
    o365_file: PathBuf,
    groups: &[RawGroup],
    key: Option<&DerivedKey>,
    mut warnings: Vec<String>,
) -> Result<UtmstackConfig, UtmstackError> {
    let mut env = environment.env.clone();
    let mut skipped = Vec::new();
    let mut tenants = Vec::new();
    for group in groups {
        match tenant_table(group, key, tenants.len(), &mut env, &mut warnings) {
            Ok(table) if is_duplicate(&tenants, &table) => skipped.push(SkippedGroup {
                group: group.name.clone(),
                key: "name".into(),
                reason: "repeats the name or office365_tenant_id of an earlier group".into(),
            }),
            Ok(table) => tenants.push(Value::Table(table)),
            Err(skip) => skipped.push(skip),
        }
    }
    for skip in &skipped {
        tracing::warn!("{skip}");
    }
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    if tenants.is_empty() {
        let reason = if groups.is_empty() {
            "no group is configured"
        } else {
            "every group was skipped"
        };
        return Err(inactive(&o365_file, reason, skipped));
    }
    let mut table = settings_table(settings)?;
    fill_utmstack_defaults(&mut table, &environment.work_dir);
    let nats_credentials = nats::select_store(&mut table, &env)?;
    table.insert("tenants".into(), Value::Array(tenants));
    let text = toml::to_string(&table).map_err(|error| UtmstackError::Toml {
        path: settings.map_or_else(|| PathBuf::from("<defaults>"), Path::to_path_buf),
        message: error.to_string(),
    })?;
    let mut config = Config::from_toml_with_env(&text, env).map_err(UtmstackError::Config)?;
    if let Some(nats) = config.store.nats.as_mut() {
        nats.url_credentials = nats_credentials;
    }
    Ok(UtmstackConfig {
        config,
        o365_file,
        skipped,
        warnings,
    })
}

/// Where `system_plugins_o365.yaml` is, as the pipeline files say now.
pub fn o365_file(environment: &UtmstackEnvironment) -> PathBuf {
    let pipeline = files::merged_pipeline(&environment.pipeline_files_dir(), &mut Vec::new());
    o365_file_in(&pipeline, environment)
}

/// `{pipelineDir}/system_plugins_o365.yaml`, `pipelineDir` from the merged pipeline files.
fn o365_file_in(pipeline: &yaml_serde::Value, environment: &UtmstackEnvironment) -> PathBuf {
    files::utmstack_key(pipeline, "pipelineDir")
        .map_or_else(|| environment.pipeline_files_dir(), PathBuf::from)
        .join(O365_FILE_NAME)
}

fn inactive(path: &Path, reason: &str, skipped: Vec<SkippedGroup>) -> UtmstackError {
    UtmstackError::Inactive {
        path: path.to_path_buf(),
        reason: reason.to_string(),
        skipped,
    }
}

/// True when an earlier tenant has the same name or Microsoft tenant id.
fn is_duplicate(tenants: &[Value], table: &Table) -> bool {
    tenants.iter().any(|earlier| {
        ["name", "tenant_id"]
            .iter()
            .any(|key| earlier.get(key) == table.get(*key))
    })
}

/// The optional TOML file as a table, without `[[tenants]]`.
fn settings_table(settings: Option<&Path>) -> Result<Table, UtmstackError> {
    let Some(path) = settings else {
        return Ok(Table::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| UtmstackError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: Table = toml::from_str(&text).map_err(|error| UtmstackError::Toml {
        path: path.to_path_buf(),
        message: format!("invalid TOML: {}", error.message().trim_end()),
    })?;
    if table.contains_key("tenants") {
        return Err(UtmstackError::TenantsInToml {
            path: path.to_path_buf(),
        });
    }
    Ok(table)
}

/// Fills `server.listen`, `store.path` and `engine.socket` where the file left them out.
fn fill_utmstack_defaults(table: &mut Table, work_dir: &Path) {
    let mut set_default = |section: &str, key: &str, value: String| {
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if let Value::Table(section_table) = entry {
            section_table
                .entry(key.to_string())
                .or_insert(Value::String(value));
        }
    };
    set_default("server", "listen", DEFAULT_LISTEN.to_string());
    set_default(
        "store",
        "path",
        work_dir.join("o365-connector").display().to_string(),
    );
    set_default(
        "engine",
        "socket",
        work_dir
            .join("sockets")
            .join("engine_server.sock")
            .display()
            .to_string(),
    );
}

/// One group as a `[[tenants]]` table; its secret goes into `env` under a private variable.
fn tenant_table(
    group: &RawGroup,
    key: Option<&DerivedKey>,
    index: usize,
    env: &mut HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Table, SkippedGroup> {
    let skip = |key: &str, reason: &str| SkippedGroup {
        group: group.name.clone(),
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if group.name.is_empty() {
        return Err(skip("name", "is empty: give the group a name"));
    }
    let required = |name: &str| {
        group
            .value(name)
            .ok_or_else(|| skip(name, "is missing or empty"))
    };
    let guid = |name: &str| -> Result<String, SkippedGroup> {
        let text = required(name)?;
        text.parse::<Guid>()
            .map(|guid| guid.to_string())
            .map_err(|_| skip(name, "is not a GUID"))
    };
    let tenant_id = guid(KEY_TENANT_ID)?;
    let client_id = guid(KEY_CLIENT_ID)?;
    let written_secret = required(KEY_CLIENT_SECRET)?;
    let mut table = Table::new();
    table.insert("name".into(), Value::String(group.name.clone()));
    table.insert("tenant_id".into(), Value::String(tenant_id));
    table.insert("client_id".into(), Value::String(client_id));
    // UTMStack's plugin collects every group's Entra ID risk detections; so do we.
    table.insert("risk_detections".into(), Value::Boolean(true));
    if let Some(cloud) = group.value(KEY_CLOUD) {
        let cloud: Cloud = cloud
            .parse()
            .map_err(|_| skip(KEY_CLOUD, "is not one of Commercial, GCC, GCCHigh, DoD"))?;
        table.insert("cloud".into(), Value::String(cloud.name().to_string()));
    }
    if let Some(listed) = group.value(KEY_CONTENT_TYPES) {
        table.insert(
            "content_types".into(),
            content_types(listed).map_err(|reason| skip(KEY_CONTENT_TYPES, &reason))?,
        );
    }
    if let Some(publisher) = group.value(KEY_PUBLISHER_ID) {
        let publisher: PublisherId = publisher
            .parse()
            .map_err(|_| skip(KEY_PUBLISHER_ID, "is not a tenant GUID or domain"))?;
        table.insert("publisher_id".into(), Value::String(publisher.to_string()));
    }
    if let Some(utm_tenant_id) = &group.utm_tenant_id {
        table.insert("utm_tenant_id".into(), Value::String(utm_tenant_id.clone()));
    }
    let secret = match crypto::decrypt_secret(written_secret, key) {
        SecretValue::Decrypted(secret) => secret,
        SecretValue::Plaintext(secret, reason) => {
            warnings.push(format!(
                "o365 group {:?}: {KEY_CLIENT_SECRET} {}",
                group.name,
                reason.explanation()
            ));
            secret
        }
    };
    let variable = format!("{SECRET_VARIABLE_PREFIX}{index}");
    env.insert(variable.clone(), secret.expose_secret().to_string());
    let mut reference = Table::new();
    reference.insert("env".into(), Value::String(variable));
    table.insert("client_secret".into(), Value::Table(reference));
    Ok(table)
}

/// `office365_content_types`: comma-separated content type names, each at most once.
fn content_types(listed: &str) -> Result<Value, String> {
    let mut parsed: Vec<ContentType> = Vec::new();
    for name in listed
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        let content_type: ContentType = name.parse().map_err(|_| {
            format!(
                "names {name:?}, not one of {}",
                ContentType::ALL.map(ContentType::as_str).join(", ")
            )
        })?;
        if !parsed.contains(&content_type) {
            parsed.push(content_type);
        }
    }
    if parsed.is_empty() {
        return Err("lists no content type".into());
    }
    Ok(Value::Array(
        parsed
            .iter()
            .map(|content_type| Value::String(content_type.as_str().to_string()))
            .collect(),
    ))
}

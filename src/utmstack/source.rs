//! Where the binary's configuration comes from: a TOML file, or UTMStack's drop-in files
//! with an optional TOML file for the server settings. The command line (`--config FILE`,
//! `--utmstack`) is turned into a [`ConfigSource`] by `cli`, so the library that loads
//! configurations (the operator commands, the service) never depends on the command line.
//!
//! Loading validates: a [`ConfigSource::load`] that returns a [`Config`] returns one the
//! service can start with.

use std::path::{Path, PathBuf};

use super::{UtmstackEnvironment, UtmstackError};
use crate::config::{Config, ConfigError};

/// Where the configuration comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A TOML configuration file; environment overrides apply.
    File(PathBuf),
    /// The tenants from UTMStack's `system_plugins_o365.yaml` under `WORK_DIR` (see
    /// [`super::load`]), the server settings from an optional TOML file without
    /// `[[tenants]]`.
    Utmstack {
        /// The server settings file, if any.
        settings: Option<PathBuf>,
    },
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigSourceError {
    /// The TOML configuration file is unreadable or invalid.
    #[error(transparent)]
    File(#[from] ConfigError),
    /// UTMStack's files (or the server settings file) are unreadable or invalid.
    #[error(transparent)]
    Utmstack(#[from] UtmstackError),
}

impl ConfigSource {
    /// Loads and validates the configuration; with UTMStack's files, logs how many tenants
    /// were read and skipped (the skipped groups' warnings are logged by [`super::load`]).
    pub fn load(&self) -> Result<Config, ConfigSourceError> {
        match self {
            Self::File(path) => Ok(Config::load(path)?),
            Self::Utmstack { settings } => {
                let environment = UtmstackEnvironment::from_process();
                let loaded = super::load(&environment, settings.as_deref())?;
                tracing::info!(
                    file = %loaded.o365_file.display(),
                    tenants = loaded.config.tenants.len(),
                    skipped = loaded.skipped.len(),
                    "tenants read from UTMStack's configuration"
                );
                Ok(loaded.config)
            }
        }
    }

    /// Whether the tenants come from UTMStack's files (and can be reloaded when they change).
    pub fn is_utmstack(&self) -> bool {
        matches!(self, Self::Utmstack { .. })
    }

    /// The TOML file read: the whole configuration, or UTMStack's server settings.
    pub fn toml_file(&self) -> Option<&Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Utmstack { settings } => settings.as_deref(),
        }
    }
}

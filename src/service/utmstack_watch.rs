//! Hot reload of UTMStack's configuration (`run --utmstack`): the pipeline files and
//! `system_plugins_o365.yaml` are watched by polling their modification time and size
//! every few seconds (no file-notification API: it works the same on every file system,
//! bind mounts and volumes included). A change is read once the files have stayed the same
//! for one more interval, so a file caught half-written is not applied.
//!
//! On a change the files are read again ([`utmstack::load`]) and the tenants applied to the
//! running service ([`TenantSupervisor::apply`]): a new group starts, a removed one stops,
//! a changed one (e.g. its secret) restarts with its new settings; queued work is kept
//! (see [`super::tenants`]). A file that cannot be read or parsed, or tenants that
//! cannot be built, leave the running tenants as they are, with a warning saying why; the
//! next change is tried again. A file left without any usable group stops every tenant
//! (the module is inactive) and the service waits for groups to come back.
//!
//! Only the tenants are reloaded; server settings need a restart.
//!
//! It lives with the service, not in [`crate::utmstack`], because it drives the service's
//! tenants: `utmstack` reads files and knows nothing of the service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::tenants::TenantSupervisor;
use crate::config::Config;
use crate::utmstack::{self, UtmstackEnvironment, UtmstackError};

/// How often the files are looked at when not configured.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// What the watcher reads and how often.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Where UTMStack's files are.
    pub environment: UtmstackEnvironment,
    /// The optional TOML server settings file given with `--config`.
    pub settings: Option<PathBuf>,
    /// Time between two looks at the files.
    pub interval: Duration,
}

/// The modification time and size of each watched file (`None`: absent).
pub(crate) type FilesState = Vec<(PathBuf, Option<(SystemTime, u64)>)>;

/// Watches the files until `shutdown`, applying each change to `supervisor`. `running`
/// is the configuration the service started with.
pub async fn run(
    supervisor: Arc<TenantSupervisor>,
    settings: WatchSettings,
    running: Config,
    shutdown: CancellationToken,
) {
    let mut last_config = running;
    // Nothing counts as applied yet: the first stable look reads the files once more, so
    // a change made between the start and this first look is not missed.
    let mut applied = FilesState::new();
    let mut observed = look(&settings.environment).await.unwrap_or_default();
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(now) = look(&settings.environment).await else {
            continue;
        };
        // A change is read once it has held for a whole interval, so a file caught in the
        // middle of being written is not taken for the new configuration.
        if now != observed {
            observed = now;
            continue;
        }
        if now == applied {
            continue;
        }
        applied = now;
        if let Some(config) = reload(&supervisor, &settings, &last_config).await {
            last_config = config;
        }
    }
}

/// Reads the files and applies their tenants; the configuration applied, if any.
async fn reload(
    supervisor: &TenantSupervisor,
    settings: &WatchSettings,
    last_config: &Config,
) -> Option<Config> {
    // Reading derives the decryption key (PBKDF2, 65536 rounds): off the async threads.
    let environment = settings.environment.clone();
    let settings_file = settings.settings.clone();
    let loaded =
        tokio::task::spawn_blocking(move || utmstack::load(&environment, settings_file.as_deref()))
            .await;
    let Ok(loaded) = loaded else {
        tracing::warn!(
            "reading UTMStack's configuration stopped unexpectedly; the running tenants go on unchanged"
        );
        return None;
    };
    let config = match loaded {
        Ok(loaded) => loaded.config,
        Err(UtmstackError::Inactive { path, reason, .. }) => {
            tracing::warn!(file = %path.display(), %reason, "no usable o365 group: every tenant stops until a group is configured");
            let mut empty = last_config.clone();
            empty.tenants.clear();
            empty
        }
        Err(error) => {
            tracing::warn!(%error, "UTMStack's configuration changed but cannot be used; the running tenants go on unchanged");
            return None;
        }
    };
    match supervisor.apply(&config).await {
        Ok(changes) if changes.is_empty() => {
            tracing::debug!("UTMStack's configuration read again; no tenant changed");
            Some(config)
        }
        Ok(changes) => {
            tracing::info!(
                added = ?changes.added,
                removed = ?changes.removed,
                changed = ?changes.changed,
                "tenants reloaded from UTMStack's configuration"
            );
            Some(config)
        }
        Err(error) => {
            tracing::warn!(%error, "the changed tenants cannot be set up; the running tenants go on unchanged");
            None
        }
    }
}

/// [`files_state`] off the async threads (it reads directories and parses the pipeline
/// files); `None` if that task failed. The plugin (`crate::plugin`) waits on it too.
pub(crate) async fn look(environment: &UtmstackEnvironment) -> Option<FilesState> {
    let environment = environment.clone();
    tokio::task::spawn_blocking(move || files_state(&environment))
        .await
        .ok()
}

/// The pipeline files and the o365 file where the pipeline files say it is.
fn files_state(environment: &UtmstackEnvironment) -> FilesState {
    let pipeline_files = environment.pipeline_files_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&pipeline_files)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.extension()
                        .is_some_and(|extension| extension == "yaml" || extension == "yml")
                })
                .collect()
        })
        .unwrap_or_default();
    paths.push(utmstack::o365_file(environment));
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .map(|path| {
            let state = file_state(&path);
            (path, state)
        })
        .collect()
}

fn file_state(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

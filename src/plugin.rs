//! The binary as UTMStack's Office 365 plugin: started under the executable name
//! [`PLUGIN_EXECUTABLE_NAME`] (a copy or a symlink of `o365-connector`), the way UTMStack's
//! EventProcessor starts every plugin in `/workdir/plugins/utmstack/` (spec
//! utmstack-engine.md §6a).
//!
//! What it guarantees, as the Go plugin it replaces:
//!
//! - arguments are ignored: the EventProcessor passes none;
//! - unless the environment variable `MODE` is `worker`, the process exits 0 at once (the
//!   manager runs every plugin too, and only workers collect);
//! - with `MODE=worker` it is `run --utmstack`, with `--config
//!   {WORK_DIR}/o365-connector/config.toml` when that file exists (our own directory beside
//!   the store; UTMStack does not manage it) and the `O365_CONNECTOR__…` environment;
//! - where `run --utmstack` would exit because the Office 365 module is not configured (no
//!   usable group), it waits instead, says so once, and starts collecting when the console
//!   writes the configuration (UTMStack starts every plugin on every worker, configured or
//!   not). Any other unusable configuration (e.g. the settings file) still exits non-zero
//!   with the error.
//!
//! Logs go to stderr as in every mode; the readiness line `listening …` is printed on
//! stdout once collection starts.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Cli, Command};
use crate::server::tls_reload::ReloadRequests;
use crate::service::utmstack_watch;
use crate::utmstack::source::ConfigSourceError;
use crate::utmstack::{self, UtmstackEnvironment, UtmstackError};

/// The executable's file name under which the binary behaves as UTMStack's plugin.
pub const PLUGIN_EXECUTABLE_NAME: &str = "com.utmstack.o365.plugin";
/// The environment variable that says which EventProcessor runs the plugin.
pub const ENV_MODE: &str = "MODE";
/// The only `MODE` in which the plugin collects.
pub const WORKER_MODE: &str = "worker";
/// The server settings file, relative to `WORK_DIR`.
pub const SETTINGS_FILE: &str = "o365-connector/config.toml";

/// Whether the program was started as UTMStack's plugin: `argv[0]`'s file name is
/// [`PLUGIN_EXECUTABLE_NAME`] (a symlink keeps its own name in `argv[0]`).
pub fn invoked_as_plugin(argv0: Option<&OsStr>) -> bool {
    argv0
        .and_then(|path| Path::new(path).file_name())
        .is_some_and(|name| name == PLUGIN_EXECUTABLE_NAME)
}

/// Whether `MODE` asks this copy to collect (`worker`); the Go plugin's rule.
pub fn collects_in_mode(mode: Option<&str>) -> bool {
    mode == Some(WORKER_MODE)
}

/// `{WORK_DIR}/o365-connector/config.toml` if that file exists.
pub fn settings_file(work_dir: &Path) -> Option<PathBuf> {
    Some(work_dir.join(SETTINGS_FILE)).filter(|path| path.is_file())
}

/// The command line the plugin runs: `run --utmstack [--config SETTINGS]`; the watch
/// interval comes from `O365_CONNECTOR_UTMSTACK_WATCH_SECS` as for `run`.
pub fn command_line(settings: Option<&Path>) -> anyhow::Result<Cli> {
    let mut arguments = vec![
        PLUGIN_EXECUTABLE_NAME.into(),
        "run".into(),
        "--utmstack".into(),
    ];
    if let Some(settings) = settings {
        arguments.push("--config".into());
        arguments.push(settings.as_os_str().to_owned());
    }
    Cli::try_parse_from::<_, std::ffi::OsString>(arguments)
        .context("the plugin's settings from the environment are invalid")
}

/// Runs the plugin until `shutdown`: `MODE` is checked by the caller ([`collects_in_mode`]).
pub async fn run(
    shutdown: CancellationToken,
    tls_reload_requests: ReloadRequests,
) -> anyhow::Result<()> {
    let environment = UtmstackEnvironment::from_process();
    let settings = settings_file(&environment.work_dir);
    let interval = match &command_line(settings.as_deref())?.command {
        Command::Run(args) => Duration::from_secs(args.watch_interval_secs),
        _ => unreachable!("command_line builds `run`"),
    };
    tracing::info!(
        work_dir = %environment.work_dir.display(),
        settings = settings.as_ref().map(|path| path.display().to_string()),
        "running as UTMStack's Office 365 plugin"
    );
    loop {
        let configured =
            wait_until_configured(&environment, settings.as_deref(), interval, &shutdown).await?;
        if !configured {
            return Ok(());
        }
        let command = command_line(settings.as_deref())?;
        match cli::run(command, shutdown.clone(), tls_reload_requests.clone()).await {
            // The groups went away between the look and the start: wait again.
            Err(error) if is_inactive(&error) => continue,
            outcome => return outcome,
        }
    }
}

/// Waits until UTMStack's files give at least one usable group (`true`) or `shutdown`
/// (`false`). The files are read again only when they change, so the module's state and
/// the skipped groups' warnings are logged once per change, not once per look.
async fn wait_until_configured(
    environment: &UtmstackEnvironment,
    settings: Option<&Path>,
    interval: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut read = None;
    let mut announced = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            _ = tick.tick() => {}
        }
        let Some(now) = utmstack_watch::look(environment).await else {
            continue;
        };
        if read.as_ref() == Some(&now) {
            continue;
        }
        read = Some(now);
        let (environment, settings_path) = (environment.clone(), settings.map(Path::to_path_buf));
        // Reading derives the decryption key (PBKDF2): off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            utmstack::load(&environment, settings_path.as_deref())
        })
        .await
        .context("reading UTMStack's configuration stopped unexpectedly")?;
        match loaded {
            Ok(_) => return Ok(true),
            Err(UtmstackError::Inactive { path, reason, .. }) if !announced => {
                announced = true;
                tracing::warn!(
                    file = %path.display(),
                    %reason,
                    "the Office 365 module is not configured in UTMStack; waiting for the console \
                     to write a tenant group, collection starts then"
                );
            }
            Err(UtmstackError::Inactive { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `run --utmstack` failed because the module has no usable group.
fn is_inactive(error: &anyhow::Error) -> bool {
    matches!(
        error.downcast_ref::<ConfigSourceError>(),
        Some(ConfigSourceError::Utmstack(UtmstackError::Inactive { .. }))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::utmstack::source::ConfigSource;

    #[test]
    fn only_the_plugin_file_name_selects_the_plugin_whatever_the_directory() {
        let plugin = OsStr::new("/workdir/plugins/utmstack/com.utmstack.o365.plugin");
        assert!(invoked_as_plugin(Some(plugin)));
        assert!(invoked_as_plugin(Some(OsStr::new(PLUGIN_EXECUTABLE_NAME))));
        assert!(!invoked_as_plugin(Some(OsStr::new(
            "/usr/local/bin/o365-connector"
        ))));
        assert!(!invoked_as_plugin(Some(OsStr::new(
            "com.utmstack.o365.plugin.old"
        ))));
        assert!(!invoked_as_plugin(None));
    }

    #[test]
    fn only_worker_mode_collects() {
        assert!(collects_in_mode(Some("worker")));
        for mode in [None, Some("manager"), Some(""), Some("Worker")] {
            assert!(!collects_in_mode(mode), "{mode:?}");
        }
    }

    #[test]
    fn settings_file_is_used_only_when_it_exists() {
        let work = tempfile::tempdir().unwrap();
        assert_eq!(settings_file(work.path()), None);
        let path = work.path().join(SETTINGS_FILE);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "").unwrap();
        assert_eq!(settings_file(work.path()), Some(path.clone()));
        let Command::Run(args) = command_line(Some(&path)).unwrap().command else {
            panic!("the plugin runs `run`");
        };
        assert_eq!(
            args.source.source().unwrap(),
            ConfigSource::Utmstack {
                settings: Some(path)
            }
        );
    }

    #[test]
    fn a_missing_module_is_recognised_through_the_command_error() {
        let inactive = UtmstackError::Inactive {
            path: PathBuf::from("/workdir/pipeline/system_plugins_o365.yaml"),
            reason: "the file does not exist".into(),
            skipped: Vec::new(),
        };
        let error = anyhow::Error::from(ConfigSourceError::from(inactive));
        assert!(is_inactive(&error));
        assert!(!is_inactive(&anyhow::anyhow!("module is inactive")));
    }
}

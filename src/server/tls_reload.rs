//! Replacing the HTTPS listener's certificate while it runs, without dropping a
//! connection.
//!
//! The listener's [`RustlsConfig`] is a shared handle: a reload builds a complete new
//! rustls configuration from the files (certificate chain, key, optional client CA) and
//! swaps it in. Handshakes that start afterwards use the new certificate; connections
//! already established keep the session they negotiated and go on undisturbed.
//!
//! A reload happens when an operator asks (SIGHUP, which only `main` catches and passes on
//! as a [`ReloadRequests`]), and when the files change on disk: every
//! `server.tls_watch_interval_secs` the watcher compares each file's modification time,
//! size and inode with what it last saw (so an atomic rename, as certbot and Kubernetes
//! secret volumes do, is seen too). A reload that fails — a missing file, a key that does
//! not match the certificate, a half-written file — keeps the old certificate serving and
//! logs why, once per change; the next change (or SIGHUP) tries again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum_server::tls_rustls::RustlsConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{TlsError, server_config_with_client_ca};

/// The files a TLS listener is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM CA certificates client certificates must chain to; `None`: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The sending side of reload requests; `main` holds it and calls
/// [`ReloadTrigger::request`] on SIGHUP.
#[derive(Debug)]
pub struct ReloadTrigger(watch::Sender<()>);

/// The receiving side of reload requests; cloneable, one per listener that reloads.
#[derive(Clone, Debug)]
pub struct ReloadRequests(watch::Receiver<()>);

/// A new channel of reload requests.
pub fn reload_channel() -> (ReloadTrigger, ReloadRequests) {
    let (sender, receiver) = watch::channel(());
    (ReloadTrigger(sender), ReloadRequests(receiver))
}

impl ReloadTrigger {
    /// Asks every listener holding a [`ReloadRequests`] of this channel to reload now.
    /// Requests made while a reload runs fold into one more reload.
    pub fn request(&self) {
        self.0.send_replace(());
    }
}

impl ReloadRequests {
    /// Requests that never come (no SIGHUP source: tests, tools).
    pub fn none() -> Self {
        let (_, requests) = reload_channel();
        requests
    }

    /// Waits for the next request; never returns once the trigger is gone.
    async fn next(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What identifies a file's current content without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    length: u64,
    inode: u64,
}

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: metadata.modified().ok(),
        length: metadata.len(),
        inode: metadata.ino(),
    })
}

/// The certificate of one TLS listener, reloadable in place.
pub struct CertificateReloader {
    files: TlsFiles,
    rustls: RustlsConfig,
}

impl CertificateReloader {
    /// Loads the files; an error here means the listener cannot start.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = build(&files)?;
        Ok(Self {
            files,
            rustls: RustlsConfig::from_config(Arc::new(config)),
        })
    }

    /// The handle to give the listener; reloads replace what it serves.
    pub fn rustls_config(&self) -> RustlsConfig {
        self.rustls.clone()
    }

    /// Builds a configuration from the files and swaps it in; on error the old one stays.
    pub async fn reload(&self) -> Result<(), TlsError> {
        let files = self.files.clone();
        let built = tokio::task::spawn_blocking(move || build(&files))
            .await
            .map_err(|error| TlsError::Pem {
                what: "certificate",
                path: self.files.cert.clone(),
                reason: format!("the reload task failed: {error}"),
            })??;
        self.rustls.reload_from_config(Arc::new(built));
        Ok(())
    }

    /// Reloads on every request and whenever a file changes (checked every `interval`),
    /// until `shutdown`.
    pub async fn run(
        self,
        interval: Duration,
        mut requests: ReloadRequests,
        shutdown: CancellationToken,
    ) {
        let mut seen = self.stamps();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = requests.next() => "reload requested (SIGHUP)",
                _ = tick.tick() => {
                    let now = self.stamps();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "certificate files changed"
                }
            };
            self.reload_and_log(reason).await;
        }
    }

    async fn reload_and_log(&self, reason: &str) {
        match self.reload().await {
            Ok(()) => tracing::info!(
                cert = %self.files.cert.display(),
                reason,
                "TLS certificate reloaded; new connections use it"
            ),
            Err(error) => tracing::warn!(
                %error,
                reason,
                "TLS certificate not reloaded; the previous one is still served"
            ),
        }
    }

    fn stamps(&self) -> Vec<Option<FileStamp>> {
        [Some(&self.files.cert), Some(&self.files.key)]
            .into_iter()
            .chain([self.files.client_ca.as_ref()])
            .flatten()
            .map(|path| file_stamp(path))
            .collect()
    }
}

fn build(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    server_config_with_client_ca(&files.cert, &files.key, files.client_ca.as_deref())
}

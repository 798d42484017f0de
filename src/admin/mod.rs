//! Operator commands on a running service, through its private admin listener.
//!
//! The running service holds the store's lock, so `subscriptions`, `backfill` and
//! `deadletters` act through it: the service listens on a Unix socket in its store
//! directory (`{store.path}/admin.sock`, mode 0600, so only its own user — and root — can
//! connect; `--admin-socket PATH` points a command elsewhere) and serves newline-delimited
//! JSON ([`protocol`]). Without a running service, `subscriptions` talks to the API itself
//! (tenants built from the configuration as the service builds them); the others say the
//! service must run.
//!
//! Files:
//! - [`protocol`]: the requests, progress and reports that cross the socket;
//! - [`operations`]: what each command does on the service's components (shared with the
//!   direct `subscriptions` mode);
//! - [`server`]: the listener the service starts and stops;
//! - [`client`]: connecting and exchanging one request;
//! - [`command`]: the commands as the binary runs them (tables, `--json`, progress);
//! - [`events`]: the log line of each operator change.
//!
//! Operator actions and the running service: a subscription stopped by hand is started again
//! by the service's subscription check when the configuration still collects it; a requeued
//! dead item whose content expired is dead-lettered again (AF20051).

pub mod client;
pub mod command;
pub mod events;
pub mod operations;
pub mod protocol;
pub mod server;

use std::path::PathBuf;

use crate::config::Config;

pub use operations::{AdminContext, AdminError};
pub use server::{AdminListenError, AdminServer};

/// The admin socket's file name inside the store directory.
pub const ADMIN_SOCKET_FILE_NAME: &str = "admin.sock";

/// Where the service of `config` listens for operator commands: `{store.path}/admin.sock`.
pub fn socket_path(config: &Config) -> PathBuf {
    config.store.path.join(ADMIN_SOCKET_FILE_NAME)
}

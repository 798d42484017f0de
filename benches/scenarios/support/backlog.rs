//! A backlog to drain, and one connector's drain of it (the drain, scale-out and quota
//! scenarios).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use o365_connector::emulator::api::ApiEmulator;
use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::emulator::api::scenario::Scenario;

/// A backlog to drain: the API emulator (throttling off) with `blobs` blobs of `per_blob`
/// records published, and the engine on `dir/engine.sock`.
pub async fn backlog(
    dir: &Path,
    blobs: usize,
    per_blob: usize,
) -> (ApiEmulator, PathBuf, Arc<EngineState>, Vec<ContentEntry>) {
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    let entries = publish(&api, blobs).await;
    (api, socket, engine, entries)
}

/// What one connector's drain measured.
pub struct DrainRun {
    pub startup: f64,
    pub elapsed: f64,
    pub cpu: f64,
    pub peak_rss: f64,
}

/// Starts a connector (the bench's build, or `binary`) with its own store under `dir`, waits
/// until the engine acked `total` more Logs, stops it.
pub async fn connector_drain(
    dir: &Path,
    api: &ApiEmulator,
    engine: &EngineState,
    socket: &Path,
    total: u64,
    binary: Option<&Path>,
) -> DrainRun {
    std::fs::create_dir_all(dir).unwrap();
    let before = engine.acked.load(Ordering::Relaxed);
    let started = Instant::now();
    let setup = ConnectorSetup {
        dir,
        socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(1),
        store: ("", ""),
    };
    let connector = match binary {
        Some(binary) => Connector::start_binary(setup, binary).await,
        None => Connector::start(setup).await,
    };
    let startup = started.elapsed();
    wait_until("the drain", Duration::from_secs(600), || {
        engine.acked.load(Ordering::Relaxed) >= before + total
    })
    .await;
    let run = DrainRun {
        startup: startup.as_secs_f64(),
        elapsed: (started.elapsed() - startup).as_secs_f64(),
        cpu: connector.cpu_seconds(),
        peak_rss: connector.peak_rss(),
    };
    connector.stop();
    run
}

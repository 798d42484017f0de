//! The performance scenarios of issue 9, end to end: the connector runs as its own process
//! (the release binary built by `cargo bench`), the Management API emulator, a minimal
//! engine (acknowledging every Log at once and timestamping the acks) and the load generator
//! run in this process on loopback, and the store lives in `target/tmp` on the machine's disk.
//! Every scenario measures its limit in the same run where it has one. One JSON line per
//! figure: `{"scenario","metric","value","unit","limit","ratio","target","op","met"}`;
//! `target`/`op` apply to `ratio` when `limit` is set, to `value` otherwise.
//!
//! Run: `cargo bench --bench scenarios`; `BENCH_SCENARIO=drain` (or webhook_ingest, latency,
//! big_blob, huge_records, many_tenants, quota, scale_out; comma-separated) picks scenarios. `scale_out`
//! needs Debian's nats-server (or `O365_NATS_SERVER`) and drains `SCALE_BLOBS` blobs with an
//! embedded-store instance, one replica on NATS and three replicas on NATS, in one run. `QUOTA_TRACE=1` prints the
//! quota scenario's requests and throttled answers per second, and its acks as they pass each
//! thousand; `BENCH_RUST_LOG` sets the connector's `RUST_LOG` (default `warn`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use o365_connector::clock::Clock;
use o365_connector::config::TimestampSource;
use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{
    FaultScenario, Scenario, TenantScenario, ThrottleResponse,
};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use o365_connector::forward::log::{LogContext, build_log, log_id};
use o365_connector::proto::{Ack, Engine, EngineClient, EngineServer, Log, Message, unix_channel};
use o365_connector::webhook::WebhookSecrets;
use serde_json::json;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "bench-secret";
const WEBHOOK_SECRET: &str = "bench-webhook-secret";
const UTM_TENANT: &str = "ce66672c-e36d-4761-a8c8-90058fee1a24";
const GROUP: &str = "bench";
const MIB: f64 = 1024.0 * 1024.0;

/// One figure, printed as one JSON line.
fn figure(
    scenario: &str,
    metric: &str,
    value: f64,
    unit: &str,
    limit: Option<f64>,
    target: Option<(f64, &str)>,
) {
    let ratio = limit.map(|limit| value / limit);
    let checked = ratio.unwrap_or(value);
    let met = target.map(|(target, op)| match op {
        "ge" => checked >= target,
        _ => checked <= target,
    });
    println!(
        "{}",
        json!({"scenario": scenario, "metric": metric, "value": value, "unit": unit,
               "limit": limit, "ratio": ratio, "target": target.map(|t| t.0),
               "op": target.map(|t| t.1), "met": met})
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// The engine: acknowledges every Log as it arrives; optionally timestamps each ack by id.

#[derive(Default)]
struct EngineState {
    acked: AtomicU64,
    ack_times: Mutex<Option<HashMap<String, Instant>>>,
}

#[derive(Clone)]
struct BenchEngine(Arc<EngineState>);

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Engine for BenchEngine {
    type InputStream = AckStream;
    type NotifyStream = AckStream;

    async fn input(&self, request: Request<Streaming<Log>>) -> Result<Response<AckStream>, Status> {
        let state = self.0.clone();
        let (acks, stream) = tokio::sync::mpsc::channel(4096);
        let mut logs = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(log)) = logs.message().await {
                if acks
                    .send(Ok(Ack {
                        last_id: log.id.clone(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(times) = state.ack_times.lock().unwrap().as_mut() {
                    times.insert(log.id, Instant::now());
                }
                state.acked.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn notify(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<AckStream>, Status> {
        let (acks, stream) = tokio::sync::mpsc::channel(64);
        let mut messages = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = messages.message().await {
                if acks
                    .send(Ok(Ack {
                        last_id: message.id,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

async fn start_engine(socket: &Path) -> Arc<EngineState> {
    let state = Arc::new(EngineState::default());
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let service = EngineServer::new(BenchEngine(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    state
}

/// Waits until `condition` holds, polling every few milliseconds, up to `deadline`.
async fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The connector process.

struct Connector {
    child: Child,
    listen: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options of one connector configuration.
struct ConnectorSetup<'a> {
    dir: &'a Path,
    socket: &'a Path,
    api_base: &'a str,
    requests_per_minute: u64,
    tenants: &'a [String],
    webhook: bool,
    poller: &'a str,
    /// TOML appended to the file (e.g. `[store.nats]`), and `[store]` keys before it.
    store: (&'a str, &'a str),
}

fn write_config(setup: &ConnectorSetup<'_>, port: u16) -> PathBuf {
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n{webhook}\n[store]\npath = \"{store}\"\n{store_keys}\n\
         [engine]\nsocket = \"{socket}\"\n[api]\nlogin_url = \"{base}\"\napi_url = \"{base}\"\n\
         requests_per_minute = {rpm}\n[workers]\ncount = {workers}\n[poller]\n{poller}\n",
        webhook = if setup.webhook {
            format!(
                "public_url = \"http://127.0.0.1:{port}/hook\"\n\
                 webhook_secret = {{ env = \"BENCH_WEBHOOK_SECRET\" }}"
            )
        } else {
            String::new()
        },
        store = setup.dir.join("store").display(),
        store_keys = setup.store.0,
        socket = setup.socket.display(),
        base = setup.api_base,
        rpm = setup.requests_per_minute,
        poller = setup.poller,
        workers = bench_workers(),
    );
    for (index, tenant_id) in setup.tenants.iter().enumerate() {
        let name = if index == 0 {
            GROUP.to_string()
        } else {
            format!("t{index}")
        };
        toml.push_str(&format!(
            "[[tenants]]\nname = \"{name}\"\ntenant_id = \"{tenant_id}\"\nclient_id = \"{CLIENT}\"\n\
             client_secret = {{ env = \"BENCH_SECRET\" }}\ncontent_types = [\"Audit.General\"]\n"
        ));
    }
    toml.push_str(setup.store.1);
    let path = setup.dir.join("connector.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

impl Connector {
    /// Starts the release binary and waits for its `/readyz` to answer 200.
    async fn start(setup: ConnectorSetup<'_>) -> Connector {
        Self::start_binary(setup, Path::new(env!("CARGO_BIN_EXE_o365-connector"))).await
    }

    /// Starts `binary` (another build of the connector) and waits for its `/readyz`.
    async fn start_binary(setup: ConnectorSetup<'_>, binary: &Path) -> Connector {
        let port = free_port();
        let config = write_config(&setup, port);
        let log = std::fs::File::create(setup.dir.join("connector.log")).unwrap();
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .env("BENCH_SECRET", SECRET)
            .env("BENCH_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let connector = Connector {
            child,
            listen: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let ready = http
                .get(format!("{}/readyz", connector.listen))
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            if ready {
                return connector;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the connector is not ready; see {}",
                setup.dir.join("connector.log").display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set (`VmHWM`) in bytes.
    fn peak_rss(&self) -> f64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024.0
    }

    /// Current resident set (`VmRSS`) in bytes.
    fn rss(&self) -> f64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024.0
    }

    /// utime + stime in seconds.
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // Fields 14 and 15 of stat(5); `after_name` starts at field 3.
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        ticks / clock_ticks_per_second()
    }

    /// SIGTERM, then waits for a graceful exit (SIGKILL after 30 s, by `Drop`).
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connector {
    /// A scenario that panics leaves no connector behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn proc_status_kib(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

// ---------------------------------------------------------------------------------------
// The API emulator.

fn records_file(dir: &Path) -> PathBuf {
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut files: Vec<_> = std::fs::read_dir(events)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    let mut lines = String::new();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            // Valid records only: the scenarios measure throughput, not dead-lettering.
            if serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| value.is_object())
            {
                lines.push_str(line);
                lines.push('\n');
            }
        }
    }
    let path = dir.join("records.ndjson");
    std::fs::write(&path, lines).unwrap();
    path
}

fn tenant_scenario(tenant_id: &str, records: &Path, per_blob: usize) -> TenantScenario {
    let mut tenant = TenantScenario::with_secret(tenant_id, CLIENT, SECRET);
    tenant.publication.records = Some(records.to_path_buf());
    tenant.publication.records_per_blob = per_blob;
    tenant.publication.content_types = vec!["Audit.General".into()];
    tenant.faults = FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    };
    tenant
}

async fn start_api(scenario: Scenario) -> ApiEmulator {
    ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock: Clock::system(),
    })
    .await
    .unwrap()
}

/// A poller that lists everything published up to now, every `interval` seconds.
fn eager_poller(interval: u64) -> String {
    format!("poll_interval_secs = {interval}\nlag_secs = 0\ninitial_lookback_secs = 3600\n")
}

/// A poller that lists nothing for a day: the webhook is the only intake.
const IDLE_POLLER: &str = "poll_interval_secs = 86400\nlag_secs = 86400\ninitial_lookback_secs = 3600\ntail_interval_secs = 86400\n";

/// Starts the tenant's Audit.General subscription (the emulator keeps no content without
/// one) and publishes `blobs` blobs now.
async fn publish(api: &ApiEmulator, blobs: usize) -> Vec<ContentEntry> {
    let http = reqwest::Client::new();
    let token = bearer(&http, api.base_url()).await;
    let response = http
        .post(format!(
            "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/start?contentType=Audit.General",
            api.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "the subscription starts");
    let entries = publish::publish_now(api.state(), TENANT, "Audit.General", blobs).await;
    assert_eq!(entries.len(), blobs, "every blob published");
    entries
}

async fn bearer(http: &reqwest::Client, base: &str) -> String {
    let response: serde_json::Value = http
        .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://manage.office.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------------------------------
// drain

/// The connector's worker count: its default (16) unless `BENCH_WORKERS` says otherwise.
fn bench_workers() -> usize {
    env_number("BENCH_WORKERS", 16)
}

/// The limit: the same blobs fetched by bare reqwest (as many at a time as the connector has
/// workers) and their records pushed as Logs by a bare tonic client on one stream. Returns
/// (seconds, bytes).
async fn bare_drain(base: &str, entries: &[ContentEntry], socket: &Path) -> (f64, u64) {
    let http = reqwest::Client::new();
    let token = bearer(&http, base).await;
    let started = Instant::now();
    let uris: Arc<Vec<String>> = Arc::new(entries.iter().map(|e| e.content_uri.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..bench_workers())
        .map(|_| {
            let (http, token, uris, next) =
                (http.clone(), token.clone(), uris.clone(), next.clone());
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                while let Some(uri) = uris.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let response = http.get(uri).bearer_auth(&token).send().await.unwrap();
                    bodies.push((uri.clone(), response.bytes().await.unwrap()));
                }
                bodies
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.extend(task.await.unwrap());
    }
    let fetch = started.elapsed();
    let bytes = bodies.iter().map(|(_, body)| body.len() as u64).sum();
    let context = log_context();
    let mut logs = Vec::new();
    for (uri, body) in &bodies {
        let records: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).unwrap();
        for (index, record) in records.iter().enumerate() {
            let bytes = record.get().as_bytes();
            logs.push(build_log(
                &context,
                bytes,
                index as u64,
                uri,
                chrono::Utc::now(),
            ));
        }
    }
    let count = logs.len();
    let push_started = Instant::now();
    let mut client = EngineClient::new(unix_channel(socket));
    let mut acks = client
        .input(tokio_stream::iter(logs))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..count {
        acks.message().await.unwrap().expect("an ack per log");
    }
    ((fetch + push_started.elapsed()).as_secs_f64(), bytes)
}

fn log_context() -> LogContext {
    LogContext {
        utm_tenant_id: UTM_TENANT.into(),
        group_name: GROUP.into(),
        timestamp: TimestampSource::Event,
    }
}

/// A backlog to drain: the API emulator (throttling off) with `blobs` blobs of `per_blob`
/// records published, and the engine on `dir/engine.sock`.
async fn backlog(
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

async fn drain(dir: &Path) {
    let blobs = env_number("DRAIN_BLOBS", 2000);
    let per_blob = env_number("DRAIN_RECORDS", 100);
    let (api, socket, engine, entries) = backlog(dir, blobs, per_blob).await;
    let (limit_secs, bytes) = bare_drain(api.base_url(), &entries, &socket).await;
    let total = (blobs * per_blob) as u64;
    let run = connector_drain(&dir.join("connector"), &api, &engine, &socket, total, None).await;
    let megabytes = bytes as f64 / 1e6;
    let limit_rate = total as f64 / limit_secs;
    let rate = total as f64 / run.elapsed;
    figure(
        "drain",
        "records_per_s",
        rate,
        "records/s",
        Some(limit_rate),
        Some((0.7, "ge")),
    );
    figure(
        "drain",
        "mb_per_s",
        megabytes / run.elapsed,
        "MB/s",
        Some(megabytes / limit_secs),
        None,
    );
    figure("drain", "peak_rss", run.peak_rss / MIB, "MiB", None, None);
    figure("drain", "startup_s", run.startup, "s", None, None);
    figure("drain", "connector_cpu_s", run.cpu, "s", None, None);
    figure("drain", "elapsed_s", run.elapsed, "s", None, None);
    // Another build of the connector (say, the commit before a change) drains the same blobs
    // in this run, so a before/after comparison is a ratio that holds on a noisy machine.
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE_BIN") {
        let baseline = PathBuf::from(baseline);
        let before = connector_drain(
            &dir.join("baseline"),
            &api,
            &engine,
            &socket,
            total,
            Some(&baseline),
        )
        .await;
        let before_rate = total as f64 / before.elapsed;
        figure(
            "drain",
            "baseline_records_per_s",
            before_rate,
            "records/s",
            Some(limit_rate),
            None,
        );
        figure(
            "drain",
            "baseline_connector_cpu_s",
            before.cpu,
            "s",
            None,
            None,
        );
        figure(
            "drain",
            "speedup_over_baseline",
            rate / before_rate,
            "ratio",
            None,
            None,
        );
    }
    api.shutdown().await;
}

/// What one connector's drain measured.
struct DrainRun {
    startup: f64,
    elapsed: f64,
    cpu: f64,
    peak_rss: f64,
}

/// Starts a connector (the bench's build, or `binary`) with its own store under `dir`, waits
/// until the engine acked `total` more Logs, stops it.
async fn connector_drain(
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
    wait_until(Duration::from_secs(600), "the drain", || {
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

// ---------------------------------------------------------------------------------------
// scale-out: the drain on NATS JetStream with one and with three replicas

/// A nats-server with JetStream for the scenario (Debian's package, or `O365_NATS_SERVER`);
/// killed when dropped.
struct Nats {
    child: Child,
    url: String,
}

impl Nats {
    async fn start(dir: &Path) -> Nats {
        let port = free_port();
        let binary = std::env::var_os("O365_NATS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(|dir| dir.join("nats-server"))
                    .find(|candidate| candidate.is_file())
                    .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
            });
        let child = Command::new(&binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.join("nats"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats-server.log")).unwrap())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}): apt-get install nats-server",
                    binary.display()
                )
            });
        let nats = Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(client) = async_nats::connect(nats.url.as_str()).await
                && client.request("$JS.API.INFO", "".into()).await.is_ok()
            {
                return nats;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn scale_out(dir: &Path) {
    let blobs = env_number("SCALE_BLOBS", 2000);
    let per_blob = env_number("DRAIN_RECORDS", 100);
    let (api, socket, engine, _) = backlog(dir, blobs, per_blob).await;
    let nats = Nats::start(dir).await;
    let total = (blobs * per_blob) as u64;
    // The same blobs, drained by an embedded-store instance, then by one and by three
    // replicas on NATS (each with a fresh stream, so nothing is a duplicate).
    let embedded =
        connector_drain(&dir.join("embedded"), &api, &engine, &socket, total, None).await;
    let one = replicas_drain(dir, 1, &api, &engine, &socket, total, &nats.url).await;
    let three = replicas_drain(dir, 3, &api, &engine, &socket, total, &nats.url).await;
    // From the process start: a replica works before its /readyz answers (NATS readiness
    // waits for the first store probe), so the wall time includes start-up for every run.
    let rate = |run: &DrainRun| total as f64 / (run.startup + run.elapsed);
    figure(
        "scale_out",
        "embedded_records_per_s",
        rate(&embedded),
        "records/s",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_1_replica_records_per_s",
        rate(&one),
        "records/s",
        Some(rate(&embedded)),
        None,
    );
    figure(
        "scale_out",
        "nats_3_replicas_records_per_s",
        rate(&three),
        "records/s",
        Some(rate(&one)),
        None,
    );
    // The push path: notifications answered 200 after the enqueue, one instance on each
    // store, in this run.
    let posts = env_number("WEBHOOK_BENCH_POSTS", 20_000);
    let nats_store = format!(
        "[store.nats]\nurls = [\"{}\"]\nprefix = \"ingest\"\nreplica_id = \"ingest\"\n",
        nats.url
    );
    let embedded_ingest =
        ingest(&dir.join("ingest-embedded"), &api, &socket, posts, ("", "")).await;
    let nats_ingest = ingest(
        &dir.join("ingest-nats"),
        &api,
        &socket,
        posts,
        ("backend = \"nats\"", &nats_store),
    )
    .await;
    figure(
        "scale_out",
        "embedded_webhook_items_per_s",
        embedded_ingest.posts_per_s,
        "items/s",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_webhook_items_per_s",
        nats_ingest.posts_per_s,
        "items/s",
        Some(embedded_ingest.posts_per_s),
        None,
    );
    figure(
        "scale_out",
        "embedded_webhook_p99",
        embedded_ingest.p99_ms,
        "ms",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_webhook_p99",
        nats_ingest.p99_ms,
        "ms",
        None,
        None,
    );
    for (name, run) in [
        ("embedded", &embedded),
        ("nats_1_replica", &one),
        ("nats_3_replicas", &three),
    ] {
        figure(
            "scale_out",
            &format!("{name}_cpu_s"),
            run.cpu,
            "s",
            None,
            None,
        );
        figure(
            "scale_out",
            &format!("{name}_peak_rss"),
            run.peak_rss / MIB,
            "MiB",
            None,
            None,
        );
    }
    api.shutdown().await;
}

/// One instance with `store`, loaded with `posts` single-item notifications over 64
/// connections.
async fn ingest(
    dir: &Path,
    api: &ApiEmulator,
    socket: &Path,
    posts: usize,
    store: (&str, &str),
) -> LoadRun {
    std::fs::create_dir_all(dir).unwrap();
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: true,
        poller: IDLE_POLLER,
        store,
    })
    .await;
    let auth_id = WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None).auth_id(TENANT);
    let url = format!("{}/hook/{TENANT}", connector.listen);
    let run = load(&url, &auth_id, api.base_url(), posts, 64).await;
    connector.stop();
    run
}

/// Starts `count` replicas on NATS (stream prefix of their own), waits until the engine
/// acked `total` more Logs, stops them. `startup` is until the first replica was ready,
/// `elapsed` from then on; CPU is the replicas' sum, RSS the largest.
async fn replicas_drain(
    dir: &Path,
    count: usize,
    api: &ApiEmulator,
    engine: &EngineState,
    socket: &Path,
    total: u64,
    nats_url: &str,
) -> DrainRun {
    let before = engine.acked.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut connectors = Vec::new();
    let mut first_ready = None;
    for index in 0..count {
        let replica_dir = dir.join(format!("nats-{count}-{index}"));
        std::fs::create_dir_all(&replica_dir).unwrap();
        let nats = format!(
            "[store.nats]\nurls = [\"{nats_url}\"]\nprefix = \"bench{count}\"\nreplica_id = \"r{index}\"\n"
        );
        let connector = Connector::start(ConnectorSetup {
            dir: &replica_dir,
            socket,
            api_base: api.base_url(),
            requests_per_minute: 1_000_000,
            tenants: &[TENANT.to_string()],
            webhook: false,
            poller: &eager_poller(1),
            store: ("backend = \"nats\"", &nats),
        })
        .await;
        first_ready.get_or_insert_with(Instant::now);
        connectors.push(connector);
    }
    let first_ready = first_ready.expect("at least one replica");
    wait_until(Duration::from_secs(600), "the drain", || {
        engine.acked.load(Ordering::Relaxed) >= before + total
    })
    .await;
    let run = DrainRun {
        startup: (first_ready - started).as_secs_f64(),
        elapsed: first_ready.elapsed().as_secs_f64(),
        cpu: connectors.iter().map(Connector::cpu_seconds).sum(),
        peak_rss: connectors
            .iter()
            .map(Connector::peak_rss)
            .fold(0.0, f64::max),
    };
    for connector in connectors {
        connector.stop();
    }
    run
}

// ---------------------------------------------------------------------------------------
// webhook ingest

struct LoadRun {
    posts_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn notification(base: &str, content_id: &str) -> String {
    json!([{
        "tenantId": TENANT, "clientId": CLIENT, "contentType": "Audit.General",
        "contentId": content_id,
        "contentUri": format!("{base}/api/v1.0/{TENANT}/activity/feed/audit/{content_id}"),
        "contentCreated": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "contentExpiration": (chrono::Utc::now() + chrono::Duration::days(7))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }])
    .to_string()
}

/// `posts` POSTs of one notification item each over `connections` concurrent connections.
async fn load(url: &str, auth_id: &str, base: &str, posts: usize, connections: usize) -> LoadRun {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (url, auth_id, base) = (url.to_string(), auth_id.to_string(), base.to_string());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= posts {
                        return latencies;
                    }
                    let body = notification(&base, &format!("bench-{n}"));
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json; utf-8")
                        .header("Webhook-AuthID", &auth_id)
                        .body(body)
                        .send()
                        .await
                        .expect("the server answers");
                    assert_eq!(response.status(), 200);
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(posts);
    for worker in workers {
        latencies.extend(worker.await.unwrap());
    }
    let elapsed = started.elapsed();
    LoadRun {
        posts_per_s: posts as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile_ms(&mut latencies, 0.50),
        p99_ms: percentile_ms(&mut latencies, 0.99),
    }
}

fn percentile_ms(values: &mut [Duration], p: f64) -> f64 {
    values.sort();
    values[((values.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e3
}

/// 4 KiB writes each followed by fdatasync, for one second.
fn fsyncs_per_second(dir: &Path) -> f64 {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [0u8; 4096];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn webhook_ingest(dir: &Path) {
    let posts = env_number("WEBHOOK_BENCH_POSTS", 20_000);
    let connections = 64;
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, 1));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let _engine = start_engine(&socket).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = format!("http://{}/hook/{TENANT}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook/{tenant}", axum::routing::post(|| async { "" }));
    let bare_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let limit = load(&bare, "", api.base_url(), posts, connections).await;
    bare_server.abort();

    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: true,
        poller: IDLE_POLLER,
        store: ("", ""),
    })
    .await;
    let auth_id = WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None).auth_id(TENANT);
    let url = format!("{}/hook/{TENANT}", connector.listen);
    let run = load(&url, &auth_id, api.base_url(), posts, connections).await;
    let scenario = "webhook_ingest";
    let limit_rate = Some(limit.posts_per_s);
    figure(
        scenario,
        "items_per_s",
        run.posts_per_s,
        "items/s",
        limit_rate,
        Some((0.5, "ge")),
    );
    figure(
        scenario,
        "posts_per_s",
        run.posts_per_s,
        "posts/s",
        limit_rate,
        None,
    );
    figure(
        scenario,
        "latency_p50",
        run.p50_ms,
        "ms",
        Some(limit.p50_ms),
        None,
    );
    figure(
        scenario,
        "latency_p99",
        run.p99_ms,
        "ms",
        Some(limit.p99_ms),
        None,
    );
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        None,
    );
    connector.stop();
    let fsyncs = fsyncs_per_second(dir);
    figure(
        scenario,
        "disk_fsyncs_per_s",
        fsyncs,
        "fsyncs/s",
        None,
        None,
    );
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// latency

async fn latency(dir: &Path) {
    let rate = env_number("LATENCY_RATE", 200);
    let seconds = env_number("LATENCY_SECS", 10);
    let per_blob = 100;
    let blobs = rate * seconds;
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    // Published before the connector starts; its poller lists nothing (lag of a day), so each
    // blob enters only through the notification below.
    let entries = publish(&api, blobs).await;
    let context = log_context();
    let mut blob_of_log: HashMap<String, usize> = HashMap::new();
    let index_of_uri: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| (entry.content_uri.as_str(), index))
        .collect();
    for record in api.state().publisher.published() {
        let Some(&blob) = index_of_uri.get(record.content_uri.as_str()) else {
            continue;
        };
        let record_id = record.record_id.unwrap_or_else(|| record.index.to_string());
        blob_of_log.insert(log_id(&context, &record.content_uri, &record_id), blob);
    }
    *engine.ack_times.lock().unwrap() = Some(HashMap::new());
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: true,
        poller: IDLE_POLLER,
        store: ("", ""),
    })
    .await;
    let auth_id = WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None).auth_id(TENANT);
    let url = format!("{}/hook/{TENANT}", connector.listen);
    let client = reqwest::Client::new();
    let mut sent_at = vec![Instant::now(); blobs];
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for (index, entry) in entries.iter().enumerate() {
        ticker.tick().await;
        let mut item = serde_json::to_value(entry).unwrap();
        item["tenantId"] = json!(TENANT);
        item["clientId"] = json!(CLIENT);
        let body = json!([item]).to_string();
        sent_at[index] = Instant::now();
        let request = client
            .post(&url)
            .header("Content-Type", "application/json; utf-8")
            .header("Webhook-AuthID", &auth_id)
            .body(body);
        requests.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), 200);
    }
    let total = (blobs * per_blob) as u64;
    wait_until(Duration::from_secs(120), "every record acked", || {
        engine.acked.load(Ordering::Relaxed) >= total
    })
    .await;
    let times = engine.ack_times.lock().unwrap().take().unwrap();
    let mut last_ack: Vec<Option<Instant>> = vec![None; blobs];
    for (id, at) in &times {
        if let Some(&blob) = blob_of_log.get(id) {
            last_ack[blob] = Some(last_ack[blob].map_or(*at, |seen: Instant| seen.max(*at)));
        }
    }
    let mut latencies: Vec<Duration> = last_ack
        .iter()
        .zip(&sent_at)
        .filter_map(|(acked, sent)| acked.map(|acked| acked.duration_since(*sent)))
        .collect();
    assert_eq!(latencies.len(), blobs, "every blob's records acked");
    figure(
        "latency",
        "p50",
        percentile_ms(&mut latencies, 0.50),
        "ms",
        None,
        None,
    );
    figure(
        "latency",
        "p99",
        percentile_ms(&mut latencies, 0.99),
        "ms",
        None,
        Some((25.0, "le")),
    );
    figure(
        "latency",
        "notifications_per_s",
        rate as f64,
        "notifications/s",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// big blob

async fn big_blob(dir: &Path) {
    let target_bytes = env_number("BIG_BLOB_MIB", 256) as u64 * 1024 * 1024;
    let records = records_file(dir);
    let text = std::fs::read_to_string(&records).unwrap();
    let average = text.len() as u64 / text.lines().count() as u64;
    let per_blob = (target_bytes / average) as usize;
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    let entries = publish(&api, 1).await;
    let http = reqwest::Client::new();
    let token = bearer(&http, api.base_url()).await;
    let size = http
        .get(&entries[0].content_uri)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let started = Instant::now();
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(1),
        store: ("", ""),
    })
    .await;
    wait_until(Duration::from_secs(600), "the big blob", || {
        engine.acked.load(Ordering::Relaxed) >= per_blob as u64
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let scenario = "big_blob";
    figure(scenario, "blob_size", size as f64 / MIB, "MiB", None, None);
    figure(scenario, "records", per_blob as f64, "records", None, None);
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        Some((64.0, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    connector.stop();
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// huge records

/// Records of 3.9 MiB each, just under the engine's 4 MiB message limit, 10 per blob:
/// the forwarder's window, the workers' buffers and the queues between them are bounded
/// in bytes, so the connector's peak RSS stays under 256 MiB (issue "Delivery never
/// stalls", point 5). `HUGE_RECORDS` sets how many (default 200).
async fn huge_records(dir: &Path) {
    use std::io::Write as _;
    let count = env_number("HUGE_RECORDS", 200);
    let payload = "p".repeat((3.9 * MIB) as usize - 100);
    let records = dir.join("huge.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&records).unwrap());
    for n in 0..count {
        writeln!(
            file,
            r#"{{"CreationTime":"2026-01-02T03:04:05","Id":"huge-{n}","Operation":"MipLabel","Payload":"{payload}"}}"#
        )
        .unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let per_blob = 10;
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    publish(&api, count.div_ceil(per_blob)).await;
    let started = Instant::now();
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(1),
        store: ("", ""),
    })
    .await;
    wait_until(Duration::from_secs(600), "every huge record", || {
        engine.acked.load(Ordering::Relaxed) >= count as u64
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let scenario = "huge_records";
    figure(scenario, "records", count as f64, "records", None, None);
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        Some((256.0, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    connector.stop();
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// many tenants

fn tenant_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            if n == 0 {
                TENANT.to_string()
            } else {
                format!("00000000-0000-4000-8000-{n:012}")
            }
        })
        .collect()
}

fn listings(api: &ApiEmulator) -> usize {
    api.state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint.contains("subscriptions/content"))
        .count()
}

async fn many_tenants(dir: &Path) {
    let count = env_number("MANY_TENANTS", 1000);
    let interval = 10u64;
    let records = records_file(dir);
    let tenants = tenant_ids(count);
    let scenario = Scenario {
        tenants: tenants
            .iter()
            .map(|id| tenant_scenario(id, &records, 10))
            .collect(),
        ..Scenario::single_tenant(tenant_scenario(TENANT, &records, 10))
    };
    let mut scenario = scenario;
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let _engine = start_engine(&socket).await;
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 2000,
        tenants: &tenants,
        webhook: false,
        poller: &eager_poller(interval),
        store: ("", ""),
    })
    .await;
    // Past the start-up (tokens, subscriptions, first listings): every tenant listed once.
    wait_until(Duration::from_secs(180), "every tenant polled", || {
        listings(&api) >= count
    })
    .await;
    let (cpu_before, listed_before) = (connector.cpu_seconds(), listings(&api));
    let window = Duration::from_secs(3 * interval);
    tokio::time::sleep(window).await;
    let (cpu, listed) = (
        connector.cpu_seconds() - cpu_before,
        listings(&api) - listed_before,
    );
    let rounds = listed as f64 / count as f64;
    let scenario = "many_tenants";
    figure(scenario, "tenants", count as f64, "tenants", None, None);
    figure(
        scenario,
        "rss",
        connector.rss() / MIB,
        "MiB",
        None,
        Some((128.0, "le")),
    );
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        None,
    );
    figure(
        scenario,
        "listings_per_s",
        listed as f64 / window.as_secs_f64(),
        "requests/s",
        None,
        None,
    );
    figure(
        scenario,
        "cpu_ms_per_poll_cycle",
        cpu * 1e3 / rounds.max(1e-9),
        "ms",
        None,
        None,
    );
    figure(
        scenario,
        "cpu_share",
        cpu / window.as_secs_f64(),
        "cores",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// quota

/// Throttled answers (AF429, as 403 or 429) the emulator gave so far.
fn af429(api: &ApiEmulator) -> u64 {
    let inspection = api.state().inspection();
    inspection
        .rejections
        .by_code
        .get("AF429")
        .copied()
        .unwrap_or(0)
}

async fn quota(dir: &Path) {
    // 2,000 requests per minute per tenant, compressed 10×: 200 per 6 s window.
    let compression = 10.0;
    let per_window = 200u32;
    let window_secs = 60.0 / compression;
    let blobs = env_number("QUOTA_BLOBS", 1000);
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, 10));
    scenario.throttle.requests_per_window = per_window;
    scenario.throttle.window_secs = window_secs;
    // HTTP 429 with Retry-After (the time left in the compressed window): the connector's
    // own pause after an AF429 without Retry-After (30 s) is not compressed.
    scenario.throttle.response = ThrottleResponse::Http429;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    publish(&api, blobs).await;
    // The poller's listing windows end on a whole second: start once the blobs' second is
    // over, so the first poll finds the backlog instead of the one a minute later.
    let into_second = chrono::Utc::now().timestamp_subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1020 - into_second.min(1000))).await;
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        // The same rate as the emulator's compressed window: 200 per 6 s is 2,000 a minute.
        requests_per_minute: 2000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(60),
        store: ("", ""),
    })
    .await;
    let started = Instant::now();
    let start_index = api.state().inspection().requests.len();
    let throttled_before = af429(&api);
    // Bounded: a drain stalled by throttling is reported (records_acked_share), not waited out.
    let total = (blobs * 10) as u64;
    let deadline = Duration::from_secs(90);
    let (mut seen, mut last_progress) = (0, Duration::ZERO);
    while seen < total && started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let acked = engine.acked.load(Ordering::Relaxed);
        if acked > seen {
            if std::env::var_os("QUOTA_TRACE").is_some() && acked / 1000 != seen / 1000 {
                eprintln!("{:.1}s acked {acked}", started.elapsed().as_secs_f64());
            }
            (seen, last_progress) = (acked, started.elapsed());
        }
    }
    let acked_share = engine.acked.load(Ordering::Relaxed) as f64 / total as f64;
    let elapsed = started.elapsed().as_secs_f64();
    let requests = {
        let inspection = api.state().inspection();
        let api_requests: Vec<_> = inspection.requests[start_index..]
            .iter()
            .filter(|request| request.endpoint.contains("activity"))
            .collect();
        api_requests.len() as f64
    };
    if std::env::var_os("QUOTA_TRACE").is_some() {
        let inspection = api.state().inspection();
        let first = inspection.requests[start_index].time;
        let mut per_second: std::collections::BTreeMap<i64, (u32, u32)> = Default::default();
        for request in &inspection.requests[start_index..] {
            let slot = per_second
                .entry((request.time - first).num_seconds())
                .or_default();
            slot.0 += 1;
            if request.status == 429 {
                slot.1 += 1;
            }
        }
        eprintln!("quota trace (second: requests, throttled): {per_second:?}");
    }
    let throttled = (af429(&api) - throttled_before) as f64;
    let served = requests - throttled;
    let quota = per_window as f64 * elapsed / window_secs;
    let scenario = "quota";
    figure(
        scenario,
        "quota_used",
        served / quota,
        "share",
        None,
        Some((0.9, "ge")),
    );
    figure(scenario, "requests_served", served, "requests", None, None);
    figure(scenario, "throttled", throttled, "responses", None, None);
    let share = throttled / requests.max(1.0);
    figure(
        scenario,
        "throttled_share",
        share,
        "share",
        None,
        Some((0.01, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    let active_quota = per_window as f64 * last_progress.as_secs_f64() / window_secs;
    figure(
        scenario,
        "quota_used_until_last_ack",
        served / active_quota,
        "share",
        None,
        None,
    );
    figure(
        scenario,
        "last_ack_s",
        last_progress.as_secs_f64(),
        "s",
        None,
        None,
    );
    figure(
        scenario,
        "records_acked_share",
        acked_share,
        "share",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

// ---------------------------------------------------------------------------------------

fn main() {
    let chosen = std::env::var("BENCH_SCENARIO").unwrap_or_default();
    let wanted = |name: &str| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let filesystem = Command::new("df")
        .args(["-T", env!("CARGO_TARGET_TMPDIR")])
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| {
            text.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_else(|| "unknown".into());
    eprintln!("store filesystem: {filesystem}");
    type Run = fn(&Path) -> Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
    let scenarios: [(&str, Run); 8] = [
        ("drain", |dir| Box::pin(drain(dir))),
        ("webhook_ingest", |dir| Box::pin(webhook_ingest(dir))),
        ("latency", |dir| Box::pin(latency(dir))),
        ("big_blob", |dir| Box::pin(big_blob(dir))),
        ("huge_records", |dir| Box::pin(huge_records(dir))),
        ("many_tenants", |dir| Box::pin(many_tenants(dir))),
        ("quota", |dir| Box::pin(quota(dir))),
        ("scale_out", |dir| Box::pin(scale_out(dir))),
    ];
    for (name, run) in scenarios {
        if wanted(name) {
            // Kept when the scenario fails, for its connector.log.
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap()
                .keep();
            eprintln!("scenario {name}: {}", dir.display());
            runtime.block_on(run(&dir));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

//! Drain: N blobs × M fixture records already queued, through lease → fetch → split →
//! forward → ack → complete, against the API emulator (plain HTTP on loopback) and the
//! engine emulator (Unix socket), all in this process. The limit, measured in the same
//! run: the same blobs fetched by a bare reqwest loop (same concurrency as the workers)
//! and the same Logs pushed by a bare tonic client on one stream, with no connector logic;
//! the limit's time is the sum of the two. One JSON line per figure.
//!
//! Run: `cargo bench --bench drain` (release). `DRAIN_BLOBS` (default 2000) and
//! `DRAIN_RECORDS` (default 100) set the size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use o365_connector::clock::Clock;
use o365_connector::config::{Config, TimestampSource};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use o365_connector::forward::log::{LogContext, build_log};
use o365_connector::proto::{EngineClient, Log, unix_channel};
use o365_connector::queue::{ContentRef, Source};
use o365_connector::service::{self, ServiceOptions};
use serde_json::json;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "bench-secret";
const WORKERS: usize = 4;

fn workers() -> usize {
    env_number("DRAIN_WORKERS", WORKERS)
}

fn figure(metric: &str, value: f64, unit: &str, limit: Option<f64>) {
    let ratio = limit.map(|limit| value / limit);
    println!(
        "{}",
        json!({"scenario": "drain", "metric": metric, "value": value, "unit": unit,
               "limit": limit, "ratio": ratio, "target": null, "op": null, "met": null})
    );
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn records_file(dir: &std::path::Path) -> std::path::PathBuf {
    let events = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut lines = String::new();
    let mut files: Vec<_> = std::fs::read_dir(events)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    for file in files
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
    {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            // Valid records only: the drain measures throughput, not dead-lettering.
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

fn main() {
    let blobs = env_number("DRAIN_BLOBS", 2000);
    let per_blob = env_number("DRAIN_RECORDS", 100);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    runtime.block_on(async {
        let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
        tenant.publication.records = Some(records_file(dir.path()));
        tenant.publication.records_per_blob = per_blob;
        tenant.faults = FaultScenario {
            webhook_delivery_off: true,
            ..FaultScenario::default()
        };
        let mut scenario = Scenario::single_tenant(tenant);
        scenario.throttle.requests_per_window = 0;
        let api = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario,
            tls: None,
            webhook_ca: None,
            clock: Clock::system(),
        })
        .await
        .unwrap();
        let socket = dir.path().join("engine.sock");
        let mut engine_config = EngineEmulatorConfig::in_memory(&socket);
        engine_config.keep_in_memory = false;
        let engine = EngineEmulator::start(engine_config).await.unwrap();
        let config = Config::from_toml_with_env(
            &format!(
                r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[engine]
socket = "{socket}"
[api]
login_url = "{base}"
api_url = "{base}"
requests_per_minute = 600000
[workers]
count = {workers}
[[tenants]]
name = "bench"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = {{ env = "BENCH_SECRET" }}
content_types = ["Audit.General"]
"#,
                store = dir.path().join("store").display(),
                socket = socket.display(),
                base = api.base_url(),
                workers = workers(),
            ),
            [("BENCH_SECRET".to_string(), SECRET.to_string())],
        )
        .unwrap();
        // Subscribe and publish before the connector exists, then queue every blob.
        let http = reqwest::Client::new();
        let token = bearer(&http, api.base_url()).await;
        http.post(format!(
            "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/start?contentType=Audit.General",
            api.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
        let entries = publish::publish_now(api.state(), TENANT, "Audit.General", blobs).await;
        let limit = measure_limit(&http, &token, &entries, &socket).await;

        let service = service::start(config, ServiceOptions::default())
            .await
            .unwrap();
        let refs = entries
            .iter()
            .map(|entry| ContentRef {
                tenant_id: TENANT.into(),
                content_type: "Audit.General".into(),
                content_id: entry.content_id.clone(),
                content_uri: entry.content_uri.clone(),
                content_created: entry.content_created,
                content_expiration: entry.content_expiration,
                source: Source::Poll,
            })
            .collect::<Vec<_>>();
        let records = (blobs * per_blob) as u64;
        let acked_before = engine.counts().logs_acked;
        let started = Instant::now();
        for chunk in refs.chunks(500) {
            service.queue.enqueue(chunk.to_vec()).await.unwrap();
        }
        engine
            .wait_for(Duration::from_secs(1800), |counts| {
                counts.logs_acked >= acked_before + records
            })
            .await
            .unwrap();
        let elapsed = started.elapsed();
        let records_per_s = records as f64 / elapsed.as_secs_f64();
        let megabytes = limit.body_bytes as f64 / 1e6;
        figure(
            "records_per_s",
            records_per_s,
            "records/s",
            Some(records as f64 / limit.elapsed.as_secs_f64()),
        );
        figure(
            "mb_per_s",
            megabytes / elapsed.as_secs_f64(),
            "MB/s",
            Some(megabytes / limit.elapsed.as_secs_f64()),
        );
        figure("bare_fetch_s", limit.fetch.as_secs_f64(), "s", None);
        figure("bare_push_s", limit.push.as_secs_f64(), "s", None);
        service.stop().await;
        engine.shutdown().await;
        api.shutdown().await;
    });
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

struct Limit {
    fetch: Duration,
    push: Duration,
    elapsed: Duration,
    body_bytes: u64,
}

/// The same blobs fetched by bare reqwest (WORKERS at a time), and their records pushed as
/// Logs by a bare tonic client on one stream.
async fn measure_limit(
    http: &reqwest::Client,
    token: &str,
    entries: &[o365_connector::emulator::api::feed::ContentEntry],
    socket: &std::path::Path,
) -> Limit {
    let started = Instant::now();
    let uris: Arc<Vec<String>> = Arc::new(
        entries
            .iter()
            .map(|entry| entry.content_uri.clone())
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (http, token, uris, next) =
                (http.clone(), token.to_string(), uris.clone(), next.clone());
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(uri) = uris.get(index) else {
                        return bodies;
                    };
                    let body = http
                        .get(uri)
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap()
                        .bytes()
                        .await
                        .unwrap();
                    bodies.push((uri.clone(), body));
                }
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.extend(task.await.unwrap());
    }
    let fetch = started.elapsed();
    let body_bytes = bodies.iter().map(|(_, body)| body.len() as u64).sum();
    let context = LogContext {
        utm_tenant_id: "bench".into(),
        group_name: "bench".into(),
        timestamp: TimestampSource::Event,
    };
    let mut logs: Vec<Log> = Vec::new();
    for (uri, body) in &bodies {
        let records: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).unwrap();
        for (index, record) in records.iter().enumerate() {
            logs.push(build_log(
                &context,
                record.get().as_bytes(),
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
    let mut acked = 0;
    while acked < count {
        acks.message().await.unwrap().expect("an ack per log");
        acked += 1;
    }
    let push = push_started.elapsed();
    Limit {
        fetch,
        push,
        elapsed: fetch + push,
        body_bytes,
    }
}

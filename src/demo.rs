//! `o365-connector demo`: the whole pipeline on one machine, with nothing to configure.
//!
//! Starts the Management API emulator over TLS (development certificates from `certs dev`)
//! publishing the real audit records of the project's fixtures (embedded in the binary),
//! the engine emulator (or uses an existing engine with `--engine-socket`), and the
//! connector wired to both and subscribed with its webhook. Records arriving are shown on
//! stderr. After `--seconds` publication stops, the connector drains what was published
//! within a deadline, and one summary line is printed last on stdout:
//!
//! `published=N forwarded=N lost=N duplicates=N invalid=N`
//!
//! counted by the emulator's ground truth (tenant, contentId, index): `published` = every
//! record published; `invalid` = published records that are not valid JSON objects;
//! `forwarded` = distinct published records the engine acknowledged as the connector saw
//! the acks (its durable queue: a record is forwarded when its blob is done and the record
//! was not dead-lettered, or when it lies within the acked prefix of its blob);
//! `duplicates` = acknowledgements beyond the first; `lost` = published − invalid −
//! forwarded. Success (exit 0) only when `lost` is 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::clock::Clock;
use crate::config::Config;
use crate::emulator::api::publish::{self, PublishedRecord};
use crate::emulator::api::scenario::{
    CONTENT_TYPES, FaultScenario, Scenario, TenantScenario, ThrottleResponse,
};
use crate::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use crate::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use crate::queue::{ContentKey, ItemState};
use crate::server::dev_certs::write_dev_certs;
use crate::service::{self, RunningService, ServiceOptions};

/// The fixture records, embedded so the demo needs no files (one record per line).
const FIXTURE_RECORDS: &[&str] = &[
    include_str!("../tests/fixtures/events/04-sharepoint.ndjson"),
    include_str!("../tests/fixtures/events/08-azuread.first-record.ndjson"),
    include_str!("../tests/fixtures/events/11-dlp-sharepoint.ndjson"),
    include_str!("../tests/fixtures/events/13-dlp-exchange.ndjson"),
    include_str!("../tests/fixtures/events/15-azuread-sts-logon.first-2-records.ndjson"),
    include_str!("../tests/fixtures/events/22-yammer.ndjson"),
    include_str!("../tests/fixtures/events/25-ms-teams.ndjson"),
    include_str!("../tests/fixtures/events/40-sec-comp-alerts.ndjson"),
    include_str!("../tests/fixtures/events/52-data-insights-api.ndjson"),
    include_str!("../tests/fixtures/events/ai-interaction-events.ndjson"),
    include_str!("../tests/fixtures/events/exchange-item-edge-cases.ndjson"),
    include_str!("../tests/fixtures/events/invalid-json-record.ndjson"),
    include_str!("../tests/fixtures/events/ip-formats.ndjson"),
    include_str!("../tests/fixtures/events/str-params.ndjson"),
    include_str!("../tests/fixtures/events/stringly-json.ndjson"),
    include_str!("../tests/fixtures/events/wazuh-office365-synthetic.ndjson"),
];

const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "demo-client-secret";

/// The GUID of demo tenant `index`.
fn tenant_id(index: usize) -> String {
    format!("41463f53-8812-40f4-890f-{index:012x}")
}

/// `demo` settings.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long records are published.
    pub seconds: u64,
    /// Forward to this existing engine instead of starting the emulator.
    pub engine_socket: Option<PathBuf>,
    /// Where the development certificates are (created when missing).
    pub certs_dir: PathBuf,
    /// Longest wait for the drain after publication stops.
    pub drain_deadline: Duration,
    /// Register the webhook (`false`: collection by polling alone).
    pub webhook: bool,
    /// Number of emulated tenants.
    pub tenants: usize,
    /// Inject the emulator's faults: 5xx, truncated bodies, throttling, duplicate
    /// notifications.
    pub faults: bool,
}

/// The demo's counts, printed as its summary line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemoSummary {
    /// Records published.
    pub published: u64,
    /// Distinct published records acknowledged by the engine.
    pub forwarded: u64,
    /// published − invalid − forwarded.
    pub lost: u64,
    /// Acknowledgements beyond the first.
    pub duplicates: u64,
    /// Published records that are not valid JSON objects.
    pub invalid: u64,
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "published={} forwarded={} lost={} duplicates={} invalid={}",
            self.published, self.forwarded, self.lost, self.duplicates, self.invalid
        )
    }
}

/// Runs the demo; returns its summary (the caller prints it and sets the exit status).
pub async fn run(options: DemoOptions) -> anyhow::Result<DemoSummary> {
    let work = tempfile::tempdir().context("cannot create the demo's working directory")?;
    let (certs, _) = write_dev_certs(&options.certs_dir, false)?;
    let records_file = work.path().join("records.ndjson");
    std::fs::write(&records_file, fixture_records())?;
    let tenants: Vec<String> = (0..options.tenants.max(1)).map(tenant_id).collect();
    let mut scenario =
        Scenario::single_tenant(TenantScenario::with_secret(&tenants[0], CLIENT, SECRET));
    scenario.tenants = tenants
        .iter()
        .map(|tenant| demo_tenant(tenant, &records_file, options.faults))
        .collect();
    if options.faults {
        scenario.throttle.requests_per_window = 40;
        scenario.throttle.window_secs = 1.0;
        scenario.throttle.response = ThrottleResponse::Http429;
    }
    let api = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().expect("a valid address"),
        scenario,
        tls: Some(TlsFiles {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
        }),
        webhook_ca: Some(certs.ca.clone()),
        clock: Clock::system(),
    })
    .await?;
    let (engine, engine_socket) = match &options.engine_socket {
        Some(socket) => (None, socket.clone()),
        None => {
            let socket = work.path().join("engine.sock");
            let engine = EngineEmulator::start(EngineEmulatorConfig::in_memory(&socket)).await?;
            (Some(engine), socket)
        }
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let config = demo_config(
        port,
        &certs,
        &work,
        &engine_socket,
        api.base_url(),
        &tenants,
        options.webhook,
    )?;
    let service = service::start(
        config,
        ServiceOptions {
            listener: Some(listener),
            ..ServiceOptions::default()
        },
    )
    .await?;
    eprintln!(
        "demo: connector listening on {}; waiting for the subscriptions",
        service.base_url
    );
    wait_for_subscriptions(&api, &tenants, options.webhook).await?;
    publish_for(
        &api,
        &service,
        &tenants,
        Duration::from_secs(options.seconds),
    )
    .await;
    let published = api.state().publisher.published();
    let summary = drain(&published, &api, &service, options.drain_deadline).await?;
    service.stop().await;
    api.shutdown().await;
    if let Some(engine) = engine {
        engine.shutdown().await;
    }
    Ok(summary)
}

fn demo_tenant(tenant: &str, records: &std::path::Path, faults: bool) -> TenantScenario {
    let mut scenario = TenantScenario::with_secret(tenant, CLIENT, SECRET);
    scenario.publication.records = Some(records.to_path_buf());
    scenario.publication.records_per_blob = 10;
    if faults {
        scenario.faults = FaultScenario {
            server_error_rate: 0.1,
            truncate_rate: 0.05,
            duplicate_notifications: true,
            ..FaultScenario::default()
        };
    }
    scenario
}

fn fixture_records() -> String {
    let mut all = String::new();
    for file in FIXTURE_RECORDS {
        for line in file
            .lines()
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| !line.is_empty())
        {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

fn demo_config(
    port: u16,
    certs: &crate::server::dev_certs::DevCertPaths,
    work: &tempfile::TempDir,
    engine_socket: &std::path::Path,
    api_base: &str,
    tenants: &[String],
    webhook: bool,
) -> anyhow::Result<Config> {
    let public_url = if webhook {
        format!("public_url = \"https://localhost:{port}/hook\"")
    } else {
        String::new()
    };
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
{public_url}
tls_cert = "{cert}"
tls_key = "{key}"

[store]
path = "{store}"

[engine]
socket = "{socket}"

[api]
login_url = "{api_base}"
api_url = "{api_base}"
ca_file = "{ca}"
publisher_id = "{publisher}"

[poller]
# The demo is short: list every second, up to now.
poll_interval_secs = 1
lag_secs = 0
"#,
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
        store = work.path().join("store").display(),
        socket = engine_socket.display(),
        ca = certs.ca.display(),
        publisher = tenants[0],
    );
    for (index, tenant) in tenants.iter().enumerate() {
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"demo-{index}\"\ntenant_id = \"{tenant}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ env = \"DEMO_SECRET\" }}\n"
        ));
    }
    Ok(Config::from_toml_with_env(
        &text,
        [("DEMO_SECRET".to_string(), SECRET.to_string())],
    )?)
}

async fn wait_for_subscriptions(
    api: &ApiEmulator,
    tenants: &[String],
    webhook: bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let subscribed = |tenant: &str, content_type: &str| {
        if webhook {
            api.state()
                .feed
                .active_webhook(tenant, content_type)
                .is_some()
        } else {
            api.state()
                .feed
                .enabled_subscriptions()
                .iter()
                .any(|(t, ct)| t.eq_ignore_ascii_case(tenant) && ct == content_type)
        }
    };
    while !tenants
        .iter()
        .all(|tenant| CONTENT_TYPES.iter().all(|ct| subscribed(tenant, ct)))
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the connector did not subscribe within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Publishes one blob per content type every half second, showing progress.
async fn publish_for(
    api: &ApiEmulator,
    service: &RunningService,
    tenants: &[String],
    duration: Duration,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_report = Instant::now();
    while started.elapsed() < duration {
        tick.tick().await;
        for tenant in tenants {
            for content_type in CONTENT_TYPES {
                publish::publish_now(api.state(), tenant, content_type, 1).await;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!(
                "demo: published {} records, engine acknowledged {}",
                api.state().publisher.published().len(),
                service.forwarder.stats().logs_acked
            );
        }
    }
}

/// Waits until every published record is accounted for (or the deadline) and counts.
async fn drain(
    published: &[PublishedRecord],
    api: &ApiEmulator,
    service: &RunningService,
    deadline: Duration,
) -> anyhow::Result<DemoSummary> {
    let invalid_shas = invalid_record_shas();
    let invalid = published
        .iter()
        .filter(|record| invalid_shas.contains(&record.sha256))
        .count() as u64;
    let started = Instant::now();
    loop {
        let forwarded = count_forwarded(published, &service.queue, &invalid_shas).await?;
        let published_count = published.len() as u64;
        let done = forwarded + invalid >= published_count;
        if done || started.elapsed() >= deadline {
            let acked = service.forwarder.stats().logs_acked;
            eprintln!("demo: drained in {:.1} s", started.elapsed().as_secs_f64());
            let _ = api;
            return Ok(DemoSummary {
                published: published_count,
                forwarded,
                lost: published_count.saturating_sub(invalid + forwarded),
                duplicates: acked.saturating_sub(forwarded),
                invalid,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn invalid_record_shas() -> std::collections::HashSet<String> {
    use sha2::{Digest, Sha256};
    fixture_records()
        .lines()
        .filter(|line| {
            !serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| value.is_object())
        })
        .map(|line| hex::encode(Sha256::digest(line.as_bytes())))
        .collect()
}

/// Published records the connector's queue shows as acknowledged.
async fn count_forwarded(
    published: &[PublishedRecord],
    queue: &Arc<dyn crate::queue::QueueStore>,
    invalid_shas: &std::collections::HashSet<String>,
) -> anyhow::Result<u64> {
    let mut forwarded = 0;
    let mut items = std::collections::HashMap::new();
    for record in published {
        if invalid_shas.contains(&record.sha256) {
            continue;
        }
        if !items.contains_key(&record.content_id) {
            let item = queue
                .get(&ContentKey::new(
                    record.tenant_id.to_ascii_lowercase(),
                    &record.content_id,
                ))
                .await?;
            items.insert(record.content_id.clone(), item);
        }
        let Some(item) = &items[&record.content_id] else {
            continue;
        };
        let settled = matches!(item.state, ItemState::Done { .. })
            || (record.index as u64) < item.acked_records;
        if settled {
            forwarded += 1;
        }
    }
    Ok(forwarded)
}

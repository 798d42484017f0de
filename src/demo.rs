//! `o365-connector demo`: the whole pipeline on one machine, with nothing to configure.
//!
//! Starts the Management API emulator over TLS (development certificates from `certs dev`)
//! publishing the real audit records of the project's fixtures (embedded in the binary),
//! the engine emulator (or uses an existing engine with `--engine-socket`), and the
//! connector wired to both and subscribed with its webhook. Records arriving are shown on
//! stderr. After `--seconds` publication stops and the connector drains what was published.
//! The drain stops when every record is accounted for (forwarded, or given up), after
//! [`DemoOptions::drain_stall`] without progress, or at [`DemoOptions::drain_cap`]; then
//! the blobs with records not forwarded are listed on stderr (their queue item's state and
//! what the engine emulator received of them), and one summary line is printed last on
//! stdout:
//!
//! `published=N forwarded=N lost=N duplicates=N invalid=N pending=N`
//!
//! counted by the emulator's ground truth (tenant, contentId, index) against the
//! connector's durable queue: `published` = every record published; `invalid` = published
//! records that are not valid JSON objects; `forwarded` = distinct valid records the engine
//! acknowledged as the connector saw the acks (the record lies within the acked prefix of
//! its blob, or its blob is done, and it was not dead-lettered); `pending` = valid records
//! still queued (their item pending or leased, the record not acked yet); `lost` = every
//! other valid record, given up for any reason but invalid JSON (item dead, record
//! dead-lettered, blob never queued); `duplicates` = acknowledgements beyond the first.
//! A pending record is never called lost. Success (exit 0) only when `lost` and `pending`
//! are both 0 ([`DemoSummary::succeeded`]).
//!
//! Every tenant also collects its Entra ID risk detections from the emulator's Graph
//! endpoint (20 at start, one more with each round of blobs; with `--faults`, Graph answers
//! 5 % of requests 429 and 5 % 503). They count with the records: `published` includes
//! every detection published, `forwarded` those covered by their tenant's stored watermark
//! (what the engine acknowledged) and not given up, `pending` those beyond it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::clock::Clock;
use crate::config::Config;
use crate::emulator::api::publish::{self, PublishedRecord};
use crate::emulator::api::scenario::{
    CONTENT_TYPES, FaultScenario, GraphFaultScenario, Scenario, TenantScenario, ThrottleResponse,
};
use crate::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use crate::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use crate::forward::log_id;
use crate::queue::{ContentKey, ItemState, QueueItem, QueueStore};
use crate::retry::RetryPolicy;
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

/// Backoff of retried content items in the demo: the standard policy's shape on the demo's
/// compressed time scale (it also polls every second and throttles per second). With the
/// standard 1 s doubling to 5 minutes, a blob that meets the injected faults (about one
/// request in six fails) six or seven times in a row waits one to four minutes, longer
/// than the drain waits without progress.
const DEMO_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
    max_attempts: None,
    jitter: true,
};

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
    /// How long the drain after publication waits without progress (no record newly
    /// forwarded, given up or queued) before it stops and counts. The command uses 60 s.
    pub drain_stall: Duration,
    /// Longest drain in any case. The command uses 10 minutes.
    pub drain_cap: Duration,
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
    /// Records given up for any reason but invalid JSON (dead items, dead-lettered
    /// records, blobs never queued): published − invalid − forwarded − pending.
    pub lost: u64,
    /// Acknowledgements beyond the first.
    pub duplicates: u64,
    /// Published records that are not valid JSON objects.
    pub invalid: u64,
    /// Records still queued when the drain ended (their item pending or leased, the record
    /// not acknowledged yet).
    pub pending: u64,
}

impl DemoSummary {
    /// The demo succeeded: nothing lost and nothing left queued.
    pub fn succeeded(&self) -> bool {
        self.lost == 0 && self.pending == 0
    }
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "published={} forwarded={} lost={} duplicates={} invalid={} pending={}",
            self.published, self.forwarded, self.lost, self.duplicates, self.invalid, self.pending
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
            retry: DEMO_RETRY,
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
    let limits = DrainLimits {
        stall: options.drain_stall,
        cap: options.drain_cap,
    };
    let summary = drain(
        &published,
        &api,
        &tenants,
        &service,
        engine.as_ref(),
        limits,
    )
    .await?;
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
    scenario.risk_detections.initial = INITIAL_DETECTIONS;
    scenario.risk_detections.initial_spread_hours = 6;
    if faults {
        scenario.faults = FaultScenario {
            server_error_rate: 0.1,
            truncate_rate: 0.05,
            duplicate_notifications: true,
            graph_throttle: Some(GraphFaultScenario {
                rate: 0.05,
                ..GraphFaultScenario::default()
            }),
            graph_unavailable: Some(GraphFaultScenario {
                rate: 0.05,
                ..GraphFaultScenario::default()
            }),
            ..FaultScenario::default()
        };
    }
    scenario
}

/// Risk detections each tenant has when the demo starts (over the last 6 hours); one more
/// per tenant is published with each round of blobs.
const INITIAL_DETECTIONS: usize = 20;

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
graph_url = "{api_base}"
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
            "\n[[tenants]]\nname = \"demo-{index}\"\ntenant_id = \"{tenant}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ env = \"DEMO_SECRET\" }}\nrisk_detections = true\n"
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

/// When the drain stops: after `stall` without progress, or after `cap` in any case.
#[derive(Clone, Copy, Debug)]
struct DrainLimits {
    stall: Duration,
    cap: Duration,
}

/// How often the drain counts the records.
const DRAIN_CHECK_INTERVAL: Duration = Duration::from_millis(500);

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
            api.state().graph.publish(tenant, 1);
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

/// Waits until every published record is accounted for, or until the drain stalls or hits
/// its cap, then counts.
async fn drain(
    published: &[PublishedRecord],
    api: &ApiEmulator,
    tenants: &[String],
    service: &RunningService,
    engine: Option<&EngineEmulator>,
    limits: DrainLimits,
) -> anyhow::Result<DemoSummary> {
    let detections = api.state().graph.risk_detections(None);
    let invalid_shas = invalid_record_shas();
    let invalid = published
        .iter()
        .filter(|record| invalid_shas.contains(&record.sha256))
        .count() as u64;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_report = Instant::now();
    let mut last_counts = None;
    let (tally, risk) = loop {
        let tally = tally_records(published, service.queue.as_ref(), &invalid_shas).await?;
        let risk = tally_detections(&detections, tenants, service).await?;
        let counts = (
            tally.forwarded,
            tally.given_up,
            tally.absent,
            risk.settled(),
        );
        if last_counts != Some(counts) {
            last_counts = Some(counts);
            last_progress = Instant::now();
        }
        let accounted = tally.pending == 0 && tally.absent == 0 && risk.pending == 0;
        let stalled = last_progress.elapsed() >= limits.stall;
        if accounted || stalled || started.elapsed() >= limits.cap {
            let why = if accounted {
                "every record accounted for"
            } else if stalled {
                "no progress"
            } else {
                "the drain's cap"
            };
            eprintln!(
                "demo: drain ended after {:.1} s: {why}",
                started.elapsed().as_secs_f64()
            );
            break (tally, risk);
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "demo: draining: forwarded {}, pending {}, not yet queued {}; risk detections forwarded {}, pending {}",
                tally.forwarded, tally.pending, tally.absent, risk.forwarded, risk.pending
            );
        }
        tokio::time::sleep(DRAIN_CHECK_INTERVAL).await;
    };
    report_unsettled(&tally.unsettled, service, engine);
    if risk.pending > 0 {
        eprintln!(
            "demo: {} risk detection(s) not forwarded (beyond their tenant's watermark)",
            risk.pending
        );
    }
    let published_count = published.len() as u64 + detections.len() as u64;
    let forwarded = tally.forwarded + risk.forwarded;
    let pending = tally.pending + risk.pending;
    let acked = service.forwarder.stats().logs_acked;
    Ok(DemoSummary {
        published: published_count,
        forwarded,
        lost: published_count.saturating_sub(invalid + forwarded + pending),
        duplicates: acked.saturating_sub(forwarded),
        invalid,
        pending,
    })
}

/// Where the published risk detections stand, by each tenant's stored watermark (the
/// connector's durable view of what the engine acknowledged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct DetectionTally {
    /// Covered by the watermark and not counted lost.
    forwarded: u64,
    /// Covered by the watermark but given up (oversized, refused by the engine).
    lost: u64,
    /// Not covered yet.
    pending: u64,
}

impl DetectionTally {
    fn settled(&self) -> u64 {
        self.forwarded + self.lost
    }
}

async fn tally_detections(
    detections: &[crate::emulator::api::graph::PublishedDetection],
    tenants: &[String],
    service: &RunningService,
) -> anyhow::Result<DetectionTally> {
    use crate::risk::detection::{Detection, Watermark};
    let mut watermarks = HashMap::new();
    let mut lost = 0;
    for tenant in tenants {
        let mark = Watermark::load(&*service.queue, tenant).await?;
        watermarks.insert(tenant.as_str(), mark);
        let Some(configured) = service.tenants.get(tenant) else {
            continue;
        };
        let label = service.metrics.tenant_label(&configured.name);
        for outcome in ["oversized", "refused"] {
            lost += service
                .metrics
                .risk_detections
                .get(&crate::ops::metrics::TenantOutcomeLabels {
                    tenant: label.clone(),
                    outcome,
                })
                .map_or(0, |counter| counter.get());
        }
    }
    let covered = detections
        .iter()
        .filter(|published| {
            watermarks
                .get(published.tenant_id.as_str())
                .and_then(Option::as_ref)
                .is_some_and(|mark| mark.covers(&Detection::read(&published.json)))
        })
        .count() as u64;
    Ok(DetectionTally {
        forwarded: covered.saturating_sub(lost),
        lost,
        pending: detections.len() as u64 - covered,
    })
}

fn invalid_record_shas() -> HashSet<String> {
    use sha2::{Digest, Sha256};
    fixture_records()
        .lines()
        .filter(|line| {
            !serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| value.is_object())
        })
        .map(|line| hex::encode(Sha256::digest(line.as_bytes())))
        .collect()
}

/// Where one valid published record stands, by the connector's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Acknowledged by the engine.
    Forwarded,
    /// Given up: its item is dead, or the record itself was dead-lettered.
    GivenUp,
    /// Its item is pending or leased and the record is not acknowledged yet.
    Pending,
    /// No item for its blob in the queue (not collected yet).
    Absent,
}

impl Standing {
    /// The standing of record `index` of a blob whose item is `item`; `dead_lettered` when
    /// the queue lists this record among the dead records.
    fn of(item: Option<&QueueItem>, index: u64, dead_lettered: bool) -> Self {
        let Some(item) = item else {
            return Standing::Absent;
        };
        if dead_lettered {
            return Standing::GivenUp;
        }
        if index < item.acked_records {
            return Standing::Forwarded;
        }
        match item.state {
            ItemState::Done { .. } => Standing::Forwarded,
            ItemState::Dead { .. } => Standing::GivenUp,
            ItemState::Pending { .. } | ItemState::Leased { .. } => Standing::Pending,
        }
    }
}

/// The valid published records counted by [`Standing`], and the blobs with records not
/// forwarded (for the report at the end of the drain).
#[derive(Debug, Default)]
struct Tally {
    forwarded: u64,
    given_up: u64,
    pending: u64,
    absent: u64,
    unsettled: Vec<UnsettledBlob>,
}

/// A blob with records that are not forwarded.
#[derive(Debug)]
struct UnsettledBlob {
    item: Option<QueueItem>,
    records: Vec<PublishedRecord>,
    standing: Standing,
}

async fn tally_records(
    published: &[PublishedRecord],
    queue: &dyn QueueStore,
    invalid_shas: &HashSet<String>,
) -> anyhow::Result<Tally> {
    let dead_records: HashSet<(ContentKey, u64)> = queue
        .dead_records(published.len() + 1)
        .await?
        .into_iter()
        .map(|(key, record)| (key, record.index))
        .collect();
    let mut items: HashMap<ContentKey, Option<QueueItem>> = HashMap::new();
    let mut unsettled: HashMap<ContentKey, UnsettledBlob> = HashMap::new();
    let mut tally = Tally::default();
    for record in published {
        if invalid_shas.contains(&record.sha256) {
            continue;
        }
        let key = ContentKey::new(record.tenant_id.to_ascii_lowercase(), &record.content_id);
        if !items.contains_key(&key) {
            items.insert(key.clone(), queue.get(&key).await?);
        }
        let item = items[&key].as_ref();
        let index = record.index as u64;
        let standing = Standing::of(item, index, dead_records.contains(&(key.clone(), index)));
        match standing {
            Standing::Forwarded => tally.forwarded += 1,
            Standing::GivenUp => tally.given_up += 1,
            Standing::Pending => tally.pending += 1,
            Standing::Absent => tally.absent += 1,
        }
        if standing != Standing::Forwarded {
            unsettled
                .entry(key)
                .or_insert_with(|| UnsettledBlob {
                    item: item.cloned(),
                    records: Vec::new(),
                    standing,
                })
                .records
                .push(record.clone());
        }
    }
    tally.unsettled = unsettled.into_values().collect();
    Ok(tally)
}

/// Blobs shown on stderr when records are not forwarded at the end of the drain.
const UNSETTLED_SHOWN: usize = 20;

/// Says on stderr where the records that were not forwarded are: their blob, indices, the
/// queue item's state, and how many of their Logs the engine emulator received and acked.
fn report_unsettled(
    blobs: &[UnsettledBlob],
    service: &RunningService,
    engine: Option<&EngineEmulator>,
) {
    if blobs.is_empty() {
        return;
    }
    let received: HashMap<String, (u64, u64)> = engine.map_or_else(HashMap::new, |engine| {
        let mut received = HashMap::new();
        for log in engine.logs() {
            let entry: &mut (u64, u64) = received.entry(log.id).or_default();
            entry.0 += 1;
            entry.1 += u64::from(log.acked);
        }
        received
    });
    let now = chrono::Utc::now();
    for blob in blobs.iter().take(UNSETTLED_SHOWN) {
        let Some(first) = blob.records.first() else {
            continue;
        };
        let indices: Vec<usize> = blob.records.iter().map(|record| record.index).collect();
        let state = blob.item.as_ref().map_or_else(
            || "not in the queue".to_string(),
            |item| describe_item(item, now),
        );
        let engine_saw = service
            .tenants
            .get(&first.tenant_id.to_ascii_lowercase())
            .map(|tenant| {
                let (mut logs, mut acked) = (0, 0);
                for record in &blob.records {
                    let record_id = record
                        .record_id
                        .clone()
                        .unwrap_or_else(|| record.index.to_string());
                    let id = log_id(&tenant.log_context, &record.content_uri, &record_id);
                    let (seen, seen_acked) = received.get(&id).copied().unwrap_or_default();
                    logs += seen;
                    acked += seen_acked;
                }
                format!("engine received {logs} of their logs, acked {acked}")
            })
            .unwrap_or_default();
        eprintln!(
            "demo: {:?}: tenant {} content {} records {indices:?}: {state}; {engine_saw}",
            blob.standing, first.tenant_id, first.content_id
        );
    }
    if blobs.len() > UNSETTLED_SHOWN {
        eprintln!(
            "demo: … and {} more blobs with records not forwarded",
            blobs.len() - UNSETTLED_SHOWN
        );
    }
}

/// A queue item's state in words, with its progress and last retry reason.
fn describe_item(item: &QueueItem, now: chrono::DateTime<chrono::Utc>) -> String {
    let state = match &item.state {
        ItemState::Pending {
            not_before,
            attempts,
        } => format!(
            "pending, {attempts} failed attempts, due in {:.1} s",
            (*not_before - now).as_seconds_f64()
        ),
        ItemState::Leased {
            lease,
            until,
            attempts,
        } => format!(
            "leased ({lease}, expires in {:.1} s), {attempts} failed attempts",
            (*until - now).as_seconds_f64()
        ),
        ItemState::Done { .. } => "done".to_string(),
        ItemState::Dead { reason, attempts } => {
            format!("dead after {attempts} failed attempts: {reason}")
        }
    };
    format!(
        "{state}; {} records acked, {} dead-lettered; last retry: {}",
        item.acked_records,
        item.dead_records,
        item.last_retry_reason.as_deref().unwrap_or("none")
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::queue::{ContentRef, LeaseId, Source};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid timestamp")
    }

    fn item(state: ItemState, acked_records: u64) -> QueueItem {
        QueueItem {
            content: ContentRef {
                tenant_id: tenant_id(0),
                content_type: "Audit.Exchange".into(),
                content_id: "blob".into(),
                content_uri: "https://127.0.0.1/blob".into(),
                content_created: at(0),
                content_expiration: at(604_800),
                source: Source::Poll,
            },
            state,
            acked_records,
            dead_records: 0,
            last_retry_reason: Some("blob transfer failed".into()),
            enqueued_at: at(0),
        }
    }

    #[test]
    fn records_of_an_item_waiting_out_its_backoff_are_pending_and_its_acked_prefix_forwarded() {
        let waiting = item(
            ItemState::Pending {
                not_before: at(300),
                attempts: 7,
            },
            4,
        );
        assert_eq!(Standing::of(Some(&waiting), 3, false), Standing::Forwarded);
        assert_eq!(Standing::of(Some(&waiting), 4, false), Standing::Pending);
        let leased = item(
            ItemState::Leased {
                lease: LeaseId(9),
                until: at(60),
                attempts: 0,
            },
            0,
        );
        assert_eq!(Standing::of(Some(&leased), 9, false), Standing::Pending);
    }

    #[test]
    fn only_records_given_up_count_as_lost() {
        let dead = item(
            ItemState::Dead {
                reason: "content expired".into(),
                attempts: 1,
            },
            4,
        );
        assert_eq!(Standing::of(Some(&dead), 3, false), Standing::Forwarded);
        assert_eq!(Standing::of(Some(&dead), 4, false), Standing::GivenUp);
        let done = item(
            ItemState::Done {
                tombstone_until: at(604_800),
            },
            0,
        );
        assert_eq!(Standing::of(Some(&done), 5, false), Standing::Forwarded);
        assert_eq!(Standing::of(Some(&done), 5, true), Standing::GivenUp);
        assert_eq!(Standing::of(None, 0, false), Standing::Absent);
    }

    #[test]
    fn the_summary_line_ends_with_pending_and_fails_while_anything_is_queued() {
        let summary = DemoSummary {
            published: 61_000,
            forwarded: 60_594,
            lost: 0,
            duplicates: 0,
            invalid: 400,
            pending: 6,
        };
        assert_eq!(
            summary.to_string(),
            "published=61000 forwarded=60594 lost=0 duplicates=0 invalid=400 pending=6"
        );
        assert!(!summary.succeeded());
        let drained = DemoSummary {
            forwarded: 60_600,
            pending: 0,
            ..summary
        };
        assert!(drained.succeeded());
        let lost = DemoSummary { lost: 1, ..drained };
        assert!(!lost.succeeded());
    }
}

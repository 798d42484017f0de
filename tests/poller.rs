//! The poller against the Management API emulator: cursors, windows, paging, the tail
//! re-scan, clock skew, the 7-day limit, subscriptions started on AF20022, failures per
//! content type, and the whole service collecting by polling alone.
//!
//! Most tests drive one tenant's poller directly (`run_once`) with an `ApiClient` and an
//! `EmbeddedQueue`, on manual clocks shared with the emulator, so hours and days pass
//! without waiting.

mod common;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use o365_connector::api::{ApiClient, ApiClientConfig};
use o365_connector::auth::{Credential, TokenProvider, TokenSourceConfig};
use o365_connector::clock::Clock;
use o365_connector::cloud::{Cloud, Endpoints};
use o365_connector::config::{ContentType, PollerConfig};
use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use o365_connector::intake::{Intake, SkipReason};
use o365_connector::ops::health::ProblemBoard;
use o365_connector::ops::metrics::{ReasonLabels, SourceLabels};
use o365_connector::ops::{Metrics, QueueLimit};
use o365_connector::poller::{
    PollReport, PollTarget, PollerDeps, TenantPoller, cursor_key, list_range,
};
use o365_connector::queue::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EmbeddedQueue, EnqueueOutcome, LeaseId,
    LeasedItem, MetaStore, QueueError, QueueItem, QueueStats,
};
use o365_connector::retry::RetryPolicy;
use reqwest::Url;
use secrecy::SecretString;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "poller-test-secret";
const NAME: &str = "contoso";
const WINDOW_RULES: [&str; 3] = ["AF20030", "AF20055", "AF20031"];

fn start_time() -> DateTime<Utc> {
    "2026-03-10T12:00:00Z".parse().unwrap()
}

/// An emulator, a client of its one tenant, a queue in a temp dir, and what a poller
/// needs; the emulator and the connector may have different clocks.
struct Bench {
    emulator: ApiEmulator,
    emulator_clock: Clock,
    clock: Clock,
    /// The emulator and the connector share one clock.
    shared_clock: bool,
    client: Arc<ApiClient>,
    queue: Arc<EmbeddedQueue>,
    metrics: Arc<Metrics>,
    problems: Arc<ProblemBoard>,
    dir: tempfile::TempDir,
    /// `ops.queue_hard_limit` of the pollers made from now on; `None`: unbounded.
    queue_limit: Option<u64>,
}

fn tenant_scenario() -> TenantScenario {
    TenantScenario::with_secret(TENANT, CLIENT, SECRET)
}

async fn bench(scenario: Scenario, emulator_clock: Clock, clock: Clock) -> Bench {
    bench_with(scenario, emulator_clock, clock, false).await
}

async fn bench_with(
    scenario: Scenario,
    emulator_clock: Clock,
    clock: Clock,
    shared_clock: bool,
) -> Bench {
    let emulator = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock: emulator_clock.clone(),
    })
    .await
    .unwrap();
    let base = Url::parse(emulator.base_url()).unwrap();
    let endpoints = Endpoints::with_overrides(Cloud::Commercial, Some(&base), Some(&base));
    let tokens = TokenProvider::new(
        reqwest::Client::new(),
        TokenSourceConfig {
            tenant_id: TENANT.into(),
            token_url: endpoints.token_url(TENANT),
            client_id: CLIENT.into(),
            scope: endpoints.token_scope().to_string(),
            credential: Credential::Secret(SecretString::from(SECRET.to_string())),
        },
        clock.clone(),
    );
    let metrics = Arc::new(Metrics::new([NAME], 10));
    let client = ApiClient::new(
        reqwest::Client::new(),
        ApiClientConfig {
            tenant_id: TENANT.into(),
            endpoints,
            publisher_id: None,
            requests_per_minute: NonZeroU32::new(100_000).unwrap(),
        },
        Arc::new(tokens),
    )
    .with_metrics(metrics.clone(), NAME);
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(
        EmbeddedQueue::open(dir.path(), clock.clone())
            .await
            .unwrap(),
    );
    Bench {
        emulator,
        emulator_clock,
        clock,
        shared_clock,
        client: Arc::new(client),
        queue,
        metrics,
        problems: Arc::new(ProblemBoard::default()),
        dir,
        queue_limit: None,
    }
}

/// One manual clock shared by the emulator and the connector.
async fn shared_bench(scenario: Scenario) -> Bench {
    let clock = Clock::manual(start_time());
    bench_with(scenario, clock.clone(), clock, true).await
}

fn test_config() -> PollerConfig {
    PollerConfig::default()
}

impl Bench {
    fn poller(&self, config: PollerConfig, content_types: &[ContentType]) -> TenantPoller {
        self.poller_on(self.queue.clone(), config, content_types)
    }

    fn poller_on(
        &self,
        queue: Arc<dyn ContentQueue>,
        config: PollerConfig,
        content_types: &[ContentType],
    ) -> TenantPoller {
        let mut intake = Intake::new(
            queue.clone(),
            self.metrics.clone(),
            Arc::new(tokio::sync::Notify::new()),
        );
        if let Some(limit) = self.queue_limit {
            intake = intake.with_limit(Arc::new(QueueLimit::new(
                limit,
                queue,
                self.metrics.clone(),
            )));
        }
        TenantPoller::new(
            PollTarget {
                name: NAME.into(),
                client: self.client.clone(),
                content_types: content_types.to_vec(),
                webhook: None,
                subscriptions_changed: None,
            },
            config,
            PollerDeps {
                intake,
                meta: self.queue.clone() as Arc<dyn MetaStore>,
                metrics: self.metrics.clone(),
                problems: self.problems.clone(),
                clock: self.clock.clone(),
                retry: RetryPolicy::for_test(),
            },
        )
    }

    async fn subscribe(&self, content_types: &[ContentType]) {
        for content_type in content_types {
            self.client
                .start_subscription(content_type.as_str(), None)
                .await
                .unwrap();
        }
    }

    async fn publish(&self, content_type: ContentType, blobs: usize) -> Vec<ContentEntry> {
        let entries =
            publish::publish_now(self.emulator.state(), TENANT, content_type.as_str(), blobs).await;
        assert_eq!(entries.len(), blobs, "the subscription keeps content");
        entries
    }

    /// Moves both clocks.
    fn advance(&self, by: Duration) {
        self.emulator_clock.advance(by);
        if !self.shared_clock {
            self.clock.advance(by);
        }
    }

    async fn queued(&self, content_id: &str) -> bool {
        self.queue
            .get(&ContentKey::new(TENANT, content_id))
            .await
            .unwrap()
            .is_some()
    }

    async fn missing(&self, entries: &[ContentEntry]) -> Vec<String> {
        let mut missing = Vec::new();
        for entry in entries {
            if !self.queued(&entry.content_id).await {
                missing.push(format!("{} {}", entry.content_id, entry.content_created));
            }
        }
        missing
    }

    fn window_rejections(&self) -> Vec<(String, u64)> {
        let inspection = self.emulator.state().inspection();
        inspection
            .rejections
            .by_code
            .iter()
            .filter(|(code, _)| WINDOW_RULES.contains(&code.as_str()))
            .map(|(code, count)| (code.clone(), *count))
            .collect()
    }

    fn listing_requests(&self) -> usize {
        self.emulator
            .state()
            .inspection()
            .requests
            .iter()
            .filter(|request| request.endpoint.ends_with("subscriptions/content"))
            .count()
    }

    async fn cursor(&self, content_type: ContentType) -> Option<DateTime<Utc>> {
        let bytes = self
            .queue
            .get_meta(&cursor_key(TENANT, content_type))
            .await
            .unwrap()?;
        Some(
            DateTime::parse_from_rfc3339(std::str::from_utf8(&bytes).unwrap())
                .unwrap()
                .with_timezone(&Utc),
        )
    }
}

fn assert_ok(reports: &[(ContentType, PollReport)]) {
    for (content_type, report) in reports {
        assert_eq!(report.error, None, "{content_type}: {report:?}");
        for window in &report.windows {
            assert!(
                window.start < window.end && window.end - window.start <= Duration::hours(23),
                "{content_type}: window {window}"
            );
        }
    }
}

#[tokio::test]
async fn at_the_queue_hard_limit_the_poller_enqueues_nothing_keeps_its_cursor_and_retries() {
    let mut bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    bench.queue_limit = Some(2);
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    bench.advance(Duration::minutes(5));
    let first = bench.publish(ContentType::AuditExchange, 2).await;
    bench.advance(Duration::minutes(2));
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.missing(&first).await, Vec::<String>::new());
    let key = cursor_key(TENANT, ContentType::AuditExchange);
    let cursor = bench.queue.get_meta(&key).await.unwrap();

    // Two open items: the limit. What is listed next is not enqueued; the cursor stays.
    bench.advance(Duration::minutes(5));
    let second = bench.publish(ContentType::AuditExchange, 1).await;
    bench.advance(Duration::minutes(2));
    let reports = poller.run_once().await;
    let (_, report) = &reports[0];
    let error = report.error.as_deref().unwrap_or_default();
    assert!(error.contains("ops.queue_hard_limit"), "{report:?}");
    assert!(report.retry_in.is_some(), "retried later: {report:?}");
    assert_eq!(bench.missing(&second).await.len(), 1);
    assert_eq!(bench.queue.get_meta(&key).await.unwrap(), cursor);
    let refusals = bench
        .metrics
        .queue_hard_limit_refusals
        .get_or_create(&SourceLabels { source: "poll" })
        .get();
    assert_eq!(refusals, 1);

    // Below the limit again (here: without one), the next poll lists it from the cursor.
    bench.queue_limit = None;
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.missing(&second).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_listed_item_skipped_for_its_host_is_counted_once_however_often_it_is_listed() {
    let mut tenant = tenant_scenario();
    tenant.faults.foreign_content_uri_base = Some("https://attacker.example".into());
    let bench = shared_bench(Scenario::single_tenant(tenant)).await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    bench.advance(Duration::minutes(5));
    let published = bench.publish(ContentType::AuditExchange, 3).await;
    let skipped = || {
        bench
            .metrics
            .listed_skipped
            .get_or_create(&ReasonLabels {
                reason: SkipReason::ContentUriOffHost.as_str(),
            })
            .get()
    };
    let mut listed = 0;
    for _ in 0..3 {
        bench.advance(Duration::minutes(2));
        let reports = poller.run_once().await;
        assert_ok(&reports);
        listed += reports[0].1.listed;
        assert_eq!(skipped(), 3, "each skipped item counted once: {reports:?}");
    }
    assert_eq!(listed, 9, "the overlap listed every item at every poll");
    assert_eq!(bench.missing(&published).await.len(), 3, "none enqueued");
    let mismatched = bench
        .metrics
        .listed_skipped
        .get_or_create(&ReasonLabels {
            reason: SkipReason::ContentTypeMismatch.as_str(),
        })
        .get();
    assert_eq!(mismatched, 0, "counted under its own reason");
}

#[tokio::test]
async fn multi_page_listings_collect_everything_and_break_no_window_rule() {
    let scenario = Scenario {
        page_size: 2,
        ..Scenario::single_tenant(tenant_scenario())
    };
    let bench = shared_bench(scenario).await;
    let types = [ContentType::AuditExchange, ContentType::DlpAll];
    bench.subscribe(&types).await;
    let poller = bench.poller(test_config(), &types);
    let mut published = Vec::new();
    // A first run, then a cycle every 5 minutes with new content between cycles.
    assert_ok(&poller.run_once().await);
    for cycle in 0..12 {
        bench.advance(Duration::minutes(5));
        for content_type in types {
            published.extend(bench.publish(content_type, 1 + cycle % 3).await);
        }
        bench.advance(Duration::minutes(2));
        assert_ok(&poller.run_once().await);
    }
    assert_eq!(bench.missing(&published).await, Vec::<String>::new());
    // The poller then stops for six days while content keeps coming: a 6-day-old cursor.
    for _ in 0..6 {
        bench.advance(Duration::days(1));
        for content_type in types {
            published.extend(bench.publish(content_type, 5).await);
        }
    }
    bench.advance(Duration::minutes(2));
    let reports = poller.run_once().await;
    assert_ok(&reports);
    let (_, exchange) = &reports[0];
    assert!(
        exchange.windows.len() >= 7,
        "six days in 23-hour windows: {:?}",
        exchange.windows
    );
    assert!(
        exchange.pages > exchange.windows.len() as u64,
        "pages were followed"
    );
    assert_eq!(exchange.gap, None, "six days back is still listable");
    assert_eq!(bench.missing(&published).await, Vec::<String>::new());
    assert_eq!(bench.window_rejections(), vec![]);
}

#[tokio::test]
async fn late_content_in_an_already_listed_window_is_caught_by_the_tail_rescan() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditGeneral];
    bench.subscribe(&types).await;
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    bench.advance(Duration::minutes(10));
    // Microsoft makes a blob available now whose contentCreated is 3 hours ago: inside a
    // window already listed, and behind the regular poll's one-hour overlap.
    let mut faults = FaultScenario {
        late_content_hours: 3,
        ..FaultScenario::default()
    };
    bench
        .emulator
        .state()
        .feed
        .set_faults(Some(TENANT), faults.clone());
    let late = bench.publish(ContentType::AuditGeneral, 2).await;
    faults.late_content_hours = 0;
    bench.emulator.state().feed.set_faults(Some(TENANT), faults);
    let regular = poller.run_once().await;
    assert_ok(&regular);
    assert!(!regular[0].1.tail, "the tail re-scan is not due yet");
    assert_eq!(
        bench.missing(&late).await.len(),
        2,
        "the regular poll cannot see late content"
    );
    bench.advance(Duration::hours(1));
    let with_tail = poller.run_once().await;
    assert_ok(&with_tail);
    assert!(with_tail[0].1.tail, "the hourly tail re-scan ran");
    assert_eq!(bench.missing(&late).await, Vec::<String>::new());
    assert_eq!(bench.window_rejections(), vec![]);
}

#[tokio::test]
async fn server_clock_ten_minutes_ahead_or_behind_breaks_no_rule_and_misses_nothing() {
    for skew_minutes in [10, -10] {
        let ours = Clock::manual(start_time());
        let service = Clock::manual(start_time() + Duration::minutes(skew_minutes));
        let bench = bench(
            Scenario::single_tenant(tenant_scenario()),
            service,
            ours.clone(),
        )
        .await;
        let types = [ContentType::AuditSharePoint];
        bench.subscribe(&types).await;
        let config = PollerConfig {
            initial_lookback_secs: PollerConfig::RETENTION_SECS,
            ..test_config()
        };
        let poller = bench.poller(config, &types);
        let mut published = Vec::new();
        for _ in 0..30 {
            published.extend(bench.publish(ContentType::AuditSharePoint, 2).await);
            bench.advance(Duration::minutes(5));
            assert_ok(&poller.run_once().await);
        }
        // Content published just before the last cycle may lie after its end (lag and
        // skew); the next cycles list it.
        for _ in 0..3 {
            bench.advance(Duration::minutes(5));
            assert_ok(&poller.run_once().await);
        }
        assert_eq!(
            bench.missing(&published).await,
            Vec::<String>::new(),
            "skew {skew_minutes} min"
        );
        assert_eq!(bench.window_rejections(), vec![], "skew {skew_minutes} min");
        bench.emulator.shutdown().await;
    }
}

#[tokio::test]
async fn a_window_refused_for_clock_skew_moves_listing_to_the_service_time() {
    // The emulator answers `Date` from the system clock, so here the service runs on the
    // system clock and ours is three hours behind it.
    let ours = Clock::system();
    ours.advance(-Duration::hours(3));
    let bench = bench(
        Scenario::single_tenant(tenant_scenario()),
        Clock::system(),
        ours,
    )
    .await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let config = PollerConfig {
        initial_lookback_secs: PollerConfig::RETENTION_SECS,
        lag_secs: 0,
        ..test_config()
    };
    let poller = bench.poller(config, &types);
    // Our 7-day floor is 2 hours older than the service's: the first window is refused.
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.window_rejections(), vec![("AF20030".to_string(), 1)]);
    // From then on windows end at the service's now: fresh content is listed at once,
    // not three hours later.
    let fresh = bench.publish(ContentType::AuditExchange, 3).await;
    // Listing bounds are sent to the second: let both clocks pass the next second.
    bench.advance(Duration::seconds(2));
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.missing(&fresh).await, Vec::<String>::new());
    assert_eq!(bench.window_rejections(), vec![("AF20030".to_string(), 1)]);
}

#[tokio::test]
async fn a_cursor_older_than_seven_days_clamps_forward_and_counts_the_gap() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let now = bench.clock.now();
    let stale = now - Duration::days(8);
    bench
        .queue
        .put_meta(
            &cursor_key(TENANT, ContentType::AuditExchange),
            stale.to_rfc3339().into_bytes(),
        )
        .await
        .unwrap();
    let entries = bench.publish(ContentType::AuditExchange, 2).await;
    bench.advance(Duration::minutes(2));
    let poller = bench.poller(test_config(), &types);
    let reports = poller.run_once().await;
    assert_ok(&reports);
    let gap = reports[0].1.gap.expect("the gap is reported");
    assert_eq!(gap.start, stale);
    // 8 days back, the floor 7 days minus the 1-hour margin back: 25 hours unlistable.
    let gap_seconds = 25 * 3600 + 120;
    assert_eq!((gap.end - gap.start).num_seconds(), gap_seconds);
    let metrics = bench.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "o365_connector_poll_gap_seconds_total{{tenant=\"{NAME}\",content_type=\"Audit.Exchange\"}} {gap_seconds}"
        )),
        "{metrics}"
    );
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());
    assert_eq!(bench.window_rejections(), vec![]);
    // Counted once: the next cycle has no gap.
    bench.advance(Duration::minutes(5));
    let next = poller.run_once().await;
    assert_eq!(next[0].1.gap, None);
}

/// A queue whose enqueue fails while `failing` is set; everything else is the embedded
/// queue's.
struct FlakyQueue {
    inner: Arc<EmbeddedQueue>,
    failing: AtomicBool,
}

#[async_trait]
impl ContentQueue for FlakyQueue {
    async fn enqueue(&self, refs: Vec<ContentRef>) -> Result<Vec<EnqueueOutcome>, QueueError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(QueueError::Io {
                message: "injected".into(),
            });
        }
        self.inner.enqueue(refs).await
    }
    async fn lease(
        &self,
        max: usize,
        duration: std::time::Duration,
        skip_tenants: &HashSet<String>,
    ) -> Result<Vec<LeasedItem>, QueueError> {
        self.inner.lease(max, duration, skip_tenants).await
    }
    async fn extend_lease(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        duration: std::time::Duration,
    ) -> Result<DateTime<Utc>, QueueError> {
        self.inner.extend_lease(key, lease, duration).await
    }
    async fn record_acked(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        acked: u64,
    ) -> Result<(), QueueError> {
        self.inner.record_acked(key, lease, acked).await
    }
    async fn complete(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        self.inner.complete(key, lease).await
    }
    async fn retry_later(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        not_before: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.inner.retry_later(key, lease, not_before, reason).await
    }
    async fn release(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        self.inner.release(key, lease).await
    }
    async fn dead_letter(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.inner.dead_letter(key, lease, reason).await
    }
    async fn add_dead_record(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        record: DeadRecord,
    ) -> Result<(), QueueError> {
        self.inner.add_dead_record(key, lease, record).await
    }
    async fn requeue_dead(&self, key: &ContentKey) -> Result<bool, QueueError> {
        self.inner.requeue_dead(key).await
    }
    async fn purge_expired_tombstones(&self) -> Result<u64, QueueError> {
        self.inner.purge_expired_tombstones().await
    }
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }
    async fn get(&self, key: &ContentKey) -> Result<Option<QueueItem>, QueueError> {
        self.inner.get(key).await
    }
    async fn dead_items(&self, limit: usize) -> Result<Vec<QueueItem>, QueueError> {
        self.inner.dead_items(limit).await
    }
    async fn dead_records(
        &self,
        limit: usize,
    ) -> Result<Vec<(ContentKey, DeadRecord)>, QueueError> {
        self.inner.dead_records(limit).await
    }
    async fn close(&self) -> Result<(), QueueError> {
        self.inner.close().await
    }
}

#[tokio::test]
async fn the_cursor_advances_only_after_enqueue_and_survives_a_restart() {
    let mut bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let entries = bench.publish(ContentType::AuditExchange, 3).await;
    bench.advance(Duration::minutes(5));
    let flaky = Arc::new(FlakyQueue {
        inner: bench.queue.clone(),
        failing: AtomicBool::new(true),
    });
    let poller = bench.poller_on(flaky.clone(), test_config(), &types);
    let failed = poller.run_once().await;
    assert!(failed[0].1.error.is_some(), "the enqueue failed");
    let before = bench.cursor(ContentType::AuditExchange).await;
    assert!(
        before.is_none_or(|cursor| cursor <= entries[0].content_created),
        "the cursor never passes content that was not stored: {before:?}"
    );
    let problems = bench.problems.snapshot();
    assert!(
        problems.iter().any(|((tenant, ct), problem)| tenant == NAME
            && ct == "Audit.Exchange"
            && problem.kind == "poll_failed"),
        "{problems:?}"
    );
    flaky.failing.store(false, Ordering::SeqCst);
    assert_ok(&poller.run_once().await);
    let cursor = bench.cursor(ContentType::AuditExchange).await.unwrap();
    assert_eq!(cursor, bench.clock.now() - Duration::minutes(1));
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());
    assert!(bench.problems.snapshot().is_empty(), "cleared on success");
    drop(poller);
    drop(flaky);

    // Restart: close and reopen the store; the cursor is read back.
    bench.queue.close().await.unwrap();
    bench.queue = Arc::new(
        EmbeddedQueue::open(bench.dir.path(), bench.clock.clone())
            .await
            .unwrap(),
    );
    assert_eq!(bench.cursor(ContentType::AuditExchange).await, Some(cursor));
    bench.advance(Duration::minutes(5));
    let poller = bench.poller(test_config(), &types);
    let reports = poller.run_once().await;
    assert_ok(&reports);
    assert_eq!(
        reports[0].1.windows[0].start,
        cursor - Duration::hours(1),
        "the restarted poller resumes at its cursor minus the overlap"
    );
    assert_eq!(
        reports[0].1.enqueued, 0,
        "nothing new; the overlap is deduplicated"
    );
}

#[tokio::test]
async fn a_content_type_never_subscribed_is_started_then_listed() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditAzureActiveDirectory];
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    assert!(
        bench
            .emulator
            .state()
            .feed
            .enabled_subscriptions()
            .contains(&(TENANT.to_string(), "Audit.AzureActiveDirectory".to_string())),
        "the poller started the subscription"
    );
    let rejections = bench.emulator.state().inspection().rejections.clone();
    assert_eq!(rejections.by_code.get("AF20022"), Some(&1));
    let entries = bench
        .publish(ContentType::AuditAzureActiveDirectory, 2)
        .await;
    bench.advance(Duration::minutes(5));
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_subscription_another_component_is_starting_is_looked_at_again_soon() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    // The subscription manager has just claimed the start (within the 15-minute spacing),
    // and its /start has not reached Microsoft yet.
    let claimed = o365_connector::subscriptions::claim_start(
        bench.queue.as_ref(),
        TENANT,
        "Audit.Exchange",
        false,
        bench.clock.now(),
    )
    .await
    .unwrap();
    assert!(claimed);
    let poller = bench.poller(test_config(), &[ContentType::AuditExchange]);
    let reports = poller.run_once().await;
    let report = &reports[0].1;
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|error| error.contains("AF20022")),
        "{report:?}"
    );
    let retry_in = report.retry_in.expect("a retry is scheduled");
    assert!(
        retry_in < std::time::Duration::from_secs(600),
        "polled again soon, not after the configuration delay: {retry_in:?}"
    );
}

#[tokio::test]
async fn a_broken_content_type_shows_on_the_board_while_the_others_are_collected() {
    let mut tenant = tenant_scenario();
    tenant.roles = vec!["ActivityFeed.Read".into()];
    let bench = shared_bench(Scenario::single_tenant(tenant)).await;
    let types = [ContentType::AuditExchange, ContentType::DlpAll];
    bench.subscribe(&[ContentType::AuditExchange]).await;
    let entries = bench.publish(ContentType::AuditExchange, 2).await;
    bench.advance(Duration::minutes(5));
    let poller = bench.poller(test_config(), &types);
    let reports = poller.run_once().await;
    assert_eq!(reports[0].1.error, None);
    assert!(
        reports[1].1.error.as_deref().unwrap().contains("AF10001"),
        "{reports:?}"
    );
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());
    let problems = bench.problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let ((tenant_name, content_type), problem) = &problems[0];
    assert_eq!(
        (tenant_name.as_str(), content_type.as_str()),
        (NAME, "DLP.All")
    );
    assert!(
        problem.advice.contains("ActivityFeed.ReadDlp"),
        "{problem:?}"
    );

    // A transient failure of every content type shows, then clears on success.
    let poller = bench.poller(test_config(), &[ContentType::AuditExchange]);
    bench.emulator.state().feed.set_faults(
        Some(TENANT),
        FaultScenario {
            server_error_rate: 1.0,
            ..FaultScenario::default()
        },
    );
    assert!(poller.run_once().await[0].1.error.is_some());
    assert!(
        bench
            .problems
            .snapshot()
            .iter()
            .any(|((_, ct), _)| ct == "Audit.Exchange")
    );
    bench
        .emulator
        .state()
        .feed
        .set_faults(Some(TENANT), FaultScenario::default());
    assert_ok(&poller.run_once().await);
    assert!(
        !bench
            .problems
            .snapshot()
            .iter()
            .any(|((_, ct), _)| ct == "Audit.Exchange")
    );
}

#[tokio::test]
async fn list_range_follows_every_page_of_every_window() {
    let scenario = Scenario {
        page_size: 3,
        ..Scenario::single_tenant(tenant_scenario())
    };
    let bench = shared_bench(scenario).await;
    bench.subscribe(&[ContentType::AuditGeneral]).await;
    let start = bench.clock.now();
    let mut published = Vec::new();
    for _ in 0..10 {
        published.extend(bench.publish(ContentType::AuditGeneral, 2).await);
        bench.advance(Duration::hours(5));
    }
    let listed = list_range(
        &bench.client,
        ContentType::AuditGeneral,
        start,
        bench.clock.now(),
        Duration::hours(23),
    )
    .await
    .unwrap();
    let listed: HashSet<_> = listed.into_iter().map(|item| item.content_id).collect();
    let expected: HashSet<_> = published
        .into_iter()
        .map(|entry| entry.content_id)
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(bench.window_rejections(), vec![]);
}

#[tokio::test]
async fn catching_up_a_24_hour_backlog_is_measured() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = ContentType::ALL;
    bench.subscribe(&types).await;
    // 24 hours of content: one blob per minute per content type.
    let mut published = Vec::new();
    for _ in 0..24 * 60 {
        bench.advance(Duration::minutes(1));
        for content_type in types {
            published.extend(bench.publish(content_type, 1).await);
        }
    }
    bench.advance(Duration::seconds(30));
    let listings_before = bench.listing_requests();
    // The default 24-hour first-run lookback, listing up to now.
    let config = PollerConfig {
        lag_secs: 0,
        ..test_config()
    };
    let poller = bench.poller(config, &types);
    let started = std::time::Instant::now();
    let reports = poller.run_once().await;
    let elapsed = started.elapsed();
    assert_ok(&reports);
    let requests = bench.listing_requests() - listings_before;
    let pages: u64 = reports.iter().map(|(_, report)| report.pages).sum();
    assert_eq!(requests as u64, pages);
    assert_eq!(bench.missing(&published).await, Vec::<String>::new());
    println!(
        "catch-up of a 24-hour backlog: {} blobs over {} content types listed and enqueued in {:?} with {requests} listing requests (page size 100, 23-hour windows)",
        published.len(),
        types.len(),
        elapsed
    );
}

#[tokio::test]
async fn with_webhook_delivery_off_the_poller_alone_delivers_every_record() {
    use common::rig::{Rig, RigOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    });
    options.extra_config = "\n[poller]\npoll_interval_secs = 1\nlag_secs = 0\n".into();
    let rig = Rig::start(dir, options).await;
    let all: Vec<&str> = ContentType::ALL.iter().map(|ct| ct.as_str()).collect();
    rig.wait_for_webhooks(&all).await;
    for content_type in &all {
        publish::publish_now(rig.api.state(), common::rig::TENANT, content_type, 3).await;
    }
    rig.wait_for_every_published_record().await;
    let service = rig.service.as_ref().unwrap();
    let metrics = service.metrics.encode();
    assert!(
        metrics.contains("o365_connector_enqueued_total{source=\"poll\"} 15"),
        "{metrics}"
    );
    assert!(
        metrics.contains("o365_connector_notifications_total{outcome=\"accepted\"} 0"),
        "no notification was delivered: {metrics}"
    );
    assert_eq!(rig.published().len(), 15 * 10);
    let inspection = rig.api.state().inspection().rejections.clone();
    assert!(
        !inspection
            .by_code
            .keys()
            .any(|code| WINDOW_RULES.contains(&code.as_str())),
        "{inspection:?}"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn a_disabled_subscription_is_started_again_then_listed() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    bench
        .client
        .stop_subscription(ContentType::AuditExchange.as_str())
        .await
        .unwrap();
    let poller = bench.poller(test_config(), &types);
    assert_ok(&poller.run_once().await);
    let rejections = bench.emulator.state().inspection().rejections.clone();
    assert_eq!(rejections.by_code.get("AF20023"), Some(&1));
    let entries = bench.publish(ContentType::AuditExchange, 2).await;
    bench.advance(Duration::minutes(5));
    assert_ok(&poller.run_once().await);
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());
}

#[test]
fn poller_settings_refuse_a_24_hour_window_and_reaching_beyond_7_days() {
    assert_eq!(PollerConfig::default().problems(), vec![]);
    let config = PollerConfig {
        max_window_secs: std::num::NonZeroU64::new(24 * 3600).unwrap(),
        initial_lookback_secs: 8 * 24 * 3600,
        tail_window_secs: 8 * 24 * 3600,
        ..PollerConfig::default()
    };
    let keys: Vec<String> = config
        .problems()
        .into_iter()
        .map(|problem| problem.key)
        .collect();
    assert_eq!(
        keys,
        [
            "poller.max_window_secs",
            "poller.initial_lookback_secs",
            "poller.tail_window_secs"
        ]
    );
}

#[test]
fn the_example_configuration_shows_the_poller_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let example: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let poller: PollerConfig = example["poller"].clone().try_into().unwrap();
    assert_eq!(poller, PollerConfig::default());
    let shown = example["poller"].as_table().unwrap().len();
    assert_eq!(shown, 9, "every [poller] key is shown in the example");
}

#[tokio::test]
async fn a_start_that_fails_with_a_server_error_does_not_hold_the_fifteen_minute_spacing() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    // Every second feed request answers 500: the listing (AF20022) passes, its /start fails.
    bench.emulator.state().feed.set_faults(
        Some(TENANT),
        FaultScenario {
            server_error_rate: 0.5,
            ..FaultScenario::default()
        },
    );
    let poller = bench.poller(test_config(), &[ContentType::AuditAzureActiveDirectory]);
    let reports = poller.run_once().await;
    assert!(reports[0].1.error.is_some(), "{reports:?}");
    let rejections = bench.emulator.state().inspection().rejections.clone();
    assert_eq!(
        rejections.by_code.get("AF20022"),
        Some(&1),
        "{rejections:?}"
    );
    assert!(
        !bench
            .emulator
            .state()
            .feed
            .enabled_subscriptions()
            .contains(&(TENANT.to_string(), "Audit.AzureActiveDirectory".to_string())),
        "the start failed"
    );
    // The subscription manager may start it (with the webhook) at once.
    let claimed = o365_connector::subscriptions::claim_start(
        bench.queue.as_ref(),
        TENANT,
        "Audit.AzureActiveDirectory",
        true,
        bench.clock.now(),
    )
    .await
    .unwrap();
    assert!(claimed, "a start that did not take holds no spacing");
}

/// The running loop keeps its cursor in memory between polls: an empty listing a few
/// seconds on does not write it, a window that enqueued new content does, and so does
/// the shutdown; the stored cursor never runs ahead of what was enqueued.
#[tokio::test]
async fn the_running_poller_stores_its_cursor_after_new_content_and_at_shutdown_not_per_listing() {
    let bench = shared_bench(Scenario::single_tenant(tenant_scenario())).await;
    let types = [ContentType::AuditExchange];
    bench.subscribe(&types).await;
    let config = PollerConfig {
        poll_interval_secs: std::num::NonZeroU64::new(1).unwrap(),
        lag_secs: 0,
        ..test_config()
    };
    let poller = Arc::new(bench.poller(config, &types));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(poller.clone().run(shutdown.clone()));

    // The first poll stores the cursor it reached.
    let first = bench.clock.now();
    stored_becomes(&bench, first).await;

    // Ten seconds on, nothing new: the polls list and leave the store alone.
    bench.advance(Duration::seconds(10));
    two_more_polls(&bench).await;
    assert_eq!(bench.cursor(ContentType::AuditExchange).await, Some(first));

    // New content: the cursor is stored with the window that enqueued it.
    let entries = bench.publish(ContentType::AuditExchange, 2).await;
    bench.advance(Duration::seconds(10));
    let stored = bench.clock.now();
    stored_becomes(&bench, stored).await;
    assert_eq!(bench.missing(&entries).await, Vec::<String>::new());

    // Another empty poll, then the shutdown writes where it got to.
    bench.advance(Duration::seconds(10));
    two_more_polls(&bench).await;
    assert_eq!(bench.cursor(ContentType::AuditExchange).await, Some(stored));
    shutdown.cancel();
    running.await.unwrap();
    assert_eq!(
        bench.cursor(ContentType::AuditExchange).await,
        Some(bench.clock.now())
    );
}

const LOOP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Two more listings: the poll before the last one has finished, its writes included.
async fn two_more_polls(bench: &Bench) {
    let listed = bench.listing_requests();
    common::wait_until("two more polls", LOOP_DEADLINE, || {
        bench.listing_requests() >= listed + 2
    })
    .await;
}

/// Waits until the stored Audit.Exchange cursor is `want`.
async fn stored_becomes(bench: &Bench, want: DateTime<Utc>) {
    common::wait_until_async(
        &format!("the cursor {want} stored"),
        LOOP_DEADLINE,
        || async { bench.cursor(ContentType::AuditExchange).await == Some(want) },
    )
    .await;
}

//! The subscription manager against the API emulator, with a manual clock shared by both:
//! health checks re-enable what Microsoft disabled or expired, starts keep their 15-minute
//! spacing across restarts, webhooks Microsoft cannot validate are deferred while polling
//! collects, and one content type's failure stays its own.
//!
//! Most tests use a light harness: the emulator over TLS, a tenant built from a
//! configuration, the real store, and a small HTTPS webhook receiver the emulator trusts
//! whose answer (200 or 500) the test switches. The "nothing lost" test runs the whole
//! service (tests/common/rig.rs).

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use common::rig::{Rig, RigOptions, TENANT};
use o365_connector::api::http::http_client;
use o365_connector::api::types::WebhookRegistration;
use o365_connector::clock::Clock;
use o365_connector::config::Config;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, ROLE_READ, Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use o365_connector::ops::Metrics;
use o365_connector::ops::health::ProblemBoard;
use o365_connector::queue::{ContentQueue, EmbeddedQueue, MetaStore, QueueError};
use o365_connector::server::dev_certs::{DevCertPaths, write_dev_certs};
use o365_connector::subscriptions::{
    SubscriptionBoard, SubscriptionContext, SubscriptionEntry, SubscriptionManager,
    SubscriptionSettings, SubscriptionState, WebhookState, claim_start,
};
use o365_connector::tenant::{Tenant, build_tenants};

const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "subscriptions-test-secret";
const NAME: &str = "contoso";
const EXCHANGE: &str = "Audit.Exchange";
const GENERAL: &str = "Audit.General";
fn start_time() -> DateTime<Utc> {
    "2026-03-02T08:00:00Z".parse().unwrap()
}

/// An HTTPS webhook receiver answering every POST with the status the test sets.
struct Receiver {
    port: u16,
    status: Arc<AtomicU16>,
    handle: axum_server::Handle<std::net::SocketAddr>,
}

impl Receiver {
    async fn start(certs: &DevCertPaths, status: StatusCode) -> Receiver {
        let answer = Arc::new(AtomicU16::new(status.as_u16()));
        let shared = answer.clone();
        let app = axum::Router::new().fallback(move || {
            let shared = shared.clone();
            async move {
                StatusCode::from_u16(shared.load(Ordering::SeqCst))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls =
            o365_connector::server::server_config(&certs.server_cert, &certs.server_key).unwrap();
        let rustls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(listener, rustls)
            .unwrap()
            .handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        Receiver {
            port,
            status: answer,
            handle,
        }
    }

    fn answer(&self, status: StatusCode) {
        self.status.store(status.as_u16(), Ordering::SeqCst);
    }

    fn registration(&self, auth_id: &str) -> WebhookRegistration {
        WebhookRegistration {
            address: format!("https://localhost:{}/hook/{TENANT}", self.port),
            auth_id: auth_id.to_string(),
            expiration: String::new(),
        }
    }
}

/// The emulator (TLS, manual clock), the store and a webhook receiver.
struct Harness {
    dir: tempfile::TempDir,
    clock: Clock,
    api: ApiEmulator,
    receiver: Receiver,
    store: Arc<EmbeddedQueue>,
    board: Arc<SubscriptionBoard>,
    problems: Arc<ProblemBoard>,
    metrics: Arc<Metrics>,
}

impl Harness {
    async fn start(tenant: TenantScenario, receiver_status: StatusCode) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let (certs, _) = write_dev_certs(&dir.path().join("certs"), false).unwrap();
        let clock = Clock::manual(start_time());
        let api = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario: Scenario::single_tenant(tenant),
            tls: Some(TlsFiles {
                cert: certs.server_cert.clone(),
                key: certs.server_key.clone(),
            }),
            webhook_ca: Some(certs.ca.clone()),
            clock: clock.clone(),
        })
        .await
        .unwrap();
        let receiver = Receiver::start(&certs, receiver_status).await;
        let store = Arc::new(open_store(dir.path(), &clock).await);
        Harness {
            dir,
            clock,
            api,
            receiver,
            store,
            board: Arc::new(SubscriptionBoard::default()),
            problems: Arc::new(ProblemBoard::default()),
            metrics: Arc::new(Metrics::new([NAME], 10)),
        }
    }

    fn config(&self, content_types: &[&str]) -> Config {
        let certs = self.dir.path().join("certs");
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"

[store]
path = "{store}"

[api]
login_url = "{base}"
api_url = "{base}"
ca_file = "{ca}"

[[tenants]]
name = "{NAME}"
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = {{ env = "TEST_SECRET" }}
content_types = {content_types:?}
"#,
            store = self.dir.path().join("store").display(),
            base = self.api.base_url(),
            ca = certs.join("ca.pem").display(),
        );
        Config::from_toml_with_env(&text, [("TEST_SECRET".to_string(), SECRET.to_string())])
            .unwrap()
    }

    async fn tenant(&self, content_types: &[&str]) -> Arc<Tenant> {
        let config = self.config(content_types);
        let http = http_client(&config.api, None).unwrap();
        let tenants = build_tenants(&config, &http, &self.clock, &self.metrics)
            .await
            .unwrap();
        tenants[TENANT].clone()
    }

    fn context(&self, stop_removed: bool) -> SubscriptionContext {
        SubscriptionContext {
            meta: self.store.clone() as Arc<dyn MetaStore>,
            board: self.board.clone(),
            problems: self.problems.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            settings: SubscriptionSettings {
                stop_removed,
                ..SubscriptionSettings::default()
            },
        }
    }

    /// A manager for `content_types` registering the receiver with `auth_id`.
    async fn manager(&self, content_types: &[&str], auth_id: &str) -> SubscriptionManager {
        SubscriptionManager::new(
            self.tenant(content_types).await,
            Some(self.receiver.registration(auth_id)),
            self.context(false),
        )
    }

    fn advance_minutes(&self, minutes: i64) {
        self.clock.advance(Duration::minutes(minutes));
    }

    /// `/subscriptions/{operation}` requests the emulator answered.
    fn requests(&self, operation: &str) -> usize {
        let suffix = format!("/subscriptions/{operation}");
        self.api
            .state()
            .inspection()
            .requests
            .iter()
            .filter(|request| request.endpoint.ends_with(&suffix))
            .count()
    }

    fn enabled(&self, content_type: &str) -> bool {
        self.api
            .state()
            .feed
            .enabled_subscriptions()
            .contains(&(TENANT.to_string(), content_type.to_string()))
    }

    fn active_auth_id(&self, content_type: &str) -> Option<String> {
        self.api
            .state()
            .feed
            .active_webhook(TENANT, content_type)
            .map(|webhook| webhook.auth_id.unwrap_or_default())
    }

    fn starts_counted(&self, content_type: &str, outcome: &str) -> bool {
        let line = format!(
            "o365_connector_subscription_starts_total{{tenant=\"{NAME}\",content_type=\"{content_type}\",outcome=\"{outcome}\"}} "
        );
        self.metrics.encode().lines().any(|text| {
            text.strip_prefix(&line)
                .is_some_and(|count| count.trim() != "0")
        })
    }

    async fn shutdown(self) {
        self.receiver
            .handle
            .graceful_shutdown(Some(std::time::Duration::from_secs(1)));
        let _ = self.store.close().await;
        self.api.shutdown().await;
    }
}

async fn open_store(dir: &Path, clock: &Clock) -> EmbeddedQueue {
    let path = dir.join("store");
    std::fs::create_dir_all(&path).unwrap();
    EmbeddedQueue::open(&path, clock.clone()).await.unwrap()
}

fn tenant_scenario() -> TenantScenario {
    TenantScenario::with_secret(TENANT, CLIENT, SECRET)
}

fn entry<'a>(entries: &'a [SubscriptionEntry], content_type: &str) -> &'a SubscriptionEntry {
    entries
        .iter()
        .find(|entry| entry.content_type == content_type)
        .unwrap_or_else(|| panic!("no entry for {content_type}: {entries:?}"))
}

#[tokio::test]
async fn a_second_start_waits_fifteen_minutes_even_across_a_restart() {
    let mut harness = Harness::start(tenant_scenario(), StatusCode::OK).await;
    let manager = harness.manager(&[EXCHANGE], "auth").await;
    manager.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), 1);
    assert!(harness.enabled(EXCHANGE));

    let client = manager_client(&harness).await;
    client.stop_subscription(EXCHANGE).await.unwrap();
    harness.advance_minutes(5);
    let report = manager.check_once().await.unwrap();
    assert_eq!(
        harness.requests("start"),
        1,
        "no second start within 15 minutes"
    );
    let waiting = entry(&report.entries, EXCHANGE);
    assert_eq!(waiting.subscription, SubscriptionState::Disabled);
    assert_eq!(report.next_check, start_time() + Duration::minutes(15));

    // A restart: a new manager over the same store, reopened.
    drop(manager);
    harness.store.close().await.unwrap();
    harness.store = Arc::new(open_store(harness.dir.path(), &harness.clock).await);
    let restarted = harness.manager(&[EXCHANGE], "auth").await;
    harness.advance_minutes(9);
    restarted.check_once().await.unwrap();
    assert_eq!(
        harness.requests("start"),
        1,
        "remembered across the restart"
    );
    assert!(!harness.enabled(EXCHANGE));

    harness.advance_minutes(1);
    let report = restarted.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), 2);
    assert!(harness.enabled(EXCHANGE));
    assert_eq!(
        entry(&report.entries, EXCHANGE).subscription,
        SubscriptionState::Enabled
    );
    harness.shutdown().await;
}

/// A plain API client of the tenant, for steering the world as an admin would.
async fn manager_client(harness: &Harness) -> Arc<o365_connector::api::ApiClient> {
    harness.tenant(&[EXCHANGE]).await.client.clone()
}

#[tokio::test]
async fn webhook_not_validated_starts_poll_only_and_adds_the_webhook_hourly_once_it_validates() {
    let harness = Harness::start(tenant_scenario(), StatusCode::INTERNAL_SERVER_ERROR).await;
    let manager = harness.manager(&[EXCHANGE], "auth").await;
    let report = manager.check_once().await.unwrap();
    let deferred = entry(&report.entries, EXCHANGE);
    assert_eq!(deferred.subscription, SubscriptionState::Enabled);
    assert_eq!(deferred.webhook, WebhookState::Deferred);
    assert!(harness.enabled(EXCHANGE), "started without the webhook");
    assert_eq!(harness.active_auth_id(EXCHANGE), None);
    assert!(harness.starts_counted(EXCHANGE, "webhook_not_validated"));
    assert!(harness.starts_counted(EXCHANGE, "poll_only"));
    assert!(
        harness
            .metrics
            .encode()
            .contains("o365_connector_webhooks_deferred 1")
    );
    let problems = harness.problems.snapshot();
    let ((_, _), problem) = problems
        .iter()
        .find(|((tenant, content_type), _)| tenant == NAME && content_type == EXCHANGE)
        .expect("the deferred webhook is shown as a problem");
    assert_eq!(problem.kind, "webhook_deferred");
    assert!(
        problem
            .message
            .contains(&harness.receiver.registration("auth").address)
    );
    assert!(problem.advice.contains("public_url"), "{}", problem.advice);

    // Polling collects meanwhile: content is listed.
    let now = harness.clock.now();
    publish::publish_now(harness.api.state(), TENANT, EXCHANGE, 2).await;
    let client = manager_client(&harness).await;
    let page = client
        .list_content(
            EXCHANGE,
            now - Duration::hours(1),
            now + Duration::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);

    // The receiver is fixed; the webhook is retried only after an hour.
    harness.receiver.answer(StatusCode::OK);
    let starts = harness.requests("start");
    for minutes in [1, 30, 28] {
        harness.advance_minutes(minutes);
        let report = manager.check_once().await.unwrap();
        assert_eq!(
            entry(&report.entries, EXCHANGE).webhook,
            WebhookState::Deferred
        );
    }
    assert_eq!(
        harness.requests("start"),
        starts,
        "no retry within the hour"
    );
    harness.advance_minutes(1);
    let report = manager.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), starts + 1);
    assert_eq!(
        entry(&report.entries, EXCHANGE).webhook,
        WebhookState::Enabled
    );
    assert_eq!(harness.active_auth_id(EXCHANGE).as_deref(), Some("auth"));
    assert!(
        harness
            .metrics
            .encode()
            .contains("o365_connector_webhooks_deferred 0")
    );
    assert!(harness.problems.snapshot().is_empty());
    harness.shutdown().await;
}

#[tokio::test]
async fn a_null_webhook_right_after_a_start_is_pending_not_started_again() {
    let mut tenant = tenant_scenario();
    tenant.faults = FaultScenario {
        webhook_pending_secs: 20 * 60,
        ..FaultScenario::default()
    };
    let harness = Harness::start(tenant, StatusCode::OK).await;
    let manager = harness.manager(&[EXCHANGE], "auth").await;
    manager.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), 1);
    for minutes in [1, 4, 4] {
        harness.advance_minutes(minutes);
        let report = manager.check_once().await.unwrap();
        let pending = entry(&report.entries, EXCHANGE);
        assert_eq!(pending.webhook, WebhookState::Pending);
        assert_eq!(report.next_check, start_time() + Duration::minutes(10));
    }
    assert_eq!(
        harness.requests("start"),
        1,
        "no start during the grace period"
    );
    // Past the grace period (and the spacing) a still-null webhook is missing: one start,
    // which Microsoft answers AF20024 (nothing changed), a success.
    harness.advance_minutes(7);
    let report = manager.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), 2);
    assert!(harness.starts_counted(EXCHANGE, "already_enabled"));
    assert_eq!(entry(&report.entries, EXCHANGE).last_error, None);
    harness.shutdown().await;
}

#[tokio::test]
async fn an_expired_webhook_is_started_again() {
    let harness = Harness::start(tenant_scenario(), StatusCode::OK).await;
    let client = manager_client(&harness).await;
    let expiring = WebhookRegistration {
        expiration: (harness.clock.now() + Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string(),
        ..harness.receiver.registration("auth")
    };
    client
        .start_subscription(EXCHANGE, Some(&expiring))
        .await
        .unwrap();
    harness.advance_minutes(61);
    assert_eq!(harness.active_auth_id(EXCHANGE), None, "expired");
    let manager = harness.manager(&[EXCHANGE], "auth").await;
    let report = manager.check_once().await.unwrap();
    assert_eq!(
        entry(&report.entries, EXCHANGE).webhook,
        WebhookState::Enabled
    );
    assert_eq!(harness.active_auth_id(EXCHANGE).as_deref(), Some("auth"));
    harness.advance_minutes(60 * 24);
    assert_eq!(
        harness.active_auth_id(EXCHANGE).as_deref(),
        Some("auth"),
        "registered without expiration"
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_rotated_auth_id_restarts_the_subscription_with_the_new_one() {
    let harness = Harness::start(tenant_scenario(), StatusCode::OK).await;
    let before = harness.manager(&[EXCHANGE], "old-auth-id").await;
    before.check_once().await.unwrap();
    assert_eq!(
        harness.active_auth_id(EXCHANGE).as_deref(),
        Some("old-auth-id")
    );

    let rotated = harness.manager(&[EXCHANGE], "new-auth-id").await;
    harness.advance_minutes(1);
    let report = rotated.check_once().await.unwrap();
    assert_eq!(
        entry(&report.entries, EXCHANGE).webhook,
        WebhookState::Outdated
    );
    assert_eq!(
        harness.requests("start"),
        1,
        "the spacing holds for rotation too"
    );
    harness.advance_minutes(14);
    let report = rotated.check_once().await.unwrap();
    assert_eq!(harness.requests("start"), 2);
    assert_eq!(
        entry(&report.entries, EXCHANGE).webhook,
        WebhookState::Enabled
    );
    assert_eq!(
        harness.active_auth_id(EXCHANGE).as_deref(),
        Some("new-auth-id")
    );
    harness.shutdown().await;
}

#[tokio::test]
async fn a_content_type_without_its_permission_fails_alone_with_advice() {
    let mut tenant = tenant_scenario();
    tenant.roles = vec![ROLE_READ.to_string()];
    let harness = Harness::start(tenant, StatusCode::OK).await;
    let manager = harness.manager(&ALL, "auth").await;
    let report = manager.check_once().await.unwrap();
    for content_type in ALL.iter().filter(|ct| **ct != "DLP.All") {
        let started = entry(&report.entries, content_type);
        assert_eq!(started.subscription, SubscriptionState::Enabled);
        assert_eq!(started.webhook, WebhookState::Enabled);
        assert_eq!(
            harness.active_auth_id(content_type).as_deref(),
            Some("auth")
        );
    }
    let dlp = entry(&report.entries, "DLP.All");
    assert_eq!(dlp.subscription, SubscriptionState::Missing);
    assert!(
        dlp.last_error
            .as_deref()
            .is_some_and(|error| error.contains("AF10001")),
        "{dlp:?}"
    );
    assert!(harness.starts_counted("DLP.All", "failed"));
    let problems = harness.problems.snapshot();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let ((tenant, content_type), problem) = &problems[0];
    assert_eq!((tenant.as_str(), content_type.as_str()), (NAME, "DLP.All"));
    assert!(
        problem.advice.contains("ActivityFeed.ReadDlp"),
        "{problem:?}"
    );
    let board = harness.board.get(NAME, "DLP.All").unwrap();
    assert_eq!(board.subscription, SubscriptionState::Missing);
    harness.shutdown().await;
}

#[tokio::test]
async fn content_types_removed_from_the_config_are_stopped_only_when_asked() {
    let harness = Harness::start(tenant_scenario(), StatusCode::OK).await;
    let both = harness.manager(&[EXCHANGE, GENERAL], "auth").await;
    both.check_once().await.unwrap();
    assert!(harness.enabled(EXCHANGE) && harness.enabled(GENERAL));

    let tenant = harness.tenant(&[EXCHANGE]).await;
    let registration = Some(harness.receiver.registration("auth"));
    let keeping =
        SubscriptionManager::new(tenant.clone(), registration.clone(), harness.context(false));
    keeping.check_once().await.unwrap();
    assert_eq!(harness.requests("stop"), 0);
    assert!(harness.enabled(GENERAL), "stop_removed off: left as it was");

    let stopping = SubscriptionManager::new(tenant, registration, harness.context(true));
    stopping.check_once().await.unwrap();
    assert_eq!(harness.requests("stop"), 1);
    assert!(!harness.enabled(GENERAL), "stop_removed on: stopped");
    assert!(harness.enabled(EXCHANGE));
    stopping.check_once().await.unwrap();
    assert_eq!(
        harness.requests("stop"),
        1,
        "a disabled one is not stopped again"
    );
    harness.shutdown().await;
}

/// A MetaStore in memory, for a manager beside a running service (whose store is locked).
#[derive(Default)]
struct MemoryMeta(std::sync::Mutex<HashMap<String, Vec<u8>>>);

#[async_trait]
impl MetaStore for MemoryMeta {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self.0.lock().unwrap().get(key).cloned())
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), QueueError> {
        self.0.lock().unwrap().insert(key.to_string(), value);
        Ok(())
    }
}

#[tokio::test]
async fn a_webhook_disabled_mid_run_is_re_enabled_by_the_next_check_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, EXCHANGE, 2).await;
    rig.wait_for_every_published_record().await;

    let service = rig.service.as_ref().unwrap();
    // The service's own manager reports every subscription to /status, once its check
    // (paced by the tenant's request budget) has seen them all.
    let enabled = (Some("enabled".to_string()), Some("enabled".to_string()));
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = service.status.report().await;
        let reported: Vec<(Option<String>, Option<String>)> = status.tenants[0]
            .content_types
            .iter()
            .map(|content_type| {
                (
                    content_type.subscription.clone(),
                    content_type.webhook.clone(),
                )
            })
            .collect();
        if reported == vec![enabled.clone(); 5] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/status never showed every subscription and webhook enabled: {:#?}",
            status.tenants[0]
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let registered = rig
        .api
        .state()
        .feed
        .active_webhook(TENANT, EXCHANGE)
        .unwrap();
    let control = common::client_trusting(&rig.certs.ca);
    let answer = control
        .post(format!("{}/_emulator/control", rig.api.base_url()))
        .json(&serde_json::json!({"disable_webhook": {"tenant": TENANT, "content_type": EXCHANGE}}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(
        rig.api
            .state()
            .feed
            .active_webhook(TENANT, EXCHANGE)
            .is_none()
    );

    let metrics = Arc::new(Metrics::new([common::rig::GROUP], 10));
    let manager = SubscriptionManager::new(
        service.tenants.get(TENANT).unwrap(),
        Some(WebhookRegistration {
            address: registered.address.clone(),
            auth_id: registered.auth_id.clone().unwrap(),
            expiration: String::new(),
        }),
        SubscriptionContext {
            meta: Arc::new(MemoryMeta::default()),
            board: Arc::new(SubscriptionBoard::default()),
            problems: Arc::new(ProblemBoard::default()),
            metrics: metrics.clone(),
            clock: Clock::system(),
            settings: SubscriptionSettings::default(),
        },
    );
    let report = manager.check_once().await.unwrap();
    assert_eq!(
        entry(&report.entries, EXCHANGE).webhook,
        WebhookState::Enabled
    );
    assert_eq!(
        rig.api.state().feed.active_webhook(TENANT, EXCHANGE),
        Some(registered),
        "re-enabled with the same address and authId"
    );
    let text = metrics.encode();
    let started: Vec<&str> = text
        .lines()
        .filter(|line| {
            line.starts_with("o365_connector_subscription_starts_total{") && !line.ends_with(" 0")
        })
        .collect();
    assert_eq!(
        started.len(),
        1,
        "only the disabled one was started: {started:?}"
    );
    assert!(started[0].contains(EXCHANGE));

    publish::publish_now(rig.api.state(), TENANT, EXCHANGE, 2).await;
    rig.wait_for_every_published_record().await;
    assert_eq!(rig.published().len(), 40);
    rig.shutdown().await;
}

#[tokio::test]
async fn webhook_not_validated_leaves_an_enabled_subscription_as_it_was() {
    let harness = Harness::start(tenant_scenario(), StatusCode::OK).await;
    let manager = harness.manager(&[EXCHANGE], "auth").await;
    manager.check_once().await.unwrap();
    assert_eq!(harness.active_auth_id(EXCHANGE).as_deref(), Some("auth"));

    harness.api.state().feed.disable_webhook(TENANT, EXCHANGE);
    harness.receiver.answer(StatusCode::INTERNAL_SERVER_ERROR);
    harness.advance_minutes(15);
    let report = manager.check_once().await.unwrap();
    assert_eq!(
        harness.requests("start"),
        2,
        "one start, no poll-only fallback"
    );
    let deferred = entry(&report.entries, EXCHANGE);
    assert_eq!(deferred.subscription, SubscriptionState::Enabled);
    assert_eq!(deferred.webhook, WebhookState::Deferred);
    assert!(harness.enabled(EXCHANGE), "still enabled: polling collects");
    assert!(!harness.starts_counted(EXCHANGE, "poll_only"));
    let listed = manager_client(&harness)
        .await
        .list_subscriptions()
        .await
        .unwrap();
    let webhook = listed[0].webhook.as_ref().expect("the webhook is kept");
    assert_eq!(webhook.status.as_deref(), Some("disabled"));
    harness.shutdown().await;
}

#[tokio::test]
async fn claims_from_outside_the_manager_keep_the_same_spacing() {
    let meta = MemoryMeta::default();
    let now = start_time();
    assert!(
        claim_start(&meta, TENANT, EXCHANGE, true, now)
            .await
            .unwrap()
    );
    let early = now + Duration::minutes(14);
    assert!(
        !claim_start(&meta, TENANT, EXCHANGE, true, early)
            .await
            .unwrap()
    );
    assert!(
        claim_start(&meta, TENANT, GENERAL, true, early)
            .await
            .unwrap(),
        "each content type has its own spacing"
    );
    let later = now + Duration::minutes(15);
    assert!(
        claim_start(&meta, TENANT, EXCHANGE, false, later)
            .await
            .unwrap()
    );
}

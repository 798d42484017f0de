//! Publication, webhook delivery and `/_emulator/*` of the Management API emulator, over
//! real sockets: the emulator on plain HTTP, a webhook receiver on real TLS signed by the
//! development CA the emulator is told to trust (`webhook_ca`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum_server::tls_rustls::RustlsConfig;
use chrono::{DateTime, Utc};
use o365_connector::clock::Clock;
use o365_connector::emulator::api::scenario::Scenario;
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const AUTH_ID: &str = "o365activityapinotification";
const DEADLINE: Duration = Duration::from_secs(15);

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn start_time() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
        .expect("valid time")
        .with_timezone(&Utc)
}

/// Polls `condition` until it holds; panics naming `what` after the deadline.
async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- webhook receiver

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    fn is_validation(&self) -> bool {
        self.headers.contains_key("webhook-validationcode")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    fn content_ids(&self) -> Vec<String> {
        let items = self.json();
        let items = items.as_array().expect("a notification is an array");
        items
            .iter()
            .map(|item| item["contentId"].as_str().expect("contentId").to_string())
            .collect()
    }
}

/// What the receiver answers and what it got.
#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    validation_status: AtomicU16,
    notification_status: AtomicU16,
    /// Answered to notifications first, in order, before `notification_status`.
    scripted: Mutex<VecDeque<u16>>,
}

async fn receive(
    State(receiver): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let request = Received { headers, body };
    let status = if request.is_validation() {
        receiver.validation_status.load(Ordering::SeqCst)
    } else {
        let scripted = receiver.scripted.lock().unwrap().pop_front();
        scripted.unwrap_or_else(|| receiver.notification_status.load(Ordering::SeqCst))
    };
    receiver.received.lock().unwrap().push(request);
    StatusCode::from_u16(status).unwrap()
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    /// An HTTPS receiver with the development server certificate.
    async fn start(certs: &o365_connector::server::dev_certs::DevCertPaths) -> Self {
        let state = Arc::new(ReceiverState::default());
        state.validation_status.store(200, Ordering::SeqCst);
        state.notification_status.store(200, Ordering::SeqCst);
        let app = axum::Router::new()
            .route("/o365/notify", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls =
            o365_connector::server::server_config(&certs.server_cert, &certs.server_key).unwrap();
        let config = RustlsConfig::from_config(Arc::new(tls));
        let server = axum_server::from_tcp_rustls(listener, config).unwrap();
        tokio::spawn(server.serve(app.into_make_service()));
        Self {
            url: format!("https://127.0.0.1:{port}/o365/notify"),
            state,
        }
    }

    fn all(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    fn validations(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(Received::is_validation)
            .collect()
    }

    fn notifications(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|request| !request.is_validation())
            .collect()
    }

    /// How many times each contentId was notified.
    fn notified_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for notification in self.notifications() {
            for content_id in notification.content_ids() {
                *counts.entry(content_id).or_default() += 1;
            }
        }
        counts
    }
}

// ---------------------------------------------------------------- the world

struct World {
    emulator: ApiEmulator,
    receiver: Receiver,
    http: reqwest::Client,
    token: String,
    _certs: tempfile::TempDir,
}

/// Scenario options of one test.
struct Setup {
    records: Option<PathBuf>,
    records_per_blob: usize,
    blobs_per_second: f64,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            records: None,
            records_per_blob: 2,
            blobs_per_second: 0.0,
        }
    }
}

impl World {
    async fn start(setup: Setup) -> Self {
        let certs_dir = tempfile::tempdir().unwrap();
        let (certs, _) =
            o365_connector::server::dev_certs::write_dev_certs(certs_dir.path(), false).unwrap();
        let receiver = Receiver::start(&certs).await;
        let records = match &setup.records {
            Some(path) => format!("records = {:?}", path.display().to_string()),
            None => String::new(),
        };
        let toml = format!(
            r#"
            [[tenants]]
            tenant_id = "{TENANT}"
            client_id = "{CLIENT}"
            client_secret = "not-a-real-secret-1"
            [tenants.publication]
            {records}
            records_per_blob = {}
            blobs_per_second = {}
            "#,
            setup.records_per_blob, setup.blobs_per_second
        );
        let scenario: Scenario = toml::from_str(&toml).unwrap();
        scenario.validate().unwrap();
        let emulator = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario,
            tls: None,
            webhook_ca: Some(certs.ca.clone()),
            clock: Clock::manual(start_time()),
        })
        .await
        .unwrap();
        let state = emulator.state();
        let roles = vec![
            "ActivityFeed.Read".to_string(),
            "ActivityFeed.ReadDlp".to_string(),
        ];
        let token = state
            .tokens
            .issue_access_token(&state.clock, TENANT, CLIENT, emulator.base_url(), &roles)
            .access_token;
        Self {
            emulator,
            receiver,
            http: reqwest::Client::new(),
            token,
            _certs: certs_dir,
        }
    }

    fn feed_url(&self, operation: &str) -> String {
        format!(
            "{}/api/v1.0/{TENANT}/activity/feed/{operation}",
            self.emulator.base_url()
        )
    }

    async fn start_subscription(&self, content_type: &str, webhook: Option<Value>) -> (u16, Value) {
        let url = self.feed_url(&format!("subscriptions/start?contentType={content_type}"));
        let mut request = self.http.post(url).bearer_auth(&self.token);
        if let Some(webhook) = webhook {
            request = request.json(&json!({ "webhook": webhook }));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn subscribe_with_webhook(&self, content_type: &str) {
        let webhook = json!({"address": self.receiver.url, "authId": AUTH_ID});
        let (status, body) = self.start_subscription(content_type, Some(webhook)).await;
        assert_eq!(status, 200, "start answered {body}");
    }

    async fn subscriptions(&self) -> Vec<Value> {
        let response = self
            .http
            .get(self.feed_url("subscriptions/list"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Vec<Value>>().await.unwrap()
    }

    async fn webhook_status(&self, content_type: &str) -> Option<String> {
        let subscriptions = self.subscriptions().await;
        let subscription = subscriptions
            .iter()
            .find(|item| item["contentType"] == content_type)?;
        subscription["webhook"]["status"]
            .as_str()
            .map(str::to_string)
    }

    /// `/subscriptions/notifications` around the start time.
    async fn notifications_listed(&self, content_type: &str) -> Vec<Value> {
        let operation = format!(
            "subscriptions/notifications?contentType={content_type}\
             &startTime=2026-11-26T11:00:00&endTime=2026-11-26T13:00:00"
        );
        let response = self
            .http
            .get(self.feed_url(&operation))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Vec<Value>>().await.unwrap()
    }

    async fn control(&self, command: Value) -> (u16, Value) {
        let url = format!("{}/_emulator/control", self.emulator.base_url());
        let response = self.http.post(url).json(&command).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// Publishes through the control route; returns the entries.
    async fn publish(&self, content_type: &str, blobs: usize) -> Vec<Value> {
        let command =
            json!({"publish": {"tenant": TENANT, "content_type": content_type, "blobs": blobs}});
        let (status, body) = self.control(command).await;
        assert_eq!(status, 200, "publish answered {body}");
        body["entries"].as_array().unwrap().clone()
    }

    async fn ndjson(&self, path: &str) -> Vec<Value> {
        let url = format!("{}{path}", self.emulator.base_url());
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "application/x-ndjson"
        );
        let text = response.text().await.unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    async fn published(&self) -> Vec<Value> {
        self.ndjson("/_emulator/published").await
    }

    fn fast_retries(&self, max_failures: u32) -> Value {
        json!({"delivery_policy": {"base_delay_ms": 10, "max_delay_ms": 40, "max_failures": max_failures}})
    }
}

fn content_id(entry: &Value) -> String {
    entry["contentId"].as_str().unwrap().to_string()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Each non-empty line of a fixture file, without its line ending.
fn fixture_lines(path: &Path) -> Vec<Vec<u8>> {
    let content = std::fs::read(path).unwrap();
    content
        .split(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .filter(|line| !line.is_empty())
        .collect()
}

// ---------------------------------------------------------------- validation

#[tokio::test]
async fn validation_request_carries_microsofts_headers_and_code_and_200_creates_the_webhook() {
    let world = World::start(Setup::default()).await;
    world.subscribe_with_webhook("Audit.SharePoint").await;

    let validations = world.receiver.validations();
    assert_eq!(validations.len(), 1);
    let validation = &validations[0];
    assert_eq!(
        validation.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(validation.header("webhook-authid"), Some(AUTH_ID));
    let code = validation.header("webhook-validationcode").unwrap();
    assert!(
        code.len() >= 16,
        "validation code {code:?} is too guessable"
    );
    assert_eq!(validation.json(), json!({ "validationCode": code }));
    let user_agent = validation.header("user-agent").unwrap_or_default();
    assert!(
        user_agent.contains("Microsoft"),
        "user agent {user_agent:?}"
    );
    assert!(!user_agent.to_ascii_lowercase().contains("o365-connector"));
    assert_eq!(
        world.webhook_status("Audit.SharePoint").await.as_deref(),
        Some("enabled")
    );
}

#[tokio::test]
async fn validation_codes_differ_and_auth_id_is_absent_when_not_set() {
    let world = World::start(Setup::default()).await;
    let publisher = &world.emulator.state().publisher;
    assert!(publisher.validate_webhook(&world.receiver.url, None).await);
    assert!(publisher.validate_webhook(&world.receiver.url, None).await);
    let validations = world.receiver.validations();
    assert_eq!(validations.len(), 2);
    assert!(validations[0].header("webhook-authid").is_none());
    assert_ne!(
        validations[0].header("webhook-validationcode"),
        validations[1].header("webhook-validationcode")
    );
}

#[tokio::test]
async fn validation_answered_non_200_fails_start_with_af20021_and_creates_nothing() {
    let world = World::start(Setup::default()).await;
    world
        .receiver
        .state
        .validation_status
        .store(202, Ordering::SeqCst);
    let webhook = json!({"address": world.receiver.url, "authId": AUTH_ID});
    let (status, body) = world
        .start_subscription("Audit.Exchange", Some(webhook))
        .await;
    assert_eq!(status, 400, "start answered {body}");
    assert_eq!(body["error"]["code"], "AF20021");
    assert_eq!(world.receiver.validations().len(), 1);
    let subscriptions = world.subscriptions().await;
    assert!(
        subscriptions
            .iter()
            .all(|item| item["contentType"] != "Audit.Exchange"),
        "no subscription may exist after a failed validation: {subscriptions:?}"
    );
}

#[tokio::test]
async fn plain_http_webhook_is_never_called() {
    let world = World::start(Setup::default()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU16::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let address = format!("http://127.0.0.1:{port}/o365/notify");
    let publisher = &world.emulator.state().publisher;
    assert!(!publisher.validate_webhook(&address, Some(AUTH_ID)).await);
    // A connection attempt would have been accepted before validate_webhook returned.
    tokio::task::yield_now().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn webhook_signed_by_an_untrusted_ca_is_not_validated() {
    let world = World::start(Setup::default()).await;
    let other_dir = tempfile::tempdir().unwrap();
    let (other_certs, _) =
        o365_connector::server::dev_certs::write_dev_certs(other_dir.path(), false).unwrap();
    let stranger = Receiver::start(&other_certs).await;
    let publisher = &world.emulator.state().publisher;
    assert!(!publisher.validate_webhook(&stranger.url, None).await);
    assert!(
        stranger.all().is_empty(),
        "no request may pass the handshake"
    );
}

// ---------------------------------------------------------------- notifications

#[tokio::test]
async fn notifications_carry_microsofts_headers_and_the_documented_item_shape() {
    let world = World::start(Setup::default()).await;
    world.subscribe_with_webhook("Audit.SharePoint").await;
    let entries = world.publish("Audit.SharePoint", 2).await;
    assert_eq!(entries.len(), 2);
    let expected: BTreeSet<String> = entries.iter().map(content_id).collect();
    wait_until("both blobs notified", || async {
        world.receiver.notified_counts().len() == 2
    })
    .await;

    let fixture: Value = serde_json::from_slice(
        &std::fs::read(fixture("ms-docs/ms_docs_notification_body.json")).unwrap(),
    )
    .unwrap();
    let fixture_keys: BTreeSet<&str> = fixture[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut notified = BTreeSet::new();
    for notification in world.receiver.notifications() {
        // Exactly Microsoft's non-standard value, not the usual `charset=utf-8`.
        assert_eq!(
            notification.header("content-type"),
            Some("application/json; utf-8")
        );
        assert_eq!(notification.header("webhook-authid"), Some(AUTH_ID));
        for item in notification.json().as_array().unwrap() {
            let keys: BTreeSet<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, fixture_keys);
            assert_eq!(item["tenantId"], TENANT);
            assert_eq!(item["clientId"], CLIENT);
            assert_eq!(item["contentType"], "Audit.SharePoint");
            let created = item["contentCreated"].as_str().unwrap();
            assert_eq!(created.len(), "2015-05-23T17:35:00.000Z".len(), "{created}");
            assert!(created.ends_with('Z'));
            let entry = entries
                .iter()
                .find(|entry| entry["contentId"] == item["contentId"]);
            assert_eq!(item["contentUri"], entry.unwrap()["contentUri"]);
            notified.insert(item["contentId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(notified, expected);
}

#[tokio::test]
async fn failed_notification_is_retried_with_backoff_until_it_succeeds() {
    let world = World::start(Setup::default()).await;
    world.control(world.fast_retries(5)).await;
    world.subscribe_with_webhook("Audit.General").await;
    world
        .receiver
        .state
        .scripted
        .lock()
        .unwrap()
        .extend([500, 503]);
    let first = content_id(&world.publish("Audit.General", 1).await[0]);
    wait_until("two failures then a success", || async {
        world.receiver.notified_counts().get(&first) == Some(&3)
    })
    .await;
    // A later blob is notified once: the success stopped the retries of the first.
    let second = content_id(&world.publish("Audit.General", 1).await[0]);
    wait_until("the second blob", || async {
        world.receiver.notified_counts().contains_key(&second)
    })
    .await;
    let counts = world.receiver.notified_counts();
    assert_eq!(counts[&first], 3);
    assert_eq!(counts[&second], 1);
    assert_eq!(
        world.webhook_status("Audit.General").await.as_deref(),
        Some("enabled")
    );
    let attempts: Vec<Value> = world
        .notifications_listed("Audit.General")
        .await
        .into_iter()
        .filter(|item| item["contentId"] == first.as_str())
        .map(|item| item["notificationStatus"].clone())
        .collect();
    assert_eq!(
        attempts,
        vec![json!("failed"), json!("failed"), json!("success")]
    );
}

#[tokio::test]
async fn webhook_is_disabled_after_max_consecutive_failures_and_content_stays_listed() {
    let world = World::start(Setup::default()).await;
    world.control(world.fast_retries(3)).await;
    world.subscribe_with_webhook("Audit.Exchange").await;
    world
        .receiver
        .state
        .notification_status
        .store(500, Ordering::SeqCst);
    let failing = content_id(&world.publish("Audit.Exchange", 1).await[0]);
    wait_until("the webhook disabled", || async {
        world.webhook_status("Audit.Exchange").await.as_deref() == Some("disabled")
    })
    .await;
    assert_eq!(world.receiver.notified_counts()[&failing], 3);

    // Disabled: content is still published (listable) but not notified.
    let silent = world.publish("Audit.Exchange", 1).await;
    assert_eq!(silent.len(), 1, "content keeps being published");
    let silent = content_id(&silent[0]);

    // Re-enabling with /start (validation 200) resumes notifications for new content.
    world
        .receiver
        .state
        .notification_status
        .store(200, Ordering::SeqCst);
    world.subscribe_with_webhook("Audit.Exchange").await;
    let resumed = content_id(&world.publish("Audit.Exchange", 1).await[0]);
    wait_until("the re-enabled webhook notified", || async {
        world.receiver.notified_counts().contains_key(&resumed)
    })
    .await;
    let counts = world.receiver.notified_counts();
    assert!(
        !counts.contains_key(&silent),
        "a disabled webhook got {silent}"
    );
    assert_eq!(counts[&failing], 3, "retries must stop at disablement");
}

#[tokio::test]
async fn duplicate_notifications_fault_delivers_each_content_id_twice() {
    let world = World::start(Setup::default()).await;
    world.subscribe_with_webhook("Audit.SharePoint").await;
    let (status, body) = world
        .control(json!({"faults": {"tenant": TENANT, "duplicate_notifications": true}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let entries = world.publish("Audit.SharePoint", 2).await;
    wait_until("each blob notified twice", || async {
        let counts = world.receiver.notified_counts();
        entries
            .iter()
            .all(|entry| counts.get(&content_id(entry)) == Some(&2))
    })
    .await;
}

#[tokio::test]
async fn webhook_delivery_off_sends_no_notification() {
    let world = World::start(Setup::default()).await;
    world.subscribe_with_webhook("Audit.SharePoint").await;
    world
        .control(json!({"faults": {"webhook_delivery_off": true}}))
        .await;
    let unsent = content_id(&world.publish("Audit.SharePoint", 1).await[0]);
    world.control(json!({"faults": {}})).await;
    let sent = content_id(&world.publish("Audit.SharePoint", 1).await[0]);
    wait_until("the blob published after delivery resumed", || async {
        world.receiver.notified_counts().contains_key(&sent)
    })
    .await;
    assert!(!world.receiver.notified_counts().contains_key(&unsent));
}

#[tokio::test]
async fn disable_webhook_command_disables_it() {
    let world = World::start(Setup::default()).await;
    world.subscribe_with_webhook("DLP.All").await;
    let command = json!({"disable_webhook": {"tenant": TENANT, "content_type": "DLP.All"}});
    let (status, body) = world.control(command).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        world.webhook_status("DLP.All").await.as_deref(),
        Some("disabled")
    );
}

// ---------------------------------------------------------------- records

#[tokio::test]
async fn published_records_are_the_files_lines_byte_exact_and_cycle() {
    let file = fixture("events/04-sharepoint.ndjson");
    let setup = Setup {
        records: Some(file.clone()),
        records_per_blob: 3,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    let (status, body) = world.start_subscription("Audit.SharePoint", None).await;
    assert_eq!(status, 200, "{body}");
    let entries = world.publish("Audit.SharePoint", 3).await;
    assert_eq!(entries.len(), 3);

    let lines = fixture_lines(&file);
    assert_eq!(lines.len(), 4);
    let published = world.published().await;
    assert_eq!(published.len(), 9);
    for (position, record) in published.iter().enumerate() {
        let line = &lines[position % lines.len()];
        assert_eq!(record["sha256"], sha256_hex(line), "record {position}");
        assert_eq!(record["index"], position % 3);
        assert_eq!(record["tenantId"], TENANT);
        assert_eq!(record["contentType"], "Audit.SharePoint");
        let entry = &entries[position / 3];
        assert_eq!(record["contentId"], entry["contentId"]);
        assert_eq!(record["contentUri"], entry["contentUri"]);
        let parsed: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(record["recordId"], parsed["Id"]);
    }
}

#[tokio::test]
async fn a_line_that_is_not_json_is_published_as_is() {
    let file = fixture("events/invalid-json-record.ndjson");
    let setup = Setup {
        records: Some(file.clone()),
        records_per_blob: 2,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    world.start_subscription("Audit.General", None).await;
    world.publish("Audit.General", 1).await;
    let line = &fixture_lines(&file)[0];
    assert!(serde_json::from_slice::<Value>(line).is_err());
    let published = world.published().await;
    assert_eq!(published.len(), 2);
    for record in published {
        assert_eq!(record["sha256"], sha256_hex(line));
        assert_eq!(record["recordId"], Value::Null);
    }
}

#[tokio::test]
async fn nothing_is_published_without_a_subscription_and_no_record_is_skipped() {
    let file = fixture("events/04-sharepoint.ndjson");
    let setup = Setup {
        records: Some(file.clone()),
        records_per_blob: 1,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    assert!(world.publish("Audit.SharePoint", 2).await.is_empty());
    assert!(world.published().await.is_empty());

    world.start_subscription("Audit.SharePoint", None).await;
    world.publish("Audit.SharePoint", 1).await;
    let published = world.published().await;
    assert_eq!(published.len(), 1);
    assert_eq!(published[0]["sha256"], sha256_hex(&fixture_lines(&file)[0]));
}

#[tokio::test]
async fn synthetic_records_have_unique_guid_ids() {
    let setup = Setup {
        records_per_blob: 10,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    world
        .start_subscription("Audit.AzureActiveDirectory", None)
        .await;
    world.publish("Audit.AzureActiveDirectory", 3).await;
    let published = world.published().await;
    assert_eq!(published.len(), 30);
    let ids: BTreeSet<&str> = published
        .iter()
        .map(|record| record["recordId"].as_str().expect("a synthetic Id"))
        .collect();
    assert_eq!(ids.len(), 30, "every Id is unique");
    assert!(
        ids.iter()
            .all(|id| id.len() == 36 && id.matches('-').count() == 4)
    );
}

#[tokio::test]
async fn blobs_served_by_the_feed_hold_the_published_bytes() {
    let file = fixture("events/22-yammer.ndjson");
    let setup = Setup {
        records: Some(file.clone()),
        records_per_blob: 2,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    world.start_subscription("Audit.General", None).await;
    let entry = world.publish("Audit.General", 1).await.remove(0);
    let blob = world
        .http
        .get(entry["contentUri"].as_str().unwrap())
        .bearer_auth(&world.token)
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    let body = blob.bytes().await.unwrap();
    for line in fixture_lines(&file) {
        // Large integers in this file would change if the record were reserialised.
        let found = body
            .windows(line.len())
            .any(|window| window == line.as_slice());
        assert!(found, "the blob must hold each record's exact bytes");
    }
}

#[tokio::test]
async fn synthetic_records_fit_their_content_type_and_tenant() {
    let world = World::start(Setup::default()).await;
    for (content_type, record_type) in [("Audit.AzureActiveDirectory", 15), ("DLP.All", 11)] {
        world.start_subscription(content_type, None).await;
        let entry = world.publish(content_type, 1).await.remove(0);
        let blob = world
            .http
            .get(entry["contentUri"].as_str().unwrap())
            .bearer_auth(&world.token)
            .send()
            .await
            .unwrap();
        let records: Vec<Value> = blob.json().await.unwrap();
        assert_eq!(records.len(), 2);
        for record in records {
            assert_eq!(record["RecordType"], record_type);
            assert_eq!(record["OrganizationId"], TENANT);
            assert_eq!(record["CreationTime"], "2026-11-26T12:00:00");
            for key in [
                "Operation",
                "UserType",
                "UserKey",
                "Workload",
                "UserId",
                "ClientIP",
            ] {
                assert!(record.get(key).is_some(), "{key} missing in {record}");
            }
        }
    }
}

#[tokio::test]
async fn unreadable_records_file_fails_the_start() {
    let missing = std::env::temp_dir().join("o365-no-such-records-file.ndjson");
    let toml = format!(
        "[[tenants]]\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\n\
         client_secret = \"x\"\n[tenants.publication]\nrecords = {:?}\n",
        missing.display().to_string()
    );
    let scenario: Scenario = toml::from_str(&toml).unwrap();
    let started = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock: Clock::manual(start_time()),
    })
    .await;
    let error = started.err().expect("the start must fail").to_string();
    assert!(error.contains("o365-no-such-records-file"), "{error}");
}

#[tokio::test]
async fn rate_loop_publishes_blobs_for_subscribed_content_types() {
    let setup = Setup {
        records_per_blob: 1,
        blobs_per_second: 50.0,
        ..Setup::default()
    };
    let world = World::start(setup).await;
    world.start_subscription("Audit.Exchange", None).await;
    let subscribed = Instant::now();
    wait_until("three blobs published by the rate loop", || async {
        world.published().await.len() >= 3
    })
    .await;
    // Three blobs at 50 per second need at least two 20 ms periods after subscribing.
    assert!(
        subscribed.elapsed() >= Duration::from_millis(30),
        "rate exceeded"
    );
    let published = world.published().await;
    assert!(
        published
            .iter()
            .all(|record| record["contentType"] == "Audit.Exchange")
    );
}

// ---------------------------------------------------------------- control and inspection

#[tokio::test]
async fn clock_commands_move_the_content_created_of_later_blobs() {
    let world = World::start(Setup::default()).await;
    world.start_subscription("Audit.SharePoint", None).await;
    let created = |entries: Vec<Value>| -> DateTime<Utc> {
        let text = entries[0]["contentCreated"].as_str().unwrap().to_string();
        DateTime::parse_from_rfc3339(&text)
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(
        created(world.publish("Audit.SharePoint", 1).await),
        start_time()
    );

    let (status, _) = world.control(json!({"advance_clock_secs": 3600})).await;
    assert_eq!(status, 200);
    let later = created(world.publish("Audit.SharePoint", 1).await);
    assert_eq!(later, start_time() + chrono::Duration::hours(1));

    let (status, _) = world
        .control(json!({"set_clock": "2026-11-27T00:00:00Z"}))
        .await;
    assert_eq!(status, 200);
    let set = created(world.publish("Audit.SharePoint", 1).await);
    assert_eq!(set.to_rfc3339(), "2026-11-27T00:00:00+00:00");
}

#[tokio::test]
async fn late_content_fault_backdates_content_created() {
    let world = World::start(Setup::default()).await;
    world.start_subscription("Audit.SharePoint", None).await;
    let (status, body) = world
        .control(json!({"faults": {"tenant": TENANT, "late_content_hours": 3}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        world
            .emulator
            .state()
            .feed
            .faults(TENANT)
            .late_content_hours,
        3
    );
    let entries = world.publish("Audit.SharePoint", 1).await;
    let created = entries[0]["contentCreated"].as_str().unwrap();
    assert_eq!(created, "2026-11-26T09:00:00.000Z");
}

#[tokio::test]
async fn bad_control_commands_are_rejected_with_the_accepted_list() {
    let world = World::start(Setup::default()).await;
    let url = format!("{}/_emulator/control", world.emulator.base_url());
    let bad_bodies = [
        "not json".to_string(),
        json!({"reboot": true}).to_string(),
        json!({"faults": {"tenant": TENANT, "no_such_fault": true}}).to_string(),
        json!({"faults": {"tenant": "00000000-0000-0000-0000-000000000000"}}).to_string(),
        json!({"publish": {"tenant": TENANT, "content_type": "Audit.Nothing"}}).to_string(),
        json!({"set_clock": "yesterday"}).to_string(),
    ];
    for body in bad_bodies {
        let response = world
            .http
            .post(&url)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["ok"], false);
        assert!(!answer["error"].as_str().unwrap().is_empty());
    }
    let response = world
        .http
        .post(&url)
        .body("{\"reboot\":1}")
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("advance_clock_secs") && message.contains("publish"),
        "{message}"
    );
}

#[tokio::test]
async fn token_lifetime_command_shortens_issued_tokens() {
    let world = World::start(Setup::default()).await;
    let (status, _) = world.control(json!({"token_lifetime_secs": 60})).await;
    assert_eq!(status, 200);
    let state = world.emulator.state();
    let roles = vec!["ActivityFeed.Read".to_string()];
    let issued = state.tokens.issue_access_token(
        &state.clock,
        TENANT,
        CLIENT,
        world.emulator.base_url(),
        &roles,
    );
    assert_eq!(issued.expires_in_secs, 60);
}

#[tokio::test]
async fn requests_log_keeps_the_clients_user_agent_and_rejections_are_counted() {
    let world = World::start(Setup::default()).await;
    let response = world
        .http
        .get(world.feed_url("subscriptions/list"))
        .bearer_auth(&world.token)
        .header("user-agent", "ProofAgent/7.1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let unauthenticated = world
        .http
        .get(world.feed_url("subscriptions/list"))
        .send()
        .await
        .unwrap();
    assert!(unauthenticated.status().is_client_error());

    let requests = world.ndjson("/_emulator/requests").await;
    let listed = requests
        .iter()
        .find(|request| request["userAgent"] == "ProofAgent/7.1")
        .expect("the request is logged with its User-Agent");
    assert_eq!(listed["status"], 200);
    assert_eq!(listed["method"], "GET");
    assert_eq!(listed["tenant"], TENANT);
    assert!(
        listed["endpoint"]
            .as_str()
            .unwrap()
            .contains("subscriptions")
    );
    assert!(
        requests.iter().all(|request| !request["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("/_emulator")),
        "inspection routes are not logged"
    );

    let url = format!("{}/_emulator/rejections", world.emulator.base_url());
    let rejections: Value = world
        .http
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let total: u64 = rejections["by_rule"]
        .as_object()
        .unwrap()
        .values()
        .map(|count| count.as_u64().unwrap())
        .sum();
    assert_eq!(total, 1, "{rejections}");
    assert!(rejections["by_code"].as_object().unwrap().len() == 1);
}

//! The feed of the Management API emulator over real HTTP: subscriptions, listings,
//! blobs, throttling and fault injection, each rule checked against Microsoft's
//! documented status, code and shapes (`tests/fixtures/ms-docs`). Time-dependent rules
//! move the emulator's manual clock; webhooks are validated by a real HTTPS receiver
//! signed by the development CA the emulator trusts.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum_server::tls_rustls::RustlsConfig;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use o365_connector::clock::Clock;
use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::emulator::api::scenario::{
    FaultScenario, Scenario, TenantScenario, ThrottleResponse,
};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use serde_json::{Value, json};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const OTHER_TENANT: &str = "0b6d3c3e-1111-4222-8333-444455556666";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const PUBLISHER: &str = "46b472a7-c68e-4adf-8ade-3db49497518e";
const DEADLINE: Duration = Duration::from_secs(15);

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn ms_docs(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(&format!("ms-docs/{name}"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn records(name: &str) -> Vec<Bytes> {
    let text = std::fs::read(fixture(&format!("events/{name}"))).unwrap();
    text.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

fn utc(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn start_time() -> DateTime<Utc> {
    utc("2026-01-10T12:00:00Z")
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

fn tenant_scenario(tenant_id: &str) -> TenantScenario {
    TenantScenario {
        tenant_id: tenant_id.to_string(),
        domain: None,
        client_id: CLIENT.to_string(),
        client_secret: Some("feed-test-secret".to_string()),
        secret_expired: false,
        certificate: None,
        roles: vec![
            "ActivityFeed.Read".to_string(),
            "ActivityFeed.ReadDlp".to_string(),
        ],
        audit_enabled: true,
        graph_roles: vec!["IdentityRiskEvent.Read.All".to_string()],
        entra_p2: true,
        risk_detections: Default::default(),
        publication: Default::default(),
        faults: FaultScenario::default(),
        throttle: None,
    }
}

/// The keys of a JSON object.
fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

// ---------------------------------------------------------------- webhook receiver

/// An HTTPS webhook answering validations with a settable status.
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    validations: Arc<AtomicUsize>,
    _certs: tempfile::TempDir,
}

#[derive(Clone)]
struct ReceiverState {
    status: Arc<AtomicU16>,
    validations: Arc<AtomicUsize>,
}

async fn receive(State(state): State<ReceiverState>, headers: axum::http::HeaderMap) -> StatusCode {
    if headers.contains_key("webhook-validationcode") {
        state.validations.fetch_add(1, Ordering::SeqCst);
    }
    StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap()
}

impl Receiver {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (certs, _) =
            o365_connector::server::dev_certs::write_dev_certs(dir.path(), true).unwrap();
        let state = ReceiverState {
            status: Arc::new(AtomicU16::new(200)),
            validations: Arc::new(AtomicUsize::new(0)),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls =
            o365_connector::server::server_config(&certs.server_cert, &certs.server_key).unwrap();
        let server =
            axum_server::from_tcp_rustls(listener, RustlsConfig::from_config(Arc::new(tls)))
                .unwrap();
        tokio::spawn(server.serve(app.into_make_service()));
        Self {
            url: format!("https://127.0.0.1:{port}/hook"),
            status: state.status,
            validations: state.validations,
            _certs: dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self._certs.path().join("ca.pem")
    }
}

// ---------------------------------------------------------------- harness

struct World {
    emulator: ApiEmulator,
    clock: Clock,
    http: reqwest::Client,
}

/// A parsed answer.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

impl World {
    async fn start(scenario: Scenario) -> Self {
        Self::start_with_ca(scenario, None).await
    }

    async fn start_with_ca(scenario: Scenario, webhook_ca: Option<PathBuf>) -> Self {
        let clock = Clock::manual(start_time());
        let emulator = ApiEmulator::start(ApiEmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            scenario,
            tls: None,
            webhook_ca,
            clock: clock.clone(),
        })
        .await
        .unwrap();
        Self {
            emulator,
            clock,
            http: reqwest::Client::new(),
        }
    }

    /// A fresh token with both roles, valid at the clock's current time.
    fn token(&self) -> String {
        self.token_for(TENANT, &["ActivityFeed.Read", "ActivityFeed.ReadDlp"])
    }

    async fn single() -> Self {
        Self::start(Scenario::single_tenant(tenant_scenario(TENANT))).await
    }

    fn token_for(&self, tenant: &str, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|role| role.to_string()).collect();
        let state = self.emulator.state();
        state
            .tokens
            .issue_access_token(
                &self.clock,
                tenant,
                CLIENT,
                self.emulator.base_url(),
                &roles,
            )
            .access_token
    }

    fn root(&self) -> String {
        format!(
            "{}/api/v1.0/{TENANT}/activity/feed",
            self.emulator.base_url()
        )
    }

    async fn send(&self, request: reqwest::RequestBuilder, token: Option<&str>) -> Answer {
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path_and_query: &str) -> Answer {
        let url = format!("{}/{path_and_query}", self.root());
        self.send(self.http.get(url), Some(&self.token())).await
    }

    async fn get_owned(&self, path_and_query: String) -> Answer {
        self.get(&path_and_query).await
    }

    async fn get_url(&self, url: &str) -> Answer {
        self.send(self.http.get(url), Some(&self.token())).await
    }

    /// `GET url` with a valid token, the response unread (status, headers, raw body).
    async fn fetch_raw(&self, url: &str) -> reqwest::Response {
        self.http
            .get(url)
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap()
    }

    async fn start_subscription(&self, content_type: &str, webhook: Option<Value>) -> Answer {
        let url = format!(
            "{}/subscriptions/start?contentType={content_type}&PublisherIdentifier={PUBLISHER}",
            self.root()
        );
        let mut request = self.http.post(url);
        if let Some(webhook) = webhook {
            request = request
                .header("Content-Type", "application/json; utf-8")
                .body(json!({ "webhook": webhook }).to_string());
        }
        self.send(request, Some(&self.token())).await
    }

    async fn stop_subscription(&self, content_type: &str) -> Answer {
        let url = format!(
            "{}/subscriptions/stop?contentType={content_type}",
            self.root()
        );
        self.send(self.http.post(url), Some(&self.token())).await
    }

    async fn list(&self) -> Value {
        let answer = self.get("subscriptions/list").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }

    fn add_blob(
        &self,
        content_type: &str,
        records: &[Bytes],
        created: DateTime<Utc>,
    ) -> ContentEntry {
        self.emulator
            .state()
            .feed
            .add_blob(
                self.emulator.base_url(),
                TENANT,
                content_type,
                records,
                created,
            )
            .expect("the subscription is enabled")
    }

    fn rule_count(&self, rule: &str) -> u64 {
        let inspection = self.emulator.state().inspection();
        inspection
            .rejections
            .by_rule
            .get(rule)
            .copied()
            .unwrap_or(0)
    }

    fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
    }
}

fn sample() -> Vec<Bytes> {
    vec![Bytes::from_static(br#"{"Id":"1"}"#)]
}

// ---------------------------------------------------------------- subscriptions

#[tokio::test]
async fn start_without_body_creates_a_poll_only_subscription_shaped_like_microsofts() {
    let world = World::single().await;
    let answer = world.start_subscription("Audit.SharePoint", None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let documented = ms_docs("ms_docs_start_subscription_response.json");
    assert_eq!(keys(&answer.body), keys(&documented));
    assert_eq!(answer.body["contentType"], "Audit.SharePoint");
    assert_eq!(answer.body["status"], "enabled");
    assert!(answer.body["webhook"].is_null());
    let list = world.list().await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["status"], "enabled");
    assert!(list[0]["webhook"].is_null());
    assert_eq!(
        world.emulator.state().feed.enabled_subscriptions(),
        vec![(TENANT.to_string(), "Audit.SharePoint".to_string())]
    );
}

#[tokio::test]
async fn unchanged_restart_of_an_enabled_subscription_is_http_400_af20024() {
    let world = World::single().await;
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    let again = world.start_subscription("Audit.General", None).await;
    assert_eq!(again.status, 400);
    assert_eq!(again.code(), "AF20024");
    assert_eq!(
        again.message(),
        "The subscription is already enabled. No property change."
    );
    assert_eq!(world.rule_count("subscription_unchanged"), 1);
}

#[tokio::test]
async fn non_https_webhook_is_af20021_and_creates_no_subscription() {
    let world = World::single().await;
    let webhook = json!({"address": "http://127.0.0.1:9/hook", "authId": "x"});
    let answer = world
        .start_subscription("Audit.Exchange", Some(webhook))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.code(), "AF20021");
    assert_eq!(
        answer.message(),
        "The webhook endpoint http://127.0.0.1:9/hook could not be validated. The address must begin with HTTPS."
    );
    assert_eq!(world.list().await, json!([]));
    let listing = world
        .get("subscriptions/content?contentType=Audit.Exchange")
        .await;
    assert_eq!(listing.code(), "AF20022");
}

#[tokio::test]
async fn webhook_expiration_in_the_past_is_af20003() {
    let world = World::single().await;
    let webhook =
        json!({"address": "https://127.0.0.1:9/hook", "expiration": "2026-01-09T00:00:00"});
    let answer = world
        .start_subscription("Audit.Exchange", Some(webhook))
        .await;
    assert_eq!((answer.status, answer.code()), (400, "AF20003"));
    assert_eq!(world.list().await, json!([]));
}

#[tokio::test]
async fn validated_webhook_is_listed_like_microsofts_sample_and_is_active() {
    let receiver = Receiver::start().await;
    let scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    let world = World::start_with_ca(scenario, Some(receiver.ca())).await;
    let webhook =
        json!({"address": receiver.url, "authId": "o365activityapinotification", "expiration": ""});
    let answer = world
        .start_subscription("Audit.SharePoint", Some(webhook))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(receiver.validations.load(Ordering::SeqCst), 1);
    let documented = ms_docs("ms_docs_list_subscriptions_response.json");
    let list = world.list().await;
    assert_eq!(keys(&list[0]), keys(&documented[0]));
    assert_eq!(keys(&list[0]["webhook"]), keys(&documented[0]["webhook"]));
    assert_eq!(list[0]["webhook"]["status"], "enabled");
    assert_eq!(list[0]["webhook"]["address"], receiver.url.as_str());
    assert_eq!(list[0]["webhook"]["authId"], "o365activityapinotification");
    assert!(list[0]["webhook"]["expiration"].is_null());
    let active = world
        .emulator
        .state()
        .feed
        .active_webhook(TENANT, "Audit.SharePoint");
    assert_eq!(
        active.map(|target| target.address),
        Some(receiver.url.clone())
    );
}

#[tokio::test]
async fn failed_validation_is_af20021_and_leaves_subscriptions_as_they_were() {
    let receiver = Receiver::start().await;
    receiver.status.store(500, Ordering::SeqCst);
    let scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    let world = World::start_with_ca(scenario, Some(receiver.ca())).await;
    let webhook = json!({"address": receiver.url});
    let new = world
        .start_subscription("Audit.Exchange", Some(webhook.clone()))
        .await;
    assert_eq!((new.status, new.code()), (400, "AF20021"));
    assert!(
        new.message()
            .ends_with("The endpoint did not return HTTP 200.")
    );
    assert_eq!(
        world.list().await,
        json!([]),
        "a new subscription is not created"
    );
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    let existing = world
        .start_subscription("Audit.General", Some(webhook))
        .await;
    assert_eq!(existing.code(), "AF20021");
    let list = world.list().await;
    assert_eq!(list[0]["status"], "enabled");
    assert!(list[0]["webhook"].is_null(), "the webhook was not added");
}

#[tokio::test]
async fn start_without_webhook_removes_it_and_restart_revives_disabled_and_expired_webhooks() {
    let receiver = Receiver::start().await;
    let scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    let world = World::start_with_ca(scenario, Some(receiver.ca())).await;
    let feed = &world.emulator.state().feed;
    let webhook = json!({"address": receiver.url, "authId": "a"});
    assert_eq!(
        world
            .start_subscription("Audit.Exchange", Some(webhook.clone()))
            .await
            .status,
        200
    );

    feed.disable_webhook(TENANT, "Audit.Exchange");
    assert_eq!(world.list().await[0]["webhook"]["status"], "disabled");
    assert!(feed.active_webhook(TENANT, "Audit.Exchange").is_none());
    let revived = world
        .start_subscription("Audit.Exchange", Some(webhook.clone()))
        .await;
    assert_eq!(
        revived.status, 200,
        "a disabled webhook is a property change"
    );
    assert_eq!(world.list().await[0]["webhook"]["status"], "enabled");

    let expiring =
        json!({"address": receiver.url, "authId": "a", "expiration": "2026-01-10T13:00:00"});
    assert_eq!(
        world
            .start_subscription("Audit.Exchange", Some(expiring))
            .await
            .status,
        200
    );
    world.advance(chrono::Duration::hours(2));
    assert_eq!(world.list().await[0]["webhook"]["status"], "expired");
    assert!(feed.active_webhook(TENANT, "Audit.Exchange").is_none());
    let later = json!({"address": receiver.url, "authId": "a", "expiration": null});
    assert_eq!(
        world
            .start_subscription("Audit.Exchange", Some(later))
            .await
            .status,
        200
    );
    assert_eq!(world.list().await[0]["webhook"]["status"], "enabled");
    assert!(feed.active_webhook(TENANT, "Audit.Exchange").is_some());

    assert_eq!(
        world
            .start_subscription("Audit.Exchange", None)
            .await
            .status,
        200
    );
    let list = world.list().await;
    assert_eq!(list[0]["status"], "enabled");
    assert!(
        list[0]["webhook"].is_null(),
        "a start without webhook removes it"
    );
    assert!(feed.active_webhook(TENANT, "Audit.Exchange").is_none());
}

#[tokio::test]
async fn webhook_shows_null_in_list_until_the_pending_time_passes() {
    let receiver = Receiver::start().await;
    let mut tenant = tenant_scenario(TENANT);
    tenant.faults.webhook_pending_secs = 30;
    let world = World::start_with_ca(Scenario::single_tenant(tenant), Some(receiver.ca())).await;
    let webhook = json!({"address": receiver.url});
    let started = world
        .start_subscription("Audit.Exchange", Some(webhook))
        .await;
    assert_eq!(started.body["webhook"]["status"], "enabled");
    assert!(world.list().await[0]["webhook"].is_null());
    world.advance(chrono::Duration::seconds(30));
    assert_eq!(world.list().await[0]["webhook"]["status"], "enabled");
}

#[tokio::test]
async fn stop_hides_content_and_restart_serves_only_new_content() {
    let world = World::single().await;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let old = world.add_blob("Audit.SharePoint", &sample(), start_time());
    world.advance(chrono::Duration::minutes(10));
    let stop = world.stop_subscription("Audit.SharePoint").await;
    assert_eq!(stop.status, 200);
    assert_eq!(world.list().await[0]["status"], "disabled");
    assert!(
        world
            .emulator
            .state()
            .feed
            .enabled_subscriptions()
            .is_empty()
    );
    let listing = world
        .get("subscriptions/content?contentType=Audit.SharePoint")
        .await;
    assert_eq!((listing.status, listing.code()), (400, "AF20023"));
    let blob = world.get_url(&old.content_uri).await;
    assert_eq!((blob.status, blob.code()), (400, "AF20023"));
    let none = world.emulator.state().feed.add_blob(
        world.emulator.base_url(),
        TENANT,
        "Audit.SharePoint",
        &sample(),
        world.clock.now(),
    );
    assert!(none.is_none(), "no content is kept while stopped");

    world.advance(chrono::Duration::minutes(10));
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let new = world.add_blob("Audit.SharePoint", &sample(), world.clock.now());
    world.advance(chrono::Duration::seconds(1));
    let listing = world
        .get("subscriptions/content?contentType=Audit.SharePoint")
        .await;
    let ids: Vec<&str> = listing
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["contentId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![new.content_id.as_str()]);
    let gone = world.get_url(&old.content_uri).await;
    assert_eq!((gone.status, gone.code()), (404, "AF20050"));
}

#[tokio::test]
async fn stop_of_a_type_never_subscribed_is_af20022() {
    let world = World::single().await;
    let answer = world.stop_subscription("Audit.General").await;
    assert_eq!((answer.status, answer.code()), (400, "AF20022"));
}

// ---------------------------------------------------------------- common checks

#[tokio::test]
async fn common_checks_answer_microsofts_codes_in_order() {
    let mut other = tenant_scenario(OTHER_TENANT);
    other.audit_enabled = false;
    let scenario = Scenario {
        tenants: vec![tenant_scenario(TENANT), other],
        ..Scenario::single_tenant(tenant_scenario(TENANT))
    };
    let world = World::start(scenario).await;
    let base = world.emulator.base_url().to_string();
    let list_of =
        |tenant: &str| format!("{base}/api/v1.0/{tenant}/activity/feed/subscriptions/list");

    let not_guid = world
        .send(world.http.get(list_of("contoso")), Some(&world.token()))
        .await;
    assert_eq!((not_guid.status, not_guid.code()), (400, "AF20013"));
    let no_bearer = world.send(world.http.get(list_of(TENANT)), None).await;
    assert_eq!(no_bearer.status, 401);
    let foreign = world.token_for(OTHER_TENANT, &["ActivityFeed.Read"]);
    let mismatch = world
        .send(world.http.get(list_of(TENANT)), Some(&foreign))
        .await;
    assert_eq!((mismatch.status, mismatch.code()), (401, "AF20010"));
    let unknown_tenant = "99999999-9999-4999-8999-999999999999";
    let unknown_token = world.token_for(unknown_tenant, &["ActivityFeed.Read"]);
    let unknown = world
        .send(
            world.http.get(list_of(unknown_tenant)),
            Some(&unknown_token),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (400, "AF20011"));
    let audit_off = world
        .send(world.http.get(list_of(OTHER_TENANT)), Some(&foreign))
        .await;
    assert_eq!(audit_off.status, 400);
    assert_eq!(
        audit_off.message(),
        format!(
            "Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {OTHER_TENANT} does not exist."
        )
    );
    assert_ne!(audit_off.code(), "AF20011");
    assert_eq!(world.rule_count("audit_disabled"), 1);

    let health_only = world.token_for(TENANT, &["ServiceHealth.Read"]);
    let no_role = world
        .send(world.http.get(list_of(TENANT)), Some(&health_only))
        .await;
    assert_eq!((no_role.status, no_role.code()), (403, "AF10001"));
    assert!(
        no_role.message().contains("ServiceHealth.Read"),
        "{}",
        no_role.message()
    );

    let read_only = world.token_for(TENANT, &["ActivityFeed.Read"]);
    let dlp = format!("{}/subscriptions/start?contentType=DLP.All", world.root());
    let no_dlp = world.send(world.http.post(dlp), Some(&read_only)).await;
    assert_eq!((no_dlp.status, no_dlp.code()), (403, "AF10001"));
    assert_eq!(world.rule_count("dlp_role_missing"), 1);

    let invalid = world.start_subscription("Audit.Nothing", None).await;
    assert_eq!((invalid.status, invalid.code()), (400, "AF20020"));
    let bad_publisher = world
        .get("subscriptions/list?PublisherIdentifier=contoso")
        .await;
    assert_eq!(
        (bad_publisher.status, bad_publisher.code()),
        (400, "AF20002")
    );
    let good_publisher = world
        .get(&format!(
            "subscriptions/list?PublisherIdentifier={PUBLISHER}"
        ))
        .await;
    assert_eq!(good_publisher.status, 200);
}

// ---------------------------------------------------------------- content listing

#[tokio::test]
async fn content_lists_the_half_open_window_in_creation_order_with_microsofts_keys() {
    let world = World::single().await;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    world.advance(chrono::Duration::hours(3));
    let at = |text: &str| utc(text);
    let before = world.add_blob(
        "Audit.SharePoint",
        &sample(),
        at("2026-01-10T12:59:59.999Z"),
    );
    let first = world.add_blob("Audit.SharePoint", &sample(), at("2026-01-10T13:30:00Z"));
    let start = world.add_blob("Audit.SharePoint", &sample(), at("2026-01-10T13:00:00Z"));
    let end = world.add_blob("Audit.SharePoint", &sample(), at("2026-01-10T14:00:00Z"));
    world.add_blob_other_type(&world);
    let answer = world
        .get("subscriptions/content?contentType=Audit.SharePoint&startTime=2026-01-10T13:00&endTime=2026-01-10T14:00:00Z")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let items = answer.body.as_array().unwrap();
    let ids: Vec<&str> = items
        .iter()
        .map(|item| item["contentId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![first.content_id.as_str(), start.content_id.as_str()]
    );
    assert!(!ids.contains(&before.content_id.as_str()) && !ids.contains(&end.content_id.as_str()));
    let documented = ms_docs("ms_docs_list_content_response.json");
    assert_eq!(keys(&items[0]), keys(&documented[0]));
    assert_eq!(items[0]["contentCreated"], "2026-01-10T13:30:00.000Z");
    assert_eq!(items[0]["contentExpiration"], "2026-01-17T13:30:00.000Z");
    assert!(first.content_id.contains('$'));
    assert_eq!(
        first.content_uri,
        format!(
            "{}/api/v1.0/{TENANT}/activity/feed/audit/{}",
            world.emulator.base_url(),
            first.content_id
        )
    );
    let default_window = world
        .get("subscriptions/content?contentType=Audit.SharePoint")
        .await;
    assert_eq!(
        default_window.body.as_array().unwrap().len(),
        4,
        "no times: the last 24 hours"
    );
}

impl World {
    fn add_blob_other_type(&self, _: &World) {
        // A blob of another type never shows in Audit.SharePoint's listing; its type is
        // not subscribed, so the feed keeps nothing.
        let kept = self.emulator.state().feed.add_blob(
            self.emulator.base_url(),
            TENANT,
            "Audit.Exchange",
            &sample(),
            utc("2026-01-10T13:15:00Z"),
        );
        assert!(kept.is_none());
    }
}

#[tokio::test]
async fn listing_window_rules_answer_af20030_af20055_and_af20002() {
    let world = World::single().await;
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    world.advance(chrono::Duration::days(8));
    let ask = |query: &str| {
        world.get_owned(format!(
            "subscriptions/content?contentType=Audit.General&{query}"
        ))
    };
    let half = ask("startTime=2026-01-18T00:00").await;
    assert_eq!((half.status, half.code()), (400, "AF20030"));
    let long = ask("startTime=2026-01-17T00:00:00&endTime=2026-01-18T00:00:01").await;
    assert_eq!((long.status, long.code()), (400, "AF20030"));
    let day = ask("startTime=2026-01-17&endTime=2026-01-18").await;
    assert_eq!(day.status, 200, "exactly 24 hours is allowed: {}", day.body);
    let old = ask("startTime=2026-01-11T11:59:59&endTime=2026-01-11T13:00:00").await;
    assert_eq!((old.status, old.code()), (400, "AF20030"));
    let seven_days = ask("startTime=2026-01-11T12:00:00&endTime=2026-01-11T13:00:00").await;
    assert_eq!(seven_days.status, 200);
    let reversed = ask("startTime=2026-01-18T10:00&endTime=2026-01-18T09:00").await;
    assert_eq!((reversed.status, reversed.code()), (400, "AF20055"));
    let equal = ask("startTime=2026-01-18T10:00&endTime=2026-01-18T10:00").await;
    assert_eq!(equal.code(), "AF20055");
    let garbage = ask("startTime=yesterday&endTime=2026-01-18T09:00").await;
    assert_eq!((garbage.status, garbage.code()), (400, "AF20002"));
    assert_eq!(world.rule_count("window_half_open"), 1);
    assert_eq!(world.rule_count("window_too_long"), 1);
    assert_eq!(world.rule_count("window_start_too_old"), 1);
    assert_eq!(world.rule_count("window_start_not_before_end"), 2);
}

#[tokio::test]
async fn content_of_a_type_never_subscribed_is_af20022() {
    let world = World::single().await;
    let answer = world
        .get("subscriptions/content?contentType=Audit.General")
        .await;
    assert_eq!((answer.status, answer.code()), (400, "AF20022"));
    assert_eq!(
        answer.message(),
        "No subscription found for the specified content type."
    );
}

#[tokio::test]
async fn content_pages_follow_next_page_uri_verbatim_to_the_end() {
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    scenario.page_size = 2;
    let world = World::start(scenario).await;
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    let created: Vec<String> = (0..5)
        .map(|minute| {
            let time = start_time() + chrono::Duration::minutes(minute);
            world.add_blob("Audit.General", &sample(), time).content_id
        })
        .collect();
    world.advance(chrono::Duration::hours(1));
    let mut seen = Vec::new();
    let mut answer = world
        .get("subscriptions/content?contentType=Audit.General")
        .await;
    let mut pages = 1;
    loop {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let items = answer.body.as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|item| item["contentId"].as_str().unwrap().to_string()),
        );
        let Some(next) = answer.header("NextPageUri").map(str::to_string) else {
            break;
        };
        assert!(
            next.starts_with(&format!(
                "{}/subscriptions/content?contentType=Audit.General&startTime=",
                world.root()
            )),
            "{next}"
        );
        assert!(next.contains("&endTime=") && next.contains("&nextPage="));
        answer = world.get_url(&next).await;
        pages += 1;
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3);
    let bad = world
        .get("subscriptions/content?contentType=Audit.General&nextPage=2015101900R9999999999999")
        .await;
    assert_eq!((bad.status, bad.code()), (400, "AF20031"));
    let junk = world
        .get("subscriptions/content?contentType=Audit.General&nextPage=junk")
        .await;
    assert_eq!(junk.code(), "AF20031");
}

#[tokio::test]
async fn foreign_host_faults_point_next_page_uri_and_content_uri_elsewhere() {
    let mut tenant = tenant_scenario(TENANT);
    tenant.faults.foreign_next_page_base = Some("https://evil.example".to_string());
    tenant.faults.foreign_content_uri_base = Some("https://attacker.example/".to_string());
    let mut scenario = Scenario::single_tenant(tenant);
    scenario.page_size = 1;
    let world = World::start(scenario).await;
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    let entry = world.add_blob("Audit.General", &sample(), start_time());
    world.add_blob("Audit.General", &sample(), start_time());
    assert!(entry.content_uri.starts_with(&format!(
        "https://attacker.example/api/v1.0/{TENANT}/activity/feed/audit/"
    )));
    world.advance(chrono::Duration::minutes(5));
    let answer = world
        .get("subscriptions/content?contentType=Audit.General")
        .await;
    assert_eq!(answer.body[0]["contentUri"], entry.content_uri.as_str());
    let next = answer.header("NextPageUri").unwrap();
    assert!(
        next.starts_with(&format!(
            "https://evil.example/api/v1.0/{TENANT}/activity/feed/subscriptions/content?"
        )),
        "{next}"
    );
}

// ---------------------------------------------------------------- notifications, DLP types

#[tokio::test]
async fn notifications_list_delivery_records_with_microsofts_keys_and_nothing_without_webhook() {
    let receiver = Receiver::start().await;
    let scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    let world = World::start_with_ca(scenario, Some(receiver.ca())).await;
    let feed = &world.emulator.state().feed;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", Some(json!({"address": receiver.url})))
            .await
            .status,
        200
    );
    let entry = world.add_blob("Audit.SharePoint", &sample(), start_time());
    let sent = start_time() + chrono::Duration::minutes(1);
    feed.record_notification(TENANT, &entry, sent, "failed");
    feed.record_notification(
        TENANT,
        &entry,
        sent + chrono::Duration::minutes(1),
        "success",
    );
    world.advance(chrono::Duration::minutes(5));
    let answer = world
        .get("subscriptions/notifications?contentType=Audit.SharePoint")
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let items = answer.body.as_array().unwrap();
    assert_eq!(items.len(), 2, "every attempt, retries included");
    let documented = ms_docs("ms_docs_list_notifications_response.json");
    assert_eq!(keys(&items[0]), keys(&documented[0]));
    assert_eq!(items[0]["notificationStatus"], "failed");
    assert_eq!(items[1]["notificationSent"], "2026-01-10T12:02:00.000Z");
    assert_eq!(items[1]["contentId"], entry.content_id.as_str());

    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let without = world
        .get("subscriptions/notifications?contentType=Audit.SharePoint")
        .await;
    assert_eq!(without.body, json!([]));
    let never = world
        .get("subscriptions/notifications?contentType=Audit.General")
        .await;
    assert_eq!(never.code(), "AF20022");
}

#[tokio::test]
async fn dlp_sensitive_types_match_microsofts_sample_and_check_accept_language() {
    let world = World::single().await;
    let answer = world.get("resources/dlpSensitiveTypes").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        ms_docs("ms_docs_dlp_sensitive_types_response.json")
    );
    let url = format!("{}/resources/dlpSensitiveTypes", world.root());
    let one = world
        .send(
            world.http.get(&url).header("Accept-Language", "en-US"),
            Some(&world.token()),
        )
        .await;
    assert_eq!(one.status, 200);
    let two = world
        .send(
            world
                .http
                .get(&url)
                .header("Accept-Language", "en-US, fr-FR"),
            Some(&world.token()),
        )
        .await;
    assert_eq!((two.status, two.code()), (400, "AF20053"));
    let bad = world
        .send(
            world.http.get(&url).header("Accept-Language", "en_US!"),
            Some(&world.token()),
        )
        .await;
    assert_eq!((bad.status, bad.code()), (400, "AF20054"));
}

// ---------------------------------------------------------------- blobs

#[tokio::test]
async fn blob_is_the_records_byte_exact_as_one_json_array() {
    let world = World::single().await;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let records = records("04-sharepoint.ndjson");
    let entry = world.add_blob("Audit.SharePoint", &records, start_time());
    let response = world
        .fetch_raw(&format!(
            "{}?PublisherIdentifier={PUBLISHER}",
            entry.content_uri
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let mut expected = b"[".to_vec();
    expected.extend_from_slice(&records.join(&b","[..]));
    expected.push(b']');
    assert_eq!(
        response.headers()["content-length"],
        expected.len().to_string().as_str()
    );
    let body = response.bytes().await.unwrap();
    assert_eq!(&body[..], &expected[..]);
    let parsed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed.as_array().unwrap().len(), records.len());
}

#[tokio::test]
async fn blob_rules_unknown_404_af20050_malformed_af20052_expired_af20051() {
    let world = World::single().await;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let entry = world.add_blob("Audit.SharePoint", &sample(), start_time());
    let unknown = world.get("audit/20260110120000000999999$20260110120000000999999$audit_sharepoint$Audit_SharePoint$na").await;
    assert_eq!((unknown.status, unknown.code()), (404, "AF20050"));
    let malformed = world.get("audit/not-a-content-id").await;
    assert_eq!((malformed.status, malformed.code()), (400, "AF20052"));
    world.advance(chrono::Duration::days(7) - chrono::Duration::seconds(1));
    assert_eq!(world.get_url(&entry.content_uri).await.status, 200);
    world.advance(chrono::Duration::seconds(1));
    let expired = world.get_url(&entry.content_uri).await;
    assert_eq!((expired.status, expired.code()), (400, "AF20051"));
    assert_eq!(world.rule_count("content_expired"), 1);
}

#[tokio::test]
async fn dlp_blob_needs_the_read_dlp_role() {
    let world = World::single().await;
    assert_eq!(world.start_subscription("DLP.All", None).await.status, 200);
    let entry = world.add_blob("DLP.All", &sample(), start_time());
    let read_only = world.token_for(TENANT, &["ActivityFeed.Read"]);
    let answer = world
        .send(world.http.get(&entry.content_uri), Some(&read_only))
        .await;
    assert_eq!((answer.status, answer.code()), (403, "AF10001"));
    assert_eq!(world.get_url(&entry.content_uri).await.status, 200);
}

// ---------------------------------------------------------------- throttling and faults

#[tokio::test]
async fn throttling_answers_af429_as_http_403_beyond_the_tenant_budget_then_recovers() {
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    scenario.throttle.requests_per_window = 3;
    scenario.throttle.window_secs = 0.5;
    let world = World::start(scenario).await;
    // The budget may roll over during the burst on a slow machine: find a rejection.
    let mut throttled = None;
    for _ in 0..50 {
        let answer = world.get("subscriptions/list").await;
        if answer.status != 200 {
            throttled = Some(answer);
            break;
        }
    }
    let throttled = throttled.expect("a burst is throttled");
    assert_eq!((throttled.status, throttled.code()), (403, "AF429"));
    assert_eq!(
        throttled.message(),
        "Too many requests. Method=ListSubscriptions, PublisherId=00000000-0000-0000-0000-000000000000"
    );
    wait_until("the window to roll over", || async {
        world.get("subscriptions/list").await.status == 200
    })
    .await;
}

#[tokio::test]
async fn throttling_as_http_429_carries_retry_after_and_names_the_publisher() {
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    scenario.throttle.requests_per_window = 1;
    scenario.throttle.window_secs = 3600.0;
    scenario.throttle.response = ThrottleResponse::Http429;
    let world = World::start(scenario).await;
    assert_eq!(world.get("subscriptions/list").await.status, 200);
    let answer = world
        .get(&format!("audit/1$2?PublisherIdentifier={PUBLISHER}"))
        .await;
    assert_eq!((answer.status, answer.code()), (429, "AF429"));
    let retry_after: u64 = answer.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert!(
        answer
            .message()
            .contains(&format!("Method=GetBlob, PublisherId={PUBLISHER}"))
    );
    assert!(world.rule_count("throttled") >= 1);
}

#[tokio::test]
async fn server_error_fault_answers_microsofts_af50000_until_turned_off() {
    let world = World::single().await;
    let feed = &world.emulator.state().feed;
    let faults = FaultScenario {
        server_error_rate: 1.0,
        ..FaultScenario::default()
    };
    feed.set_faults(Some(TENANT), faults.clone());
    assert_eq!(feed.faults(TENANT), faults);
    let answer = world.get("subscriptions/list").await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.body, json!(ms_docs("ms_docs_error_body.json")));
    feed.set_faults(
        None,
        FaultScenario {
            server_error_rate: 0.5,
            ..FaultScenario::default()
        },
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(world.get("subscriptions/list").await.status);
    }
    assert_eq!(
        statuses.iter().filter(|status| **status == 500).count(),
        2,
        "{statuses:?}"
    );
    feed.set_faults(None, FaultScenario::default());
    assert_eq!(world.get("subscriptions/list").await.status, 200);
}

#[tokio::test]
async fn blob_404_null_fault_answers_the_blobs_it_names_with_a_bare_404_even_once_expired() {
    let world = World::single().await;
    for content_type in ["Audit.SharePoint", "Audit.Exchange"] {
        assert_eq!(
            world.start_subscription(content_type, None).await.status,
            200
        );
    }
    let named = world.add_blob("Audit.SharePoint", &sample(), start_time());
    let same_type = world.add_blob("Audit.SharePoint", &sample(), start_time());
    let other_type = world.add_blob("Audit.Exchange", &sample(), start_time());
    let control = format!("{}/_emulator/control", world.emulator.base_url());
    let set_selector = |selector: Value| {
        let request = world
            .http
            .post(&control)
            .json(&json!({"faults": {"blob_404_null": selector}}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let cases = [
        (json!("all"), [true, true, true]),
        (json!("Audit.SharePoint"), [true, true, false]),
        (json!(named.content_id), [true, false, false]),
        (Value::Null, [false, false, false]),
    ];
    let mut refusals = 0;
    for (selector, refused) in cases {
        assert_eq!(set_selector(selector.clone()).await, 200, "{selector}");
        for (entry, refused) in [&named, &same_type, &other_type].into_iter().zip(refused) {
            let response = world.fetch_raw(&entry.content_uri).await;
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap();
            if refused {
                refusals += 1;
                assert_eq!((status, &body[..]), (404, &b"null"[..]), "{selector}");
            } else {
                assert_eq!(status, 200, "{selector} {}", entry.content_id);
            }
        }
    }
    assert_eq!(world.rule_count("blob_404_null"), refusals);
    assert_eq!(
        set_selector(json!("")).await,
        400,
        "an empty selector is refused"
    );

    // Past its expiration the named blob still answers the bare 404 (where Microsoft says
    // AF20051), with the emulator's time in `Date`; the others answer AF20051.
    assert_eq!(set_selector(json!(named.content_id)).await, 200);
    world.advance(chrono::Duration::days(8));
    let refused = world.get_url(&named.content_uri).await;
    assert_eq!((refused.status, refused.code()), (404, ""));
    let expected_date = (start_time() + chrono::Duration::days(8))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    assert_eq!(refused.header("date"), Some(expected_date.as_str()));
    let expired = world.get_url(&same_type.content_uri).await;
    assert_eq!((expired.status, expired.code()), (400, "AF20051"));
}

#[tokio::test]
async fn latency_fault_delays_answers() {
    let mut tenant = tenant_scenario(TENANT);
    tenant.faults.latency_ms = 300;
    let world = World::start(Scenario::single_tenant(tenant)).await;
    let started = Instant::now();
    assert_eq!(world.get("subscriptions/list").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn truncate_fault_breaks_the_transfer_instead_of_sending_a_short_complete_body() {
    let world = World::single().await;
    assert_eq!(
        world
            .start_subscription("Audit.SharePoint", None)
            .await
            .status,
        200
    );
    let records = records("04-sharepoint.ndjson");
    let entry = world.add_blob("Audit.SharePoint", &records, start_time());
    let feed = &world.emulator.state().feed;
    feed.set_faults(
        Some(TENANT),
        FaultScenario {
            truncate_rate: 1.0,
            ..FaultScenario::default()
        },
    );
    let response = world.fetch_raw(&entry.content_uri).await;
    assert_eq!(response.status(), 200);
    let declared: usize = response.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let full = records.iter().map(Bytes::len).sum::<usize>() + records.len() + 1;
    assert_eq!(declared, full);
    assert!(
        response.bytes().await.is_err(),
        "a truncated blob is a transport error"
    );
    feed.set_faults(Some(TENANT), FaultScenario::default());
    let whole = world.fetch_raw(&entry.content_uri).await;
    assert_eq!(whole.bytes().await.unwrap().len(), full);
}

#[tokio::test]
async fn truncate_fault_is_a_transport_error_over_tls_on_http1_and_http2() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = o365_connector::server::dev_certs::write_dev_certs(dir.path(), true).unwrap();
    let mut tenant = tenant_scenario(TENANT);
    tenant.faults.truncate_rate = 1.0;
    let clock = Clock::manual(start_time());
    let emulator = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: Scenario::single_tenant(tenant),
        tls: Some(o365_connector::emulator::api::TlsFiles {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
        }),
        webhook_ca: None,
        clock: clock.clone(),
    })
    .await
    .unwrap();
    assert!(emulator.base_url().starts_with("https://"));
    let state = emulator.state();
    let roles = vec!["ActivityFeed.Read".to_string()];
    let token = state
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, emulator.base_url(), &roles)
        .access_token;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca).unwrap()).unwrap();
    let start = format!(
        "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/start?contentType=Audit.General",
        emulator.base_url()
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let started = client
        .post(&start)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let records = records("04-sharepoint.ndjson");
    let entry = state
        .feed
        .add_blob(
            emulator.base_url(),
            TENANT,
            "Audit.General",
            &records,
            start_time(),
        )
        .unwrap();
    let http1 = reqwest::Client::builder()
        .add_root_certificate(ca)
        .http1_only()
        .build()
        .unwrap();
    for (name, client) in [("http2", client), ("http1", http1)] {
        let response = client
            .get(&entry.content_uri)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let version = if name == "http2" {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), version);
        assert!(
            response.bytes().await.is_err(),
            "{name}: a truncated blob is a transport error"
        );
    }
}

#[tokio::test]
async fn notifications_page_with_a_next_page_uri_on_the_notifications_path() {
    let receiver = Receiver::start().await;
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT));
    scenario.page_size = 1;
    let world = World::start_with_ca(scenario, Some(receiver.ca())).await;
    let webhook = json!({"address": receiver.url});
    let started = world
        .start_subscription("Audit.General", Some(webhook))
        .await;
    assert_eq!(started.status, 200);
    let entry = world.add_blob("Audit.General", &sample(), start_time());
    let feed = &world.emulator.state().feed;
    feed.record_notification(TENANT, &entry, start_time(), "failed");
    feed.record_notification(TENANT, &entry, start_time(), "success");
    world.advance(chrono::Duration::minutes(1));
    let first = world
        .get("subscriptions/notifications?contentType=Audit.General")
        .await;
    assert_eq!(first.body[0]["notificationStatus"], "failed");
    let next = first
        .header("NextPageUri")
        .expect("a second page")
        .to_string();
    assert!(
        next.starts_with(&format!("{}/subscriptions/notifications?", world.root())),
        "{next}"
    );
    let second = world.get_url(&next).await;
    assert_eq!(second.body[0]["notificationStatus"], "success");
    assert!(second.header("NextPageUri").is_none());
}

#[tokio::test]
async fn a_blob_of_one_tenant_does_not_exist_under_another() {
    let scenario = Scenario {
        tenants: vec![tenant_scenario(TENANT), tenant_scenario(OTHER_TENANT)],
        ..Scenario::single_tenant(tenant_scenario(TENANT))
    };
    let world = World::start(scenario).await;
    assert_eq!(
        world.start_subscription("Audit.General", None).await.status,
        200
    );
    let entry = world.add_blob("Audit.General", &sample(), start_time());
    let foreign_uri = entry.content_uri.replace(TENANT, OTHER_TENANT);
    let other_token = world.token_for(OTHER_TENANT, &["ActivityFeed.Read"]);
    let answer = world
        .send(world.http.get(&foreign_uri), Some(&other_token))
        .await;
    assert_eq!((answer.status, answer.code()), (404, "AF20050"));
}

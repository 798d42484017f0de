//! The webhook over real TLS, fed by the Management API emulator and by hand-made
//! requests: the validation handshake, authentication, rotation, item validation (no
//! foreign tenant, app, host, port or scheme gets in), body checks, durable enqueue and
//! the 503 that makes Microsoft retry when the queue cannot accept.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::DEADLINE;
use o365_connector::api::types::WebhookRegistration;
use o365_connector::api::{ApiClient, ApiClientConfig, StartOutcome};
use o365_connector::auth::{Credential, TokenProvider, TokenSourceConfig};
use o365_connector::clock::Clock;
use o365_connector::cloud::{Cloud, Endpoints};
use o365_connector::config::ContentType;
use o365_connector::emulator::api::scenario::{Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig, publish};
use o365_connector::ops::Metrics;
use o365_connector::ops::metrics::OutcomeLabels;
use o365_connector::queue::{ContentKey, ContentQueue, EmbeddedQueue, MetaStore, Source};
use o365_connector::server::dev_certs::write_dev_certs;
use o365_connector::webhook::auth_id::load_or_create_secrets;
use o365_connector::webhook::{self, WebhookSecrets, WebhookState, WebhookTenant};
use reqwest::{StatusCode, Url};
use secrecy::SecretString;
use serde_json::{Value, json};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "webhook-test-secret";

struct Rig {
    _dir: tempfile::TempDir,
    queue: Arc<EmbeddedQueue>,
    state: Arc<WebhookState>,
    metrics: Arc<Metrics>,
    address: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    http: reqwest::Client,
}

impl Rig {
    /// A webhook for `TENANT` (Audit.Exchange and Audit.SharePoint) whose contentUris must
    /// be on `api_base`, served over TLS with the development certificates.
    async fn start(api_base: &str, secrets: WebhookSecrets, max_body_bytes: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let certs_dir = dir.path().join("certs");
        Self::start_in(dir, &certs_dir, api_base, secrets, max_body_bytes).await
    }

    /// Like `start`, with the development certificates of `certs_dir` (kept if present).
    async fn start_in(
        dir: tempfile::TempDir,
        certs_dir: &Path,
        api_base: &str,
        secrets: WebhookSecrets,
        max_body_bytes: usize,
    ) -> Rig {
        let (certs, _) = write_dev_certs(certs_dir, false).unwrap();
        let queue = Arc::new(
            EmbeddedQueue::open(&dir.path().join("store"), Clock::system())
                .await
                .unwrap(),
        );
        let tenant = WebhookTenant {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            content_types: HashSet::from([
                ContentType::AuditExchange,
                ContentType::AuditSharePoint,
            ]),
            api_base: Url::parse(api_base).unwrap(),
        };
        let metrics = Arc::new(Metrics::default());
        let state = Arc::new(WebhookState::new(
            [tenant],
            secrets,
            queue.clone() as Arc<dyn ContentQueue>,
            max_body_bytes,
            metrics.clone(),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let common::TlsWebhook {
            address,
            handle,
            http,
        } = common::serve_webhook_tls(state.clone(), &certs);
        Rig {
            _dir: dir,
            queue,
            state,
            metrics,
            address,
            handle,
            http,
        }
    }

    fn url(&self, tenant: &str) -> String {
        format!("https://localhost:{}/hook/{tenant}", self.address.port())
    }

    fn auth_id(&self) -> String {
        self.state.auth_id(TENANT)
    }

    async fn post(
        &self,
        auth_id: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .post(self.url(TENANT))
            .header("Content-Type", content_type)
            .body(body);
        if let Some(auth_id) = auth_id {
            request = request.header("Webhook-AuthID", auth_id);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn notifications(&self, outcome: &'static str) -> u64 {
        self.metrics
            .notifications
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    fn items(&self, outcome: &'static str) -> u64 {
        self.metrics
            .notification_items
            .get_or_create(&OutcomeLabels { outcome })
            .get()
    }

    async fn pending(&self) -> u64 {
        self.queue.stats().await.unwrap().pending
    }
}

fn secrets() -> WebhookSecrets {
    WebhookSecrets::new(b"server secret".to_vec(), None)
}

fn item(content_id: &str, content_uri: &str) -> Value {
    json!({
        "tenantId": TENANT, "clientId": CLIENT, "contentType": "Audit.Exchange",
        "contentId": content_id, "contentUri": content_uri,
        "contentCreated": "2026-01-10T12:00:00.000Z", "contentExpiration": "2026-01-17T12:00:00.000Z"
    })
}

const API: &str = "https://manage.office.com";

fn uri(content_id: &str) -> String {
    format!("{API}/api/v1.0/{TENANT}/activity/feed/audit/{content_id}")
}

#[tokio::test]
async fn validation_request_is_answered_200_even_with_microsofts_documented_non_json_body() {
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/ms-docs/raw/ref_webhook_validation_request.http.txt"),
    )
    .unwrap();
    let body = documented[documented.find('{').unwrap()..].to_string();
    assert!(
        serde_json::from_str::<Value>(&body).is_err(),
        "the documented body is not JSON"
    );
    let response = rig
        .http
        .post(rig.url(TENANT))
        .header("content-type", "application/json; charset=utf-8")
        .header("WebHook-AuthID", rig.auth_id())
        .header("webhook-validationcode", "1234abcd")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(rig.pending().await, 0);
    rig.handle.shutdown();
}

#[tokio::test]
async fn emulated_microsoft_validates_our_webhook_and_its_notifications_are_enqueued() {
    let clock = Clock::system();
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.publication.records = Some(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/events/04-sharepoint.ndjson"
    )));
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = write_dev_certs(dir.path(), false).unwrap();
    let emulator = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: Scenario::single_tenant(tenant),
        tls: None,
        webhook_ca: Some(certs.ca.clone()),
        clock: clock.clone(),
    })
    .await
    .unwrap();
    // The webhook serves certificates of the CA the emulator trusts.
    let rig = Rig::start_in(
        tempfile::tempdir().unwrap(),
        dir.path(),
        emulator.base_url(),
        secrets(),
        webhook::DEFAULT_MAX_BODY_BYTES,
    )
    .await;

    let base = Url::parse(emulator.base_url()).unwrap();
    let endpoints = Endpoints::with_overrides(Cloud::Commercial, Some(&base), Some(&base));
    let tokens = Arc::new(TokenProvider::new(
        reqwest::Client::new(),
        TokenSourceConfig {
            tenant_id: TENANT.into(),
            token_url: endpoints.token_url(TENANT),
            client_id: CLIENT.into(),
            scope: endpoints.token_scope().into(),
            credential: Credential::Secret(SecretString::from(SECRET)),
        },
        clock,
    ));
    let client = ApiClient::new(
        reqwest::Client::new(),
        ApiClientConfig {
            tenant_id: TENANT.into(),
            endpoints,
            publisher_id: None,
            requests_per_minute: NonZeroU32::new(2000).unwrap(),
        },
        tokens,
    );
    let registration = WebhookRegistration {
        address: rig.url(TENANT),
        auth_id: rig.auth_id(),
        expiration: String::new(),
    };
    let outcome = client
        .start_subscription("Audit.Exchange", Some(&registration))
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => panic!("the webhook is validated: {error}"),
    };
    assert!(matches!(outcome, StartOutcome::Started(_)));
    assert_eq!(rig.notifications("validation"), 1);

    let entries = publish::publish_now(emulator.state(), TENANT, "Audit.Exchange", 3).await;
    assert_eq!(entries.len(), 3);
    wait_until_pending(&rig, 3).await;
    for entry in entries {
        let stored = rig
            .queue
            .get(&ContentKey::new(TENANT, &entry.content_id))
            .await
            .unwrap()
            .expect("enqueued");
        assert_eq!(stored.content.content_uri, entry.content_uri);
        assert_eq!(stored.content.source, Source::Webhook);
        assert_eq!(stored.content.content_type, "Audit.Exchange");
    }
    emulator.shutdown().await;
    rig.handle.shutdown();
}

async fn wait_until_pending(rig: &Rig, expected: u64) {
    let started = std::time::Instant::now();
    while rig.pending().await != expected {
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for {expected} pending items"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn missing_or_wrong_auth_id_is_401_and_nothing_is_enqueued() {
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    let body = json!([item("c1", &uri("c1"))]).to_string();
    let other = WebhookSecrets::new(b"another secret".to_vec(), None).auth_id(TENANT);
    for auth_id in [
        None,
        Some("o365activityapinotification"),
        Some(other.as_str()),
    ] {
        let (status, _) = rig
            .post(auth_id, "application/json; utf-8", body.clone())
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth_id:?}");
    }
    assert_eq!(rig.pending().await, 0);
    rig.handle.shutdown();
}

#[tokio::test]
async fn during_rotation_both_the_old_and_the_new_auth_id_are_accepted() {
    let old = WebhookSecrets::new(b"old".to_vec(), None);
    let rotating = WebhookSecrets::new(b"new".to_vec(), Some(b"old".to_vec()));
    let new_auth_id = rotating.auth_id(TENANT);
    let rig = Rig::start(API, rotating, webhook::DEFAULT_MAX_BODY_BYTES).await;
    let (status, _) = rig
        .post(
            Some(&old.auth_id(TENANT)),
            "application/json",
            json!([item("c1", &uri("c1"))]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = rig
        .post(
            Some(&new_auth_id),
            "application/json",
            json!([item("c2", &uri("c2"))]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rig.pending().await, 2);
    rig.handle.shutdown();
}

#[tokio::test]
async fn items_from_another_tenant_app_host_port_scheme_or_type_are_skipped_and_the_rest_enqueued()
{
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    let mut foreign_tenant = item("t", &uri("t"));
    foreign_tenant["tenantId"] = json!("0b6d3c3e-1111-4222-8333-444455556666");
    let mut foreign_app = item("a", &uri("a"));
    foreign_app["clientId"] = json!("00000000-0000-0000-0000-000000000001");
    let mut uncollected_type = item("d", &uri("d"));
    uncollected_type["contentType"] = json!("DLP.All");
    let batch = json!([
        item("valid", &uri("valid")),
        foreign_tenant,
        foreign_app,
        uncollected_type,
        item(
            "host",
            &format!("https://attacker.example/api/v1.0/{TENANT}/activity/feed/audit/host")
        ),
        item(
            "port",
            &format!("https://manage.office.com:8443/api/v1.0/{TENANT}/activity/feed/audit/port")
        ),
        item(
            "scheme",
            &format!("http://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/scheme")
        ),
        item(
            "path",
            "https://manage.office.com/api/v1.0/0b6d3c3e-1111-4222-8333-444455556666/activity/feed/audit/path"
        ),
        item(
            "userinfo",
            &format!("https://manage.office.com@attacker.example/api/v1.0/{TENANT}/x")
        ),
    ]);
    let (status, body) = rig
        .post(
            Some(&rig.auth_id()),
            "application/json; utf-8",
            batch.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["enqueued"], 1);
    assert_eq!(rig.pending().await, 1);
    assert!(
        rig.queue
            .get(&ContentKey::new(TENANT, "valid"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(rig.items("invalid"), 8);
    rig.handle.shutdown();
}

#[tokio::test]
async fn a_repeated_notification_is_a_duplicate_and_changes_nothing() {
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    let body = json!([item("c1", &uri("c1"))]).to_string();
    let (_, first) = rig
        .post(
            Some(&rig.auth_id()),
            "application/json; utf-8",
            body.clone(),
        )
        .await;
    let (_, second) = rig
        .post(Some(&rig.auth_id()), "application/json; utf-8", body)
        .await;
    assert_eq!(
        (first["enqueued"].clone(), second["duplicates"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(rig.pending().await, 1);
    rig.handle.shutdown();
}

#[tokio::test]
async fn oversized_malformed_and_wrongly_typed_bodies_get_413_400_and_415() {
    let rig = Rig::start(API, secrets(), 4096).await;
    let auth_id = rig.auth_id();
    let big = json!([item(&"x".repeat(5000), &uri("big"))]).to_string();
    assert_eq!(
        rig.post(Some(&auth_id), "application/json", big.clone())
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // Without a Content-Length (chunked), the limit still holds while reading.
    let chunks = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let streamed = reqwest::Body::wrap_stream(chunks);
    assert_eq!(
        rig.post(Some(&auth_id), "application/json", streamed)
            .await
            .0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (status, body) = rig
        .post(Some(&auth_id), "application/json", "[{\"tenantId\": ")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"].as_str().unwrap().contains("not a JSON array"));
    assert_eq!(
        rig.post(
            Some(&auth_id),
            "application/json",
            "{\"validationCode\":\"x\"}"
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        rig.post(Some(&auth_id), "text/plain", "[]").await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    for accepted in [
        "application/json; utf-8",
        "application/json; charset=utf-8",
        "application/json",
    ] {
        let (status, _) = rig
            .post(
                Some(&auth_id),
                accepted,
                json!([item("ok", &uri("ok"))]).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{accepted}");
    }
    assert_eq!(rig.pending().await, 1);
    rig.handle.shutdown();
}

#[tokio::test]
async fn an_unknown_tenant_in_the_path_is_404() {
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    let stranger = "0b6d3c3e-1111-4222-8333-444455556666";
    let auth_id = secrets().auth_id(stranger);
    let response = rig
        .http
        .post(rig.url(stranger))
        .header("Content-Type", "application/json")
        .header("Webhook-AuthID", auth_id)
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    rig.handle.shutdown();
}

#[tokio::test]
async fn when_the_queue_cannot_accept_the_webhook_answers_503_so_microsoft_retries() {
    let rig = Rig::start(API, secrets(), webhook::DEFAULT_MAX_BODY_BYTES).await;
    rig.queue.close().await.unwrap();
    let (status, _) = rig
        .post(
            Some(&rig.auth_id()),
            "application/json; utf-8",
            json!([item("c1", &uri("c1"))]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    rig.handle.shutdown();
}

#[tokio::test]
async fn a_generated_webhook_secret_is_kept_in_the_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let auth_id = {
        let store = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .unwrap();
        let secrets = load_or_create_secrets(None, None, &store).await.unwrap();
        store.close().await.unwrap();
        secrets.auth_id(TENANT)
    };
    let store = EmbeddedQueue::open(dir.path(), Clock::system())
        .await
        .unwrap();
    assert!(
        store
            .get_meta(webhook::auth_id::SECRET_META_KEY)
            .await
            .unwrap()
            .is_some()
    );
    let secrets = load_or_create_secrets(None, None, &store).await.unwrap();
    assert_eq!(
        secrets.auth_id(TENANT),
        auth_id,
        "authIds survive a restart"
    );
}

//! The connector's token cache and API client against the Management API emulator over
//! real HTTP: caching, single flight, refresh, renewal on 401, certificate credentials,
//! AF20024, paging, throttling, and the rule that no token ever leaves for a foreign host.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use o365_connector::api::types::WebhookRegistration;
use o365_connector::api::{ApiClient, ApiClientConfig, ApiError, ErrorKind, StartOutcome};
use o365_connector::auth::{
    AuthError, CertificateCredential, Credential, TokenProvider, TokenSourceConfig,
};
use o365_connector::clock::Clock;
use o365_connector::cloud::{Cloud, Endpoints};
use o365_connector::emulator::api::scenario::{
    FaultScenario, Scenario, TenantScenario, ThrottleResponse,
};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use reqwest::Url;
use secrecy::SecretString;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "api-client-test-secret";
const PUBLISHER: &str = "46b472a7-c68e-4adf-8ade-3db49497518e";

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn start_time() -> DateTime<Utc> {
    "2026-01-10T12:00:00Z".parse().unwrap()
}

fn tenant() -> TenantScenario {
    TenantScenario {
        tenant_id: TENANT.into(),
        domain: Some("contoso.onmicrosoft.com".into()),
        client_id: CLIENT.into(),
        client_secret: Some(SECRET.into()),
        secret_expired: false,
        certificate: Some(fixture("app-cert/app.pem")),
        roles: vec!["ActivityFeed.Read".into(), "ActivityFeed.ReadDlp".into()],
        audit_enabled: true,
        graph_roles: vec!["IdentityRiskEvent.Read.All".into()],
        entra_p2: true,
        risk_detections: Default::default(),
        publication: Default::default(),
        faults: FaultScenario::default(),
        throttle: None,
    }
}

async fn emulator(scenario: Scenario, clock: Clock) -> ApiEmulator {
    ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock,
    })
    .await
    .expect("emulator starts")
}

fn provider(emulator: &ApiEmulator, credential: Credential, clock: Clock) -> Arc<TokenProvider> {
    let config = TokenSourceConfig {
        tenant_id: TENANT.into(),
        token_url: endpoints(emulator).token_url(TENANT),
        client_id: CLIENT.into(),
        scope: endpoints(emulator).token_scope().to_string(),
        credential,
    };
    Arc::new(TokenProvider::new(reqwest::Client::new(), config, clock))
}

/// The Commercial cloud with both bases overridden to the emulator, as a test rig does.
fn endpoints(emulator: &ApiEmulator) -> Endpoints {
    let base = Url::parse(emulator.base_url()).unwrap();
    Endpoints::with_overrides(Cloud::Commercial, Some(&base), Some(&base))
}

fn secret(value: &str) -> Credential {
    Credential::Secret(SecretString::from(value.to_string()))
}

fn client(emulator: &ApiEmulator, tokens: Arc<TokenProvider>) -> ApiClient {
    let config = ApiClientConfig {
        tenant_id: TENANT.into(),
        endpoints: endpoints(emulator),
        publisher_id: Some(PUBLISHER.into()),
        requests_per_minute: NonZeroU32::new(2000).unwrap(),
    };
    ApiClient::new(reqwest::Client::new(), config, tokens)
}

fn token_requests_seen(emulator: &ApiEmulator) -> usize {
    emulator
        .state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint.contains("oauth2"))
        .count()
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request_and_it_is_refreshed_before_expiry() {
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let tokens = provider(&emulator, secret(SECRET), clock.clone());
    let callers: Vec<_> = (0..32)
        .map(|_| {
            let tokens = tokens.clone();
            tokio::spawn(async move { tokens.token().await.map(|t| t.bearer().to_string()) })
        })
        .collect();
    let mut bearers = Vec::new();
    for caller in callers {
        bearers.push(caller.await.unwrap().expect("token"));
    }
    assert!(bearers.windows(2).all(|pair| pair[0] == pair[1]));
    assert_eq!(tokens.token_requests(), 1);
    assert_eq!(token_requests_seen(&emulator), 1);

    // Still well before expiry (3,599 s): cached.
    clock.advance(Duration::seconds(600));
    tokens.token().await.unwrap();
    assert_eq!(token_requests_seen(&emulator), 1);
    // Within five minutes of expiry: refreshed ahead of it.
    clock.advance(Duration::seconds(3599 - 600 - 200));
    let refreshed = tokens.token().await.unwrap();
    assert_eq!(token_requests_seen(&emulator), 2);
    assert_ne!(refreshed.bearer(), bearers[0]);
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_401_renews_the_token_once_and_the_call_succeeds() {
    let emulator_clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), emulator_clock.clone()).await;
    // The connector's clock does not move, so only the API's 401 can reveal the expiry.
    let tokens = provider(&emulator, secret(SECRET), Clock::manual(start_time()));
    let client = client(&emulator, tokens.clone());
    client.list_subscriptions().await.expect("first call");
    emulator_clock.advance(Duration::hours(2));
    client
        .list_subscriptions()
        .await
        .expect("renewed after the 401");
    assert_eq!(tokens.token_requests(), 2);
    let statuses: Vec<u16> = emulator
        .state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint.ends_with("subscriptions/list"))
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [200, 401, 200]);
    emulator.shutdown().await;
}

#[tokio::test]
async fn certificate_credential_gets_a_token_with_a_signed_assertion() {
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let certificate = CertificateCredential::from_pem(
        &std::fs::read(fixture("app-cert/app.pem")).unwrap(),
        &std::fs::read(fixture("app-cert/app-key.pem")).unwrap(),
    )
    .unwrap();
    let tokens = provider(&emulator, Credential::Certificate(certificate), clock);
    let client = client(&emulator, tokens);
    client
        .list_subscriptions()
        .await
        .expect("authorised by certificate");
    emulator.shutdown().await;
}

#[tokio::test]
async fn refused_credentials_say_what_to_fix_and_never_quote_the_secret() {
    let clock = Clock::manual(start_time());
    let mut expired = tenant();
    expired.secret_expired = true;
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let wrong = "wrong-secret-value-123";
    let error = provider(&emulator, secret(wrong), clock.clone())
        .token()
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(
        matches!(
            error,
            AuthError::Refused {
                aadsts: Some(7000215),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert!(message.contains("client secret is wrong"), "{message}");
    assert!(!message.contains(wrong) && !format!("{error:?}").contains(wrong));
    emulator.shutdown().await;

    let emulator = self::emulator(Scenario::single_tenant(expired), clock.clone()).await;
    let error = provider(&emulator, secret(SECRET), clock)
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AuthError::Refused {
                aadsts: Some(7000222),
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("expired"));
    emulator.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_down_is_retryable() {
    let clock = Clock::manual(start_time());
    let mut down = tenant();
    down.faults.token_endpoint_down = true;
    let emulator = emulator(Scenario::single_tenant(down), clock.clone()).await;
    let error = provider(&emulator, secret(SECRET), clock)
        .token()
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_failing_token_endpoint_is_asked_on_a_backoff_not_once_per_caller() {
    let clock = Clock::manual(start_time());
    let mut down = tenant();
    down.faults.token_endpoint_down = true;
    let emulator = emulator(Scenario::single_tenant(down), clock.clone()).await;
    let provider = provider(&emulator, secret(SECRET), clock.clone());
    assert!(provider.token().await.unwrap_err().is_retryable());
    assert_eq!(provider.token_requests(), 1);
    // A backlog of callers during the outage fails at once, without asking again.
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert!(error.to_string().contains("next attempt in"), "{error}");
    }
    assert_eq!(
        provider.token_requests(),
        1,
        "one request for the whole backlog"
    );
    // Once the backoff (1 s plus jitter for the first failure) has passed, the
    // endpoint is asked again, and a recovered endpoint ends the outage.
    emulator
        .state()
        .feed
        .set_faults(Some(TENANT), FaultScenario::default());
    clock.advance(chrono::Duration::seconds(3));
    provider.token().await.unwrap();
    assert_eq!(provider.token_requests(), 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_restart_answers_af20024_which_is_success() {
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let client = client(&emulator, provider(&emulator, secret(SECRET), clock));
    let first = client
        .start_subscription("Audit.Exchange", None)
        .await
        .unwrap();
    assert!(
        matches!(first, StartOutcome::Started(ref status) if status.status.as_deref() == Some("enabled"))
    );
    let again = client
        .start_subscription("Audit.Exchange", None)
        .await
        .unwrap();
    assert_eq!(again, StartOutcome::AlreadyEnabled);
    let listed = client.list_subscriptions().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].content_type, "Audit.Exchange");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_webhook_microsoft_cannot_validate_is_classified_with_advice() {
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let client = client(&emulator, provider(&emulator, secret(SECRET), clock));
    let webhook = WebhookRegistration {
        address: "http://127.0.0.1:1/hook".into(),
        auth_id: "x".into(),
        expiration: String::new(),
    };
    let error = client
        .start_subscription("Audit.General", Some(&webhook))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), Some(ErrorKind::WebhookNotValidated));
    assert_eq!(error.af_code(), Some("AF20021"));
    assert!(
        ErrorKind::WebhookNotValidated
            .advice()
            .unwrap()
            .contains("public_url")
    );
    emulator.shutdown().await;
}

async fn add_blobs(emulator: &ApiEmulator, count: usize, created: DateTime<Utc>) {
    for index in 0..count {
        let record = Bytes::from(format!(r#"{{"Id":"r{index}"}}"#));
        emulator
            .state()
            .feed
            .add_blob(
                emulator.base_url(),
                TENANT,
                "Audit.Exchange",
                &[record],
                created,
            )
            .expect("subscribed");
    }
}

#[tokio::test]
async fn content_listing_follows_next_page_uri_to_the_end() {
    let clock = Clock::manual(start_time());
    let mut scenario = Scenario::single_tenant(tenant());
    scenario.page_size = 2;
    let emulator = emulator(scenario, clock.clone()).await;
    let client = client(
        &emulator,
        provider(&emulator, secret(SECRET), clock.clone()),
    );
    client
        .start_subscription("Audit.Exchange", None)
        .await
        .unwrap();
    clock.advance(Duration::minutes(1));
    add_blobs(&emulator, 5, clock.now()).await;
    clock.advance(Duration::minutes(1));

    let mut page = client
        .list_content("Audit.Exchange", start_time(), clock.now())
        .await
        .unwrap();
    let mut content_ids: Vec<String> = Vec::new();
    let mut pages = 1;
    loop {
        content_ids.extend(page.items.iter().map(|item| item.content_id.clone()));
        let Some(next) = page.next_page.take() else {
            break;
        };
        page = client.content_page(next).await.unwrap();
        pages += 1;
    }
    assert_eq!(pages, 3);
    assert_eq!(content_ids.len(), 5);
    let blob = client.fetch_blob(&page.items[0].content_uri).await.unwrap();
    assert_eq!(blob.bytes().await.unwrap().as_ref(), br#"[{"Id":"r4"}]"#);
    emulator.shutdown().await;
}

#[tokio::test]
async fn no_token_is_sent_to_a_foreign_next_page_or_content_uri() {
    let clock = Clock::manual(start_time());
    let foreign = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let mut pointing_away = tenant();
    pointing_away.faults.foreign_next_page_base = Some(foreign.base_url().to_string());
    pointing_away.faults.foreign_content_uri_base = Some(foreign.base_url().to_string());
    let mut scenario = Scenario::single_tenant(pointing_away);
    scenario.page_size = 1;
    let emulator = emulator(scenario, clock.clone()).await;
    let client = client(
        &emulator,
        provider(&emulator, secret(SECRET), clock.clone()),
    );
    client
        .start_subscription("Audit.Exchange", None)
        .await
        .unwrap();
    clock.advance(Duration::minutes(1));
    add_blobs(&emulator, 2, clock.now()).await;
    clock.advance(Duration::minutes(1));

    let error = client
        .list_content("Audit.Exchange", start_time(), clock.now())
        .await
        .expect_err("the NextPageUri names a foreign host");
    assert!(matches!(error, ApiError::ForeignUrl { .. }), "{error:?}");
    let listed = emulator.state().feed.add_blob(
        emulator.base_url(),
        TENANT,
        "Audit.Exchange",
        &[Bytes::from_static(b"{}")],
        clock.now(),
    );
    let foreign_uri = listed.unwrap().content_uri;
    assert!(foreign_uri.starts_with(foreign.base_url()));
    let error = client
        .fetch_blob(&foreign_uri)
        .await
        .expect_err("foreign contentUri");
    assert!(matches!(error, ApiError::ForeignUrl { .. }), "{error:?}");
    assert!(
        foreign.state().inspection().requests.is_empty(),
        "the foreign host saw no request at all"
    );
    emulator.shutdown().await;
    foreign.shutdown().await;
}

#[tokio::test]
async fn throttling_pauses_the_tenant_with_the_retry_after_it_names() {
    let clock = Clock::manual(start_time());
    let mut scenario = Scenario::single_tenant(tenant());
    scenario.throttle.requests_per_window = 2;
    scenario.throttle.window_secs = 3600.0;
    scenario.throttle.response = ThrottleResponse::Http429;
    let emulator = emulator(scenario, clock.clone()).await;
    let client = client(&emulator, provider(&emulator, secret(SECRET), clock));
    client.list_subscriptions().await.unwrap();
    client.list_subscriptions().await.unwrap();
    let error = client.list_subscriptions().await.expect_err("over budget");
    assert_eq!(error.kind(), Some(ErrorKind::Throttled));
    assert!(error.retry_after().is_some(), "{error:?}");
    assert!(error.is_retryable());
    assert!(client.is_throttled(), "the whole tenant pauses");
    emulator.shutdown().await;
}

#[tokio::test]
async fn af429_as_http_403_is_throttling_too() {
    let clock = Clock::manual(start_time());
    let mut scenario = Scenario::single_tenant(tenant());
    scenario.throttle.requests_per_window = 1;
    scenario.throttle.window_secs = 3600.0;
    scenario.throttle.response = ThrottleResponse::Af429;
    let emulator = emulator(scenario, clock.clone()).await;
    let client = client(&emulator, provider(&emulator, secret(SECRET), clock));
    client.list_subscriptions().await.unwrap();
    let error = client.list_subscriptions().await.unwrap_err();
    assert_eq!(error.af_code(), Some("AF429"));
    assert_eq!(error.kind(), Some(ErrorKind::Throttled));
    assert!(client.is_throttled());
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_publisher_domain_is_resolved_once_to_its_tenant_guid() {
    use o365_connector::auth::resolve_publisher_id;
    use o365_connector::config::PublisherId;
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock).await;
    let http = reqwest::Client::new();
    let domain: PublisherId = "contoso.onmicrosoft.com".parse().unwrap();
    let resolved = resolve_publisher_id(&http, &endpoints(&emulator), &domain)
        .await
        .unwrap();
    assert_eq!(resolved, TENANT);
    let unknown: PublisherId = "fabrikam.onmicrosoft.com".parse().unwrap();
    let error = resolve_publisher_id(&http, &endpoints(&emulator), &unknown)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("fabrikam.onmicrosoft.com"),
        "{error}"
    );
    assert!(error.to_string().contains("GUID"), "{error}");
    let guid: PublisherId = PUBLISHER.parse().unwrap();
    assert_eq!(
        resolve_publisher_id(&http, &endpoints(&emulator), &guid)
            .await
            .unwrap(),
        PUBLISHER
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_http_client_trusts_the_configured_ca_file_over_tls() {
    use o365_connector::api::http::http_client;
    use o365_connector::config::ApiConfig;
    use o365_connector::emulator::api::TlsFiles;
    let dir = tempfile::tempdir().unwrap();
    let (certs, _) = o365_connector::server::dev_certs::write_dev_certs(dir.path(), false).unwrap();
    let emulator = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: Scenario::single_tenant(tenant()),
        tls: Some(TlsFiles {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
        }),
        webhook_ca: None,
        clock: Clock::system(),
    })
    .await
    .unwrap();
    let mut api = ApiConfig::default();
    let discovery = format!(
        "{}/{TENANT}/v2.0/.well-known/openid-configuration",
        emulator.base_url()
    );
    let untrusting = http_client(&api, None).unwrap();
    assert!(
        untrusting.get(&discovery).send().await.is_err(),
        "the dev CA is not a public root"
    );
    api.ca_file = Some(certs.ca.clone());
    let trusting = http_client(&api, Some("replica-1")).unwrap();
    assert!(
        trusting
            .get(&discovery)
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let agent = emulator
        .state()
        .inspection()
        .requests
        .last()
        .unwrap()
        .user_agent
        .clone();
    assert_eq!(
        agent.as_deref(),
        Some(concat!(
            "o365-connector/",
            env!("CARGO_PKG_VERSION"),
            " (replica replica-1)"
        ))
    );
    api.ca_file = Some(dir.path().join("missing.pem"));
    let error = http_client(&api, None).unwrap_err();
    assert!(error.to_string().contains("api.ca_file"), "{error}");
    emulator.shutdown().await;
}

/// Since May 2025 Microsoft puts a UTF-8 byte-order mark in front of its JSON; with the
/// emulator's `bom_bodies` fault every answer the client reads carries one.
#[tokio::test]
async fn every_json_answer_is_understood_with_a_leading_byte_order_mark() {
    use o365_connector::auth::resolve_publisher_id;
    use o365_connector::config::PublisherId;
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let clock = Clock::manual(start_time());
    let mut marked = tenant();
    marked.faults.bom_bodies = true;
    let emulator = emulator(Scenario::single_tenant(marked), clock.clone()).await;
    let http = reqwest::Client::new();
    let discovery = endpoints(&emulator).openid_configuration_url("contoso.onmicrosoft.com");
    let raw = |url: Url| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().bytes().await.unwrap() }
    };
    assert!(raw(discovery.clone()).await.starts_with(BOM), "marked");

    // OpenID discovery, a refused token's error, then a token.
    let domain: PublisherId = "contoso.onmicrosoft.com".parse().unwrap();
    let resolved = resolve_publisher_id(&http, &endpoints(&emulator), &domain).await;
    assert_eq!(resolved.unwrap(), TENANT);
    let refused = provider(&emulator, secret("wrong-secret-value"), clock.clone())
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            AuthError::Refused {
                aadsts: Some(7000215),
                ..
            }
        ),
        "{refused:?}"
    );
    let client = client(
        &emulator,
        provider(&emulator, secret(SECRET), clock.clone()),
    );
    // An AF error body, a start, AF20024 (an error body that means success), the list.
    let missing = client
        .stop_subscription("Audit.Exchange")
        .await
        .unwrap_err();
    assert_eq!(
        (missing.af_code(), missing.kind()),
        (Some("AF20022"), Some(ErrorKind::SubscriptionMissing)),
        "{missing}"
    );
    let started = client.start_subscription("Audit.Exchange", None).await;
    assert!(
        matches!(started, Ok(StartOutcome::Started(_))),
        "{started:?}"
    );
    let again = client.start_subscription("Audit.Exchange", None).await;
    assert_eq!(again.unwrap(), StartOutcome::AlreadyEnabled);
    assert_eq!(client.list_subscriptions().await.unwrap().len(), 1);
    // A listing; the blob keeps its mark for the splitter, which skips it.
    clock.advance(Duration::minutes(1));
    add_blobs(&emulator, 1, clock.now()).await;
    clock.advance(Duration::minutes(1));
    let page = client
        .list_content("Audit.Exchange", start_time(), clock.now())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let blob = client.fetch_blob(&page.items[0].content_uri).await.unwrap();
    assert_eq!(
        blob.bytes().await.unwrap().as_ref(),
        b"\xEF\xBB\xBF[{\"Id\":\"r0\"}]"
    );

    // Switched off at run time like every fault.
    let answer = http
        .post(format!("{}/_emulator/control", emulator.base_url()))
        .body(r#"{"faults": {"bom_bodies": false}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(raw(discovery).await.starts_with(b"{"), "no longer marked");
    emulator.shutdown().await;
}

/// A listener standing for a foreign host: it answers every request 200 with a record of
/// its own and counts the connections it accepted, so a client that followed a redirect
/// would both reach it and get content it must never take for the tenant's.
struct ForeignHost {
    base_url: String,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ForeignHost {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = [0u8; 8192];
                    let _ = stream.read(&mut head).await;
                    let body = r#"[{"Operation":"INJECTED-BY-FOREIGN-HOST","access_token":"x","expires_in":3600}]"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            base_url,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn host(&self) -> &str {
        self.base_url.trim_start_matches("http://")
    }
}

impl Drop for ForeignHost {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The connector's own HTTP client (the one production builds), not a test client.
fn connector_http() -> reqwest::Client {
    o365_connector::api::http::http_client(&o365_connector::config::ApiConfig::default(), None)
        .unwrap()
}

fn redirecting_to(
    foreign: &ForeignHost,
    endpoint: o365_connector::emulator::api::scenario::RedirectedEndpoint,
) -> FaultScenario {
    FaultScenario {
        redirect_to: Some(foreign.base_url.clone()),
        redirect_endpoints: vec![endpoint],
        ..FaultScenario::default()
    }
}

#[tokio::test]
async fn a_redirect_from_the_token_listing_or_blob_endpoint_is_never_followed() {
    use o365_connector::emulator::api::scenario::RedirectedEndpoint;
    let foreign = ForeignHost::start().await;
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let feed = &emulator.state().feed;
    let config = TokenSourceConfig {
        tenant_id: TENANT.into(),
        token_url: endpoints(&emulator).token_url(TENANT),
        client_id: CLIENT.into(),
        scope: endpoints(&emulator).token_scope().to_string(),
        credential: secret(SECRET),
    };
    let tokens = Arc::new(TokenProvider::new(connector_http(), config, clock.clone()));
    let client = ApiClient::new(
        connector_http(),
        ApiClientConfig {
            tenant_id: TENANT.into(),
            endpoints: endpoints(&emulator),
            publisher_id: None,
            requests_per_minute: NonZeroU32::new(2000).unwrap(),
        },
        tokens.clone(),
    );

    // The token endpoint answers 307: following it would re-POST the client secret.
    feed.set_faults(
        Some(TENANT),
        redirecting_to(&foreign, RedirectedEndpoint::Token),
    );
    let error = tokens.token().await.expect_err("a redirect is not a token");
    match &error {
        AuthError::Redirected { status, target, .. } => {
            assert_eq!((*status, target.as_str()), (307, foreign.host()));
        }
        other => panic!("expected AuthError::Redirected, got {other:?}"),
    }
    assert!(
        error.is_retryable(),
        "paced and retried like a failing endpoint"
    );
    assert!(tokens.in_outage(), "the next attempt waits for the backoff");
    let message = error.to_string();
    assert!(
        message.contains("api.login_url") && !message.contains(SECRET),
        "{message}"
    );

    // Token works again; listings and blobs answer 302.
    clock.advance(Duration::minutes(2));
    feed.set_faults(Some(TENANT), FaultScenario::default());
    client
        .start_subscription("Audit.Exchange", None)
        .await
        .unwrap();
    clock.advance(Duration::minutes(1));
    add_blobs(&emulator, 1, clock.now()).await;
    clock.advance(Duration::minutes(1));
    let listed = client
        .list_content("Audit.Exchange", start_time(), clock.now())
        .await
        .unwrap();
    let content_uri = listed.items[0].content_uri.clone();
    for (endpoint, operation) in [
        (RedirectedEndpoint::Listing, "subscriptions/content"),
        (RedirectedEndpoint::Blob, "blob"),
    ] {
        feed.set_faults(Some(TENANT), redirecting_to(&foreign, endpoint));
        let error = match endpoint {
            RedirectedEndpoint::Listing => client
                .list_content("Audit.Exchange", start_time(), clock.now())
                .await
                .map(drop),
            _ => client.fetch_blob(&content_uri).await.map(drop),
        }
        .expect_err("a redirect is not an answer");
        match &error {
            ApiError::Service {
                kind,
                status,
                operation: failed,
                message,
                ..
            } => {
                assert_eq!(
                    (*kind, *status, *failed),
                    (ErrorKind::Redirected, 302, operation)
                );
                assert!(message.contains(foreign.host()), "{message}");
            }
            other => panic!("expected a Redirected service error, got {other:?}"),
        }
        assert!(error.is_retryable(), "backoff, as a failing endpoint");
        let advice = ErrorKind::Redirected.advice().unwrap();
        assert!(advice.contains("api.api_url"), "{advice}");
    }
    assert_eq!(
        foreign.connections(),
        0,
        "the foreign host received nothing"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn content_uris_with_user_info_a_query_a_fragment_or_outside_the_feed_root_are_refused_unsent()
 {
    let clock = Clock::manual(start_time());
    let emulator = emulator(Scenario::single_tenant(tenant()), clock.clone()).await;
    let client = client(
        &emulator,
        provider(&emulator, secret(SECRET), clock.clone()),
    );
    let base = emulator.base_url().trim_end_matches('/').to_string();
    let host = base.trim_start_matches("http://");
    let root = format!("{base}/api/v1.0/{TENANT}/activity/feed");
    let refused = [
        format!("http://user:pw@{host}/api/v1.0/{TENANT}/activity/feed/audit/1"),
        format!("{root}/audit/1?next=elsewhere"),
        format!("{root}/audit/1#x"),
        format!("{base}/api/v1.0/{TENANT}/subscriptions/list"),
        format!("{base}/_emulator/requests/{TENANT}"),
    ];
    for uri in &refused {
        let error = client.fetch_blob(uri).await.expect_err(uri);
        assert!(
            matches!(error, ApiError::ForeignUrl { .. }),
            "{uri}: {error:?}"
        );
        assert!(!error.to_string().contains("pw"), "{error}");
    }
    assert!(
        emulator.state().inspection().requests.is_empty(),
        "no request at all, not even for a token"
    );
    emulator.shutdown().await;
}

//! The emulated Entra ID login endpoints over real HTTP (and once over real TLS): v1 and
//! v2 client-credentials tokens by secret (body or HTTP Basic) and by certificate client
//! assertion, AADSTS errors with Microsoft's statuses and codes (each counted as a
//! rejection), OpenID discovery, and the verification of bearer tokens.

use std::collections::BTreeSet;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{Duration, TimeZone, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use o365_connector::clock::Clock;
use o365_connector::emulator::api::scenario::Scenario;
use o365_connector::emulator::api::token::verify_bearer;
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const DOMAIN: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "a6099727-6b7b-482c-b509-1df309acc563";
/// Characters that must be form-encoded, to prove both encodings are undone.
const SECRET: &str = "s3cr3t+/ v@lue=&:%";
const OTHER_TENANT: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
const OTHER_CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_SECRET: &str = "expired-secret-value";
const MANAGE: &str = "https://manage.office.com";
/// `openssl x509 -in tests/fixtures/app-cert/app.pem -noout -fingerprint -sha1 / -sha256`.
const APP_CERT_SHA1_HEX: &str = "142F0B79DAFA538DA56BCC305B5B400B960F8090";
const APP_CERT_SHA256_HEX: &str =
    "75850C39DE095261393ADB7BFD49E0E3D865E7505964FC3599B72D3BD6EF2317";

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn read_json(path: &str) -> Value {
    let text = std::fs::read_to_string(fixture(path)).expect("fixture is readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Two tenants: Contoso (secret and certificate) and one whose secret has expired.
fn scenario() -> Scenario {
    let certificate = fixture("app-cert/app.pem");
    let text = format!(
        r#"
        [[tenants]]
        tenant_id = "{TENANT}"
        domain = "{DOMAIN}"
        client_id = "{CLIENT}"
        client_secret = "{secret}"
        certificate = "{certificate}"
        roles = ["ActivityFeed.Read", "ActivityFeed.ReadDlp"]

        [[tenants]]
        tenant_id = "{OTHER_TENANT}"
        client_id = "{OTHER_CLIENT}"
        client_secret = "{OTHER_SECRET}"
        secret_expired = true
        roles = ["ActivityFeed.Read"]
        "#,
        secret = SECRET.replace('\\', "\\\\"),
        certificate = certificate.display(),
    );
    let scenario: Scenario = toml::from_str(&text).expect("test scenario parses");
    scenario.validate().expect("test scenario is valid");
    scenario
}

fn start_clock() -> Clock {
    Clock::manual(Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap())
}

async fn start_with(scenario: Scenario, clock: Clock) -> ApiEmulator {
    ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock,
    })
    .await
    .expect("the emulator starts")
}

async fn start() -> (ApiEmulator, Clock) {
    let clock = start_clock();
    (start_with(scenario(), clock.clone()).await, clock)
}

fn v1_url(emulator: &ApiEmulator, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/token", emulator.base_url())
}

fn v2_url(emulator: &ApiEmulator, tenant: &str) -> String {
    format!("{}/{tenant}/oauth2/v2.0/token", emulator.base_url())
}

/// POSTs a form and returns the status and JSON body.
async fn post_form(url: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .form(form)
        .send()
        .await
        .expect("request is answered");
    let status = response.status();
    (status, response.json().await.expect("body is JSON"))
}

fn secret_form_v2(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", CLIENT.to_string()),
        ("client_secret", secret.to_string()),
        ("scope", format!("{MANAGE}/.default")),
    ]
}

fn as_refs<'a>(form: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    form.iter()
        .map(|(key, value)| (*key, value.as_str()))
        .collect()
}

/// The payload of a JWT, decoded without verification (as a client reads it).
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("token has a payload");
    let bytes = URL_SAFE_NO_PAD
        .decode(payload)
        .expect("payload is base64url");
    serde_json::from_slice(&bytes).expect("payload is JSON")
}

fn keys_of(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect()
}

fn rejections_by_code(emulator: &ApiEmulator, code: &str) -> u64 {
    let inspection = emulator.state().inspection();
    inspection
        .rejections
        .by_code
        .get(code)
        .copied()
        .unwrap_or(0)
}

fn rejections_by_rule(emulator: &ApiEmulator, rule: &str) -> u64 {
    let inspection = emulator.state().inspection();
    inspection
        .rejections
        .by_rule
        .get(rule)
        .copied()
        .unwrap_or(0)
}

/// Asserts Entra's error envelope with this status, error and code.
fn assert_aadsts(status: StatusCode, body: &Value, expected: (StatusCode, &str, u32)) {
    let (expected_status, expected_error, code) = expected;
    assert_eq!(status, expected_status, "status of {body}");
    assert_eq!(body["error"], expected_error, "error of {body}");
    assert_eq!(body["error_codes"], json!([code]), "error_codes of {body}");
    let description = body["error_description"].as_str().expect("a description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "description {description:?}"
    );
    let expected_keys = [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    ];
    assert_eq!(
        keys_of(body),
        expected_keys.iter().map(|key| key.to_string()).collect()
    );
    assert!(
        body["error_uri"]
            .as_str()
            .is_some_and(|uri| uri.ends_with(&format!("/error?code={code}")))
    );
}

#[tokio::test]
async fn v1_token_by_secret_has_string_lifetimes_like_ms_docs_sample() {
    let (emulator, clock) = start().await;
    let url = format!("{}?api-version=1.0", v1_url(&emulator, TENANT));
    let form = [
        ("grant_type", "client_credentials"),
        ("resource", MANAGE),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
    ];
    let (status, body) = post_form(&url, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sample = read_json("ms-docs/ms_docs_token_response_v1_client_credentials.json");
    assert_eq!(keys_of(&body), keys_of(&sample));
    for key in [
        "expires_in",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
    ] {
        assert!(
            body[key].is_string(),
            "{key} is a string like the sample: {body}"
        );
    }
    let now = clock.now().timestamp();
    assert_eq!(body["expires_in"], "3599");
    assert_eq!(body["not_before"], now.to_string());
    assert_eq!(body["expires_on"], (now + 3599).to_string());
    assert_eq!(body["resource"], MANAGE);
    assert_eq!(body["token_type"], "Bearer");

    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], MANAGE);
    assert_eq!(claims["exp"], now + 3599);
    assert_eq!(claims["appidacr"], "1");
}

#[tokio::test]
async fn v2_token_by_secret_has_number_lifetimes_like_ms_docs_sample() {
    let (emulator, clock) = start().await;
    let form = secret_form_v2(SECRET);
    let (status, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let sample = read_json("ms-docs/ms_docs_token_response_v2_client_credentials.json");
    let mut expected_keys = keys_of(&sample);
    expected_keys.insert("ext_expires_in".to_string());
    assert_eq!(keys_of(&body), expected_keys);
    assert!(sample["expires_in"].is_number());
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], MANAGE, "aud is the scope without /.default");
    assert_eq!(claims["exp"], clock.now().timestamp() + 3599);
}

#[tokio::test]
async fn token_claims_have_the_shape_of_ms_docs_app_only_token() {
    let (emulator, clock) = start().await;
    let form = secret_form_v2(SECRET);
    let (_, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    let claims = claims_of(body["access_token"].as_str().unwrap());

    let sample = read_json("ms-docs/ms_docs_app_only_access_token_claims.json");
    assert_eq!(keys_of(&claims), keys_of(&sample));
    let now = clock.now().timestamp();
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(
        claims["roles"],
        json!(["ActivityFeed.Read", "ActivityFeed.ReadDlp"])
    );
    assert_eq!(claims["iss"], format!("https://sts.windows.net/{TENANT}/"));
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["iat"], now);
    assert_eq!(claims["nbf"], now);
    assert_eq!(claims["oid"], claims["sub"]);
    let header = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
}

#[tokio::test]
async fn v2_scope_with_trailing_slash_gives_audience_without_it() {
    let (emulator, _clock) = start().await;
    let scope = format!("{MANAGE}//.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("scope", scope.as_str()),
    ];
    let (status, body) = post_form(&v2_url(&emulator, TENANT), &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["aud"],
        MANAGE
    );
}

#[tokio::test]
async fn government_clouds_and_the_emulator_itself_are_accepted_resources() {
    let (emulator, _clock) = start().await;
    let resources = [
        "https://manage-gcc.office.com",
        "https://manage.office365.us",
        "https://manage.protection.apps.mil",
        emulator.base_url(),
    ];
    for resource in resources {
        let form = [
            ("grant_type", "client_credentials"),
            ("resource", resource),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
        ];
        let (status, body) = post_form(&v1_url(&emulator, TENANT), &form).await;
        assert_eq!(status, StatusCode::OK, "{resource}: {body}");
        assert_eq!(
            claims_of(body["access_token"].as_str().unwrap())["aud"],
            resource
        );
    }
}

#[tokio::test]
async fn secret_as_http_basic_is_accepted_and_checked() {
    let (emulator, _clock) = start().await;
    let scope = format!("{MANAGE}/.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", scope.as_str()),
    ];
    let basic = |secret: &str| {
        let encode =
            |value: &str| form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(CLIENT), encode(secret)))
        )
    };
    let client = reqwest::Client::new();

    let response = client
        .post(v2_url(&emulator, TENANT))
        .header("Authorization", basic(SECRET))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["appid"],
        CLIENT
    );

    let response = client
        .post(v2_url(&emulator, TENANT))
        .header("Authorization", basic("not-the-secret"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_aadsts(
        status,
        &body,
        (StatusCode::UNAUTHORIZED, "invalid_client", 7000215),
    );
}

#[tokio::test]
async fn two_client_credentials_or_two_client_ids_are_rejected() {
    let (emulator, _clock) = start().await;
    let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:{}", "x")));
    let form = secret_form_v2(SECRET);
    let client = reqwest::Client::new();
    let response = client
        .post(v2_url(&emulator, TENANT))
        .header("Authorization", &basic)
        .form(&as_refs(&form))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_request", 9002313),
    );
    assert_eq!(
        rejections_by_rule(&emulator, "multiple_client_credentials"),
        1
    );

    let other_basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{OTHER_CLIENT}:{SECRET}"))
    );
    let scope = format!("{MANAGE}/.default");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        ("scope", scope.as_str()),
    ];
    let response = client
        .post(v2_url(&emulator, TENANT))
        .header("Authorization", &other_basic)
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_request", 9002313),
    );
    assert_eq!(rejections_by_rule(&emulator, "client_id_conflict"), 1);
}

#[tokio::test]
async fn get_on_the_token_endpoint_is_aadsts900561() {
    let (emulator, _clock) = start().await;
    for url in [v1_url(&emulator, TENANT), v2_url(&emulator, TENANT)] {
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status} {text:?}"));
        assert_aadsts(
            status,
            &body,
            (StatusCode::BAD_REQUEST, "invalid_request", 900561),
        );
    }
}

#[tokio::test]
async fn error_echoes_client_request_id_as_correlation_id() {
    let (emulator, _clock) = start().await;
    let request_id = "5f1d2c3b-4a59-4687-9e8f-0a1b2c3d4e5f";
    let form = secret_form_v2("wrong");
    let response = reqwest::Client::new()
        .post(v2_url(&emulator, TENANT))
        .header("client-request-id", request_id)
        .form(&as_refs(&form))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store, no-cache");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["correlation_id"], request_id);
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains(&format!("Correlation ID: {request_id}")));
    assert!(
        description.contains("Timestamp: 2026-03-01 12:00:00Z"),
        "{description}"
    );
    assert_eq!(body["timestamp"], "2026-03-01 12:00:00Z");
}

#[tokio::test]
async fn tenant_domain_is_accepted_in_any_case() {
    let (emulator, _clock) = start().await;
    let form = secret_form_v2(SECRET);
    let url = v2_url(&emulator, &DOMAIN.to_ascii_uppercase());
    let (status, body) = post_form(&url, &as_refs(&form)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], TENANT, "the token names the tenant GUID");
}

/// One rejected token request and what Entra answers.
struct ErrorCase {
    name: &'static str,
    tenant: &'static str,
    v2: bool,
    form: Vec<(&'static str, String)>,
    expected: (StatusCode, &'static str, u32),
    rule: &'static str,
}

fn error_cases() -> Vec<ErrorCase> {
    let with = |changes: &[(&'static str, Option<&str>)]| {
        let mut form = secret_form_v2(SECRET);
        for (key, value) in changes {
            form.retain(|(existing, _)| existing != key);
            if let Some(value) = value {
                form.push((key, value.to_string()));
            }
        }
        form
    };
    let v1_form = |resource: &str| {
        vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", CLIENT.to_string()),
            ("client_secret", SECRET.to_string()),
            ("resource", resource.to_string()),
        ]
    };
    let bad = StatusCode::BAD_REQUEST;
    let unauthorized = StatusCode::UNAUTHORIZED;
    let case = |name, tenant, v2, form, expected, rule| ErrorCase {
        name,
        tenant,
        v2,
        form,
        expected,
        rule,
    };
    vec![
        case(
            "unknown tenant",
            "00000000-0000-0000-0000-000000000000",
            true,
            with(&[]),
            (bad, "invalid_request", 90002),
            "unknown_tenant",
        ),
        case(
            "unknown domain",
            "fabrikam.onmicrosoft.com",
            false,
            v1_form(MANAGE),
            (bad, "invalid_request", 90002),
            "unknown_tenant",
        ),
        case(
            "unknown client",
            TENANT,
            true,
            with(&[("client_id", Some(OTHER_CLIENT))]),
            (bad, "unauthorized_client", 700016),
            "unknown_client",
        ),
        case(
            "wrong secret",
            TENANT,
            true,
            with(&[("client_secret", Some("wrong"))]),
            (unauthorized, "invalid_client", 7000215),
            "bad_secret",
        ),
        case(
            "no credential",
            TENANT,
            true,
            with(&[("client_secret", None)]),
            (unauthorized, "invalid_client", 7000216),
            "client_credential_missing",
        ),
        case(
            "no grant_type",
            TENANT,
            true,
            with(&[("grant_type", None)]),
            (bad, "invalid_request", 900144),
            "missing_parameter",
        ),
        case(
            "password grant",
            TENANT,
            true,
            with(&[("grant_type", Some("password"))]),
            (bad, "unsupported_grant_type", 70003),
            "unsupported_grant_type",
        ),
        case(
            "no client_id",
            TENANT,
            true,
            with(&[("client_id", None)]),
            (bad, "invalid_request", 900144),
            "missing_parameter",
        ),
        case(
            "no scope",
            TENANT,
            true,
            with(&[("scope", None)]),
            (bad, "invalid_request", 900144),
            "missing_parameter",
        ),
        case(
            "scope without /.default",
            TENANT,
            true,
            with(&[("scope", Some(MANAGE))]),
            (bad, "invalid_scope", 1002012),
            "scope_without_default",
        ),
        case(
            "two resources",
            TENANT,
            true,
            with(&[(
                "scope",
                Some("https://manage.office.com/.default https://graph.microsoft.com/.default"),
            )]),
            (bad, "invalid_scope", 70011),
            "invalid_scope",
        ),
        case(
            "unknown v2 resource",
            TENANT,
            true,
            with(&[(
                "scope",
                Some("https://api.unknown-resource.example/.default"),
            )]),
            (bad, "invalid_resource", 500011),
            "unknown_resource",
        ),
        case(
            "unknown v1 resource",
            TENANT,
            false,
            v1_form("https://api.unknown-resource.example"),
            (bad, "invalid_resource", 500011),
            "unknown_resource",
        ),
        case(
            "no v1 resource",
            TENANT,
            false,
            v1_form(""),
            (bad, "invalid_request", 900144),
            "missing_parameter",
        ),
        case(
            "expired secret",
            OTHER_TENANT,
            true,
            vec![
                ("grant_type", "client_credentials".to_string()),
                ("client_id", OTHER_CLIENT.to_string()),
                ("client_secret", OTHER_SECRET.to_string()),
                ("scope", format!("{MANAGE}/.default")),
            ],
            (unauthorized, "invalid_client", 7000222),
            "secret_expired",
        ),
        case(
            "wrong secret of an app whose secret expired",
            OTHER_TENANT,
            true,
            vec![
                ("grant_type", "client_credentials".to_string()),
                ("client_id", OTHER_CLIENT.to_string()),
                ("client_secret", "wrong".to_string()),
                ("scope", format!("{MANAGE}/.default")),
            ],
            (unauthorized, "invalid_client", 7000215),
            "bad_secret",
        ),
    ]
}

#[tokio::test]
async fn rejected_token_requests_answer_entra_errors_and_are_counted() {
    let (emulator, _clock) = start().await;
    for case in error_cases() {
        let code_name = format!("AADSTS{}", case.expected.2);
        let before_code = rejections_by_code(&emulator, &code_name);
        let before_rule = rejections_by_rule(&emulator, case.rule);
        let url = if case.v2 {
            v2_url(&emulator, case.tenant)
        } else {
            v1_url(&emulator, case.tenant)
        };
        let (status, body) = post_form(&url, &as_refs(&case.form)).await;
        println!("{}: {status} {body}", case.name);
        assert_aadsts(status, &body, case.expected);
        let text = body.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(OTHER_SECRET),
            "{}: no secret in {text}",
            case.name
        );
        assert_eq!(
            rejections_by_code(&emulator, &code_name),
            before_code + 1,
            "{}",
            case.name
        );
        assert_eq!(
            rejections_by_rule(&emulator, case.rule),
            before_rule + 1,
            "{}",
            case.name
        );
    }
}

#[tokio::test]
async fn json_body_is_answered_as_a_missing_grant_type() {
    let (emulator, _clock) = start().await;
    let response = reqwest::Client::new()
        .post(v2_url(&emulator, TENANT))
        .json(&json!({"grant_type": "client_credentials", "client_id": CLIENT}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_request", 900144),
    );
}

#[tokio::test]
async fn token_endpoint_down_fault_answers_503_temporarily_unavailable() {
    let mut scenario = scenario();
    scenario.tenants[0].faults.token_endpoint_down = true;
    let emulator = start_with(scenario, start_clock()).await;
    let form = secret_form_v2(SECRET);
    let (status, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    assert_aadsts(
        status,
        &body,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            90033,
        ),
    );
    assert_eq!(rejections_by_rule(&emulator, "token_endpoint_down"), 1);
    // The other tenant is not affected.
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", OTHER_CLIENT),
        ("client_secret", "wrong"),
        ("scope", "https://manage.office.com/.default"),
    ];
    let (status, _) = post_form(&v2_url(&emulator, OTHER_TENANT), &form).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ---- client assertions -------------------------------------------------------------

/// The DER bytes of the PEM certificate.
fn app_cert_der() -> Vec<u8> {
    let pem = std::fs::read_to_string(fixture("app-cert/app.pem")).unwrap();
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).unwrap()
}

fn x5t_sha1() -> String {
    let digest = Sha1::digest(app_cert_der());
    assert_eq!(hex::encode_upper(digest), APP_CERT_SHA1_HEX);
    URL_SAFE_NO_PAD.encode(digest)
}

fn x5t_sha256() -> String {
    let digest = Sha256::digest(app_cert_der());
    assert_eq!(hex::encode_upper(digest), APP_CERT_SHA256_HEX);
    URL_SAFE_NO_PAD.encode(digest)
}

fn key(name: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(&format!("app-cert/{name}"))).unwrap();
    EncodingKey::from_rsa_pem(&pem).expect("test key parses")
}

/// A client assertion header in one of the two styles Entra accepts.
fn header(style: Algorithm) -> Header {
    let mut header = Header::new(style);
    match style {
        Algorithm::PS256 => header.x5t_s256 = Some(x5t_sha256()),
        _ => header.x5t = Some(x5t_sha1()),
    }
    header
}

fn assertion_claims(clock: &Clock, audience: &str) -> Value {
    let now = clock.now().timestamp();
    json!({
        "aud": audience,
        "iss": CLIENT,
        "sub": CLIENT,
        "jti": "0b5a4a7c-0d3f-4c44-9a1e-1e0a9c1f1c11",
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    })
}

fn sign(header: &Header, claims: &Value, key_file: &str) -> String {
    jsonwebtoken::encode(header, claims, &key(key_file)).expect("assertion signs")
}

async fn post_assertion(url: &str, assertion: &str, v2: bool) -> (StatusCode, Value) {
    let scope = format!("{MANAGE}/.default");
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    if v2 {
        form.push(("scope", scope.as_str()));
    } else {
        form.push(("resource", MANAGE));
    }
    post_form(url, &form).await
}

#[tokio::test]
async fn assertion_rs256_with_x5t_is_accepted_on_v2() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    let assertion = sign(
        &header(Algorithm::RS256),
        &assertion_claims(&clock, &url),
        "app-key.pem",
    );
    let (status, body) = post_assertion(&url, &assertion, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["appid"], CLIENT);
    assert_eq!(claims["appidacr"], "2", "certificate authentication");
}

#[tokio::test]
async fn assertion_ps256_with_x5t_s256_is_accepted_on_v1_and_on_the_domain_url() {
    let (emulator, clock) = start().await;
    let url = v1_url(&emulator, TENANT);
    let assertion = sign(
        &header(Algorithm::PS256),
        &assertion_claims(&clock, &url),
        "app-key.pem",
    );
    let (status, body) = post_assertion(&url, &assertion, false).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in"], "3599");

    let url = v2_url(&emulator, DOMAIN);
    let assertion = sign(
        &header(Algorithm::PS256),
        &assertion_claims(&clock, &url),
        "app-key.pem",
    );
    let (status, body) = post_assertion(&url, &assertion, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn assertion_signed_by_another_key_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    for style in [Algorithm::RS256, Algorithm::PS256] {
        let assertion = sign(
            &header(style),
            &assertion_claims(&clock, &url),
            "other-key.pem",
        );
        let (status, body) = post_assertion(&url, &assertion, true).await;
        assert_aadsts(
            status,
            &body,
            (StatusCode::UNAUTHORIZED, "invalid_client", 700027),
        );
    }
    assert_eq!(rejections_by_rule(&emulator, "assertion_bad_signature"), 2);
    assert_eq!(rejections_by_code(&emulator, "AADSTS700027"), 2);
}

#[tokio::test]
async fn assertion_naming_another_certificate_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    let mut unknown = Header::new(Algorithm::RS256);
    unknown.x5t = Some(URL_SAFE_NO_PAD.encode([7u8; 20]));
    let mut none = Header::new(Algorithm::RS256);
    none.x5t = None;
    for header in [unknown, none] {
        let assertion = sign(&header, &assertion_claims(&clock, &url), "app-key.pem");
        let (status, body) = post_assertion(&url, &assertion, true).await;
        assert_aadsts(
            status,
            &body,
            (StatusCode::UNAUTHORIZED, "invalid_client", 700027),
        );
    }
    assert_eq!(
        rejections_by_rule(&emulator, "assertion_unknown_certificate"),
        2
    );
}

#[tokio::test]
async fn assertion_for_another_token_url_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    let wrong_audiences = [
        v1_url(&emulator, TENANT),
        format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"),
    ];
    for audience in wrong_audiences {
        let assertion = sign(
            &header(Algorithm::RS256),
            &assertion_claims(&clock, &audience),
            "app-key.pem",
        );
        let (status, body) = post_assertion(&url, &assertion, true).await;
        assert_aadsts(
            status,
            &body,
            (StatusCode::UNAUTHORIZED, "invalid_client", 700023),
        );
    }
    assert_eq!(rejections_by_rule(&emulator, "assertion_wrong_audience"), 2);
}

#[tokio::test]
async fn assertion_issued_for_another_client_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    for claim in ["iss", "sub"] {
        let mut claims = assertion_claims(&clock, &url);
        claims[claim] = json!(OTHER_CLIENT);
        let assertion = sign(&header(Algorithm::RS256), &claims, "app-key.pem");
        let (status, body) = post_assertion(&url, &assertion, true).await;
        assert_aadsts(
            status,
            &body,
            (StatusCode::UNAUTHORIZED, "invalid_client", 700021),
        );
    }
    assert_eq!(rejections_by_rule(&emulator, "assertion_wrong_issuer"), 2);
}

#[tokio::test]
async fn assertion_outside_its_time_range_by_the_emulator_clock_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    let assertion = sign(
        &header(Algorithm::RS256),
        &assertion_claims(&clock, &url),
        "app-key.pem",
    );
    // Valid now; ten minutes of validity plus five of skew later, expired.
    clock.advance(Duration::minutes(16));
    let (status, body) = post_assertion(&url, &assertion, true).await;
    assert_aadsts(
        status,
        &body,
        (StatusCode::UNAUTHORIZED, "invalid_client", 700024),
    );

    let mut claims = assertion_claims(&clock, &url);
    claims["nbf"] = json!(clock.now().timestamp() + 3600);
    claims["exp"] = json!(clock.now().timestamp() + 4200);
    let early = sign(&header(Algorithm::RS256), &claims, "app-key.pem");
    let (status, body) = post_assertion(&url, &early, true).await;
    assert_aadsts(
        status,
        &body,
        (StatusCode::UNAUTHORIZED, "invalid_client", 700024),
    );
    assert_eq!(
        rejections_by_rule(&emulator, "assertion_out_of_time_range"),
        2
    );
}

#[tokio::test]
async fn malformed_or_hmac_assertion_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, TENANT);
    let (status, body) = post_assertion(&url, "not-a-jwt", true).await;
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_request", 50027),
    );

    let hmac = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &assertion_claims(&clock, &url),
        &EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    let (status, body) = post_assertion(&url, &hmac, true).await;
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_request", 5002738),
    );
}

#[tokio::test]
async fn assertion_for_a_tenant_without_certificate_is_rejected() {
    let (emulator, clock) = start().await;
    let url = v2_url(&emulator, OTHER_TENANT);
    let mut claims = assertion_claims(&clock, &url);
    claims["iss"] = json!(OTHER_CLIENT);
    claims["sub"] = json!(OTHER_CLIENT);
    let assertion = sign(&header(Algorithm::RS256), &claims, "app-key.pem");
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", OTHER_CLIENT),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
        ("scope", "https://manage.office.com/.default"),
    ];
    let (status, body) = post_form(&url, &form).await;
    assert_aadsts(
        status,
        &body,
        (StatusCode::UNAUTHORIZED, "invalid_client", 700027),
    );
}

// ---- bearer verification -----------------------------------------------------------

fn bearer(token: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

fn roles() -> Vec<String> {
    vec!["ActivityFeed.Read".to_string()]
}

#[tokio::test]
async fn bearer_from_the_token_endpoint_verifies_with_its_claims() {
    let (emulator, _clock) = start().await;
    let form = secret_form_v2(SECRET);
    let (_, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    let token = body["access_token"].as_str().unwrap();
    let claims = verify_bearer(emulator.state(), &bearer(token)).expect("token verifies");
    assert_eq!(claims.tid, TENANT);
    assert_eq!(claims.appid, CLIENT);
    assert_eq!(claims.aud, MANAGE);
    assert_eq!(claims.roles, ["ActivityFeed.Read", "ActivityFeed.ReadDlp"]);
}

#[tokio::test]
async fn bearer_expires_by_the_emulator_clock() {
    let (emulator, clock) = start().await;
    let state = emulator.state();
    let issued = state
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, MANAGE, &roles());
    assert_eq!(issued.expires_in_secs, 3599);
    clock.advance(Duration::seconds(3598));
    assert!(verify_bearer(state, &bearer(&issued.access_token)).is_ok());
    clock.advance(Duration::seconds(1));
    let error = verify_bearer(state, &bearer(&issued.access_token)).unwrap_err();
    assert_eq!(error.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error.code, "InvalidAuthenticationToken");
    assert_eq!(error.rule, "bearer_expired");
}

#[tokio::test]
async fn shorter_lifetime_applies_to_tokens_issued_afterwards() {
    let (emulator, clock) = start().await;
    let state = emulator.state();
    let before = state
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, MANAGE, &roles());
    state.tokens.set_lifetime_secs(60);
    let form = secret_form_v2(SECRET);
    let (_, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    assert_eq!(body["expires_in"], 60);
    let after = body["access_token"].as_str().unwrap().to_string();
    clock.advance(Duration::seconds(61));
    assert_eq!(
        verify_bearer(state, &bearer(&after)).unwrap_err().rule,
        "bearer_expired"
    );
    assert!(verify_bearer(state, &bearer(&before.access_token)).is_ok());
}

#[tokio::test]
async fn missing_forged_or_misaddressed_bearer_is_rejected() {
    let (emulator, clock) = start().await;
    let state = emulator.state();
    let good = state
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, MANAGE, &roles())
        .access_token;

    let missing = verify_bearer(state, &axum::http::HeaderMap::new()).unwrap_err();
    assert_eq!(missing.rule, "bearer_missing");
    let mut basic = axum::http::HeaderMap::new();
    basic.insert(
        axum::http::header::AUTHORIZATION,
        "Basic Zm9vOmJhcg==".parse().unwrap(),
    );
    assert_eq!(
        verify_bearer(state, &basic).unwrap_err().rule,
        "bearer_missing"
    );
    assert_eq!(
        verify_bearer(state, &bearer("garbage")).unwrap_err().rule,
        "bearer_invalid"
    );

    // Same payload with elevated roles, old signature: a forgery.
    let parts: Vec<&str> = good.split('.').collect();
    let mut claims = claims_of(&good);
    claims["roles"] = json!(["ActivityFeed.Read", "ActivityFeed.ReadDlp", "Admin"]);
    let forged_payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    assert_eq!(
        verify_bearer(state, &bearer(&forged)).unwrap_err().rule,
        "bearer_invalid"
    );

    // A token another emulator signed is as foreign as a forgery.
    let (other, _) = start().await;
    let foreign = other
        .state()
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, MANAGE, &roles())
        .access_token;
    assert_eq!(
        verify_bearer(state, &bearer(&foreign)).unwrap_err().rule,
        "bearer_invalid"
    );

    for audience in ["https://graph.microsoft.com", "https://manage.office.com/"] {
        let token = state
            .tokens
            .issue_access_token(&clock, TENANT, CLIENT, audience, &roles())
            .access_token;
        let error = verify_bearer(state, &bearer(&token)).unwrap_err();
        assert_eq!(error.rule, "bearer_wrong_audience", "{audience}");
        assert_eq!(error.status, StatusCode::UNAUTHORIZED);
    }
    let own = state
        .tokens
        .issue_access_token(&clock, TENANT, CLIENT, emulator.base_url(), &roles())
        .access_token;
    assert!(verify_bearer(state, &bearer(&own)).is_ok());
}

#[tokio::test]
async fn bearer_rejection_is_challenged_with_www_authenticate() {
    use axum::response::IntoResponse;
    let (emulator, _clock) = start().await;
    let error = verify_bearer(emulator.state(), &axum::http::HeaderMap::new()).unwrap_err();
    let response = error.into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn feed_answers_an_expired_token_with_401_and_a_bearer_challenge() {
    let (emulator, clock) = start().await;
    let form = secret_form_v2(SECRET);
    let (_, body) = post_form(&v2_url(&emulator, TENANT), &as_refs(&form)).await;
    let token = body["access_token"].as_str().unwrap().to_string();
    let list = format!(
        "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/list",
        emulator.base_url()
    );
    let client = reqwest::Client::new();
    let fresh = client.get(&list).bearer_auth(&token).send().await.unwrap();
    assert_eq!(fresh.status(), StatusCode::OK, "a fresh token is accepted");

    clock.advance(Duration::seconds(3600));
    let expired = client.get(&list).bearer_auth(&token).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(expired.headers()["www-authenticate"], "Bearer");
    let body: Value = expired.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(rejections_by_rule(&emulator, "bearer_expired"), 1);
}

// ---- OpenID discovery --------------------------------------------------------------

#[tokio::test]
async fn openid_discovery_resolves_a_domain_to_the_tenant_guid() {
    let (emulator, _clock) = start().await;
    let base = emulator.base_url();
    let url = format!("{base}/{DOMAIN}/v2.0/.well-known/openid-configuration");
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["issuer"], format!("{base}/{TENANT}/v2.0"));
    assert_eq!(
        body["token_endpoint"],
        format!("{base}/{TENANT}/oauth2/v2.0/token")
    );
    for key in ["authorization_endpoint", "jwks_uri", "tenant_region_scope"] {
        assert!(body[key].is_string(), "{key} in {body}");
    }

    let url = format!(
        "{base}/{}/.well-known/openid-configuration",
        DOMAIN.to_uppercase()
    );
    let body: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    assert_eq!(body["issuer"], format!("{base}/{TENANT}/"));
    assert_eq!(
        body["token_endpoint"],
        format!("{base}/{TENANT}/oauth2/token")
    );
}

#[tokio::test]
async fn discovered_jwks_uri_answers_a_key_set() {
    let (emulator, _clock) = start().await;
    for version in ["v2.0/", ""] {
        let url = format!(
            "{}/{TENANT}/{version}.well-known/openid-configuration",
            emulator.base_url()
        );
        let document: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let jwks_uri = document["jwks_uri"].as_str().unwrap();
        let response = reqwest::get(jwks_uri).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{jwks_uri}");
        let keys: Value = response.json().await.unwrap();
        assert!(keys["keys"].is_array());
    }
}

#[tokio::test]
async fn openid_discovery_of_an_unknown_tenant_is_aadsts90002() {
    let (emulator, _clock) = start().await;
    let url = format!(
        "{}/fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration",
        emulator.base_url()
    );
    let response = reqwest::get(&url).await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_aadsts(
        status,
        &body,
        (StatusCode::BAD_REQUEST, "invalid_tenant", 90002),
    );
    assert_eq!(rejections_by_code(&emulator, "AADSTS90002"), 1);
}

// ---- TLS ---------------------------------------------------------------------------

#[tokio::test]
async fn token_endpoint_serves_over_tls_trusting_the_dev_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (paths, _) =
        o365_connector::server::dev_certs::write_dev_certs(dir.path(), false).expect("dev certs");
    let emulator = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: scenario(),
        tls: Some(TlsFiles {
            cert: paths.server_cert.clone(),
            key: paths.server_key.clone(),
        }),
        webhook_ca: None,
        clock: start_clock(),
    })
    .await
    .expect("the emulator starts with TLS");
    assert!(emulator.base_url().starts_with("https://127.0.0.1:"));

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&paths.ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let form = secret_form_v2(SECRET);
    let response = client
        .post(v2_url(&emulator, TENANT))
        .form(&as_refs(&form))
        .send()
        .await
        .expect("TLS request is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(claims_of(token)["tid"], TENANT);
    emulator.shutdown().await;
}

#[tokio::test]
async fn unreadable_app_certificate_stops_the_start() {
    let mut scenario = scenario();
    scenario.tenants[0].certificate = Some(fixture("app-cert/missing.pem"));
    let result = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock: start_clock(),
    })
    .await;
    let error = result.err().expect("start fails");
    assert!(error.to_string().contains("missing.pem"), "{error}");
}

//! The configuration contract: the documented example and the issue's contract parse, the
//! environment overrides the file, secrets come from env or file and never print, and every
//! invalid file fails with a message naming the key.

use std::path::{Path, PathBuf};

use o365_connector::cloud::{Cloud, Endpoints};
use o365_connector::config::{
    Config, ConfigError, ContentType, Guid, PublisherId, StoreBackendKind, TenantCredential,
    TimestampSource,
};
use o365_connector::secret::{ExposeSecret, SecretSource};

const CONTOSO_SECRET: &str = "contoso-client-secret-value-7Qx";
const WEBHOOK_SECRET: &str = "webhook-server-secret-value-9Zp-at-least-32-bytes";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml")
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// The variables the fixtures and the example reference.
fn secrets_env() -> Vec<(String, String)> {
    env(&[
        ("CONTOSO_SECRET", CONTOSO_SECRET),
        ("O365_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ])
}

fn secrets_env_with(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = secrets_env();
    all.extend(env(extra));
    all
}

fn guid(text: &str) -> Guid {
    text.parse().unwrap()
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load_error(path: &Path, env: Vec<(String, String)>) -> ConfigError {
    match Config::load_with_env(path, env) {
        Ok(config) => panic!("{} loaded, but should fail: {config:?}", path.display()),
        Err(error) => error,
    }
}

#[test]
fn example_documents_every_key_and_parses_with_the_values_it_shows() {
    let config = Config::load_with_env(&example(), secrets_env()).unwrap();

    let server = &config.server;
    assert_eq!(server.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(
        server.public_url.as_ref().unwrap().as_str(),
        "https://o365.example.com/hook"
    );
    assert_eq!(server.local_path(), "/hook");
    assert!(server.serves_tls());
    assert_eq!(
        server.webhook_secret.as_ref().unwrap().expose_secret(),
        WEBHOOK_SECRET
    );
    assert_eq!(server.max_body_bytes.get(), 1024 * 1024);
    assert_eq!(config.store.path, Path::new("/var/lib/o365-connector"));
    assert_eq!(config.store.backend, StoreBackendKind::Embedded);
    let nats = config
        .store
        .nats
        .as_ref()
        .expect("the example documents [store.nats]");
    assert_eq!(
        nats.urls,
        [
            "nats://nats-1:4222",
            "nats://nats-2:4222",
            "nats://nats-3:4222"
        ]
    );
    assert_eq!(
        nats.replica_id, None,
        "commented out: each replica sets its own"
    );
    assert!(nats.creds_file.is_none() && nats.tls_ca_file.is_none());
    assert_eq!(nats.prefix, "o365");
    assert_eq!(nats.stream_replicas, 3);
    assert_eq!(
        (
            nats.leader_lease_secs.get(),
            nats.connect_timeout_secs.get()
        ),
        (15, 10)
    );
    assert_eq!(
        config.engine.socket,
        Path::new("/workdir/sockets/engine_server.sock")
    );
    assert_eq!(config.engine.timestamp, TimestampSource::Event);
    assert_eq!(
        config.api.publisher_id,
        Some(PublisherId::Domain("contoso.onmicrosoft.com".into()))
    );
    assert!(config.api.ca_file.is_some() && config.api.proxy.is_some());
    assert_eq!(config.api.requests_per_minute.get(), 2000);
    assert_eq!(
        (config.workers.count.get(), config.workers.lease_secs.get()),
        (16, 300)
    );

    let [contoso, fabrikam] = config.tenants.as_slice() else {
        panic!("the example has two tenants");
    };
    assert_eq!(contoso.content_types, ContentType::ALL.to_vec());
    assert!(
        matches!(contoso.credential(), Some(TenantCredential::Secret(secret)) if secret.expose_secret() == CONTOSO_SECRET)
    );
    assert_eq!(fabrikam.cloud, Cloud::GccHigh);
    assert!(matches!(
        fabrikam.credential(),
        Some(TenantCredential::Certificate(_))
    ));
    assert_eq!(
        fabrikam.content_types,
        vec![ContentType::AuditExchange, ContentType::DlpAll]
    );
    assert_eq!(
        fabrikam.publisher_id(&config.api),
        PublisherId::Guid(guid("6ba7b812-9dad-11d1-80b4-00c04fd430c8"))
    );
}

#[test]
fn contract_example_of_the_issue_parses_as_is() {
    let config = Config::load_with_env(&fixture("contract.toml"), secrets_env()).unwrap();
    let tenant_id = guid("11111111-2222-3333-4444-555555555555");
    let tenant = config.tenant(tenant_id).unwrap();
    assert_eq!(tenant.name, "contoso");
    assert_eq!(
        tenant.content_types,
        vec![ContentType::AuditExchange, ContentType::DlpAll]
    );
    assert_eq!(
        config.server.webhook_url(tenant_id).unwrap().as_str(),
        "https://o365.example.com/hook/11111111-2222-3333-4444-555555555555"
    );
    let endpoints = tenant.endpoints(&config.api);
    assert_eq!(endpoints.api.as_str(), "https://manage.office.com/");
    assert_eq!(
        endpoints.token_scope(),
        "https://manage.office.com/.default"
    );
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn minimal_file_takes_the_documented_defaults() {
    let config = Config::load_with_env(&fixture("minimal.toml"), secrets_env()).unwrap();
    assert_eq!(config.server.public_url, None);
    assert_eq!(config.server.local_path(), "");
    assert!(!config.server.serves_tls());
    assert!(config.server.webhook_secret.is_none());
    assert_eq!(config.server.max_body_bytes.get(), 1_048_576);
    assert_eq!(
        config.engine.socket,
        Path::new("/workdir/sockets/engine_server.sock")
    );
    assert_eq!(
        config.engine.utm_tenant_id,
        "ce66672c-e36d-4761-a8c8-90058fee1a24"
    );
    assert_eq!(config.engine.timestamp, TimestampSource::Event);
    assert_eq!(config.api.requests_per_minute.get(), 2000);
    assert_eq!(
        (config.workers.count.get(), config.workers.lease_secs.get()),
        (16, 300)
    );
    let tenant = &config.tenants[0];
    assert_eq!(tenant.cloud, Cloud::Commercial);
    assert_eq!(tenant.content_types, ContentType::ALL.to_vec());
    assert_eq!(
        tenant.endpoints(&config.api),
        Endpoints::for_cloud(Cloud::Commercial)
    );
    assert_eq!(
        tenant.publisher_id(&config.api),
        PublisherId::Guid(tenant.tenant_id)
    );
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.starts_with("server.public_url"))
    );
}

#[test]
fn section_key_variables_override_the_file() {
    let overrides = secrets_env_with(&[
        ("O365_CONNECTOR__ENGINE__SOCKET", "/tmp/engine.sock"),
        ("O365_CONNECTOR__ENGINE__TIMESTAMP", "collection"),
        ("O365_CONNECTOR__API__API_URL", "https://api.test.example"),
        ("O365_CONNECTOR__API__REQUESTS_PER_MINUTE", "500"),
        ("O365_CONNECTOR__SERVER__LISTEN", "127.0.0.1:9443"),
        ("O365_CONNECTOR__TENANTS__0__NAME", "12345"),
        ("O365_CONNECTOR__TENANTS__0__CLOUD", "DoD"),
        (
            "O365_CONNECTOR__TENANTS__0__CONTENT_TYPES",
            r#"["DLP.All"]"#,
        ),
    ]);
    let config = Config::load_with_env(&fixture("contract.toml"), overrides).unwrap();
    assert_eq!(config.engine.socket, Path::new("/tmp/engine.sock"));
    assert_eq!(config.engine.timestamp, TimestampSource::Collection);
    assert_eq!(config.api.requests_per_minute.get(), 500);
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:9443");
    let tenant = &config.tenants[0];
    assert_eq!(
        tenant.name, "12345",
        "a number-like value is taken as the string it is"
    );
    assert_eq!(tenant.cloud, Cloud::Dod);
    assert_eq!(tenant.content_types, vec![ContentType::DlpAll]);
    let endpoints = tenant.endpoints(&config.api);
    assert_eq!(endpoints.api.as_str(), "https://api.test.example/");
    assert_eq!(
        endpoints.token_scope(),
        "https://manage.protection.apps.mil/.default"
    );
    let variables: Vec<&str> = config
        .applied_overrides()
        .iter()
        .map(|applied| applied.variable.as_str())
        .collect();
    assert!(variables.contains(&"O365_CONNECTOR__TENANTS__0__NAME"));
}

#[test]
fn short_forms_override_every_tenants_endpoints_and_win_over_long_forms() {
    let overrides = secrets_env_with(&[
        ("O365_CONNECTOR__API__API_URL", "https://long-form.example"),
        ("O365_CONNECTOR_API_URL", "http://127.0.0.1:9001"),
        ("O365_CONNECTOR_LOGIN_URL", "http://127.0.0.1:9002"),
    ]);
    let config = Config::load_with_env(&example(), overrides).unwrap();
    for tenant in &config.tenants {
        let endpoints = tenant.endpoints(&config.api);
        assert_eq!(endpoints.api.as_str(), "http://127.0.0.1:9001/");
        assert_eq!(endpoints.login.as_str(), "http://127.0.0.1:9002/");
        assert_eq!(endpoints.token_scope(), tenant.cloud.token_scope());
    }
    let warnings = config.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("api.api_url") && w.contains("http://"))
    );
    assert!(warnings.iter().any(|w| w.starts_with("api.login_url")));
}

#[test]
fn override_of_an_unknown_key_names_the_variable() {
    let overrides = secrets_env_with(&[("O365_CONNECTOR__API__API_URLL", "https://x.example")]);
    let message = load_error(&fixture("minimal.toml"), overrides).to_string();
    assert!(
        message.contains("O365_CONNECTOR__API__API_URLL"),
        "{message}"
    );
    assert!(message.contains("api.api_urll"), "{message}");
}

#[test]
fn override_of_a_tenant_the_file_lacks_names_the_variable() {
    let overrides = secrets_env_with(&[("O365_CONNECTOR__TENANTS__3__NAME", "x")]);
    let message = load_error(&fixture("minimal.toml"), overrides).to_string();
    assert!(
        message.contains("O365_CONNECTOR__TENANTS__3__NAME"),
        "{message}"
    );
    assert!(message.contains("tenants[3]"), "{message}");
}

#[test]
fn override_with_a_bad_value_names_the_variable_and_key() {
    let overrides = secrets_env_with(&[("O365_CONNECTOR__SERVER__LISTEN", "nowhere")]);
    let message = load_error(&fixture("minimal.toml"), overrides).to_string();
    assert!(
        message.contains("O365_CONNECTOR__SERVER__LISTEN"),
        "{message}"
    );
    assert!(message.contains("server.listen"), "{message}");
}

#[test]
fn secrets_are_read_from_env_and_from_file_without_the_trailing_newline() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.secret");
    std::fs::write(&secret_file, "from-file-secret\n").unwrap();
    let text = std::fs::read_to_string(fixture("minimal.toml"))
        .unwrap()
        .replace(
            "[store]",
            &format!("webhook_secret = {{ file = {:?} }}\n\n[store]", secret_file),
        );
    let config = Config::load_with_env(&write_config(&dir, &text), secrets_env()).unwrap();
    let webhook_secret = config.server.webhook_secret.as_ref().unwrap();
    assert_eq!(webhook_secret.expose_secret(), "from-file-secret");
    assert_eq!(webhook_secret.source(), &SecretSource::File(secret_file));
    let client_secret = config.tenants[0].client_secret.as_ref().unwrap();
    assert_eq!(client_secret.expose_secret(), CONTOSO_SECRET);
}

#[test]
fn missing_secret_variable_names_the_key_and_variable_but_no_value() {
    let only_webhook = env(&[("O365_WEBHOOK_SECRET", WEBHOOK_SECRET)]);
    let error = load_error(&fixture("contract.toml"), only_webhook);
    let message = error.to_string();
    assert!(message.contains("tenants[0].client_secret"), "{message}");
    assert!(message.contains("CONTOSO_SECRET"), "{message}");
    assert!(!message.contains(WEBHOOK_SECRET), "{message}");
    assert_eq!(error.keys(), vec!["tenants[0].client_secret"]);
}

#[test]
fn unreadable_secret_file_names_the_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-secret");
    let text = std::fs::read_to_string(fixture("minimal.toml"))
        .unwrap()
        .replace(
            r#"client_secret = { env = "CONTOSO_SECRET" }"#,
            &format!("client_secret = {{ file = {:?} }}", missing),
        );
    let message = load_error(&write_config(&dir, &text), secrets_env()).to_string();
    assert!(message.contains("tenants[0].client_secret"), "{message}");
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(!message.contains(CONTOSO_SECRET), "{message}");
}

#[test]
fn a_secret_file_over_64_kib_is_refused_naming_the_key_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config_with_secret_file = |secret_file: &Path| {
        let text = std::fs::read_to_string(fixture("minimal.toml"))
            .unwrap()
            .replace(
                r#"client_secret = { env = "CONTOSO_SECRET" }"#,
                &format!("client_secret = {{ file = {:?} }}", secret_file),
            );
        write_config(&dir, &text)
    };
    let at_limit = dir.path().join("at-limit.secret");
    std::fs::write(&at_limit, "s".repeat(64 * 1024)).unwrap();
    let config = Config::load_with_env(&config_with_secret_file(&at_limit), secrets_env()).unwrap();
    let secret = config.tenants[0].client_secret.as_ref().unwrap();
    assert_eq!(secret.expose_secret().len(), 64 * 1024);

    let over_limit = dir.path().join("over-limit.secret");
    std::fs::write(&over_limit, "s".repeat(64 * 1024 + 1)).unwrap();
    let error = load_error(&config_with_secret_file(&over_limit), secrets_env());
    let message = error.to_string();
    assert!(message.contains("tenants[0].client_secret"), "{message}");
    assert!(message.contains("larger than 65536 bytes"), "{message}");
    assert!(!message.contains("sss"), "{message}");
    assert_eq!(error.keys(), vec!["tenants[0].client_secret"]);

    // An endless file stops at the limit instead of filling memory.
    let endless = Path::new("/dev/zero");
    if endless.exists() {
        let message = load_error(&config_with_secret_file(endless), secrets_env()).to_string();
        assert!(message.contains("larger than 65536 bytes"), "{message}");
    }
}

#[test]
fn a_webhook_secret_shorter_than_32_bytes_is_used_with_a_warning_that_does_not_quote_it() {
    let short = "short-webhook-secret-31-bytes-x";
    assert_eq!(short.len(), 31);
    let overrides = env(&[
        ("CONTOSO_SECRET", CONTOSO_SECRET),
        ("O365_WEBHOOK_SECRET", short),
    ]);
    let config = Config::load_with_env(&fixture("contract.toml"), overrides).unwrap();
    let warnings = config.warnings();
    let warning = warnings
        .iter()
        .find(|warning| warning.starts_with("server.webhook_secret"))
        .unwrap_or_else(|| panic!("no warning in {warnings:?}"));
    assert!(warning.contains("31 bytes, shorter than 32"), "{warning}");
    assert!(!warning.contains(short), "{warning}");
    assert_eq!(
        config
            .server
            .webhook_secret
            .as_ref()
            .unwrap()
            .expose_secret(),
        short,
        "still used: refusing it would break upgrades"
    );
}

#[test]
fn debug_of_the_whole_config_shows_no_secret_value() {
    let dir = tempfile::tempdir().unwrap();
    let literal = "literal-secret-in-file-3Kd";
    let text = std::fs::read_to_string(example()).unwrap().replace(
        r#"{ env = "O365_WEBHOOK_SECRET" }"#,
        &format!("{literal:?}"),
    );
    let config = Config::load_with_env(&write_config(&dir, &text), secrets_env()).unwrap();
    let debug = format!("{config:?}");
    assert!(
        debug.contains("CONTOSO_SECRET"),
        "the source is shown: {debug}"
    );
    for value in [CONTOSO_SECRET, literal] {
        assert!(!debug.contains(value), "{value} leaked into Debug");
    }
    let warnings = config.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("server.webhook_secret") && !w.contains(literal))
    );
}

#[test]
fn a_secret_of_the_wrong_type_is_not_quoted_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixture("minimal.toml"))
        .unwrap()
        .replace(
            r#"client_secret = { env = "CONTOSO_SECRET" }"#,
            "client_secret = 987654321",
        );
    let message = load_error(&write_config(&dir, &text), secrets_env()).to_string();
    assert!(message.contains("tenants[0].client_secret"), "{message}");
    assert!(!message.contains("987654321"), "{message}");
}

#[test]
fn a_literal_secret_from_the_environment_is_not_quoted_and_not_warned_about() {
    // Digits (which TOML could read as a number), long enough not to be warned about as short.
    const DIGITS: &str = "12345678901234567890123456789012345";
    let overrides = secrets_env_with(&[("O365_CONNECTOR__SERVER__WEBHOOK_SECRET", DIGITS)]);
    let config = Config::load_with_env(&fixture("minimal.toml"), overrides).unwrap();
    let secret = config.server.webhook_secret.as_ref().unwrap();
    assert_eq!(secret.expose_secret(), DIGITS);
    assert!(!format!("{config:?}").contains(DIGITS));
    assert!(
        !config
            .warnings()
            .iter()
            .any(|w| w.starts_with("server.webhook_secret"))
    );
}

/// Each invalid fixture, the key its error must name, and the line in the file when the
/// error is found while reading it.
const INVALID_FIXTURES: &[(&str, &str, Option<usize>)] = &[
    ("invalid-unknown-key.toml", "server.lisen", Some(3)),
    ("invalid-bad-guid.toml", "tenants[1].tenant_id", Some(15)),
    (
        "invalid-duplicate-tenant-name.toml",
        "tenants[1].name",
        None,
    ),
    ("invalid-tls-cert-without-key.toml", "server.tls_key", None),
    (
        "invalid-secret-and-certificate.toml",
        "tenants[0].certificate",
        None,
    ),
    (
        "invalid-no-credential.toml",
        "tenants[0].client_secret",
        None,
    ),
    (
        "invalid-unknown-content-type.toml",
        "tenants[0].content_types[1]",
        Some(12),
    ),
    (
        "invalid-duplicate-content-type.toml",
        "tenants[0].content_types[2]",
        None,
    ),
    ("invalid-unknown-cloud.toml", "tenants[0].cloud", Some(12)),
    (
        "invalid-zero-budget.toml",
        "api.requests_per_minute",
        Some(8),
    ),
    ("invalid-bad-listen.toml", "server.listen", Some(2)),
    ("invalid-bad-publisher-id.toml", "api.publisher_id", Some(8)),
    ("invalid-no-tenant.toml", "tenants", None),
];

#[test]
fn each_invalid_fixture_fails_with_a_message_naming_the_key() {
    for (name, key, line) in INVALID_FIXTURES {
        let path = fixture(name);
        let error = load_error(&path, secrets_env());
        let message = error.to_string();
        assert!(message.contains(&format!("{key}:")), "{name}: {message}");
        assert!(
            message.contains(&path.display().to_string()),
            "{name}: {message}"
        );
        if let Some(line) = line {
            let location = format!("{}:{line}:", path.display());
            assert!(
                message.contains(&location),
                "{name}: expected {location} in {message}"
            );
        }
        assert!(!message.contains(CONTOSO_SECRET), "{name}: {message}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let error = load_error(&fixture("invalid-several-problems.toml"), secrets_env());
    let mut keys = error.keys();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "server.tls_cert",
            "tenants[1].client_secret",
            "tenants[1].name"
        ]
    );
}

#[test]
fn toml_syntax_error_names_the_file_and_line_without_quoting_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        &dir,
        "[server]\nlisten = \"127.0.0.1:0\"\nsecret = \"unterminated-s3cr3t\n",
    );
    let message = load_error(&path, Vec::new()).to_string();
    assert!(
        message.contains(&format!("{}:3:", path.display())),
        "{message}"
    );
    assert!(!message.contains("unterminated-s3cr3t"), "{message}");
}

#[test]
fn http_override_is_honoured_with_a_warning() {
    let config = Config::load_with_env(&fixture("http-override.toml"), secrets_env()).unwrap();
    let endpoints = config.tenants[0].endpoints(&config.api);
    assert_eq!(endpoints.api.as_str(), "http://127.0.0.1:9000/");
    let warnings = config.warnings();
    for key in ["api.login_url", "api.api_url"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with(key) && w.contains("http://")),
            "{key}: {warnings:?}"
        );
    }
}

#[test]
fn several_tenants_without_publisher_id_warn_to_set_the_vendors() {
    // An empty variable removes the key of the file, so the default (none) applies.
    let overrides = secrets_env_with(&[("O365_CONNECTOR__API__PUBLISHER_ID", "")]);
    let config = Config::load_with_env(&example(), overrides).unwrap();
    assert_eq!(config.api.publisher_id, None);
    assert!(
        config
            .warnings()
            .iter()
            .any(|w| w.starts_with("api.publisher_id") && w.contains("tenant GUID"))
    );
    let single_tenant = Config::load_with_env(&fixture("minimal.toml"), secrets_env()).unwrap();
    assert!(
        !single_tenant
            .warnings()
            .iter()
            .any(|w| w.starts_with("api.publisher_id"))
    );
}

#[test]
fn emptying_a_required_key_names_the_variable() {
    let overrides = secrets_env_with(&[("O365_CONNECTOR__SERVER__LISTEN", "")]);
    let message = load_error(&fixture("minimal.toml"), overrides).to_string();
    assert!(
        message.contains("O365_CONNECTOR__SERVER__LISTEN"),
        "{message}"
    );
    assert!(message.contains("missing field `listen`"), "{message}");
}

#[test]
fn publisher_id_is_the_tenants_then_the_global_then_the_tenants_own_id() {
    let config = Config::load_with_env(&example(), secrets_env()).unwrap();
    let [contoso, fabrikam] = config.tenants.as_slice() else {
        panic!("two tenants");
    };
    assert_eq!(
        contoso.publisher_id(&config.api),
        PublisherId::Domain("contoso.onmicrosoft.com".into())
    );
    assert_eq!(
        fabrikam.publisher_id(&config.api),
        fabrikam.publisher_id.clone().unwrap()
    );
    let mut without_global = config.api.clone();
    without_global.publisher_id = None;
    assert_eq!(
        contoso.publisher_id(&without_global),
        PublisherId::Guid(contoso.tenant_id)
    );
}

#[test]
fn cloud_presets_match_the_spec_tables() {
    let expected = [
        (
            "Commercial",
            Cloud::Commercial,
            "https://login.microsoftonline.com",
            "https://manage.office.com",
        ),
        (
            "GCC",
            Cloud::Gcc,
            "https://login.microsoftonline.com",
            "https://manage-gcc.office.com",
        ),
        (
            "GCCHigh",
            Cloud::GccHigh,
            "https://login.microsoftonline.us",
            "https://manage.office365.us",
        ),
        (
            "DoD",
            Cloud::Dod,
            "https://login.microsoftonline.us",
            "https://manage.protection.apps.mil",
        ),
    ];
    for (name, cloud, login, api) in expected {
        assert_eq!(name.parse::<Cloud>(), Ok(cloud));
        assert_eq!(cloud.to_string(), name);
        assert_eq!(cloud.login_url(), login);
        assert_eq!(cloud.api_url(), api);
        assert_eq!(cloud.resource(), api);
        assert_eq!(cloud.token_scope(), format!("{api}/.default"));
        let endpoints = Endpoints::for_cloud(cloud);
        let tenant = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            endpoints.token_url(tenant).as_str(),
            format!("{login}/{tenant}/oauth2/v2.0/token")
        );
        assert_eq!(
            endpoints.feed_root(tenant).as_str(),
            format!("{api}/api/v1.0/{tenant}/activity/feed")
        );
    }
    assert_eq!(Cloud::default(), Cloud::Commercial);
}

#[test]
fn api_origin_check_compares_scheme_host_and_port() {
    let endpoints = Endpoints::for_cloud(Cloud::Commercial);
    let on = |url: &str| endpoints.is_on_api_origin(&url.parse().unwrap());
    assert!(on(
        "https://manage.office.com/api/v1.0/t/activity/feed/audit/1"
    ));
    assert!(on("https://manage.office.com:443/x"));
    assert!(!on("http://manage.office.com/x"));
    assert!(!on("https://manage.office.com:8443/x"));
    assert!(!on("https://manage.office.com.evil.example/x"));
}

#[test]
fn configuration_from_text_loads_like_a_file() {
    let text = std::fs::read_to_string(fixture("minimal.toml")).unwrap();
    let config = Config::from_toml_with_env(&text, secrets_env()).unwrap();
    assert_eq!(config.tenants[0].name, "contoso");
    let broken = text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1\"");
    let message = Config::from_toml_with_env(&broken, secrets_env())
        .unwrap_err()
        .to_string();
    assert!(message.starts_with("<string>:3:"), "{message}");
    assert!(
        message.contains("server.listen") && message.contains("address:port"),
        "{message}"
    );
}

/// The field names serde expects at `variable`'s level, read from the unknown-field error
/// that a bogus key there provokes (so a field added later is checked too).
fn expected_fields(variable: &str) -> Vec<String> {
    let message = load_error(&example(), secrets_env_with(&[(variable, "1")])).to_string();
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("{variable}: {message}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn example_documents_every_key_of_every_section() {
    let text = std::fs::read_to_string(example()).unwrap();
    for variable in [
        "O365_CONNECTOR__ZZ_UNKNOWN",
        "O365_CONNECTOR__SERVER__ZZ_UNKNOWN",
        "O365_CONNECTOR__STORE__ZZ_UNKNOWN",
        "O365_CONNECTOR__STORE__NATS__ZZ_UNKNOWN",
        "O365_CONNECTOR__ENGINE__ZZ_UNKNOWN",
        "O365_CONNECTOR__API__ZZ_UNKNOWN",
        "O365_CONNECTOR__WORKERS__ZZ_UNKNOWN",
        "O365_CONNECTOR__OPS__ZZ_UNKNOWN",
        "O365_CONNECTOR__SUBSCRIPTIONS__ZZ_UNKNOWN",
        "O365_CONNECTOR__POLLER__ZZ_UNKNOWN",
        "O365_CONNECTOR__TENANTS__0__ZZ_UNKNOWN",
        "O365_CONNECTOR__TENANTS__1__CERTIFICATE__ZZ_UNKNOWN",
    ] {
        let fields = expected_fields(variable);
        assert!(!fields.is_empty(), "{variable}");
        for field in fields {
            // A table (`[server]`), an array of tables (`[[tenants]]`), a nested table
            // (`[store.nats]`) or a key.
            let documented = [
                format!("[{field}]"),
                format!("[[{field}]]"),
                format!(".{field}]"),
                format!("{field} = "),
            ];
            assert!(
                documented.iter().any(|form| text.contains(form.as_str())),
                "{field} (at {variable}) is not in deploy/config.example.toml"
            );
        }
    }
}

#[test]
fn readme_configuration_reference_lists_every_key_of_every_section() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split("### Configuration reference")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("README.md has a configuration reference");
    for (section, variable) in [
        ("server", "O365_CONNECTOR__SERVER__ZZ_UNKNOWN"),
        ("store", "O365_CONNECTOR__STORE__ZZ_UNKNOWN"),
        ("store.nats", "O365_CONNECTOR__STORE__NATS__ZZ_UNKNOWN"),
        ("engine", "O365_CONNECTOR__ENGINE__ZZ_UNKNOWN"),
        ("api", "O365_CONNECTOR__API__ZZ_UNKNOWN"),
        ("workers", "O365_CONNECTOR__WORKERS__ZZ_UNKNOWN"),
        ("ops", "O365_CONNECTOR__OPS__ZZ_UNKNOWN"),
        ("subscriptions", "O365_CONNECTOR__SUBSCRIPTIONS__ZZ_UNKNOWN"),
        ("poller", "O365_CONNECTOR__POLLER__ZZ_UNKNOWN"),
        ("tenants", "O365_CONNECTOR__TENANTS__0__ZZ_UNKNOWN"),
    ] {
        let fields = expected_fields(variable);
        assert!(!fields.is_empty(), "{variable}");
        for field in fields {
            let key = format!("`{section}.{field}`");
            assert!(
                reference.contains(&key),
                "{key} is missing from README.md's configuration reference"
            );
        }
    }
}

/// minimal.toml with `store` added to its `[store]` table (a backend, a `[store.nats]` table).
fn minimal_with_store(store: &str) -> String {
    let text = std::fs::read_to_string(fixture("minimal.toml")).unwrap();
    assert!(text.contains("path = \"state\"\n"));
    text.replace(
        "path = \"state\"\n",
        &format!("path = \"state\"\n{store}\n"),
    )
}

fn text_error(text: &str, env: Vec<(String, String)>) -> ConfigError {
    match Config::from_toml_with_env(text, env) {
        Ok(config) => panic!("loaded, but should fail: {config:?}"),
        Err(error) => error,
    }
}

#[test]
fn nats_backend_takes_the_documented_defaults() {
    let text = minimal_with_store(
        "backend = \"nats\"\n\n[store.nats]\nurls = [\"nats://nats-1:4222\", \"tls://nats-2:4222\"]",
    );
    let config = Config::from_toml_with_env(&text, secrets_env()).unwrap();
    assert_eq!(config.store.backend, StoreBackendKind::Nats);
    let nats = config.store.nats.as_ref().unwrap();
    assert_eq!(nats.urls, ["nats://nats-1:4222", "tls://nats-2:4222"]);
    assert_eq!(
        nats.replica_id, None,
        "default: the host name, chosen at start"
    );
    assert_eq!(nats.prefix, "o365");
    assert_eq!(nats.stream_replicas, 1);
    assert_eq!(nats.leader_lease_secs.get(), 15);
    assert_eq!(nats.connect_timeout_secs.get(), 10);
    assert!(nats.creds_file.is_none() && nats.tls_ca_file.is_none());
    assert!(nats.tls_cert_file.is_none() && nats.tls_key_file.is_none());

    let embedded = Config::load_with_env(&fixture("minimal.toml"), secrets_env()).unwrap();
    assert_eq!(embedded.store.backend, StoreBackendKind::Embedded);
    assert!(embedded.store.nats.is_none());
}

#[test]
fn nats_backend_without_its_table_fails_naming_store_nats() {
    let error = text_error(&minimal_with_store("backend = \"nats\""), secrets_env());
    assert_eq!(error.keys(), vec!["store.nats"]);
    let message = error.to_string();
    assert!(message.contains("store.nats:"), "{message}");
    assert!(message.contains("urls"), "{message}");
}

/// Each invalid `[store.nats]` table (with backend = "nats") and the key its error names.
const INVALID_NATS_TABLES: &[(&str, &str)] = &[
    ("urls = [\"http://nats-1:4222\"]", "store.nats.urls"),
    ("urls = []", "store.nats.urls"),
    (
        "urls = [\"nats://nats-1:4222\"]\nstream_replicas = 2",
        "store.nats.stream_replicas",
    ),
    (
        "urls = [\"nats://nats-1:4222\"]\ntls_cert_file = \"client.pem\"",
        "store.nats.tls_cert_file",
    ),
    (
        "urls = [\"nats://nats-1:4222\"]\nreplica_id = \"replica one\"",
        "store.nats.replica_id",
    ),
    (
        "urls = [\"nats://nats-1:4222\"]\nreplica_id = \"\"",
        "store.nats.replica_id",
    ),
    (
        "urls = [\"nats://nats-1:4222\"]\nprefix = \"o365.work\"",
        "store.nats.prefix",
    ),
    (
        "urls = [\"nats://nats-1:4222\"]\nleader_lease_secs = 1",
        "store.nats.leader_lease_secs",
    ),
];

#[test]
fn each_invalid_nats_table_fails_with_a_message_naming_the_key() {
    for (table, key) in INVALID_NATS_TABLES {
        let text = minimal_with_store(&format!("backend = \"nats\"\n\n[store.nats]\n{table}"));
        let error = text_error(&text, secrets_env());
        assert_eq!(error.keys(), vec![*key], "{table}: {error}");
        let message = error.to_string();
        assert!(message.contains(&format!("{key}:")), "{table}: {message}");
    }
}

#[test]
fn a_nats_url_with_credentials_is_refused_without_showing_them() {
    let text = minimal_with_store(
        "backend = \"nats\"\n\n[store.nats]\nurls = [\"nats://connector:s3cret-pass@nats-1:4222\"]",
    );
    let error = text_error(&text, secrets_env());
    assert_eq!(error.keys(), vec!["store.nats.urls"], "{error}");
    let message = error.to_string();
    assert!(message.contains("creds_file"), "{message}");
    assert!(!message.contains("s3cret-pass"), "{message}");
}

#[test]
fn a_nats_table_is_validated_even_while_the_backend_is_embedded() {
    let text = minimal_with_store("[store.nats]\nurls = [\"http://nats-1:4222\"]");
    let error = text_error(&text, secrets_env());
    assert_eq!(error.keys(), vec!["store.nats.urls"]);
}

#[test]
fn the_nats_backend_can_be_chosen_from_the_environment() {
    let overrides = secrets_env_with(&[
        ("O365_CONNECTOR__STORE__BACKEND", "nats"),
        (
            "O365_CONNECTOR__STORE__NATS__URLS",
            r#"["nats://nats-1:4222", "nats://nats-2:4222"]"#,
        ),
        ("O365_CONNECTOR__STORE__NATS__REPLICA_ID", "connector-2"),
        ("O365_CONNECTOR__STORE__NATS__STREAM_REPLICAS", "3"),
    ]);
    let config = Config::load_with_env(&fixture("minimal.toml"), overrides).unwrap();
    assert_eq!(config.store.backend, StoreBackendKind::Nats);
    let nats = config.store.nats.as_ref().unwrap();
    assert_eq!(nats.urls, ["nats://nats-1:4222", "nats://nats-2:4222"]);
    assert_eq!(nats.replica_id.as_deref(), Some("connector-2"));
    assert_eq!(nats.stream_replicas, 3);
    let keys: Vec<&str> = config
        .applied_overrides()
        .iter()
        .map(|applied| applied.key.as_str())
        .collect();
    assert!(keys.contains(&"store.nats.urls"), "{keys:?}");

    let overrides = secrets_env_with(&[("O365_CONNECTOR__STORE__BACKEND", "nats")]);
    let error = load_error(&fixture("minimal.toml"), overrides);
    assert_eq!(error.keys(), vec!["store.nats"]);
}

//! The UTMStack drop-in: `system_plugins_o365.yaml` and the pipeline files turned into
//! tenants (secrets encrypted here with the documented scheme, using the same crates), and
//! `run --utmstack` forwarding records labelled from the YAML.

mod common;

use std::collections::HashMap;
use std::path::Path;

use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use o365_connector::cloud::Cloud;
use o365_connector::config::ContentType;
use o365_connector::emulator::api::publish;
use o365_connector::secret::ExposeSecret;
use o365_connector::utmstack::{self, UtmstackEnvironment, UtmstackError};
use serde_json::Value;
use sha1::{Digest, Sha1};

use common::rig::{CLIENT, Rig, RigOptions, SECRET, TENANT};
use common::{DEADLINE, start_binary_with_env, wait_until};

const KEY: &str = "utmstack-encryption-key";
const UTM_TENANT: &str = "8f0c4a8e-1111-4222-8333-944445555666";
const OTHER_TENANT: &str = "0d3c1f3a-aaaa-4bbb-8ccc-dddddddddddd";
const OTHER_CLIENT: &str = "0d3c1f3a-aaaa-4bbb-8ccc-eeeeeeeeeeee";

/// The documented scheme: salt = SHA1(key); aesKey = PBKDF2-HMAC-SHA1(key, salt, 65536,
/// 16 bytes); IV = salt[0..16]; AES-128-CBC, PKCS#5, standard base64.
fn encrypt(key: &str, plaintext: &str) -> String {
    let salt = Sha1::digest(key.as_bytes());
    let mut aes_key = [0u8; 16];
    pbkdf2::pbkdf2_hmac::<Sha1>(key.as_bytes(), &salt, 65_536, &mut aes_key);
    let iv: [u8; 16] = salt[..16].try_into().unwrap();
    let mut buffer = vec![0u8; plaintext.len() + 16];
    let encryptor = cbc::Encryptor::<aes::Aes128>::new(&aes_key.into(), &iv.into());
    let ciphertext = encryptor
        .encrypt_padded_b2b_mut::<Pkcs7>(plaintext.as_bytes(), &mut buffer)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(ciphertext)
}

/// Writes `{work}/pipeline/a-utmstack.yaml` (the key) and the o365 file.
fn write_pipeline(work: &Path, o365_yaml: &str) {
    let pipeline = work.join("pipeline");
    std::fs::create_dir_all(&pipeline).unwrap();
    std::fs::write(
        pipeline.join("a-utmstack.yaml"),
        format!("plugins:\n  com.utmstack:\n    encryptionKey: {KEY}\n"),
    )
    .unwrap();
    std::fs::write(pipeline.join(utmstack::O365_FILE_NAME), o365_yaml).unwrap();
}

fn group_yaml(name: &str, tenant: &str, client: &str, secret: &str, extra: &str) -> String {
    format!(
        "          - name: {name}\n            description: test\n            config:\n              \
         office365_tenant_id: \"{tenant}\"\n              office365_client_id: \"{client}\"\n              \
         office365_client_secret: \"{secret}\"\n{extra}"
    )
}

fn o365_yaml(groups: &[String]) -> String {
    format!(
        "plugins:\n  o365:\n    tenants:\n      - id: {UTM_TENANT}\n        groups:\n{}",
        groups.concat()
    )
}

fn environment(work: &Path) -> UtmstackEnvironment {
    UtmstackEnvironment::from_env(HashMap::from([(
        "WORK_DIR".to_string(),
        work.display().to_string(),
    )]))
}

#[test]
fn encrypted_secret_is_decrypted_and_group_becomes_a_tenant_labelled_from_the_yaml() {
    let work = tempfile::tempdir().unwrap();
    let extra = "              office365_cloud_environment: GCC\n              \
                 office365_content_types: \"Audit.Exchange, DLP.All\"\n              \
                 office365_publisher_id: \"contoso.onmicrosoft.com\"\n";
    let group = group_yaml("contoso", TENANT, CLIENT, &encrypt(KEY, SECRET), extra);
    write_pipeline(work.path(), &o365_yaml(&[group]));
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let tenant = &loaded.config.tenants[0];
    assert_eq!(tenant.name, "contoso");
    assert_eq!(tenant.tenant_id.to_string(), TENANT);
    assert_eq!(tenant.client_id.to_string(), CLIENT);
    assert_eq!(
        tenant.client_secret.as_ref().unwrap().expose_secret(),
        SECRET
    );
    assert_eq!(tenant.cloud, Cloud::Gcc);
    assert_eq!(
        tenant.content_types,
        [ContentType::AuditExchange, ContentType::DlpAll]
    );
    assert_eq!(
        tenant.publisher_id.as_ref().unwrap().to_string(),
        "contoso.onmicrosoft.com"
    );
    assert_eq!(tenant.utm_tenant_id(&loaded.config.engine), UTM_TENANT);
    assert_eq!(
        loaded.config.engine.socket,
        work.path().join("sockets/engine_server.sock")
    );
    assert_eq!(loaded.config.store.path, work.path().join("o365-connector"));
    assert!(!format!("{:?}", loaded.config).contains(SECRET));
}

#[test]
fn absent_optional_keys_mean_commercial_all_five_types_and_no_publisher() {
    let work = tempfile::tempdir().unwrap();
    let blank = "              office365_content_types: \" \"\n              office365_publisher_id: \"\"\n";
    let group = group_yaml("contoso", TENANT, CLIENT, &encrypt(KEY, SECRET), blank);
    write_pipeline(work.path(), &o365_yaml(&[group]));
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    let tenant = &loaded.config.tenants[0];
    assert_eq!(tenant.cloud, Cloud::Commercial);
    assert_eq!(tenant.content_types, ContentType::ALL);
    assert!(tenant.publisher_id.is_none());
}

#[test]
fn plaintext_secret_is_used_as_written_with_a_warning_that_hides_the_value() {
    let work = tempfile::tempdir().unwrap();
    let plaintext = "abc8Q~plain.secret-from-azure_portal";
    let group = group_yaml("contoso", TENANT, CLIENT, plaintext, "");
    write_pipeline(work.path(), &o365_yaml(&[group]));
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    let secret = loaded.config.tenants[0].client_secret.as_ref().unwrap();
    assert_eq!(secret.expose_secret(), plaintext);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("contoso"));
    assert!(loaded.warnings[0].contains("not encrypted"));
    assert!(!loaded.warnings[0].contains(plaintext));
}

#[test]
fn secret_encrypted_with_another_key_fails_padding_and_is_used_as_written_with_a_warning() {
    let work = tempfile::tempdir().unwrap();
    let foreign = encrypt("another-key", "x");
    let group = group_yaml("contoso", TENANT, CLIENT, &foreign, "");
    write_pipeline(work.path(), &o365_yaml(&[group]));
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    let secret = loaded.config.tenants[0].client_secret.as_ref().unwrap();
    // A wrong key gives invalid padding with probability 1 - ~1/256; this pair does.
    assert_eq!(secret.expose_secret(), foreign);
    assert!(
        loaded
            .warnings
            .iter()
            .any(|warning| warning.contains("invalid padding")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn groups_missing_a_required_key_are_skipped_naming_the_key_and_the_rest_run() {
    let work = tempfile::tempdir().unwrap();
    let secret = encrypt(KEY, SECRET);
    let groups = [
        group_yaml("no-client", OTHER_TENANT, " ", &secret, ""),
        group_yaml("no-secret", OTHER_TENANT, OTHER_CLIENT, "", ""),
        group_yaml(
            "bad-cloud",
            OTHER_TENANT,
            OTHER_CLIENT,
            &secret,
            "              office365_cloud_environment: Mars\n",
        ),
        group_yaml("contoso", TENANT, CLIENT, &secret, ""),
    ];
    write_pipeline(work.path(), &o365_yaml(&groups));
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    assert_eq!(loaded.config.tenants.len(), 1);
    assert_eq!(loaded.config.tenants[0].name, "contoso");
    let skipped: Vec<(String, String)> = loaded
        .skipped
        .iter()
        .map(|skip| (skip.group.clone(), skip.key.clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("no-client".into(), "office365_client_id".into()),
            ("no-secret".into(), "office365_client_secret".into()),
            ("bad-cloud".into(), "office365_cloud_environment".into()),
        ]
    );
    assert!(
        loaded.skipped[0]
            .to_string()
            .contains("office365_client_id")
    );
}

#[test]
fn pipeline_dir_and_key_are_read_from_the_merged_pipeline_files() {
    let work = tempfile::tempdir().unwrap();
    let pipeline = work.path().join("pipeline");
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir_all(&pipeline).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        pipeline.join("a.yaml"),
        format!("plugins:\n  com.utmstack:\n    encryptionKey: {KEY}\n    pipelineDir: /nowhere\n"),
    )
    .unwrap();
    std::fs::write(
        pipeline.join("b.yaml"),
        format!(
            "plugins:\n  com.utmstack:\n    pipelineDir: {}\n",
            elsewhere.display()
        ),
    )
    .unwrap();
    let group = group_yaml("contoso", TENANT, CLIENT, &encrypt(KEY, SECRET), "");
    std::fs::write(
        elsewhere.join(utmstack::O365_FILE_NAME),
        o365_yaml(&[group]),
    )
    .unwrap();
    let loaded = utmstack::load(&environment(work.path()), None).unwrap();
    assert_eq!(loaded.o365_file, elsewhere.join(utmstack::O365_FILE_NAME));
    let secret = loaded.config.tenants[0].client_secret.as_ref().unwrap();
    assert_eq!(secret.expose_secret(), SECRET);
}

#[test]
fn missing_o365_file_means_the_module_is_inactive() {
    let work = tempfile::tempdir().unwrap();
    let error = utmstack::load(&environment(work.path()), None).unwrap_err();
    assert!(matches!(error, UtmstackError::Inactive { .. }), "{error}");
    assert!(error.to_string().contains("inactive"), "{error}");
}

#[test]
fn settings_file_and_short_form_endpoint_variables_apply_to_every_tenant() {
    let work = tempfile::tempdir().unwrap();
    let secret = encrypt(KEY, SECRET);
    let groups = [
        group_yaml("contoso", TENANT, CLIENT, &secret, ""),
        group_yaml(
            "fabrikam",
            OTHER_TENANT,
            OTHER_CLIENT,
            &secret,
            "              office365_cloud_environment: GCCHigh\n",
        ),
    ];
    write_pipeline(work.path(), &o365_yaml(&groups));
    let settings = work.path().join("settings.toml");
    std::fs::write(
        &settings,
        "[server]\nlisten = \"0.0.0.0:9443\"\npublic_url = \"https://o365.example.com/hook\"\n",
    )
    .unwrap();
    let mut environment = environment(work.path());
    environment.env.insert(
        "O365_CONNECTOR_API_URL".into(),
        "https://proxy.example.com/".into(),
    );
    let loaded = utmstack::load(&environment, Some(&settings)).unwrap();
    let config = &loaded.config;
    assert_eq!(config.server.listen.port(), 9443);
    for tenant in &config.tenants {
        let endpoints = tenant.endpoints(&config.api);
        assert!(
            endpoints
                .feed_root(TENANT)
                .as_str()
                .starts_with("https://proxy.example.com/"),
            "{}",
            tenant.name
        );
    }
}

#[test]
fn tenants_in_the_settings_file_are_refused_with_utmstack() {
    let work = tempfile::tempdir().unwrap();
    let group = group_yaml("contoso", TENANT, CLIENT, &encrypt(KEY, SECRET), "");
    write_pipeline(work.path(), &o365_yaml(&[group]));
    let settings = work.path().join("settings.toml");
    std::fs::write(&settings, "[[tenants]]\nname = \"x\"\n").unwrap();
    let error = utmstack::load(&environment(work.path()), Some(&settings)).unwrap_err();
    assert!(
        matches!(error, UtmstackError::TenantsInToml { .. }),
        "{error}"
    );
}

/// The rig's settings without its `[[tenants]]` table and endpoint keys.
fn settings_without_tenants(rig: &Rig) -> String {
    let text = rig.config_text.split("[[tenants]]").next().unwrap();
    text.lines()
        .filter(|line| !line.starts_with("login_url") && !line.starts_with("api_url"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_utmstack_forwards_records_labelled_with_the_group_and_utmstack_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(Default::default());
    options.in_process = false;
    // Every group's Entra ID risk detections are collected too, as UTMStack's plugin does.
    options.tenant.risk_detections.initial = 3;
    let rig = Rig::start(dir, options).await;
    let work = rig.dir.path().join("work");
    let group = group_yaml("contoso-eu", TENANT, CLIENT, &encrypt(KEY, SECRET), "");
    write_pipeline(&work, &o365_yaml(&[group]));
    let settings = rig.dir.path().join("settings.toml");
    std::fs::write(&settings, settings_without_tenants(&rig)).unwrap();
    let base = rig.api.base_url().to_string();
    let running = start_binary_with_env(
        &["run", "--utmstack", "--config", settings.to_str().unwrap()],
        &[
            ("WORK_DIR", work.to_str().unwrap()),
            ("O365_CONNECTOR_LOGIN_URL", &base),
            ("O365_CONNECTOR_API_URL", &base),
            ("O365_CONNECTOR_GRAPH_URL", &base),
        ],
    )
    .await;
    assert!(
        running.ready_line.starts_with("listening "),
        "{}",
        running.ready_line
    );
    rig.wait_for_webhooks(&["Audit.Exchange"]).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
    wait_until("20 records and 3 risk detections acked", DEADLINE, || {
        rig.engine.logs().iter().filter(|log| log.acked).count() >= 23
    })
    .await;
    for log in rig.engine.logs() {
        assert_eq!(log.data_source, "contoso-eu");
        assert_eq!(log.tenant_id, UTM_TENANT);
    }
    let detections = rig.api.state().graph.risk_detections(Some(TENANT));
    for detection in &detections {
        assert!(
            rig.engine
                .logs()
                .iter()
                .any(|log| log.raw == detection.json),
            "risk detection {} missing",
            detection.id
        );
    }
    let utmstack_env = [("WORK_DIR", work.to_str().unwrap()), ("RUST_LOG", "warn")];
    let settings_path = settings.to_str().unwrap();
    let listed = operator_command(
        &[
            "subscriptions",
            "list",
            "--utmstack",
            "--config",
            settings_path,
            "--json",
        ],
        &utmstack_env,
    )
    .await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        !String::from_utf8_lossy(&listed.stderr).contains("directly"),
        "the running service answered: {listed:?}"
    );
    let report: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let rows = report["subscriptions"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{report}");
    assert!(
        rows.iter().all(|row| row["tenant"] == "contoso-eu"),
        "{report}"
    );
    let dead = operator_command(
        &[
            "deadletters",
            "list",
            "--utmstack",
            "--config",
            settings_path,
            "--json",
        ],
        &utmstack_env,
    )
    .await;
    assert!(dead.status.success(), "{dead:?}");
    assert_eq!(running.terminate().await, Some(0));
}

/// Runs an operator command of the binary to its end.
async fn operator_command(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let child = tokio::process::Command::new(common::binary())
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output();
    tokio::time::timeout(DEADLINE, child)
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish in time"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_reach_the_engine_as_one_integration_failure_of_the_group() {
    let mut options = RigOptions::synthetic(Default::default());
    // Microsoft knows another secret than the one configured: every token is refused.
    options.tenant = o365_connector::emulator::api::scenario::TenantScenario {
        publication: options.tenant.publication.clone(),
        ..o365_connector::emulator::api::scenario::TenantScenario::with_secret(
            TENANT,
            CLIENT,
            "the-secret-microsoft-knows",
        )
    };
    let rig = Rig::start(tempfile::tempdir().unwrap(), options).await;
    wait_until("an integration_failure notice", DEADLINE, || {
        rig.engine
            .messages()
            .iter()
            .any(|message| message.topic == "integration_failure")
    })
    .await;
    let failures: Vec<Value> = rig
        .engine
        .messages()
        .iter()
        .filter(|message| message.topic == "integration_failure")
        .map(|message| serde_json::from_str(&message.message).unwrap())
        .collect();
    for body in &failures {
        assert_eq!(body["dataSource"], "contoso");
        assert_eq!(body["dataType"], "o365");
        assert!(!body["error"].as_str().unwrap().contains(SECRET));
    }
    let kinds: Vec<String> = failures
        .iter()
        .map(|body| {
            body["error"]
                .as_str()
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut unique = kinds.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(kinds.len(), unique.len(), "one notice per kind: {kinds:?}");
}

#[tokio::test]
async fn run_utmstack_without_the_o365_file_exits_non_zero_saying_the_module_is_inactive() {
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(common::binary())
        .args(["run", "--utmstack"])
        .env("WORK_DIR", work.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("module is inactive"), "{stderr}");
    assert!(stderr.contains(utmstack::O365_FILE_NAME), "{stderr}");
}

/// Hot reload: the service runs in-process from a WORK_DIR YAML, watched every 50 ms,
/// against an API emulator that knows two tenants (contoso and fabrikam).
mod reload {
    use std::time::Duration;

    use o365_connector::clock::Clock;
    use o365_connector::emulator::api::scenario::{Scenario, TenantScenario};
    use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig, TlsFiles};
    use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};
    use o365_connector::queue::{ContentQueue, ContentRef, ItemState, Source};
    use o365_connector::retry::RetryPolicy;
    use o365_connector::server::dev_certs::write_dev_certs;
    use o365_connector::service::utmstack_watch::{self as watch, WatchSettings};
    use o365_connector::service::{self, RunningService, ServiceOptions};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::common::rig::{acked_by_sha, sha256_hex};

    pub const OTHER_SECRET: &str = "fabrikam-client-secret";

    pub struct ReloadRig {
        pub dir: tempfile::TempDir,
        pub api: ApiEmulator,
        pub engine: EngineEmulator,
        pub service: Option<RunningService>,
        watcher: CancellationToken,
    }

    pub fn contoso(extra: &str) -> String {
        group_yaml("contoso", TENANT, CLIENT, &encrypt(KEY, SECRET), extra)
    }

    pub fn fabrikam(secret: &str) -> String {
        group_yaml(
            "fabrikam",
            OTHER_TENANT,
            OTHER_CLIENT,
            &encrypt(KEY, secret),
            "",
        )
    }

    impl ReloadRig {
        pub async fn start(groups: &[String], ack_delay: Duration) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (certs, _) = write_dev_certs(&dir.path().join("certs"), false).unwrap();
            let mut tenants = Vec::new();
            for (tenant, client, secret) in [
                (TENANT, CLIENT, SECRET),
                (OTHER_TENANT, OTHER_CLIENT, OTHER_SECRET),
            ] {
                let mut scenario = TenantScenario::with_secret(tenant, client, secret);
                scenario.publication.records_per_blob = 10;
                tenants.push(scenario);
            }
            let mut scenario = Scenario::single_tenant(tenants[0].clone());
            scenario.tenants = tenants;
            let api = ApiEmulator::start(ApiEmulatorConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                scenario,
                tls: Some(TlsFiles {
                    cert: certs.server_cert.clone(),
                    key: certs.server_key.clone(),
                }),
                webhook_ca: Some(certs.ca.clone()),
                clock: Clock::system(),
            })
            .await
            .unwrap();
            let mut engine_config = EngineEmulatorConfig::in_memory(dir.path().join("engine.sock"));
            engine_config.faults = EngineFaults {
                ack_delay,
                ..EngineFaults::default()
            };
            let engine = EngineEmulator::start(engine_config).await.unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let settings = dir.path().join("settings.toml");
            std::fs::write(
                &settings,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"https://localhost:{port}/hook\"\n\
                     tls_cert = \"{}\"\ntls_key = \"{}\"\n[store]\npath = \"{}\"\n[engine]\nsocket = \"{}\"\n\
                     [api]\nca_file = \"{}\"\n[workers]\ncount = 2\n[poller]\npoll_interval_secs = 1\n\
                     [ops]\nshutdown_secs = 3\n",
                    certs.server_cert.display(),
                    certs.server_key.display(),
                    dir.path().join("store").display(),
                    dir.path().join("engine.sock").display(),
                    certs.ca.display(),
                ),
            )
            .unwrap();
            let work = dir.path().join("work");
            write_pipeline(&work, &o365_yaml(groups));
            let mut environment = environment(&work);
            for variable in [
                "O365_CONNECTOR_LOGIN_URL",
                "O365_CONNECTOR_API_URL",
                "O365_CONNECTOR_GRAPH_URL",
            ] {
                environment
                    .env
                    .insert(variable.into(), api.base_url().to_string());
            }
            let config = utmstack::load(&environment, Some(&settings))
                .unwrap()
                .config;
            let options = ServiceOptions {
                listener: Some(listener),
                retry: RetryPolicy::for_test(),
                idle_poll: Duration::from_millis(50),
                ..ServiceOptions::default()
            };
            let service = service::start(config.clone(), options).await.unwrap();
            let watcher = CancellationToken::new();
            tokio::spawn(watch::run(
                service.tenant_supervisor(),
                WatchSettings {
                    environment,
                    settings: Some(settings),
                    interval: Duration::from_millis(50),
                },
                config,
                watcher.clone(),
            ));
            Self {
                dir,
                api,
                engine,
                service: Some(service),
                watcher,
            }
        }

        pub fn service(&self) -> &RunningService {
            self.service.as_ref().unwrap()
        }

        /// Rewrites the o365 file (the watcher picks it up).
        pub fn write_groups(&self, groups: &[String]) {
            let file = self
                .dir
                .path()
                .join("work/pipeline")
                .join(utmstack::O365_FILE_NAME);
            std::fs::write(file, o365_yaml(groups)).unwrap();
        }

        pub async fn wait_for_webhook(&self, tenant: &str) {
            let state = self.api.state().clone();
            wait_until("a subscription with webhook", DEADLINE, || {
                state
                    .feed
                    .active_webhook(tenant, "Audit.Exchange")
                    .is_some()
            })
            .await;
        }

        /// Requests the emulator answered for `tenant` on `endpoint_part`.
        pub fn requests(&self, tenant: &str, endpoint_part: &str) -> usize {
            self.api
                .state()
                .inspection()
                .requests
                .iter()
                .filter(|request| {
                    request.tenant.as_deref() == Some(tenant)
                        && request.endpoint.contains(endpoint_part)
                })
                .count()
        }

        /// POSTs a validation request to the webhook Microsoft holds; the status answered.
        pub async fn validate_webhook(
            &self,
            webhook: &o365_connector::emulator::api::feed::WebhookTarget,
        ) -> u16 {
            let ca = std::fs::read(self.dir.path().join("certs/ca.pem")).unwrap();
            let client = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .build()
                .unwrap();
            client
                .post(&webhook.address)
                .header("Webhook-ValidationCode", "reload-test")
                .header(
                    "Webhook-AuthID",
                    webhook.auth_id.clone().unwrap_or_default(),
                )
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }

        pub fn acked_from(&self, data_source: &str) -> usize {
            self.engine
                .logs()
                .iter()
                .filter(|log| log.acked && log.data_source == data_source)
                .count()
        }

        pub async fn shutdown(mut self) {
            self.watcher.cancel();
            if let Some(service) = self.service.take() {
                service.stop().await;
            }
            self.api.shutdown().await;
            self.engine.shutdown().await;
        }
    }

    /// Every record the emulator published for `tenant` was acked at least once.
    pub fn every_record_acked(rig: &ReloadRig, tenant: &str) -> bool {
        let acked = acked_by_sha(&rig.engine.logs());
        let published = rig.api.state().publisher.published();
        let of_tenant: Vec<_> = published
            .iter()
            .filter(|record| record.tenant_id == tenant)
            .collect();
        !of_tenant.is_empty()
            && of_tenant
                .iter()
                .all(|record| acked.contains_key(&record.sha256))
    }

    /// An item of `tenant` put straight into the service's queue.
    pub async fn enqueue_item(rig: &ReloadRig, tenant: &str) -> o365_connector::queue::ContentKey {
        let now = chrono::Utc::now();
        let content_id = format!(
            "20261126000000000000000000000000${}$reload",
            sha256_hex(tenant.as_bytes())
        );
        let reference = ContentRef {
            tenant_id: tenant.into(),
            content_type: "Audit.Exchange".into(),
            content_id: content_id.clone(),
            content_uri: format!(
                "{}api/v1.0/{tenant}/activity/feed/audit/{content_id}",
                rig.api.base_url()
            ),
            content_created: now,
            content_expiration: now + chrono::Duration::days(7),
            source: Source::Poll,
        };
        let key = reference.key();
        let queue: &dyn ContentQueue = rig.service().queue.as_ref();
        queue.enqueue(vec![reference]).await.unwrap();
        key
    }

    pub fn is_pending_after_a_try(state: &ItemState) -> bool {
        matches!(state, ItemState::Pending { attempts, .. } if *attempts >= 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_group_is_collected_and_removed_group_stops_keeping_its_queued_items() {
    use reload::*;
    let rig = ReloadRig::start(&[contoso("")], std::time::Duration::ZERO).await;
    rig.wait_for_webhook(TENANT).await;

    rig.write_groups(&[contoso(""), fabrikam(OTHER_SECRET)]);
    rig.wait_for_webhook(OTHER_TENANT).await;
    publish::publish_now(rig.api.state(), OTHER_TENANT, "Audit.Exchange", 1).await;
    wait_until("fabrikam's records acked", DEADLINE, || {
        every_record_acked(&rig, OTHER_TENANT)
    })
    .await;
    assert_eq!(rig.acked_from("fabrikam"), 10);
    let fabrikam_webhook = rig
        .api
        .state()
        .feed
        .active_webhook(OTHER_TENANT, "Audit.Exchange")
        .unwrap();

    rig.write_groups(&[contoso("")]);
    wait_until("fabrikam removed", DEADLINE, || {
        rig.service().tenants.get(OTHER_TENANT).is_none()
    })
    .await;
    let refused = rig.validate_webhook(&fabrikam_webhook).await;
    assert_eq!(refused, 404, "the webhook refuses a removed tenant");
    let fabrikam_requests = rig.requests(OTHER_TENANT, "");
    let key = enqueue_item(&rig, OTHER_TENANT).await;
    let queue: &dyn o365_connector::queue::ContentQueue = rig.service().queue.as_ref();
    let started = std::time::Instant::now();
    loop {
        let item = queue
            .get(&key)
            .await
            .unwrap()
            .expect("the item stays queued");
        if is_pending_after_a_try(&item.state) {
            assert_eq!(
                item.last_retry_reason.as_deref(),
                Some("tenant no longer configured")
            );
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never tried: {:?}",
            item.state
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // contoso's poller lists every second: two more listings of it prove time passed
    // with pollers running, and fabrikam's asked nothing meanwhile.
    let contoso_listings = rig.requests(TENANT, "content");
    wait_until("two more contoso listings", DEADLINE, || {
        rig.requests(TENANT, "content") >= contoso_listings + 2
    })
    .await;
    assert_eq!(rig.requests(OTHER_TENANT, ""), fabrikam_requests);
    assert!(rig.service().tenants.get(TENANT).is_some());
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_secret_takes_effect_and_work_in_flight_during_reloads_is_not_lost() {
    use reload::*;
    // Each Log is acked 2 s after it arrives: the reload below happens with contoso's
    // records forwarded but not yet acked, its items leased.
    let ack_delay = std::time::Duration::from_secs(2);
    let rig = ReloadRig::start(&[contoso(""), fabrikam("a-wrong-secret")], ack_delay).await;
    rig.wait_for_webhook(TENANT).await;
    wait_until("fabrikam's token refused", DEADLINE, || {
        rig.api
            .state()
            .inspection()
            .rejections
            .by_rule
            .get("bad_secret")
            .is_some_and(|count| *count > 0)
    })
    .await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 4).await;
    wait_until("contoso's records reach the engine", DEADLINE, || {
        !rig.engine.logs().is_empty()
    })
    .await;
    let contoso_before = rig.service().tenants.get(TENANT).unwrap();

    // Both tenants change: fabrikam gets the right secret, contoso a publisher id (its API
    // client is rebuilt while its blobs are in flight).
    let publisher = format!("              office365_publisher_id: \"{TENANT}\"\n");
    rig.write_groups(&[contoso(&publisher), fabrikam(OTHER_SECRET)]);
    wait_until("contoso restarted with its new settings", DEADLINE, || {
        rig.service()
            .tenants
            .get(TENANT)
            .is_some_and(|now| !std::sync::Arc::ptr_eq(&now, &contoso_before))
    })
    .await;
    assert!(
        !every_record_acked(&rig, TENANT),
        "the reload happened with work in flight"
    );
    rig.wait_for_webhook(OTHER_TENANT).await;
    publish::publish_now(rig.api.state(), OTHER_TENANT, "Audit.Exchange", 1).await;
    wait_until("fabrikam's records acked", DEADLINE, || {
        every_record_acked(&rig, OTHER_TENANT)
    })
    .await;
    wait_until("every contoso record acked", DEADLINE, || {
        every_record_acked(&rig, TENANT)
    })
    .await;
    assert_eq!(rig.acked_from("contoso"), 40);
    let queue: &dyn o365_connector::queue::ContentQueue = rig.service().queue.as_ref();
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.dead, 0, "{stats:?}");
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_yaml_keeps_the_running_tenants_and_the_next_good_file_applies() {
    use reload::*;
    let rig = ReloadRig::start(&[contoso("")], std::time::Duration::ZERO).await;
    rig.wait_for_webhook(TENANT).await;
    let file = rig
        .dir
        .path()
        .join("work/pipeline")
        .join(utmstack::O365_FILE_NAME);
    std::fs::write(&file, "plugins: [unclosed\n").unwrap();
    // The watcher looks every 50 ms; two listings of contoso's poller (one a second) later
    // it has seen the broken file many times.
    let listings = rig.requests(TENANT, "content");
    wait_until("two more contoso listings", DEADLINE, || {
        rig.requests(TENANT, "content") >= listings + 2
    })
    .await;
    assert!(rig.service().tenants.get(TENANT).is_some());
    let contoso_webhook = rig
        .api
        .state()
        .feed
        .active_webhook(TENANT, "Audit.Exchange")
        .unwrap();
    assert_eq!(rig.validate_webhook(&contoso_webhook).await, 200);

    rig.write_groups(&[fabrikam(OTHER_SECRET)]);
    wait_until("contoso replaced by fabrikam", DEADLINE, || {
        let tenants = rig.service().tenants.current();
        tenants.contains_key(OTHER_TENANT) && !tenants.contains_key(TENANT)
    })
    .await;
    rig.shutdown().await;
}

/// The binary as UTMStack's plugin: copied as `com.utmstack.o365.plugin` and started with
/// no arguments, as the EventProcessor starts it, with the server settings in
/// `{WORK_DIR}/o365-connector/config.toml`.
mod plugin {
    use std::path::{Path, PathBuf};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};

    use o365_connector::emulator::api::publish;
    use o365_connector::plugin::{PLUGIN_EXECUTABLE_NAME, SETTINGS_FILE};
    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::common::rig::{Rig, RigOptions, SECRET, TENANT};
    use super::common::{self, DEADLINE, start_program_with_env, wait_until};
    use super::{CLIENT, KEY, UTM_TENANT, encrypt, group_yaml, o365_yaml, write_pipeline};

    /// A copy of the binary named as UTMStack names the plugin, in `dir`.
    fn plugin_copy(dir: &Path) -> PathBuf {
        let path = dir.join(PLUGIN_EXECUTABLE_NAME);
        std::fs::copy(common::binary(), &path).unwrap();
        path
    }

    /// A rig whose service is the plugin process, `work` its WORK_DIR with the rig's server
    /// settings as `{work}/o365-connector/config.toml`, and the endpoint variables.
    async fn rig_with_work_dir() -> (Rig, PathBuf, Vec<(&'static str, String)>) {
        let mut options = RigOptions::synthetic(Default::default());
        options.in_process = false;
        let rig = Rig::start(tempfile::tempdir().unwrap(), options).await;
        let work = rig.dir.path().join("work");
        let settings = work.join(SETTINGS_FILE);
        std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
        std::fs::write(&settings, super::settings_without_tenants(&rig)).unwrap();
        let base = rig.api.base_url().to_string();
        let env = vec![
            ("MODE", "worker".to_string()),
            ("WORK_DIR", work.display().to_string()),
            ("O365_CONNECTOR_LOGIN_URL", base.clone()),
            ("O365_CONNECTOR_API_URL", base.clone()),
            ("O365_CONNECTOR_GRAPH_URL", base),
            ("O365_CONNECTOR_UTMSTACK_WATCH_SECS", "1".to_string()),
        ];
        (rig, work, env)
    }

    fn contoso_yaml() -> String {
        o365_yaml(&[group_yaml(
            "contoso-eu",
            TENANT,
            CLIENT,
            &encrypt(KEY, SECRET),
            "",
        )])
    }

    /// Publishes two blobs and waits until their 20 records are acknowledged, labelled from
    /// the YAML.
    async fn assert_collects(rig: &Rig) {
        rig.wait_for_webhooks(&["Audit.Exchange"]).await;
        publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
        wait_until("20 records acked", DEADLINE, || {
            rig.engine.logs().iter().filter(|log| log.acked).count() >= 20
        })
        .await;
        for log in rig.engine.logs() {
            assert_eq!(log.data_source, "contoso-eu");
            assert_eq!(log.tenant_id, UTM_TENANT);
        }
    }

    #[tokio::test]
    async fn plugin_exits_0_at_once_unless_mode_is_worker() {
        let dir = tempfile::tempdir().unwrap();
        let program = plugin_copy(dir.path());
        // A configured WORK_DIR: were the plugin to run, it would serve and not exit.
        let work = dir.path().join("work");
        write_pipeline(&work, &contoso_yaml());
        for mode in [Some("manager"), None] {
            let mut command = tokio::process::Command::new(&program);
            command.env("WORK_DIR", &work).env_remove("MODE");
            if let Some(mode) = mode {
                command.env("MODE", mode);
            }
            let output = tokio::time::timeout(DEADLINE, command.output())
                .await
                .unwrap_or_else(|_| panic!("MODE={mode:?}: the plugin did not exit"))
                .unwrap();
            assert_eq!(output.status.code(), Some(0), "MODE={mode:?}: {output:?}");
            assert!(output.stdout.is_empty(), "MODE={mode:?}: {output:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plugin_in_worker_mode_collects_from_utmstack_files_with_no_arguments() {
        let (rig, work, env) = rig_with_work_dir().await;
        write_pipeline(&work, &contoso_yaml());
        let program = plugin_copy(rig.dir.path());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let running = start_program_with_env(&program, &[], &env).await;
        // The rig's settings file chose the listener: the plugin read it.
        let listen = super::settings_without_tenants(&rig);
        let port = listen
            .lines()
            .find_map(|line| line.strip_prefix("listen = \"127.0.0.1:"))
            .unwrap()
            .trim_end_matches('"');
        assert!(
            running.ready_line.starts_with("listening ") && running.ready_line.contains(port),
            "{}",
            running.ready_line
        );
        assert_collects(&rig).await;
        assert_eq!(running.terminate().await, Some(0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unconfigured_plugin_waits_says_so_once_and_collects_when_the_console_writes_groups() {
        let (rig, work, env) = rig_with_work_dir().await;
        let program = plugin_copy(rig.dir.path());
        let mut child = tokio::process::Command::new(&program)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr_lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let collected = stderr_lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("{line}");
                collected.lock().unwrap().push(line);
            }
        });
        let waiting = |lines: &Arc<Mutex<Vec<String>>>| {
            lines
                .lock()
                .unwrap()
                .iter()
                .filter(|line| line.contains("module is not configured"))
                .count()
        };
        wait_until("the plugin says it waits", DEADLINE, || {
            waiting(&stderr_lines) == 1
        })
        .await;
        assert!(child.try_wait().unwrap().is_none(), "the plugin exited");
        // The console writes the key first and the groups later: still waiting, not failing.
        write_pipeline(&work, &o365_yaml(&[]));
        write_pipeline(&work, &contoso_yaml());
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready_line = tokio::time::timeout(DEADLINE, stdout.next_line())
            .await
            .expect("the plugin starts collecting in time")
            .unwrap()
            .expect("the plugin prints its readiness line");
        assert!(ready_line.starts_with("listening "), "{ready_line}");
        assert_collects(&rig).await;
        assert_eq!(waiting(&stderr_lines), 1, "said once");
        child.start_kill().unwrap();
        let _ = child.wait().await;
    }
}

const NATS_PASSWORD: &str = "nats-pw-never-printed";

/// Starts `run --utmstack` with `env` added to the UTMStack environment of `rig`, its log
/// in `log`.
async fn start_utmstack_copy(
    rig: &Rig,
    work: &Path,
    settings: &Path,
    env: &[(&str, &str)],
    log: &Path,
) -> common::RunningBinary {
    let base = rig.api.base_url().to_string();
    let mut all = vec![
        ("WORK_DIR", work.to_str().unwrap()),
        ("O365_CONNECTOR_LOGIN_URL", base.as_str()),
        ("O365_CONNECTOR_API_URL", base.as_str()),
        ("O365_CONNECTOR_GRAPH_URL", base.as_str()),
        ("RUST_LOG", "info"),
    ];
    all.extend_from_slice(env);
    common::start_binary_with_stderr(
        &["run", "--utmstack", "--config", settings.to_str().unwrap()],
        &all,
        std::fs::File::create(log).unwrap().into(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_with_the_same_nats_url_share_the_queue_and_only_one_polls_and_the_password_never_prints()
 {
    let nats = common::nats::NatsServer::start_with_password("o365", NATS_PASSWORD).await;
    let nats_url = nats
        .url
        .replacen("://", &format!("://o365:{NATS_PASSWORD}@"), 1);
    let mut options = RigOptions::synthetic(Default::default());
    options.in_process = false;
    let rig = Rig::start(tempfile::tempdir().unwrap(), options).await;
    let work = rig.dir.path().join("work");
    let group = group_yaml("contoso-eu", TENANT, CLIENT, &encrypt(KEY, SECRET), "");
    write_pipeline(&work, &o365_yaml(&[group]));
    let settings = rig.dir.path().join("settings.toml");
    std::fs::write(&settings, settings_without_tenants(&rig)).unwrap();
    let first_port = rig.config().server.listen.port();
    let second_port = common::free_port();
    let second_listen = format!("127.0.0.1:{second_port}");
    let second_store = rig.dir.path().join("store-b").display().to_string();
    let logs = [rig.dir.path().join("a.log"), rig.dir.path().join("b.log")];
    let first = start_utmstack_copy(
        &rig,
        &work,
        &settings,
        &[
            ("NATS_URL", &nats_url),
            ("O365_CONNECTOR__STORE__NATS__REPLICA_ID", "node-a"),
        ],
        &logs[0],
    )
    .await;
    let second = start_utmstack_copy(
        &rig,
        &work,
        &settings,
        &[
            ("NATS_URL", &nats_url),
            ("O365_CONNECTOR__STORE__NATS__REPLICA_ID", "node-b"),
            ("O365_CONNECTOR__SERVER__LISTEN", &second_listen),
            ("O365_CONNECTOR__STORE__PATH", &second_store),
        ],
        &logs[1],
    )
    .await;
    rig.wait_for_webhooks(&["Audit.Exchange"]).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 3).await;
    wait_until("30 records acked", DEADLINE, || {
        rig.engine.logs().iter().filter(|log| log.acked).count() >= 30
    })
    .await;

    // One queue on UTMStack's NATS, under our own prefix.
    let client =
        async_nats::ConnectOptions::with_user_and_password("o365".into(), NATS_PASSWORD.into())
            .connect(nats.url.as_str())
            .await
            .unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream.get_stream("o365_connector_work").await.unwrap();
    assert!(jetstream.get_stream("INGEST_JOBS_O365").await.is_err());

    // Both copies see one leader, and only it called the leader-only endpoints.
    let http = common::client_trusting(&rig.certs.ca);
    let mut statuses = Vec::new();
    for port in [first_port, second_port] {
        let status = common::get_text(&http, format!("https://localhost:{port}/status")).await;
        statuses.push(status);
    }
    let leaders: Vec<String> = statuses
        .iter()
        .map(|status| {
            serde_json::from_str::<Value>(status).unwrap()["cluster"]["leader"].to_string()
        })
        .collect();
    assert_eq!(leaders[0], leaders[1], "{statuses:?}");
    let requests = rig.api.state().inspection().requests.clone();
    let leader_callers: std::collections::BTreeSet<String> = requests
        .iter()
        .filter(|request| {
            [
                "/subscriptions/content",
                "/subscriptions/list",
                "/subscriptions/start",
                "/identityProtection/riskDetections",
            ]
            .iter()
            .any(|endpoint| request.endpoint.ends_with(endpoint))
        })
        .map(|request| format!("{:?}", request.user_agent))
        .collect();
    assert_eq!(leader_callers.len(), 1, "{leader_callers:?}");
    assert!(
        leader_callers
            .iter()
            .next()
            .unwrap()
            .contains(leaders[0].trim_matches('"')),
        "{leader_callers:?} vs {leaders:?}"
    );

    assert_eq!(first.terminate().await, Some(0));
    assert_eq!(second.terminate().await, Some(0));
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("queue on NATS JetStream"), "{text}");
        assert!(!text.contains(NATS_PASSWORD), "{text}");
    }
    for status in &statuses {
        assert!(!status.contains(NATS_PASSWORD), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_utmstack_names_the_nats_store_says_whether_it_answers_and_hides_the_password() {
    let nats = common::nats::NatsServer::start_with_password("o365", NATS_PASSWORD).await;
    let rig = Rig::start(
        tempfile::tempdir().unwrap(),
        RigOptions::synthetic(Default::default()),
    )
    .await;
    let work = rig.dir.path().join("work");
    let group = group_yaml("contoso-eu", TENANT, CLIENT, &encrypt(KEY, SECRET), "");
    write_pipeline(&work, &o365_yaml(&[group]));
    let settings = rig.dir.path().join("settings.toml");
    std::fs::write(&settings, settings_without_tenants(&rig)).unwrap();
    let base = rig.api.base_url().to_string();
    let store_line = |output: &std::process::Output| -> Value {
        let report: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|error| panic!("{error}: {output:?}"));
        report["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|line| line["check"] == "store")
            .cloned()
            .unwrap_or_else(|| panic!("no store line: {report}"))
    };
    let closed = format!(
        "nats://o365:{NATS_PASSWORD}@127.0.0.1:{}",
        common::free_port()
    );
    let answering = nats
        .url
        .replacen("://", &format!("://o365:{NATS_PASSWORD}@"), 1);
    for (nats_url, outcome, words) in [
        (answering.as_str(), "ok", "answers"),
        (closed.as_str(), "fail", "store.nats.urls nats://127.0.0.1:"),
        ("", "ok", "embedded store in"),
    ] {
        let output = operator_command(
            &[
                "check",
                "--utmstack",
                "--config",
                settings.to_str().unwrap(),
                "--json",
            ],
            &[
                ("WORK_DIR", work.to_str().unwrap()),
                ("O365_CONNECTOR_LOGIN_URL", &base),
                ("O365_CONNECTOR_API_URL", &base),
                ("O365_CONNECTOR_GRAPH_URL", &base),
                ("NATS_URL", nats_url),
            ],
        )
        .await;
        let line = store_line(&output);
        assert_eq!(line["outcome"], outcome, "{line}");
        let detail = line["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{detail}");
        if !nats_url.is_empty() {
            assert!(detail.contains("prefix o365_connector"), "{detail}");
        }
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!printed.contains(NATS_PASSWORD), "{printed}");
    }
}

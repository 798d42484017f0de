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
    wait_until("20 records acked", DEADLINE, || {
        rig.engine.logs().iter().filter(|log| log.acked).count() >= 20
    })
    .await;
    for log in rig.engine.logs() {
        assert_eq!(log.data_source, "contoso-eu");
        assert_eq!(log.tenant_id, UTM_TENANT);
    }
    assert_eq!(running.terminate().await, Some(0));
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

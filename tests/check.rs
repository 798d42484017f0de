//! `o365-connector check` against the emulators: each broken setup is explained in plain
//! words and makes the command exit non-zero; a working one passes, webhook probe included.

mod common;

use std::process::Output;

use o365_connector::emulator::api::scenario::TenantScenario;
use serde_json::Value;

use common::rig::{CLIENT, Rig, RigOptions, SECRET, TENANT};

async fn rig_with(tenant: TenantScenario, in_process: bool) -> Rig {
    let mut options = RigOptions::synthetic(Default::default());
    options.tenant = TenantScenario {
        publication: options.tenant.publication.clone(),
        ..tenant
    };
    options.in_process = in_process;
    Rig::start(tempfile::tempdir().unwrap(), options).await
}

async fn run_check(rig: &Rig, secret: &str, extra: &[&str]) -> Output {
    let config = rig.write_config();
    tokio::process::Command::new(common::binary())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .args(extra)
        .env("RIG_SECRET", secret)
        .output()
        .await
        .unwrap()
}

/// The JSON report's lines.
fn lines(output: &Output) -> Vec<Value> {
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)));
    report["lines"].as_array().unwrap().clone()
}

fn failures(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|line| line["outcome"] == "fail")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_explained_in_plain_words_and_exits_non_zero() {
    let rig = rig_with(TenantScenario::with_secret(TENANT, CLIENT, SECRET), false).await;
    let output = run_check(&rig, "not-the-secret", &[]).await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{table}");
    assert!(table.contains("token"), "{table}");
    assert!(table.contains("FAIL"), "{table}");
    assert!(table.contains("the client secret is wrong"), "{table}");
    assert!(table.contains("has not expired"), "{table}");
    assert!(!table.contains("not-the-secret"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_setup_passes_with_the_webhook_probe_and_exits_zero() {
    let rig = rig_with(TenantScenario::with_secret(TENANT, CLIENT, SECRET), true).await;
    rig.wait_for_webhooks(&["Audit.Exchange"]).await;
    let output = run_check(&rig, SECRET, &["--json", "--probe-webhook"]).await;
    let lines = lines(&output);
    assert!(failures(&lines).is_empty(), "{lines:#?}");
    assert!(output.status.success());
    let webhook = lines
        .iter()
        .find(|line| line["check"] == "webhook")
        .unwrap();
    assert!(
        webhook["detail"]
            .as_str()
            .unwrap()
            .contains("answered the validation request with 200"),
        "{webhook}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line["check"] == "engine" && line["outcome"] == "ok")
    );
    assert_eq!(
        lines.iter().filter(|line| line["check"] == "role").count(),
        5,
        "one role line per content type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_dlp_role_fails_dlp_only_and_names_the_permission() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.roles = vec!["ActivityFeed.Read".into()];
    let rig = rig_with(tenant, false).await;
    let output = run_check(&rig, SECRET, &["--json"]).await;
    assert!(!output.status.success());
    let lines = lines(&output);
    let role_failures: Vec<_> = failures(&lines)
        .into_iter()
        .filter(|line| line["check"] == "role")
        .collect();
    assert_eq!(role_failures.len(), 1, "{lines:#?}");
    assert_eq!(role_failures[0]["content_type"], "DLP.All");
    let detail = role_failures[0]["detail"].as_str().unwrap();
    assert!(detail.contains("ActivityFeed.ReadDlp"), "{detail}");
    assert!(detail.contains("admin consent"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_logging_off_is_explained() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.audit_enabled = false;
    let rig = rig_with(tenant, false).await;
    let output = run_check(&rig, SECRET, &["--json"]).await;
    assert!(!output.status.success());
    let lines = lines(&output);
    let subscriptions = failures(&lines)
        .into_iter()
        .find(|line| line["check"] == "subscriptions")
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let detail = subscriptions["detail"].as_str().unwrap();
    assert!(detail.contains("audit logging is not enabled"), "{detail}");
    assert!(detail.contains("60 minutes"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_socket_fails() {
    let mut rig = rig_with(TenantScenario::with_secret(TENANT, CLIENT, SECRET), false).await;
    rig.stop_engine().await;
    let output = run_check(&rig, SECRET, &["--json"]).await;
    assert!(!output.status.success());
    let lines = lines(&output);
    let engine = lines.iter().find(|line| line["check"] == "engine").unwrap();
    assert_eq!(engine["outcome"], "fail", "{engine}");
    assert!(engine["detail"].as_str().unwrap().contains("engine"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_utmstack_reads_the_yaml_and_fails_on_a_skipped_group_naming_its_key() {
    // The app lacks the Graph permission: in UTMStack mode (risk detections on for every
    // group without the operator asking) that is a warning, never a failure.
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.graph_roles = vec![];
    let rig = rig_with(tenant, false).await;
    let work = rig.dir.path().join("work");
    std::fs::create_dir_all(work.join("pipeline")).unwrap();
    let yaml = format!(
        "plugins:\n  o365:\n    tenants:\n      - id: 8f0c4a8e-1111-4222-8333-944445555666\n        groups:\n\
         \x20         - name: contoso\n            config:\n              office365_tenant_id: \"{TENANT}\"\n\
         \x20             office365_client_id: \"{CLIENT}\"\n              office365_client_secret: \"{SECRET}\"\n\
         \x20         - name: half-done\n            config:\n              office365_tenant_id: \" \"\n"
    );
    std::fs::write(work.join("pipeline/system_plugins_o365.yaml"), yaml).unwrap();
    let settings = rig.dir.path().join("settings.toml");
    let text = rig.config_text.split("[[tenants]]").next().unwrap();
    std::fs::write(&settings, text).unwrap();
    let output = tokio::process::Command::new(common::binary())
        .args(["check", "--utmstack", "--config"])
        .arg(&settings)
        .env("WORK_DIR", &work)
        .output()
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{table}");
    let half_done = table
        .lines()
        .find(|line| line.starts_with("half-done"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        half_done.contains("FAIL") && half_done.contains("office365_tenant_id"),
        "{half_done}"
    );
    let contoso_failures = table
        .lines()
        .filter(|line| line.starts_with("contoso") && line.contains("FAIL"))
        .count();
    assert_eq!(contoso_failures, 0, "{table}");
    let risk = table
        .lines()
        .find(|line| line.starts_with("contoso") && line.contains("risk_detections"))
        .unwrap_or_else(|| panic!("no risk_detections line: {table}"));
    assert!(
        risk.contains("warn") && risk.contains("IdentityRiskEvent.Read.All"),
        "{risk}"
    );
    assert!(
        table
            .lines()
            .any(|line| line.starts_with("utmstack") && line.contains("not encrypted")),
        "the plaintext secret is reported: {table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_without_roles_is_explained_as_missing_admin_consent() {
    let mut tenant = TenantScenario::with_secret(TENANT, CLIENT, SECRET);
    tenant.roles = Vec::new();
    let rig = rig_with(tenant, false).await;
    let output = run_check(&rig, SECRET, &[]).await;
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{table}");
    assert!(table.contains("admin consent was not granted"), "{table}");
}

/// A rig collecting risk detections whose app has `graph_roles` on Graph.
async fn risk_rig(graph_roles: Vec<String>) -> Rig {
    let mut options = RigOptions::synthetic(Default::default());
    options.in_process = false;
    options.risk_detections = true;
    options.tenant.graph_roles = graph_roles;
    Rig::start(tempfile::tempdir().unwrap(), options).await
}

fn risk_line(lines: &[Value]) -> Value {
    lines
        .iter()
        .find(|line| line["check"] == "risk_detections")
        .cloned()
        .unwrap_or_else(|| panic!("no risk_detections line in {lines:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_detections_are_checked_with_the_graph_token_and_a_missing_permission_fails() {
    let granted = risk_rig(vec!["IdentityRiskEvent.Read.All".into()]).await;
    let output = run_check(&granted, SECRET, &["--json"]).await;
    let line = risk_line(&lines(&output));
    assert_eq!(line["outcome"], "ok", "{line}");
    assert!(
        line["detail"]
            .as_str()
            .unwrap()
            .contains("IdentityRiskEvent.Read.All granted"),
        "{line}"
    );

    // Asked for in TOML mode without the permission: a failure naming it and the licence.
    let refused = risk_rig(vec![]).await;
    let output = run_check(&refused, SECRET, &["--json"]).await;
    assert!(!output.status.success());
    let line = risk_line(&lines(&output));
    assert_eq!(line["outcome"], "fail", "{line}");
    let detail = line["detail"].as_str().unwrap();
    assert!(
        detail.contains("IdentityRiskEvent.Read.All") && detail.contains("P2"),
        "{line}"
    );
    // The audit feed's own checks are not affected.
    let others = lines(&output);
    let other_failures: Vec<&Value> = failures(&others)
        .into_iter()
        .filter(|line| line["check"] != "risk_detections" && line["check"] != "engine")
        .collect();
    assert!(other_failures.is_empty(), "{other_failures:#?}");
}

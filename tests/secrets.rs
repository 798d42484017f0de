//! Secrets never leave: the client secret, tokens, the webhook secret and the authIds it
//! derives appear nowhere in the logs at any level, in /metrics, /status or the operator
//! commands' `--json` output — captured from the real binary and scanned.

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::process::Stdio;

use common::DEADLINE;
use common::rig::{Rig, RigOptions, SECRET, TENANT};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::webhook::WebhookSecrets;

const WEBHOOK_SECRET: &str = "webhook-secret-that-must-never-print";
#[tokio::test]
async fn no_secret_token_or_auth_id_appears_in_logs_metrics_status_or_json_output() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.in_process = false;
    let mut rig = Rig::start(dir, options).await;
    let port = rig.config().server.listen.port();
    rig.config_text = rig.config_text.replacen(
        "[server]\n",
        "[server]\nwebhook_secret = { env = \"RIG_WEBHOOK_SECRET\" }\n",
        1,
    );
    let config = rig.write_config();
    let log_path = rig.dir.path().join("connector.log");
    let env = [
        ("RIG_SECRET", SECRET),
        ("RIG_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("RUST_LOG", "trace"),
    ];
    let mut child = tokio::process::Command::new(common::binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .envs(env)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
    rig.wait_for_every_published_record().await;

    let http = common::client_trusting(&rig.certs.ca);
    let mut captured = Vec::new();
    for path in ["/metrics", "/status", "/status.html", "/readyz"] {
        let body = common::get_text(&http, format!("https://localhost:{port}{path}")).await;
        captured.push((path.to_string(), body));
    }
    // A refused webhook call's error body.
    let refused = http
        .post(format!("https://localhost:{port}/hook/{TENANT}"))
        .header("Content-Type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    captured.push(("refused webhook".into(), refused));
    for command in [["subscriptions", "list"], ["deadletters", "list"]] {
        let output = tokio::process::Command::new(common::binary())
            .args([
                command[0],
                command[1],
                "--config",
                config.to_str().unwrap(),
                "--json",
            ])
            .envs(env)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        captured.push((
            format!("{command:?} stdout"),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ));
        captured.push((
            format!("{command:?} stderr"),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the log ran at the lowest levels"
    );
    captured.push(("logs".into(), logs));

    let auth_id = WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None).auth_id(TENANT);
    let forbidden = [
        ("client secret", SECRET.to_string()),
        ("webhook secret", WEBHOOK_SECRET.to_string()),
        ("authId", auth_id),
        // Every token the emulator issues is a JWT, whose header encodes to this prefix.
        ("bearer token", "eyJ".to_string()),
    ];
    for (place, text) in &captured {
        for (what, value) in &forbidden {
            assert!(
                !text.contains(value.as_str()),
                "the {what} appears in {place}"
            );
        }
    }
    rig.shutdown().await;
}

//! `/status` and `/status.html` after a small delivery: the JSON shape and values, no
//! secret or authId in it, the private ops listener (operations are private by default:
//! without `ops.listen` or `ops.public` they are not served), and the page as headless Chromium
//! renders it (a screenshot is kept at `target/tmp/status-page.png`).

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use common::rig::{GROUP, Rig, RigOptions, SECRET, TENANT};
use common::{DEADLINE, wait_until};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, ROLE_READ};
use o365_connector::ops::status::cursor_key;
use serde_json::Value;

/// The keys the issue fixes for each content type.
const CONTENT_TYPE_KEYS: [&str; 10] = [
    "content_type",
    "subscription",
    "webhook",
    "last_notification",
    "cursor",
    "lag_seconds",
    "queue_depth",
    "records_forwarded",
    "lost",
    "errors",
];

/// A rig with the private ops listener on a free port, whose app lacks
/// `ActivityFeed.ReadDlp` (so DLP.All has a real current error), after two Audit.Exchange
/// blobs were delivered and every subscription's state was reported.
async fn delivered_rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.extra_config = "listen = \"127.0.0.1:0\"\n".into();
    options.ops_public = false;
    options.tenant.roles = vec![ROLE_READ.to_string()];
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL[..4]).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
    rig.wait_for_every_published_record().await;
    let service = rig.service.as_ref().unwrap();
    let cursor = (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    service
        .queue
        .put_meta(&cursor_key(TENANT, "Audit.Exchange"), cursor.into_bytes())
        .await
        .unwrap();
    // What the webhook intake reports for each notification it enqueued (not wired to the
    // webhook handler yet; see StatusSource::note_notification).
    service
        .status
        .note_notification(TENANT, "Audit.Exchange", Utc::now());
    // The subscription managers report every content type's state once they checked it,
    // and DLP.All's refusal as a current problem.
    let started = std::time::Instant::now();
    loop {
        let report = service.status.report().await;
        let content_types = &report.tenants[0].content_types;
        let reported = content_types
            .iter()
            .all(|entry| entry.subscription.is_some() && entry.webhook.is_some());
        let dlp_refused = content_types
            .iter()
            .any(|entry| entry.content_type == "DLP.All" && !entry.errors.is_empty());
        if reported && dlp_refused {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "subscription states and the DLP.All problem never reported: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig
}

fn ops_url(rig: &Rig, path: &str) -> String {
    let address = rig.service.as_ref().unwrap().ops_address.unwrap();
    format!("http://{address}{path}")
}

fn content_type<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["tenants"][0]["content_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["content_type"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {status}"))
}

#[tokio::test]
async fn status_shows_each_tenant_and_content_type_with_what_was_delivered() {
    let rig = delivered_rig().await;
    let response = reqwest::get(ops_url(&rig, "/status")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let status: Value = serde_json::from_str(&text).unwrap();

    let tenants = status["tenants"].as_array().unwrap();
    assert_eq!(tenants.len(), 1);
    assert_eq!(tenants[0]["name"], GROUP);
    let listed: Vec<&str> = tenants[0]["content_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ALL);
    for entry in tenants[0]["content_types"].as_array().unwrap() {
        for key in CONTENT_TYPE_KEYS {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
    }

    let exchange = content_type(&status, "Audit.Exchange");
    let published = rig.published().len() as u64;
    assert_eq!(exchange["records_forwarded"].as_u64(), Some(published));
    assert_eq!(exchange["lost"].as_u64(), Some(0));
    for entry in tenants[0]["content_types"].as_array().unwrap() {
        assert!(entry["subscription"].is_string(), "{entry}");
        assert!(entry["webhook"].is_string(), "{entry}");
    }
    assert!(exchange["last_notification"].is_string());
    assert!(exchange["cursor"].is_string(), "{exchange}");
    assert_eq!(
        content_type(&status, "Audit.General")["records_forwarded"].as_u64(),
        Some(0)
    );
    // Lag is measured from each cursor (the poller's, or the one written above) to the
    // report's time.
    let generated_at =
        chrono::DateTime::parse_from_rfc3339(status["generated_at"].as_str().unwrap()).unwrap();
    for entry in tenants[0]["content_types"].as_array().unwrap() {
        let Some(cursor) = entry["cursor"].as_str() else {
            assert!(entry["lag_seconds"].is_null(), "{entry}");
            continue;
        };
        let cursor = chrono::DateTime::parse_from_rfc3339(cursor).unwrap();
        assert_eq!(
            entry["lag_seconds"].as_i64(),
            Some((generated_at - cursor).num_seconds().max(0)),
            "{entry}"
        );
    }

    let dlp_errors = content_type(&status, "DLP.All")["errors"]
        .as_array()
        .unwrap()
        .clone();
    // The subscription manager and the poller may both report the missing permission,
    // each under its own kind.
    assert!(
        !dlp_errors.is_empty(),
        "the missing DLP permission is shown"
    );
    for error in &dlp_errors {
        for field in ["kind", "message", "advice", "since"] {
            let value = error[field].as_str().unwrap_or_default();
            assert!(!value.is_empty(), "{field} of {dlp_errors:?}");
        }
    }
    let kinds: Vec<&str> = dlp_errors
        .iter()
        .map(|error| error["kind"].as_str().unwrap())
        .collect();
    let mut distinct = kinds.clone();
    distinct.dedup();
    assert_eq!(kinds, distinct, "one entry per kind");
    println!("DLP.All error: {}", dlp_errors[0]);
    assert_eq!(status["engine"]["connected"], true);

    assert!(!text.contains(SECRET), "the client secret is never shown");
    let auth_id = rig
        .api
        .state()
        .feed
        .active_webhook(TENANT, "Audit.Exchange")
        .unwrap()
        .auth_id
        .expect("the webhook was registered with an authId");
    assert!(!auth_id.is_empty());
    assert!(!text.contains(&auth_id), "the authId is never shown");
    rig.shutdown().await;
}

#[tokio::test]
async fn with_ops_listen_status_and_metrics_leave_the_webhook_listener() {
    let rig = delivered_rig().await;
    let public = common::client_trusting(&rig.certs.ca);
    let base_url = &rig.service.as_ref().unwrap().base_url;
    for (path, expected) in [
        ("/status", 404),
        ("/status.html", 404),
        ("/metrics", 404),
        ("/healthz", 200),
        ("/readyz", 200),
    ] {
        let response = public
            .get(format!("{base_url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            expected,
            "{path} on the webhook listener"
        );
    }
    for path in ["/status", "/status.html", "/metrics", "/healthz", "/readyz"] {
        let response = reqwest::get(ops_url(&rig, path)).await.unwrap();
        assert_eq!(response.status(), 200, "{path} on the ops listener");
    }
    // The readiness detail (tenants and their problems) is on the ops listener only.
    let public_readiness = readiness(&public, &format!("{base_url}/readyz")).await;
    assert_eq!(public_readiness, serde_json::json!({"ready": true}));
    let private_readiness = readiness(&reqwest::Client::new(), &ops_url(&rig, "/readyz")).await;
    assert_eq!(private_readiness["ready"], true);
    assert!(
        private_readiness["problems"]
            .as_array()
            .is_some_and(|problems| problems.iter().any(|problem| problem["tenant"] == GROUP)),
        "the DLP.All problem, by tenant name, is in the private detail: {private_readiness}"
    );
    rig.shutdown().await;
}

/// The JSON body of `/readyz` at `url`.
async fn readiness(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn by_default_the_webhook_listener_serves_no_operations_detail() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.ops_public = false;
    options.tenant.roles = vec![ROLE_READ.to_string()];
    let rig = Rig::start(dir, options).await;
    let service = rig.service.as_ref().unwrap();
    assert!(service.ops_address.is_none());
    // A current problem exists (DLP.All refused), so a detailed answer would name it.
    let problems = service.problems.clone();
    wait_until("a problem on the board", DEADLINE, || {
        !problems.snapshot().is_empty()
    })
    .await;
    let client = common::client_trusting(&rig.certs.ca);
    for path in ["/status", "/status.html", "/metrics"] {
        let response = client
            .get(format!("{}{path}", service.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path} without ops.listen");
    }
    let healthz = client
        .get(format!("{}/healthz", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let response = client
        .get(format!("{}/readyz", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        serde_json::json!({"ready": true})
    );
    for secret_ish in [GROUP, TENANT, "problems", "ActivityFeed"] {
        assert!(!text.contains(secret_ish), "{secret_ish} in {text}");
    }
    rig.shutdown().await;
}

#[tokio::test]
async fn with_ops_public_status_is_served_on_the_webhook_listener() {
    let dir = tempfile::tempdir().unwrap();
    let options = RigOptions::synthetic(FaultScenario::default());
    assert!(options.ops_public, "the rig sets ops.public = true");
    let rig = Rig::start(dir, options).await;
    let service = rig.service.as_ref().unwrap();
    assert!(service.ops_address.is_none());
    let client = common::client_trusting(&rig.certs.ca);
    let status: Value = client
        .get(format!("{}/status", service.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["tenants"][0]["name"], GROUP);
    let page = client
        .get(format!("{}/status.html", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().contains("o365-connector status"));
    let metrics = client
        .get(format!("{}/metrics", service.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let readiness = readiness(&client, &format!("{}/readyz", service.base_url)).await;
    assert!(
        readiness["store"].is_object(),
        "detail on purpose: {readiness}"
    );
    rig.shutdown().await;
}

/// Debian's `chromium`, when installed (`.ci/run` installs it).
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
async fn run_chromium(chromium: &Path, profile: &Path, url: &str, extra: &[String]) -> String {
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("chromium finishes in time")
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed: {:?}",
        output.status
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let number = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (number(16), number(20))
}

#[tokio::test]
async fn status_page_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        eprintln!(
            "SKIPPED status_page_renders_in_headless_chromium: chromium is not installed \
             (apt-get install chromium; .ci/run does it)"
        );
        return;
    };
    let rig = delivered_rig().await;
    let url = ops_url(&rig, "/status.html");
    let profile = tempfile::tempdir().unwrap();
    let dom = run_chromium(&chromium, profile.path(), &url, &["--dump-dom".to_string()]).await;
    let published = rig.published().len().to_string();
    for expected in [
        "o365-connector status",
        GROUP,
        TENANT,
        "Audit.Exchange",
        "DLP.All",
        "connected",
    ] {
        assert!(
            dom.contains(expected),
            "the page does not show {expected:?}:\n{dom}"
        );
    }
    // DLP.All shows its current error with advice (whichever component reported it last,
    // each names the missing permission).
    let dlp_row = dom
        .split("<tr>")
        .find(|row| row.starts_with("<td>DLP.All</td>"))
        .unwrap_or_else(|| panic!("no DLP.All row:\n{dom}"));
    assert!(dlp_row.contains("<span class=\"bad\">"), "{dlp_row}");
    assert!(dlp_row.contains("<div class=\"advice\">"), "{dlp_row}");
    assert!(dlp_row.contains("ActivityFeed.ReadDlp"), "{dlp_row}");
    let exchange_row = dom
        .split("<tr>")
        .find(|row| row.starts_with("<td>Audit.Exchange</td>"))
        .unwrap_or_else(|| panic!("no Audit.Exchange row:\n{dom}"));
    assert!(
        exchange_row.contains(&format!("<td>{published}</td>")),
        "the Audit.Exchange row shows {published} records forwarded: {exchange_row}"
    );
    assert!(!dom.contains(SECRET));
    assert!(!dom.contains("<script"), "no script on the page");

    // Kept for people to look at, under the target directory wherever it is.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(kept).unwrap();
    let screenshot = kept.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    run_chromium(
        &chromium,
        profile.path(),
        &url,
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1600,700".to_string(),
        ],
    )
    .await;
    wait_until("the screenshot file", DEADLINE, || screenshot.is_file()).await;
    let png = std::fs::read(&screenshot).unwrap();
    assert_eq!(png_size(&png), (1600, 700));
    println!("status page screenshot: {}", screenshot.display());
    rig.shutdown().await;
}

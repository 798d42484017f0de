//! `o365-connector emulate api` as a command, driven like curl would drive it: the
//! readiness line, a token, a subscription, a published blob listed and fetched
//! byte-exact, then SIGTERM and exit 0. Also from a scenario file.

mod common;

use common::start_binary;
use serde_json::Value;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";

async fn token(http: &reqwest::Client, base: &str) -> String {
    let response: Value = http
        .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", "cli-secret"),
            ("scope", "https://manage.office.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"]
        .as_str()
        .expect("a token")
        .to_string()
}

#[tokio::test]
async fn emulate_api_command_serves_tokens_feed_and_blobs_then_exits_zero_on_sigterm() {
    let records = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/events/04-sharepoint.ndjson"
    );
    let running = start_binary(&[
        "emulate",
        "api",
        "--listen",
        "127.0.0.1:0",
        "--tenant-id",
        TENANT,
        "--client-id",
        CLIENT,
        "--client-secret",
        "cli-secret",
        "--records",
        records,
        "--records-per-blob",
        "4",
        "--page-size",
        "1",
    ])
    .await;
    let base = running
        .ready_line
        .strip_prefix("listening ")
        .expect("readiness line")
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let http = reqwest::Client::new();
    let bearer = token(&http, &base).await;
    let feed = format!("{base}/api/v1.0/{TENANT}/activity/feed");
    let started = http
        .post(format!(
            "{feed}/subscriptions/start?contentType=Audit.SharePoint"
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 200);
    let published: Value = http
        .post(format!("{base}/_emulator/control"))
        .json(&serde_json::json!({"publish": {"tenant": TENANT, "content_type": "Audit.SharePoint", "blobs": 2}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(published.to_string().contains("contentUri"), "{published}");
    let listing = http
        .get(format!(
            "{feed}/subscriptions/content?contentType=Audit.SharePoint"
        ))
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert!(
        listing.headers().contains_key("NextPageUri"),
        "page size 1 pages two blobs"
    );
    let items: Vec<Value> = listing.json().await.unwrap();
    let content_uri = items[0]["contentUri"].as_str().unwrap();
    let blob = http
        .get(content_uri)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    let blob = blob.bytes().await.unwrap();
    let text = std::fs::read_to_string(records).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty())
        .collect();
    let expected = format!("[{}]", lines[..4].join(","));
    assert_eq!(String::from_utf8(blob.to_vec()).unwrap(), expected);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn emulate_api_command_reads_tenants_from_a_scenario_file() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("scenario.toml");
    std::fs::write(
        &scenario,
        format!(
            r#"page_size = 5
[[tenants]]
tenant_id = "{TENANT}"
domain = "contoso.onmicrosoft.com"
client_id = "{CLIENT}"
client_secret = "cli-secret"
"#
        ),
    )
    .unwrap();
    let running = start_binary(&["emulate", "api", "--scenario", scenario.to_str().unwrap()]).await;
    let base = running
        .ready_line
        .strip_prefix("listening ")
        .unwrap()
        .to_string();
    let http = reqwest::Client::new();
    let discovery: Value = http
        .get(format!(
            "{base}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(discovery["issuer"].as_str().unwrap().contains(TENANT));
    token(&http, &base).await;
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn emulate_api_command_without_any_tenant_fails_with_a_clear_message() {
    let output = tokio::process::Command::new(common::binary())
        .args(["emulate", "api"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tenant-id"), "{stderr}");
}

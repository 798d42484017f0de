//! The Management API emulator as the scenarios set it up: the fixture records, a tenant,
//! the pollers' settings, publication and a bearer token.

use std::path::{Path, PathBuf};

use super::*;
use o365_connector::clock::Clock;
use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, Scenario, TenantScenario};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};

pub fn records_file(dir: &Path) -> PathBuf {
    let events = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut files: Vec<_> = std::fs::read_dir(events)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "ndjson"))
        .collect();
    files.sort();
    let mut lines = String::new();
    for file in files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            // Valid records only: the scenarios measure throughput, not dead-lettering.
            if serde_json::from_str::<serde_json::Value>(line).is_ok_and(|value| value.is_object())
            {
                lines.push_str(line);
                lines.push('\n');
            }
        }
    }
    let path = dir.join("records.ndjson");
    std::fs::write(&path, lines).unwrap();
    path
}

pub fn tenant_scenario(tenant_id: &str, records: &Path, per_blob: usize) -> TenantScenario {
    let mut tenant = TenantScenario::with_secret(tenant_id, CLIENT, SECRET);
    tenant.publication.records = Some(records.to_path_buf());
    tenant.publication.records_per_blob = per_blob;
    tenant.publication.content_types = vec!["Audit.General".into()];
    tenant.faults = FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    };
    tenant
}

pub async fn start_api(scenario: Scenario) -> ApiEmulator {
    ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario,
        tls: None,
        webhook_ca: None,
        clock: Clock::system(),
    })
    .await
    .unwrap()
}

/// A poller that lists everything published up to now, every `interval` seconds.
pub fn eager_poller(interval: u64) -> String {
    format!("poll_interval_secs = {interval}\nlag_secs = 0\ninitial_lookback_secs = 3600\n")
}

/// A poller that lists nothing for a day: the webhook is the only intake.
pub const IDLE_POLLER: &str = "poll_interval_secs = 86400\nlag_secs = 86400\ninitial_lookback_secs = 3600\ntail_interval_secs = 86400\n";

/// Starts the tenant's Audit.General subscription (the emulator keeps no content without
/// one) and publishes `blobs` blobs now.
pub async fn publish(api: &ApiEmulator, blobs: usize) -> Vec<ContentEntry> {
    let http = reqwest::Client::new();
    let token = bearer(&http, api.base_url()).await;
    let response = http
        .post(format!(
            "{}/api/v1.0/{TENANT}/activity/feed/subscriptions/start?contentType=Audit.General",
            api.base_url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "the subscription starts");
    let entries = publish::publish_now(api.state(), TENANT, "Audit.General", blobs).await;
    assert_eq!(entries.len(), blobs, "every blob published");
    entries
}

pub async fn bearer(http: &reqwest::Client, base: &str) -> String {
    let response: serde_json::Value = http
        .post(format!("{base}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://manage.office.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    response["access_token"].as_str().unwrap().to_string()
}

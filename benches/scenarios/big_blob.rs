//! `big_blob`: one blob of many records, fetched and split within bounded memory.

use std::path::Path;

use o365_connector::emulator::api::scenario::Scenario;

use crate::support::*;

pub async fn big_blob(dir: &Path) {
    let target_bytes = env_number("BIG_BLOB_MIB", 256) as u64 * 1024 * 1024;
    let records = records_file(dir);
    let text = std::fs::read_to_string(&records).unwrap();
    let average = text.len() as u64 / text.lines().count() as u64;
    let per_blob = (target_bytes / average) as usize;
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    let entries = publish(&api, 1).await;
    let http = reqwest::Client::new();
    let token = bearer(&http, api.base_url()).await;
    let size = http
        .get(&entries[0].content_uri)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let (connector, elapsed) =
        drain_backlog(dir, &socket, api.base_url(), &engine, per_blob as u64).await;
    let scenario = "big_blob";
    figure(scenario, "blob_size", size as f64 / MIB, "MiB", None, None);
    figure(scenario, "records", per_blob as f64, "records", None, None);
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        Some((64.0, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    connector.stop();
    api.shutdown().await;
}

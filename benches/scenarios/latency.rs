//! `latency`: from publication to the engine's ack, at `LATENCY_RATE` blobs a second.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use o365_connector::emulator::api::scenario::Scenario;
use o365_connector::forward::log::log_id;
use o365_connector::webhook::WebhookSecrets;
use serde_json::json;

use crate::support::*;

pub async fn latency(dir: &Path) {
    let rate = env_number("LATENCY_RATE", 200);
    let seconds = env_number("LATENCY_SECS", 10);
    let per_blob = 100;
    let blobs = rate * seconds;
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    // Published before the connector starts; its poller lists nothing (lag of a day), so each
    // blob enters only through the notification below.
    let entries = publish(&api, blobs).await;
    let context = log_context();
    let mut blob_of_log: HashMap<String, usize> = HashMap::new();
    let index_of_uri: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| (entry.content_uri.as_str(), index))
        .collect();
    for record in api.state().publisher.published() {
        let Some(&blob) = index_of_uri.get(record.content_uri.as_str()) else {
            continue;
        };
        let record_id = record.record_id.unwrap_or_else(|| record.index.to_string());
        blob_of_log.insert(log_id(&context, &record.content_uri, &record_id), blob);
    }
    *engine.ack_times.lock().unwrap() = Some(HashMap::new());
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 1_000_000,
        tenants: &[TENANT.to_string()],
        webhook: true,
        poller: IDLE_POLLER,
        store: ("", ""),
    })
    .await;
    let auth_id = WebhookSecrets::new(WEBHOOK_SECRET.as_bytes().to_vec(), None).auth_id(TENANT);
    let url = format!("{}/hook/{TENANT}", connector.listen);
    let client = reqwest::Client::new();
    let mut sent_at = vec![Instant::now(); blobs];
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut requests = tokio::task::JoinSet::new();
    for (index, entry) in entries.iter().enumerate() {
        ticker.tick().await;
        let mut item = serde_json::to_value(entry).unwrap();
        item["tenantId"] = json!(TENANT);
        item["clientId"] = json!(CLIENT);
        let body = json!([item]).to_string();
        sent_at[index] = Instant::now();
        let request = client
            .post(&url)
            .header("Content-Type", "application/json; utf-8")
            .header("Webhook-AuthID", &auth_id)
            .body(body);
        requests.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
    }
    while let Some(answer) = requests.join_next().await {
        assert_eq!(answer.unwrap().unwrap(), 200);
    }
    let total = (blobs * per_blob) as u64;
    wait_until("every record acked", Duration::from_secs(120), || {
        engine.acked.load(Ordering::Relaxed) >= total
    })
    .await;
    let times = engine.ack_times.lock().unwrap().take().unwrap();
    let mut last_ack: Vec<Option<Instant>> = vec![None; blobs];
    for (id, at) in &times {
        if let Some(&blob) = blob_of_log.get(id) {
            last_ack[blob] = Some(last_ack[blob].map_or(*at, |seen: Instant| seen.max(*at)));
        }
    }
    let mut latencies: Vec<Duration> = last_ack
        .iter()
        .zip(&sent_at)
        .filter_map(|(acked, sent)| acked.map(|acked| acked.duration_since(*sent)))
        .collect();
    assert_eq!(latencies.len(), blobs, "every blob's records acked");
    figure(
        "latency",
        "p50",
        percentile_ms(&mut latencies, 0.50),
        "ms",
        None,
        None,
    );
    figure(
        "latency",
        "p99",
        percentile_ms(&mut latencies, 0.99),
        "ms",
        None,
        Some((25.0, "le")),
    );
    figure(
        "latency",
        "notifications_per_s",
        rate as f64,
        "notifications/s",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

//! `webhook_ingest`: notifications answered 200 after the durable enqueue, against the
//! disk's fsync rate.

use std::path::Path;
use std::time::{Duration, Instant};

use o365_connector::emulator::api::scenario::Scenario;
use o365_connector::webhook::WebhookSecrets;

use crate::support::*;

/// 4 KiB writes each followed by fdatasync, for one second.
fn fsyncs_per_second(dir: &Path) -> f64 {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("fsync-probe")).unwrap();
    let block = [0u8; 4096];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

pub async fn webhook_ingest(dir: &Path) {
    let posts = env_number("WEBHOOK_BENCH_POSTS", 20_000);
    let connections = 64;
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, 1));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let _engine = start_engine(&socket).await;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = format!("http://{}/hook/{TENANT}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook/{tenant}", axum::routing::post(|| async { "" }));
    let bare_server = tokio::spawn(async move { axum::serve(listener, app).await });
    let limit = load(&bare, "", api.base_url(), posts, connections).await;
    bare_server.abort();

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
    let run = load(&url, &auth_id, api.base_url(), posts, connections).await;
    let scenario = "webhook_ingest";
    let limit_rate = Some(limit.posts_per_s);
    figure(
        scenario,
        "items_per_s",
        run.posts_per_s,
        "items/s",
        limit_rate,
        Some((0.5, "ge")),
    );
    figure(
        scenario,
        "posts_per_s",
        run.posts_per_s,
        "posts/s",
        limit_rate,
        None,
    );
    figure(
        scenario,
        "latency_p50",
        run.p50_ms,
        "ms",
        Some(limit.p50_ms),
        None,
    );
    figure(
        scenario,
        "latency_p99",
        run.p99_ms,
        "ms",
        Some(limit.p99_ms),
        None,
    );
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        None,
    );
    connector.stop();
    let fsyncs = fsyncs_per_second(dir);
    figure(
        scenario,
        "disk_fsyncs_per_s",
        fsyncs,
        "fsyncs/s",
        None,
        None,
    );
    api.shutdown().await;
}

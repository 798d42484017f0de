//! `webhook_ingest`: notifications answered 200 after the durable enqueue, on each store,
//! in one run: the limit is a bare axum handler answering 200 under the same generator
//! (64 connections, single-item notifications); the embedded store is measured against it
//! (target ≥ 0.5) and NATS JetStream (Debian's nats-server, its store on the measured disk)
//! against the embedded store (target ≥ 0.8). Also the connector's CPU per item and the
//! disk's fsyncs per second, which bound the embedded store's group commits.
//! `BENCH_BASELINE_BIN=/path/to/other/o365-connector` loads that build too, on both stores,
//! in the same run, and prints this build's rates against it (`*_vs_baseline`).

use std::path::Path;
use std::time::{Duration, Instant};

use o365_connector::emulator::api::scenario::Scenario;

use crate::support::*;

/// Concurrent connections of the load generator.
const CONNECTIONS: usize = 64;

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

/// The limit: a bare handler answering 200 under the same load.
async fn bare_limit(api_base: &str, posts: usize) -> LoadRun {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare = format!("http://{}/hook/{TENANT}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/hook/{tenant}", axum::routing::post(|| async { "" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let limit = load(&bare, "", api_base, posts, CONNECTIONS).await;
    server.abort();
    limit
}

pub async fn webhook_ingest(dir: &Path) {
    let posts = env_number("WEBHOOK_BENCH_POSTS", 20_000);
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, 1));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let _engine = start_engine(&socket).await;
    let nats = Nats::start(dir).await;
    let nats_store = format!(
        "[store.nats]\nurls = [\"{}\"]\nprefix = \"ingest\"\nreplica_id = \"ingest\"\n",
        nats.url
    );

    let limit = bare_limit(api.base_url(), posts).await;
    let embedded = ingest(
        &dir.join("embedded"),
        api.base_url(),
        &socket,
        posts,
        CONNECTIONS,
        ("", ""),
        None,
    )
    .await;
    let on_nats = ingest(
        &dir.join("nats"),
        api.base_url(),
        &socket,
        posts,
        CONNECTIONS,
        ("backend = \"nats\"", &nats_store),
        None,
    )
    .await;

    let scenario = "webhook_ingest";
    let embedded_rate = embedded.load.posts_per_s;
    figure(
        scenario,
        "items_per_s",
        embedded_rate,
        "items/s",
        Some(limit.posts_per_s),
        Some((0.5, "ge")),
    );
    figure(
        scenario,
        "nats_items_per_s",
        on_nats.load.posts_per_s,
        "items/s",
        Some(embedded_rate),
        Some((0.8, "ge")),
    );
    figure(
        scenario,
        "bare_items_per_s",
        limit.posts_per_s,
        "items/s",
        None,
        None,
    );
    for (store, run) in [("embedded", &embedded), ("nats", &on_nats)] {
        figure(
            scenario,
            &format!("{store}_latency_p50"),
            run.load.p50_ms,
            "ms",
            Some(limit.p50_ms),
            None,
        );
        figure(
            scenario,
            &format!("{store}_latency_p99"),
            run.load.p99_ms,
            "ms",
            Some(limit.p99_ms),
            None,
        );
        figure(
            scenario,
            &format!("{store}_cpu_per_item"),
            cpu_micros_per_record(run.cpu_seconds, posts as u64),
            "µs",
            None,
            None,
        );
        figure(
            scenario,
            &format!("{store}_peak_rss"),
            run.peak_rss / MIB,
            "MiB",
            None,
            None,
        );
    }
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE_BIN") {
        let baseline = std::path::PathBuf::from(baseline);
        for (store, keys, run) in [
            ("embedded", ("", ""), &embedded),
            (
                "nats",
                ("backend = \"nats\"", nats_store.as_str()),
                &on_nats,
            ),
        ] {
            // A stream prefix of its own on NATS, so none of its items is a duplicate.
            let keys_owned = keys.1.replace("\"ingest\"", "\"baseline\"");
            let before = ingest(
                &dir.join(format!("baseline-{store}")),
                api.base_url(),
                &socket,
                posts,
                CONNECTIONS,
                (keys.0, &keys_owned),
                Some(&baseline),
            )
            .await;
            figure(
                scenario,
                &format!("{store}_items_per_s_vs_baseline"),
                run.load.posts_per_s,
                "items/s",
                Some(before.load.posts_per_s),
                None,
            );
            figure(
                scenario,
                &format!("{store}_cpu_per_item_vs_baseline"),
                cpu_micros_per_record(run.cpu_seconds, posts as u64),
                "µs",
                Some(cpu_micros_per_record(before.cpu_seconds, posts as u64)),
                None,
            );
        }
    }
    drop(nats);
    figure(
        scenario,
        "disk_fsyncs_per_s",
        fsyncs_per_second(dir),
        "fsyncs/s",
        None,
        None,
    );
    api.shutdown().await;
}

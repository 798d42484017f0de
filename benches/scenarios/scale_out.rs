//! `scale_out`: the drain on NATS JetStream with one and with three replicas, against an
//! embedded-store instance, and the webhook ingest on each store.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use o365_connector::emulator::api::ApiEmulator;

use crate::support::*;

pub async fn scale_out(dir: &Path) {
    let blobs = env_number("SCALE_BLOBS", 2000);
    let per_blob = env_number("DRAIN_RECORDS", 100);
    let (api, socket, engine, _) = backlog(dir, blobs, per_blob).await;
    let nats = Nats::start(dir).await;
    let total = (blobs * per_blob) as u64;
    // The same blobs, drained by an embedded-store instance, then by one and by three
    // replicas on NATS (each with a fresh stream, so nothing is a duplicate).
    let embedded =
        connector_drain(&dir.join("embedded"), &api, &engine, &socket, total, None).await;
    let one = replicas_drain(dir, 1, &api, &engine, &socket, total, &nats.url).await;
    let three = replicas_drain(dir, 3, &api, &engine, &socket, total, &nats.url).await;
    // From the process start: a replica works before its /readyz answers (NATS readiness
    // waits for the first store probe), so the wall time includes start-up for every run.
    let rate = |run: &DrainRun| total as f64 / (run.startup + run.elapsed);
    figure(
        "scale_out",
        "embedded_records_per_s",
        rate(&embedded),
        "records/s",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_1_replica_records_per_s",
        rate(&one),
        "records/s",
        Some(rate(&embedded)),
        None,
    );
    figure(
        "scale_out",
        "nats_3_replicas_records_per_s",
        rate(&three),
        "records/s",
        Some(rate(&one)),
        None,
    );
    // The push path: notifications answered 200 after the enqueue, one instance on each
    // store, in this run.
    let posts = env_number("WEBHOOK_BENCH_POSTS", 20_000);
    let nats_store = format!(
        "[store.nats]\nurls = [\"{}\"]\nprefix = \"ingest\"\nreplica_id = \"ingest\"\n",
        nats.url
    );
    let embedded_ingest = ingest(
        &dir.join("ingest-embedded"),
        api.base_url(),
        &socket,
        posts,
        64,
        ("", ""),
        None,
    )
    .await
    .load;
    let nats_ingest = ingest(
        &dir.join("ingest-nats"),
        api.base_url(),
        &socket,
        posts,
        64,
        ("backend = \"nats\"", &nats_store),
        None,
    )
    .await
    .load;
    figure(
        "scale_out",
        "embedded_webhook_items_per_s",
        embedded_ingest.posts_per_s,
        "items/s",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_webhook_items_per_s",
        nats_ingest.posts_per_s,
        "items/s",
        Some(embedded_ingest.posts_per_s),
        None,
    );
    figure(
        "scale_out",
        "embedded_webhook_p99",
        embedded_ingest.p99_ms,
        "ms",
        None,
        None,
    );
    figure(
        "scale_out",
        "nats_webhook_p99",
        nats_ingest.p99_ms,
        "ms",
        None,
        None,
    );
    for (name, run) in [
        ("embedded", &embedded),
        ("nats_1_replica", &one),
        ("nats_3_replicas", &three),
    ] {
        figure(
            "scale_out",
            &format!("{name}_cpu_s"),
            run.cpu,
            "s",
            None,
            None,
        );
        figure(
            "scale_out",
            &format!("{name}_peak_rss"),
            run.peak_rss / MIB,
            "MiB",
            None,
            None,
        );
    }
    api.shutdown().await;
}

/// Starts `count` replicas on NATS (stream prefix of their own), waits until the engine
/// acked `total` more Logs, stops them. `startup` is until the first replica was ready,
/// `elapsed` from then on; CPU is the replicas' sum, RSS the largest.
async fn replicas_drain(
    dir: &Path,
    count: usize,
    api: &ApiEmulator,
    engine: &EngineState,
    socket: &Path,
    total: u64,
    nats_url: &str,
) -> DrainRun {
    let before = engine.acked.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut connectors = Vec::new();
    let mut first_ready = None;
    for index in 0..count {
        let replica_dir = dir.join(format!("nats-{count}-{index}"));
        std::fs::create_dir_all(&replica_dir).unwrap();
        let nats = format!(
            "[store.nats]\nurls = [\"{nats_url}\"]\nprefix = \"bench{count}\"\nreplica_id = \"r{index}\"\n"
        );
        let connector = Connector::start(ConnectorSetup {
            dir: &replica_dir,
            socket,
            api_base: api.base_url(),
            requests_per_minute: 1_000_000,
            tenants: &[TENANT.to_string()],
            webhook: false,
            poller: &eager_poller(1),
            store: ("backend = \"nats\"", &nats),
        })
        .await;
        first_ready.get_or_insert_with(Instant::now);
        connectors.push(connector);
    }
    let first_ready = first_ready.expect("at least one replica");
    wait_until("the drain", Duration::from_secs(600), || {
        engine.acked.load(Ordering::Relaxed) >= before + total
    })
    .await;
    let run = DrainRun {
        startup: (first_ready - started).as_secs_f64(),
        elapsed: first_ready.elapsed().as_secs_f64(),
        cpu: connectors.iter().map(Connector::cpu_seconds).sum(),
        peak_rss: connectors
            .iter()
            .map(Connector::peak_rss)
            .fold(0.0, f64::max),
    };
    for connector in connectors {
        connector.stop();
    }
    run
}

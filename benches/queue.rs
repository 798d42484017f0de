//! Enqueue throughput of the embedded queue with durable (fsynced) commits, and the fsync rate
//! of the disk it runs on, so the two can be compared: with group commit, concurrent producers
//! get far more items per second than the disk has fsyncs.
//!
//! Run: `cargo bench --bench queue` (release). The store goes in `QUEUE_BENCH_DIR` when set,
//! else in a temporary directory under `target/` (the disk the project is built on); the
//! duration of each figure is `QUEUE_BENCH_SECS` (default 3). Prints one JSON line per figure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use o365_connector::clock::Clock;
use o365_connector::queue::{ContentQueue, ContentRef, EmbeddedQueue, Source};

fn main() {
    let seconds = std::env::var("QUEUE_BENCH_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3u64);
    let duration = Duration::from_secs(seconds);
    let base = std::env::var_os("QUEUE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    std::fs::create_dir_all(&base).expect("bench directory");
    let dir = tempfile::tempdir_in(&base).expect("temp dir");

    let fsyncs = fsyncs_per_second(dir.path(), duration);
    print_figure("disk_fsync_per_second", fsyncs, "fsync/s", &base, 1, 1);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for (producers, batch) in [(1, 1), (64, 1), (1, 100)] {
        let store = dir.path().join(format!("store-{producers}-{batch}"));
        let rate = runtime.block_on(enqueue_rate(&store, producers, batch, duration));
        print_figure(
            "enqueue_items_per_second",
            rate,
            "items/s",
            &base,
            producers,
            batch,
        );
    }
}

fn print_figure(
    figure: &str,
    value: f64,
    unit: &str,
    dir: &Path,
    producers: usize,
    refs_per_call: usize,
) {
    let line = serde_json::json!({
        "bench": "queue",
        "figure": figure,
        "value": value.round(),
        "unit": unit,
        "producers": producers,
        "refs_per_call": refs_per_call,
        "dir": dir.display().to_string(),
    });
    println!("{line}");
}

/// Small writes each followed by `fdatasync`: the ceiling of un-batched durable commits.
fn fsyncs_per_second(dir: &Path, duration: Duration) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync-probe")).expect("probe file");
    let page = [0u8; 4096];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        file.write_all(&page).expect("write");
        file.sync_data().expect("fsync");
        count += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

async fn enqueue_rate(
    store: &Path,
    producers: usize,
    refs_per_call: usize,
    duration: Duration,
) -> f64 {
    let queue = Arc::new(
        EmbeddedQueue::open(store, Clock::system())
            .await
            .expect("open store"),
    );
    let stored = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for producer in 0..producers {
        let queue = Arc::clone(&queue);
        let stored = Arc::clone(&stored);
        tasks.push(tokio::spawn(async move {
            let mut next = 0u64;
            while start.elapsed() < duration {
                let refs: Vec<ContentRef> = (0..refs_per_call)
                    .map(|_| {
                        next += 1;
                        reference(producer, next)
                    })
                    .collect();
                let outcomes = queue.enqueue(refs).await.expect("enqueue");
                stored.fetch_add(outcomes.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("producer");
    }
    let rate = stored.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let stats = queue.stats().await.expect("stats");
    eprintln!(
        "producers={producers} refs_per_call={refs_per_call}: {} commits for {} requests",
        stats.commits, stats.write_requests
    );
    queue.close().await.expect("close");
    rate
}

fn reference(producer: usize, index: u64) -> ContentRef {
    let tenant_id = format!("bench-tenant-{}", producer % 16);
    let content_id = format!(
        "20260301120000{producer:04}{index:012}$20260301120000$audit_exchange$Audit_Exchange$na0034"
    );
    let now = Utc::now();
    ContentRef {
        content_uri: format!(
            "https://manage.office.com/api/v1.0/{tenant_id}/activity/feed/audit/{content_id}"
        ),
        tenant_id,
        content_type: "Audit.Exchange".to_owned(),
        content_id,
        content_created: now,
        content_expiration: now + TimeDelta::days(7),
        source: Source::Webhook,
    }
}

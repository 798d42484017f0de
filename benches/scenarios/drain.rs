//! `drain`: a backlog of `DRAIN_BLOBS` blobs of `DRAIN_RECORDS` records drained by the
//! connector, against two limits measured in the same run:
//!
//! - **the limit** ([`honest_drain`]): the job's necessary work and nothing else — the same
//!   blobs fetched with the same concurrency, each body streamed through the connector's
//!   splitter, Log building (id, timestamp) and protobuf encoding, pushed to the engine on
//!   one stream and acknowledged, fetch and push overlapping, one timed span; no listing,
//!   queue, lease, progress, metrics or dead-letter bookkeeping;
//! - **the old limit** ([`bare_drain`], `limit_old_records_per_s`): every blob fetched, then
//!   the Logs built outside the timed span, then pushed (kept so runs stay comparable).
//!
//! The connector's CPU per record is its process CPU time (`/proc/<pid>/stat`) over the
//! records the engine acked; the limit's (`cpu_us_per_record_vs_limit`) is the CPU time of
//! the threads of the runtime it runs on alone (the emulators run on the bench's own).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use o365_connector::emulator::api::feed::ContentEntry;
use o365_connector::forward::DEFAULT_MAX_MESSAGE_BYTES;
use o365_connector::forward::build_log;
use o365_connector::forward::log::{LogEncoder, max_raw_bytes};
use o365_connector::forward::wire::open_input;
use o365_connector::proto::{EngineClient, unix_channel};
use o365_connector::worker::splitter::{SplitEvent, SplitStream, Splitter};
use tokio_stream::wrappers::ReceiverStream;

use crate::support::*;

/// Encoded Logs on their way to the one stream, at most: the connector's default window.
const HONEST_WINDOW: usize = o365_connector::forward::DEFAULT_MAX_IN_FLIGHT;

/// The limit: `bench_workers()` tasks each fetch the next blob and stream its body through
/// the splitter, building and encoding each record's Log as the connector does, onto one
/// `Engine/Input` stream; the span ends at the last ack. Returns seconds.
async fn honest_drain(base: &str, entries: &[ContentEntry], socket: &Path, total: u64) -> f64 {
    let http = reqwest::Client::new();
    let token = bearer(&http, base).await;
    let context = Arc::new(log_context());
    let max_record_bytes = max_raw_bytes(&context, DEFAULT_MAX_MESSAGE_BYTES);
    let mut grpc = tonic::client::Grpc::new(unix_channel(socket));
    let started = Instant::now();
    let (logs, outbound) = tokio::sync::mpsc::channel(HONEST_WINDOW);
    let uris: Arc<Vec<String>> = Arc::new(entries.iter().map(|e| e.content_uri.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let fetchers: Vec<_> = (0..bench_workers())
        .map(|_| {
            let (http, token, uris, next, context, logs) = (
                http.clone(),
                token.clone(),
                uris.clone(),
                next.clone(),
                context.clone(),
                logs.clone(),
            );
            tokio::spawn(async move {
                while let Some(uri) = uris.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let response = http.get(uri).bearer_auth(&token).send().await.unwrap();
                    let collected_at = chrono::Utc::now();
                    // One buffer per blob, as a worker encodes a batch (its Logs are about
                    // the blob's size).
                    let room = response.content_length().unwrap_or(0) as usize;
                    let mut encoder = LogEncoder::new(&context, uri, collected_at, room);
                    let splitter = Splitter::new(max_record_bytes);
                    let mut split = SplitStream::new(response.bytes_stream(), splitter);
                    while let Some(event) = split.next_event().await {
                        match event.unwrap() {
                            SplitEvent::Record {
                                index,
                                bytes,
                                fields,
                                ..
                            } => {
                                let log = encoder.push(&bytes, fields.as_ref(), index);
                                logs.send(log.bytes).await.unwrap();
                            }
                            SplitEvent::Complete { .. } => break,
                            other => panic!("the bench's blobs are well formed: {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    drop(logs);
    let mut acks = open_input(&mut grpc, ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..total {
        acks.message().await.unwrap().expect("an ack per log");
    }
    let elapsed = started.elapsed().as_secs_f64();
    for fetcher in fetchers {
        fetcher.await.unwrap();
    }
    elapsed
}

/// The old limit: the same blobs fetched by bare reqwest (as many at a time as the
/// connector has workers), then their Logs built outside the timed span, then pushed by a
/// bare tonic client on one stream. Returns (seconds, bytes).
async fn bare_drain(base: &str, entries: &[ContentEntry], socket: &Path) -> (f64, u64) {
    let http = reqwest::Client::new();
    let token = bearer(&http, base).await;
    let started = Instant::now();
    let uris: Arc<Vec<String>> = Arc::new(entries.iter().map(|e| e.content_uri.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..bench_workers())
        .map(|_| {
            let (http, token, uris, next) =
                (http.clone(), token.clone(), uris.clone(), next.clone());
            tokio::spawn(async move {
                let mut bodies = Vec::new();
                while let Some(uri) = uris.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let response = http.get(uri).bearer_auth(&token).send().await.unwrap();
                    bodies.push((uri.clone(), response.bytes().await.unwrap()));
                }
                bodies
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.extend(task.await.unwrap());
    }
    let fetch = started.elapsed();
    let bytes = bodies.iter().map(|(_, body)| body.len() as u64).sum();
    let context = log_context();
    let mut logs = Vec::new();
    for (uri, body) in &bodies {
        let records: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body).unwrap();
        for (index, record) in records.iter().enumerate() {
            let bytes = record.get().as_bytes();
            logs.push(build_log(
                &context,
                bytes,
                index as u64,
                uri,
                chrono::Utc::now(),
            ));
        }
    }
    let count = logs.len();
    let push_started = Instant::now();
    let mut client = EngineClient::new(unix_channel(socket));
    let mut acks = client
        .input(tokio_stream::iter(logs))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..count {
        acks.message().await.unwrap().expect("an ack per log");
    }
    ((fetch + push_started.elapsed()).as_secs_f64(), bytes)
}

pub async fn drain(dir: &Path) {
    let blobs = env_number("DRAIN_BLOBS", 2000);
    let per_blob = env_number("DRAIN_RECORDS", 100);
    let (api, socket, engine, entries) = backlog(dir, blobs, per_blob).await;
    let total = (blobs * per_blob) as u64;
    let (limit_secs, limit_cpu) = {
        let (base, entries, socket) = (api.base_url().to_owned(), entries.clone(), socket.clone());
        on_own_runtime(async move { honest_drain(&base, &entries, &socket, total).await }).await
    };
    let (old_limit_secs, bytes) = bare_drain(api.base_url(), &entries, &socket).await;
    let run = connector_drain(&dir.join("connector"), &api, &engine, &socket, total, None).await;
    let megabytes = bytes as f64 / 1e6;
    let limit_rate = total as f64 / limit_secs;
    let rate = total as f64 / run.elapsed;
    figure(
        "drain",
        "records_per_s",
        rate,
        "records/s",
        Some(limit_rate),
        Some((0.7, "ge")),
    );
    figure(
        "drain",
        "records_per_s_vs_old_limit",
        rate,
        "records/s",
        Some(total as f64 / old_limit_secs),
        None,
    );
    figure(
        "drain",
        "mb_per_s",
        megabytes / run.elapsed,
        "MB/s",
        Some(megabytes / limit_secs),
        None,
    );
    let cpu_per_record = cpu_micros_per_record(run.cpu, total);
    figure(
        "drain",
        "cpu_us_per_record",
        cpu_per_record,
        "µs",
        None,
        Some((1.5, "le")),
    );
    // The limit's own CPU per record: what the necessary work costs, for scale.
    figure(
        "drain",
        "cpu_us_per_record_vs_limit",
        cpu_per_record,
        "µs",
        Some(cpu_micros_per_record(limit_cpu, total)),
        None,
    );
    figure("drain", "peak_rss", run.peak_rss / MIB, "MiB", None, None);
    figure("drain", "startup_s", run.startup, "s", None, None);
    figure("drain", "connector_cpu_s", run.cpu, "s", None, None);
    figure("drain", "elapsed_s", run.elapsed, "s", None, None);
    // Another build of the connector (say, the commit before a change) drains the same blobs
    // in this run, so a before/after comparison is a ratio that holds on a noisy machine.
    if let Some(baseline) = std::env::var_os("BENCH_BASELINE_BIN") {
        let baseline = PathBuf::from(baseline);
        let before = connector_drain(
            &dir.join("baseline"),
            &api,
            &engine,
            &socket,
            total,
            Some(&baseline),
        )
        .await;
        let before_rate = total as f64 / before.elapsed;
        figure(
            "drain",
            "baseline_records_per_s",
            before_rate,
            "records/s",
            Some(limit_rate),
            None,
        );
        figure(
            "drain",
            "baseline_connector_cpu_s",
            before.cpu,
            "s",
            None,
            None,
        );
        figure(
            "drain",
            "baseline_cpu_us_per_record",
            cpu_micros_per_record(before.cpu, total),
            "µs",
            None,
            None,
        );
        figure(
            "drain",
            "speedup_over_baseline",
            rate / before_rate,
            "ratio",
            None,
            None,
        );
    }
    api.shutdown().await;
}

/// Runs `work` on a runtime of its own (as many workers as the connector's, one per core),
/// in a thread of its own: its output, and the CPU seconds its threads spent (the limit's
/// cost apart from the emulators', which share this process).
async fn on_own_runtime<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> (T, f64) {
    tokio::task::spawn_blocking(move || {
        let threads = Arc::new(Mutex::new(Vec::new()));
        let started = threads.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // Named, so a profile of the bench tells the limit's threads apart.
            .thread_name("drain-limit")
            .on_thread_start(move || started.lock().unwrap().push(this_thread_stat()))
            .build()
            .unwrap();
        let caller = this_thread_stat();
        let caller_before = stat_cpu_seconds(&caller);
        let output = runtime.block_on(work);
        // A blocking-pool thread that already exited has no stat file left; its CPU is
        // lost (the limit runs none but the resolver's, briefly).
        let threads_cpu: f64 = threads
            .lock()
            .unwrap()
            .iter()
            .filter(|stat| Path::new(stat.as_str()).exists())
            .map(|stat| stat_cpu_seconds(stat))
            .sum();
        let cpu = threads_cpu + stat_cpu_seconds(&caller) - caller_before;
        drop(runtime);
        (output, cpu)
    })
    .await
    .unwrap()
}

/// This thread's `stat` file (`/proc/<pid>/task/<tid>/stat`).
fn this_thread_stat() -> String {
    let task = std::fs::read_link("/proc/thread-self").unwrap();
    format!("/proc/{}/stat", task.display())
}

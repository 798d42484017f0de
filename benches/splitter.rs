//! Throughput of the streaming blob splitter on a ~50 MB blob of real audit records (the
//! valid fixtures of `tests/fixtures/events`, repeated), fed in 64 KiB chunks as an HTTP body
//! arrives, against the limit: serde_json splitting the whole blob at once into
//! `Vec<&RawValue>` (no streaming, no per-record validation beyond its own parse). Also the
//! rate at which an oversized element streams by (scanned and hashed, never buffered): the
//! same blob wrapped as the one element of an outer array.
//!
//! Run: `cargo bench --bench splitter` (release). `SPLITTER_BENCH_MB` sets the blob size
//! (default 50), `SPLITTER_BENCH_ROUNDS` the rounds (default 5; the best round is reported).
//! Prints one JSON line per figure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use o365_connector::worker::MAX_RECORD_BYTES;
use o365_connector::worker::splitter::{SplitEvent, Splitter, validate_record};
use serde_json::value::RawValue;

const CHUNK_BYTES: usize = 64 * 1024;
const SMALL_CHUNK_BYTES: usize = 256;

fn main() {
    let target_mb = environment_number("SPLITTER_BENCH_MB", 50);
    let rounds = environment_number("SPLITTER_BENCH_ROUNDS", 5).max(1);
    let (blob, record_count) = build_blob(target_mb as usize * 1_000_000);
    let megabytes = blob.len() as f64 / 1e6;

    let ours = best_of(rounds, || {
        let records = split_in_chunks(&blob, CHUNK_BYTES);
        assert_eq!(records, record_count, "splitter record count");
    });
    // Chunks smaller than most records: nearly every record spans two chunks and is found
    // by the byte scanner instead of serde_json's in-place parse.
    let small_chunks = best_of(rounds, || {
        let records = split_in_chunks(&blob, SMALL_CHUNK_BYTES);
        assert_eq!(records, record_count, "splitter record count");
    });
    let serde = best_of(rounds, || {
        let records: Vec<&RawValue> = serde_json::from_slice(&blob).expect("blob is valid JSON");
        assert_eq!(
            records.len() as u64,
            record_count,
            "serde_json record count"
        );
    });

    let wrapped = Bytes::from([b"[".as_slice(), &blob, b"]"].concat());
    let oversized = best_of(rounds, || scan_one_oversized_element(&wrapped, blob.len()));

    let elements: Vec<&RawValue> = serde_json::from_slice(&blob).expect("blob is valid JSON");
    let validation = best_of(rounds, || {
        for element in &elements {
            validate_record(element.get().as_bytes()).expect("valid record");
        }
    });

    let ours_mb_per_second = megabytes / ours.as_secs_f64();
    let serde_mb_per_second = megabytes / serde.as_secs_f64();
    print_figure("splitter", "throughput", ours_mb_per_second, "MB/s");
    print_figure(
        "splitter",
        "records",
        record_count as f64 / ours.as_secs_f64(),
        "records/s",
    );
    print_figure(
        "serde_json_raw_value_whole_blob",
        "throughput",
        serde_mb_per_second,
        "MB/s",
    );
    print_figure(
        "splitter",
        "ratio_to_serde_json",
        ours_mb_per_second / serde_mb_per_second,
        "ratio",
    );
    print_figure(
        "splitter_256_byte_chunks",
        "throughput",
        megabytes / small_chunks.as_secs_f64(),
        "MB/s",
    );
    print_figure(
        "record_validation_only",
        "throughput",
        megabytes / validation.as_secs_f64(),
        "MB/s",
    );
    print_figure(
        "oversized_element_scan_and_hash",
        "throughput",
        megabytes / oversized.as_secs_f64(),
        "MB/s",
    );
    print_figure("splitter", "blob_size", megabytes, "MB");
}

fn environment_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Feeds the blob in `chunk_bytes` chunks (as reqwest hands them over) and counts records.
fn split_in_chunks(blob: &Bytes, chunk_bytes: usize) -> u64 {
    let mut splitter = Splitter::new(MAX_RECORD_BYTES);
    let mut records = 0u64;
    let mut start = 0;
    while start < blob.len() {
        let end = (start + chunk_bytes).min(blob.len());
        for event in splitter.feed(blob.slice(start..end)) {
            match event {
                SplitEvent::Record { bytes, .. } => {
                    std::hint::black_box(bytes);
                    records += 1;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        start = end;
    }
    match splitter.finish() {
        Some(SplitEvent::Complete { records: total }) => assert_eq!(total, records),
        other => panic!("unexpected end {other:?}"),
    }
    records
}

/// Feeds `wrapped` (an array whose one element is `element_bytes` long) in 64 KiB chunks
/// to a splitter whose limit that element exceeds, and checks it comes out as Oversized.
fn scan_one_oversized_element(wrapped: &Bytes, element_bytes: usize) {
    let mut splitter = Splitter::new(MAX_RECORD_BYTES.min(element_bytes - 1));
    let mut events = Vec::new();
    for start in (0..wrapped.len()).step_by(CHUNK_BYTES) {
        let end = (start + CHUNK_BYTES).min(wrapped.len());
        events.extend(splitter.feed(wrapped.slice(start..end)));
    }
    events.extend(splitter.finish());
    match &events[..] {
        [
            SplitEvent::Oversized { size, .. },
            SplitEvent::Complete { records: 1 },
        ] => {
            assert_eq!(*size, element_bytes as u64);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

/// The valid fixture records, repeated until the blob reaches `target_bytes`.
fn build_blob(target_bytes: usize) -> (Bytes, u64) {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&directory)
        .expect("fixtures directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == "ndjson")
                && !path.ends_with("invalid-json-record.ndjson")
        })
        .collect();
    names.sort();
    let lines: Vec<String> = names
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .expect("fixture")
                .lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut blob = Vec::with_capacity(target_bytes + 64 * 1024);
    blob.push(b'[');
    let mut count = 0u64;
    'fill: loop {
        for line in &lines {
            if count > 0 {
                blob.extend_from_slice(b",\n");
            }
            blob.extend_from_slice(line.as_bytes());
            count += 1;
            if blob.len() >= target_bytes {
                break 'fill;
            }
        }
    }
    blob.push(b']');
    (Bytes::from(blob), count)
}

fn best_of(rounds: u64, mut run: impl FnMut()) -> Duration {
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn print_figure(scenario: &str, metric: &str, value: f64, unit: &str) {
    let line = serde_json::json!({
        "scenario": scenario,
        "metric": metric,
        "value": (value * 100.0).round() / 100.0,
        "unit": unit,
    });
    println!("{line}");
}

//! The performance scenarios of issue 9, end to end: the connector runs as its own process
//! (the release binary built by `cargo bench`), the Management API emulator, a minimal
//! engine (acknowledging every Log at once and timestamping the acks) and the load generator
//! run in this process on loopback, and the store lives in `target/tmp` on the machine's disk.
//! Every scenario measures its limit in the same run where it has one. One JSON line per
//! figure: `{"scenario","metric","value","unit","limit","ratio","target","op","met"}`;
//! `target`/`op` apply to `ratio` when `limit` is set, to `value` otherwise.
//!
//! Run: `cargo bench --bench scenarios`; `BENCH_SCENARIO=drain` (or webhook_ingest, latency,
//! big_blob, huge_records, many_tenants, quota, scale_out; comma-separated) picks scenarios. `scale_out`
//! needs Debian's nats-server (or `O365_NATS_SERVER`) and drains `SCALE_BLOBS` blobs with an
//! embedded-store instance, one replica on NATS and three replicas on NATS, in one run. `QUOTA_TRACE=1` prints the
//! quota scenario's requests and throttled answers per second, and its acks as they pass each
//! thousand; `BENCH_RUST_LOG` sets the connector's `RUST_LOG` (default `warn`).
//!
//! Layout: one file per scenario, each with one `pub async fn` named for it and listed in
//! `main`; what several scenarios use (the engine, the connector process, the API emulator,
//! the webhook load, a drained backlog, a nats-server on the measured disk) is in
//! [`support`], whose unit tests are the `scenarios_support` target.

mod big_blob;
mod drain;
mod huge_records;
mod latency;
mod many_tenants;
mod quota;
mod scale_out;
mod support;
mod webhook_ingest;

use std::path::Path;
use std::pin::Pin;
use std::process::Command;

fn main() {
    let chosen = std::env::var("BENCH_SCENARIO").unwrap_or_default();
    let wanted = |name: &str| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == name);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let filesystem = Command::new("df")
        .args(["-T", env!("CARGO_TARGET_TMPDIR")])
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| {
            text.lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().nth(1).map(String::from))
        })
        .unwrap_or_else(|| "unknown".into());
    eprintln!("store filesystem: {filesystem}");
    type Run = fn(&Path) -> Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
    let scenarios: [(&str, Run); 8] = [
        ("drain", |dir| Box::pin(drain::drain(dir))),
        ("webhook_ingest", |dir| {
            Box::pin(webhook_ingest::webhook_ingest(dir))
        }),
        ("latency", |dir| Box::pin(latency::latency(dir))),
        ("big_blob", |dir| Box::pin(big_blob::big_blob(dir))),
        ("huge_records", |dir| {
            Box::pin(huge_records::huge_records(dir))
        }),
        ("many_tenants", |dir| {
            Box::pin(many_tenants::many_tenants(dir))
        }),
        ("quota", |dir| Box::pin(quota::quota(dir))),
        ("scale_out", |dir| Box::pin(scale_out::scale_out(dir))),
    ];
    for (name, run) in scenarios {
        if wanted(name) {
            // Kept when the scenario fails, for its connector.log.
            let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap()
                .keep();
            eprintln!("scenario {name}: {}", dir.display());
            runtime.block_on(run(&dir));
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

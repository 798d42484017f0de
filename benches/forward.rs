//! Throughput of the engine forwarder against its limit.
//!
//! Pushes `FORWARD_BENCH_LOGS` Logs (default 200,000; raw records of about 1 KB, built with
//! `build_log`) into the engine emulator running in the same process (temporary Unix socket,
//! nothing kept in memory, no output file), twice:
//! - `forward`: through [`Forwarder`] (window of 2048, one stream, ack matching, receipts
//!   awaited in order by a second task, as workers would);
//! - `bare_tonic_stream`, the limit: a bare tonic client on one `Engine/Input` stream sending
//!   the same Logs with no window and no ack logic, only counting acks.
//!
//! The emulator shares the machine with the client, so both figures include its cost; the
//! ratio is what the forwarder's logic costs. Also prints the rate of `build_log`.
//!
//! Each is run `FORWARD_BENCH_ROUNDS` times (default 3), alternating, and the best round of
//! each is reported.
//!
//! Run: `cargo bench --bench forward`. Prints one JSON line per figure.

use std::time::{Duration, Instant};

use chrono::Utc;
use o365_connector::config::TimestampSource;
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use o365_connector::forward::{Forwarder, ForwarderConfig, LogContext, build_log};
use o365_connector::proto::{EngineClient, Log, unix_channel};

const CONTENT_URI: &str = "https://manage.office.com/api/v1.0/0a1b2c3d/activity/feed/audit/20260102030405123456789$20260102040405123456789$audit_sharepoint$Audit_SharePoint$emea0001?PublisherIdentifier=0a1b2c3d";

fn main() {
    let count: usize = std::env::var("FORWARD_BENCH_LOGS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200_000);
    let rounds: usize = std::env::var("FORWARD_BENCH_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let (logs, build_rate) = build_logs(count);
    let raw_bytes = logs.iter().map(|log| log.raw.len()).sum::<usize>() / count.max(1);
    print_figure("build_log", build_rate, None, raw_bytes);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("engine.sock");
    runtime.block_on(async {
        let mut config = EngineEmulatorConfig::in_memory(&socket);
        config.keep_in_memory = false;
        let emulator = EngineEmulator::start(config).await.expect("emulator");
        // Alternate the two and keep the best of each: the machine is shared, and the best
        // round is the one least disturbed by other work.
        let (mut forward, mut limit) = (0f64, 0f64);
        for _ in 0..rounds {
            forward = forward.max(forward_rate(&socket, logs.clone()).await);
            limit = limit.max(bare_stream_rate(&socket, logs.clone()).await);
        }
        print_figure("bare_tonic_stream", limit, None, raw_bytes);
        print_figure("forward", forward, Some(limit), raw_bytes);
        emulator.shutdown().await;
    });
}

fn print_figure(scenario: &str, value: f64, limit: Option<f64>, raw_bytes: usize) {
    let mut line = serde_json::json!({
        "scenario": scenario,
        "metric": "logs_per_s",
        "value": value.round(),
        "unit": "logs/s",
        "raw_bytes": raw_bytes,
    });
    if let Some(limit) = limit {
        line["limit"] = serde_json::json!(limit.round());
        line["ratio"] = serde_json::json!((value / limit * 1000.0).round() / 1000.0);
    }
    println!("{line}");
}

/// A SharePoint file-access record of about 1 KB, shaped like Microsoft's.
fn record(n: usize) -> String {
    format!(
        concat!(
            r#"{{"CreationTime":"2026-01-02T03:{:02}:{:02}","Id":"5f0b7c1e-{:04x}-4d2a-9c1b-{:012x}","#,
            r#""Operation":"FileAccessed","OrganizationId":"0a1b2c3d-1111-2222-3333-444455556666","#,
            r#""RecordType":6,"UserKey":"i:0h.f|membership|10033fff8a1b2c3d@live.com","UserType":0,"#,
            r#""Version":1,"Workload":"SharePoint","ClientIP":"203.0.113.{}","ObjectId":"#,
            r#""https:\/\/contoso.sharepoint.com\/sites\/finance\/Shared Documents\/Q4\/report-{}.xlsx","#,
            r#""UserId":"alice@contoso.com","CorrelationId":"9a8b7c6d-5e4f-3a2b-1c0d-{:012x}","#,
            r#""EventSource":"SharePoint","ItemType":"File","ListId":"1f2e3d4c-5b6a-7980-a1b2-c3d4e5f60718","#,
            r#""ListItemUniqueId":"aa11bb22-cc33-dd44-ee55-ff6677889900","Site":"d1e2f3a4-b5c6-d7e8-f9a0-b1c2d3e4f5a6","#,
            r#""UserAgent":"Mozilla\/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit\/537.36 (KHTML, like Gecko) Chrome\/120.0 Safari\/537.36","#,
            r#""WebId":"0f1e2d3c-4b5a-6978-8a9b-acbdcedfe0f1","SourceFileExtension":"xlsx","#,
            r#""SiteUrl":"https:\/\/contoso.sharepoint.com\/sites\/finance\/","SourceFileName":"report-{}.xlsx","#,
            r#""SourceRelativeUrl":"Shared Documents\/Q4"}}"#
        ),
        (n / 60) % 60,
        n % 60,
        n % 0xffff,
        n,
        n % 250,
        n,
        n,
        n
    )
}

fn build_logs(count: usize) -> (Vec<Log>, f64) {
    let context = LogContext {
        utm_tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
        group_name: "contoso".into(),
        timestamp: TimestampSource::Event,
    };
    let records: Vec<String> = (0..count).map(record).collect();
    let collected_at = Utc::now();
    let started = Instant::now();
    let logs = records
        .iter()
        .enumerate()
        .map(|(index, raw)| {
            build_log(
                &context,
                raw.as_bytes(),
                index as u64,
                CONTENT_URI,
                collected_at,
            )
        })
        .collect();
    (logs, count as f64 / started.elapsed().as_secs_f64())
}

/// Logs per second through the forwarder, until the last receipt resolved.
async fn forward_rate(socket: &std::path::Path, logs: Vec<Log>) -> f64 {
    let count = logs.len();
    let forwarder = Forwarder::start(ForwarderConfig::new(socket));
    let (receipts, mut receipts_rx) = tokio::sync::mpsc::channel(4096);
    let started = Instant::now();
    let waiter = tokio::spawn(async move {
        let mut acked = 0usize;
        while let Some(receipt) = receipts_rx.recv().await {
            let receipt: o365_connector::forward::AckReceipt = receipt;
            receipt.await.expect("acked");
            acked += 1;
        }
        acked
    });
    for log in logs {
        let receipt = forwarder.send(log).await.expect("accepted");
        receipts.send(receipt).await.expect("waiter runs");
    }
    drop(receipts);
    let acked = waiter.await.expect("waiter");
    let elapsed = started.elapsed();
    assert_eq!(acked, count);
    forwarder.shutdown(Duration::from_secs(5)).await;
    count as f64 / elapsed.as_secs_f64()
}

/// Logs per second on one bare stream: send everything, count acks.
async fn bare_stream_rate(socket: &std::path::Path, logs: Vec<Log>) -> f64 {
    let count = logs.len();
    let mut client = EngineClient::new(unix_channel(socket));
    let started = Instant::now();
    let response = client
        .input(tokio_stream::iter(logs))
        .await
        .expect("stream opens");
    let mut acks = response.into_inner();
    let mut acked = 0usize;
    while acked < count {
        match acks.message().await.expect("stream stays up") {
            Some(_) => acked += 1,
            None => break,
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(acked, count);
    count as f64 / elapsed.as_secs_f64()
}

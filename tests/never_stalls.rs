//! Delivery never stalls: a record the engine cannot take (over its gRPC message limit) or
//! keeps refusing (poison) is dead-lettered by reference, counted, shown on `/status`, and
//! the rest of its blob and every later blob are delivered — through the whole pipeline
//! (API emulator over TLS, the service, the engine emulator with Go gRPC's 4 MiB limit).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::rig::{Rig, RigOptions, TENANT, sha256_hex};
use common::{DEADLINE, wait_until};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::engine::EngineFaults;
use o365_connector::queue::DeadRecord;

/// A small valid record with a unique Id.
fn small(n: usize) -> String {
    format!(
        r#"{{"CreationTime":"2026-01-02T03:04:05","Id":"small-{n}","Operation":"FileAccessed","Workload":"SharePoint"}}"#
    )
}

/// A valid record of about `bytes` bytes (a long string field).
fn large(n: usize, bytes: usize) -> String {
    format!(
        r#"{{"CreationTime":"2026-01-02T03:04:05","Id":"large-{n}","Operation":"MipLabel","Payload":"{}"}}"#,
        "p".repeat(bytes)
    )
}

/// A rig whose emulator publishes `records` in order, 10 per blob.
async fn rig_with_records(records: &[String]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("records.ndjson");
    std::fs::write(&file, records.join("\n") + "\n").unwrap();
    let mut options = RigOptions::synthetic(Default::default());
    options.tenant.publication.records = Some(file);
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&["Audit.General"]).await;
    rig
}

/// Waits until every published record but `excluded` (by SHA-256) was acked.
async fn wait_for_all_but(rig: &Rig, excluded: &HashSet<String>) {
    wait_until("every other record acked", DEADLINE, || {
        let acked: HashSet<String> = rig
            .all_logs()
            .iter()
            .filter(|log| log.acked)
            .map(|log| sha256_hex(log.raw.as_bytes()))
            .collect();
        rig.published()
            .iter()
            .filter(|record| !excluded.contains(&record.sha256))
            .all(|record| acked.contains(&record.sha256))
    })
    .await;
}

async fn dead_records(rig: &Rig) -> Vec<DeadRecord> {
    let service = rig.service.as_ref().unwrap();
    service
        .queue
        .dead_records(100)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, record)| record)
        .collect()
}

fn counter(rig: &Rig, name: &str) -> u64 {
    let service = rig.service.as_ref().unwrap();
    let labels = service.metrics.content("contoso", "Audit.General");
    let family = match name {
        "oversized" => &service.metrics.records_oversized,
        "refused" => &service.metrics.records_refused,
        _ => unreachable!(),
    };
    family.get(&labels).map_or(0, |counter| counter.get())
}

#[tokio::test]
async fn a_record_over_the_engine_limit_is_dead_lettered_and_everything_else_is_delivered() {
    // Blob 1: four small records, one of 5 MiB (Go gRPC's limit is 4 MiB), five small.
    // Blob 2, published after: ten small records.
    let mut records: Vec<String> = (0..4).map(small).collect();
    let big = large(0, 5 * 1024 * 1024);
    records.push(big.clone());
    records.extend((4..19).map(small));
    let rig = rig_with_records(&records).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 1).await;
    let big_sha = sha256_hex(big.as_bytes());
    let excluded = HashSet::from([big_sha.clone()]);
    wait_for_all_but(&rig, &excluded).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 1).await;
    wait_for_all_but(&rig, &excluded).await;

    assert!(
        rig.all_logs()
            .iter()
            .all(|log| sha256_hex(log.raw.as_bytes()) != big_sha),
        "the oversized record never reached the engine"
    );
    assert_eq!(rig.engine.counts().logs_refused, 0, "no stream was ended");
    let dead = dead_records(&rig).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let record = &dead[0];
    assert_eq!(record.index, 4);
    assert_eq!(
        hex::encode(record.sha256),
        big_sha,
        "the SHA-256 of its bytes"
    );
    assert_eq!(
        record.byte_range.1 - record.byte_range.0,
        big.len() as u64,
        "its true byte range"
    );
    assert!(
        record.reason.contains("engine.max_message_bytes"),
        "{}",
        record.reason
    );
    assert_eq!(counter(&rig, "oversized"), 1);
    let service = rig.service.as_ref().unwrap();
    let report = service.status.report().await;
    let general = report.tenants[0]
        .content_types
        .iter()
        .find(|status| status.content_type == "Audit.General")
        .unwrap();
    assert_eq!(general.lost, Some(1), "the record counts as lost");
    let problem = general
        .errors
        .iter()
        .find(|error| error.message.contains("too large"))
        .expect("a problem on /status");
    assert!(problem.advice.contains("max_message_bytes"), "{problem:?}");
    rig.shutdown().await;
}

#[tokio::test]
async fn a_record_the_engine_keeps_refusing_is_dead_lettered_and_delivery_goes_on() {
    let mut records: Vec<String> = (0..3).map(small).collect();
    let poison = r#"{"CreationTime":"2026-01-02T03:04:05","Id":"poison-1","Operation":"ENGINE-REFUSES-THIS"}"#;
    records.push(poison.to_owned());
    records.extend((3..19).map(small));
    let rig = rig_with_records(&records).await;
    rig.engine.set_faults(EngineFaults {
        refuse_marker: Some("ENGINE-REFUSES-THIS".into()),
        ..EngineFaults::default()
    });
    let started = std::time::Instant::now();
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 2).await;
    let poison_sha = sha256_hex(poison.as_bytes());
    let excluded = HashSet::from([poison_sha.clone()]);
    wait_for_all_but(&rig, &excluded).await;
    wait_until("the poison record dead-lettered", DEADLINE, || {
        counter(&rig, "refused") == 1
    })
    .await;
    println!(
        "poison record given up and the rest delivered in {:?}",
        started.elapsed()
    );
    let dead = dead_records(&rig).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].index, 3);
    assert_eq!(hex::encode(dead[0].sha256), poison_sha);
    assert!(
        dead[0].reason.contains("refused by the engine"),
        "{}",
        dead[0].reason
    );
    let sends = rig
        .all_logs()
        .iter()
        .filter(|log| sha256_hex(log.raw.as_bytes()) == poison_sha)
        .count();
    assert_eq!(sends, 4, "once in the stream, then three times alone");
    // The queue items completed: nothing is left to retry.
    let service = rig.service.as_ref().unwrap();
    let started = std::time::Instant::now();
    loop {
        let stats = service.queue.stats().await.unwrap();
        if stats.pending == 0 && stats.leased == 0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the queue never drained: {stats:?}"
        );
        common::pause_after_check(Duration::ZERO).await;
    }
    rig.shutdown().await;
}

/// GETs `path` on the service's listener and returns the JSON body.
async fn get_json(rig: &Rig, path: &str) -> serde_json::Value {
    let service = rig.service.as_ref().unwrap();
    let url = format!("https://localhost:{}{path}", service.address.port());
    common::client_trusting(&rig.certs.ca)
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_engine_that_stops_acknowledging_is_a_stall_on_readyz_status_and_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(Default::default());
    options.in_process = false;
    let mut rig = Rig::start(dir, options).await;
    let socket_line = rig
        .config_text
        .lines()
        .find(|line| line.starts_with("socket = ") && line.contains("engine.sock"))
        .unwrap()
        .to_owned();
    rig.config_text = rig
        .config_text
        .replace(&socket_line, &format!("{socket_line}\nstall_secs = 1"));
    rig.start_service(None).await;
    rig.wait_for_webhooks(&["Audit.General"]).await;
    rig.engine.set_faults(EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    });
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 1).await;

    let started = std::time::Instant::now();
    let readiness = loop {
        let readiness = get_json(&rig, "/readyz").await;
        if !readiness["engine"]["stalled"].is_null() {
            break readiness;
        }
        assert!(started.elapsed() < DEADLINE, "no stall shown: {readiness}");
        common::pause_after_check(Duration::from_millis(50)).await;
    };
    assert_eq!(
        readiness["ready"], true,
        "a stalled engine does not fail readiness"
    );
    let message = readiness["engine"]["stalled"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("engine stalled: ") && message.contains("Logs unacknowledged for"),
        "{message}"
    );
    assert!(
        !readiness["engine"]["stalled"]["advice"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    let status = get_json(&rig, "/status").await;
    assert!(!status["engine"]["stalled"].is_null(), "{status}");
    wait_until("the console told of the stall", DEADLINE, || {
        rig.engine
            .messages()
            .iter()
            .any(|message| message.message.contains("engine stalled"))
    })
    .await;

    // Acks again: the next Log's Ack confirms the earlier ones, and the stall ends.
    rig.engine.set_faults(EngineFaults::default());
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 1).await;
    let forwarder = rig.service.as_ref().unwrap().forwarder.clone();
    wait_until("every Log acknowledged", DEADLINE, || {
        let stats = forwarder.stats();
        stats.logs_acked >= 20 && stats.in_flight == 0
    })
    .await;
    let readiness = get_json(&rig, "/readyz").await;
    assert!(readiness["engine"]["stalled"].is_null(), "{readiness}");
    rig.shutdown().await;
}

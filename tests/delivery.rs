//! End to end over real sockets: Microsoft (the API emulator, over TLS) notifies the
//! connector's webhook, the connector fetches and splits the blobs and forwards every
//! record to the UTMStack engine (the engine emulator), which acks them. Proves that every
//! published record arrives exactly once and byte-identical, through duplicate
//! notifications, engine outages, API faults and a restart.

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::collections::HashMap;

use common::rig::{GROUP, Rig, RigOptions, TENANT, sha256_hex};
use common::{DEADLINE, wait_until};
use o365_connector::config::TimestampSource;
use o365_connector::emulator::api::publish::{self, PublishedRecord};
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::{EngineFaults, ReceivedLog};
use o365_connector::forward::log::{LogContext, build_log};

fn context() -> LogContext {
    LogContext {
        utm_tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
        group_name: GROUP.into(),
        timestamp: TimestampSource::Event,
    }
}

/// Record bytes by SHA-256, from the records file the emulator publishes.
fn records_by_sha(rig: &Rig) -> HashMap<String, Vec<u8>> {
    let text = std::fs::read(rig.dir.path().join("all-records.ndjson")).unwrap_or_default();
    text.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| (sha256_hex(line), line.to_vec()))
        .collect()
}

fn is_record(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|value| value.is_object())
}

/// (Log id, raw SHA-256) of every valid published record, as a multiset.
fn expected(
    published: &[PublishedRecord],
    records: &HashMap<String, Vec<u8>>,
) -> HashMap<(String, String), usize> {
    let mut expected = HashMap::new();
    for record in published {
        let bytes = &records[&record.sha256];
        if !is_record(bytes) {
            continue;
        }
        let log = build_log(
            &context(),
            bytes,
            record.index as u64,
            &record.content_uri,
            chrono::Utc::now(),
        );
        *expected.entry((log.id, record.sha256.clone())).or_insert(0) += 1;
    }
    expected
}

fn delivered(logs: &[ReceivedLog]) -> HashMap<(String, String), usize> {
    let mut delivered = HashMap::new();
    for log in logs.iter().filter(|log| log.acked) {
        *delivered
            .entry((log.id.clone(), sha256_hex(log.raw.as_bytes())))
            .or_insert(0) += 1;
    }
    delivered
}

async fn wait_until_queue_drained(rig: &Rig) {
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let started = std::time::Instant::now();
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.pending == 0 && stats.leased == 0 {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "queue not drained: {stats:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn every_published_record_reaches_the_engine_exactly_once_and_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let options = RigOptions::fixture_records(dir.path());
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    let records = records_by_sha(&rig);
    let blobs = records.len().div_ceil(10) + 1;
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", blobs).await;
    publish::publish_now(rig.api.state(), TENANT, "DLP.All", 2).await;
    let published = rig.published();
    let expected = expected(&published, &records);
    let expected_total: usize = expected.values().sum();
    rig.wait_for_acked(expected_total as u64).await;
    wait_until_queue_drained(&rig).await;

    let logs = rig.engine.logs();
    assert_eq!(
        delivered(&logs),
        expected,
        "each valid record exactly once, byte-identical"
    );
    let invalid: Vec<_> = published
        .iter()
        .filter(|record| !is_record(&records[&record.sha256]))
        .collect();
    assert!(!invalid.is_empty(), "the fixtures hold an invalid record");
    let forwarded_shas: Vec<String> = logs
        .iter()
        .map(|log| sha256_hex(log.raw.as_bytes()))
        .collect();
    assert!(
        invalid
            .iter()
            .all(|record| !forwarded_shas.contains(&record.sha256)),
        "the invalid record is never forwarded"
    );
    let dead = rig
        .service
        .as_ref()
        .unwrap()
        .queue
        .dead_records(100)
        .await
        .unwrap();
    for record in &invalid {
        assert!(
            dead.iter()
                .any(|(key, dead)| key.content_id == record.content_id
                    && dead.index == record.index as u64
                    && hex::encode(dead.sha256) == record.sha256),
            "the invalid record is dead-lettered by reference"
        );
    }
    wait_until("an integration_failure report", DEADLINE, || {
        rig.engine.messages().iter().any(|message| {
            message.topic == "integration_failure" && message.message.contains(GROUP)
        })
    })
    .await;

    for log in logs.iter().filter(|log| log.acked) {
        assert_eq!(log.data_type, "o365");
        assert_eq!(log.data_source, GROUP);
        assert_eq!(log.tenant_id, "ce66672c-e36d-4761-a8c8-90058fee1a24");
        let record: serde_json::Value = serde_json::from_str(&log.raw).unwrap();
        // CreationTime comes without a zone and is UTC: the Log says so with a Z.
        if let Some(creation) = record["CreationTime"]
            .as_str()
            .filter(|time| time.len() == 19)
        {
            assert_eq!(log.timestamp, format!("{creation}Z"));
        }
    }
    rig.shutdown().await;
}

fn assert_each_published_record_acked_once_or_more(rig: &Rig) -> usize {
    let logs = rig.all_logs();
    let mut acked: HashMap<String, usize> = HashMap::new();
    for log in logs.iter().filter(|log| log.acked) {
        *acked.entry(sha256_hex(log.raw.as_bytes())).or_insert(0) += 1;
    }
    for record in rig.published() {
        assert!(
            acked.contains_key(&record.sha256),
            "record {} of {} was lost",
            record.index,
            record.content_id
        );
    }
    logs.len() - rig.published().len()
}

#[tokio::test]
async fn a_notification_delivered_several_times_forwards_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultScenario {
        duplicate_notifications: true,
        ..FaultScenario::default()
    };
    let rig = Rig::start(dir, RigOptions::synthetic(faults)).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 5).await;
    // And once more by hand: the same notification a third time.
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 0).await;
    rig.wait_for_every_published_record().await;
    wait_until_queue_drained(&rig).await;
    let duplicates = assert_each_published_record_acked_once_or_more(&rig);
    assert_eq!(duplicates, 0, "no record forwarded twice");
    let counts = rig.service.as_ref().unwrap().metrics.encode();
    assert!(
        counts.contains("o365_connector_notification_items_total{outcome=\"duplicate\"}"),
        "duplicates were seen and counted"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn engine_dropping_streams_going_down_and_refusing_connections_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    rig.wait_for_webhooks(&ALL).await;
    // Streams abort at every 7th Log: unacked Logs are sent again on the next stream.
    rig.engine.set_faults(EngineFaults {
        drop_after: Some(7),
        ..EngineFaults::default()
    });
    publish::publish_now(rig.api.state(), TENANT, "Audit.SharePoint", 6).await;
    rig.wait_for_acked(30).await;
    // The engine goes away for `O365_FAULT_OUTAGE_SECS` (default 1; a soak sets minutes
    // in seconds); content keeps arriving; it comes back refusing connections.
    let outage = std::time::Duration::from_secs(
        std::env::var("O365_FAULT_OUTAGE_SECS")
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1),
    );
    let down = std::time::Instant::now();
    rig.stop_engine().await;
    let forwarder = rig.service.as_ref().unwrap().forwarder.clone();
    wait_until("the forwarder to see the engine gone", DEADLINE, || {
        !forwarder.stats().engine_connected
    })
    .await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.SharePoint", 4).await;
    rig.restart_engine_refusing().await;
    rig.engine
        .wait_for(DEADLINE, |counts| counts.connections_refused >= 1)
        .await
        .unwrap();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    let back = std::time::Instant::now();
    rig.engine.accept_connections();
    // The forwarder retries with backoff (capped at 10 s): the deadline allows for it.
    rig.engine
        .wait_for(DEADLINE, |counts| counts.logs_acked >= 1)
        .await
        .unwrap();
    let resumed = back.elapsed();
    rig.wait_for_every_published_record().await;
    println!(
        "engine down {:?} ({} connections refused): first ack {resumed:?} and every record {:?} after it accepted connections again",
        back - down,
        rig.engine.counts().connections_refused,
        back.elapsed()
    );
    wait_until_queue_drained(&rig).await;
    let duplicates = assert_each_published_record_acked_once_or_more(&rig);
    println!("records forwarded again after stream drops and the outage: {duplicates}");
    rig.shutdown().await;
}

#[tokio::test]
async fn api_server_errors_and_truncated_bodies_are_retried_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultScenario {
        server_error_rate: 0.3,
        truncate_rate: 0.3,
        ..FaultScenario::default()
    };
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    rig.wait_for_webhooks(&ALL).await;
    // The faults start once the subscriptions exist: this test is about fetching blobs
    // (subscription starts under faults are the subscription manager's tests).
    rig.api.state().feed.set_faults(Some(TENANT), faults);
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 10).await;
    rig.wait_for_every_published_record().await;
    wait_until_queue_drained(&rig).await;
    let duplicates = assert_each_published_record_acked_once_or_more(&rig);
    println!("records forwarded again after truncated bodies: {duplicates}");
    let blob_requests = rig
        .api
        .state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint.contains("/audit/"))
        .count();
    assert!(
        blob_requests < 10 * 20,
        "no hot retry loop: {blob_requests} blob requests for 10 blobs"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn throttling_pauses_the_tenant_for_retry_after_and_loses_nothing() {
    use o365_connector::emulator::api::scenario::{ThrottleResponse, ThrottleScenario};
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.throttle = ThrottleScenario {
        requests_per_window: 8,
        window_secs: 1.0,
        response: ThrottleResponse::Http429,
    };
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 12).await;
    rig.wait_for_every_published_record().await;
    wait_until_queue_drained(&rig).await;
    let requests = rig.api.state().inspection().requests.clone();
    let throttled: Vec<_> = requests
        .iter()
        .enumerate()
        .filter(|(_, request)| request.status == 429)
        .collect();
    assert!(
        !throttled.is_empty(),
        "the budget was exceeded at least once"
    );
    // Retry-After was at least one second: no request of the tenant followed a 429 sooner,
    // except those already on the wire when it was answered (the two workers fetch
    // concurrently: a request sent just before the 429 arrived is answered just after it).
    let in_flight = chrono::Duration::milliseconds(100);
    for (position, answer) in &throttled {
        let too_soon: Vec<_> = requests[position + 1..]
            .iter()
            .filter(|request| request.tenant.as_deref() == Some(TENANT) && request.status != 429)
            .map(|request| request.time - answer.time)
            .filter(|gap| *gap > in_flight && *gap < chrono::Duration::milliseconds(900))
            .collect();
        assert!(
            too_soon.is_empty(),
            "requests {too_soon:?} after a 429 asking for 1 s"
        );
    }
    let metrics = rig.service.as_ref().unwrap().metrics.encode();
    assert!(
        !metrics.contains("o365_connector_throttled_total{tenant=\"contoso\"} 0"),
        "throttling is counted"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn content_that_expired_before_it_was_fetched_is_a_counted_loss() {
    use o365_connector::queue::{ContentRef, ItemState, Source};
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    };
    let rig = Rig::start(dir, RigOptions::synthetic(faults)).await;
    rig.wait_for_webhooks(&ALL).await;
    let entries = publish::publish_now(rig.api.state(), TENANT, "DLP.All", 1).await;
    // Eight days pass at Microsoft before the connector asks for the blob.
    rig.api.state().clock.advance(chrono::Duration::days(8));
    let entry = &entries[0];
    let service = rig.service.as_ref().unwrap();
    service
        .queue
        .enqueue(vec![ContentRef {
            tenant_id: TENANT.into(),
            content_type: "DLP.All".into(),
            content_id: entry.content_id.clone(),
            content_uri: entry.content_uri.clone(),
            content_created: entry.content_created,
            content_expiration: entry.content_expiration,
            source: Source::Webhook,
        }])
        .await
        .unwrap();
    let key = o365_connector::queue::ContentKey::new(TENANT, &entry.content_id);
    let started = std::time::Instant::now();
    loop {
        let item = service.queue.get(&key).await.unwrap().unwrap();
        if let ItemState::Dead { reason, .. } = &item.state {
            assert!(reason.contains("AF20051"), "{reason}");
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "never dead-lettered: {:?}",
            item.state
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let metrics = service.metrics.encode();
    assert!(
        metrics.contains(
            "o365_connector_content_expired_total{tenant=\"contoso\",content_type=\"DLP.All\"} 1"
        ),
        "{metrics}"
    );
    assert_eq!(rig.engine.counts().logs_received, 0);
    rig.shutdown().await;
}

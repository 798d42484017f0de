//! The engine forwarder against the in-process engine emulator (temporary Unix sockets):
//! every Log acked in order and received intact, backpressure, nothing lost when the engine
//! refuses connections or drops streams, the earliest-unacked ack rule, unknown acks,
//! notifications and shutdown.

mod common;

use std::collections::HashSet;
use std::num::NonZeroUsize;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{DEADLINE, wait_until};
use futures_util::{FutureExt, Stream, StreamExt};
use o365_connector::config::TimestampSource;
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};
use o365_connector::forward::wire::EncodedLog;
use o365_connector::forward::{
    AckReceipt, ForwardError, Forwarder, ForwarderConfig, LogContext, build_log,
};
use o365_connector::proto::{Ack, Engine, EngineServer, Log, Message};
use o365_connector::retry::RetryPolicy;

const CONTENT_URI: &str =
    "https://manage.office.com/api/v1.0/0a1b/activity/feed/audit/blob?PublisherIdentifier=0a1b";

fn context() -> LogContext {
    LogContext {
        utm_tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
        group_name: "contoso".into(),
        timestamp: TimestampSource::Event,
    }
}

fn collected() -> DateTime<Utc> {
    "2026-01-02T03:04:05Z".parse().unwrap()
}

/// A record with an `Id`, escapes and a large integer that re-serialising would change.
fn record(n: usize) -> String {
    format!(
        r#"{{"CreationTime":"2015-06-29T20:03:19","Id":"rec-{n}","Operation":"FileAccessed","UserId":"a\u0040b.com","Big":12345678901234567890,"Path":"C:\\x<&>"}}"#
    )
}

fn logs(range: std::ops::Range<usize>) -> Vec<Log> {
    range
        .map(|n| {
            build_log(
                &context(),
                record(n).as_bytes(),
                n as u64,
                CONTENT_URI,
                collected(),
            )
        })
        .collect()
}

async fn start_emulator(socket: &Path, faults: EngineFaults) -> EngineEmulator {
    let mut config = EngineEmulatorConfig::in_memory(socket);
    config.faults = faults;
    EngineEmulator::start(config)
        .await
        .expect("emulator starts")
}

fn start_forwarder(socket: &Path, max_in_flight: usize) -> Forwarder {
    let mut config = ForwarderConfig::new(socket);
    config.max_in_flight = NonZeroUsize::new(max_in_flight).unwrap();
    config.reconnect = RetryPolicy::for_test();
    Forwarder::start(config)
}

/// Sends every Log (waiting for window room as needed) and keeps the receipts in order.
async fn send_all(forwarder: &Forwarder, logs: &[Log]) -> Vec<AckReceipt> {
    let mut receipts = Vec::with_capacity(logs.len());
    for log in logs {
        let send = tokio::time::timeout(DEADLINE, forwarder.send(log.clone()));
        receipts.push(send.await.expect("window room in time").expect("accepted"));
    }
    receipts
}

/// Awaits every receipt; each must resolve to acked within the deadline.
async fn all_acked(receipts: Vec<AckReceipt>) {
    for (index, receipt) in receipts.into_iter().enumerate() {
        let outcome = tokio::time::timeout(DEADLINE, receipt).await;
        assert_eq!(outcome, Ok(Ok(())), "receipt {index}");
    }
}

#[tokio::test]
async fn every_log_is_acked_in_send_order_and_received_once_intact() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    let forwarder = start_forwarder(&socket, 64);
    let sent = logs(0..300);
    let mut receipts = send_all(&forwarder, &sent).await;

    // The last receipt resolving means every earlier one already has (and checking them
    // all in a row is not cut short by tokio's cooperative budget).
    let last = receipts.pop().unwrap();
    assert_eq!(tokio::time::timeout(DEADLINE, last).await, Ok(Ok(())));
    for (index, receipt) in receipts.into_iter().enumerate() {
        assert_eq!(receipt.now_or_never(), Some(Ok(())), "receipt {index}");
    }

    let received = emulator.logs();
    assert_eq!(received.len(), sent.len(), "each Log received exactly once");
    for (got, want) in received.iter().zip(&sent) {
        assert!(got.acked);
        assert_eq!(got.id, want.id);
        assert_eq!(got.raw.as_bytes(), want.raw.as_bytes());
        assert_eq!(got.data_type, "o365");
        assert_eq!(got.data_source, "contoso");
        assert_eq!(got.tenant_id, "ce66672c-e36d-4761-a8c8-90058fee1a24");
        assert_eq!(got.timestamp, "2015-06-29T20:03:19Z");
    }
    let stats = forwarder.stats();
    assert_eq!((stats.logs_sent, stats.logs_acked), (300, 300));
    assert_eq!(
        (stats.resent, stats.unmatched_acks, stats.in_flight),
        (0, 0, 0)
    );
    assert!(stats.engine_connected);
    assert_eq!(stats.disconnected_for, None);
    assert_eq!(forwarder.shutdown(DEADLINE).await.unacked, 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn engine_refusing_connections_loses_nothing_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    emulator.refuse_connections_for(Duration::from_secs(3600));
    let forwarder = start_forwarder(&socket, 2048);
    let sent = logs(0..50);
    let receipts = send_all(&forwarder, &sent).await;

    emulator
        .wait_for(DEADLINE, |counts| counts.connections_refused >= 2)
        .await
        .expect("the forwarder keeps trying");
    let during = forwarder.stats();
    assert!(!during.engine_connected);
    assert!(during.disconnected_for.is_some());
    assert_eq!(during.logs_acked, 0);

    emulator.accept_connections();
    all_acked(receipts).await;
    let acked: HashSet<String> = emulator
        .logs()
        .into_iter()
        .filter(|log| log.acked)
        .map(|log| log.id)
        .collect();
    let expected: HashSet<String> = sent.iter().map(|log| log.id.clone()).collect();
    assert_eq!(acked, expected);
    let after = forwarder.stats();
    assert!(after.engine_connected);
    assert!(after.reconnects >= 1);
    assert_eq!(after.logs_acked, 50);
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn streams_dropped_mid_way_lose_nothing_and_duplicate_only_what_was_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        drop_after: Some(7),
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 16);
    let sent = logs(0..200);
    let receipts = send_all(&forwarder, &sent).await;
    all_acked(receipts).await;

    let received = emulator.logs();
    let acked: HashSet<&str> = received
        .iter()
        .filter(|log| log.acked)
        .map(|log| log.id.as_str())
        .collect();
    let expected: HashSet<&str> = sent.iter().map(|log| log.id.as_str()).collect();
    assert_eq!(acked, expected);
    let duplicates = received.len() - sent.len();
    let stats = forwarder.stats();
    println!(
        "drop_after=7 window=16: {} Logs, {duplicates} duplicate deliveries, {} resent, {} reconnects",
        sent.len(),
        stats.resent,
        stats.reconnects
    );
    // Each aborted stream leaves exactly its 7th Log received but unacknowledged.
    let unacked_receipts = received.iter().filter(|log| !log.acked).count();
    assert_eq!(duplicates, unacked_receipts);
    assert!(stats.resent >= duplicates as u64);
    assert_eq!(stats.logs_acked, 200);
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn full_window_makes_send_wait_until_the_engine_acks_again() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    };
    let silent = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 4);
    let sent = logs(0..5);
    let mut receipts = send_all(&forwarder, &sent[..4]).await;
    let mut fifth = Box::pin(forwarder.send(sent[4].clone()));

    silent
        .wait_for(DEADLINE, |counts| counts.logs_received >= 4)
        .await
        .unwrap();
    assert!(
        fifth.as_mut().now_or_never().is_none(),
        "the 5th send waits while 4 Logs are unacknowledged"
    );
    assert_eq!(forwarder.stats().in_flight, 4);

    // The engine restarts and acknowledges again: the 4 are resent, the 5th gets room.
    silent.shutdown().await;
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    let fifth = tokio::time::timeout(DEADLINE, fifth).await;
    receipts.push(fifth.expect("room in the window").expect("accepted"));
    all_acked(receipts).await;
    let ids: Vec<String> = emulator.logs().into_iter().map(|log| log.id).collect();
    let expected: Vec<String> = sent.iter().map(|log| log.id.clone()).collect();
    assert_eq!(ids, expected, "resent in the original order, then the 5th");
    assert_eq!(forwarder.stats().resent, 4);
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn same_record_id_repeated_resolves_each_receipt_by_the_earliest_unacked_rule() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        ack_delay: Duration::from_millis(100),
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 16);
    // The same record twice in a row in one blob, then another, then the first again.
    let repeated = logs(0..1).remove(0);
    let other = logs(1..2).remove(0);
    let sent = vec![repeated.clone(), repeated.clone(), other, repeated];
    let receipts = send_all(&forwarder, &sent).await;
    all_acked(receipts).await;
    let stats = forwarder.stats();
    assert_eq!(stats.logs_acked, 4);
    assert_eq!(
        stats.unmatched_acks, 0,
        "each Ack matched one in-flight Log"
    );
    assert_eq!(emulator.counts().logs_received, 4);
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

/// Serves `engine` on a Unix socket at `socket` until the returned task is aborted.
fn serve_engine(engine: impl Engine, socket: &Path) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let served = tonic::transport::Server::builder()
            .add_service(EngineServer::new(engine))
            .serve_with_incoming(incoming)
            .await;
        served.expect("the test engine serves until aborted");
    })
}

/// An engine that answers each Log with an Ack for an unknown id, then the right Ack.
struct StrayAckEngine;

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Engine for StrayAckEngine {
    type InputStream = AckStream;
    type NotifyStream = AckStream;

    async fn input(
        &self,
        request: tonic::Request<tonic::Streaming<Log>>,
    ) -> Result<tonic::Response<AckStream>, tonic::Status> {
        let acks = request.into_inner().flat_map(|log| {
            let pair = match log {
                Ok(log) => vec![
                    Ok(Ack {
                        last_id: "not-in-flight".into(),
                    }),
                    Ok(Ack { last_id: log.id }),
                ],
                Err(status) => vec![Err(status)],
            };
            futures_util::stream::iter(pair)
        });
        Ok(tonic::Response::new(Box::pin(acks)))
    }

    async fn notify(
        &self,
        _request: tonic::Request<tonic::Streaming<Message>>,
    ) -> Result<tonic::Response<AckStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }
}

#[tokio::test]
async fn ack_for_an_unknown_id_is_counted_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("stray.sock");
    let server = serve_engine(StrayAckEngine, &socket);
    let forwarder = start_forwarder(&socket, 8);
    let receipts = send_all(&forwarder, &logs(0..10)).await;
    all_acked(receipts).await;
    let stats = forwarder.stats();
    assert_eq!(stats.unmatched_acks, 10);
    assert_eq!(stats.logs_acked, 10);
    assert_eq!(stats.reconnects, 0, "the stream was never reopened");
    forwarder.shutdown(DEADLINE).await;
    server.abort();
}

#[tokio::test]
async fn integration_failure_notification_reaches_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    let forwarder = start_forwarder(&socket, 8);
    assert!(forwarder.notify_integration_failure("contoso", "2 invalid records in Audit.General"));
    emulator
        .wait_for(DEADLINE, |counts| counts.messages_received >= 1)
        .await
        .unwrap();
    let message = emulator.messages().remove(0);
    assert_eq!(message.topic, "integration_failure");
    let body: serde_json::Value = serde_json::from_str(&message.message).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "2 invalid records in Audit.General", "dataType": "o365", "dataSource": "contoso"})
    );
    wait_until("the notification counted as sent", DEADLINE, || {
        forwarder.stats().notifications_sent == 1
    })
    .await;
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

/// An engine that, as the UTMStack engine does, answers a Log stream's headers only with
/// its first Ack, and acknowledges every notification.
struct HeadersWithFirstAckEngine;

#[tonic::async_trait]
impl Engine for HeadersWithFirstAckEngine {
    type InputStream = AckStream;
    type NotifyStream = AckStream;

    async fn input(
        &self,
        request: tonic::Request<tonic::Streaming<Log>>,
    ) -> Result<tonic::Response<AckStream>, tonic::Status> {
        let mut logs = request.into_inner();
        let first = logs.next().await;
        let acks = futures_util::stream::iter(first)
            .chain(logs)
            .map(|log| log.map(|log| Ack { last_id: log.id }));
        Ok(tonic::Response::new(Box::pin(acks)))
    }

    async fn notify(
        &self,
        request: tonic::Request<tonic::Streaming<Message>>,
    ) -> Result<tonic::Response<AckStream>, tonic::Status> {
        let acks = request.into_inner().map(|message| {
            message.map(|message| Ack {
                last_id: message.id,
            })
        });
        Ok(tonic::Response::new(Box::pin(acks)))
    }
}

/// `/readyz` and the `engine_connected` gauge read this flag: a notification the engine
/// acknowledged proves it reachable before any Log opened the Log stream.
#[tokio::test]
async fn an_acknowledged_notification_shows_the_engine_connected_before_any_log() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("headers.sock");
    let server = serve_engine(HeadersWithFirstAckEngine, &socket);
    let forwarder = start_forwarder(&socket, 8);
    assert!(forwarder.notify_integration_failure("contoso", "a problem"));
    wait_until("the notification counted as sent", DEADLINE, || {
        forwarder.stats().notifications_sent == 1
    })
    .await;
    let stats = forwarder.stats();
    assert_eq!(stats.logs_sent, 0, "no Log opened the stream");
    assert!(stats.engine_connected);
    assert_eq!(stats.disconnected_for, None);
    all_acked(send_all(&forwarder, &logs(0..2)).await).await;
    assert!(forwarder.stats().engine_connected);
    forwarder.shutdown(DEADLINE).await;
    assert!(!forwarder.stats().engine_connected, "closed after shutdown");
    server.abort();
}

#[tokio::test]
async fn shutdown_within_its_deadline_reports_unacked_logs_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 8);
    let receipts = send_all(&forwarder, &logs(0..3)).await;
    emulator
        .wait_for(DEADLINE, |counts| counts.logs_received >= 3)
        .await
        .unwrap();

    let report = tokio::time::timeout(DEADLINE, forwarder.shutdown(Duration::from_millis(200)))
        .await
        .expect("shutdown returns after its deadline");
    assert_eq!(report.unacked, 3);
    for receipt in receipts {
        assert_eq!(receipt.await, Err(ForwardError::NotAcknowledged));
    }
    let late = forwarder.send(logs(3..4).remove(0)).await;
    assert_eq!(late.err(), Some(ForwardError::Closed));
    assert!(!forwarder.stats().engine_connected);
    emulator.shutdown().await;
}

#[tokio::test]
async fn shutdown_waits_for_acks_of_logs_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        ack_delay: Duration::from_millis(200),
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 8);
    let receipts = send_all(&forwarder, &logs(0..3)).await;
    let report = forwarder.shutdown(DEADLINE).await;
    assert_eq!(report.unacked, 0);
    for receipt in receipts {
        assert_eq!(receipt.now_or_never(), Some(Ok(())));
    }
    emulator.shutdown().await;
}

#[tokio::test]
async fn an_outage_is_logged_once_as_a_warning_and_its_recovery_once_as_info() {
    // A current-thread test runtime: the forwarder's tasks log on this thread.
    let captured = common::logs::CapturedLogs::start_on_this_thread();

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    let forwarder = start_forwarder(&socket, 64);
    all_acked(send_all(&forwarder, &logs(0..2)).await).await;

    // The engine restarts and refuses connections for a while: several failed attempts.
    emulator.shutdown().await;
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    emulator.refuse_connections_for(Duration::from_secs(3600));
    let receipts = send_all(&forwarder, &logs(2..4)).await;
    emulator
        .wait_for(DEADLINE, |counts| counts.connections_refused >= 3)
        .await
        .unwrap();
    emulator.accept_connections();
    all_acked(receipts).await;

    assert_eq!(
        captured.lines_containing("WARN"),
        1,
        "one warning per outage"
    );
    assert_eq!(captured.lines_containing("engine connection recovered"), 1);
    assert_eq!(captured.lines_containing("outage_secs"), 1);
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn logs_sent_before_the_engine_exists_are_delivered_once_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sockets/engine.sock");
    let forwarder = start_forwarder(&socket, 64);
    let sent = logs(0..20);
    let receipts = send_all(&forwarder, &sent).await;
    wait_until("a failed connection attempt", DEADLINE, || {
        forwarder.stats().disconnected_for.is_some() && forwarder.stats().reconnects >= 1
    })
    .await;

    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    all_acked(receipts).await;
    let ids: Vec<String> = emulator.logs().into_iter().map(|log| log.id).collect();
    let expected: Vec<String> = sent.iter().map(|log| log.id.clone()).collect();
    assert_eq!(ids, expected, "each once, in order");
    forwarder.shutdown(DEADLINE).await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_no_engine_returns_at_its_deadline_with_everything_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let forwarder = start_forwarder(&dir.path().join("absent.sock"), 8);
    let receipts = send_all(&forwarder, &logs(0..2)).await;
    let report = tokio::time::timeout(DEADLINE, forwarder.shutdown(Duration::from_millis(100)))
        .await
        .expect("shutdown returns after its deadline");
    assert_eq!(report.unacked, 2);
    for receipt in receipts {
        assert_eq!(receipt.await, Err(ForwardError::NotAcknowledged));
    }
}

#[tokio::test]
async fn undeliverable_notification_is_given_up_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let forwarder = start_forwarder(&dir.path().join("absent.sock"), 8);
    assert!(forwarder.notify("integration_failure", "{}".into()));
    wait_until("the notification given up", DEADLINE, || {
        forwarder.stats().notifications_failed == 1
    })
    .await;
    assert_eq!(forwarder.stats().notifications_sent, 0);
    forwarder.shutdown(Duration::ZERO).await;
}

/// A Log whose `raw` carries `marker` (and so may be refused by the emulator's fault).
fn log_with(n: usize, marker: &str) -> Log {
    let raw = format!(r#"{{"Id":"poison-{n}","Operation":"{marker}"}}"#);
    build_log(
        &context(),
        raw.as_bytes(),
        n as u64,
        CONTENT_URI,
        collected(),
    )
}

#[tokio::test]
async fn a_poison_log_is_refused_after_three_lone_attempts_and_the_rest_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (emulator, forwarder) = start_refusing_poison(dir.path()).await;
    let mut sent = logs(0..5);
    let poison = log_with(5, "POISON");
    sent.insert(2, poison.clone());
    sent.extend(logs(6..10));
    let started = std::time::Instant::now();
    let mut receipts = send_all(&forwarder, &sent).await;

    let poison_receipt = receipts.remove(2);
    let outcome = tokio::time::timeout(DEADLINE, poison_receipt)
        .await
        .expect("the poison Log is given up in time");
    let expected_sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(poison.raw.as_bytes()).into()
    };
    match outcome {
        Err(ForwardError::Refused { status, raw_sha256 }) => {
            assert!(status.starts_with("InvalidArgument"), "{status}");
            assert_eq!(
                raw_sha256, expected_sha,
                "the dead letter can name the record"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    all_acked(receipts).await;
    println!(
        "poison Log given up after {:?} (reconnect policy for_test)",
        started.elapsed()
    );
    let stats = forwarder.stats();
    assert_eq!(stats.refused, 1);
    let received = emulator.logs();
    let poison_sends = received.iter().filter(|log| log.id == poison.id).count();
    assert_eq!(
        poison_sends,
        1 + o365_connector::forward::POISON_ATTEMPTS as usize,
        "once with the others, then alone three times"
    );
    assert_all_acked_but(&emulator, &sent, &poison);
}

/// An engine that refuses every stream carrying a Log marked `POISON`, under `dir`, and a
/// forwarder to it with a window of 64.
async fn start_refusing_poison(dir: &Path) -> (EngineEmulator, Forwarder) {
    let socket = dir.join("engine.sock");
    let faults = EngineFaults {
        refuse_marker: Some("POISON".into()),
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    (emulator, start_forwarder(&socket, 64))
}

/// Every Log of `sent` but `poison` was acked by the engine.
fn assert_all_acked_but(emulator: &EngineEmulator, sent: &[Log], poison: &Log) {
    let received = emulator.logs();
    let acked: HashSet<&str> = received
        .iter()
        .filter(|log| log.acked)
        .map(|log| log.id.as_str())
        .collect();
    for log in sent.iter().filter(|log| log.id != poison.id) {
        assert!(acked.contains(log.id.as_str()), "{} acked", log.id);
    }
}

#[tokio::test]
async fn a_batch_resolves_once_with_its_poison_log_named_by_position_and_the_rest_acked() {
    let dir = tempfile::tempdir().unwrap();
    let (emulator, forwarder) = start_refusing_poison(dir.path()).await;
    let mut sent = logs(0..5);
    let poison = log_with(5, "POISON");
    sent.insert(3, poison.clone());
    let encoded: Vec<EncodedLog> = sent.iter().cloned().map(EncodedLog::new).collect();
    let bytes = encoded.iter().map(|log| log.bytes.len()).sum();
    let reservation = tokio::time::timeout(DEADLINE, forwarder.reserve_batch(sent.len(), bytes))
        .await
        .expect("room in time")
        .expect("room");
    let receipt = reservation.send(encoded).await.expect("accepted");
    let outcome = tokio::time::timeout(DEADLINE, receipt)
        .await
        .expect("the batch settles in time")
        .expect("acked but the poison");
    let expected_sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(poison.raw.as_bytes()).into()
    };
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert_eq!(outcome.refused[0].position, 3);
    assert_eq!(outcome.refused[0].raw_sha256, expected_sha);
    assert_all_acked_but(&emulator, &sent, &poison);
    assert_eq!(
        forwarder.stats().in_flight_bytes,
        0,
        "the batch's room is freed once it settled"
    );
}

#[tokio::test]
async fn an_engine_answering_unavailable_is_an_outage_and_never_costs_a_log() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        unavailable_after: Some(1),
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let forwarder = start_forwarder(&socket, 64);
    let sent = logs(0..20);
    let receipts = send_all(&forwarder, &sent).await;
    // Many more failures than a poison Log is allowed: none of them may give one up.
    wait_until("ten streams ended UNAVAILABLE", DEADLINE, || {
        forwarder.stats().reconnects >= 10
    })
    .await;
    emulator.set_faults(EngineFaults::default());
    all_acked(receipts).await;
    assert_eq!(forwarder.stats().refused, 0);
}

#[tokio::test]
async fn a_log_over_the_message_limit_is_never_sent_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let emulator = start_emulator(&socket, EngineFaults::default()).await;
    let forwarder = start_forwarder(&socket, 64);
    let big = log_with(0, &"x".repeat(5 * 1024 * 1024));
    let outcome = forwarder.send(big).await;
    match outcome {
        Err(ForwardError::TooLarge { size, limit }) => {
            assert!(size > 5 * 1024 * 1024);
            assert_eq!(limit, 4 * 1024 * 1024);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let reserved = forwarder.reserve_batch(1, 4 * 1024 * 1024 + 1).await;
    assert!(matches!(reserved, Err(ForwardError::TooLarge { .. })));
    let receipts = send_all(&forwarder, &logs(0..5)).await;
    all_acked(receipts).await;
    assert_eq!(emulator.counts().logs_refused, 0, "the engine never saw it");
    assert_eq!(forwarder.stats().too_large, 2);
}

#[tokio::test]
async fn the_window_holds_no_more_bytes_than_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    // Acks come late enough that the window is full while the fourth Log asks for room.
    let faults = EngineFaults {
        ack_delay: Duration::from_secs(2),
        ..EngineFaults::default()
    };
    let _emulator = start_emulator(&socket, faults).await;
    let mut config = ForwarderConfig::new(&socket);
    config.reconnect = RetryPolicy::for_test();
    config.max_message_bytes = 1024 * 1024;
    config.max_in_flight_bytes = 3 * 1024 * 1024;
    let forwarder = Forwarder::start(config);
    let sent: Vec<Log> = (0..5)
        .map(|n| log_with(n, &"y".repeat(900 * 1024)))
        .collect();
    let size = {
        use prost::Message as _;
        sent[0].encoded_len()
    };
    let mut receipts = Vec::new();
    for log in &sent[..3] {
        receipts.push(forwarder.send(log.clone()).await.expect("room for three"));
    }
    assert_eq!(forwarder.stats().in_flight_bytes, 3 * size as u64);
    let mut fourth = Box::pin(forwarder.send(sent[3].clone()));
    assert!(
        (&mut fourth).now_or_never().is_none(),
        "a fourth Log does not fit in 3 MiB"
    );
    assert!(forwarder.stats().in_flight_bytes <= 3 * 1024 * 1024);
    let receipt = tokio::time::timeout(DEADLINE, fourth)
        .await
        .expect("room once the first is acked")
        .expect("accepted");
    receipts.push(receipt);
    receipts.push(forwarder.send(sent[4].clone()).await.expect("accepted"));
    all_acked(receipts).await;
    assert_eq!(forwarder.stats().in_flight_bytes, 0);
}

#[tokio::test]
async fn a_stall_is_described_while_logs_wait_and_clears_at_the_next_ack() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let faults = EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    };
    let emulator = start_emulator(&socket, faults).await;
    let mut config = ForwarderConfig::new(&socket);
    config.reconnect = RetryPolicy::for_test();
    config.stall_after = Duration::from_millis(300);
    let forwarder = Forwarder::start(config);
    assert_eq!(forwarder.stall(), None, "nothing in flight, no stall");
    let receipts = send_all(&forwarder, &logs(0..3)).await;
    wait_until("the stall shows", DEADLINE, || forwarder.stall().is_some()).await;
    let stall = forwarder.stall().unwrap();
    assert_eq!(stall.unacked, 3);
    let text = stall.to_string();
    assert!(
        text.starts_with("engine stalled: 3 Logs unacknowledged for "),
        "{text}"
    );
    emulator.set_faults(EngineFaults::default());
    let mut receipts = receipts;
    receipts.extend(send_all(&forwarder, &logs(3..4)).await);
    all_acked(receipts).await;
    assert_eq!(forwarder.stall(), None, "the next Ack ends it");
}

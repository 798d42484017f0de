//! The engine emulator against a client written from the spec's field tables: one Ack per
//! Log in order, recording, the output file, and each fault. In-process and as the
//! `emulate engine` command.

mod common;

use std::time::{Duration, Instant};

use common::spec_client::{self, SpecAck, SpecLog, SpecMessage};
use common::{DEADLINE, start_binary, wait_until};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};
use prost::Message as _;

const INPUT: &str = "/plugins.Engine/Input";
const NOTIFY: &str = "/plugins.Engine/Notify";

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|n| format!("log-{n}")).collect()
}

async fn start(dir: &tempfile::TempDir, faults: EngineFaults) -> EngineEmulator {
    let mut config = EngineEmulatorConfig::in_memory(dir.path().join("sockets/engine.sock"));
    config.faults = faults;
    EngineEmulator::start(config)
        .await
        .expect("emulator starts")
}

/// Sends `ids` as Logs on one stream, half-closes, and collects every Ack until the
/// stream ends; returns the acked ids and the final status (None when it ended cleanly).
async fn send_all(
    emulator: &EngineEmulator,
    ids: &[String],
) -> (Vec<String>, Option<tonic::Status>) {
    send_all_to(emulator.socket_path(), ids).await
}

/// [`send_all`] to the emulator listening on `socket` (e.g. the command's).
async fn send_all_to(
    socket: &std::path::Path,
    ids: &[String],
) -> (Vec<String>, Option<tonic::Status>) {
    send_logs(socket, ids.iter().map(|id| spec_client::log(id)).collect()).await
}

/// [`send_all`] with the Logs given whole, to the emulator listening on `socket`.
async fn send_logs(
    socket: &std::path::Path,
    logs: Vec<SpecLog>,
) -> (Vec<String>, Option<tonic::Status>) {
    let channel = spec_client::connect(socket).await.expect("connects");
    let mut acks = spec_client::open::<SpecLog, SpecAck>(channel, INPUT, tokio_stream::iter(logs))
        .await
        .expect("stream opens");
    let mut acked = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, acks.message()).await {
            Ok(Ok(Some(ack))) => acked.push(ack.last_id),
            Ok(Ok(None)) => return (acked, None),
            Ok(Err(status)) => return (acked, Some(status)),
            Err(_) => panic!("no ack or end of stream within the deadline"),
        }
    }
}

#[tokio::test]
async fn independent_client_gets_one_ack_per_log_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    let sent = ids(0..200);
    let (acked, status) = send_all(&emulator, &sent).await;
    assert!(status.is_none(), "clean end, got {status:?}");
    assert_eq!(acked, sent);
    let received = emulator.logs();
    assert_eq!(received.len(), 200);
    assert!(received.iter().all(|log| log.acked));
    let first = &received[0];
    assert_eq!(first.id, "log-0");
    assert_eq!(first.data_type, "o365");
    assert_eq!(first.data_source, "contoso");
    assert_eq!(first.timestamp, "2015-06-29T20:03:19Z");
    assert_eq!(first.tenant_id, "ce66672c-e36d-4761-a8c8-90058fee1a24");
    assert_eq!(first.raw, r#"{"Id":"log-0","Operation":"UserLoggedIn"}"#);
    emulator.shutdown().await;
}

#[tokio::test]
async fn drop_after_aborts_each_stream_at_the_nth_log_without_acking_it() {
    let dir = tempfile::tempdir().unwrap();
    let faults = EngineFaults {
        drop_after: Some(3),
        ..EngineFaults::default()
    };
    let emulator = start(&dir, faults).await;
    for round in 0..2 {
        let sent = ids(round * 10..round * 10 + 5);
        let (acked, status) = send_all(&emulator, &sent).await;
        assert_eq!(acked, sent[..2], "the two before the Nth are acked");
        let status = status.expect("the stream is aborted");
        assert_eq!(status.code(), tonic::Code::Aborted);
    }
    let logs = emulator.logs();
    let third = logs.iter().find(|log| log.id == "log-2").expect("recorded");
    assert!(!third.acked);
    assert!(
        !logs.iter().any(|log| log.id == "log-3"),
        "nothing after the Nth"
    );
    let counts = emulator.counts();
    assert_eq!(counts.logs_acked, 4);
    assert_eq!(counts.logs_received, 6);
    emulator.shutdown().await;
}

#[tokio::test]
async fn no_ack_records_every_log_and_acknowledges_none() {
    let dir = tempfile::tempdir().unwrap();
    let faults = EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    };
    let emulator = start(&dir, faults).await;
    let (acked, status) = send_all(&emulator, &ids(0..5)).await;
    assert!(acked.is_empty());
    assert!(status.is_none());
    let logs = emulator.logs();
    assert_eq!(logs.len(), 5);
    assert!(logs.iter().all(|log| !log.acked));
    emulator.shutdown().await;
}

#[tokio::test]
async fn ack_delay_holds_each_ack_back_and_keeps_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let delay = Duration::from_millis(300);
    let faults = EngineFaults {
        ack_delay: delay,
        ..EngineFaults::default()
    };
    let emulator = start(&dir, faults).await;
    let sent = ids(0..3);
    let started = Instant::now();
    let (acked, _) = send_all(&emulator, &sent).await;
    // A lower bound only: no machine, however loaded, acks before the delay.
    assert!(started.elapsed() >= delay);
    assert_eq!(acked, sent);
    emulator.shutdown().await;
}

#[tokio::test]
async fn faults_changed_at_run_time_apply_to_the_next_log() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    let (acked, _) = send_all(&emulator, &ids(0..2)).await;
    assert_eq!(acked.len(), 2);
    emulator.set_faults(EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    });
    let (acked, _) = send_all(&emulator, &ids(2..4)).await;
    assert!(acked.is_empty());
    emulator.shutdown().await;
}

#[tokio::test]
async fn refused_connections_fail_until_accepted_again() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    emulator.refuse_connections_for(Duration::from_secs(3600));
    let channel = spec_client::connect(emulator.socket_path())
        .await
        .expect("the socket accepts, then closes");
    let refused = spec_client::open::<SpecLog, SpecAck>(
        channel,
        INPUT,
        tokio_stream::iter(vec![spec_client::log("x")]),
    )
    .await;
    assert!(refused.is_err(), "a refused connection carries no stream");
    assert!(emulator.counts().connections_refused >= 1);
    assert_eq!(emulator.counts().logs_received, 0);

    emulator.accept_connections();
    let (acked, _) = send_all(&emulator, &ids(0..1)).await;
    assert_eq!(acked, ["log-0"]);
    emulator.shutdown().await;
}

#[tokio::test]
async fn notify_messages_are_acknowledged_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    let channel = spec_client::connect(emulator.socket_path()).await.unwrap();
    let message = SpecMessage {
        id: "m1".into(),
        timestamp: "2026-01-01T00:00:00Z".into(),
        topic: "integration_failure".into(),
        message: r#"{"error":"x","dataType":"o365","dataSource":"contoso"}"#.into(),
    };
    let mut acks = spec_client::open::<SpecMessage, SpecAck>(
        channel,
        NOTIFY,
        tokio_stream::iter(vec![message]),
    )
    .await
    .unwrap();
    let ack = acks.message().await.unwrap().expect("one ack");
    assert_eq!(ack.last_id, "m1");
    let messages = emulator.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].topic, "integration_failure");
    emulator.shutdown().await;
}

#[tokio::test]
async fn output_file_has_one_line_per_log_and_message_with_proto_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ndjson");
    let mut config = EngineEmulatorConfig::in_memory(dir.path().join("engine.sock"));
    config.out = Some(out.clone());
    config.faults.drop_after = Some(2);
    let emulator = EngineEmulator::start(config).await.unwrap();
    let _ = send_all(&emulator, &ids(0..2)).await;
    let channel = spec_client::connect(emulator.socket_path()).await.unwrap();
    let message = SpecMessage {
        id: "m1".into(),
        topic: "integration_failure".into(),
        message: "{}".into(),
        ..Default::default()
    };
    let mut acks = spec_client::open::<SpecMessage, SpecAck>(
        channel,
        NOTIFY,
        tokio_stream::iter(vec![message]),
    )
    .await
    .unwrap();
    acks.message().await.unwrap().expect("ack");
    emulator.shutdown().await;

    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 3);
    let log = serde_json::json!({
        "id": "log-0", "dataType": "o365", "dataSource": "contoso",
        "timestamp": "2015-06-29T20:03:19Z", "tenantId": "ce66672c-e36d-4761-a8c8-90058fee1a24",
        "raw": r#"{"Id":"log-0","Operation":"UserLoggedIn"}"#, "acked": true
    });
    assert_eq!(lines[0], log);
    assert_eq!(lines[1]["id"], "log-1");
    assert_eq!(lines[1]["acked"], false);
    assert_eq!(
        lines[2],
        serde_json::json!({"notify": true, "id": "m1", "topic": "integration_failure", "message": "{}"})
    );
}

#[tokio::test]
async fn emulate_engine_command_serves_until_sigterm_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("deep/dir/engine.sock");
    let out = dir.path().join("out.ndjson");
    let running = start_binary(&[
        "emulate",
        "engine",
        "--socket",
        socket.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--drop-after",
        "3",
    ])
    .await;
    assert_eq!(
        running.ready_line,
        format!("listening unix:{}", socket.display())
    );

    let channel = spec_client::connect(&socket).await.unwrap();
    let logs: Vec<SpecLog> = ids(0..3).iter().map(|id| spec_client::log(id)).collect();
    let mut acks = spec_client::open::<SpecLog, SpecAck>(channel, INPUT, tokio_stream::iter(logs))
        .await
        .unwrap();
    let mut acked = Vec::new();
    while let Ok(Some(ack)) = acks.message().await {
        acked.push(ack.last_id);
    }
    assert_eq!(acked, ["log-0", "log-1"]);
    wait_until("three lines in the output file", DEADLINE, || {
        std::fs::read_to_string(&out).is_ok_and(|text| text.lines().count() == 3)
    })
    .await;
    assert_eq!(running.terminate().await, Some(0));
    assert!(!socket.exists(), "the socket file is removed on exit");
}

/// A Log whose protobuf encoding is exactly `size` bytes, its `raw` padded with `x`.
fn log_of_size(id: &str, size: usize) -> SpecLog {
    let mut log = spec_client::log(id);
    let overhead = log.encoded_len() - log.raw.len();
    // The length prefix of `raw` grows with it: try the few paddings around the estimate.
    for padding in size.saturating_sub(overhead + 8)..=size.saturating_sub(overhead) {
        log.raw = "x".repeat(padding);
        if log.encoded_len() == size {
            return log;
        }
    }
    panic!("no padding gives a Log of {size} bytes");
}

/// A Log carrying `marker` in its raw record.
fn log_with(id: &str, marker: &str) -> SpecLog {
    let mut log = spec_client::log(id);
    log.raw = format!(r#"{{"Id":"{id}","Operation":"{marker}"}}"#);
    log
}

fn recorded<'a>(
    logs: &'a [o365_connector::emulator::engine::ReceivedLog],
    id: &str,
) -> Vec<&'a o365_connector::emulator::engine::ReceivedLog> {
    logs.iter().filter(|log| log.id == id).collect()
}

#[tokio::test]
async fn oversized_log_ends_the_stream_as_go_grpc_does_after_acking_the_earlier_logs() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    // 5 MiB of raw: the size in Go's own example message.
    let logs = vec![
        spec_client::log("log-0"),
        spec_client::log("log-1"),
        log_of_size("log-2", 5_243_086),
        spec_client::log("log-3"),
    ];
    let (acked, status) = send_logs(emulator.socket_path(), logs).await;
    assert_eq!(acked, ["log-0", "log-1"]);
    let status = status.expect("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "grpc: received message larger than max (5243086 vs. 4194304)"
    );
    let logs = emulator.logs();
    let oversized = recorded(&logs, "log-2");
    assert_eq!(oversized.len(), 1, "recorded once");
    assert!(!oversized[0].acked);
    assert!(
        recorded(&logs, "log-3").is_empty(),
        "nothing after it is read"
    );
    assert_eq!(emulator.counts().logs_refused, 1);
    assert_eq!(emulator.counts().logs_acked, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn log_of_exactly_the_message_limit_is_acked_and_one_byte_more_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineEmulatorConfig::in_memory(dir.path().join("engine.sock"));
    config.max_message_bytes = 1024;
    let emulator = EngineEmulator::start(config).await.unwrap();
    let (acked, status) = send_logs(emulator.socket_path(), vec![log_of_size("at", 1024)]).await;
    assert_eq!(acked, ["at"]);
    assert!(status.is_none(), "clean end, got {status:?}");
    let (acked, status) = send_logs(emulator.socket_path(), vec![log_of_size("over", 1025)]).await;
    assert!(acked.is_empty());
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "grpc: received message larger than max (1025 vs. 1024)"
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn refuse_marker_refuses_the_poison_log_every_time_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let faults = EngineFaults {
        refuse_marker: Some("POISON".into()),
        ..EngineFaults::default()
    };
    let emulator = start(&dir, faults).await;
    let logs = vec![
        spec_client::log("log-0"),
        spec_client::log("log-1"),
        log_with("log-2", "POISON"),
        spec_client::log("log-3"),
    ];
    let (acked, status) = send_logs(emulator.socket_path(), logs).await;
    assert_eq!(acked, ["log-0", "log-1"]);
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "engine emulator: refused log log-2");

    // Resent first on a new stream, as a retrying client would: refused again.
    let logs = vec![log_with("log-2", "POISON"), spec_client::log("log-3")];
    let (acked, status) = send_logs(emulator.socket_path(), logs).await;
    assert!(acked.is_empty());
    assert_eq!(
        status.expect("refused").code(),
        tonic::Code::InvalidArgument
    );

    let logs = emulator.logs();
    let poison = recorded(&logs, "log-2");
    assert_eq!(poison.len(), 2, "recorded each time it was sent");
    assert!(poison.iter().all(|log| !log.acked));
    assert!(recorded(&logs, "log-3").is_empty());
    assert_eq!(emulator.counts().logs_refused, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn refuse_marker_set_at_run_time_applies_to_the_next_log() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir, EngineFaults::default()).await;
    let (acked, _) = send_logs(emulator.socket_path(), vec![log_with("a", "POISON")]).await;
    assert_eq!(acked, ["a"], "no marker yet");
    emulator.set_faults(EngineFaults {
        refuse_marker: Some("POISON".into()),
        ..EngineFaults::default()
    });
    let (acked, status) = send_logs(emulator.socket_path(), vec![log_with("b", "POISON")]).await;
    assert!(acked.is_empty());
    assert_eq!(
        status.expect("refused").code(),
        tonic::Code::InvalidArgument
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn unavailable_after_ends_each_stream_with_an_outage_status_at_the_nth_log() {
    let dir = tempfile::tempdir().unwrap();
    let faults = EngineFaults {
        unavailable_after: Some(2),
        ..EngineFaults::default()
    };
    let emulator = start(&dir, faults).await;
    for round in 0..2 {
        let sent = ids(round * 10..round * 10 + 4);
        let (acked, status) = send_all(&emulator, &sent).await;
        assert_eq!(acked, sent[..1]);
        let status = status.expect("the stream ends");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "engine emulator: unavailable-after fault");
    }
    let logs = emulator.logs();
    assert!(!recorded(&logs, "log-1")[0].acked);
    assert!(recorded(&logs, "log-2").is_empty());
    assert_eq!(emulator.counts().logs_refused, 2);
    emulator.shutdown().await;
}

#[tokio::test]
async fn emulate_engine_command_takes_the_message_limit_and_the_new_faults() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let running = start_binary(&[
        "emulate",
        "engine",
        "--socket",
        socket.to_str().unwrap(),
        "--max-message-bytes",
        "2048",
        "--refuse-marker",
        "POISON",
        "--unavailable-after",
        "3",
    ])
    .await;

    let logs = vec![spec_client::log("log-0"), log_of_size("big", 2049)];
    let (acked, status) = send_logs(&socket, logs).await;
    assert_eq!(acked, ["log-0"]);
    let status = status.expect("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        "grpc: received message larger than max (2049 vs. 2048)"
    );

    let (acked, status) = send_logs(&socket, vec![log_with("bad", "POISON")]).await;
    assert!(acked.is_empty());
    assert_eq!(
        status.expect("refused").message(),
        "engine emulator: refused log bad"
    );

    let (acked, status) = send_all_to(&socket, &ids(0..3)).await;
    assert_eq!(acked, ["log-0", "log-1"]);
    assert_eq!(status.expect("outage").code(), tonic::Code::Unavailable);
    assert_eq!(running.terminate().await, Some(0));
}

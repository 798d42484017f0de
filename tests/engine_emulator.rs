//! The engine emulator against a client written from the spec's field tables: one Ack per
//! Log in order, recording, the output file, and each fault. In-process and as the
//! `emulate engine` command.

mod common;

use std::time::{Duration, Instant};

use common::spec_client::{self, SpecAck, SpecLog, SpecMessage};
use common::{DEADLINE, start_binary, wait_until};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig, EngineFaults};

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
    let channel = spec_client::connect(emulator.socket_path())
        .await
        .expect("connects");
    let logs: Vec<SpecLog> = ids.iter().map(|id| spec_client::log(id)).collect();
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

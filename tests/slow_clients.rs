//! Slow clients cannot hold the webhook listener: headers must arrive within
//! `server.header_read_timeout_secs`, and a request whose body trickles is answered 408
//! after `server.request_timeout_secs`.

mod common;

use std::time::{Duration, Instant};

use common::DEADLINE;
use o365_connector::config::Config;
use o365_connector::service::{self, ServiceOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const WEBHOOK_SECRET: &str = "slow-clients-webhook-secret";

async fn start(dir: &std::path::Path) -> service::RunningService {
    let text = common::listener_config(
        dir,
        "listen = \"127.0.0.1:0\"\nheader_read_timeout_secs = 1\nrequest_timeout_secs = 1\n\
         webhook_secret = { env = \"SLOW_WEBHOOK_SECRET\" }",
        "http://127.0.0.1:9",
        "SLOW_SECRET",
    );
    let config = Config::from_toml_with_env(
        &text,
        [
            ("SLOW_SECRET".to_string(), "s".to_string()),
            (
                "SLOW_WEBHOOK_SECRET".to_string(),
                WEBHOOK_SECRET.to_string(),
            ),
        ],
    )
    .unwrap();
    service::start(config, ServiceOptions::default())
        .await
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&received).into_owned(),
            Ok(Ok(read)) => received.extend_from_slice(&buffer[..read]),
            Err(_) => panic!("the server kept a slow connection open past the deadline"),
        }
    }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path()).await;
    let mut stream = TcpStream::connect(service.address).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "POST /{TENANT} HTTP/1.1\r\nHost: connector\r\nContent-Type: application/json\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    read_until_closed(&mut stream).await;
    // A lower bound only: the server waited at least the configured time.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}",
        started.elapsed()
    );
    service.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_trickles_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let service = start(dir.path()).await;
    // Authenticated: an unauthenticated one is refused before its body is read.
    let auth_id =
        o365_connector::webhook::WebhookSecrets::new(WEBHOOK_SECRET.into(), None).auth_id(TENANT);
    let mut stream = TcpStream::connect(service.address).await.unwrap();
    stream
        .write_all(
            format!("POST /{TENANT} HTTP/1.1\r\nHost: connector\r\nContent-Type: application/json\r\nWebhook-AuthID: {auth_id}\r\nContent-Length: 1000\r\n\r\n[{{\"tenantId\":")
                .as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let queue = service.queue.clone();
    assert_eq!(
        o365_connector::queue::ContentQueue::stats(queue.as_ref())
            .await
            .unwrap()
            .pending,
        0
    );
    service.stop().await;
}

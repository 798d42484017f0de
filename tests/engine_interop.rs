//! The engine emulator against a gRPC C-core client (Python grpcio, C++, Ruby …), whose
//! request is rebuilt here frame by frame over the real Unix socket, so no Python is needed.
//!
//! What C-core sends was captured from grpcio 1.85.3 (grpc-c 58.0.0) dialing
//! `unix:/tmp/pyc/cap.sock`: the socket path without its leading `/`, slashes
//! percent-encoded, as `:authority` (`tmp%2Fpyc%2Fcap.sock`). h2, the emulator's HTTP/2 layer,
//! resets such a stream with `PROTOCOL_ERROR` before the service sees it (a `%` in a host is
//! not a valid URI authority) and has no option to relax that; the README tells C-core users
//! to set `grpc.default_authority`. These tests pin both halves: if h2 ever accepts the
//! default, the first fails and the README's advice can go.

mod common;

use std::path::Path;

use common::DEADLINE;
use common::spec_client::{self, SpecAck};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const PROTOCOL_ERROR: u32 = 0x1;

/// The `:authority` C-core derives from a `unix:PATH` target with an absolute path.
fn c_core_default_authority(socket: &Path) -> String {
    let path = socket.to_str().expect("a UTF-8 path");
    path.trim_start_matches('/').replace('/', "%2F")
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("a small frame");
    let mut bytes = length.to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend(payload);
    bytes
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn hpack_integer(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, no Huffman coding (RFC 7541 §6.2.2).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        for text in [name, value] {
            hpack_integer(&mut block, 0x00, 7, text.len());
            block.extend(text.as_bytes());
        }
    }
    block
}

/// How the emulator answered the request on stream 1.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// `RST_STREAM` with this error code.
    Reset(u32),
    /// `GOAWAY` with this error code.
    GoAway(u32),
    /// Trailers ended the stream after these Acks.
    Ended(Vec<String>),
}

/// Sends one `Input` call as C-core does, with `authority`, carrying one Log `id`, and reads
/// frames until stream 1 is reset or ended.
async fn c_core_input_call(socket: &Path, authority: &str, id: &str) -> Outcome {
    let mut connection = UnixStream::connect(socket).await.expect("connects");
    let headers = header_block(&[
        (":path", "/plugins.Engine/Input"),
        (":authority", authority),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-accept-encoding", "identity, deflate, gzip"),
        (
            "user-agent",
            "grpc-python/1.85.3 grpc-c/58.0.0 (linux; chttp2)",
        ),
    ]);
    let log = spec_client::log(id).encode_to_vec();
    let mut message = vec![0u8];
    message.extend(u32::try_from(log.len()).unwrap().to_be_bytes());
    message.extend(log);
    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(HEADERS, END_HEADERS, 1, &headers));
    request.extend(frame(DATA, END_STREAM, 1, &message));
    connection.write_all(&request).await.unwrap();
    tokio::time::timeout(DEADLINE, read_outcome(&mut connection))
        .await
        .expect("stream 1 ends within the deadline")
}

async fn read_outcome(connection: &mut UnixStream) -> Outcome {
    let mut acks = Vec::new();
    loop {
        let mut header = [0u8; 9];
        connection.read_exact(&mut header).await.expect("a frame");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        connection
            .read_exact(&mut payload)
            .await
            .expect("a payload");
        let code = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        match (kind, stream) {
            (SETTINGS, 0) if flags & ACK == 0 => {
                connection
                    .write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .unwrap();
            }
            (GOAWAY, 0) => return Outcome::GoAway(code(4)),
            (RST_STREAM, 1) => return Outcome::Reset(code(0)),
            (DATA, 1) if !payload.is_empty() => {
                let ack = SpecAck::decode(&payload[5..]).expect("an Ack");
                acks.push(ack.last_id);
            }
            (HEADERS, 1) if flags & END_STREAM != 0 => return Outcome::Ended(acks),
            _ => {}
        }
    }
}

async fn start(dir: &tempfile::TempDir) -> EngineEmulator {
    let config = EngineEmulatorConfig::in_memory(dir.path().join("engine.sock"));
    EngineEmulator::start(config)
        .await
        .expect("emulator starts")
}

#[tokio::test]
async fn c_core_default_authority_for_a_unix_path_is_reset_with_protocol_error() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir).await;
    let authority = c_core_default_authority(emulator.socket_path());
    assert!(authority.contains("%2F"), "{authority}");
    let outcome = c_core_input_call(emulator.socket_path(), &authority, "py-0").await;
    assert_eq!(outcome, Outcome::Reset(PROTOCOL_ERROR));
    let counts = emulator.counts();
    assert_eq!(counts.streams_opened, 0, "the service never saw the call");
    assert_eq!(counts.logs_received, 0);
    emulator.shutdown().await;
}

#[tokio::test]
async fn c_core_request_with_default_authority_localhost_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let emulator = start(&dir).await;
    let outcome = c_core_input_call(emulator.socket_path(), "localhost", "py-0").await;
    assert_eq!(outcome, Outcome::Ended(vec!["py-0".to_string()]));
    let logs = emulator.logs();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].acked);
    emulator.shutdown().await;
}

//! The UTMStack engine's wire contract and the transport to it.
//!
//! The types are generated at build time from `proto/plugins.proto` (package `plugins`,
//! service `Engine`), which is wire-compatible with the engine's own file: same names,
//! field numbers and types. [`unix_channel`] opens a gRPC channel over the engine's Unix
//! socket (plain HTTP/2, no TLS, no auth metadata, as the engine expects).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

#[allow(missing_docs, clippy::all)]
mod generated {
    tonic::include_proto!("plugins");
}

pub use generated::engine_client::EngineClient;
pub use generated::engine_server::{Engine, EngineServer};
pub use generated::{Ack, Log, Message};

/// Full gRPC path of the method input plugins stream Logs to.
pub const INPUT_METHOD: &str = "/plugins.Engine/Input";

/// Opens a lazy gRPC channel to a server listening on the Unix socket `path`.
///
/// The channel connects on first use and reconnects after a broken connection; the
/// authority in the URI is a placeholder that the Unix transport ignores.
pub fn unix_channel(path: impl AsRef<Path>) -> Channel {
    let path: PathBuf = path.as_ref().to_path_buf();
    Endpoint::from_static("http://engine.invalid").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// Hand-built protobuf bytes of a length-delimited string field.
    fn string_field(number: u8, value: &str) -> Vec<u8> {
        let mut bytes = vec![(number << 3) | 2, value.len() as u8];
        bytes.extend_from_slice(value.as_bytes());
        bytes
    }

    #[test]
    fn log_encoding_matches_the_engine_field_numbers() {
        let log = Log {
            id: "abc".into(),
            data_type: "o365".into(),
            data_source: "contoso".into(),
            timestamp: "2015-06-29T20:03:19Z".into(),
            tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
            raw: r#"{"Id":"1"}"#.into(),
        };
        let expected: Vec<u8> = [
            string_field(1, "abc"),
            string_field(2, "o365"),
            string_field(3, "contoso"),
            string_field(4, "2015-06-29T20:03:19Z"),
            string_field(5, "ce66672c-e36d-4761-a8c8-90058fee1a24"),
            string_field(6, r#"{"Id":"1"}"#),
        ]
        .concat();
        assert_eq!(log.encode_to_vec(), expected);
        assert_eq!(Log::decode(expected.as_slice()).unwrap(), log);
    }

    #[test]
    fn ack_and_message_encoding_match_the_engine_field_numbers() {
        let ack = Ack {
            last_id: "x1".into(),
        };
        assert_eq!(ack.encode_to_vec(), string_field(1, "x1"));
        let message = Message {
            id: "m".into(),
            timestamp: "t".into(),
            topic: "integration_failure".into(),
            message: "{}".into(),
        };
        let expected = [
            string_field(1, "m"),
            string_field(2, "t"),
            string_field(3, "integration_failure"),
            string_field(4, "{}"),
        ]
        .concat();
        assert_eq!(message.encode_to_vec(), expected);
    }
}

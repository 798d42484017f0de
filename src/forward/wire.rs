//! `Engine/Input` with Logs encoded once, by the worker that built them.
//!
//! The window keeps each Log until the engine acknowledges it, and puts it on the stream
//! again after a reconnect. Kept as its encoded protobuf bytes, a Log costs one encoding, in
//! the worker's task (so encoding spreads over the runtime's threads instead of the single
//! stream task), and every send or resend is a reference-counted copy of those bytes. The
//! bytes on the wire are exactly prost's encoding of the Log, so the engine sees no change.

use bytes::{BufMut, Bytes};
use prost::Message as _;
use tokio_stream::Stream;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::proto::{Ack, Log};

/// A Log as its protobuf message; its id (what acks name) is read from the message itself,
/// so a Log costs no allocation besides its bytes (and those of a batch share one buffer).
#[derive(Clone, Debug)]
pub struct EncodedLog {
    /// The whole Log, protobuf-encoded.
    pub bytes: Bytes,
}

impl EncodedLog {
    /// Encodes `log`.
    pub fn new(log: Log) -> Self {
        Self {
            bytes: Bytes::from(log.encode_to_vec()),
        }
    }

    /// `Log.id`: field 1, which prost (and [`LogEncoder`](super::log::LogEncoder)) write
    /// first; empty when the Log has none (proto3 leaves an empty string out).
    pub fn id(&self) -> &[u8] {
        let bytes = &self.bytes[..];
        if bytes.first() != Some(&ID_KEY) {
            return &[];
        }
        let mut rest = &bytes[1..];
        let Ok(length) = prost::encoding::decode_varint(&mut rest) else {
            return &[];
        };
        usize::try_from(length)
            .ok()
            .and_then(|length| rest.get(..length))
            .unwrap_or(&[])
    }
}

/// The key of `Log.id`: field 1, length-delimited.
const ID_KEY: u8 = (1 << 3) | 2;

/// Opens `Engine/Input` on `grpc`, sending `logs` (each one encoded Log).
pub async fn open_input(
    grpc: &mut tonic::client::Grpc<Channel>,
    logs: impl Stream<Item = Bytes> + Send + 'static,
) -> Result<Response<Streaming<Ack>>, Status> {
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(format!("the engine is not reachable: {error}")))?;
    let path = PathAndQuery::from_static("/plugins.Engine/Input");
    grpc.streaming(Request::new(logs), path, InputCodec).await
}

/// Sends encoded Logs as they are; decodes Acks as prost does.
struct InputCodec;

impl Codec for InputCodec {
    type Encode = Bytes;
    type Decode = Ack;
    type Encoder = EncodedEncoder;
    type Decoder = <ProstCodec<Log, Ack> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<Log, Ack>::default().decoder()
    }
}

struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        destination.put(item);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_log_is_prosts_encoding_of_it_and_keeps_its_id() {
        let log = Log {
            id: "abc".into(),
            data_type: "o365".into(),
            data_source: "group".into(),
            timestamp: "2026-01-02T03:04:05Z".into(),
            tenant_id: "t".into(),
            raw: "{\"Id\":\"1\"}".into(),
        };
        let encoded = EncodedLog::new(log.clone());
        assert_eq!(encoded.id(), b"abc");
        let without_id = EncodedLog::new(Log {
            id: String::new(),
            ..log.clone()
        });
        assert_eq!(without_id.id(), b"");
        assert_eq!(encoded.bytes, Bytes::from(log.encode_to_vec()));
        assert_eq!(Log::decode(encoded.bytes).unwrap(), log);
    }
}

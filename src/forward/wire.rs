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

/// A Log as its protobuf message, with its id (what acks name).
#[derive(Clone, Debug)]
pub struct EncodedLog {
    /// `Log.id`.
    pub id: String,
    /// The whole Log, protobuf-encoded.
    pub bytes: Bytes,
}

impl EncodedLog {
    /// Encodes `log`.
    pub fn new(log: Log) -> Self {
        let bytes = Bytes::from(log.encode_to_vec());
        Self { id: log.id, bytes }
    }
}

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
        assert_eq!(encoded.id, "abc");
        assert_eq!(encoded.bytes, Bytes::from(log.encode_to_vec()));
        assert_eq!(Log::decode(encoded.bytes).unwrap(), log);
    }
}

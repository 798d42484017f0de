//! The engine: acknowledges every Log as it arrives; optionally timestamps each ack by id.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::Stream;
use o365_connector::proto::{Ack, Engine, EngineServer, Log, Message};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
pub struct EngineState {
    pub acked: AtomicU64,
    pub ack_times: Mutex<Option<HashMap<String, Instant>>>,
}

#[derive(Clone)]
pub struct BenchEngine(pub Arc<EngineState>);

pub type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Engine for BenchEngine {
    type InputStream = AckStream;
    type NotifyStream = AckStream;

    async fn input(&self, request: Request<Streaming<Log>>) -> Result<Response<AckStream>, Status> {
        let state = self.0.clone();
        let (acks, stream) = tokio::sync::mpsc::channel(4096);
        let mut logs = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(log)) = logs.message().await {
                if acks
                    .send(Ok(Ack {
                        last_id: log.id.clone(),
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
                if let Some(times) = state.ack_times.lock().unwrap().as_mut() {
                    times.insert(log.id, Instant::now());
                }
                state.acked.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn notify(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<AckStream>, Status> {
        let (acks, stream) = tokio::sync::mpsc::channel(64);
        let mut messages = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(message)) = messages.message().await {
                if acks
                    .send(Ok(Ack {
                        last_id: message.id,
                    }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

pub async fn start_engine(socket: &Path) -> Arc<EngineState> {
    let state = Arc::new(EngineState::default());
    let listener = tokio::net::UnixListener::bind(socket).unwrap();
    let service = EngineServer::new(BenchEngine(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    state
}

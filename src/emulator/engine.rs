//! Emulator of the UTMStack engine: `plugins.Engine/Input` and `Notify` on a Unix socket.
//!
//! Behaviour (the engine's, as UTMStack's own `inputs` plugin serves the same contract):
//! every Log received on an `Input` stream is answered with `Ack{lastId: log.id}`, in the
//! order received; every Message on a `Notify` stream likewise. Everything received is
//! recorded, with whether it was acknowledged, in memory (for in-process tests) and, when
//! an output file is given, as one JSON line each (for the command and for other
//! processes). A record's line is written once its fate is known: after its Ack was sent,
//! or when it will never be acknowledged.
//!
//! Faults, settable at start and at run time ([`EngineFaults`]):
//! - `drop_after`: each stream is aborted when its Nth Log arrives; that Log is recorded
//!   unacknowledged, the ones before it are acknowledged first.
//! - `unavailable_after`: likewise, but the stream ends with `Unavailable`, the status of an
//!   engine going away (an outage, which a client retries).
//! - `refuse_marker`: a Log whose `raw` contains this text ends its stream with
//!   `InvalidArgument` ("engine emulator: refused log ID"), a poison record: it is refused
//!   every time it is sent, after the Logs before it on the stream are acknowledged.
//! - `ack_delay`: each Ack is sent this long after its Log arrived (order kept).
//! - `no_ack`: Logs are recorded and never acknowledged.
//! - [`EngineEmulator::refuse_connections_for`]: new connections are closed at once for a
//!   period, as a restarting engine would refuse them.
//!
//! Message limit, as a Go gRPC server has it: a Log whose serialized size exceeds
//! [`EngineEmulatorConfig::max_message_bytes`] (Go's default receive limit, 4 MiB) ends its
//! stream with `ResourceExhausted` and Go's own message, `grpc: received message larger than
//! max (SIZE vs. LIMIT)`, after the Logs before it are acknowledged. The Log is recorded as
//! received and unacknowledged (the engine never processes it). tonic's own decoding limit is
//! lifted so that this check, not tonic's (`OutOfRange`, another message), answers. The size
//! is the Log's protobuf encoding as prost computes it, which equals the gRPC frame's length
//! for every canonical encoder (Go, prost, C-core).
//!
//! In every case a refused Log (over the limit, poison, or the Nth under a stream fault) is
//! recorded unacknowledged and counted in [`EngineCounts::logs_refused`]; nothing after it on
//! that stream is read.
//!
//! Interop: the HTTP/2 layer (h2) rejects a request whose `:authority` is not a valid URI
//! authority with `RST_STREAM(PROTOCOL_ERROR)`, before the service sees it, and has no option
//! to relax that. gRPC C-core clients (Python grpcio, C++, Ruby …) send the socket path,
//! percent-encoded, for `unix:/path` targets (`tmp%2Fengine.sock`), which is such an authority;
//! they must set `grpc.default_authority` (e.g. `localhost`); tonic clients work as they are.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::proto::{Ack, Engine, EngineServer, Log, Message};

/// Fault injection settings of the engine emulator. The default injects nothing.
#[derive(Clone, Debug, Default)]
pub struct EngineFaults {
    /// Abort each `Input` stream when its Nth Log arrives (that Log is not acknowledged).
    pub drop_after: Option<u64>,
    /// Delay between receiving a Log and sending its Ack.
    pub ack_delay: Duration,
    /// Never acknowledge Logs.
    pub no_ack: bool,
    /// End each `Input` stream with `Unavailable` when its Nth Log arrives (that Log is not
    /// acknowledged): an outage as a client sees it. Default: off.
    pub unavailable_after: Option<u64>,
    /// Refuse, with `InvalidArgument`, every Log whose `raw` contains this text, each time it
    /// is sent, ending its stream. Default: off.
    pub refuse_marker: Option<String>,
}

/// The receive limit of a Go gRPC server (`grpc.MaxRecvMsgSize`'s default): 4 MiB.
pub const GO_GRPC_MAX_RECEIVE_BYTES: usize = 4 * 1024 * 1024;

/// How to start an [`EngineEmulator`].
#[derive(Clone, Debug)]
pub struct EngineEmulatorConfig {
    /// Unix socket to listen on; its directory is created, a stale socket replaced.
    pub socket: PathBuf,
    /// Append one JSON line per received Log and Message to this file.
    pub out: Option<PathBuf>,
    /// Keep every received Log and Message in memory for [`EngineEmulator::logs`] (tests).
    /// Off for long runs of the command, where the file is the record.
    pub keep_in_memory: bool,
    /// Faults to inject from the start.
    pub faults: EngineFaults,
    /// Largest serialized Log accepted, in bytes; a larger one ends its stream with
    /// `ResourceExhausted`. Default [`GO_GRPC_MAX_RECEIVE_BYTES`] (4,194,304), as the engine.
    pub max_message_bytes: usize,
}

impl EngineEmulatorConfig {
    /// Defaults for in-process tests: records in memory, no file, no faults.
    pub fn in_memory(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            out: None,
            keep_in_memory: true,
            faults: EngineFaults::default(),
            max_message_bytes: GO_GRPC_MAX_RECEIVE_BYTES,
        }
    }
}

/// A Log as the emulator received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceivedLog {
    /// `Log.id`.
    pub id: String,
    /// `Log.dataType`.
    #[serde(rename = "dataType")]
    pub data_type: String,
    /// `Log.dataSource`.
    #[serde(rename = "dataSource")]
    pub data_source: String,
    /// `Log.timestamp`.
    pub timestamp: String,
    /// `Log.tenantId`.
    #[serde(rename = "tenantId")]
    pub tenant_id: String,
    /// `Log.raw`, the audit record.
    pub raw: String,
    /// Whether the emulator acknowledged it.
    pub acked: bool,
}

/// A Message (from `Notify`) as the emulator received it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReceivedMessage {
    /// Always true: tells Message lines from Log lines in the output file.
    pub notify: bool,
    /// `Message.id`.
    pub id: String,
    /// `Message.topic`.
    pub topic: String,
    /// `Message.message`, a JSON body.
    pub message: String,
}

/// Counters of what the emulator saw, cheap to read while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineCounts {
    /// Logs received.
    pub logs_received: u64,
    /// Logs acknowledged.
    pub logs_acked: u64,
    /// Messages received on `Notify`.
    pub messages_received: u64,
    /// `Input` and `Notify` streams opened.
    pub streams_opened: u64,
    /// Connections closed at once while refusing.
    pub connections_refused: u64,
    /// Logs that ended their stream with an error status instead of an Ack (over the
    /// message limit, carrying the refuse marker, or the Nth under a stream fault).
    pub logs_refused: u64,
}

struct Recorder {
    keep_in_memory: bool,
    logs: Vec<ReceivedLog>,
    messages: Vec<ReceivedMessage>,
    out: Option<BufWriter<File>>,
    counts: EngineCounts,
}

struct Shared {
    recorder: Mutex<Recorder>,
    faults: Mutex<EngineFaults>,
    max_message_bytes: usize,
    refuse_until: Mutex<Option<Instant>>,
    /// Bumped on every change to the recorder, so waiters wake up.
    changed: watch::Sender<u64>,
    shutdown: CancellationToken,
}

impl Shared {
    fn faults(&self) -> EngineFaults {
        lock(&self.faults).clone()
    }

    fn record(&self, update: impl FnOnce(&mut Recorder)) {
        update(&mut lock(&self.recorder));
        self.changed.send_modify(|generation| *generation += 1);
    }

    fn record_log(&self, log: Log, acked: bool) {
        let received = ReceivedLog {
            id: log.id,
            data_type: log.data_type,
            data_source: log.data_source,
            timestamp: log.timestamp,
            tenant_id: log.tenant_id,
            raw: log.raw,
            acked,
        };
        self.record(|recorder| {
            if acked {
                recorder.counts.logs_acked += 1;
            }
            recorder.write_line(&received);
            if recorder.keep_in_memory {
                recorder.logs.push(received);
            }
        });
    }

    fn refusing(&self) -> bool {
        let mut until = lock(&self.refuse_until);
        match *until {
            Some(deadline) if Instant::now() < deadline => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }
}

impl Recorder {
    fn write_line(&mut self, line: &impl Serialize) {
        let Some(out) = self.out.as_mut() else {
            return;
        };
        // The file is the emulator's report; a failed write is logged, not fatal.
        let result = serde_json::to_writer(&mut *out, line)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(error) = result {
            tracing::error!(%error, "engine emulator: cannot append to the output file");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running engine emulator. Dropping it does not stop it; call [`EngineEmulator::shutdown`].
pub struct EngineEmulator {
    shared: Arc<Shared>,
    socket: PathBuf,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineEmulatorError {
    /// The socket's directory, the socket or the output file could not be set up.
    #[error("cannot set up {path}: {source}")]
    Setup {
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A wait for a condition reached its deadline.
    #[error("timed out after {0:?} waiting for the engine emulator")]
    Timeout(Duration),
}

impl EngineEmulator {
    /// Binds the socket and starts serving. The socket accepts connections when this returns.
    pub async fn start(config: EngineEmulatorConfig) -> Result<Self, EngineEmulatorError> {
        let listener = bind_unix(&config.socket)?;
        let out = match &config.out {
            Some(path) => Some(BufWriter::new(open_append(path)?)),
            None => None,
        };
        let shared = Arc::new(Shared {
            recorder: Mutex::new(Recorder {
                keep_in_memory: config.keep_in_memory,
                logs: Vec::new(),
                messages: Vec::new(),
                out,
                counts: EngineCounts::default(),
            }),
            faults: Mutex::new(config.faults),
            max_message_bytes: config.max_message_bytes,
            refuse_until: Mutex::new(None),
            changed: watch::channel(0).0,
            shutdown: CancellationToken::new(),
        });
        let incoming = {
            let shared = shared.clone();
            UnixListenerStream::new(listener).filter_map(move |connection| {
                let accept = !shared.refusing();
                if !accept {
                    // Dropping the accepted stream closes it before any byte is read.
                    shared.record(|recorder| recorder.counts.connections_refused += 1);
                }
                std::future::ready(accept.then_some(connection))
            })
        };
        let service = EngineService {
            shared: shared.clone(),
        };
        let shutdown = shared.shutdown.clone();
        // Unbounded here so that the emulator's own limit, with Go's status, always answers.
        let service = EngineServer::new(service).max_decoding_message_size(usize::MAX);
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()),
        );
        Ok(Self {
            shared,
            socket: config.socket,
            server,
        })
    }

    /// The socket the emulator listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Every Log received so far, in order of receipt (with `keep_in_memory`).
    pub fn logs(&self) -> Vec<ReceivedLog> {
        lock(&self.shared.recorder).logs.clone()
    }

    /// The Logs received from position `start` on (with `keep_in_memory`): lets a waiter
    /// look only at what is new instead of copying everything each time.
    pub fn logs_from(&self, start: usize) -> Vec<ReceivedLog> {
        let recorder = lock(&self.shared.recorder);
        recorder
            .logs
            .get(start..)
            .map(<[ReceivedLog]>::to_vec)
            .unwrap_or_default()
    }

    /// Every Message received so far on `Notify` (with `keep_in_memory`).
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        lock(&self.shared.recorder).messages.clone()
    }

    /// Counters of what was received, acknowledged and refused.
    pub fn counts(&self) -> EngineCounts {
        lock(&self.shared.recorder).counts
    }

    /// Replaces the fault settings; streams already open see the change on their next Log.
    pub fn set_faults(&self, faults: EngineFaults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Closes every new connection at once for `period`; connections already open go on.
    pub fn refuse_connections_for(&self, period: Duration) {
        *lock(&self.shared.refuse_until) = Some(Instant::now() + period);
    }

    /// Accepts new connections again, ending a [`EngineEmulator::refuse_connections_for`].
    pub fn accept_connections(&self) {
        *lock(&self.shared.refuse_until) = None;
    }

    /// Waits until `condition` holds over the counters, or `deadline` passes.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        mut condition: impl FnMut(&EngineCounts) -> bool,
    ) -> Result<EngineCounts, EngineEmulatorError> {
        let mut changes = self.shared.changed.subscribe();
        let wait = async {
            loop {
                let counts = self.counts();
                if condition(&counts) {
                    return counts;
                }
                if changes.changed().await.is_err() {
                    // The sender lives as long as `self`; unreachable, but never spin.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| EngineEmulatorError::Timeout(deadline))
    }

    /// Stops serving: open streams end, the socket file is removed.
    pub async fn shutdown(self) {
        self.shared.shutdown.cancel();
        // Open streams end on cancellation, so the graceful stop is quick; bound it anyway.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn bind_unix(socket: &Path) -> Result<UnixListener, EngineEmulatorError> {
    let setup_error = |source| EngineEmulatorError::Setup {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(setup_error)?;
    }
    // A socket file left by an earlier run would make bind fail with EADDRINUSE.
    if std::fs::symlink_metadata(socket)
        .map(|meta| std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()))
        .unwrap_or(false)
    {
        std::fs::remove_file(socket).map_err(setup_error)?;
    }
    UnixListener::bind(socket).map_err(setup_error)
}

fn open_append(path: &Path) -> Result<File, EngineEmulatorError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| EngineEmulatorError::Setup {
            path: path.to_path_buf(),
            source,
        })
}

type AckStream = Pin<Box<dyn Stream<Item = Result<Ack, Status>> + Send>>;

struct EngineService {
    shared: Arc<Shared>,
}

/// What the receiving half of a stream hands to its acknowledging half, in order.
enum Pending {
    /// A Log to acknowledge once it is due.
    Acknowledge { log: Log, received_at: Instant },
    /// A refused Log: recorded unacknowledged, then the stream ends with `status`.
    Refuse { log: Log, status: Status },
}

#[tonic::async_trait]
impl Engine for EngineService {
    type InputStream = AckStream;
    type NotifyStream = AckStream;

    async fn input(
        &self,
        request: Request<Streaming<Log>>,
    ) -> Result<Response<Self::InputStream>, Status> {
        let shared = self.shared.clone();
        shared.record(|recorder| recorder.counts.streams_opened += 1);
        let (acks, ack_stream) = mpsc::channel(1024);
        // Bounded: a slow acknowledger (ack delay) pushes back on the client's stream.
        let (pending_tx, pending_rx) = mpsc::channel(4096);
        tokio::spawn(receive_logs(
            shared.clone(),
            request.into_inner(),
            pending_tx,
        ));
        tokio::spawn(acknowledge_logs(shared, pending_rx, acks));
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_stream))))
    }

    async fn notify(
        &self,
        request: Request<Streaming<Message>>,
    ) -> Result<Response<Self::NotifyStream>, Status> {
        let shared = self.shared.clone();
        shared.record(|recorder| recorder.counts.streams_opened += 1);
        let (acks, ack_stream) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut messages = request.into_inner();
            loop {
                let message = tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    next = messages.message() => match next {
                        Ok(Some(message)) => message,
                        _ => return,
                    },
                };
                let ack = Ack {
                    last_id: message.id.clone(),
                };
                let received = ReceivedMessage {
                    notify: true,
                    id: message.id,
                    topic: message.topic,
                    message: message.message,
                };
                shared.record(|recorder| {
                    recorder.counts.messages_received += 1;
                    recorder.write_line(&received);
                    if recorder.keep_in_memory {
                        recorder.messages.push(received);
                    }
                });
                if acks.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(ack_stream))))
    }
}

/// Reads Logs off one `Input` stream and queues them for acknowledgement in order.
async fn receive_logs(
    shared: Arc<Shared>,
    mut logs: Streaming<Log>,
    pending: mpsc::Sender<Pending>,
) {
    let mut received_on_stream = 0u64;
    loop {
        let log = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            next = logs.message() => match next {
                Ok(Some(log)) => log,
                // End of stream or a transport error: nothing more will arrive.
                _ => return,
            },
        };
        received_on_stream += 1;
        shared.record(|recorder| recorder.counts.logs_received += 1);
        let faults = shared.faults();
        let refusal = refusal_of(&log, shared.max_message_bytes, &faults).or_else(|| {
            // `no_ack` keeps the stream open whatever its position faults say.
            (!faults.no_ack)
                .then(|| stream_fault_at(received_on_stream, &faults))
                .flatten()
        });
        if faults.no_ack && refusal.is_none() {
            shared.record_log(log, false);
            continue;
        }
        let refused = refusal.is_some();
        let item = match refusal {
            Some(status) => Pending::Refuse { log, status },
            None => Pending::Acknowledge {
                log,
                received_at: Instant::now(),
            },
        };
        if let Err(mpsc::error::SendError(item)) = pending.send(item).await {
            // The acknowledging half has stopped (the client went away): still on record.
            let (Pending::Acknowledge { log, .. } | Pending::Refuse { log, .. }) = item;
            shared.record_log(log, false);
            return;
        }
        if refused {
            return;
        }
    }
}

/// The status a Log is refused with for what it is: over the message limit (Go's status and
/// message, checked first as Go checks it before decoding), or carrying the refuse marker.
fn refusal_of(log: &Log, max_message_bytes: usize, faults: &EngineFaults) -> Option<Status> {
    let size = prost::Message::encoded_len(log);
    if size > max_message_bytes {
        return Some(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({size} vs. {max_message_bytes})"
        )));
    }
    let marker = faults.refuse_marker.as_deref()?;
    log.raw
        .contains(marker)
        .then(|| Status::invalid_argument(format!("engine emulator: refused log {}", log.id)))
}

/// The status a stream ends with at its `nth` Log under `drop_after` or `unavailable_after`.
fn stream_fault_at(nth: u64, faults: &EngineFaults) -> Option<Status> {
    if faults.drop_after == Some(nth) {
        return Some(Status::aborted("engine emulator: drop-after fault"));
    }
    (faults.unavailable_after == Some(nth))
        .then(|| Status::unavailable("engine emulator: unavailable-after fault"))
}

/// Sends the Acks of one `Input` stream, each when due, and ends it at a refused Log.
/// Logs whose Ack could not be sent (the client went away) are recorded unacknowledged.
async fn acknowledge_logs(
    shared: Arc<Shared>,
    mut pending: mpsc::Receiver<Pending>,
    acks: mpsc::Sender<Result<Ack, Status>>,
) {
    let mut unsendable: VecDeque<Log> = VecDeque::new();
    while let Some(item) = pending.recv().await {
        match item {
            Pending::Acknowledge { log, received_at } => {
                let due = received_at + shared.faults().ack_delay;
                tokio::select! {
                    _ = shared.shutdown.cancelled() => { unsendable.push_back(log); break; }
                    _ = tokio::time::sleep_until(due.into()) => {}
                }
                let ack = Ack {
                    last_id: log.id.clone(),
                };
                if acks.send(Ok(ack)).await.is_ok() {
                    shared.record_log(log, true);
                } else {
                    unsendable.push_back(log);
                    break;
                }
            }
            Pending::Refuse { log, status } => {
                shared.record(|recorder| recorder.counts.logs_refused += 1);
                shared.record_log(log, false);
                let _ = acks.send(Err(status)).await;
                break;
            }
        }
    }
    pending.close();
    while let Ok(item) = pending.try_recv() {
        let (Pending::Acknowledge { log, .. } | Pending::Refuse { log, .. }) = item;
        unsendable.push_back(log);
    }
    for log in unsendable {
        shared.record_log(log, false);
    }
}

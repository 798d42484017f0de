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
//! - `ack_delay`: each Ack is sent this long after its Log arrived (order kept).
//! - `no_ack`: Logs are recorded and never acknowledged.
//! - [`EngineEmulator::refuse_connections_for`]: new connections are closed at once for a
//!   period, as a restarting engine would refuse them.

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
}

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
}

impl EngineEmulatorConfig {
    /// Defaults for in-process tests: records in memory, no file, no faults.
    pub fn in_memory(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            out: None,
            keep_in_memory: true,
            faults: EngineFaults::default(),
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
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(EngineServer::new(service))
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
    /// The Nth Log under `drop_after`: recorded unacknowledged, then the stream aborts.
    Abort { log: Log },
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
        if faults.no_ack {
            shared.record_log(log, false);
            continue;
        }
        let abort = faults.drop_after == Some(received_on_stream);
        let item = if abort {
            Pending::Abort { log }
        } else {
            Pending::Acknowledge {
                log,
                received_at: Instant::now(),
            }
        };
        if pending.send(item).await.is_err() || abort {
            return;
        }
    }
}

/// Sends the Acks of one `Input` stream, each when due, and aborts it under `drop_after`.
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
            Pending::Abort { log } => {
                shared.record_log(log, false);
                let _ = acks
                    .send(Err(Status::aborted("engine emulator: drop-after fault")))
                    .await;
                break;
            }
        }
    }
    pending.close();
    while let Ok(item) = pending.try_recv() {
        let (Pending::Acknowledge { log, .. } | Pending::Abort { log }) = item;
        unsendable.push_back(log);
    }
    for log in unsendable {
        shared.record_log(log, false);
    }
}

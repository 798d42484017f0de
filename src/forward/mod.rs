//! The engine forwarder: every Log reaches the UTMStack engine and is acknowledged by it.
//!
//! Owns the bidi `plugins.Engine/Input` stream over the engine's Unix socket, the window of
//! Logs sent but not yet acknowledged, reconnection, resending, and the best-effort
//! `Engine/Notify` channel. Builds Logs from audit records in [`log`].
//!
//! # Guarantees
//!
//! - **Window and backpressure.** At most `max_in_flight` Logs are accepted and not yet
//!   acknowledged. [`Forwarder::send`] waits for room in the window (first come, first
//!   served), so a slow or absent engine slows the workers, then the queue, and never
//!   grows memory.
//! - **Acknowledgement.** A Log is done only when the engine acked it. An Ack for id X
//!   confirms the earliest unacknowledged Log with id X on the current stream and every Log
//!   sent before it (the same record repeated in one blob has the same id, so "earliest"
//!   matters). An Ack naming no Log in the window is counted (`unmatched_acks`), logged at
//!   most once a minute, and otherwise ignored.
//! - **Order.** [`AckReceipt`]s resolve in the order the forwarder accepted the Logs; for
//!   one caller that is the order of its `send` calls. A worker forwarding records
//!   `0..n` of a blob therefore knows, when receipt `i` resolves, that records `0..=i` are
//!   acked (`queue.record_acked(i + 1)`), and when the last one resolves, the blob is done.
//! - **Batches.** [`Forwarder::reserve_batch`] takes room for several Logs at once and
//!   [`BatchReservation::send`] accepts them as one submission with one [`BatchReceipt`]:
//!   each Log is in the window, on the stream, acked and resent exactly as a lone one, and
//!   the receipt resolves once all of them left the window, naming those refused as poison
//!   by position ([`BatchOutcome`]). The batch's room is freed when it settles, so the
//!   bounds hold with batches as with lone Logs. This is what the workers use: one wait,
//!   one hand-off and one wake-up per batch instead of per record.
//! - **Nothing dropped.** When the stream fails (error status, end of stream, transport
//!   error, refused connection) the forwarder reconnects with backoff and first resends
//!   every unacknowledged Log in the original order, then goes on. It never gives up and
//!   never exits the process. Logs in flight at a failure may reach the engine twice. A
//!   stream that stays open but stops acknowledging is not abandoned (resending would only
//!   duplicate): the window fills and backpressure holds the callers until acks resume or
//!   the stream breaks.
//! - **Message limit.** A Log whose encoding is larger than `max_message_bytes` (the
//!   engine's gRPC receive limit, 4 MiB by default as in Go's gRPC) is never put on a
//!   stream: [`Forwarder::send`] answers [`ForwardError::TooLarge`], and the caller
//!   dead-letters the record by reference. One such Log would otherwise end every stream it
//!   is sent on, forever.
//! - **Poison Logs.** An *outage* is a refused connection, a transport error, the status
//!   `UNAVAILABLE` or a stream the engine ends without a status: reconnect and resend, never
//!   give up. Any other status (`RESOURCE_EXHAUSTED`, `INVALID_ARGUMENT`, `INTERNAL`, …)
//!   may be the fault of a Log: the next stream carries the first unacknowledged Log
//!   *alone*; when it is acked, the rest follows on the same stream. When it fails
//!   [`POISON_ATTEMPTS`] times in a row alone with a non-outage status, its receipt
//!   resolves to [`ForwardError::Refused`] (counted in `refused`), it leaves the window
//!   and the stream goes on with the next. The delay one poison Log causes is at most
//!   `POISON_ATTEMPTS + 1` reconnect delays (each at most the reconnect policy's longest,
//!   10 s with [`RetryPolicy::aggressive`], so 40 s) plus as many round trips.
//! - **Memory bounded in bytes.** Besides `max_in_flight` Logs, the window holds at most
//!   `max_in_flight_bytes` of encoded Logs; a caller waits for room in both before its Log
//!   is built ([`Forwarder::reserve_batch`]), so the submission queue, the window and the
//!   request stream (which share each Log's one buffer) never hold more.
//! - **Stalls are visible.** While Logs are in flight and none is acknowledged for
//!   `stall_after`, [`Forwarder::stall`] describes it (how many, how long, the last stream
//!   error); it clears at the next Ack.
//! - **Shutdown.** [`Forwarder::shutdown`] stops accepting Logs, waits up to its deadline
//!   for the window to be acknowledged, then closes the stream and reports how many Logs
//!   were left unacknowledged; their receipts resolve to
//!   [`ForwardError::NotAcknowledged`], so their content items are not completed and the
//!   queue delivers them again. Dropping every handle without a shutdown stops at once the
//!   same way.
//!
//! # Structure
//!
//! One task (`stream`) owns the stream and the window (no lock is held across an await);
//! callers talk to it through a bounded channel and a semaphore whose permits are the
//! window's slots. Notifications have their own task and stream (`notify`), so they
//! never wait behind Logs. Outages are logged once (WARN when the engine becomes
//! unreachable, INFO with the outage length on recovery), not per retry. Recovery is the
//! first Ack after reconnecting (or a stream opening with nothing to resend), so an engine
//! that accepts streams and drops them at once is one outage, retried ever more slowly.
//! Each such occurrence is one event in `events` (its log line and its counter).

mod events;
pub mod log;
mod notify;
mod stream;
pub mod wire;

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use self::log::{DATA_TYPE, LogContext, build_log, log_id};
use crate::clock::Clock;
use crate::proto::{EngineClient, Log, Message, unix_channel};
use crate::retry::RetryPolicy;

/// Default size of the window of unacknowledged Logs.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2048;

/// Default engine message limit: gRPC's default receive limit (4 MiB), which a Go gRPC
/// server such as UTMStack's engine has unless configured otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Default stall threshold: Logs in flight and no Ack for this long is a stall.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);

/// Times the first unacknowledged Log is sent alone and refused (non-outage status)
/// before it is given up as poison.
pub const POISON_ATTEMPTS: u32 = 3;

/// Notifications waiting for the notify task; more are dropped and counted.
const NOTIFY_QUEUE: usize = 64;

/// The byte bound of the window for a message limit: eight messages of the largest size,
/// and never less than 32 MiB (so small records are bounded by `max_in_flight` instead).
pub fn default_max_in_flight_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes.saturating_mul(8).max(32 * 1024 * 1024)
}

/// How to start a [`Forwarder`].
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// The engine's gRPC Unix socket.
    pub socket: PathBuf,
    /// Logs accepted and not yet acknowledged, at most. Default: [`DEFAULT_MAX_IN_FLIGHT`].
    pub max_in_flight: NonZeroUsize,
    /// The largest encoded Log the engine accepts, in bytes. Default:
    /// [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// Encoded bytes of the Logs accepted and not yet acknowledged, at most; at least
    /// `max_message_bytes` (a smaller value is raised to it). Default:
    /// [`default_max_in_flight_bytes`].
    pub max_in_flight_bytes: usize,
    /// Logs in flight with no Ack for this long is a stall ([`Forwarder::stall`]).
    /// Default: [`DEFAULT_STALL_AFTER`].
    pub stall_after: Duration,
    /// Delays between attempts to open a stream. Default: [`RetryPolicy::aggressive`];
    /// a policy that gives up is treated as retrying at its longest delay.
    pub reconnect: RetryPolicy,
    /// Time source for notification timestamps.
    pub clock: Clock,
}

impl ForwarderConfig {
    /// Defaults for the engine at `socket`: a window of 2048 Logs and 32 MiB, a 4 MiB
    /// message limit, a 60 s stall threshold, aggressive reconnects, the system clock.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            max_in_flight: NonZeroUsize::new(DEFAULT_MAX_IN_FLIGHT).unwrap_or(NonZeroUsize::MIN),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_in_flight_bytes: default_max_in_flight_bytes(DEFAULT_MAX_MESSAGE_BYTES),
            stall_after: DEFAULT_STALL_AFTER,
            reconnect: RetryPolicy::aggressive(),
            clock: Clock::system(),
        }
    }
}

/// Why a Log was not (or not yet) confirmed by the engine. Messages never carry a Log's
/// content: DLP records hold the secrets they matched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    /// The forwarder is shutting down and accepts no more Logs.
    #[error("the engine forwarder is shutting down; leave the content item for redelivery")]
    Closed,
    /// The forwarder stopped before the engine acknowledged the Log.
    #[error(
        "the engine forwarder stopped before the engine acknowledged the log; leave the content item for redelivery"
    )]
    NotAcknowledged,
    /// The encoded Log is larger than the engine accepts; it was never sent.
    #[error(
        "the log is {size} bytes encoded, over the engine's message limit of {limit} bytes (engine.max_message_bytes)"
    )]
    TooLarge {
        /// The encoded size (or, from [`Forwarder::reserve_batch`], the size asked for).
        size: usize,
        /// `max_message_bytes`.
        limit: usize,
    },
    /// The engine refused the Log [`POISON_ATTEMPTS`] times, sent alone on fresh streams,
    /// with a status that is not an outage: it was given up as poison.
    #[error("the engine refused the log {POISON_ATTEMPTS} times on its own: {status}")]
    Refused {
        /// The engine's last status, as `Code: message`.
        status: String,
        /// SHA-256 of the record (`Log.raw`), so the dead letter can name it.
        raw_sha256: [u8; 32],
    },
}

/// Resolves when the engine acknowledged one Log: `Ok(())`; [`ForwardError::Refused`]
/// when the engine refused it as poison; or [`ForwardError::NotAcknowledged`] if the
/// forwarder stopped first. Receipts resolve in the order their Logs were accepted.
///
/// Polling a receipt is exempt from tokio's cooperative budget, so checking many resolved
/// receipts in a row (`now_or_never` in a loop) sees each one resolved.
#[must_use = "a Log is only safe once its receipt resolves"]
pub struct AckReceipt {
    acked: tokio::task::Unconstrained<oneshot::Receiver<Result<(), ForwardError>>>,
}

impl std::fmt::Debug for AckReceipt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("AckReceipt")
    }
}

impl Future for AckReceipt {
    type Output = Result<(), ForwardError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.acked)
            .poll(context)
            .map(|result| result.unwrap_or(Err(ForwardError::NotAcknowledged)))
    }
}

/// What a shutdown left undone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Logs accepted but not acknowledged when the forwarder stopped.
    pub unacked: u64,
}

/// A snapshot of the forwarder's counters, for metrics and `/readyz` detail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    /// Logs put on an open stream for the first time.
    pub logs_sent: u64,
    /// Logs acknowledged by the engine.
    pub logs_acked: u64,
    /// Logs put on an open stream again after an earlier stream failed with them unacked.
    pub resent: u64,
    /// Streams opened after a failure (attempts, successful or not).
    pub reconnects: u64,
    /// Acks that named no Log in the window.
    pub unmatched_acks: u64,
    /// Logs in the window (accepted, not yet acknowledged).
    pub in_flight: u64,
    /// Encoded bytes reserved by the Logs in the window and those being built for it.
    pub in_flight_bytes: u64,
    /// Logs refused by the engine as poison and given up ([`ForwardError::Refused`]).
    pub refused: u64,
    /// Logs turned away before sending for being over the message limit.
    pub too_large: u64,
    /// How long Logs have been in flight without any Ack (since the window last became
    /// non-empty or the last Ack, whichever is later); `None` while the window is empty.
    pub unacked_for: Option<Duration>,
    /// Why the last stream failed, while no Ack has come since.
    pub last_error: Option<String>,
    /// Whether a stream to the engine is open now.
    pub engine_connected: bool,
    /// Since when the engine has been unreachable, when it is (from start until the first
    /// stream opens, too).
    pub disconnected_for: Option<Duration>,
    /// Notifications the engine acknowledged.
    pub notifications_sent: u64,
    /// Notifications given up after their attempts.
    pub notifications_failed: u64,
    /// Notifications dropped because the notify queue was full or shut down.
    pub notifications_dropped: u64,
}

/// Counters shared by the handle and the tasks.
#[derive(Debug, Default)]
struct Counters {
    logs_sent: AtomicU64,
    logs_acked: AtomicU64,
    resent: AtomicU64,
    reconnects: AtomicU64,
    unmatched_acks: AtomicU64,
    in_flight: AtomicU64,
    refused: AtomicU64,
    too_large: AtomicU64,
    engine_connected: AtomicBool,
    /// The Log stream failed or closed since it last opened: while it is, a delivered
    /// notification says nothing about it.
    log_stream_down: AtomicBool,
    disconnected_since: Mutex<Option<Instant>>,
    /// Since when Logs have waited for an Ack (see [`ForwarderStats::unacked_for`]).
    waiting_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    notifications_sent: AtomicU64,
    notifications_failed: AtomicU64,
    notifications_dropped: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    /// The Log stream opened (`true`) or failed or closed (`false`).
    fn set_connected(&self, connected: bool) {
        let since = lock(&self.disconnected_since);
        self.log_stream_down.store(!connected, Ordering::Relaxed);
        self.mark_connected(connected, since);
    }

    /// Not connected yet: no stream has opened, and none has failed.
    fn set_starting(&self) {
        self.mark_connected(false, lock(&self.disconnected_since));
    }

    /// The engine acknowledged a notification: it is reachable, so until the Log stream
    /// opens (it opens with the first Log) or fails, the engine counts as connected.
    fn note_notification_delivered(&self) {
        let since = lock(&self.disconnected_since);
        if !self.log_stream_down.load(Ordering::Relaxed) {
            self.mark_connected(true, since);
        }
    }

    fn mark_connected(&self, connected: bool, mut since: MutexGuard<'_, Option<Instant>>) {
        self.engine_connected.store(connected, Ordering::Relaxed);
        match (connected, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// Progress (or its absence) of the window: `waiting` is whether Logs are in flight
    /// after the change.
    fn set_waiting(&self, waiting: bool, progressed: bool) {
        let mut since = lock(&self.waiting_since);
        match (waiting, *since) {
            (false, _) => *since = None,
            (true, None) => *since = Some(Instant::now()),
            (true, Some(_)) if progressed => *since = Some(Instant::now()),
            (true, Some(_)) => {}
        }
        if progressed {
            *lock(&self.last_error) = None;
        }
    }

    fn set_last_error(&self, reason: &str) {
        *lock(&self.last_error) = Some(reason.to_owned());
    }

    fn snapshot(&self, window_bytes: &Semaphore, max_in_flight_bytes: usize) -> ForwarderStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let since = *lock(&self.disconnected_since);
        let free_bytes = window_bytes.available_permits().min(max_in_flight_bytes);
        ForwarderStats {
            logs_sent: read(&self.logs_sent),
            logs_acked: read(&self.logs_acked),
            resent: read(&self.resent),
            reconnects: read(&self.reconnects),
            unmatched_acks: read(&self.unmatched_acks),
            in_flight: read(&self.in_flight),
            in_flight_bytes: (max_in_flight_bytes - free_bytes) as u64,
            refused: read(&self.refused),
            too_large: read(&self.too_large),
            unacked_for: lock(&self.waiting_since).map(|since| since.elapsed()),
            last_error: lock(&self.last_error).clone(),
            engine_connected: self.engine_connected.load(Ordering::Relaxed),
            disconnected_for: since.map(|since| since.elapsed()),
            notifications_sent: read(&self.notifications_sent),
            notifications_failed: read(&self.notifications_failed),
            notifications_dropped: read(&self.notifications_dropped),
        }
    }
}

/// Logs on their way into the window: one with its room and its receipt's sender, or a
/// batch whose room and receipt its members share.
enum Submission {
    One {
        log: wire::EncodedLog,
        acked: oneshot::Sender<Result<(), ForwardError>>,
        room: Room,
    },
    Batch {
        logs: Vec<wire::EncodedLog>,
        shared: Arc<BatchShared>,
    },
}

impl Submission {
    /// How many Logs it carries.
    fn len(&self) -> usize {
        match self {
            Self::One { .. } => 1,
            Self::Batch { logs, .. } => logs.len(),
        }
    }
}

/// How a Log in the window tells its sender that it left: its own receipt, or its share of
/// a batch's.
enum Completion {
    One {
        acked: oneshot::Sender<Result<(), ForwardError>>,
        /// Frees the window slot and bytes when the entry is dropped.
        _room: Room,
    },
    Member {
        shared: Arc<BatchShared>,
        /// Its position in the batch.
        position: usize,
    },
}

impl Completion {
    /// The engine acked the Log (`Ok`) or it was given up as poison (`Refused`).
    fn resolve(self, result: Result<(), ForwardError>) {
        match self {
            // The caller may have stopped waiting; the Log is settled either way.
            Self::One { acked, .. } => drop(acked.send(result)),
            Self::Member { shared, position } => shared.settle(position, result),
        }
    }
}

/// What the members of one batch share: how many are still in the window, those refused,
/// the receipt's sender and the batch's room (freed once every member is settled). Dropped
/// with the last member: an unsettled batch's receipt then resolves to
/// [`ForwardError::NotAcknowledged`].
struct BatchShared {
    state: Mutex<BatchState>,
}

struct BatchState {
    unsettled: usize,
    refused: Vec<RefusedLog>,
    acked: Option<oneshot::Sender<Result<BatchOutcome, ForwardError>>>,
    room: Option<Room>,
}

impl BatchShared {
    fn settle(&self, position: usize, result: Result<(), ForwardError>) {
        let mut state = lock(&self.state);
        if let Err(ForwardError::Refused { status, raw_sha256 }) = result {
            state.refused.push(RefusedLog {
                position,
                status,
                raw_sha256,
            });
        }
        state.unsettled = state.unsettled.saturating_sub(1);
        if state.unsettled == 0 {
            state.room = None;
            let refused = std::mem::take(&mut state.refused);
            if let Some(acked) = state.acked.take() {
                let _ = acked.send(Ok(BatchOutcome { refused }));
            }
        }
    }
}

/// How a batch left the window: every Log acked but those the engine refused as poison.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The Logs given up as poison ([`ForwardError::Refused`]), in the order they left.
    pub refused: Vec<RefusedLog>,
}

/// One Log of a batch refused by the engine as poison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLog {
    /// Its position in the batch.
    pub position: usize,
    /// The engine's last status, as `Code: message`.
    pub status: String,
    /// SHA-256 of the record (`Log.raw`), so the dead letter can name it.
    pub raw_sha256: [u8; 32],
}

/// Resolves once every Log of a batch left the window: `Ok` with those refused as poison,
/// or [`ForwardError::NotAcknowledged`] when the forwarder stopped first (some of them may
/// have been acked: the caller sends the batch again, at most a batch of duplicates).
/// Receipts resolve in the order their batches were accepted, as [`AckReceipt`]s do, and
/// polling one is exempt from tokio's cooperative budget too.
#[must_use = "a batch is only safe once its receipt resolves"]
pub struct BatchReceipt {
    acked: tokio::task::Unconstrained<oneshot::Receiver<Result<BatchOutcome, ForwardError>>>,
}

impl std::fmt::Debug for BatchReceipt {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BatchReceipt")
    }
}

impl Future for BatchReceipt {
    type Output = Result<BatchOutcome, ForwardError>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.acked)
            .poll(context)
            .map(|result| result.unwrap_or(Err(ForwardError::NotAcknowledged)))
    }
}

/// Room in the window for a batch of Logs, taken by [`Forwarder::reserve_batch`] before
/// they are built. Dropping it frees the room.
#[must_use = "the room is freed when the reservation is dropped"]
#[derive(Debug)]
pub struct BatchReservation {
    forwarder: Forwarder,
    room: Room,
    logs: usize,
    bytes: usize,
}

impl BatchReservation {
    /// Accepts `logs` (at most the reserved count, of at most the reserved bytes in all)
    /// into the window as one submission; returns the batch's receipt. Fails with
    /// [`ForwardError::TooLarge`] when they are over the reservation (nothing is sent),
    /// and with [`ForwardError::Closed`] once a shutdown has begun.
    pub async fn send(self, logs: Vec<wire::EncodedLog>) -> Result<BatchReceipt, ForwardError> {
        let size: usize = logs.iter().map(|log| log.bytes.len()).sum();
        let limit = self.forwarder.inner.max_message_bytes;
        let too_large = logs.iter().any(|log| log.bytes.len() > limit);
        if too_large || size > self.bytes || logs.len() > self.logs {
            Counters::add(&self.forwarder.inner.counters.too_large, 1);
            return Err(ForwardError::TooLarge {
                size,
                limit: self.bytes,
            });
        }
        let (acked, receipt) = oneshot::channel();
        let receipt = BatchReceipt {
            acked: tokio::task::unconstrained(receipt),
        };
        if logs.is_empty() {
            let _ = acked.send(Ok(BatchOutcome::default()));
            return Ok(receipt);
        }
        let shared = Arc::new(BatchShared {
            state: Mutex::new(BatchState {
                unsettled: logs.len(),
                refused: Vec::new(),
                acked: Some(acked),
                room: Some(self.room),
            }),
        });
        self.forwarder
            .inner
            .submissions
            .send(Submission::Batch { logs, shared })
            .await
            .map_err(|_| ForwardError::Closed)?;
        Ok(receipt)
    }
}

/// A Log's room in the window: one slot and its bytes, freed when dropped.
#[derive(Debug)]
struct Room {
    _slot: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// Handle on the forwarder; cheap to clone, shared by all workers.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

struct Inner {
    window: Arc<Semaphore>,
    max_in_flight: usize,
    window_bytes: Arc<Semaphore>,
    max_message_bytes: usize,
    max_in_flight_bytes: usize,
    stall_after: Duration,
    submissions: mpsc::Sender<Submission>,
    drain_by: watch::Sender<Option<tokio::time::Instant>>,
    notifications: mpsc::Sender<Message>,
    notify_stop: CancellationToken,
    counters: Arc<Counters>,
    clock: Clock,
    stream_task: Mutex<Option<JoinHandle<ShutdownReport>>>,
    notify_task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Forwarder")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Forwarder {
    /// Starts the stream and notify tasks; connects lazily. Call inside a Tokio runtime.
    pub fn start(config: ForwarderConfig) -> Self {
        let channel = unix_channel(&config.socket);
        let client = EngineClient::new(channel.clone());
        let max_in_flight = config.max_in_flight.get();
        let max_in_flight_bytes = config
            .max_in_flight_bytes
            .max(config.max_message_bytes)
            .min(Semaphore::MAX_PERMITS);
        let counters = Arc::new(Counters::default());
        counters.set_starting();
        let (submissions, submissions_rx) = mpsc::channel(max_in_flight);
        let (drain_by, drain_by_rx) = watch::channel(None);
        let stream_task = tokio::spawn(
            stream::StreamTask::new(
                tonic::client::Grpc::new(channel),
                submissions_rx,
                drain_by_rx,
                counters.clone(),
                config.reconnect,
                max_in_flight,
            )
            .run(),
        );
        let (notifications, notifications_rx) = mpsc::channel(NOTIFY_QUEUE);
        let notify_stop = CancellationToken::new();
        let notify_task = tokio::spawn(notify::run(
            client,
            notifications_rx,
            notify_stop.clone(),
            counters.clone(),
            config.reconnect,
        ));
        Self {
            inner: Arc::new(Inner {
                window: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                window_bytes: Arc::new(Semaphore::new(max_in_flight_bytes)),
                max_message_bytes: config.max_message_bytes,
                max_in_flight_bytes,
                stall_after: config.stall_after,
                submissions,
                drain_by,
                notifications,
                notify_stop,
                counters,
                clock: config.clock,
                stream_task: Mutex::new(Some(stream_task)),
                notify_task: Mutex::new(Some(notify_task)),
            }),
        }
    }

    /// Accepts `log` into the window, waiting for room, and returns the receipt that
    /// resolves when the engine acknowledged it. Fails with [`ForwardError::TooLarge`]
    /// when its encoding is over the message limit (it is never sent), and with
    /// [`ForwardError::Closed`] once a shutdown has begun.
    pub async fn send(&self, log: Log) -> Result<AckReceipt, ForwardError> {
        let encoded = wire::EncodedLog::new(log);
        let size = encoded.bytes.len();
        let room = self.take_room(1, size).await?;
        self.submit(encoded, room).await
    }

    /// Waits for room in the window for a batch of `logs` Logs of at most `bytes` encoded
    /// bytes in all (`logs` slots, at most the window's, and `bytes` of the byte bound):
    /// one wait, one submission and one receipt for the batch instead of one per Log.
    /// Fails with [`ForwardError::TooLarge`] at once when `bytes` is over the message
    /// limit (a batch holds at most one message's worth, so it always fits the byte
    /// bound), and with [`ForwardError::Closed`] once a shutdown has begun.
    pub async fn reserve_batch(
        &self,
        logs: usize,
        bytes: usize,
    ) -> Result<BatchReservation, ForwardError> {
        let logs = logs.clamp(1, self.max_batch_logs());
        let room = self.take_room(logs, bytes).await?;
        Ok(BatchReservation {
            forwarder: self.clone(),
            room,
            logs,
            bytes,
        })
    }

    /// The most Logs one batch may reserve: the window's size.
    pub fn max_batch_logs(&self) -> usize {
        self.inner.max_in_flight
    }

    /// The largest encoded Log the engine accepts (`max_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        self.inner.max_message_bytes
    }

    /// Waits for `logs` slots (the callers keep it between one and the window's size) and
    /// `bytes` of the byte bound; refuses at once, counted, what no message could carry.
    async fn take_room(&self, logs: usize, bytes: usize) -> Result<Room, ForwardError> {
        let limit = self.inner.max_message_bytes;
        if bytes > limit {
            Counters::add(&self.inner.counters.too_large, 1);
            return Err(ForwardError::TooLarge { size: bytes, limit });
        }
        // Never more than the bounds (the byte bound is at least the limit), so this
        // cannot wait forever; at most u32::MAX at a time, as the semaphore takes it.
        let byte_permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        let slot_permits = u32::try_from(logs).unwrap_or(u32::MAX);
        let slot = self
            .inner
            .window
            .clone()
            .acquire_many_owned(slot_permits)
            .await
            .map_err(|_| ForwardError::Closed)?;
        let bytes = self
            .inner
            .window_bytes
            .clone()
            .acquire_many_owned(byte_permits)
            .await
            .map_err(|_| ForwardError::Closed)?;
        Ok(Room {
            _slot: slot,
            _bytes: bytes,
        })
    }

    async fn submit(&self, log: wire::EncodedLog, room: Room) -> Result<AckReceipt, ForwardError> {
        let (acked, receipt) = oneshot::channel();
        let submission = Submission::One { log, acked, room };
        self.inner
            .submissions
            .send(submission)
            .await
            .map_err(|_| ForwardError::Closed)?;
        Ok(AckReceipt {
            acked: tokio::task::unconstrained(receipt),
        })
    }

    /// Queues a notification for `Engine/Notify` (`message_json` is its JSON body).
    /// Best effort: never waits; returns false when it was dropped (queue full or shut
    /// down). Delivery is retried a few times, then given up and counted.
    pub fn notify(&self, topic: &str, message_json: String) -> bool {
        let message = Message {
            id: notify::new_message_id(),
            timestamp: self
                .inner
                .clock
                .now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            topic: topic.to_owned(),
            message: message_json,
        };
        let queued = self.inner.notifications.try_send(message).is_ok();
        if !queued {
            events::NotificationDropped.emit(&self.inner.counters);
        }
        queued
    }

    /// Reports an integration failure of `data_source` to the engine (topic
    /// `integration_failure`, body `{"error", "dataType": "o365", "dataSource"}`).
    /// `error` must not contain record content or secrets. Same contract as
    /// [`Forwarder::notify`].
    pub fn notify_integration_failure(&self, data_source: &str, error: &str) -> bool {
        let body = serde_json::json!({
            "error": error,
            "dataType": DATA_TYPE,
            "dataSource": data_source,
        });
        self.notify(notify::INTEGRATION_FAILURE, body.to_string())
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ForwarderStats {
        self.inner
            .counters
            .snapshot(&self.inner.window_bytes, self.inner.max_in_flight_bytes)
    }

    /// The stall of the moment: Logs in flight and no Ack for at least `stall_after`.
    pub fn stall(&self) -> Option<Stall> {
        let stats = self.stats();
        let unacked_for = stats.unacked_for?;
        (unacked_for >= self.inner.stall_after && stats.in_flight > 0).then_some(Stall {
            unacked: stats.in_flight,
            unacked_for,
            last_error: stats.last_error,
        })
    }

    /// Stops accepting Logs, waits up to `deadline` for the window to be acknowledged,
    /// then closes the streams. Returns what was left unacknowledged (those receipts
    /// resolve to [`ForwardError::NotAcknowledged`]). A second call returns an empty report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.inner.window.close();
        self.inner.window_bytes.close();
        let deadline_at = tokio::time::Instant::now() + deadline;
        self.inner.drain_by.send_replace(Some(deadline_at));
        self.inner.notify_stop.cancel();
        let stream_task = take(&self.inner.stream_task);
        let notify_task = take(&self.inner.notify_task);
        if let Some(task) = notify_task {
            let _ = task.await;
        }
        match stream_task {
            Some(task) => task.await.unwrap_or_default(),
            None => ShutdownReport::default(),
        }
    }
}

/// The engine makes no progress: Logs in flight and no Ack for a while.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Logs in the window.
    pub unacked: u64,
    /// Since the window last moved.
    pub unacked_for: Duration,
    /// Why the last stream failed, if one did since the last Ack.
    pub last_error: Option<String>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "engine stalled: {} Logs unacknowledged for {} s",
            self.unacked,
            self.unacked_for.as_secs()
        )?;
        match &self.last_error {
            Some(error) => write!(formatter, ": {error}"),
            None => formatter.write_str(": the stream is open but no Ack arrives"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
}

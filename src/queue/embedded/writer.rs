//! Group commit: the one thread that writes the store.
//!
//! Every write request (enqueue, lease, complete, …) is sent over a bounded channel to a
//! dedicated OS thread. The thread takes the first waiting request, then every other request
//! already waiting (up to `MAX_BATCH`, 1024), applies them in order inside ONE redb write
//! transaction committed with `Durability::Immediate` (one fsync for the whole batch), and only
//! then answers each requester. So concurrent enqueues share an fsync, and no caller hears
//! "done" before its write is on disk.
//!
//! Under load the thread gathers a little longer ([`COLLECT_STEP`], at most
//! [`COLLECT_WINDOW`]): when the previous commit served several requesters, the ones it just
//! answered are usually about to send their next request, so the batch waits while
//! requests keep arriving, instead of splitting the requesters into two cohorts that each
//! pay a commit. A step in which nothing arrives ends the wait,
//! and a lone requester (the previous commit served one) never waits: the window costs
//! latency only where it saves commits.
//!
//! A request whose operation fails for its own reasons (a stale lease, an unknown item) has
//! written nothing — operations validate before they write — and gets its error while the
//! others commit. A storage failure (i/o, full disk, corruption) aborts the whole transaction
//! and every request of the batch gets that error: none of them was applied.
//!
//! The channel is bounded, so a writer slower than its producers pushes back on them (their
//! `send` waits) instead of growing memory.
//!
//! Recovery: a batch that fails on a storage error (full disk, i/o) takes the store down
//! (`StoreHandle::take_down`: counted, logged at ERROR with what to fix). Its requesters,
//! and every request already waiting, are answered with that error — so the webhook answers
//! 503 and nobody hears "stored" for what is not on disk — and every later request fails at
//! once while the store is down. The thread then reopens the file with the backoff of
//! [`StoreOptions::reopen_retry`](super::StoreOptions), until a reopen succeeds (space is back)
//! or the queue closes. Reopening repairs the file from its last committed transaction, so
//! every write answered `Ok` before the failure is still there. A batch whose writes all
//! reached the file but whose final fsync failed may be found committed after the reopen
//! although its requesters heard an error: for an enqueue that is a duplicate Microsoft's
//! retry meets (the queue dedupes by contentId), never a loss.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, KeyPair};
use super::handle::StoreHandle;
use super::storage_error;
use crate::clock::Clock;
use crate::queue::QueueError;
use crate::retry::RetryPolicy;

/// The most requests applied in one transaction: bounds the transaction's size and the
/// latency of its first requester.
pub(super) const MAX_BATCH: usize = 1024;

/// How long the writer waits for more requests in one step of gathering a batch under load.
const COLLECT_STEP: Duration = Duration::from_micros(50);

/// The longest the writer gathers a batch under load before it commits what it has.
const COLLECT_WINDOW: Duration = Duration::from_micros(400);

/// Requests that may wait for the writer before senders are held back.
const CHANNEL_CAPACITY: usize = 4096;

/// The tables of the store, open inside one write transaction.
pub(super) struct Tables<'txn> {
    pub(super) items: Table<'txn, KeyPair, &'static [u8]>,
    pub(super) pending: Table<'txn, (i64, u64), KeyPair>,
    pub(super) leased: Table<'txn, (i64, u64), KeyPair>,
    pub(super) done: Table<'txn, (i64, u64), KeyPair>,
    pub(super) dead: Table<'txn, u64, KeyPair>,
    pub(super) open: Table<'txn, u64, KeyPair>,
    pub(super) dead_records: Table<'txn, (&'static str, &'static str, u64), &'static [u8]>,
    pub(super) redo_records: Table<'txn, (&'static str, &'static str, u64), ()>,
    pub(super) meta: Table<'txn, &'static str, &'static [u8]>,
    pub(super) counters: Table<'txn, &'static str, u64>,
    /// `next_seq` as this transaction advanced it: read at the first [`Tables::take_seq`],
    /// written back once by [`Tables::store_next_seq`] before the commit, so a batch of
    /// enqueues costs one counter update, not one per item.
    next_seq: Option<u64>,
}

impl<'txn> Tables<'txn> {
    /// Opens (creating on first use) every table.
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, QueueError> {
        Ok(Self {
            items: txn.open_table(format::ITEMS).map_err(storage_error)?,
            pending: txn.open_table(format::PENDING).map_err(storage_error)?,
            leased: txn.open_table(format::LEASED).map_err(storage_error)?,
            done: txn.open_table(format::DONE).map_err(storage_error)?,
            dead: txn.open_table(format::DEAD).map_err(storage_error)?,
            open: txn.open_table(format::OPEN).map_err(storage_error)?,
            dead_records: txn
                .open_table(format::DEAD_RECORDS)
                .map_err(storage_error)?,
            redo_records: txn
                .open_table(format::REDO_RECORDS)
                .map_err(storage_error)?,
            meta: txn.open_table(format::META).map_err(storage_error)?,
            counters: txn.open_table(format::COUNTERS).map_err(storage_error)?,
            next_seq: None,
        })
    }

    /// A `seq` no item of the store has had: the counter's value, advanced in this
    /// transaction only until [`Tables::store_next_seq`] writes it (`commit_batch` does, before
    /// every commit).
    pub(super) fn take_seq(&mut self) -> Result<u64, QueueError> {
        let seq = match self.next_seq {
            Some(seq) => seq,
            None => self
                .counters
                .get(format::COUNTER_NEXT_SEQ)
                .map_err(storage_error)?
                .map_or(1, |value| value.value()),
        };
        self.next_seq = Some(seq + 1);
        Ok(seq)
    }

    /// Writes the `next_seq` this transaction advanced to, if it took any.
    pub(super) fn store_next_seq(&mut self) -> Result<(), QueueError> {
        if let Some(next_seq) = self.next_seq {
            self.counters
                .insert(format::COUNTER_NEXT_SEQ, next_seq)
                .map_err(storage_error)?;
        }
        Ok(())
    }
}

/// Whether `error` aborts the write transaction it happened in: a storage failure spoils
/// the batch; an operation's own error (a stale lease, an unknown item) has written nothing.
pub(super) fn spoils_transaction(error: &QueueError) -> bool {
    matches!(
        error,
        QueueError::Io { .. } | QueueError::Full | QueueError::Corrupt { .. }
    )
}

/// One request waiting for the writer, with its reply channel.
trait WriteRequest: Send {
    /// Runs the operation in the batch's transaction; returns the error that must abort the
    /// whole batch, if it hit one.
    fn apply(&mut self, tables: &mut Tables<'_>, now: DateTime<Utc>) -> Option<QueueError>;

    /// Answers the requester once the batch's outcome is known.
    fn finish(self: Box<Self>, commit: Result<(), QueueError>);

    /// Whether the requester needs the write on disk before its answer.
    fn durable(&self) -> bool;
}

/// How a write request needs its commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Commit {
    /// On disk before the answer.
    Durable,
    /// Visible to readers at once, without waiting for the disk. A crash may undo it, so it
    /// is only for state a restart resets anyway (leases: the store is exclusive, and every
    /// lease is released when it opens). The next durable commit persists it too.
    Volatile,
}

struct Request<Output, Operation> {
    durable: bool,
    operation: Option<Operation>,
    outcome: Option<Result<Output, QueueError>>,
    reply: oneshot::Sender<Result<Output, QueueError>>,
}

impl<Output, Operation> WriteRequest for Request<Output, Operation>
where
    Output: Send,
    Operation: FnOnce(&mut Tables<'_>, DateTime<Utc>) -> Result<Output, QueueError> + Send,
{
    fn apply(&mut self, tables: &mut Tables<'_>, now: DateTime<Utc>) -> Option<QueueError> {
        let operation = self.operation.take()?;
        let outcome = operation(tables, now);
        let spoils_batch = outcome
            .as_ref()
            .err()
            .filter(|error| spoils_transaction(error))
            .cloned();
        self.outcome = Some(outcome);
        spoils_batch
    }

    fn finish(self: Box<Self>, commit: Result<(), QueueError>) {
        let result = match (commit, self.outcome) {
            (_, Some(Err(own_error))) => Err(own_error),
            (Err(batch_error), _) => Err(batch_error),
            (Ok(()), Some(Ok(output))) => Ok(output),
            (Ok(()), None) => Err(QueueError::Io {
                message: "the write request was not applied".to_owned(),
            }),
        };
        // The requester may have gone away (its task was cancelled): nothing to tell then.
        let _ = self.reply.send(result);
    }

    fn durable(&self) -> bool {
        self.durable
    }
}

/// Commit counters, shared with `stats`.
#[derive(Default)]
pub(super) struct WriteCounters {
    pub(super) commits: AtomicU64,
    pub(super) requests: AtomicU64,
    /// Open items (pending + leased) as of the last commit, read inside its transaction
    /// (two O(1) table lengths), so the hard-limit check of every notification reads an
    /// atomic instead of opening a read transaction on the blocking pool. Seeded at open.
    pub(super) open_items: AtomicU64,
}

/// The handle on the writer thread held by the queue.
pub(super) struct Writer {
    store: Arc<StoreHandle>,
    sender: Mutex<Option<mpsc::Sender<Box<dyn WriteRequest>>>>,
    stopped: Mutex<Option<oneshot::Receiver<()>>>,
    /// Woken by `stop`, so a pause between reopen attempts ends at once.
    thread: std::thread::Thread,
    pub(super) counters: Arc<WriteCounters>,
}

impl Writer {
    /// Starts the writer thread over `store`; after a storage failure it reopens the store
    /// with the backoff of `reopen_retry`.
    pub(super) fn spawn(
        store: Arc<StoreHandle>,
        clock: Clock,
        reopen_retry: RetryPolicy,
    ) -> Result<Self, QueueError> {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let (stopped_sender, stopped) = oneshot::channel();
        let counters = Arc::new(WriteCounters::default());
        let thread_counters = Arc::clone(&counters);
        let thread_store = Arc::clone(&store);
        let thread = std::thread::Builder::new()
            .name("queue-writer".to_owned())
            .spawn(move || {
                let writer = WriterThread {
                    store: &thread_store,
                    clock: &clock,
                    counters: &thread_counters,
                    reopen_retry,
                };
                writer.run(receiver);
                let _ = stopped_sender.send(());
            })
            .map_err(|error| QueueError::Io {
                message: format!("cannot start the queue writer thread: {error}"),
            })?
            .thread()
            .clone();
        Ok(Self {
            store,
            sender: Mutex::new(Some(sender)),
            stopped: Mutex::new(Some(stopped)),
            thread,
            counters,
        })
    }

    /// Runs `operation` in the next group commit; returns its output once committed and
    /// synced to disk.
    pub(super) async fn write<Output, Operation>(
        &self,
        operation: Operation,
    ) -> Result<Output, QueueError>
    where
        Output: Send + 'static,
        Operation:
            FnOnce(&mut Tables<'_>, DateTime<Utc>) -> Result<Output, QueueError> + Send + 'static,
    {
        self.write_with(Commit::Durable, operation).await
    }

    /// Runs `operation` in the next group commit; returns its output once committed as
    /// `commit` says.
    pub(super) async fn write_with<Output, Operation>(
        &self,
        commit: Commit,
        operation: Operation,
    ) -> Result<Output, QueueError>
    where
        Output: Send + 'static,
        Operation:
            FnOnce(&mut Tables<'_>, DateTime<Utc>) -> Result<Output, QueueError> + Send + 'static,
    {
        if let Some(failure) = self.store.failure() {
            return Err(failure);
        }
        let sender = lock(&self.sender).clone().ok_or(QueueError::Closed)?;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            durable: commit == Commit::Durable,
            operation: Some(operation),
            outcome: None,
            reply,
        };
        sender
            .send(Box::new(request))
            .await
            .map_err(|_| QueueError::Closed)?;
        answer.await.map_err(|_| QueueError::Closed)?
    }

    /// Stops taking requests, waits until those already sent are committed (or, while the
    /// store is down, answered with its failure) and the thread released the database.
    pub(super) async fn stop(&self) {
        lock(&self.sender).take();
        self.thread.unpark();
        let stopped = lock(&self.stopped).take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain handles with no invariant a panic could break.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The writer thread's view of the store.
struct WriterThread<'a> {
    store: &'a StoreHandle,
    clock: &'a Clock,
    counters: &'a WriteCounters,
    reopen_retry: RetryPolicy,
}

impl WriterThread<'_> {
    /// Batch, commit, answer, until every sender is gone.
    fn run(&self, mut receiver: mpsc::Receiver<Box<dyn WriteRequest>>) {
        let mut batch: Vec<Box<dyn WriteRequest>> = Vec::with_capacity(MAX_BATCH);
        let mut previous_batch = 0;
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            gather(&mut receiver, &mut batch, previous_batch);
            previous_batch = batch.len();
            let outcome = match self.store.database() {
                Ok(database) => commit_batch(&database, &mut batch, self.clock.now()),
                // Down for good (the reopen policy gave up): the failure is the answer.
                Err(failure) => Err(failure),
            };
            let outcome = outcome.map(|open_items| {
                self.counters
                    .open_items
                    .store(open_items, Ordering::Relaxed);
            });
            let failed_on_storage = self.store.failure().is_none()
                && matches!(&outcome, Err(QueueError::Io { .. } | QueueError::Full));
            if failed_on_storage && let Err(error) = &outcome {
                self.store.take_down(error.clone());
            }
            if outcome.is_ok() {
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
            }
            self.counters
                .requests
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for request in batch.drain(..) {
                request.finish(outcome.clone());
            }
            if failed_on_storage && !self.reopen(&mut receiver) {
                return;
            }
        }
    }

    /// Reopens the store that is down, pausing between attempts by the reopen policy and
    /// answering the requests that reach the thread meanwhile with the failure. Returns
    /// `false` when the queue closed before the store was up again.
    fn reopen(&self, receiver: &mut mpsc::Receiver<Box<dyn WriteRequest>>) -> bool {
        let down_since = Instant::now();
        let mut backoff = self.reopen_retry.backoff();
        let mut last_error: Option<QueueError> = None;
        let mut attempt: u64 = 0;
        loop {
            let Some(delay) = backoff.next_delay(None) else {
                tracing::error!(
                    attempts = attempt,
                    "gave up reopening the store; restart the service once the disk is fixed"
                );
                return true;
            };
            if !self.pause(receiver, delay) {
                return false;
            }
            attempt += 1;
            match self.store.reopen() {
                Ok(()) => {
                    tracing::info!(
                        attempts = attempt,
                        down_secs = down_since.elapsed().as_secs_f64(),
                        "the store is writable again"
                    );
                    return true;
                }
                // The same failure again (the disk is still full) is expected: said once.
                Err(error) if last_error.as_ref() == Some(&error) => {}
                Err(error) => {
                    tracing::warn!(attempt, %error, "reopening the store failed; retrying");
                    last_error = Some(error);
                }
            }
        }
    }

    /// Waits `delay` (less when the queue closes), answering every request that arrives with
    /// the store's failure. Returns `false` once every sender is gone.
    fn pause(&self, receiver: &mut mpsc::Receiver<Box<dyn WriteRequest>>, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            loop {
                match receiver.try_recv() {
                    Ok(request) => {
                        let failure = self.store.failure().unwrap_or(QueueError::Closed);
                        self.counters.requests.fetch_add(1, Ordering::Relaxed);
                        request.finish(Err(failure));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return false,
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::park_timeout(left);
        }
    }
}

/// Moves into `batch` every request already waiting, up to [`MAX_BATCH`]; then, when the
/// previous commit served several requesters (`previous_batch`: under load), keeps
/// gathering by [`COLLECT_STEP`] while requests arrive, for at most [`COLLECT_WINDOW`].
fn gather(
    receiver: &mut mpsc::Receiver<Box<dyn WriteRequest>>,
    batch: &mut Vec<Box<dyn WriteRequest>>,
    previous_batch: usize,
) {
    let take_waiting = |receiver: &mut mpsc::Receiver<Box<dyn WriteRequest>>,
                        batch: &mut Vec<Box<dyn WriteRequest>>| {
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        batch.len() > before
    };
    take_waiting(receiver, batch);
    if previous_batch < 2 {
        return;
    }
    let until = Instant::now() + COLLECT_WINDOW;
    while batch.len() < MAX_BATCH && Instant::now() < until {
        std::thread::sleep(COLLECT_STEP);
        if !take_waiting(receiver, batch) {
            return;
        }
    }
}

/// Applies and commits `batch`; the open items (pending + leased) the commit leaves.
fn commit_batch(
    database: &Database,
    batch: &mut [Box<dyn WriteRequest>],
    now: DateTime<Utc>,
) -> Result<u64, QueueError> {
    let mut txn = database.begin_write().map_err(storage_error)?;
    // A batch of volatile writes alone skips the fsync; one durable request syncs them all.
    let durability = if batch.iter().any(|request| request.durable()) {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|error| QueueError::Io {
            message: format!("cannot make the commit durable: {error}"),
        })?;
    let applied = {
        let mut tables = Tables::open(&txn)?;
        let mut first_spoiling_error = None;
        for request in batch.iter_mut() {
            if let Some(error) = request.apply(&mut tables, now) {
                first_spoiling_error.get_or_insert(error);
            }
        }
        match first_spoiling_error {
            Some(error) => Err(error),
            None => tables.store_next_seq().and_then(|()| open_items(&tables)),
        }
    };
    let open_items = match applied {
        Ok(open_items) => open_items,
        Err(error) => {
            // Nothing of this batch may reach the disk; the abort's own failure changes
            // nothing.
            let _ = txn.abort();
            return Err(error);
        }
    };
    txn.commit().map_err(storage_error)?;
    Ok(open_items)
}

/// Pending plus leased items: what `ContentQueue::open_items` counts.
pub(super) fn open_items(tables: &Tables<'_>) -> Result<u64, QueueError> {
    use redb::ReadableTableMetadata;
    let pending = tables.pending.len().map_err(storage_error)?;
    let leased = tables.leased.len().map_err(storage_error)?;
    Ok(pending + leased)
}

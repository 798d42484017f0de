//! The worker pool: each worker takes one content reference at a time from fetch to
//! completion.
//!
//! Leases are taken a few at a time: a worker that finds nothing leased ahead asks the
//! queue for its item and up to [`LEASE_AHEAD`] more, which wait (leased) for the next
//! workers to ask. One store write then serves several blobs, which is most of the store's
//! cost per blob in a drain. An item that waited is checked when taken: its lease is
//! extended like any other once a third of it is left, an item whose lease ran out meanwhile
//! is left to be leased again (its lease is gone, the item is not), and one of a tenant paused
//! meanwhile is released. Workers that stop release what waits.
//!
//! One item, one pass: fetch the blob (with the tenant's token, budget and
//! `PublisherIdentifier`), split the body as it streams in, skip the records the engine
//! already acked in an earlier pass, forward the rest in batches (one reservation,
//! submission and receipt per batch; design.md says when a batch goes), and record
//! progress as acks come back in order. The item is completed only when every record is settled — acked by the
//! engine, or (for an element that is not a valid record) dead-lettered by reference.
//! That is the connector's one rule of acknowledgement: upstream (the queue) is told
//! "done" only after downstream (the engine) confirmed everything. The worker hands "done"
//! to one task that stores the completions of all workers together, several per write
//! (`store_completions`), and goes on with its next item.
//!
//! Otherwise the item goes back to the queue, never away: a transport error, a truncated
//! body or a retryable API answer → `retry_later` with backoff (progress kept, so the next
//! pass resumes mid-blob); shutdown → `release`; a configuration problem of the tenant →
//! `retry_later` with a long delay and a problem on the board. Content is given up only
//! when Microsoft says it is gone: AF20051 (expired: a counted, logged loss) and AF20050
//! after repeated attempts (counted as missing); and a blob whose JSON structure cannot be
//! recovered is dead-lettered from that point, with the reason.
//!
//! A record is given up alone, dead-lettered by reference (index, byte range, SHA-256,
//! reason) while the rest of its blob goes on, when it is not a valid record, when its Log
//! would exceed the engine's message limit (never sent: it would end every stream), or
//! when the engine refused it as poison ([`ForwardError::Refused`]). Each is counted
//! (`records_invalid`, `records_oversized`, `records_refused`), logged and reported, and
//! stays requeue-able while Microsoft keeps the blob. The settled prefix moves past such a
//! record only once its dead letter is stored.
//!
//! A blob the API refuses without an AF code (HTTP 400, 403 or 404; 401, 408 and 429 have
//! their own handling) is retried on the item's backoff, with one WARN per blob and the
//! blob held on the board's `content_refused` problem. Once its listed `contentExpiration`
//! has passed by Microsoft's clock (the failed answer's `Date`) and that fetch, made after
//! the instant, was still refused, it is given up: dead-lettered by reference, counted in
//! `content_refused`, logged as an ERROR. The problem holds each blob until that blob
//! completes or is dead-lettered, whatever other blobs of its type do meanwhile.

use std::collections::{HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{
    BAD_REQUEST_ADVICE, Blob, BlobCompleted, BlobRetried, BlobUnrecoverable, CREDENTIALS_ADVICE,
    ContentExpired, ContentMissing, FetchRefused, ForeignUrlRefused, LeaseFailed, QueueUpdate,
    QueueUpdateFailed, RecordDeadLettered, RecordFault, RefusedBlobExpired, RefusedBlobRetried,
    SubscriptionNotReady, TOKEN_ENDPOINT_ADVICE, WorkerPanicked,
};
use super::outcome::{PassOutcome, delay};
use super::splitter::{SplitEvent, SplitStream, Splitter};
use crate::api::{ApiError, ErrorKind};
use crate::clock::Clock;
use crate::forward::log::{LogEncoder, RecordFields, max_raw_bytes};
use crate::forward::{BatchOutcome, BatchReceipt, ForwardError, Forwarder};
use crate::ops::Metrics;
use crate::ops::events::{Console, Telemetry, problem_kind};
use crate::ops::health::ProblemBoard;
use crate::queue::{ContentKey, ContentQueue, DeadRecord, LeaseId, LeasedItem, QueueError};
use crate::retry::RetryPolicy;
use crate::tenant::{Tenant, TenantSet, Tenants};
use prometheus_client::metrics::counter::Counter;

/// The console reporter of counted losses (kept under its old name for the service).
pub use crate::ops::events::ConsoleReporter as FailureReporter;

/// Progress is written to the queue at least every this many settled records.
const PROGRESS_EVERY: u64 = 1000;

/// How long a completion waits for others to be stored with it, at most. The store's
/// durable commit (an fsync) is its main cost per blob; a drain completes thousands of
/// blobs a second, so this makes one commit of many. A crash in between sends those blobs
/// again (duplicates of at most this long's blobs, never a loss).
const COMPLETION_LINGER: Duration = Duration::from_millis(5);

/// The most completions stored in one write, and waiting to be (the hand-over's bound).
const COMPLETIONS_PER_WRITE: usize = 256;

/// The most items leased ahead of the workers that will take them (see the module doc):
/// a lease request asks for one more than the room left under it.
const LEASE_AHEAD: usize = 4;

/// Items leased ahead of the workers, in lease order.
#[derive(Default)]
struct LeasedAhead(std::sync::Mutex<VecDeque<LeasedItem>>);

impl LeasedAhead {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<LeasedItem>> {
        // A VecDeque of plain items has no invariant a panic could break.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The first waiting item still leased (an item whose lease ran out is dropped: the
    /// queue leases it again), and the waiting items of paused tenants, to release.
    fn take(
        &self,
        now: DateTime<Utc>,
        paused: &HashSet<String>,
    ) -> (Option<LeasedItem>, Vec<LeasedItem>) {
        let mut waiting = self.lock();
        let mut to_release = Vec::new();
        while let Some(item) = waiting.pop_front() {
            if paused.contains(&item.content.tenant_id) {
                to_release.push(item);
            } else if item.lease_until > now {
                return (Some(item), to_release);
            }
        }
        (None, to_release)
    }

    /// Room for more, under [`LEASE_AHEAD`].
    fn room(&self) -> usize {
        LEASE_AHEAD.saturating_sub(self.lock().len())
    }

    fn put(&self, items: impl IntoIterator<Item = LeasedItem>) -> usize {
        let mut waiting = self.lock();
        let before = waiting.len();
        waiting.extend(items);
        waiting.len() - before
    }

    fn drain(&self) -> Vec<LeasedItem> {
        self.lock().drain(..).collect()
    }
}

/// The most records a worker sends as one batch (one reservation, one submission, one
/// receipt); fewer when the forwarder's window is smaller.
const BATCH_RECORDS: usize = 256;

/// What the workers share.
pub struct WorkerContext {
    /// The content queue.
    pub queue: Arc<dyn ContentQueue>,
    /// The current tenants, by lowercase tenant id (looked up per item, so a reload
    /// applies to the next item).
    pub tenants: Arc<TenantSet>,
    /// The engine forwarder.
    pub forwarder: Arc<Forwarder>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Current problems per tenant and content type.
    pub problems: Arc<ProblemBoard>,
    /// The time source.
    pub clock: Clock,
    /// How long a lease lasts; extended while a long blob is forwarded.
    pub lease_duration: Duration,
    /// Woken by the intake when new items arrive.
    pub work_available: Arc<Notify>,
    /// Backoff of retried items (by their attempt count).
    pub retry: RetryPolicy,
    /// Attempts before content that stays missing (AF20050) is counted as missing.
    pub missing_attempts: u32,
    /// How often an idle worker looks at the queue without being woken.
    pub idle_poll: Duration,
    /// Rate limit of integration-failure reports to the engine.
    pub reporter: FailureReporter,
}

impl WorkerContext {
    /// Where this context's events land, now.
    fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            metrics: &self.metrics,
            problems: &self.problems,
            console: Some(Console {
                reporter: &self.reporter,
                forwarder: &self.forwarder,
            }),
            now: self.clock.now(),
        }
    }
}

/// The blob of `item`, of `tenant`, as events name it.
fn blob<'a>(tenant: &'a Tenant, item: &'a LeasedItem) -> Blob<'a> {
    Blob {
        tenant: &tenant.name,
        content_type: &item.content.content_type,
        content_id: &item.content.content_id,
    }
}

/// Spawns `count` workers on `tracker`, and the task that stores their completions; they
/// stop at `shutdown`, releasing what they hold (the completions handed over are stored).
pub fn spawn_workers(
    context: Arc<WorkerContext>,
    count: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let (completions, finished) = mpsc::channel(COMPLETIONS_PER_WRITE);
    tracker.spawn(store_completions(context.queue.clone(), finished));
    let ahead = Arc::new(LeasedAhead::default());
    for worker in 0..count {
        tracker.spawn(supervise_worker(
            context.clone(),
            worker,
            ahead.clone(),
            completions.clone(),
            shutdown.clone(),
        ));
    }
}

/// Runs a worker and starts it again if it panics: a bug met on one item must not take a
/// worker away for good. The item it held comes back when its lease expires.
async fn supervise_worker(
    context: Arc<WorkerContext>,
    worker: usize,
    ahead: Arc<LeasedAhead>,
    completions: mpsc::Sender<Completion>,
    shutdown: CancellationToken,
) {
    loop {
        let run = tokio::spawn(run_worker(
            context.clone(),
            worker,
            ahead.clone(),
            completions.clone(),
            shutdown.clone(),
        ));
        match run.await {
            Ok(()) => return,
            Err(error) if error.is_panic() => WorkerPanicked { worker }.emit(),
            Err(_) => return,
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn run_worker(
    context: Arc<WorkerContext>,
    worker: usize,
    ahead: Arc<LeasedAhead>,
    completions: mpsc::Sender<Completion>,
    shutdown: CancellationToken,
) {
    let mut errors = context.retry.backoff();
    while !shutdown.is_cancelled() {
        // Armed before the lease, so an enqueue between the lease and the wait wakes us.
        let woken = context.work_available.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let skip = paused_tenants(&context.tenants.current());
        let (waiting, paused) = ahead.take(context.clock.now(), &skip);
        for item in &paused {
            release(&context, item).await;
        }
        let leased = match waiting {
            Some(item) => Ok(vec![item]),
            None => lease_with_ahead(&context, &ahead, &skip).await,
        };
        match leased {
            Ok(items) if items.is_empty() => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = woken => {}
                    _ = tokio::time::sleep(context.idle_poll) => {}
                }
            }
            Ok(items) => {
                errors = context.retry.backoff();
                for item in items {
                    let Some(done) = process_item(&context, item, &shutdown).await else {
                        continue;
                    };
                    // The task that stores completions outlives every worker; were it gone,
                    // the item is marked done here.
                    if let Err(mpsc::error::SendError(done)) = completions.send(done).await {
                        let outcome = context.queue.complete(&done.0, done.1).await;
                        report_completion(&done.0, outcome);
                    }
                }
            }
            Err(error) => {
                LeaseFailed {
                    worker,
                    error: &error,
                }
                .emit();
                let delay = errors.next_delay(None).unwrap_or(delay::LEASE_FAILED);
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // What this worker leased ahead went in before it got here: released now, or by the
    // worker that stops last.
    for item in ahead.drain() {
        release(&context, &item).await;
    }
}

/// Leases an item for this worker and up to the room left for others; the others wait in
/// `ahead`, and as many idle workers are woken to take them.
async fn lease_with_ahead(
    context: &WorkerContext,
    ahead: &LeasedAhead,
    skip: &HashSet<String>,
) -> Result<Vec<LeasedItem>, QueueError> {
    let wanted = 1 + ahead.room();
    let mut items = context
        .queue
        .lease(wanted, context.lease_duration, skip)
        .await?;
    if items.len() > 1 {
        let added = ahead.put(items.drain(1..));
        for _ in 0..added {
            context.work_available.notify_one();
        }
    }
    Ok(items)
}

/// An item every record of which is settled, to be marked done: its key and lease.
type Completion = (ContentKey, LeaseId);

/// Marks done the items the workers hand over, several in one queue write (one commit,
/// one fsync): the first waits at most [`COMPLETION_LINGER`] for others. Ends once every
/// worker is gone and what they handed over is stored.
async fn store_completions(queue: Arc<dyn ContentQueue>, mut finished: mpsc::Receiver<Completion>) {
    let mut batch = Vec::with_capacity(COMPLETIONS_PER_WRITE);
    while let Some(first) = finished.recv().await {
        batch.push(first);
        let linger = tokio::time::sleep(COMPLETION_LINGER);
        tokio::pin!(linger);
        while batch.len() < COMPLETIONS_PER_WRITE {
            tokio::select! {
                biased;
                next = finished.recv() => match next {
                    Some(done) => batch.push(done),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let keys: Vec<ContentKey> = batch.iter().map(|(key, _)| key.clone()).collect();
        let outcomes = queue.complete_all(std::mem::take(&mut batch)).await;
        for (key, completed) in keys.iter().zip(outcomes) {
            report_completion(key, completed);
        }
    }
}

fn report_completion(key: &ContentKey, completed: Result<(), QueueError>) {
    if let Err(error) = completed {
        QueueUpdateFailed {
            key,
            update: QueueUpdate::Complete,
            error: &error,
        }
        .emit();
    }
}

fn paused_tenants(tenants: &Tenants) -> HashSet<String> {
    tenants
        .values()
        .filter(|tenant| tenant.client.is_paused())
        .map(|tenant| tenant.tenant_id.clone())
        .collect()
}

/// Records of one blob gathered for one batch: at most [`BATCH_RECORDS`] records and one
/// message's worth of bytes, so a worker waiting for room in the window holds no more
/// records than one message, as it would holding one record of the largest size.
#[derive(Default)]
struct Batch {
    /// Each record's index, bytes (a slice of the received body), byte range and the
    /// fields the splitter read.
    records: Vec<(u64, bytes::Bytes, Range<u64>, Option<RecordFields>)>,
    /// The encoded size reserved for them: each record's length plus a Log's overhead.
    bytes: usize,
}

/// One entry of the settling queue, in blob order.
enum Waiting {
    /// A batch on its way to the engine: its receipt, and each record's index and byte
    /// range (for the dead letter of a record the engine refuses).
    Sent {
        receipt: BatchReceipt,
        records: Vec<(u64, Range<u64>)>,
    },
    /// Records up to and including `through` acked, `count` of them.
    Acked { through: u64, count: u64 },
    /// A record the engine refused as poison: its dead letter is not stored yet.
    Refused(Refused),
    /// A record whose dead letter is stored.
    DeadLettered(u64),
}

/// Receipts of forwarded batches in order, and the length of the settled prefix.
struct Progress {
    settled: u64,
    /// What is not yet settled, in blob order.
    waiting: VecDeque<Waiting>,
    /// Acks received and not yet added to the `records_acked` metric.
    acks_unmetered: u64,
}

/// A forwarded record the engine refused as poison; its dead letter must be stored before
/// the settled prefix moves past it.
struct Refused {
    index: u64,
    byte_range: Range<u64>,
    status: String,
    raw_sha256: [u8; 32],
}

/// Where settling stopped before the end of what is waiting.
enum Stop {
    /// At a refused record, taken off the front and not yet settled.
    Refused(Refused),
    /// At a receipt that failed otherwise (the forwarder stopped): nothing after the
    /// settled prefix can settle in this pass; the waiting records are dropped.
    Lost,
}

impl Progress {
    fn new(settled: u64) -> Self {
        Self {
            settled,
            waiting: VecDeque::new(),
            acks_unmetered: 0,
        }
    }

    /// Adds the acks received since the last call to `records_acked`, the series of this
    /// item's tenant and content type.
    fn meter(&mut self, records_acked: &Counter) {
        if self.acks_unmetered > 0 {
            records_acked.inc_by(self.acks_unmetered);
            self.acks_unmetered = 0;
        }
    }

    /// Settles every entry at the front that resolved, without waiting; `None` when it
    /// reached a batch not yet resolved (or the end).
    fn poll_ready(&mut self) -> Option<Stop> {
        loop {
            if let Waiting::Sent { receipt, .. } = self.waiting.front_mut()? {
                let outcome = receipt.now_or_never()?;
                if let Some(lost) = self.open_front(outcome) {
                    return Some(lost);
                }
            }
            if let Some(stop) = self.settle_front() {
                return Some(stop);
            }
        }
    }

    /// Waits for the receipts in order, settling each; `None` once all are settled.
    async fn wait_ready(&mut self) -> Option<Stop> {
        loop {
            if let Waiting::Sent { receipt, .. } = self.waiting.front_mut()? {
                let outcome = receipt.await;
                if let Some(lost) = self.open_front(outcome) {
                    return Some(lost);
                }
            }
            if let Some(stop) = self.settle_front() {
                return Some(stop);
            }
        }
    }

    /// Replaces the resolved batch at the front by what became of its records, in order:
    /// runs of acked records and each refused one. A failed receipt (the forwarder stopped)
    /// drops everything waiting, [`Stop::Lost`]: nothing after the settled prefix settles in
    /// this pass.
    fn open_front(&mut self, outcome: Result<BatchOutcome, ForwardError>) -> Option<Stop> {
        let Some(Waiting::Sent { records, .. }) = self.waiting.pop_front() else {
            return None;
        };
        let Ok(outcome) = outcome else {
            self.waiting.clear();
            return Some(Stop::Lost);
        };
        let mut refused = outcome.refused;
        refused.sort_by_key(|log| log.position);
        let mut refused = refused.into_iter().peekable();
        let mut pieces = Vec::new();
        let mut acked: Option<(u64, u64)> = None;
        for (position, (index, byte_range)) in records.into_iter().enumerate() {
            match refused.next_if(|log| log.position == position) {
                Some(log) => {
                    if let Some((through, count)) = acked.take() {
                        pieces.push(Waiting::Acked { through, count });
                    }
                    pieces.push(Waiting::Refused(Refused {
                        index,
                        byte_range,
                        status: log.status,
                        raw_sha256: log.raw_sha256,
                    }));
                }
                None => {
                    let count = acked.map_or(0, |(_, count)| count);
                    acked = Some((index, count + 1));
                }
            }
        }
        if let Some((through, count)) = acked {
            pieces.push(Waiting::Acked { through, count });
        }
        for piece in pieces.into_iter().rev() {
            self.waiting.push_front(piece);
        }
        None
    }

    /// Settles the resolved entry at the front: an ack run or a stored dead letter moves
    /// the prefix; a refused record is taken off and returned.
    fn settle_front(&mut self) -> Option<Stop> {
        match self.waiting.pop_front()? {
            Waiting::Acked { through, count } => {
                self.acks_unmetered += count;
                self.settled = through + 1;
                None
            }
            Waiting::DeadLettered(index) => {
                self.settled = index + 1;
                None
            }
            Waiting::Refused(refused) => Some(Stop::Refused(refused)),
            // Not resolved yet: the callers resolve a batch before settling it.
            sent @ Waiting::Sent { .. } => {
                self.waiting.push_front(sent);
                None
            }
        }
    }
}

/// Settles what has resolved (all of it, waiting, when `wait`), storing the dead letter
/// of each refused record before the prefix moves past it. Ends the pass when a dead
/// letter cannot be stored ([`PassOutcome::Retry`]: the record is sent again) or an ack
/// is lost ([`PassOutcome::Interrupted`]: the rest is redelivered).
async fn settle(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    progress: &mut Progress,
    wait: bool,
) -> Result<(), PassOutcome> {
    loop {
        let stop = if wait {
            progress.wait_ready().await
        } else {
            progress.poll_ready()
        };
        let refused = match stop {
            None => return Ok(()),
            Some(Stop::Lost) => return Err(PassOutcome::Interrupted),
            Some(Stop::Refused(refused)) => refused,
        };
        let record = DeadRecord {
            index: refused.index,
            byte_range: (refused.byte_range.start, refused.byte_range.end),
            sha256: refused.raw_sha256,
            reason: format!(
                "refused by the engine every time it was sent alone: {}",
                refused.status
            ),
        };
        dead_letter_record(context, tenant, item, record, RecordFault::Refused)
            .await
            .map_err(PassOutcome::Retry)?;
        progress.settled = refused.index + 1;
    }
}

/// Takes the item through one pass; returns it when every record is settled, for the
/// caller to mark done.
async fn process_item(
    context: &WorkerContext,
    item: LeasedItem,
    shutdown: &CancellationToken,
) -> Option<(ContentKey, LeaseId)> {
    let Some(tenant) = context
        .tenants
        .get(&item.content.tenant_id.to_ascii_lowercase())
    else {
        // A tenant removed from the configuration: keep its content for when it returns.
        retry_later(
            context,
            &item,
            delay::TENANT_REMOVED,
            "tenant no longer configured",
        )
        .await;
        return None;
    };
    let response = match tenant.client.fetch_blob(&item.content.content_uri).await {
        Ok(response) => response,
        Err(error) => {
            handle_fetch_error(context, &tenant, &item, error).await;
            return None;
        }
    };
    let mut progress = Progress::new(item.acked_records);
    let streamed = forward_blob(context, &tenant, &item, response, &mut progress, shutdown).await;
    let outcome = streamed.then(settle(context, &tenant, &item, &mut progress, true).await);
    let labels = context
        .metrics
        .content(&tenant.name, &item.content.content_type);
    progress.meter(&context.metrics.records_acked.get_or_create(&labels));
    let key = item.key();
    // A completed item needs no progress record: `complete` says every record is settled.
    if outcome != PassOutcome::Complete
        && progress.settled > item.acked_records
        && let Err(error) = context
            .queue
            .record_acked(&key, item.lease, progress.settled)
            .await
    {
        QueueUpdateFailed {
            key: &key,
            update: QueueUpdate::Progress,
            error: &error,
        }
        .emit();
    }
    end_pass(context, &tenant, &item, outcome).await
}

/// Does what `outcome` says to the item, and says it; a complete item is returned for the
/// caller to mark done.
async fn end_pass(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    outcome: PassOutcome,
) -> Option<(ContentKey, LeaseId)> {
    let telemetry = context.telemetry();
    match outcome {
        PassOutcome::Complete => {
            BlobCompleted {
                blob: blob(tenant, item),
            }
            .emit(&telemetry);
            Some((item.key(), item.lease))
        }
        PassOutcome::Retry(reason) => {
            BlobRetried {
                blob: blob(tenant, item),
            }
            .emit(&telemetry);
            retry_later(context, item, next_backoff(context, item), &reason).await;
            None
        }
        PassOutcome::Interrupted => {
            release(context, item).await;
            None
        }
        PassOutcome::Unrecoverable {
            index,
            offset,
            reason,
        } => {
            give_up_unrecoverable(context, tenant, item, index, offset, &reason).await;
            None
        }
    }
}

/// What one pass forwards with: the metric series of the item's tenant and content type,
/// the collection time, and the batch limits.
struct Forwarding<'a> {
    context: &'a WorkerContext,
    tenant: &'a Tenant,
    item: &'a LeasedItem,
    records_forwarded: Counter,
    collected_at: DateTime<Utc>,
    /// What a Log adds to its record at most.
    log_overhead: usize,
    /// The most records of one batch.
    batch_records: usize,
}

impl Forwarding<'_> {
    /// Whether `record` joins `batch` only after the batch is sent: it is full by count,
    /// or the record's Log would take it over one message's worth of bytes.
    fn must_flush_before(&self, batch: &Batch, record: &[u8]) -> bool {
        batch.records.len() >= self.batch_records
            || batch.bytes + record.len() + self.log_overhead
                > self.context.forwarder.max_message_bytes()
    }

    /// Sends the gathered records as one batch: room for all of them first (so a worker
    /// waiting for the engine holds only the records, never encoded Logs), then each Log
    /// built and encoded, then one submission; queues its receipt for settling.
    /// `Ok(true)` when a batch was sent, `Ok(false)` when there was nothing to send.
    async fn flush(&self, batch: &mut Batch, progress: &mut Progress) -> Result<bool, PassOutcome> {
        if batch.records.is_empty() {
            return Ok(false);
        }
        let records = std::mem::take(&mut batch.records);
        let bytes = std::mem::take(&mut batch.bytes);
        let failed = |error: ForwardError| match error {
            ForwardError::Closed | ForwardError::NotAcknowledged => PassOutcome::Interrupted,
            // Cannot happen: a batch holds at most one message's worth, each Log within
            // its record's length plus the overhead. Retried rather than lost.
            other => PassOutcome::Retry(format!("a batch of records was not accepted: {other}")),
        };
        let reservation = self
            .context
            .forwarder
            .reserve_batch(records.len(), bytes)
            .await
            .map_err(failed)?;
        // One buffer for the batch's Logs, of the size reserved for them.
        let mut encoder = LogEncoder::new(
            &self.tenant.log_context,
            &self.item.content.content_uri,
            self.collected_at,
            bytes,
        );
        let logs = records
            .iter()
            .map(|(index, record, _, fields)| encoder.push(record, fields.as_ref(), *index))
            .collect();
        let receipt = reservation.send(logs).await.map_err(failed)?;
        self.records_forwarded.inc_by(records.len() as u64);
        let records = records
            .into_iter()
            .map(|(index, _, byte_range, _)| (index, byte_range))
            .collect();
        progress
            .waiting
            .push_back(Waiting::Sent { receipt, records });
        Ok(true)
    }
}

/// Streams the blob through the splitter into the forwarder, in batches: records are
/// gathered while the body's next ones are already received, and sent as one batch when
/// it is full, when the body must be waited for, and before any other event (so the
/// settling queue stays in blob order).
async fn forward_blob(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    response: reqwest::Response,
    progress: &mut Progress,
    shutdown: &CancellationToken,
) -> PassOutcome {
    let content_type = item.content.content_type.as_str();
    let labels = context.metrics.content(&tenant.name, content_type);
    // The series handles, once per blob: a family lookup hashes the labels under a lock.
    let records_forwarded = context
        .metrics
        .records_forwarded
        .get_or_create(&labels)
        .clone();
    let records_acked = context.metrics.records_acked.get_or_create(&labels).clone();
    // What a Log adds to its record at most: a record longer than the limit less this can
    // never be sent.
    let max_message_bytes = context.forwarder.max_message_bytes();
    let max_record_bytes = max_raw_bytes(&tenant.log_context, max_message_bytes);
    let forwarding = Forwarding {
        context,
        tenant,
        item,
        records_forwarded,
        collected_at: context.clock.now(),
        log_overhead: max_message_bytes - max_record_bytes,
        batch_records: BATCH_RECORDS.min(context.forwarder.max_batch_logs()),
    };
    let mut lease_until = item.lease_until;
    let mut recorded = progress.settled;
    let mut next_index = 0u64;
    let mut batch = Batch::default();
    let mut split = SplitStream::new(response.bytes_stream(), Splitter::new(max_record_bytes));
    loop {
        // Records already received join the batch; before waiting for the body, it goes.
        let ready = match batch.records.is_empty() {
            true => None,
            false => split.next_event().now_or_never(),
        };
        let mut sent = false;
        let event = match ready {
            Some(event) => event,
            None => {
                match forwarding.flush(&mut batch, progress).await {
                    Ok(flushed) => sent = flushed,
                    Err(outcome) => return outcome,
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return PassOutcome::Interrupted,
                    event = split.next_event() => event,
                }
            }
        };
        let other = match event {
            Some(Ok(SplitEvent::Record {
                index,
                bytes,
                byte_range,
                fields,
            })) => {
                next_index = index + 1;
                if !item.already_settled(index) {
                    if forwarding.must_flush_before(&batch, &bytes) {
                        match forwarding.flush(&mut batch, progress).await {
                            Ok(flushed) => sent |= flushed,
                            Err(outcome) => return outcome,
                        }
                    }
                    batch.bytes += bytes.len() + forwarding.log_overhead;
                    batch.records.push((index, bytes, byte_range, fields));
                }
                // The settling and lease bookkeeping below runs once per batch sent.
                if !sent {
                    continue;
                }
                None
            }
            other => Some(other),
        };
        if let Some(event) = other {
            // Any other event ends the batch first: what came before it goes before it.
            if let Err(outcome) = forwarding.flush(&mut batch, progress).await {
                return outcome;
            }
            let event = match event {
                None => return PassOutcome::Retry("the blob body ended without a verdict".into()),
                Some(Err(error)) => {
                    return PassOutcome::Retry(format!("blob transfer failed: {error}"));
                }
                Some(Ok(event)) => event,
            };
            if let Some(index) = event.index() {
                next_index = index + 1;
                if item.already_settled(index) {
                    continue;
                }
            }
            if let Some(outcome) = handle_event(&forwarding, progress, event, next_index).await {
                return outcome;
            }
        }
        if let Err(outcome) = settle(context, tenant, item, progress, false).await {
            return outcome;
        }
        progress.meter(&records_acked);
        save_progress(context, progress, &mut recorded, item).await;
        lease_until = keep_lease(context, item, lease_until).await;
    }
}

/// Handles an event other than a record: dead-letters a bad or oversized element by
/// reference, or ends the pass (`Some`) at the body's end or a broken structure.
async fn handle_event(
    forwarding: &Forwarding<'_>,
    progress: &mut Progress,
    event: SplitEvent,
    next_index: u64,
) -> Option<PassOutcome> {
    let Forwarding {
        context,
        tenant,
        item,
        ..
    } = *forwarding;
    let (record, fault) = match event {
        // Records go into batches; none reaches here.
        SplitEvent::Record { .. } => return None,
        SplitEvent::BadRecord {
            index,
            byte_range,
            sha256,
            reason,
        } => {
            let record = DeadRecord {
                index,
                byte_range: (byte_range.start, byte_range.end),
                sha256,
                reason,
            };
            (record, RecordFault::Invalid)
        }
        SplitEvent::Oversized {
            index,
            byte_range,
            sha256,
            size,
        } => {
            let record = DeadRecord {
                index,
                byte_range: (byte_range.start, byte_range.end),
                sha256,
                reason: oversized_reason(
                    usize::try_from(size).unwrap_or(usize::MAX),
                    context.forwarder.max_message_bytes(),
                ),
            };
            (record, RecordFault::Oversized)
        }
        SplitEvent::Unrecoverable { offset, reason } => {
            return Some(PassOutcome::Unrecoverable {
                index: next_index,
                offset,
                reason,
            });
        }
        SplitEvent::Complete { .. } => return Some(PassOutcome::Complete),
        SplitEvent::Truncated { offset } => {
            return Some(PassOutcome::Retry(format!(
                "the blob body ended at byte {offset} before the array's closing bracket"
            )));
        }
    };
    set_aside(context, tenant, item, progress, record, fault)
        .await
        .err()
        .map(PassOutcome::Retry)
}

/// The dead-letter reason of a record whose Log would be `size` bytes (or, for a record
/// too long to hold, whose record is) against a message limit of `limit`.
fn oversized_reason(size: usize, limit: usize) -> String {
    format!(
        "record too large for the engine: its Log would be at least {size} bytes, over engine.max_message_bytes = {limit}"
    )
}

/// Dead-letters `record` of `item` by reference, then queues it as settled, so the
/// settled prefix passes it once the records before it are settled. Fails, with the
/// reason to retry the pass, when the store refuses the dead letter.
async fn set_aside(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    progress: &mut Progress,
    record: DeadRecord,
    fault: RecordFault,
) -> Result<(), String> {
    let index = record.index;
    dead_letter_record(context, tenant, item, record, fault).await?;
    progress.waiting.push_back(Waiting::DeadLettered(index));
    Ok(())
}

/// Stores `record` as a dead letter of `item`, counts it, logs it and reports it to the
/// console; an oversized or refused record also sets the records problem (a loss until
/// requeued). Fails, with the reason to retry the pass, when the store refuses the write.
async fn dead_letter_record(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    record: DeadRecord,
    fault: RecordFault,
) -> Result<(), String> {
    let index = record.index;
    let reason = record.reason.clone();
    let byte_range = record.byte_range;
    if let Err(error) = context
        .queue
        .add_dead_record(&item.key(), item.lease, record)
        .await
    {
        return Err(format!("cannot dead-letter record {index}: {error}"));
    }
    RecordDeadLettered {
        blob: blob(tenant, item),
        fault,
        index,
        byte_range,
        reason: &reason,
    }
    .emit(&context.telemetry());
    Ok(())
}

/// Records settled progress in the queue every [`PROGRESS_EVERY`] records, so a crash
/// resumes close to where it stopped.
async fn save_progress(
    context: &WorkerContext,
    progress: &Progress,
    recorded: &mut u64,
    item: &LeasedItem,
) {
    if progress.settled < recorded.saturating_add(PROGRESS_EVERY) {
        return;
    }
    if context
        .queue
        .record_acked(&item.key(), item.lease, progress.settled)
        .await
        .is_ok()
    {
        *recorded = progress.settled;
    }
}

/// Extends the lease when a third of it is left.
async fn keep_lease(
    context: &WorkerContext,
    item: &LeasedItem,
    lease_until: DateTime<Utc>,
) -> DateTime<Utc> {
    let remaining = lease_until - context.clock.now();
    let third = chrono::Duration::from_std(context.lease_duration / 3)
        .unwrap_or(chrono::Duration::seconds(60));
    if remaining > third {
        return lease_until;
    }
    match context
        .queue
        .extend_lease(&item.key(), item.lease, context.lease_duration)
        .await
    {
        Ok(until) => until,
        Err(error) => {
            QueueUpdateFailed {
                key: &item.key(),
                update: QueueUpdate::ExtendLease,
                error: &error,
            }
            .emit();
            lease_until
        }
    }
}

async fn handle_fetch_error(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    error: ApiError,
) {
    let telemetry = context.telemetry();
    let blob = blob(tenant, item);
    match error.kind() {
        Some(ErrorKind::ContentExpired) => {
            ContentExpired { blob }.emit(&telemetry);
            dead_letter(context, tenant, item, ContentExpired::REASON).await;
        }
        Some(ErrorKind::ContentMissing) if item.attempts + 1 >= context.missing_attempts => {
            let attempts = item.attempts + 1;
            ContentMissing { blob, attempts }.emit(&telemetry);
            dead_letter(context, tenant, item, ContentMissing::REASON).await;
        }
        Some(ErrorKind::Redirected) => {
            // A redirect is never followed (it would read another host's answer as the
            // tenant's content): the endpoint is failing, shown with what to fix.
            FetchRefused {
                blob,
                error: &error,
                advice: ErrorKind::Redirected.advice().unwrap_or(BAD_REQUEST_ADVICE),
                outcome: "retry",
            }
            .emit(&telemetry);
            let delay = next_backoff(context, item);
            retry_later(context, item, delay, &error.to_string()).await;
        }
        Some(kind) if kind.is_retryable() => {
            BlobRetried { blob }.emit(&telemetry);
            let backoff = next_backoff(context, item);
            let delay = error
                .retry_after()
                .map_or(backoff, |asked| asked.max(backoff));
            retry_later(context, item, delay, &error.to_string()).await;
        }
        Some(ErrorKind::SubscriptionDisabled | ErrorKind::SubscriptionMissing) => {
            SubscriptionNotReady { blob }.emit(&telemetry);
            let reason = error.to_string();
            retry_later(context, item, delay::SUBSCRIPTION_NOT_READY, &reason).await;
        }
        _ if matches!(&error, ApiError::Auth(auth) if auth.is_retryable()) => {
            // The token endpoint is down or failing: nothing for the operator to fix. The
            // token provider paces its own requests, and the tenant's content is skipped
            // until its next attempt is due, so the item goes back as it was: an outage
            // does not pile up attempts (and backoff) on the items that met it.
            FetchRefused {
                blob,
                error: &error,
                advice: TOKEN_ENDPOINT_ADVICE,
                outcome: "retry",
            }
            .emit(&telemetry);
            release(context, item).await;
        }
        _ if matches!(error, ApiError::ForeignUrl { .. }) => {
            // The intake checks every contentUri, so this needs a bug or a changed config;
            // the item is kept as a dead letter (requeue-able) and counted.
            ForeignUrlRefused {
                blob,
                error: &error,
            }
            .emit(&telemetry);
            dead_letter(context, tenant, item, &error.to_string()).await;
        }
        _ if error.refused_without_code() => {
            handle_refused(context, tenant, item, &error).await;
        }
        _ => {
            // Configuration problems (credentials, consent, roles, audit off): keep the
            // content, show the problem, try again later.
            let advice = match &error {
                ApiError::Service { kind, .. } => kind.advice().unwrap_or(BAD_REQUEST_ADVICE),
                _ => CREDENTIALS_ADVICE,
            };
            FetchRefused {
                blob,
                error: &error,
                advice,
                outcome: "refused",
            }
            .emit(&telemetry);
            let delay = if error.is_retryable() {
                delay::CONFIGURATION_RETRYABLE
            } else {
                delay::CONFIGURATION
            };
            retry_later(context, item, delay, &error.to_string()).await;
        }
    }
}

/// A blob refused without an AF code: given up when this refusal came after its
/// `contentExpiration` by Microsoft's clock, otherwise retried on the item's backoff and
/// held on the board.
async fn handle_refused(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    error: &ApiError,
) {
    let expiration = item.content.content_expiration;
    // Microsoft's time of this very refusal; its clock, not ours, says when content
    // expires. Without a `Date` (never seen from Microsoft) the latest one, then ours.
    let microsoft_time = error
        .server_date()
        .or_else(|| tenant.client.last_server_date())
        .unwrap_or_else(|| context.clock.now());
    let blob = blob(tenant, item);
    if microsoft_time >= expiration {
        // Refused by a fetch made after its `contentExpiration`: a counted loss.
        let given_up = RefusedBlobExpired {
            blob,
            expiration,
            microsoft_time,
            error,
        };
        let reason = given_up.reason();
        given_up.emit(&context.telemetry());
        return dead_letter(context, tenant, item, &reason).await;
    }
    RefusedBlobRetried {
        blob,
        expiration,
        error,
    }
    .emit(&context.telemetry());
    retry_later(
        context,
        item,
        next_backoff(context, item),
        &error.to_string(),
    )
    .await;
}

async fn give_up_unrecoverable(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    index: u64,
    offset: u64,
    reason: &str,
) {
    let record = DeadRecord {
        index,
        byte_range: (offset, offset),
        sha256: [0; 32],
        reason: format!("structure lost from here: {reason}"),
    };
    if let Err(error) = context
        .queue
        .add_dead_record(&item.key(), item.lease, record)
        .await
    {
        QueueUpdateFailed {
            key: &item.key(),
            update: QueueUpdate::BrokenAt,
            error: &error,
        }
        .emit();
    }
    BlobUnrecoverable {
        blob: blob(tenant, item),
        index,
        offset,
        reason,
    }
    .emit(&context.telemetry());
    dead_letter(
        context,
        tenant,
        item,
        &format!("JSON structure lost at byte {offset} (record {index}): {reason}"),
    )
    .await;
}

/// The backoff before the next attempt of `item`, by its failed attempts so far.
fn next_backoff(context: &WorkerContext, item: &LeasedItem) -> Duration {
    context
        .retry
        .delay_for_attempt(item.attempts + 1)
        .unwrap_or(context.retry.max_delay)
}

async fn retry_later(context: &WorkerContext, item: &LeasedItem, delay: Duration, reason: &str) {
    let not_before = context.clock.now()
        + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
    log_queue_error(
        item,
        context
            .queue
            .retry_later(&item.key(), item.lease, not_before, reason)
            .await,
    );
}

async fn release(context: &WorkerContext, item: &LeasedItem) {
    log_queue_error(item, context.queue.release(&item.key(), item.lease).await);
}

/// Dead-letters the item; it no longer counts on the board's refused-blobs problem.
async fn dead_letter(context: &WorkerContext, tenant: &Tenant, item: &LeasedItem, reason: &str) {
    context.problems.release_blob(
        &tenant.name,
        &item.content.content_type,
        problem_kind::CONTENT_REFUSED,
        &item.content.content_id,
    );
    log_queue_error(
        item,
        context
            .queue
            .dead_letter(&item.key(), item.lease, reason)
            .await,
    );
}

fn log_queue_error(item: &LeasedItem, result: Result<(), QueueError>) {
    if let Err(error) = result {
        // The lease expires and the item comes back: nothing is lost, work may repeat.
        QueueUpdateFailed {
            key: &item.key(),
            update: QueueUpdate::Settle,
            error: &error,
        }
        .emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::queue::{ContentRef, EmbeddedQueue, ItemState, Source};

    fn content(index: usize) -> ContentRef {
        let created = Utc::now();
        ContentRef {
            tenant_id: "tenant".to_owned(),
            content_type: "Audit.General".to_owned(),
            content_id: format!("blob{index}"),
            content_uri: format!("https://manage.office.com/blob{index}"),
            content_created: created,
            content_expiration: created + chrono::TimeDelta::days(7),
            source: Source::Poll,
        }
    }

    #[tokio::test]
    async fn an_item_leased_ahead_is_taken_only_while_leased_and_a_paused_tenants_is_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .unwrap();
        let mut paused_content = content(1);
        paused_content.tenant_id = "paused".to_owned();
        queue
            .enqueue(vec![content(0), paused_content, content(2)])
            .await
            .unwrap();
        let mut leased = queue
            .lease(3, Duration::from_secs(60), &HashSet::new())
            .await
            .unwrap();
        assert_eq!(leased.len(), 3);
        let now = Utc::now();
        // The first one's lease ran out while it waited.
        leased[0].lease_until = now - chrono::TimeDelta::seconds(1);
        let ahead = LeasedAhead::default();
        assert_eq!(ahead.put(leased.clone()), 3);
        assert_eq!(ahead.room(), LEASE_AHEAD - 3);
        let paused = HashSet::from(["paused".to_owned()]);
        let (taken, to_release) = ahead.take(now, &paused);
        assert_eq!(taken.map(|item| item.key()), Some(leased[2].key()));
        assert_eq!(
            to_release.iter().map(LeasedItem::key).collect::<Vec<_>>(),
            vec![leased[1].key()]
        );
        let (taken, to_release) = ahead.take(now, &paused);
        assert!(taken.is_none() && to_release.is_empty());
        assert_eq!(ahead.room(), LEASE_AHEAD);
        queue.close().await.unwrap();
    }

    #[tokio::test]
    async fn completions_handed_over_together_are_stored_in_one_commit_and_every_item_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Arc::new(
            EmbeddedQueue::open(dir.path(), Clock::system())
                .await
                .unwrap(),
        );
        let blobs = 40;
        queue
            .enqueue((0..blobs).map(content).collect())
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let leased = queue.lease(blobs, lease, &HashSet::new()).await.unwrap();
        assert_eq!(leased.len(), blobs);
        let (completions, finished) = mpsc::channel(COMPLETIONS_PER_WRITE);
        for item in &leased {
            completions.send((item.key(), item.lease)).await.unwrap();
        }
        drop(completions);
        let commits_before = queue.stats().await.unwrap().commits;
        // Returns once every completion handed over is stored (the hand-over closed).
        store_completions(queue.clone(), finished).await;
        let stats = queue.stats().await.unwrap();
        assert_eq!(
            stats.commits - commits_before,
            1,
            "{blobs} completions handed over together share one commit"
        );
        for item in &leased {
            let stored = queue.get(&item.key()).await.unwrap().unwrap();
            assert!(matches!(stored.state, ItemState::Done { .. }), "{stored:?}");
        }
        queue.close().await.unwrap();
    }
}

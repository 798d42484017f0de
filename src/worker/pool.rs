//! The worker pool: each worker leases one content reference at a time and takes it from
//! fetch to completion.
//!
//! One item, one pass: fetch the blob (with the tenant's token, budget and
//! `PublisherIdentifier`), split the body as it streams in, skip the records the engine
//! already acked in an earlier pass, forward the rest, and record progress as acks come
//! back in order. The item is completed only when every record is settled — acked by the
//! engine, or (for an element that is not a valid record) dead-lettered by reference.
//! That is the connector's one rule of acknowledgement: upstream (the queue) is told
//! "done" only after downstream (the engine) confirmed everything.
//!
//! Otherwise the item goes back to the queue, never away: a transport error, a truncated
//! body or a retryable API answer → `retry_later` with backoff (progress kept, so the next
//! pass resumes mid-blob); shutdown → `release`; a configuration problem of the tenant →
//! `retry_later` with a long delay and a problem on the board. Content is given up only
//! when Microsoft says it is gone: AF20051 (expired: a counted, logged loss) and AF20050
//! after repeated attempts (counted as missing); and a blob whose JSON structure cannot be
//! recovered is dead-lettered from that point, with the reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::splitter::{SplitEvent, SplitStream, Splitter};
use super::{ENGINE_MAX_MESSAGE_BYTES, MAX_RECORD_BYTES};
use crate::api::{ApiError, ErrorKind};
use crate::clock::Clock;
use crate::forward::log::build_log;
use crate::forward::{AckReceipt, Forwarder};
use crate::ops::Metrics;
use crate::ops::health::ProblemBoard;
use crate::ops::metrics::ContentOutcomeLabels;
use crate::queue::{ContentQueue, DeadRecord, LeasedItem, QueueError};
use crate::retry::RetryPolicy;
use crate::tenant::{Tenant, TenantSet, Tenants};
use prometheus_client::metrics::counter::Counter;

/// The problem kind the workers set (and clear) on the board.
const FETCH_PROBLEM: &str = "fetch_refused";

/// Progress is written to the queue at least every this many settled records.
const PROGRESS_EVERY: u64 = 1000;

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

/// Spawns `count` workers on `tracker`; they stop at `shutdown`, releasing what they hold.
pub fn spawn_workers(
    context: Arc<WorkerContext>,
    count: usize,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    for worker in 0..count {
        tracker.spawn(supervise_worker(context.clone(), worker, shutdown.clone()));
    }
}

/// Runs a worker and starts it again if it panics: a bug met on one item must not take a
/// worker away for good. The item it held comes back when its lease expires.
async fn supervise_worker(context: Arc<WorkerContext>, worker: usize, shutdown: CancellationToken) {
    loop {
        let run = tokio::spawn(run_worker(context.clone(), worker, shutdown.clone()));
        match run.await {
            Ok(()) => return,
            Err(error) if error.is_panic() => {
                tracing::error!(
                    worker,
                    "a worker panicked; starting it again (its item is redelivered when its lease expires)"
                );
            }
            Err(_) => return,
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn run_worker(context: Arc<WorkerContext>, worker: usize, shutdown: CancellationToken) {
    let mut errors = context.retry.backoff();
    while !shutdown.is_cancelled() {
        // Armed before the lease, so an enqueue between the lease and the wait wakes us.
        let woken = context.work_available.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let skip = paused_tenants(&context.tenants.current());
        match context.queue.lease(1, context.lease_duration, &skip).await {
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
                    process_item(&context, item, &shutdown).await;
                }
            }
            Err(error) => {
                tracing::error!(worker, %error, "cannot lease from the queue");
                let delay = errors.next_delay(None).unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn paused_tenants(tenants: &Tenants) -> HashSet<String> {
    tenants
        .values()
        .filter(|tenant| tenant.client.is_paused())
        .map(|tenant| tenant.tenant_id.clone())
        .collect()
}

/// How one pass over a blob ended.
enum PassEnd {
    /// The closing `]` was read.
    Complete,
    /// The body broke off or the fetch failed: retry from the settled prefix.
    Retry(String),
    /// Shutdown: give the item back.
    Interrupted,
    /// The structure is lost from `offset` (index `index` onwards).
    Unrecoverable {
        index: u64,
        offset: u64,
        reason: String,
    },
}

/// Receipts of forwarded records in order, and the length of the settled prefix.
struct Progress {
    settled: u64,
    waiting: VecDeque<(u64, Option<AckReceipt>)>,
    failed: bool,
    /// Acks received and not yet added to the `records_acked` metric.
    acks_unmetered: u64,
}

impl Progress {
    fn new(settled: u64) -> Self {
        Self {
            settled,
            waiting: VecDeque::new(),
            failed: false,
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

    /// Takes every receipt at the front that has resolved, without waiting.
    fn poll_ready(&mut self) {
        while let Some((index, receipt)) = self.waiting.front_mut() {
            let settled = match receipt {
                None => true,
                Some(receipt) => match receipt.now_or_never() {
                    Some(Ok(())) => {
                        self.acks_unmetered += 1;
                        true
                    }
                    Some(Err(_)) => {
                        self.failed = true;
                        false
                    }
                    None => false,
                },
            };
            if !settled {
                return;
            }
            self.settled = *index + 1;
            self.waiting.pop_front();
        }
    }

    /// Waits for every receipt in order; stops at the first one that fails.
    async fn wait_all(&mut self) {
        while let Some((index, receipt)) = self.waiting.pop_front() {
            if let Some(receipt) = receipt {
                if receipt.await.is_err() {
                    self.failed = true;
                    self.waiting.clear();
                    return;
                }
                self.acks_unmetered += 1;
            }
            self.settled = index + 1;
        }
    }
}

async fn process_item(context: &WorkerContext, item: LeasedItem, shutdown: &CancellationToken) {
    let Some(tenant) = context
        .tenants
        .get(&item.content.tenant_id.to_ascii_lowercase())
    else {
        // A tenant removed from the configuration: keep its content for when it returns.
        retry_later(
            context,
            &item,
            Duration::from_secs(3600),
            "tenant no longer configured",
        )
        .await;
        return;
    };
    let response = match tenant.client.fetch_blob(&item.content.content_uri).await {
        Ok(response) => response,
        Err(error) => return handle_fetch_error(context, &tenant, &item, error).await,
    };
    let mut progress = Progress::new(item.acked_records);
    let end = forward_blob(context, &tenant, &item, response, &mut progress, shutdown).await;
    progress.wait_all().await;
    let labels = context
        .metrics
        .content(&tenant.name, &item.content.content_type);
    progress.meter(&context.metrics.records_acked.get_or_create(&labels));
    let key = item.key();
    // A completed item needs no progress record: `complete` says every record is settled.
    let completes = matches!(end, PassEnd::Complete) && !progress.failed;
    if !completes
        && progress.settled > item.acked_records
        && let Err(error) = context
            .queue
            .record_acked(&key, item.lease, progress.settled)
            .await
    {
        tracing::warn!(%key, %error, "cannot record progress; the next pass repeats some records");
    }
    let content_type = item.content.content_type.as_str();
    if progress.failed {
        // The forwarder stopped (shutdown) before every ack came: redeliver the rest.
        return release(context, &item).await;
    }
    match end {
        PassEnd::Complete => {
            count_blob(context, &tenant, content_type, "ok");
            context
                .problems
                .clear(&tenant.name, content_type, &[FETCH_PROBLEM]);
            if let Err(error) = context.queue.complete(&key, item.lease).await {
                tracing::warn!(%key, %error, "cannot complete the item; it will be redelivered");
            }
        }
        PassEnd::Retry(reason) => {
            count_blob(context, &tenant, content_type, "retry");
            retry_later(context, &item, next_backoff(context, &item), &reason).await;
        }
        PassEnd::Interrupted => release(context, &item).await,
        PassEnd::Unrecoverable {
            index,
            offset,
            reason,
        } => {
            give_up_unrecoverable(context, &tenant, &item, index, offset, &reason).await;
        }
    }
}

/// Streams the blob through the splitter into the forwarder.
async fn forward_blob(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    response: reqwest::Response,
    progress: &mut Progress,
    shutdown: &CancellationToken,
) -> PassEnd {
    let content_type = item.content.content_type.as_str();
    let labels = context.metrics.content(&tenant.name, content_type);
    // The series handles, once per blob: a family lookup hashes the labels under a lock.
    let records_forwarded = context
        .metrics
        .records_forwarded
        .get_or_create(&labels)
        .clone();
    let records_acked = context.metrics.records_acked.get_or_create(&labels).clone();
    let collected_at = context.clock.now();
    let mut lease_until = item.lease_until;
    let mut recorded = progress.settled;
    let mut next_index = 0u64;
    let mut split = SplitStream::new(response.bytes_stream(), Splitter::new(MAX_RECORD_BYTES));
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return PassEnd::Interrupted,
            event = split.next_event() => event,
        };
        let event = match event {
            None => return PassEnd::Retry("the blob body ended without a verdict".into()),
            Some(Err(error)) => return PassEnd::Retry(format!("blob transfer failed: {error}")),
            Some(Ok(event)) => event,
        };
        // An oversized record is dead-lettered by reference like an invalid one.
        let event = match event {
            SplitEvent::Oversized {
                index,
                byte_range,
                sha256,
                size,
            } => SplitEvent::BadRecord {
                index,
                byte_range,
                sha256,
                reason: format!(
                    "record of {size} bytes exceeds the engine message limit \
                     ({ENGINE_MAX_MESSAGE_BYTES} bytes less the Log's other fields)"
                ),
            },
            event => event,
        };
        match event {
            SplitEvent::Record { index, bytes, .. } => {
                next_index = index + 1;
                if index < item.acked_records {
                    continue;
                }
                let log = build_log(
                    &tenant.log_context,
                    &bytes,
                    index,
                    &item.content.content_uri,
                    collected_at,
                );
                match context.forwarder.send(log).await {
                    Ok(receipt) => progress.waiting.push_back((index, Some(receipt))),
                    Err(_) => return PassEnd::Interrupted,
                }
                records_forwarded.inc();
            }
            SplitEvent::BadRecord {
                index,
                byte_range,
                sha256,
                reason,
            } => {
                next_index = index + 1;
                if index < item.acked_records {
                    continue;
                }
                let record = DeadRecord {
                    index,
                    byte_range: (byte_range.start, byte_range.end),
                    sha256,
                    reason: reason.clone(),
                };
                if let Err(error) = context
                    .queue
                    .add_dead_record(&item.key(), item.lease, record)
                    .await
                {
                    return PassEnd::Retry(format!("cannot dead-letter record {index}: {error}"));
                }
                context.metrics.records_invalid.get_or_create(&labels).inc();
                tracing::warn!(tenant = %tenant.name, content_type, content_id = %item.content.content_id, index, %reason, "invalid record dead-lettered");
                context.reporter.report(
                    context,
                    &tenant.name,
                    content_type,
                    "invalid records dead-lettered",
                );
                progress.waiting.push_back((index, None));
            }
            SplitEvent::Oversized { .. } => unreachable!("turned into a BadRecord above"),
            SplitEvent::Unrecoverable { offset, reason } => {
                return PassEnd::Unrecoverable {
                    index: next_index,
                    offset,
                    reason,
                };
            }
            SplitEvent::Complete { .. } => return PassEnd::Complete,
            SplitEvent::Truncated { offset } => {
                return PassEnd::Retry(format!(
                    "the blob body ended at byte {offset} before the array's closing bracket"
                ));
            }
        }
        progress.poll_ready();
        progress.meter(&records_acked);
        save_progress(context, progress, &mut recorded, item).await;
        lease_until = keep_lease(context, item, lease_until).await;
    }
}

/// Records settled progress in the queue every [`PROGRESS_EVERY`] records, so a crash
/// resumes close to where it stopped.
async fn save_progress(
    context: &WorkerContext,
    progress: &Progress,
    recorded: &mut u64,
    item: &LeasedItem,
) {
    if progress.settled < *recorded + PROGRESS_EVERY {
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
            tracing::warn!(key = %item.key(), %error, "cannot extend the lease");
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
    let content_type = item.content.content_type.as_str();
    let content_id = item.content.content_id.as_str();
    let labels = context.metrics.content(&tenant.name, content_type);
    match error.kind() {
        Some(ErrorKind::ContentExpired) => {
            count_blob(context, tenant, content_type, "expired");
            context.metrics.content_expired.get_or_create(&labels).inc();
            tracing::error!(tenant = %tenant.name, content_type, content_id, "content expired before it could be fetched (AF20051): its records are lost");
            context.reporter.report(
                context,
                &tenant.name,
                content_type,
                "content expired before it could be fetched",
            );
            dead_letter(
                context,
                item,
                "content expired before it could be fetched (AF20051)",
            )
            .await;
        }
        Some(ErrorKind::ContentMissing) if item.attempts + 1 >= context.missing_attempts => {
            count_blob(context, tenant, content_type, "missing");
            context.metrics.content_missing.get_or_create(&labels).inc();
            tracing::error!(tenant = %tenant.name, content_type, content_id, attempts = item.attempts + 1, "content still does not exist (AF20050); counted as missing");
            dead_letter(
                context,
                item,
                "content does not exist (AF20050) after repeated attempts",
            )
            .await;
        }
        Some(kind) if kind.is_retryable() => {
            count_blob(context, tenant, content_type, "retry");
            let backoff = next_backoff(context, item);
            let delay = error
                .retry_after()
                .map_or(backoff, |asked| asked.max(backoff));
            retry_later(context, item, delay, &error.to_string()).await;
        }
        Some(ErrorKind::SubscriptionDisabled | ErrorKind::SubscriptionMissing) => {
            count_blob(context, tenant, content_type, "refused");
            retry_later(context, item, Duration::from_secs(300), &error.to_string()).await;
        }
        _ if matches!(&error, ApiError::Auth(auth) if auth.is_retryable()) => {
            // The token endpoint is down or failing: nothing for the operator to fix. The
            // token provider paces its own requests, and the tenant's content is skipped
            // until its next attempt is due, so the item goes back as it was: an outage
            // does not pile up attempts (and backoff) on the items that met it.
            count_blob(context, tenant, content_type, "retry");
            context.problems.set(
                &tenant.name,
                content_type,
                FETCH_PROBLEM,
                error.to_string(),
                "Microsoft's token endpoint is not answering; the connector retries by itself",
                context.clock.now(),
            );
            release(context, item).await;
        }
        _ if matches!(error, ApiError::ForeignUrl { .. }) => {
            // The intake checks every contentUri, so this needs a bug or a changed config;
            // the item is kept as a dead letter (requeue-able) and counted.
            tracing::error!(tenant = %tenant.name, content_type, content_id, %error, "refusing to fetch content from a foreign host");
            count_blob(context, tenant, content_type, "foreign_url");
            dead_letter(context, item, &error.to_string()).await;
        }
        _ => {
            // Configuration problems (credentials, consent, roles, audit off): keep the
            // content, show the problem, try again later.
            count_blob(context, tenant, content_type, "refused");
            let advice = match &error {
                ApiError::Service { kind, .. } => kind.advice().unwrap_or(""),
                _ => "check the tenant's credentials and the app registration",
            };
            context.problems.set(
                &tenant.name,
                content_type,
                FETCH_PROBLEM,
                error.to_string(),
                advice,
                context.clock.now(),
            );
            let retryable = error.is_retryable();
            let delay = if retryable {
                Duration::from_secs(60)
            } else {
                Duration::from_secs(900)
            };
            retry_later(context, item, delay, &error.to_string()).await;
        }
    }
}

async fn give_up_unrecoverable(
    context: &WorkerContext,
    tenant: &Tenant,
    item: &LeasedItem,
    index: u64,
    offset: u64,
    reason: &str,
) {
    let content_type = item.content.content_type.as_str();
    let labels = context.metrics.content(&tenant.name, content_type);
    context
        .metrics
        .content_unrecoverable
        .get_or_create(&labels)
        .inc();
    count_blob(context, tenant, content_type, "unrecoverable");
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
        tracing::warn!(key = %item.key(), %error, "cannot record where the blob broke");
    }
    tracing::error!(tenant = %tenant.name, content_type, content_id = %item.content.content_id, index, offset, reason, "blob structure cannot be recovered; dead-lettered from this point");
    context.reporter.report(
        context,
        &tenant.name,
        content_type,
        "a content blob could not be parsed",
    );
    dead_letter(
        context,
        item,
        &format!("JSON structure lost at byte {offset} (record {index}): {reason}"),
    )
    .await;
}

fn count_blob(context: &WorkerContext, tenant: &Tenant, content_type: &str, outcome: &'static str) {
    context
        .metrics
        .blobs_fetched
        .get_or_create(&ContentOutcomeLabels {
            tenant: context.metrics.tenant_label(&tenant.name),
            content_type: content_type.to_string(),
            outcome,
        })
        .inc();
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

async fn dead_letter(context: &WorkerContext, item: &LeasedItem, reason: &str) {
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
        tracing::warn!(key = %item.key(), %error, "cannot update the queue item; it will be redelivered");
    }
}

/// Reports problems to the engine (`Notify`, topic `integration_failure`) once per
/// (tenant, content type) and then at most hourly while they recur, with the count since
/// the last report — never once per record.
#[derive(Debug, Default)]
pub struct FailureReporter {
    last: Mutex<HashMap<(String, String), ReportState>>,
}

/// When the last report of a (tenant, content type) went out, and the occurrences since.
type ReportState = (Option<DateTime<Utc>>, u64);

/// Shortest interval between two reports of one (tenant, content type).
const REPORT_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl FailureReporter {
    fn report(&self, context: &WorkerContext, tenant: &str, content_type: &str, what: &str) {
        let now = context.clock.now();
        let message = {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = last
                .entry((tenant.to_string(), content_type.to_string()))
                .or_insert((None, 0));
            entry.1 += 1;
            if entry.0.is_some_and(|sent| now - sent < REPORT_INTERVAL) {
                return;
            }
            let message = format!(
                "{content_type}: {what} ({} occurrence(s) since the last report)",
                entry.1
            );
            *entry = (Some(now), 0);
            message
        };
        context
            .forwarder
            .notify_integration_failure(tenant, &message);
    }
}

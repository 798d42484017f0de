//! The one way content references enter the queue: the webhook, the poller and backfill
//! all go through an [`Intake`].
//!
//! Guarantees, whatever the source:
//! - the queue's hard limit (`ops.queue_hard_limit`, [`QueueLimit`]) is checked before the
//!   enqueue: the only way to enqueue is through an [`IntakePermit`], which only the check
//!   hands out; a refusal is counted by source (`queue_hard_limit_refusals_total`);
//! - the enqueue is the queue's ([`ContentQueue::enqueue`]): durable when it returns;
//! - its outcomes are counted by source, exactly: `enqueued_total{source}` for new
//!   references, `deduplicated_total{source}` for references the queue already knew;
//! - the workers are woken when something new was enqueued (and only then): one idle
//!   worker per new reference ([`Notify::notify_one`]), not every idle worker, so a
//!   single-item notification costs one lease, not one per idle worker (a worker that
//!   finds work leases again before it waits, so the rest is taken by busy ones).
//!
//! A listed item the poller refuses to enqueue (its contentUri is not in the tenant's
//! feed on its API host, or its content type is not the one listed) is counted once per
//! item in `listed_skipped_total{reason}` and warned about at a bounded rate
//! ([`Intake::skip_listed`]): listings overlap, so the same item comes back at every
//! poll.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::ops::metrics::{ReasonLabels, SourceLabels};
use crate::ops::{Metrics, QueueFull, QueueLimit};
use crate::queue::{ContentKey, ContentQueue, ContentRef, EnqueueOutcome, QueueError, Source};

/// Skipped listed items remembered so that each is counted once; beyond, the oldest is
/// forgotten (and would be counted again if it came back).
const REMEMBERED_SKIPS: usize = 10_000;

/// Workers woken by one enqueue, at most (more than any worker pool).
const MAX_WAKES_PER_ENQUEUE: u64 = 1024;

/// Warnings about skipped listed items logged per minute, at most.
const SKIP_WARNINGS_PER_MINUTE: u32 = 10;

/// Why an intake did not take references.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The queue is at its hard limit: nothing was enqueued.
    #[error(transparent)]
    Full(#[from] QueueFull),
    /// The queue could not store the references: nothing of the batch is known to be in.
    #[error("cannot enqueue: {0}")]
    Queue(#[from] QueueError),
}

/// What one enqueue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admitted {
    /// References new to the queue.
    pub enqueued: u64,
    /// References the queue already knew (deduplicated by (tenant, contentId)).
    pub duplicates: u64,
}

/// Why a listed item was not enqueued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// Its contentUri is not in the tenant's feed on its API host.
    ContentUriOffHost,
    /// Its content type is not the one that was listed.
    ContentTypeMismatch,
}

impl SkipReason {
    /// Every reason, for metric pre-registration.
    pub const ALL: [SkipReason; 2] = [Self::ContentUriOffHost, Self::ContentTypeMismatch];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentUriOffHost => "content_uri_off_host",
            Self::ContentTypeMismatch => "content_type_mismatch",
        }
    }
}

/// The intake path shared by every source; cheap to clone.
#[derive(Clone)]
pub struct Intake {
    queue: Arc<dyn ContentQueue>,
    metrics: Arc<Metrics>,
    work_available: Arc<Notify>,
    limit: Option<Arc<QueueLimit>>,
    skips: Arc<Skips>,
}

impl Intake {
    /// An intake into `queue`, counting in `metrics`, waking the workers through
    /// `work_available`; unbounded until [`Intake::with_limit`].
    pub fn new(
        queue: Arc<dyn ContentQueue>,
        metrics: Arc<Metrics>,
        work_available: Arc<Notify>,
    ) -> Self {
        Self {
            queue,
            metrics,
            work_available,
            limit: None,
            skips: Arc::new(Skips::new()),
        }
    }

    /// Refuses enqueues while the queue is at `limit`'s hard bound.
    pub fn with_limit(mut self, limit: Arc<QueueLimit>) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Checks the hard limit for `source`: a permit to enqueue, or [`QueueFull`] (counted).
    /// The webhook checks before it reads a body, so a full queue costs no body read.
    pub async fn reserve(&self, source: Source) -> Result<IntakePermit<'_>, QueueFull> {
        if let Some(limit) = &self.limit {
            limit.check(source_label(source)).await?;
        }
        Ok(IntakePermit {
            intake: self,
            source,
        })
    }

    /// Checks the hard limit, enqueues `refs` as coming from `source`, counts the
    /// outcomes and wakes the workers. An empty batch is neither checked nor enqueued.
    pub async fn enqueue(
        &self,
        source: Source,
        refs: Vec<ContentRef>,
    ) -> Result<Admitted, IntakeError> {
        if refs.is_empty() {
            return Ok(Admitted::default());
        }
        Ok(self.reserve(source).await?.enqueue(refs).await?)
    }

    /// What the workers wait on between leases, woken after each enqueue of new content.
    pub fn work_available(&self) -> Arc<Notify> {
        self.work_available.clone()
    }

    /// Wakes idle workers, for what reaches the queue other than by an enqueue (a requeue
    /// of dead letters).
    pub fn wake_workers(&self) {
        self.work_available.notify_waiters();
    }

    /// Wakes one idle worker per new reference, at most [`MAX_WAKES_PER_ENQUEUE`]: a worker
    /// that leased an item leases again before it waits, so it takes what the others do not.
    /// A wake that finds no worker waiting is kept for the next one that arms its wait.
    fn wake_for(&self, new_references: u64) {
        for _ in 0..new_references.min(MAX_WAKES_PER_ENQUEUE) {
            self.work_available.notify_one();
        }
    }

    /// Accounts for a listed item that is not enqueued: counted the first time this item
    /// is skipped (`listed_skipped_total{reason}`), warned about at most
    /// [`SKIP_WARNINGS_PER_MINUTE`] times a minute. Returns true when it was counted now.
    pub fn skip_listed(
        &self,
        tenant: &str,
        content_type: &str,
        key: &ContentKey,
        reason: SkipReason,
    ) -> bool {
        if !self.skips.first_time(key) {
            return false;
        }
        self.metrics
            .listed_skipped
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
        if self.skips.warnings.check().is_ok() {
            // Debug-quoted: a listing is the API's text, never written raw into a log line.
            let content_id = &key.content_id;
            match reason {
                SkipReason::ContentUriOffHost => tracing::warn!(
                    %tenant, %content_type, ?content_id,
                    "listed content skipped: its contentUri is not in the tenant's feed on its API host"
                ),
                SkipReason::ContentTypeMismatch => tracing::warn!(
                    %tenant, %content_type, ?content_id,
                    "listed content skipped: the listing of this content type returned an item of another type"
                ),
            }
        }
        true
    }
}

/// Leave to enqueue, from a hard-limit check that passed.
pub struct IntakePermit<'intake> {
    intake: &'intake Intake,
    source: Source,
}

impl IntakePermit<'_> {
    /// Enqueues `refs` (each marked as coming from the permit's source), counts the
    /// outcomes by source and wakes the workers when something was new.
    pub async fn enqueue(self, mut refs: Vec<ContentRef>) -> Result<Admitted, QueueError> {
        if refs.is_empty() {
            return Ok(Admitted::default());
        }
        for content in &mut refs {
            content.source = self.source;
        }
        let intake = self.intake;
        let outcomes = intake.queue.enqueue(refs).await?;
        let enqueued = outcomes
            .iter()
            .filter(|outcome| **outcome == EnqueueOutcome::Enqueued)
            .count() as u64;
        let admitted = Admitted {
            enqueued,
            duplicates: outcomes.len() as u64 - enqueued,
        };
        let source = SourceLabels {
            source: source_label(self.source),
        };
        let metrics = &intake.metrics;
        metrics
            .enqueued
            .get_or_create(&source)
            .inc_by(admitted.enqueued);
        metrics
            .deduplicated
            .get_or_create(&source)
            .inc_by(admitted.duplicates);
        intake.wake_for(admitted.enqueued);
        Ok(admitted)
    }
}

/// The `source` label of a [`Source`].
pub fn source_label(source: Source) -> &'static str {
    match source {
        Source::Webhook => "webhook",
        Source::Poll => "poll",
        Source::Backfill => "backfill",
    }
}

/// The skipped listed items already counted (bounded, oldest forgotten first) and the
/// warnings' rate limiter.
struct Skips {
    seen: Mutex<(HashSet<ContentKey>, VecDeque<ContentKey>)>,
    warnings: DefaultDirectRateLimiter,
}

impl Skips {
    fn new() -> Self {
        let per_minute = NonZeroU32::new(SKIP_WARNINGS_PER_MINUTE).expect("non-zero constant");
        Self {
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            warnings: RateLimiter::direct(Quota::per_minute(per_minute)),
        }
    }

    /// True the first time `key` is seen (since it was last forgotten).
    fn first_time(&self, key: &ContentKey) -> bool {
        let mut guard = self
            .seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (set, order) = &mut *guard;
        if !set.insert(key.clone()) {
            return false;
        }
        order.push_back(key.clone());
        if order.len() > REMEMBERED_SKIPS
            && let Some(oldest) = order.pop_front()
        {
            set.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_item_is_counted_once_however_often_it_is_listed_again() {
        let skips = Skips::new();
        let key = ContentKey::new("tenant", "content-1");
        assert!(skips.first_time(&key));
        for _ in 0..5 {
            assert!(!skips.first_time(&key), "listed again: not counted again");
        }
        assert!(skips.first_time(&ContentKey::new("tenant", "content-2")));
    }

    #[test]
    fn the_memory_of_skipped_items_is_bounded() {
        let skips = Skips::new();
        for index in 0..=REMEMBERED_SKIPS {
            assert!(skips.first_time(&ContentKey::new("tenant", index.to_string())));
        }
        let guard = skips.seen.lock().unwrap();
        assert_eq!(guard.0.len(), REMEMBERED_SKIPS);
        assert_eq!(guard.1.len(), REMEMBERED_SKIPS);
        assert!(
            !guard.0.contains(&ContentKey::new("tenant", "0")),
            "oldest forgotten"
        );
    }

    #[test]
    fn skip_warnings_are_rate_limited() {
        let skips = Skips::new();
        let allowed = (0..100).filter(|_| skips.warnings.check().is_ok()).count();
        assert_eq!(allowed, SKIP_WARNINGS_PER_MINUTE as usize);
    }
}

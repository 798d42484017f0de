//! The queue's hard bound (`ops.queue_hard_limit`): above it, the intake stops adding.
//!
//! `ops.queue_high_water` only fails `/readyz`, which a load balancer may ignore and
//! Microsoft never reads. The hard limit is what bounds the store: at or above it the
//! webhook answers 503 (Microsoft retries the notification later) and the poller leaves
//! its cursor where it is and retries after its backoff, and a backfill reports the pair
//! failed, so nothing is lost, only delayed. The check is part of the one intake path
//! ([`crate::intake::Intake`]). Every refusal is counted by source (`queue_hard_limit_refusals_total`) and
//! shown on `/status` (`queue.hard_limit_refusals`).

use std::sync::Arc;

use crate::ops::Metrics;
use crate::ops::metrics::SourceLabels;
use crate::queue::ContentQueue;

/// The queue holds as many open items as its hard limit allows, or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the queue holds {open} open content references, at or above ops.queue_hard_limit ({limit}): nothing more is enqueued until the workers drain it; retried later"
)]
pub struct QueueFull {
    /// Items pending or leased when the check ran.
    pub open: u64,
    /// The limit.
    pub limit: u64,
}

/// Checks the queue's open items against the hard limit before an enqueue.
pub struct QueueLimit {
    limit: u64,
    queue: Arc<dyn ContentQueue>,
    metrics: Arc<Metrics>,
}

impl QueueLimit {
    /// A bound of `limit` open items on `queue`; refusals are counted in `metrics`.
    pub fn new(limit: u64, queue: Arc<dyn ContentQueue>, metrics: Arc<Metrics>) -> Self {
        Self {
            limit,
            queue,
            metrics,
        }
    }

    /// The limit, in open items.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// `Ok` when `source` (`webhook`, `poll`, `backfill`) may enqueue now; [`QueueFull`], counted,
    /// when the open items reached the limit. A queue that cannot count lets the enqueue
    /// go on: the enqueue then reports the store's own error.
    pub async fn check(&self, source: &'static str) -> Result<(), QueueFull> {
        let Ok(open) = self.queue.open_items().await else {
            return Ok(());
        };
        if open < self.limit {
            return Ok(());
        }
        self.metrics
            .queue_hard_limit_refusals
            .get_or_create(&SourceLabels { source })
            .inc();
        Err(QueueFull {
            open,
            limit: self.limit,
        })
    }
}

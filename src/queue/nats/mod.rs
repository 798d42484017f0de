//! The NATS JetStream backend: one queue shared by several replicas behind a load balancer.
//!
//! Its state lives in one JetStream stream and a handful of key-value buckets, shared by
//! every replica; what a replica keeps to itself is only the deliveries it holds. By concern:
//!
//! - [`connection`]: the settings, connecting, and creating the stream, its consumer and the
//!   buckets when missing;
//! - [`records`]: the format table (every stream and bucket, its key layout, the encoding of
//!   its values and the rules that keep builds compatible) and the reads and writes of them;
//! - [`leases`]: deliveries as leases, the lease every replica sees in the progress bucket,
//!   and the compare-and-set writes that refuse a stale lease;
//! - [`contract`]: the [`ContentQueue`](super::ContentQueue), [`MetaStore`](super::MetaStore)
//!   and [`QueueStore`](super::QueueStore) implementations, with the order of their writes;
//! - [`leader`]: the leader lease.
//!
//! **Durability.** A write returns once the NATS server stored it. With one server that is
//! its file store (it survives a server crash; a power loss may lose the last writes unless
//! the server syncs every write); with `stream_replicas = 3` in a NATS cluster, a write is
//! acknowledged once a majority stored it.

mod connection;
mod contract;
mod enqueue;
pub mod leader;
mod leases;
mod records;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};

use super::{ContentKey, QueueError};
use crate::clock::Clock;
pub(crate) use connection::open_bucket;
pub use connection::{NatsSettings, SEEN_MAX_AGE, probe};
use leases::Held;

/// How long a count of the open items (one stream-info request to the server) is reused.
/// The hard-limit check of every notification asks for it: one request each was a quarter of
/// a notification's round trips, and the heaviest for the server. The limit is a bound on
/// a backlog of thousands, so a count a quarter of a second old serves it as well.
pub(crate) const OPEN_ITEMS_MAX_AGE: Duration = Duration::from_millis(250);

/// The queue and metadata store on NATS JetStream (see the module doc).
pub struct NatsQueue {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream_name: String,
    subject: String,
    consumer: consumer::PullConsumer,
    seen: kv::Store,
    progress: kv::Store,
    dead: kv::Store,
    dead_records: kv::Store,
    meta: kv::Store,
    ack_wait: Duration,
    held: Mutex<HashMap<ContentKey, Held>>,
    clock: Clock,
    closed: AtomicBool,
    failures: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// Concurrent enqueues, committed in groups ([`enqueue`]).
    enqueue_groups: enqueue::EnqueueGroups,
    /// The last count of open items and when it was read ([`OPEN_ITEMS_MAX_AGE`]); the
    /// lock makes concurrent callers share one request.
    open_items: tokio::sync::Mutex<Option<(std::time::Instant, u64)>>,
}

impl NatsQueue {
    fn check_open(&self) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        Ok(())
    }

    /// A NATS failure, counted for `store_errors_total`.
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> QueueError {
        store_failure(&self.failures, what, error)
    }

    fn wrote(&self, count: u64) {
        count_write(&self.writes, count);
    }
}

/// A NATS failure, counted in `failures` for `store_errors_total`.
fn store_failure(failures: &AtomicU64, what: &str, error: impl std::fmt::Display) -> QueueError {
    failures.fetch_add(1, Ordering::Relaxed);
    QueueError::Io {
        message: format!("NATS: cannot {what}: {error}"),
    }
}

/// Counts `count` writes in `writes`.
fn count_write(writes: &AtomicU64, count: u64) {
    writes.fetch_add(count, Ordering::Relaxed);
}

//! The durable content queue: content references waiting to be fetched, keyed by
//! (tenant id, contentId), between the intake (webhook, poller, backfill) and the workers.
//!
//! This module owns the contract ([`ContentQueue`], [`MetaStore`]), the item types and the
//! item state machine ([`state`]); [`embedded`] is the single-file backend (redb) used by
//! default; [`nats`] is the NATS JetStream backend that several replicas behind a load
//! balancer share. The service holds either as a [`QueueStore`].
//!
//! What flows through it is a *reference* to a content blob, never the blob or its records:
//! the store holds no record bodies at rest (DLP.All records carry the secrets they matched).
//! Dead letters are references too: contentId, record index, byte range, SHA-256 and reason.
//!
//! The rule that makes the pipeline lossless is visible here: the webhook answers 200 and the
//! poller advances its cursor only after [`ContentQueue::enqueue`] returned; a worker calls
//! [`ContentQueue::complete`] only after the engine acked the blob's last record, and records
//! its progress with [`ContentQueue::record_acked`] so that a restart resumes mid-blob.
//!
//! A record dead-lettered inside a blob (not valid JSON, and later oversized or refused by
//! the engine) is lost until an operator requeues it: [`ContentQueue::requeue_dead`] makes
//! its item pending again with the record's index in [`LeasedItem::redo_records`], the
//! worker fetches the blob again (while Microsoft keeps it) and forwards only what
//! [`LeasedItem::already_settled`] does not rule out, and `complete` then removes the dead
//! records it sent. [`QueueStats::lost_records`] counts the dead records not requeued.

pub mod embedded;
pub mod nats;
pub mod state;

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use embedded::EmbeddedQueue;
pub use nats::NatsQueue;
pub use state::{ItemState, LeaseId, Transition, TransitionError};

/// The identity of a content blob in the queue: dedupe is on this pair.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentKey {
    /// The Microsoft 365 tenant (directory) id the content belongs to.
    pub tenant_id: String,
    /// Microsoft's opaque contentId.
    pub content_id: String,
}

impl ContentKey {
    /// A key from its two parts.
    pub fn new(tenant_id: impl Into<String>, content_id: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            content_id: content_id.into(),
        }
    }
}

impl fmt::Display for ContentKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "tenant {} content {}",
            self.tenant_id, self.content_id
        )
    }
}

/// How a content reference reached the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A webhook notification from Microsoft.
    Webhook,
    /// The periodic content listing.
    Poll,
    /// An operator-requested backfill.
    Backfill,
}

/// A reference to one content blob, as Microsoft describes it in a notification or listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentRef {
    /// The tenant the content belongs to.
    pub tenant_id: String,
    /// The content type, e.g. `Audit.Exchange` or `DLP.All`.
    pub content_type: String,
    /// Microsoft's opaque contentId.
    pub content_id: String,
    /// The blob's URL (already checked to be on the tenant's API host by the intake).
    pub content_uri: String,
    /// When Microsoft made the content available.
    pub content_created: DateTime<Utc>,
    /// When retrieval stops working; also when the done tombstone may be purged.
    pub content_expiration: DateTime<Utc>,
    /// How it reached the queue.
    pub source: Source,
}

impl ContentRef {
    /// The dedupe key of this reference.
    pub fn key(&self) -> ContentKey {
        ContentKey::new(&self.tenant_id, &self.content_id)
    }
}

/// The result of enqueuing one reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// New: stored as pending.
    Enqueued,
    /// The key was already pending, leased, done (tombstone) or dead: nothing changed.
    Duplicate,
}

/// One item as stored: the reference, its state and its progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueItem {
    /// The content reference.
    pub content: ContentRef,
    /// Where the item stands.
    pub state: ItemState,
    /// How many records of the blob (from its start) the engine has acked.
    pub acked_records: u64,
    /// How many records of the blob were dead-lettered.
    pub dead_records: u64,
    /// The reason given by the last `retry_later`, if any.
    pub last_retry_reason: Option<String>,
    /// When the reference was first enqueued.
    pub enqueued_at: DateTime<Utc>,
}

/// The `acked_records` of a done item requeued for its dead records: every record of the
/// blob was settled before, so only [`LeasedItem::redo_records`] are sent again.
pub const EVERY_RECORD: u64 = u64::MAX;

/// An item handed to a worker by [`ContentQueue::lease`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedItem {
    /// The content reference.
    pub content: ContentRef,
    /// The lease to name in every later call about this item.
    pub lease: LeaseId,
    /// When the lease expires unless extended.
    pub lease_until: DateTime<Utc>,
    /// Records already acked: the worker skips this many records of the blob (all of them,
    /// [`EVERY_RECORD`], for a done item requeued for its dead records).
    pub acked_records: u64,
    /// Indices of dead records an operator requeued: sent again even below
    /// `acked_records`. Empty unless the item was requeued with dead records.
    pub redo_records: BTreeSet<u64>,
    /// Failed attempts before this lease.
    pub attempts: u32,
}

impl LeasedItem {
    /// The dedupe key of the leased item.
    pub fn key(&self) -> ContentKey {
        self.content.key()
    }

    /// True when record `index` of the blob needs nothing from this pass: the engine
    /// acked it before and no operator requeued it. The worker forwards every other
    /// record (and dead-letters it again if it is still bad).
    pub fn already_settled(&self, index: u64) -> bool {
        index < self.acked_records && !self.redo_records.contains(&index)
    }
}

/// One record of a blob that could not be forwarded, kept by reference only: where it is
/// and what it hashes to, never its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadRecord {
    /// The record's index in the blob's JSON array (0-based).
    pub index: u64,
    /// Its byte range `[start, end)` in the blob.
    pub byte_range: (u64, u64),
    /// SHA-256 of those bytes, so an operator can match a refetched blob.
    pub sha256: [u8; 32],
    /// Why it was dead-lettered (must not quote the record).
    pub reason: String,
}

/// Counts and ages for /status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Items waiting for a worker.
    pub pending: u64,
    /// Items held by a worker (including expired leases not yet taken again).
    pub leased: u64,
    /// Done tombstones kept for dedupe.
    pub done: u64,
    /// Dead-lettered items.
    pub dead: u64,
    /// Dead-lettered records (of items dead or not), requeued ones included.
    pub dead_records: u64,
    /// Of those, records an operator requeued that wait for their item to send them again.
    pub requeued_records: u64,
    /// Enqueue time of the oldest item still pending or leased.
    pub oldest_open_enqueued: Option<DateTime<Utc>>,
    /// `contentCreated` of that same item.
    pub oldest_open_created: Option<DateTime<Utc>>,
    /// Write transactions committed since this process opened the store.
    pub commits: u64,
    /// Write requests served since this process opened the store (`commits` is lower when
    /// concurrent requests shared a commit).
    pub write_requests: u64,
}

/// Errors of the queue boundary. Messages name the item or say what the operator should fix;
/// they never carry record content.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Reading or writing the store failed.
    #[error("queue store i/o failed: {message}; check the disk and the store directory")]
    Io {
        /// What failed.
        message: String,
    },
    /// The disk holding the store is full (ENOSPC or quota).
    #[error("the disk holding the queue store is full; free space in the store directory")]
    Full,
    /// The store file is damaged.
    #[error(
        "queue store is corrupt: {message}; move the store file aside and restart to start empty"
    )]
    Corrupt {
        /// What is wrong.
        message: String,
    },
    /// Another process has the store open.
    #[error("queue store {path} is open in another process; stop it or use another store path")]
    AlreadyOpen {
        /// The store file.
        path: String,
    },
    /// The store was written by an incompatible version of the connector.
    #[error(
        "queue store format version {found} is not supported (this build reads versions up to {supported}); run a newer connector"
    )]
    UnsupportedFormat {
        /// The version found in the file.
        found: u64,
        /// The newest version this build reads (and the one it writes).
        supported: u64,
    },
    /// The caller's lease is no longer the item's current lease (it expired and another
    /// worker leased the item, or the item moved on).
    #[error("the lease on {key} is no longer held; another worker owns the item now")]
    StaleLease {
        /// The item.
        key: ContentKey,
    },
    /// No such item.
    #[error("no queue item for {key}")]
    NotFound {
        /// The item.
        key: ContentKey,
    },
    /// The queue was closed (shutdown).
    #[error("the queue is closed")]
    Closed,
    /// Other users can get at the store, which holds the webhook secret.
    #[error(
        "queue store {path} is open to other users (mode {mode}) and holds the webhook secret; run `chmod -R o-rwx {dir}` as its owner and start again"
    )]
    OpenToOthers {
        /// The store directory or file found open.
        path: String,
        /// Its permission bits, in octal.
        mode: String,
        /// The store directory.
        dir: String,
    },
}

impl QueueStats {
    /// Dead records not requeued: lost until an operator requeues them.
    pub fn lost_records(&self) -> u64 {
        self.dead_records.saturating_sub(self.requeued_records)
    }
}

impl QueueError {
    /// True when the same call may succeed later (transient i/o, a full disk being freed):
    /// the webhook answers 503 so Microsoft retries; the poller retries its cycle.
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::Io { .. } | QueueError::Full)
    }
}

/// The durable content queue.
///
/// Guarantees every backend gives:
/// - **Durability**: when a write method returns `Ok`, its effect is stored by the backend
///   and survives a crash of this process (a power loss too on the embedded store; see the
///   backend notes for NATS). A crash loses only calls that had not returned.
///   In particular, an `Enqueued` or `Duplicate` outcome means the reference is stored: the
///   webhook may answer 200 and the poller may advance its cursor.
/// - **Dedupe**: at most one item per [`ContentKey`]. Enqueuing a key that is pending, leased,
///   done (until its tombstone is purged, after `contentExpiration`) or dead is a no-op.
/// - **Exclusive leases**: an item is held by at most one unexpired lease. A lease that
///   expires makes the item leasable again (workers that crash lose nothing). Every call made
///   under a lease names it; once another worker re-leased the item, calls under the old
///   lease fail with [`QueueError::StaleLease`] and change nothing.
/// - **Order**: `lease` hands out expired leases first, then pending items by `not_before`
///   (for fresh items: enqueue order). Order is best effort across tenants: there is no
///   ordering guarantee between items, and the pipeline never relies on one.
/// - **Atomicity and the batch report**: when `enqueue` returns `Ok`, every reference of the
///   batch is stored and its outcome says whether this call stored it. When it returns
///   `Err`, any of them may be stored or not (see the backend notes): the caller retries the
///   whole batch (the webhook answers 503, the poller keeps its cursor), which is safe and
///   stores what is missing.
/// - **Lease duration**: `lease` and `extend_lease` ask for a duration; the lease lasts until
///   the returned `lease_until`, which the caller must go by (a backend may fix the
///   duration). The item is not handed out again before it.
///
/// Backend notes (what differs; the contract suite `tests/queue_contract.rs` runs the same
/// expectations on both, and `src/queue/design.md` has the states and who calls what):
/// - *embedded*: every write call is one redb transaction, fsynced before it returns, so a
///   batch enqueue is all-or-nothing and survives a power loss. Leases last the requested
///   duration.
/// - *NATS*: a write returns once the server stored it; one server keeps it across a server
///   crash but a power loss may lose the last writes unless the server syncs every write
///   (`stream_replicas = 3` in a cluster: a majority stored it). A batch is published
///   reference by reference, so a failed `enqueue` may have queued some of it; the retry
///   marks those seen and reports them `Duplicate`. A lease lasts the shared consumer's ack
///   wait (`workers.lease_secs` of the replica that created it), whatever the call asks;
///   `lease_until` says so. The current lease of each item is kept in the shared progress
///   bucket and every call under a lease checks it with a compare-and-set, so a lease that
///   expired and was taken again on any replica is stale everywhere.
///
/// Items are leased at least once and may be processed more than once (a lease that expires
/// while its worker still runs): `acked_records` lets the next holder skip what the engine
/// already has.
///
/// Dead records and their requeue:
/// - a dead record is *lost* until an operator requeues it with [`Self::requeue_dead`],
///   then *requeued* until its item completes ([`QueueStats::requeued_records`]);
/// - the set of requeued indices is stored with the state change that makes the item
///   pending, in one atomic write, and handed to every later lease as
///   [`LeasedItem::redo_records`] until the item completes or dies;
/// - `complete` removes the dead records the item was requeued for, in the same atomic
///   write on the embedded store, before the item can no longer be redelivered on NATS:
///   a crash at any point either keeps the entry (the record is sent again: a duplicate,
///   never a loss) or comes after the engine acked the record;
/// - `add_dead_record` on a requeued index (the record failed again) replaces the entry
///   and makes it lost again; `dead_letter` makes every requeued record of the item lost
///   again.
#[async_trait]
pub trait ContentQueue: Send + Sync {
    /// Stores each reference not already known, as pending and due now. Returns one outcome
    /// per reference, in order. Durable when it returns.
    async fn enqueue(&self, refs: Vec<ContentRef>) -> Result<Vec<EnqueueOutcome>, QueueError>;

    /// Leases up to `max` items for `duration`: first items whose lease expired, then pending
    /// items whose `not_before` passed, oldest first, skipping the tenants in `skip_tenants`
    /// (paused or throttled ones).
    async fn lease(
        &self,
        max: usize,
        duration: Duration,
        skip_tenants: &HashSet<String>,
    ) -> Result<Vec<LeasedItem>, QueueError>;

    /// Extends a lease to `now + duration`; returns the new expiry.
    async fn extend_lease(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        duration: Duration,
    ) -> Result<DateTime<Utc>, QueueError>;

    /// Records that the engine acked the first `acked_records` records of the blob. Never
    /// moves the count backwards.
    async fn record_acked(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        acked_records: u64,
    ) -> Result<(), QueueError>;

    /// Every record is acked: the item becomes a done tombstone until its `contentExpiration`,
    /// and the dead records it was requeued for (and did not dead-letter again) are removed.
    async fn complete(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError>;

    /// Completes each of `completed` (as [`Self::complete`], in order): what the workers
    /// finished together, in one call, so a backend can store them in one write. Each has
    /// its own result (a stale lease fails alone). A completion reported `Ok` is durable,
    /// as `complete`'s; when the write fails, every completion reported with its error may
    /// or may not be stored (the lease then expires and the item is redelivered: a
    /// duplicate, never a loss). The default makes the calls one by one; the embedded store
    /// makes it one transaction.
    async fn complete_all(
        &self,
        completed: Vec<(ContentKey, LeaseId)>,
    ) -> Vec<Result<(), QueueError>> {
        let mut outcomes = Vec::with_capacity(completed.len());
        for (key, lease) in &completed {
            outcomes.push(self.complete(key, *lease).await);
        }
        outcomes
    }

    /// The attempt failed: the item is pending again from `not_before`, one attempt counted,
    /// `reason` kept for status.
    async fn retry_later(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        not_before: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), QueueError>;

    /// Gives the item back unprocessed (shutdown): pending and due now, no attempt counted.
    async fn release(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError>;

    /// Gives up on the item: it becomes a dead letter with `reason` (never record content);
    /// dead records it was requeued for count as lost again.
    async fn dead_letter(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        reason: &str,
    ) -> Result<(), QueueError>;

    /// Records one record of the item as dead (by reference) while the item goes on.
    /// Recording the same index twice keeps the last one; a requeued record recorded again
    /// is no longer requeued (lost again).
    async fn add_dead_record(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        record: DeadRecord,
    ) -> Result<(), QueueError>;

    /// An operator's requeue of the dead letters of `key`, durable when it returns:
    /// - a **dead** item becomes pending and due now with its attempts reset
    ///   ([`state::Transition::Requeue`]); its acked-record count is kept, so records the
    ///   engine already has are skipped, and every dead record of the item is requeued
    ///   (sent again even below the acked count);
    /// - a **done** item with dead records, whose content Microsoft still serves (before
    ///   its `contentExpiration`), becomes pending and due now, attempts at zero
    ///   ([`state::Transition::RedoRecords`]), with `acked_records` = [`EVERY_RECORD`] and
    ///   its dead records requeued: only they are sent again.
    ///
    /// Returns `true` when the item is pending now, `false` when nothing changed: no such
    /// item, an item pending or leased (its dead records wait until it is done or dead), a
    /// done item without dead records or whose content expired.
    async fn requeue_dead(&self, key: &ContentKey) -> Result<bool, QueueError>;

    /// Removes done tombstones whose content expired; returns how many were removed.
    async fn purge_expired_tombstones(&self) -> Result<u64, QueueError>;

    /// Counts and ages.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Items pending or leased (`/readyz` compares it with the high-water mark on every
    /// probe, the hard limit on every enqueue); a backend with a cheaper count than
    /// [`Self::stats`] overrides it. The embedded store's is exact as of its last commit;
    /// NATS reuses one count for up to 250 ms (`OPEN_ITEMS_MAX_AGE`), shared by replicas' writes.
    async fn open_items(&self) -> Result<u64, QueueError> {
        let stats = self.stats().await?;
        Ok(stats.pending + stats.leased)
    }

    /// One item, in whatever state.
    async fn get(&self, key: &ContentKey) -> Result<Option<QueueItem>, QueueError>;

    /// Up to `limit` dead items, oldest enqueued first.
    async fn dead_items(&self, limit: usize) -> Result<Vec<QueueItem>, QueueError>;

    /// Up to `limit` dead records, ordered by tenant, contentId and index.
    async fn dead_records(&self, limit: usize)
    -> Result<Vec<(ContentKey, DeadRecord)>, QueueError>;

    /// Stops accepting calls, lets the writes already submitted finish, and releases the
    /// store. Later calls fail with [`QueueError::Closed`].
    async fn close(&self) -> Result<(), QueueError>;
}

/// A small durable key-value area for the service's own metadata (webhook secret, poll
/// cursors, subscription start times), kept beside the queue. Values may be secret: backends
/// never log them. A `put` is durable when it returns.
#[async_trait]
pub trait MetaStore: Send + Sync {
    /// The value stored under `key`, if any.
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError>;

    /// Stores `value` under `key`, replacing any previous value.
    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), QueueError>;

    /// Stores `value` under `key` unless a value is there, and returns the value stored now
    /// (the earlier one, if any): replicas that start together agree on one generated value.
    /// Backends shared by several processes override it with an atomic create.
    async fn put_meta_if_absent(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, QueueError> {
        if let Some(existing) = self.get_meta(key).await? {
            return Ok(existing);
        }
        self.put_meta(key, value.clone()).await?;
        Ok(value)
    }
}

/// How the store behind the queue is doing, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StoreHealth {
    /// `embedded` or `nats`.
    pub backend: &'static str,
    /// False while the backend cannot be reached (NATS disconnected).
    pub connected: bool,
    /// What an operator should know (the NATS server, or why it is unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A queue backend as the service holds it: the queue, the metadata beside it, and what the
/// operations endpoints show about the backend itself.
pub trait QueueStore: ContentQueue + MetaStore {
    /// Failed store writes since start, for `store_errors_total`.
    fn store_failures(&self) -> u64;

    /// The backend's connection state.
    fn health(&self) -> StoreHealth;
}

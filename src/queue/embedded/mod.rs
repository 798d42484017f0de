//! The embedded queue backend: one redb file (`queue.redb`) in the store directory.
//!
//! redb is a pure-Rust, single-file, copy-on-write B-tree store with ACID transactions: a
//! commit either happens entirely or not at all, and the file is consistent after any crash
//! (on open after a crash, redb repairs its allocator state from the last committed root).
//! The tables and encodings are documented in [`format`](mod@format); the group commit in [`writer`].
//!
//! Crash guarantees:
//! - a write call that returned `Ok` is on disk (its batch was committed with
//!   `Durability::Immediate`, i.e. fsynced, before any requester was answered);
//! - a crash (kill -9, power loss) during a batch loses exactly the requests of that batch and
//!   of later ones, none of which had been answered, so no caller was told "stored";
//! - the store opens after a crash with every committed transaction and nothing else.
//!
//! Writes go through the writer thread; reads (`get`, `stats`, listings, metadata) use redb
//! read transactions on tokio's blocking pool and see the last committed state.
//!
//! Item leases are exclusive within one process. The file is locked by the process that has it
//! open (a second opener gets [`QueueError::AlreadyOpen`]); several replicas need the NATS
//! backend.
//!
//! A storage failure (full disk, i/o error) takes the store down: every call fails at once
//! with it (the webhook answers 503) while the writer thread reopens the file, which brings
//! the store back with everything committed before the failure ([`writer`] has the details,
//! [`EmbeddedQueue::store_failures`] counts them).
//!
//! The store is private to the service's user: created 0700 / 0600, and refused at open
//! when other users can get at it ([`permissions`]).

pub mod backend;
pub mod format;
mod handle;
pub mod permissions;
pub mod writer;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table};

pub use self::backend::DiskFaults;
use self::format::{IndexEntry, KeyPair, StoredDeadRecord, StoredItem};
use self::handle::StoreHandle;
pub use self::permissions::create_private_dir;
use self::writer::{Commit, Tables, Writer, spoils_transaction};
use crate::clock::Clock;
use crate::queue::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EVERY_RECORD, EnqueueOutcome, ItemState,
    LeaseId, LeasedItem, MetaStore, QueueError, QueueItem, QueueStats, Transition,
};
use crate::retry::RetryPolicy;

/// The store file's name inside the store directory.
pub const STORE_FILE_NAME: &str = "queue.redb";

/// How the store is opened; the defaults are production's.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Faults injected under the store file, for fault tests. Default `None`: the backend
    /// only forwards to the file.
    pub faults: Option<Arc<DiskFaults>>,
    /// The pauses between attempts to reopen the store after a storage failure. Default
    /// [`RetryPolicy::aggressive`]: 100 ms doubling to 10 s, forever, so writes resume
    /// within about 10 s of space coming back.
    pub reopen_retry: RetryPolicy,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            faults: None,
            reopen_retry: RetryPolicy::aggressive(),
        }
    }
}

/// The embedded, single-file queue and metadata store.
pub struct EmbeddedQueue {
    store: Arc<StoreHandle>,
    writer: Writer,
    clock: Clock,
    lease_ids: Arc<LeaseIds>,
}

/// Lease ids are handed out from memory, so a lease writes no counter: the store persists
/// only the end of the block of [`LEASE_ID_BLOCK`] ids being handed out, and a later run
/// starts after it. Ids are unique within a run and rise across runs (with gaps); a lease
/// never outlives its run anyway, as every lease is released when the store opens.
#[derive(Default)]
struct LeaseIds {
    next: AtomicU64,
    /// The persisted mark: ids below it are this run's to hand out.
    reserved: AtomicU64,
}

/// Lease ids persisted as taken at a time (one counter write per this many leases).
const LEASE_ID_BLOCK: u64 = 1 << 16;

impl LeaseIds {
    /// Hands out ids from the persisted mark `first` on (set once, at open).
    fn start_at(&self, first: u64) {
        self.next.store(first, Ordering::Relaxed);
        self.reserved.store(first, Ordering::Relaxed);
    }

    /// The next lease id; when it starts a new block, persists the block's end in the
    /// caller's transaction (only the writer thread runs transactions, one at a time).
    fn take(&self, counters: &mut Table<'_, &'static str, u64>) -> Result<LeaseId, QueueError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if id >= self.reserved.load(Ordering::Relaxed) {
            let end = id + LEASE_ID_BLOCK;
            counters
                .insert(format::COUNTER_NEXT_LEASE, end)
                .map_err(storage_error)?;
            self.reserved.store(end, Ordering::Relaxed);
        }
        Ok(LeaseId(id))
    }
}

impl std::fmt::Debug for EmbeddedQueue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EmbeddedQueue")
            .field("path", &self.store.path())
            .finish_non_exhaustive()
    }
}

impl EmbeddedQueue {
    /// Opens `dir/queue.redb`, creating the directory and the file when missing, and starts the
    /// writer thread. Times (lease expiry, `not_before`, tombstone purge) come from `clock`.
    pub async fn open(dir: &Path, clock: Clock) -> Result<Self, QueueError> {
        Self::open_with(dir, clock, StoreOptions::default()).await
    }

    /// [`open`](Self::open) with `options` (fault injection, the reopen policy).
    pub async fn open_with(
        dir: &Path,
        clock: Clock,
        options: StoreOptions,
    ) -> Result<Self, QueueError> {
        let dir = dir.to_path_buf();
        let faults = options.faults;
        let store = tokio::task::spawn_blocking(move || StoreHandle::open(&dir, faults))
            .await
            .map_err(|error| QueueError::Io {
                message: format!("opening the store stopped: {error}"),
            })??;
        let store = Arc::new(store);
        let writer = Writer::spawn(Arc::clone(&store), clock.clone(), options.reopen_retry)?;
        let queue = Self {
            store,
            writer,
            clock,
            lease_ids: Arc::default(),
        };
        let (stats, first_lease) = queue
            .read(|txn| {
                let counters = open_read_table(txn, format::COUNTERS)?;
                let next_lease = counters
                    .get(format::COUNTER_NEXT_LEASE)
                    .map_err(storage_error)?
                    .map_or(1, |value| value.value());
                Ok((read_stats(txn)?, next_lease))
            })
            .await?;
        queue.lease_ids.start_at(first_lease);
        queue
            .writer
            .counters
            .open_items
            .store(stats.pending + stats.leased, Ordering::Relaxed);
        Ok(queue)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// Storage failures (full disk, i/o error) that took the store down since it was opened;
    /// each was followed by reopening it.
    pub fn store_failures(&self) -> u64 {
        self.store.failures()
    }

    /// The storage failure the store is down for, while it is (reopening); `None` while it
    /// accepts writes.
    pub fn store_failure(&self) -> Option<QueueError> {
        self.store.failure()
    }

    /// Gives back, as pending and due now without counting an attempt, every item still
    /// leased. Only sound for this backend and only at start: the file lock guarantees no
    /// other process holds leases, so any lease found was held by a process that died (a
    /// crash or SIGKILL), and its items need not wait for the lease to expire. Returns how
    /// many items were released.
    pub async fn release_orphaned_leases(&self) -> Result<u64, QueueError> {
        self.writer.write(release_all_leases).await
    }

    async fn read<Output, Operation>(&self, operation: Operation) -> Result<Output, QueueError>
    where
        Output: Send + 'static,
        Operation: FnOnce(&ReadTransaction) -> Result<Output, QueueError> + Send + 'static,
    {
        let database = self.store.database()?;
        tokio::task::spawn_blocking(move || {
            let txn = database.begin_read().map_err(storage_error)?;
            operation(&txn)
        })
        .await
        .map_err(|error| QueueError::Io {
            message: format!("a store read stopped: {error}"),
        })?
    }

    /// Applies a lease-guarded transition, then `edit`, as one write.
    async fn transition(
        &self,
        key: &ContentKey,
        transition: Transition,
        edit: impl FnOnce(&mut QueueItem) + Send + 'static,
    ) -> Result<QueueItem, QueueError> {
        let key = key.clone();
        self.writer
            .write(move |tables, now| transition_item(tables, &key, transition, now, edit))
            .await
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded value is a plain handle with no invariant a panic could break.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Maps any redb error to the queue's error.
pub(super) fn storage_error(error: impl Into<redb::Error>) -> QueueError {
    match error.into() {
        redb::Error::Io(error) => io_error(error),
        redb::Error::Corrupted(message) => QueueError::Corrupt { message },
        redb::Error::PreviousIo => QueueError::Io {
            message: "an earlier write to the store failed; the store is being reopened".to_owned(),
        },
        other => QueueError::Io {
            message: other.to_string(),
        },
    }
}

/// Maps an i/o error, telling a full disk apart (the webhook answers 503 on both).
pub(super) fn io_error(error: std::io::Error) -> QueueError {
    match error.kind() {
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => QueueError::Full,
        _ => QueueError::Io {
            message: error.to_string(),
        },
    }
}

fn pair(key: &ContentKey) -> (&str, &str) {
    (key.tenant_id.as_str(), key.content_id.as_str())
}

/// The record indices of `key` in a table keyed by `(tenant id, contentId, index)`, in order.
fn record_indices<V: redb::Value + 'static>(
    table: &impl ReadableTable<(&'static str, &'static str, u64), V>,
    key: &ContentKey,
) -> Result<Vec<u64>, QueueError> {
    let (tenant_id, content_id) = pair(key);
    let range = (tenant_id, content_id, 0)..=(tenant_id, content_id, u64::MAX);
    let mut indices = Vec::new();
    for entry in table.range(range).map_err(storage_error)? {
        let (record_key, _) = entry.map_err(storage_error)?;
        indices.push(record_key.value().2);
    }
    Ok(indices)
}

fn lease_until(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    let duration = TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX);
    now.checked_add_signed(duration)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

// ---- operations inside a write transaction -------------------------------------------------

fn load_item(
    items: &impl ReadableTable<KeyPair, &'static [u8]>,
    key: &ContentKey,
) -> Result<Option<(QueueItem, u64)>, QueueError> {
    let Some(value) = items.get(pair(key)).map_err(storage_error)? else {
        return Ok(None);
    };
    StoredItem::decode_item(key, value.value()).map(Some)
}

/// The one place an item is written: stores it and moves its index entries from those of
/// `previous` (its state before, if it existed) to those of its current state.
fn store_item(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    seq: u64,
    previous: Option<&ItemState>,
    item: &QueueItem,
) -> Result<(), QueueError> {
    let bytes = StoredItem::encode_item(item, seq)?;
    let new_entry = IndexEntry::of(&item.state, seq);
    let previous_entry = previous.map(|previous| IndexEntry::of(previous, seq));
    let was_open = previous_entry.as_ref().is_some_and(IndexEntry::is_open);
    let is_open = new_entry.is_open();
    if let Some(entry) = previous_entry {
        // An item open before and after keeps its `open` entry (the same seq and key).
        remove_index_entry(tables, entry, seq, !is_open)?;
    }
    let key_pair = pair(key);
    match new_entry {
        IndexEntry::Pending(index_key) => tables.pending.insert(index_key, key_pair),
        IndexEntry::Leased(index_key) => tables.leased.insert(index_key, key_pair),
        IndexEntry::Done(index_key) => tables.done.insert(index_key, key_pair),
        IndexEntry::Dead(index_key) => tables.dead.insert(index_key, key_pair),
    }
    .map_err(storage_error)?;
    if is_open && !was_open {
        tables.open.insert(seq, key_pair).map_err(storage_error)?;
    }
    tables
        .items
        .insert(key_pair, bytes.as_slice())
        .map_err(storage_error)?;
    Ok(())
}

/// Removes the item's entry from its state's index, and from `open` when `from_open` and
/// the state is open.
fn remove_index_entry(
    tables: &mut Tables<'_>,
    entry: IndexEntry,
    seq: u64,
    from_open: bool,
) -> Result<(), QueueError> {
    match entry {
        IndexEntry::Pending(index_key) => tables.pending.remove(index_key).map(drop),
        IndexEntry::Leased(index_key) => tables.leased.remove(index_key).map(drop),
        IndexEntry::Done(index_key) => tables.done.remove(index_key).map(drop),
        IndexEntry::Dead(index_key) => tables.dead.remove(index_key).map(drop),
    }
    .map_err(storage_error)?;
    if from_open && entry.is_open() {
        tables.open.remove(seq).map_err(storage_error)?;
    }
    Ok(())
}

fn enqueue_refs(
    tables: &mut Tables<'_>,
    refs: Vec<ContentRef>,
    now: DateTime<Utc>,
) -> Result<Vec<EnqueueOutcome>, QueueError> {
    let mut outcomes = Vec::with_capacity(refs.len());
    for content in refs {
        let key = content.key();
        if tables
            .items
            .get(pair(&key))
            .map_err(storage_error)?
            .is_some()
        {
            outcomes.push(EnqueueOutcome::Duplicate);
            continue;
        }
        let seq = tables.take_seq()?;
        let item = QueueItem {
            content,
            state: ItemState::Pending {
                not_before: now,
                attempts: 0,
            },
            acked_records: 0,
            dead_records: 0,
            last_retry_reason: None,
            enqueued_at: now,
        };
        store_item(tables, &key, seq, None, &item)?;
        outcomes.push(EnqueueOutcome::Enqueued);
    }
    Ok(outcomes)
}

/// Moves an item by `transition`; a refused transition writes nothing.
fn transition_item(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    transition: Transition,
    now: DateTime<Utc>,
    edit: impl FnOnce(&mut QueueItem),
) -> Result<QueueItem, QueueError> {
    let (mut item, seq) =
        load_item(&tables.items, key)?.ok_or_else(|| QueueError::NotFound { key: key.clone() })?;
    let next = item
        .state
        .apply(transition, now)
        .map_err(|_| QueueError::StaleLease { key: key.clone() })?;
    let previous = std::mem::replace(&mut item.state, next);
    edit(&mut item);
    store_item(tables, key, seq, Some(&previous), &item)?;
    Ok(item)
}

/// Loads an item the caller must hold under `lease`.
fn load_leased(
    tables: &Tables<'_>,
    key: &ContentKey,
    lease: LeaseId,
) -> Result<(QueueItem, u64), QueueError> {
    let (item, seq) =
        load_item(&tables.items, key)?.ok_or_else(|| QueueError::NotFound { key: key.clone() })?;
    if !item.state.is_leased_by(lease) {
        return Err(QueueError::StaleLease { key: key.clone() });
    }
    Ok((item, seq))
}

fn lease_due(
    tables: &mut Tables<'_>,
    now: DateTime<Utc>,
    max: usize,
    duration: Duration,
    skip_tenants: &HashSet<String>,
    lease_ids: &LeaseIds,
) -> Result<Vec<LeasedItem>, QueueError> {
    let due = (format::micros(now), u64::MAX);
    let mut keys = Vec::new();
    collect_due(&tables.leased, due, max, skip_tenants, &mut keys)?;
    collect_due(&tables.pending, due, max, skip_tenants, &mut keys)?;
    let until = lease_until(now, duration);
    let mut leased = Vec::with_capacity(keys.len());
    for key in keys {
        let lease = lease_ids.take(&mut tables.counters)?;
        let item = match transition_item(
            tables,
            &key,
            Transition::Lease { lease, until },
            now,
            |_| {},
        ) {
            Ok(item) => item,
            // The index and the item always change together; an item that is not leasable
            // after all is left where it is.
            Err(QueueError::StaleLease { .. } | QueueError::NotFound { .. }) => continue,
            Err(error) => return Err(error),
        };
        let ItemState::Leased { attempts, .. } = item.state else {
            continue;
        };
        let redo_records = record_indices(&tables.redo_records, &key)?
            .into_iter()
            .collect();
        leased.push(LeasedItem {
            content: item.content,
            lease,
            lease_until: until,
            acked_records: item.acked_records,
            redo_records,
            attempts,
        });
    }
    Ok(leased)
}

/// Appends to `keys` (up to `max` in all) the entries of a time index that are due. Entries
/// of skipped tenants are stepped over, so the scan is linear in the due items of paused
/// tenants ahead of the first `max` others: cheap while pauses are short, as throttling is.
fn collect_due(
    index: &Table<'_, (i64, u64), KeyPair>,
    due: (i64, u64),
    max: usize,
    skip_tenants: &HashSet<String>,
    keys: &mut Vec<ContentKey>,
) -> Result<(), QueueError> {
    for entry in index.range(..=due).map_err(storage_error)? {
        if keys.len() >= max {
            break;
        }
        let (_, value) = entry.map_err(storage_error)?;
        let (tenant_id, content_id) = value.value();
        if skip_tenants.contains(tenant_id) {
            continue;
        }
        keys.push(ContentKey::new(tenant_id, content_id));
    }
    Ok(())
}

fn release_all_leases(tables: &mut Tables<'_>, now: DateTime<Utc>) -> Result<u64, QueueError> {
    let mut keys = Vec::new();
    for entry in tables.leased.iter().map_err(storage_error)? {
        let (_, value) = entry.map_err(storage_error)?;
        let (tenant_id, content_id) = value.value();
        keys.push(ContentKey::new(tenant_id, content_id));
    }
    let mut released = 0;
    for key in keys {
        let Some((item, _)) = load_item(&tables.items, &key)? else {
            continue;
        };
        let ItemState::Leased { lease, .. } = item.state else {
            continue;
        };
        let transition = Transition::Release {
            lease,
            not_before: now,
        };
        transition_item(tables, &key, transition, now, |_| {})?;
        released += 1;
    }
    Ok(released)
}

fn record_acked_count(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    lease: LeaseId,
    acked_records: u64,
) -> Result<(), QueueError> {
    let (mut item, seq) = load_leased(tables, key, lease)?;
    if acked_records <= item.acked_records {
        return Ok(());
    }
    item.acked_records = acked_records;
    let state = item.state.clone();
    store_item(tables, key, seq, Some(&state), &item)
}

fn store_dead_record(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    lease: LeaseId,
    record: &DeadRecord,
) -> Result<(), QueueError> {
    let (mut item, seq) = load_leased(tables, key, lease)?;
    let bytes = StoredDeadRecord::encode_record(record)?;
    let record_key = (
        key.tenant_id.as_str(),
        key.content_id.as_str(),
        record.index,
    );
    let replaced = tables
        .dead_records
        .insert(record_key, bytes.as_slice())
        .map_err(storage_error)?
        .is_some();
    // A requeued record that failed again is lost again, not waiting to be sent.
    tables
        .redo_records
        .remove(record_key)
        .map_err(storage_error)?;
    if replaced {
        return Ok(());
    }
    item.dead_records += 1;
    let state = item.state.clone();
    store_item(tables, key, seq, Some(&state), &item)
}

/// Dead → pending (attempts reset, last retry reason cleared), or done with dead records →
/// pending with every record settled; either way the item's dead records are requeued.
/// `false` when neither applies.
fn requeue_dead_item(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    now: DateTime<Utc>,
) -> Result<bool, QueueError> {
    let Some((mut item, seq)) = load_item(&tables.items, key)? else {
        return Ok(false);
    };
    let dead_indices = record_indices(&tables.dead_records, key)?;
    let transition = match item.state {
        ItemState::Dead { .. } => Transition::Requeue { not_before: now },
        ItemState::Done { .. }
            if !dead_indices.is_empty() && item.content.content_expiration > now =>
        {
            item.acked_records = EVERY_RECORD;
            Transition::RedoRecords { not_before: now }
        }
        _ => return Ok(false),
    };
    let Ok(next) = item.state.apply(transition, now) else {
        return Ok(false);
    };
    let previous = std::mem::replace(&mut item.state, next);
    item.last_retry_reason = None;
    store_item(tables, key, seq, Some(&previous), &item)?;
    for index in dead_indices {
        tables
            .redo_records
            .insert((key.tenant_id.as_str(), key.content_id.as_str(), index), ())
            .map_err(storage_error)?;
    }
    Ok(true)
}

/// Leased → done; the dead records the item was requeued for were sent: removed.
fn complete_item(
    tables: &mut Tables<'_>,
    key: &ContentKey,
    lease: LeaseId,
    now: DateTime<Utc>,
) -> Result<(), QueueError> {
    let (item, _) = load_leased(tables, key, lease)?;
    let tombstone_until = item.content.content_expiration;
    let redone = remove_redo_records(tables, key)?;
    for &index in &redone {
        tables
            .dead_records
            .remove((key.tenant_id.as_str(), key.content_id.as_str(), index))
            .map_err(storage_error)?;
    }
    let transition = Transition::Complete {
        lease,
        tombstone_until,
    };
    transition_item(tables, key, transition, now, |item| {
        item.dead_records = item.dead_records.saturating_sub(redone.len() as u64);
    })
    .map(drop)
}

/// Removes (and returns) the requeued record indices of `key`.
fn remove_redo_records(tables: &mut Tables<'_>, key: &ContentKey) -> Result<Vec<u64>, QueueError> {
    let indices = record_indices(&tables.redo_records, key)?;
    for &index in &indices {
        tables
            .redo_records
            .remove((key.tenant_id.as_str(), key.content_id.as_str(), index))
            .map_err(storage_error)?;
    }
    Ok(indices)
}

fn purge_tombstones(tables: &mut Tables<'_>, now: DateTime<Utc>) -> Result<u64, QueueError> {
    let expired = (format::micros(now), u64::MAX);
    let mut purged = Vec::new();
    for entry in tables.done.range(..=expired).map_err(storage_error)? {
        let (index_key, value) = entry.map_err(storage_error)?;
        let (tenant_id, content_id) = value.value();
        purged.push((index_key.value(), ContentKey::new(tenant_id, content_id)));
    }
    for (index_key, key) in &purged {
        tables.done.remove(*index_key).map_err(storage_error)?;
        tables.items.remove(pair(key)).map_err(storage_error)?;
    }
    Ok(purged.len() as u64)
}

fn put_meta_value(tables: &mut Tables<'_>, key: &str, value: &[u8]) -> Result<(), QueueError> {
    tables.meta.insert(key, value).map_err(storage_error)?;
    Ok(())
}

// ---- reads --------------------------------------------------------------------------------

fn open_read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    definition: redb::TableDefinition<K, V>,
) -> Result<redb::ReadOnlyTable<K, V>, QueueError> {
    txn.open_table(definition).map_err(storage_error)
}

fn read_stats(txn: &ReadTransaction) -> Result<QueueStats, QueueError> {
    let items = open_read_table(txn, format::ITEMS)?;
    let open = open_read_table(txn, format::OPEN)?;
    let oldest_open = match open.first().map_err(storage_error)? {
        Some((_, value)) => {
            let (tenant_id, content_id) = value.value();
            load_item(&items, &ContentKey::new(tenant_id, content_id))?
        }
        None => None,
    };
    let length = |table: &dyn ReadableTableMetadata| table.len().map_err(storage_error);
    Ok(QueueStats {
        pending: length(&open_read_table(txn, format::PENDING)?)?,
        leased: length(&open_read_table(txn, format::LEASED)?)?,
        done: length(&open_read_table(txn, format::DONE)?)?,
        dead: length(&open_read_table(txn, format::DEAD)?)?,
        dead_records: length(&open_read_table(txn, format::DEAD_RECORDS)?)?,
        requeued_records: length(&open_read_table(txn, format::REDO_RECORDS)?)?,
        oldest_open_enqueued: oldest_open.as_ref().map(|(item, _)| item.enqueued_at),
        oldest_open_created: oldest_open
            .as_ref()
            .map(|(item, _)| item.content.content_created),
        commits: 0,
        write_requests: 0,
    })
}

fn read_dead_items(txn: &ReadTransaction, limit: usize) -> Result<Vec<QueueItem>, QueueError> {
    let items = open_read_table(txn, format::ITEMS)?;
    let dead = open_read_table(txn, format::DEAD)?;
    let mut listed = Vec::new();
    for entry in dead.iter().map_err(storage_error)?.take(limit) {
        let (_, value) = entry.map_err(storage_error)?;
        let (tenant_id, content_id) = value.value();
        if let Some((item, _)) = load_item(&items, &ContentKey::new(tenant_id, content_id))? {
            listed.push(item);
        }
    }
    Ok(listed)
}

fn read_dead_records(
    txn: &ReadTransaction,
    limit: usize,
) -> Result<Vec<(ContentKey, DeadRecord)>, QueueError> {
    let records = open_read_table(txn, format::DEAD_RECORDS)?;
    let mut listed = Vec::new();
    for entry in records.iter().map_err(storage_error)?.take(limit) {
        let (record_key, value) = entry.map_err(storage_error)?;
        let (tenant_id, content_id, index) = record_key.value();
        let record = StoredDeadRecord::decode_record(index, value.value())?;
        listed.push((ContentKey::new(tenant_id, content_id), record));
    }
    Ok(listed)
}

#[async_trait]
impl ContentQueue for EmbeddedQueue {
    async fn enqueue(&self, refs: Vec<ContentRef>) -> Result<Vec<EnqueueOutcome>, QueueError> {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        self.writer
            .write(move |tables, now| enqueue_refs(tables, refs, now))
            .await
    }

    async fn lease(
        &self,
        max: usize,
        duration: Duration,
        skip_tenants: &HashSet<String>,
    ) -> Result<Vec<LeasedItem>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let skip_tenants = skip_tenants.clone();
        let lease_ids = Arc::clone(&self.lease_ids);
        // Volatile: a crash undoes nothing that matters, as every lease is released when the
        // store opens; this saves an fsync per blob.
        self.writer
            .write_with(Commit::Volatile, move |tables, now| {
                lease_due(tables, now, max, duration, &skip_tenants, &lease_ids)
            })
            .await
    }

    async fn extend_lease(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        duration: Duration,
    ) -> Result<DateTime<Utc>, QueueError> {
        let until = lease_until(self.clock.now(), duration);
        let item = self
            .transition(key, Transition::Extend { lease, until }, |_| {})
            .await?;
        match item.state {
            ItemState::Leased { until, .. } => Ok(until),
            _ => Err(QueueError::StaleLease { key: key.clone() }),
        }
    }

    async fn record_acked(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        acked_records: u64,
    ) -> Result<(), QueueError> {
        let key = key.clone();
        self.writer
            .write(move |tables, _| record_acked_count(tables, &key, lease, acked_records))
            .await
    }

    async fn complete(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        let key = key.clone();
        self.writer
            .write(move |tables, now| complete_item(tables, &key, lease, now))
            .await
    }

    /// One durable write (one fsync) for all the completions.
    async fn complete_all(
        &self,
        completed: Vec<(ContentKey, LeaseId)>,
    ) -> Vec<Result<(), QueueError>> {
        let count = completed.len();
        let written = self
            .writer
            .write(move |tables, now| {
                let mut outcomes = Vec::with_capacity(completed.len());
                for (key, lease) in &completed {
                    match complete_item(tables, key, *lease, now) {
                        // The whole transaction is lost: nothing of this call is stored.
                        Err(error) if spoils_transaction(&error) => return Err(error),
                        outcome => outcomes.push(outcome),
                    }
                }
                Ok(outcomes)
            })
            .await;
        written.unwrap_or_else(|error| vec![Err(error); count])
    }

    async fn retry_later(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        not_before: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), QueueError> {
        let reason = reason.to_owned();
        let transition = Transition::RetryLater { lease, not_before };
        self.transition(key, transition, move |item| {
            item.last_retry_reason = Some(reason)
        })
        .await
        .map(drop)
    }

    async fn release(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        let not_before = self.clock.now();
        self.transition(key, Transition::Release { lease, not_before }, |_| {})
            .await
            .map(drop)
    }

    async fn dead_letter(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        reason: &str,
    ) -> Result<(), QueueError> {
        let key = key.clone();
        let transition = Transition::DeadLetter {
            lease,
            reason: reason.to_owned(),
        };
        self.writer
            .write(move |tables, now| {
                transition_item(tables, &key, transition, now, |_| {})?;
                // Its requeued records were not sent: lost again.
                remove_redo_records(tables, &key).map(drop)
            })
            .await
    }

    async fn add_dead_record(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        record: DeadRecord,
    ) -> Result<(), QueueError> {
        let key = key.clone();
        self.writer
            .write(move |tables, _| store_dead_record(tables, &key, lease, &record))
            .await
    }

    async fn requeue_dead(&self, key: &ContentKey) -> Result<bool, QueueError> {
        let key = key.clone();
        self.writer
            .write(move |tables, now| requeue_dead_item(tables, &key, now))
            .await
    }

    async fn purge_expired_tombstones(&self) -> Result<u64, QueueError> {
        self.writer.write(purge_tombstones).await
    }

    /// As of the last commit, kept by the writer: no read transaction, so the hard-limit
    /// check of each notification costs an atomic load. While the store is down, its failure;
    /// once closed, [`QueueError::Closed`], as a read would.
    async fn open_items(&self) -> Result<u64, QueueError> {
        self.store.database()?;
        Ok(self.writer.counters.open_items.load(Ordering::Relaxed))
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let mut stats = self.read(read_stats).await?;
        stats.commits = self.writer.counters.commits.load(Ordering::Relaxed);
        stats.write_requests = self.writer.counters.requests.load(Ordering::Relaxed);
        Ok(stats)
    }

    async fn get(&self, key: &ContentKey) -> Result<Option<QueueItem>, QueueError> {
        let key = key.clone();
        self.read(move |txn| {
            let items = open_read_table(txn, format::ITEMS)?;
            Ok(load_item(&items, &key)?.map(|(item, _)| item))
        })
        .await
    }

    async fn dead_items(&self, limit: usize) -> Result<Vec<QueueItem>, QueueError> {
        self.read(move |txn| read_dead_items(txn, limit)).await
    }

    async fn dead_records(
        &self,
        limit: usize,
    ) -> Result<Vec<(ContentKey, DeadRecord)>, QueueError> {
        self.read(move |txn| read_dead_records(txn, limit)).await
    }

    async fn close(&self) -> Result<(), QueueError> {
        self.writer.stop().await;
        let Some(database) = self.store.take_for_close() else {
            return Ok(());
        };
        // A read still running keeps its own handle; the file is released when it ends.
        match Arc::try_unwrap(database) {
            Ok(database) => {
                tokio::task::spawn_blocking(move || database.close().map_err(storage_error))
                    .await
                    .map_err(|error| QueueError::Io {
                        message: format!("closing the store stopped: {error}"),
                    })?
            }
            Err(_still_reading) => Ok(()),
        }
    }
}

#[async_trait]
impl MetaStore for EmbeddedQueue {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        let key = key.to_owned();
        self.read(move |txn| {
            let meta = open_read_table(txn, format::META)?;
            Ok(meta
                .get(key.as_str())
                .map_err(storage_error)?
                .map(|value| value.value().to_vec()))
        })
        .await
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), QueueError> {
        let key = key.to_owned();
        self.writer
            .write(move |tables, _| put_meta_value(tables, &key, &value))
            .await
    }
}

impl super::QueueStore for EmbeddedQueue {
    fn store_failures(&self) -> u64 {
        EmbeddedQueue::store_failures(self)
    }

    fn health(&self) -> super::StoreHealth {
        let failure = self.store_failure();
        super::StoreHealth {
            backend: "embedded",
            connected: failure.is_none(),
            detail: failure.map(|error| error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(content_id: &str) -> ContentRef {
        let now = Utc::now();
        ContentRef {
            tenant_id: "41463f53-8812-40f4-890f-865bf6e35190".into(),
            content_type: "Audit.Exchange".into(),
            content_id: content_id.into(),
            content_uri: format!("https://api.invalid/{content_id}"),
            content_created: now,
            content_expiration: now + TimeDelta::days(7),
            source: crate::queue::Source::Webhook,
        }
    }

    /// Every stored item's `seq`, read from `items`.
    async fn stored_seqs(queue: &EmbeddedQueue) -> Vec<u64> {
        queue
            .read(|txn| {
                let items = txn.open_table(format::ITEMS).map_err(storage_error)?;
                let mut seqs = Vec::new();
                for entry in items.iter().map_err(storage_error)? {
                    let (key, value) = entry.map_err(storage_error)?;
                    let (tenant_id, content_id) = key.value();
                    let key = ContentKey::new(tenant_id, content_id);
                    seqs.push(StoredItem::decode_item(&key, value.value())?.1);
                }
                Ok(seqs)
            })
            .await
            .expect("items read")
    }

    #[tokio::test]
    async fn seqs_taken_in_one_group_commit_stay_unique_across_commits_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store opens");
        // Concurrent enqueues share commits; then one request of several items.
        let concurrent = (0..32).map(|n| queue.enqueue(vec![reference(&format!("a{n}"))]));
        for outcome in futures_util::future::join_all(concurrent).await {
            outcome.expect("enqueued");
        }
        let several = (0..8).map(|n| reference(&format!("b{n}"))).collect();
        queue.enqueue(several).await.expect("enqueued");
        queue.close().await.expect("closed");
        drop(queue);
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store reopens");
        queue
            .enqueue(vec![reference("c0"), reference("c1")])
            .await
            .expect("enqueued");
        let mut seqs = stored_seqs(&queue).await;
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 42, "every item has a seq of its own: {seqs:?}");
    }

    #[tokio::test]
    async fn lease_ids_are_unique_in_a_run_and_a_reopened_store_hands_out_higher_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let none = HashSet::new();
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store opens");
        queue
            .enqueue(vec![reference("a"), reference("b"), reference("c")])
            .await
            .expect("enqueued");
        let first = queue
            .lease(2, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        let second = queue
            .lease(1, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        let mut ids: Vec<u64> = first
            .iter()
            .chain(&second)
            .map(|item| item.lease.0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 3, "{ids:?}");
        let highest = ids.iter().copied().max().unwrap();
        queue.close().await.expect("closed");
        drop(queue);

        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store reopens");
        assert_eq!(queue.release_orphaned_leases().await.expect("released"), 3);
        let again = queue
            .lease(3, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        assert_eq!(again.len(), 3);
        assert!(
            again.iter().all(|item| item.lease.0 > highest),
            "{highest} then {:?}",
            again.iter().map(|item| item.lease.0).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn requeue_moves_only_dead_items_back_to_pending_and_leasable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store opens");
        queue
            .enqueue(vec![reference("dead"), reference("pending")])
            .await
            .expect("enqueued");
        let none = HashSet::new();
        let leased = queue
            .lease(1, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        let key = leased[0].key();
        assert_eq!(key.content_id, "dead", "the oldest item is leased first");
        queue
            .retry_later(&key, leased[0].lease, Utc::now(), "flaky")
            .await
            .expect("retried");
        let leased = queue
            .lease(2, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        let again = leased
            .iter()
            .find(|item| item.key() == key)
            .expect("the retried item is due again");
        queue
            .dead_letter(&key, again.lease, "content expired")
            .await
            .expect("dead-lettered");
        let other = leased
            .iter()
            .find(|item| item.key() != key)
            .expect("both leased");
        queue
            .release(&other.key(), other.lease)
            .await
            .expect("released");
        let pending_key = ContentKey::new(&key.tenant_id, "pending");
        assert!(
            !queue
                .requeue_dead(&pending_key)
                .await
                .expect("requeue runs")
        );
        assert!(
            !queue
                .requeue_dead(&ContentKey::new(&key.tenant_id, "absent"))
                .await
                .expect("requeue runs")
        );
        assert!(queue.requeue_dead(&key).await.expect("requeued"));
        let item = queue.get(&key).await.expect("read").expect("item kept");
        assert!(
            matches!(item.state, ItemState::Pending { attempts: 0, .. }),
            "{:?}",
            item.state
        );
        assert_eq!(item.last_retry_reason, None);
        let stats = queue.stats().await.expect("stats");
        assert_eq!((stats.dead, stats.pending), (0, 2));
        assert!(queue.dead_items(10).await.expect("listed").is_empty());
        assert!(
            !queue.requeue_dead(&key).await.expect("requeue runs"),
            "a second requeue changes nothing"
        );
        let leased = queue
            .lease(2, Duration::from_secs(60), &none)
            .await
            .expect("leased");
        assert_eq!(leased.len(), 2, "the requeued item is leasable again");
        queue.close().await.expect("closed");
    }

    /// Rewrites the store at `path` as the given format version would have it: the version
    /// counter set, and for version 1 no `redo_records` table.
    fn rewrite_as_version(path: &Path, version: u64) {
        let database = redb::Database::create(path).expect("store opens raw");
        let txn = database.begin_write().expect("write");
        {
            let mut counters = txn.open_table(format::COUNTERS).expect("counters");
            counters
                .insert(format::COUNTER_FORMAT_VERSION, version)
                .expect("version written");
        }
        if version == 1 {
            assert!(txn.delete_table(format::REDO_RECORDS).expect("deleted"));
        }
        txn.commit().expect("commit");
    }

    fn stored_version(path: &Path) -> Option<u64> {
        let database = redb::Database::create(path).expect("store opens raw");
        let txn = database.begin_read().expect("read");
        let counters = txn.open_table(format::COUNTERS).expect("counters");
        counters
            .get(format::COUNTER_FORMAT_VERSION)
            .expect("read")
            .map(|value| value.value())
    }

    #[tokio::test]
    async fn a_version_1_store_opens_upgraded_and_its_dead_records_can_be_requeued() {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("store opens");
        queue
            .enqueue(vec![reference("old")])
            .await
            .expect("enqueued");
        let none = HashSet::new();
        let leased = queue
            .lease(1, Duration::from_secs(60), &none)
            .await
            .expect("leased")
            .remove(0);
        let record = DeadRecord {
            index: 0,
            byte_range: (1, 9),
            sha256: [3; 32],
            reason: "invalid JSON".into(),
        };
        queue
            .add_dead_record(&leased.key(), leased.lease, record)
            .await
            .expect("dead record");
        queue
            .complete(&leased.key(), leased.lease)
            .await
            .expect("completed");
        let path = queue.path().to_path_buf();
        queue.close().await.expect("closed");
        rewrite_as_version(&path, 1);

        let queue = EmbeddedQueue::open(dir.path(), Clock::system())
            .await
            .expect("a version-1 store opens");
        let item = queue.get(&leased.key()).await.expect("read").expect("kept");
        assert!(
            matches!(item.state, ItemState::Done { .. }),
            "{:?}",
            item.state
        );
        assert_eq!(queue.stats().await.expect("stats").lost_records(), 1);
        assert!(queue.requeue_dead(&leased.key()).await.expect("requeued"));
        assert_eq!(queue.stats().await.expect("stats").lost_records(), 0);
        queue.close().await.expect("closed");
        assert_eq!(stored_version(&path), Some(format::FORMAT_VERSION));

        rewrite_as_version(&path, format::FORMAT_VERSION + 1);
        let refused = EmbeddedQueue::open(dir.path(), Clock::system()).await;
        assert_eq!(
            refused.err(),
            Some(QueueError::UnsupportedFormat {
                found: format::FORMAT_VERSION + 1,
                supported: format::FORMAT_VERSION
            }),
            "a newer store is refused, not misread"
        );
    }

    #[test]
    fn full_disk_is_told_apart_and_retryable() {
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        for code in [ENOSPC, EDQUOT] {
            let error = storage_error(redb::StorageError::Io(std::io::Error::from_raw_os_error(
                code,
            )));
            assert_eq!(error, QueueError::Full);
            assert!(
                error.is_retryable(),
                "the webhook answers 503 and Microsoft retries"
            );
        }
        let other = io_error(std::io::Error::from_raw_os_error(5));
        assert!(matches!(other, QueueError::Io { .. }));
        assert!(
            !QueueError::StaleLease {
                key: ContentKey::new("t", "c")
            }
            .is_retryable()
        );
    }
}

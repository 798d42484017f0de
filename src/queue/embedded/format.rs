//! The on-disk format of the embedded queue: redb tables, their keys and the encoding of values.
//!
//! One redb file, `queue.redb`. Timestamps are UTC microseconds since the Unix epoch as `i64`
//! (redb orders `i64` keys numerically, so time-ordered indexes are plain range scans). A
//! `seq` is a per-store counter taken at enqueue, unique per item: it breaks ties in time
//! indexes and orders items by arrival.
//!
//! | table          | key                                   | value                                 |
//! |----------------|---------------------------------------|---------------------------------------|
//! | `items`        | `(tenant id, contentId)`              | postcard `StoredItem`                 |
//! | `pending`      | `(not_before µs, seq)`                | `(tenant id, contentId)`              |
//! | `leased`       | `(lease until µs, seq)`               | `(tenant id, contentId)`              |
//! | `done`         | `(tombstone until µs, seq)`           | `(tenant id, contentId)`              |
//! | `dead`         | `seq`                                 | `(tenant id, contentId)`              |
//! | `open`         | `seq`                                 | `(tenant id, contentId)`              |
//! | `dead_records` | `(tenant id, contentId, record index)`| postcard `StoredDeadRecord`           |
//! | `redo_records` | `(tenant id, contentId, record index)`| `()` (since version 2)                |
//! | `meta`         | name (`&str`)                         | bytes (service metadata, may be secret)|
//! | `counters`     | name (`&str`)                         | `u64`: `format_version`, `next_seq`, `next_lease` |
//!
//! `next_lease` is the end of the block of lease ids a run hands out from memory (a later run
//! starts after it); `next_seq` is advanced once per commit that enqueues.
//!
//! `items` is the truth; every other table but `meta` and `counters` is an index derived
//! from it and written in the same transaction: an item is in exactly one of `pending`,
//! `leased`, `done`, `dead` (the one its state names), and in `open` while pending or leased.
//! Dead records stay after their item is completed or its tombstone purged: they are the
//! evidence of a loss, kept until an operator requeues them and their item completes again.
//!
//! `redo_records` holds the dead records an operator requeued: an entry exists only beside
//! a `dead_records` entry of the same key, and only while its item is pending or leased.
//! It is written in the transaction that makes the item pending (`requeue_dead`), read at
//! each lease (the item's [`LeasedItem::redo_records`](crate::queue::LeasedItem)), and
//! removed with its dead record when the item completes, alone when the record is
//! dead-lettered again, or when the item dies. A done item requeued for its dead records
//! stores `acked_records` = [`EVERY_RECORD`](crate::queue::EVERY_RECORD). The count of
//! lost records is `len(dead_records) - len(redo_records)`, O(1).
//! The indexes make `lease` a range scan over due entries, tombstone purge a range scan over
//! expired ones, and the counts in `stats` O(1) table lengths.
//!
//! Values are encoded with postcard (serde): compact (varints, no field names), a stable
//! documented wire format (postcard 1.x), and no schema compiler. Fields are positional, so
//! the structs below may only change with a new `format_version`; enum variants may only be
//! appended. The version is checked at open.
//!
//! Versions: **1** — the tables above but `redo_records`. **2** — adds `redo_records`;
//! values unchanged. A version-1 store is upgraded when opened: the new table is created
//! empty (a version-1 store has no requeued records) and the version set to 2, in one
//! transaction. A build that knows only version 1 then refuses the store.

use chrono::{DateTime, Utc};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::queue::{
    ContentKey, ContentRef, DeadRecord, ItemState, LeaseId, QueueError, QueueItem, Source,
};

/// The format this build reads and writes.
pub(super) const FORMAT_VERSION: u64 = 2;

/// Older formats this build upgrades at open (see the version list above).
pub(super) const UPGRADABLE_VERSIONS: [u64; 1] = [1];

/// A `(tenant id, contentId)` pair as stored in keys and index values.
pub(super) type KeyPair = (&'static str, &'static str);

pub(super) const ITEMS: TableDefinition<KeyPair, &[u8]> = TableDefinition::new("items");
pub(super) const PENDING: TableDefinition<(i64, u64), KeyPair> = TableDefinition::new("pending");
pub(super) const LEASED: TableDefinition<(i64, u64), KeyPair> = TableDefinition::new("leased");
pub(super) const DONE: TableDefinition<(i64, u64), KeyPair> = TableDefinition::new("done");
pub(super) const DEAD: TableDefinition<u64, KeyPair> = TableDefinition::new("dead");
pub(super) const OPEN: TableDefinition<u64, KeyPair> = TableDefinition::new("open");
pub(super) const DEAD_RECORDS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("dead_records");
pub(super) const REDO_RECORDS: TableDefinition<(&str, &str, u64), ()> =
    TableDefinition::new("redo_records");
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub(super) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

pub(super) const COUNTER_FORMAT_VERSION: &str = "format_version";
pub(super) const COUNTER_NEXT_SEQ: &str = "next_seq";
pub(super) const COUNTER_NEXT_LEASE: &str = "next_lease";

/// The value of `items`: everything about an item but its key.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredItem {
    pub(super) seq: u64,
    content_type: String,
    content_uri: String,
    content_created_micros: i64,
    content_expiration_micros: i64,
    source: StoredSource,
    enqueued_micros: i64,
    acked_records: u64,
    dead_records: u64,
    last_retry_reason: Option<String>,
    state: StoredState,
}

#[derive(Serialize, Deserialize)]
enum StoredSource {
    Webhook,
    Poll,
    Backfill,
}

#[derive(Serialize, Deserialize)]
enum StoredState {
    Pending {
        not_before_micros: i64,
        attempts: u32,
    },
    Leased {
        lease: u64,
        until_micros: i64,
        attempts: u32,
    },
    Done {
        tombstone_until_micros: i64,
    },
    Dead {
        reason: String,
        attempts: u32,
    },
}

/// The value of `dead_records`.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredDeadRecord {
    start: u64,
    end: u64,
    sha256: [u8; 32],
    reason: String,
}

/// Where an item in `state` appears among the state indexes.
pub(super) enum IndexEntry {
    Pending((i64, u64)),
    Leased((i64, u64)),
    Done((i64, u64)),
    Dead(u64),
}

impl IndexEntry {
    pub(super) fn of(state: &ItemState, seq: u64) -> Self {
        match state {
            ItemState::Pending { not_before, .. } => {
                IndexEntry::Pending((micros(*not_before), seq))
            }
            ItemState::Leased { until, .. } => IndexEntry::Leased((micros(*until), seq)),
            ItemState::Done { tombstone_until } => {
                IndexEntry::Done((micros(*tombstone_until), seq))
            }
            ItemState::Dead { .. } => IndexEntry::Dead(seq),
        }
    }

    /// True for states listed in `open`.
    pub(super) fn is_open(&self) -> bool {
        matches!(self, IndexEntry::Pending(_) | IndexEntry::Leased(_))
    }
}

/// A timestamp as stored.
pub(super) fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn from_micros(value: i64, field: &str) -> Result<DateTime<Utc>, QueueError> {
    DateTime::from_timestamp_micros(value).ok_or_else(|| QueueError::Corrupt {
        message: format!("{field} holds an out-of-range timestamp"),
    })
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, QueueError> {
    postcard::from_bytes(bytes).map_err(|error| QueueError::Corrupt {
        message: format!("cannot decode {what}: {error}"),
    })
}

fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, QueueError> {
    postcard::to_stdvec(value).map_err(|error| QueueError::Io {
        message: format!("cannot encode {what}: {error}"),
    })
}

impl StoredItem {
    pub(super) fn encode_item(item: &QueueItem, seq: u64) -> Result<Vec<u8>, QueueError> {
        let content = &item.content;
        let stored = StoredItem {
            seq,
            content_type: content.content_type.clone(),
            content_uri: content.content_uri.clone(),
            content_created_micros: micros(content.content_created),
            content_expiration_micros: micros(content.content_expiration),
            source: match content.source {
                Source::Webhook => StoredSource::Webhook,
                Source::Poll => StoredSource::Poll,
                Source::Backfill => StoredSource::Backfill,
            },
            enqueued_micros: micros(item.enqueued_at),
            acked_records: item.acked_records,
            dead_records: item.dead_records,
            last_retry_reason: item.last_retry_reason.clone(),
            state: stored_state(&item.state),
        };
        encode(&stored, "queue item")
    }

    /// Decodes an `items` value into the item and its `seq`.
    pub(super) fn decode_item(
        key: &ContentKey,
        bytes: &[u8],
    ) -> Result<(QueueItem, u64), QueueError> {
        let stored: StoredItem = decode(bytes, "queue item")?;
        let item = QueueItem {
            content: ContentRef {
                tenant_id: key.tenant_id.clone(),
                content_type: stored.content_type,
                content_id: key.content_id.clone(),
                content_uri: stored.content_uri,
                content_created: from_micros(stored.content_created_micros, "content_created")?,
                content_expiration: from_micros(
                    stored.content_expiration_micros,
                    "content_expiration",
                )?,
                source: match stored.source {
                    StoredSource::Webhook => Source::Webhook,
                    StoredSource::Poll => Source::Poll,
                    StoredSource::Backfill => Source::Backfill,
                },
            },
            state: item_state(stored.state)?,
            acked_records: stored.acked_records,
            dead_records: stored.dead_records,
            last_retry_reason: stored.last_retry_reason,
            enqueued_at: from_micros(stored.enqueued_micros, "enqueued_at")?,
        };
        Ok((item, stored.seq))
    }
}

fn stored_state(state: &ItemState) -> StoredState {
    match state {
        ItemState::Pending {
            not_before,
            attempts,
        } => StoredState::Pending {
            not_before_micros: micros(*not_before),
            attempts: *attempts,
        },
        ItemState::Leased {
            lease,
            until,
            attempts,
        } => StoredState::Leased {
            lease: lease.0,
            until_micros: micros(*until),
            attempts: *attempts,
        },
        ItemState::Done { tombstone_until } => StoredState::Done {
            tombstone_until_micros: micros(*tombstone_until),
        },
        ItemState::Dead { reason, attempts } => StoredState::Dead {
            reason: reason.clone(),
            attempts: *attempts,
        },
    }
}

fn item_state(stored: StoredState) -> Result<ItemState, QueueError> {
    Ok(match stored {
        StoredState::Pending {
            not_before_micros,
            attempts,
        } => ItemState::Pending {
            not_before: from_micros(not_before_micros, "not_before")?,
            attempts,
        },
        StoredState::Leased {
            lease,
            until_micros,
            attempts,
        } => ItemState::Leased {
            lease: LeaseId(lease),
            until: from_micros(until_micros, "lease until")?,
            attempts,
        },
        StoredState::Done {
            tombstone_until_micros,
        } => ItemState::Done {
            tombstone_until: from_micros(tombstone_until_micros, "tombstone_until")?,
        },
        StoredState::Dead { reason, attempts } => ItemState::Dead { reason, attempts },
    })
}

impl StoredDeadRecord {
    pub(super) fn encode_record(record: &DeadRecord) -> Result<Vec<u8>, QueueError> {
        let stored = StoredDeadRecord {
            start: record.byte_range.0,
            end: record.byte_range.1,
            sha256: record.sha256,
            reason: record.reason.clone(),
        };
        encode(&stored, "dead record")
    }

    pub(super) fn decode_record(index: u64, bytes: &[u8]) -> Result<DeadRecord, QueueError> {
        let stored: StoredDeadRecord = decode(bytes, "dead record")?;
        Ok(DeadRecord {
            index,
            byte_range: (stored.start, stored.end),
            sha256: stored.sha256,
            reason: stored.reason,
        })
    }
}

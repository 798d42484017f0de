//! The stored records of the NATS backend: every stream and bucket, the layout of its keys,
//! the encoding of its values, and the reads and writes of them.
//!
//! Names start with `store.nats.prefix` (`o365` by default). Key-value keys built from ids
//! are base64url without padding, written `b64(…)` below, because contentIds hold characters
//! keys may not. Each bucket keeps one value per key (its latest write).
//!
//! | Object | Key / subject | Value | Kept |
//! |---|---|---|---|
//! | stream `{prefix}_work`, work-queue retention, file storage | subject `{prefix}.work`; `Nats-Msg-Id` `tenant/contentId` (a requeue: `tenant/contentId/requeue/{unix ns}`), deduplicated within 120 s | JSON [`WorkItem`]: a queued content reference | until acked |
//! | its durable pull consumer `workers`, explicit ack | ack wait = `workers.lease_secs` when created | deliveries: the leases ([`leases`](super::leases)) | until acked |
//! | KV `{prefix}_seen` | `b64(tenant/contentId)` | JSON [`SeenEntry`]: dedupe mark, and the done tombstone once `done_at` is set | 8 days after the last write ([`SEEN_MAX_AGE`](super::SEEN_MAX_AGE)) |
//! | KV `{prefix}_progress` | `b64(tenant/contentId)` | JSON [`Progress`]: acked-record offset, attempts, the current lease, requeued records | 8 days after the last write; removed when the item completes |
//! | KV `{prefix}_dead` | `b64(tenant/contentId)` | JSON [`DeadEntry`] | until requeued |
//! | KV `{prefix}_dead_records` | `b64(tenant/contentId).{record index}` ([`dead_record_key`]) | JSON [`DeadRecordEntry`] | until its item completes after a requeue |
//! | KV `{prefix}_meta` | `b64(name)` | the caller's bytes: cursors, subscription state, webhook secret | always |
//! | KV `{prefix}_leader` | `poller` | the holder's replica id ([`leader`](super::leader)) | `leader_lease_secs` (bucket max age) |
//!
//! A done item's progress moves into its tombstone ([`SeenEntry::acked_records`],
//! [`SeenEntry::dead_records`]). Timestamps are RFC 3339 UTC strings (chrono's serde).
//!
//! **Compatibility.** Values are JSON with field names and carry no format version: replicas
//! of different builds may share the buckets (a rolling update), and these rules keep them
//! readable to one another:
//! - a field is added only with `#[serde(default)]`, its default meaning what an older build
//!   meant by its absence (no requeued records, no recorded lease, not requeued); an older
//!   build ignores it when reading, so a value that build writes back lacks it;
//! - a field is never renamed, removed or given a new meaning, and a key layout never
//!   changes: either needs new bucket names;
//! - a [`WorkItem`]'s `source` is a string; one this build does not know reads as `webhook`.
//!
//! A value that does not parse is never fatal: a work-stream message is removed, logged and
//! counted when delivered; a progress entry reads as no progress; a seen, dead or dead-record
//! entry is skipped where its content is read (a seen entry still marks its contentId seen).

use std::collections::BTreeSet;

use async_nats::jetstream::{self, kv, stream};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::NatsQueue;
use crate::queue::{ContentKey, ContentRef, QueueError, Source};

/// A content reference as queued: the message payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct WorkItem {
    pub(super) tenant_id: String,
    pub(super) content_type: String,
    pub(super) content_id: String,
    pub(super) content_uri: String,
    pub(super) content_created: DateTime<Utc>,
    pub(super) content_expiration: DateTime<Utc>,
    pub(super) source: String,
    pub(super) enqueued_at: DateTime<Utc>,
}

impl WorkItem {
    pub(super) fn new(content: &ContentRef, enqueued_at: DateTime<Utc>) -> Self {
        Self {
            tenant_id: content.tenant_id.clone(),
            content_type: content.content_type.clone(),
            content_id: content.content_id.clone(),
            content_uri: content.content_uri.clone(),
            content_created: content.content_created,
            content_expiration: content.content_expiration,
            source: match content.source {
                Source::Webhook => "webhook",
                Source::Poll => "poll",
                Source::Backfill => "backfill",
            }
            .to_owned(),
            enqueued_at,
        }
    }

    pub(super) fn content(&self) -> ContentRef {
        ContentRef {
            tenant_id: self.tenant_id.clone(),
            content_type: self.content_type.clone(),
            content_id: self.content_id.clone(),
            content_uri: self.content_uri.clone(),
            content_created: self.content_created,
            content_expiration: self.content_expiration,
            source: match self.source.as_str() {
                "poll" => Source::Poll,
                "backfill" => Source::Backfill,
                _ => Source::Webhook,
            },
        }
    }

    pub(super) fn key(&self) -> ContentKey {
        ContentKey::new(&self.tenant_id, &self.content_id)
    }

    /// Its key in the key-value buckets.
    pub(super) fn kv_key(&self) -> String {
        item_key(&self.tenant_id, &self.content_id)
    }
}

/// The seen bucket's value: the reference, and when it was done (its tombstone).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct SeenEntry {
    pub(super) item: WorkItem,
    pub(super) done_at: Option<DateTime<Utc>>,
    /// For a done item: its progress, which is removed then.
    #[serde(default)]
    pub(super) acked_records: u64,
    #[serde(default)]
    pub(super) dead_records: u64,
}

/// The progress bucket's value for an item that was leased at least once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Progress {
    pub(super) acked_records: u64,
    pub(super) dead_records: u64,
    /// `retry_later` calls.
    pub(super) retries: u32,
    /// Deliveries handed back on purpose (release, retry, paused tenant).
    pub(super) given_back: u64,
    pub(super) last_retry_reason: Option<String>,
    /// Dead records an operator requeued, sent again until the item completes.
    #[serde(default)]
    pub(super) redo_records: BTreeSet<u64>,
    /// The current lease (a delivery's consumer sequence), shared by every replica: a call
    /// under any other lease is stale. `None` while nobody holds the item.
    #[serde(default)]
    pub(super) lease: Option<u64>,
    /// When the current lease expires (the consumer's ack wait after the delivery or the
    /// last extension).
    #[serde(default)]
    pub(super) lease_until: Option<DateTime<Utc>>,
}

/// The dead bucket's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct DeadEntry {
    pub(super) item: WorkItem,
    pub(super) reason: String,
    pub(super) attempts: u32,
}

/// The dead-records bucket's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct DeadRecordEntry {
    pub(super) tenant_id: String,
    pub(super) content_id: String,
    pub(super) index: u64,
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) sha256: String,
    pub(super) reason: String,
    /// Requeued by an operator and waiting for its item to send it again; lost while false.
    #[serde(default)]
    pub(super) requeued: bool,
}

/// A key-value key for `tenant/contentId` (contentIds hold characters keys may not).
pub(super) fn item_key(tenant_id: &str, content_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tenant_id}/{content_id}"))
}

/// The dead-records bucket's key of record `index` of the item keyed `kv_key` (base64url
/// has no `.`, so `{kv_key}.` prefixes exactly that item's records).
pub(super) fn dead_record_key(kv_key: &str, index: u64) -> String {
    format!("{kv_key}.{index}")
}

pub(super) fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("queue values serialize"))
}

impl NatsQueue {
    pub(super) async fn read_progress(&self, key: &str) -> Result<Progress, QueueError> {
        let value = self
            .progress
            .get(key)
            .await
            .map_err(|error| self.failed("read an item's progress", error))?;
        Ok(value
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default())
    }

    pub(super) async fn write_progress(
        &self,
        key: &str,
        progress: &Progress,
    ) -> Result<(), QueueError> {
        self.progress
            .put(key, json(progress))
            .await
            .map_err(|error| self.failed("write an item's progress", error))?;
        self.wrote(1);
        Ok(())
    }

    pub(super) async fn seen_entry(&self, key: &str) -> Result<Option<SeenEntry>, QueueError> {
        let value = self
            .seen
            .get(key)
            .await
            .map_err(|error| self.failed("read the seen contentIds", error))?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// The work stream, with its current state.
    pub(super) async fn work_stream(&self) -> Result<stream::Stream, QueueError> {
        self.jetstream
            .get_stream(self.stream_name.as_str())
            .await
            .map_err(|error| self.failed("read the work stream", error))
    }

    pub(super) async fn keys_of(
        &self,
        bucket: &kv::Store,
        what: &str,
    ) -> Result<Vec<String>, QueueError> {
        let mut keys = bucket
            .keys()
            .await
            .map_err(|error| self.failed(what, error))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|error| self.failed(what, error))?);
        }
        Ok(names)
    }

    /// The dead-record entries of the item whose bucket key is `kv_key`, by index.
    pub(super) async fn dead_records_of(
        &self,
        kv_key: &str,
    ) -> Result<Vec<DeadRecordEntry>, QueueError> {
        let prefix = format!("{kv_key}.");
        let names: Vec<String> = self
            .keys_of(&self.dead_records, "list the dead records")
            .await?
            .into_iter()
            .filter(|name| name.starts_with(&prefix))
            .collect();
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            if let Some(entry) = self.dead_record_entry(&name).await? {
                entries.push(entry);
            }
        }
        entries.sort_by_key(|entry| entry.index);
        Ok(entries)
    }

    pub(super) async fn dead_record_entry(
        &self,
        name: &str,
    ) -> Result<Option<DeadRecordEntry>, QueueError> {
        let value = self
            .dead_records
            .get(name)
            .await
            .map_err(|error| self.failed("read a dead record", error))?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Sets the `requeued` flag of the item's dead records at `indices` (those still kept).
    pub(super) async fn flag_requeued(
        &self,
        kv_key: &str,
        indices: &BTreeSet<u64>,
        requeued: bool,
    ) -> Result<(), QueueError> {
        for index in indices {
            let name = dead_record_key(kv_key, *index);
            let Some(mut entry) = self.dead_record_entry(&name).await? else {
                continue;
            };
            if entry.requeued == requeued {
                continue;
            }
            entry.requeued = requeued;
            self.dead_records
                .put(name.as_str(), json(&entry))
                .await
                .map_err(|error| self.failed("flag a dead record", error))?;
            self.wrote(1);
        }
        Ok(())
    }

    /// Publishes the reference of an item again (a requeue), with a message id of its own.
    pub(super) async fn publish_again(
        &self,
        key: &ContentKey,
        item: &WorkItem,
    ) -> Result<(), QueueError> {
        let requeued_at = self.clock.now();
        let publish = jetstream::message::PublishMessage::build()
            .payload(json(item))
            .message_id(format!(
                "{}/{}/requeue/{}",
                key.tenant_id,
                key.content_id,
                requeued_at.timestamp_nanos_opt().unwrap_or_default()
            ));
        self.jetstream
            .send_publish(self.subject.clone(), publish)
            .await
            .map_err(|error| self.failed("requeue an item", error))?
            .await
            .map_err(|error| self.failed("requeue an item", error))?;
        self.wrote(1);
        Ok(())
    }

    /// The done tombstone of `kv_key` when it has dead records to requeue and Microsoft
    /// still serves its content: the seen entry and those records' indices.
    pub(super) async fn redoable_tombstone(
        &self,
        kv_key: &str,
    ) -> Result<Option<(SeenEntry, BTreeSet<u64>)>, QueueError> {
        let Some(entry) = self.seen_entry(kv_key).await? else {
            return Ok(None);
        };
        if entry.done_at.is_none() || entry.item.content_expiration <= self.clock.now() {
            return Ok(None);
        }
        let indices: BTreeSet<u64> = self
            .dead_records_of(kv_key)
            .await?
            .iter()
            .map(|record| record.index)
            .collect();
        Ok((!indices.is_empty()).then_some((entry, indices)))
    }

    pub(super) async fn bucket_values<T: for<'de> Deserialize<'de>>(
        &self,
        bucket: &kv::Store,
        what: &str,
    ) -> Result<Vec<T>, QueueError> {
        let names = self.keys_of(bucket, what).await?;
        let values = join_all(names.iter().map(|name| bucket.get(name.as_str()))).await;
        let mut out = Vec::new();
        for value in values {
            if let Some(bytes) = value.map_err(|error| self.failed(what, error))?
                && let Ok(parsed) = serde_json::from_slice(&bytes)
            {
                out.push(parsed);
            }
        }
        Ok(out)
    }
}

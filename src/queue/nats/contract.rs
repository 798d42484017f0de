//! The queue contract on NATS: [`ContentQueue`], [`MetaStore`] and [`QueueStore`] for
//! [`NatsQueue`], and the order of the writes each operation makes.
//!
//! **Enqueue** publishes each new reference, waits for the stream's acknowledgement, and
//! only then marks its contentId seen; concurrent callers are committed together in groups
//! ([`enqueue`](super::enqueue) has the order and the guarantees).
//!
//! **Requeued dead records.** `requeue_dead` writes the item's progress first (attempts
//! reset, `redo_records` = the indices of its dead records, and for a done item
//! `acked_records` = [`EVERY_RECORD`]), then publishes the reference again, then clears the
//! dead entry (or the tombstone's `done_at`), and last flags each dead record `requeued`
//! (what `stats` counts): a crash in between leaves a requeue that is redone by the next
//! one, or records counted lost a little longer, never a record dropped. `complete` removes
//! the requeued dead records *before* its ack: a crash after that redelivers the item and
//! sends them again (a duplicate), and once acked they were all acked by the engine.
//! `add_dead_record` on a requeued index and `dead_letter` clear the flag: lost again.
//!
//! `purge_expired_tombstones` has nothing to do: the seen bucket's max age removes them.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{AckKind, kv};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::NatsQueue;
use super::connection::CONSUMER;
use super::leases::Held;
use super::records::{
    DeadEntry, DeadRecordEntry, Progress, SeenEntry, WorkItem, dead_record_key, item_key, json,
};
use crate::queue::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EVERY_RECORD, EnqueueOutcome, ItemState,
    LeaseId, LeasedItem, MetaStore, QueueError, QueueItem, QueueStats, QueueStore, StoreHealth,
};

#[async_trait]
impl ContentQueue for NatsQueue {
    /// Committed with concurrent callers' references, in groups ([`super::enqueue`]).
    async fn enqueue(&self, refs: Vec<ContentRef>) -> Result<Vec<EnqueueOutcome>, QueueError> {
        self.check_open()?;
        self.enqueue_groups.enqueue(refs).await
    }

    async fn lease(
        &self,
        max: usize,
        _duration: Duration,
        skip_tenants: &HashSet<String>,
    ) -> Result<Vec<LeasedItem>, QueueError> {
        self.check_open()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|error| self.failed("lease from the queue", error))?;
        let mut leased = Vec::new();
        let mut failure = None;
        while let Some(message) = batch.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    failure = Some(self.failed("lease from the queue", error));
                    break;
                }
            };
            match self.take_delivery(message.clone(), skip_tenants).await {
                Ok(Some(item)) => leased.push(item),
                Ok(None) => {}
                Err(error) => {
                    // Handed back at once rather than held until its ack wait passes.
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                    failure = Some(error);
                }
            }
        }
        // What was leased is returned (and held); a failure alone is reported.
        match failure {
            Some(error) if leased.is_empty() => Err(error),
            _ => Ok(leased),
        }
    }

    async fn extend_lease(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        _duration: Duration,
    ) -> Result<DateTime<Utc>, QueueError> {
        self.check_open()?;
        let message = self.held(key, lease, |held| held.message.clone())?;
        // The lease lasts the consumer's ack wait whatever `_duration` asks (backend notes).
        let lease_until = self.lease_until_from_now();
        self.update_held_progress(key, lease, |progress| {
            progress.lease_until = Some(lease_until);
            true
        })
        .await?;
        message
            .ack_with(AckKind::Progress)
            .await
            .map_err(|error| self.failed("extend a lease", error))?;
        Ok(lease_until)
    }

    async fn record_acked(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        acked_records: u64,
    ) -> Result<(), QueueError> {
        self.check_open()?;
        self.update_held_progress(key, lease, |progress| {
            let forward = acked_records > progress.acked_records;
            progress.acked_records = progress.acked_records.max(acked_records);
            forward
        })
        .await?;
        Ok(())
    }

    async fn complete(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        self.check_open()?;
        let (message, item) =
            self.held(key, lease, |held| (held.message.clone(), held.item.clone()))?;
        // The lease is given up in the shared progress first: from here no other call under
        // it, on any replica, can act on the item.
        let progress = self
            .update_held_progress(key, lease, |progress| {
                progress.lease = None;
                progress.lease_until = None;
                true
            })
            .await?;
        // Every requeued record was sent and acked: their dead records go, before the ack,
        // so a crash in between redelivers the item rather than losing an entry.
        for index in &progress.redo_records {
            self.dead_records
                .delete(dead_record_key(&item.kv_key(), *index).as_str())
                .await
                .map_err(|error| self.failed("remove a requeued dead record", error))?;
            self.wrote(1);
        }
        // The ack first: once it is confirmed the item can no longer come back. A crash
        // before the tombstone is written leaves the contentId marked seen, so a repeated
        // notification is still a duplicate.
        message
            .double_ack()
            .await
            .map_err(|error| self.failed("acknowledge a finished item", error))?;
        self.forget(key, lease);
        let kv_key = item.kv_key();
        let entry = SeenEntry {
            item,
            done_at: Some(self.clock.now()),
            acked_records: progress.acked_records,
            dead_records: progress
                .dead_records
                .saturating_sub(progress.redo_records.len() as u64),
        };
        self.seen
            .put(kv_key.as_str(), json(&entry))
            .await
            .map_err(|error| self.failed("mark an item as done", error))?;
        if let Err(error) = self.progress.delete(kv_key.as_str()).await {
            tracing::debug!(%error, "cannot remove a done item's progress; it ages out");
        }
        self.wrote(3);
        Ok(())
    }

    async fn retry_later(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        not_before: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.check_open()?;
        let delay = (not_before - self.clock.now()).to_std().unwrap_or_default();
        self.give_back(key, lease, Some(delay), Some(reason)).await
    }

    async fn release(&self, key: &ContentKey, lease: LeaseId) -> Result<(), QueueError> {
        self.check_open()?;
        self.give_back(key, lease, None, None).await
    }

    async fn dead_letter(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        reason: &str,
    ) -> Result<(), QueueError> {
        self.check_open()?;
        let (message, item, attempts) = self.held(key, lease, |held| {
            (held.message.clone(), held.item.clone(), held.attempts)
        })?;
        let redo_records = self
            .update_held_progress(key, lease, |progress| {
                progress.lease = None;
                progress.lease_until = None;
                true
            })
            .await?
            .redo_records;
        let kv_key = item.kv_key();
        // Its requeued records were not sent: lost again (a later requeue redoes them).
        self.flag_requeued(&kv_key, &redo_records, false).await?;
        let entry = DeadEntry {
            item,
            reason: reason.to_owned(),
            attempts: attempts.saturating_add(1),
        };
        self.dead
            .put(kv_key.as_str(), json(&entry))
            .await
            .map_err(|error| self.failed("keep a dead item", error))?;
        message
            .double_ack()
            .await
            .map_err(|error| self.failed("acknowledge a dead item", error))?;
        self.forget(key, lease);
        self.wrote(2);
        Ok(())
    }

    async fn add_dead_record(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        record: DeadRecord,
    ) -> Result<(), QueueError> {
        self.check_open()?;
        let kv_key = self.held(key, lease, |held| held.item.kv_key())?;
        // Refused before anything is written when the lease is stale.
        self.update_held_progress(key, lease, |_| false).await?;
        let record_key = dead_record_key(&kv_key, record.index);
        let existed = self.dead_record_entry(&record_key).await?.is_some();
        let entry = DeadRecordEntry {
            tenant_id: key.tenant_id.clone(),
            content_id: key.content_id.clone(),
            index: record.index,
            start: record.byte_range.0,
            end: record.byte_range.1,
            sha256: hex::encode(record.sha256),
            reason: record.reason,
            requeued: false,
        };
        self.dead_records
            .put(record_key.as_str(), json(&entry))
            .await
            .map_err(|error| self.failed("keep a dead record", error))?;
        self.wrote(1);
        // A requeued record that failed again is lost again, not waiting to be sent.
        self.update_held_progress(key, lease, |progress| {
            let was_requeued = progress.redo_records.remove(&entry.index);
            if !existed {
                progress.dead_records += 1;
            }
            !existed || was_requeued
        })
        .await?;
        Ok(())
    }

    async fn requeue_dead(&self, key: &ContentKey) -> Result<bool, QueueError> {
        self.check_open()?;
        let kv_key = item_key(&key.tenant_id, &key.content_id);
        let dead = self
            .dead
            .get(kv_key.as_str())
            .await
            .map_err(|error| self.failed("read a dead item", error))?
            .and_then(|bytes| serde_json::from_slice::<DeadEntry>(&bytes).ok());
        // Progress before the publish, so the first new delivery already counts from zero
        // and knows what to redo.
        let redo_records = if let Some(entry) = dead {
            // Attempts start again; the acked-record offset stays.
            let redo_records: BTreeSet<u64> = self
                .dead_records_of(&kv_key)
                .await?
                .iter()
                .map(|record| record.index)
                .collect();
            let mut progress = self.read_progress(&kv_key).await?;
            progress.retries = 0;
            progress.given_back = 0;
            progress.redo_records = redo_records.clone();
            progress.lease = None;
            progress.lease_until = None;
            self.write_progress(&kv_key, &progress).await?;
            self.publish_again(key, &entry.item).await?;
            self.dead
                .delete(kv_key.as_str())
                .await
                .map_err(|error| self.failed("remove a requeued dead item", error))?;
            self.wrote(1);
            redo_records
        } else if let Some((mut entry, redo_records)) = self.redoable_tombstone(&kv_key).await? {
            let progress = Progress {
                acked_records: EVERY_RECORD,
                dead_records: entry.dead_records,
                redo_records: redo_records.clone(),
                ..Progress::default()
            };
            self.write_progress(&kv_key, &progress).await?;
            self.publish_again(key, &entry.item).await?;
            entry.done_at = None;
            self.seen
                .put(kv_key.as_str(), json(&entry))
                .await
                .map_err(|error| self.failed("reopen a done item", error))?;
            self.wrote(1);
            redo_records
        } else {
            return Ok(false);
        };
        self.flag_requeued(&kv_key, &redo_records, true).await?;
        Ok(true)
    }

    async fn purge_expired_tombstones(&self) -> Result<u64, QueueError> {
        self.check_open()?;
        Ok(0)
    }

    /// Every queued reference is a message of the work stream until it is acked: one request,
    /// whose answer is reused for [`OPEN_ITEMS_MAX_AGE`](super::OPEN_ITEMS_MAX_AGE).
    async fn open_items(&self) -> Result<u64, QueueError> {
        self.check_open()?;
        let mut cached = self.open_items.lock().await;
        if let Some((read_at, count)) = *cached
            && read_at.elapsed() < super::OPEN_ITEMS_MAX_AGE
        {
            return Ok(count);
        }
        let count = self.work_stream().await?.cached_info().state.messages;
        *cached = Some((std::time::Instant::now(), count));
        Ok(count)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.check_open()?;
        let work = self.work_stream().await?;
        let state = work.cached_info().state.clone();
        let consumer_info = work
            .consumer_info(CONSUMER)
            .await
            .map_err(|error| self.failed("read the workers' consumer", error))?;
        let leased = (consumer_info.num_ack_pending as u64).min(state.messages);
        // The seen bucket's stream holds one message per contentId (no deletes); the dead
        // buckets are small and have delete markers, so their keys are counted.
        let seen = self
            .jetstream
            .get_stream(self.seen.stream_name.as_str())
            .await
            .map_err(|error| self.failed("read the seen bucket", error))?
            .cached_info()
            .state
            .messages;
        let dead = self
            .keys_of(&self.dead, "count the dead items")
            .await?
            .len() as u64;
        let dead_record_entries: Vec<DeadRecordEntry> = self
            .bucket_values(&self.dead_records, "count the dead records")
            .await?;
        let dead_records = dead_record_entries.len() as u64;
        let requeued_records = dead_record_entries
            .iter()
            .filter(|entry| entry.requeued)
            .count() as u64;
        let mut stats = QueueStats {
            pending: state.messages - leased,
            leased,
            done: seen.saturating_sub(state.messages + dead),
            dead,
            dead_records,
            requeued_records,
            commits: self.writes.load(Ordering::Relaxed),
            write_requests: self.writes.load(Ordering::Relaxed),
            ..QueueStats::default()
        };
        if state.messages > 0
            && let Ok(first) = work.get_raw_message(state.first_sequence).await
            && let Ok(item) = serde_json::from_slice::<WorkItem>(&first.payload)
        {
            stats.oldest_open_enqueued = Some(item.enqueued_at);
            stats.oldest_open_created = Some(item.content_created);
        }
        Ok(stats)
    }

    async fn get(&self, key: &ContentKey) -> Result<Option<QueueItem>, QueueError> {
        self.check_open()?;
        let kv_key = item_key(&key.tenant_id, &key.content_id);
        let progress = self.read_progress(&kv_key).await?;
        if let Some(bytes) = self
            .dead
            .get(kv_key.as_str())
            .await
            .map_err(|error| self.failed("read a dead item", error))?
            && let Ok(dead) = serde_json::from_slice::<DeadEntry>(&bytes)
        {
            return Ok(Some(QueueItem {
                content: dead.item.content(),
                state: ItemState::Dead {
                    reason: dead.reason,
                    attempts: dead.attempts,
                },
                acked_records: progress.acked_records,
                dead_records: progress.dead_records,
                last_retry_reason: progress.last_retry_reason,
                enqueued_at: dead.item.enqueued_at,
            }));
        }
        let Some(entry) = self.seen_entry(&kv_key).await? else {
            return Ok(None);
        };
        let held_attempts = {
            let held = self.held.lock().expect("held deliveries lock");
            held.get(key).map(|held| held.attempts)
        };
        let state = match (entry.done_at, progress.lease) {
            (Some(_), _) => ItemState::Done {
                tombstone_until: entry.item.content_expiration,
            },
            (None, Some(lease)) => ItemState::Leased {
                lease: LeaseId(lease),
                until: progress.lease_until.unwrap_or_else(|| self.clock.now()),
                attempts: held_attempts.unwrap_or(progress.retries),
            },
            (None, None) => ItemState::Pending {
                not_before: self.clock.now(),
                attempts: progress.retries,
            },
        };
        // A done item's progress was removed and kept in its tombstone.
        let (acked_records, dead_records) = match &state {
            ItemState::Done { .. } => (entry.acked_records, entry.dead_records),
            _ => (progress.acked_records, progress.dead_records),
        };
        Ok(Some(QueueItem {
            content: entry.item.content(),
            state,
            acked_records,
            dead_records,
            last_retry_reason: progress.last_retry_reason,
            enqueued_at: entry.item.enqueued_at,
        }))
    }

    async fn dead_items(&self, limit: usize) -> Result<Vec<QueueItem>, QueueError> {
        self.check_open()?;
        let mut entries: Vec<DeadEntry> = self
            .bucket_values(&self.dead, "list the dead items")
            .await?;
        entries.sort_by_key(|entry| entry.item.enqueued_at);
        entries.truncate(limit);
        let mut items = Vec::with_capacity(entries.len());
        for entry in entries {
            let progress = self.read_progress(&entry.item.kv_key()).await?;
            items.push(QueueItem {
                content: entry.item.content(),
                state: ItemState::Dead {
                    reason: entry.reason,
                    attempts: entry.attempts,
                },
                acked_records: progress.acked_records,
                dead_records: progress.dead_records,
                last_retry_reason: progress.last_retry_reason,
                enqueued_at: entry.item.enqueued_at,
            });
        }
        Ok(items)
    }

    async fn dead_records(
        &self,
        limit: usize,
    ) -> Result<Vec<(ContentKey, DeadRecord)>, QueueError> {
        self.check_open()?;
        let mut entries: Vec<DeadRecordEntry> = self
            .bucket_values(&self.dead_records, "list the dead records")
            .await?;
        entries.sort_by(|a, b| {
            (&a.tenant_id, &a.content_id, a.index).cmp(&(&b.tenant_id, &b.content_id, b.index))
        });
        entries.truncate(limit);
        Ok(entries
            .into_iter()
            .map(|entry| {
                let mut sha256 = [0u8; 32];
                let _ = hex::decode_to_slice(&entry.sha256, &mut sha256);
                (
                    ContentKey::new(entry.tenant_id, entry.content_id),
                    DeadRecord {
                        index: entry.index,
                        byte_range: (entry.start, entry.end),
                        sha256,
                        reason: entry.reason,
                    },
                )
            })
            .collect())
    }

    async fn close(&self) -> Result<(), QueueError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Deliveries still held go back at once rather than after the ack wait.
        let held: Vec<Held> = self
            .held
            .lock()
            .expect("held deliveries lock")
            .drain()
            .map(|(_, held)| held)
            .collect();
        for held in held {
            let _ = held.message.ack_with(AckKind::Nak(None)).await;
        }
        self.client
            .flush()
            .await
            .map_err(|error| self.failed("flush the NATS connection", error))
    }
}

#[async_trait]
impl MetaStore for NatsQueue {
    async fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.check_open()?;
        let value = self
            .meta
            .get(URL_SAFE_NO_PAD.encode(key))
            .await
            .map_err(|error| self.failed("read the service metadata", error))?;
        Ok(value.map(|bytes| bytes.to_vec()))
    }

    async fn put_meta_if_absent(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, QueueError> {
        self.check_open()?;
        let encoded = URL_SAFE_NO_PAD.encode(key);
        match self
            .meta
            .create(encoded.as_str(), Bytes::from(value.clone()))
            .await
        {
            Ok(_) => {
                self.wrote(1);
                Ok(value)
            }
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => self
                .get_meta(key)
                .await?
                .ok_or_else(|| self.failed("read the service metadata", "a value vanished")),
            Err(error) => Err(self.failed("write the service metadata", error)),
        }
    }

    async fn put_meta(&self, key: &str, value: Vec<u8>) -> Result<(), QueueError> {
        self.check_open()?;
        self.meta
            .put(URL_SAFE_NO_PAD.encode(key), Bytes::from(value))
            .await
            .map_err(|error| self.failed("write the service metadata", error))?;
        self.wrote(1);
        Ok(())
    }
}

impl QueueStore for NatsQueue {
    fn store_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn health(&self) -> StoreHealth {
        let state = self.client.connection_state();
        let connected = matches!(state, async_nats::connection::State::Connected);
        let server = self.client.server_info();
        StoreHealth {
            backend: "nats",
            connected,
            detail: Some(if connected {
                format!(
                    "connected to NATS server {} ({}, version {})",
                    server.server_name, server.host, server.version
                )
            } else {
                "not connected to any NATS server; reconnecting".to_owned()
            }),
        }
    }
}

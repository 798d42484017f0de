//! Leases: JetStream deliveries, and the lease every replica sees in the progress bucket.
//!
//! `lease` fetches from the pull consumer; the lease id is the delivery's consumer sequence;
//! `extend_lease` sends "in progress", `complete` acks (waiting for the server's
//! confirmation), `retry_later` naks with a delay, `release` naks at once. A replica that dies
//! holds its deliveries until the ack wait passes; then any replica gets them again and
//! resumes after the acked-record offset in the progress bucket. `attempts` counts
//! `retry_later` calls plus deliveries that ended without an answer (lease expiry), from the
//! delivery count minus the deliveries given back on purpose.
//!
//! Guarantees: taking a delivery records its lease in the item's [`Progress`] before the
//! caller hears of it, so from then on a call under an earlier lease of the item, on any
//! replica, is stale. Every write under a lease is a compare-and-set on the progress entry's
//! revision that first checks the recorded lease is still the caller's
//! ([`update_held_progress`](NatsQueue::update_held_progress)): a stale call gets
//! [`QueueError::StaleLease`] and writes nothing. A write that loses the race to another
//! replica reads again and decides again, [`PROGRESS_WRITE_TRIES`] times.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use chrono::{DateTime, Utc};

use super::NatsQueue;
use super::records::{Progress, WorkItem, json};
use crate::queue::{ContentKey, LeaseId, LeasedItem, QueueError};

/// How often a compare-and-set write of an item's progress is tried again after another
/// replica's write came first.
const PROGRESS_WRITE_TRIES: usize = 5;

/// How long an item of a paused tenant (throttled, token outage) is set aside.
const SKIP_DELAY: Duration = Duration::from_secs(2);

/// A delivery this replica holds.
pub(super) struct Held {
    pub(super) lease: LeaseId,
    pub(super) message: jetstream::Message,
    pub(super) item: WorkItem,
    pub(super) progress: Progress,
    pub(super) attempts: u32,
}

impl NatsQueue {
    /// The delivery held under `lease`, or [`QueueError::StaleLease`].
    pub(super) fn held<T>(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        read: impl FnOnce(&mut Held) -> T,
    ) -> Result<T, QueueError> {
        let mut held = self.held.lock().expect("held deliveries lock");
        match held.get_mut(key) {
            Some(entry) if entry.lease == lease => Ok(read(entry)),
            _ => Err(QueueError::StaleLease { key: key.clone() }),
        }
    }

    pub(super) fn forget(&self, key: &ContentKey, lease: LeaseId) {
        let mut held = self.held.lock().expect("held deliveries lock");
        if held.get(key).is_some_and(|entry| entry.lease == lease) {
            held.remove(key);
        }
    }

    /// The item's progress and the revision to write it back under (`None`: never written).
    async fn progress_entry(&self, kv_key: &str) -> Result<(Progress, Option<u64>), QueueError> {
        let entry = self
            .progress
            .entry(kv_key)
            .await
            .map_err(|error| self.failed("read an item's progress", error))?;
        Ok(match entry {
            None => (Progress::default(), None),
            Some(entry) => {
                let progress = (entry.operation == kv::Operation::Put)
                    .then(|| serde_json::from_slice(&entry.value).ok())
                    .flatten()
                    .unwrap_or_default();
                (progress, Some(entry.revision))
            }
        })
    }

    /// Writes `progress` if the entry is still at `revision`: `false` when another replica
    /// wrote it first (the caller reads again and decides again).
    async fn write_progress_at(
        &self,
        kv_key: &str,
        progress: &Progress,
        revision: Option<u64>,
    ) -> Result<bool, QueueError> {
        let written = match revision {
            Some(revision) => self
                .progress
                .update(kv_key, json(progress), revision)
                .await
                .map(|_| ())
                .map_err(|error| {
                    let conflict = error.kind() == kv::UpdateErrorKind::WrongLastRevision;
                    (conflict, error.to_string())
                }),
            None => self
                .progress
                .create(kv_key, json(progress))
                .await
                .map(|_| ())
                .map_err(|error| {
                    let conflict = error.kind() == kv::CreateErrorKind::AlreadyExists;
                    (conflict, error.to_string())
                }),
        };
        match written {
            Ok(()) => {
                self.wrote(1);
                Ok(true)
            }
            Err((true, _)) => Ok(false),
            Err((false, error)) => Err(self.failed("write an item's progress", error)),
        }
    }

    /// Applies `change` to the item's shared progress as the holder of `lease`, and writes
    /// it back when `change` returns true, with a compare-and-set on the entry's revision.
    /// [`QueueError::StaleLease`] when the shared progress names another lease (the lease
    /// expired and a replica, this one or another, leased the item again): the caller's
    /// delivery is forgotten and nothing is written.
    pub(super) async fn update_held_progress(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        change: impl Fn(&mut Progress) -> bool,
    ) -> Result<Progress, QueueError> {
        let kv_key = self.held(key, lease, |held| held.item.kv_key())?;
        for _ in 0..PROGRESS_WRITE_TRIES {
            let (mut progress, revision) = self.progress_entry(&kv_key).await?;
            if progress.lease != Some(lease.0) {
                self.forget(key, lease);
                return Err(QueueError::StaleLease { key: key.clone() });
            }
            if !change(&mut progress)
                || self.write_progress_at(&kv_key, &progress, revision).await?
            {
                let _ = self.held(key, lease, |held| held.progress = progress.clone());
                return Ok(progress);
            }
        }
        Err(self.failed(
            "write an item's progress",
            "other replicas kept writing it; try again",
        ))
    }

    /// Reads the item's progress, applies `change` and writes it back unless another
    /// replica wrote it in between (then reads again).
    async fn change_progress(
        &self,
        kv_key: &str,
        change: impl Fn(&mut Progress),
    ) -> Result<Progress, QueueError> {
        for _ in 0..PROGRESS_WRITE_TRIES {
            let (mut progress, revision) = self.progress_entry(kv_key).await?;
            change(&mut progress);
            if self.write_progress_at(kv_key, &progress, revision).await? {
                return Ok(progress);
            }
        }
        Err(self.failed(
            "write an item's progress",
            "other replicas kept writing it; try again",
        ))
    }

    /// When a lease taken or extended now expires: the consumer's ack wait from now.
    pub(super) fn lease_until_from_now(&self) -> DateTime<Utc> {
        self.clock.now()
            + chrono::Duration::from_std(self.ack_wait).unwrap_or(chrono::Duration::MAX)
    }

    /// Gives a held delivery back: progress first (so the next holder counts right), then
    /// the nak. A lost nak only means the delivery comes back when its ack wait passes.
    pub(super) async fn give_back(
        &self,
        key: &ContentKey,
        lease: LeaseId,
        delay: Option<Duration>,
        retry_reason: Option<&str>,
    ) -> Result<(), QueueError> {
        let message = self.held(key, lease, |held| held.message.clone())?;
        self.update_held_progress(key, lease, |progress| {
            progress.given_back += 1;
            if let Some(reason) = retry_reason {
                progress.retries = progress.retries.saturating_add(1);
                progress.last_retry_reason = Some(reason.to_owned());
            }
            progress.lease = None;
            progress.lease_until = None;
            true
        })
        .await?;
        // Confirmed by the server, so the item is leasable again when this returns.
        message
            .double_ack_with(AckKind::Nak(delay))
            .await
            .map_err(|error| self.failed("give a delivery back", error))?;
        self.forget(key, lease);
        Ok(())
    }

    /// Turns one delivery into a lease held by this replica, or sets it aside (a paused
    /// tenant's item, `None`). A message that is not a content reference (not written by a
    /// connector) is removed, logged and counted.
    pub(super) async fn take_delivery(
        &self,
        message: jetstream::Message,
        skip_tenants: &HashSet<String>,
    ) -> Result<Option<LeasedItem>, QueueError> {
        let Ok(item) = serde_json::from_slice::<WorkItem>(&message.payload) else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                stream = %self.stream_name,
                "a message on the work stream is not a content reference (not written by the connector); removed"
            );
            let _ = message.ack_with(AckKind::Term).await;
            return Ok(None);
        };
        let (consumer_sequence, delivered) = match message.info() {
            Ok(info) => (info.consumer_sequence, info.delivered.max(1) as u64),
            Err(error) => return Err(self.failed("read a delivery's metadata", error)),
        };
        let kv_key = item.kv_key();
        if skip_tenants.contains(&item.tenant_id) {
            self.change_progress(&kv_key, |progress| progress.given_back += 1)
                .await?;
            message
                .ack_with(AckKind::Nak(Some(SKIP_DELAY)))
                .await
                .map_err(|error| self.failed("set a paused tenant's item aside", error))?;
            return Ok(None);
        }
        let lease = LeaseId(consumer_sequence);
        let lease_until = self.lease_until_from_now();
        // The new lease is recorded where every replica sees it: from now on a call under an
        // earlier lease of the item, on any replica, is stale.
        let progress = self
            .change_progress(&kv_key, |progress| {
                progress.lease = Some(lease.0);
                progress.lease_until = Some(lease_until);
            })
            .await?;
        // Deliveries neither given back on purpose nor the current one ended in an expired
        // lease: each counts as a failed attempt.
        let expired = (delivered - 1).saturating_sub(progress.given_back);
        let attempts = progress
            .retries
            .saturating_add(u32::try_from(expired).unwrap_or(u32::MAX));
        let leased = LeasedItem {
            content: item.content(),
            lease,
            lease_until,
            acked_records: progress.acked_records,
            redo_records: progress.redo_records.clone(),
            attempts,
        };
        self.held.lock().expect("held deliveries lock").insert(
            item.key(),
            Held {
                lease,
                message,
                item,
                progress,
                attempts,
            },
        );
        Ok(Some(leased))
    }
}

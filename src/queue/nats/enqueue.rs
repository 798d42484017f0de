//! Enqueue on NATS: the references of concurrent callers committed together, in groups.
//!
//! **Per reference** (the order every group keeps): a lookup in the seen bucket; for one not
//! seen, a publish with `Nats-Msg-Id` = `tenant/contentId` (the server drops a repeat within
//! its two-minute duplicate window) and the wait for the stream's acknowledgement; only then
//! the seen mark. A crash between the two leaves a queued reference that is not marked seen:
//! a later notification of it queues it again (a duplicate delivery, never a loss). Nothing
//! is marked seen before it is queued.
//!
//! **Groups.** Each reference costs three ordered requests. Sent by each caller on its own
//! (one webhook notification, one reference), every request was one socket write, one read
//! and one wake-up on both sides; they were most of the connector's and the server's CPU per
//! item. Here a caller that arrives while [`GROUPS_IN_FLIGHT`] groups are being committed
//! waits, and the callers waiting are committed together as the next group: all its
//! lookups go out back to back, then all its publishes, then all its marks, each phase
//! written and answered in a few socket operations. An idle queue commits a lone caller at
//! once, so grouping adds no latency when there is no load.
//!
//! Guarantees: every caller gets the outcomes of its own references, in order, only after
//! their publishes were acknowledged and their marks written; a contentId given by two
//! callers of one group is queued once (the first is `Enqueued`, the other `Duplicate`). A
//! group that fails answers every caller in it with the error; nothing of theirs was marked
//! seen unless it was queued, so their retries queue the rest. A group is committed by a
//! task of its own, so a caller that goes away (its HTTP client hung up) abandons none of
//! the others' references.

use std::collections::HashSet;
use std::future::IntoFuture;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, kv};
use futures_util::future::join_all;
use tokio::sync::{Semaphore, oneshot};

use super::records::{SeenEntry, WorkItem, item_key, json};
use super::{count_write, store_failure};
use crate::clock::Clock;
use crate::queue::{ContentRef, EnqueueOutcome, QueueError};

/// How many groups may be committed at once: the server works on several while the next
/// gathers. Four against two, in one bench run each way: 0.99 and 1.19 of the rate, and
/// neither worse, so four.
const GROUPS_IN_FLIGHT: usize = 4;

/// The answer a caller waits for.
type Answer = Result<Vec<EnqueueOutcome>, QueueError>;

/// A caller waiting for its references to be committed.
struct Waiting {
    refs: Vec<ContentRef>,
    answer: oneshot::Sender<Answer>,
}

/// What committing a group needs: handles shared with the queue, cheap to clone into the
/// group's task.
#[derive(Clone)]
pub(super) struct Committer {
    pub(super) jetstream: jetstream::Context,
    pub(super) subject: async_nats::Subject,
    pub(super) seen: kv::Store,
    pub(super) clock: Clock,
    /// The queue's failure count (`store_errors_total`).
    pub(super) failures: Arc<AtomicU64>,
    /// The queue's write count.
    pub(super) writes: Arc<AtomicU64>,
}

/// The callers waiting to be committed, and the groups in flight.
pub(super) struct EnqueueGroups {
    committer: Committer,
    waiting: Mutex<Vec<Waiting>>,
    in_flight: Arc<Semaphore>,
}

impl EnqueueGroups {
    pub(super) fn new(committer: Committer) -> Self {
        Self {
            committer,
            waiting: Mutex::new(Vec::new()),
            in_flight: Arc::new(Semaphore::new(GROUPS_IN_FLIGHT)),
        }
    }

    /// Enqueues `refs` with whatever other callers are waiting (see the module doc).
    pub(super) async fn enqueue(&self, refs: Vec<ContentRef>) -> Answer {
        if refs.is_empty() {
            return Ok(Vec::new());
        }
        let (answer, mut answered) = oneshot::channel();
        self.waiting
            .lock()
            .expect("enqueue groups lock")
            .push(Waiting { refs, answer });
        let abandoned = || QueueError::Io {
            message: "NATS: an enqueue group ended without an answer; retry".to_owned(),
        };
        tokio::select! {
            biased;
            answer = &mut answered => return answer.unwrap_or_else(|_| Err(abandoned())),
            permit = self.in_flight.clone().acquire_owned() => {
                let permit = permit.expect("the enqueue semaphore is never closed");
                let group = std::mem::take(&mut *self.waiting.lock().expect("enqueue groups lock"));
                // Empty when a group that started meanwhile took this caller's references.
                if !group.is_empty() {
                    let committer = self.committer.clone();
                    tokio::spawn(async move {
                        committer.commit(group).await;
                        drop(permit);
                    });
                }
            }
        }
        answered.await.unwrap_or_else(|_| Err(abandoned()))
    }
}

impl Committer {
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> QueueError {
        store_failure(&self.failures, what, error)
    }

    /// Commits the references of every caller of `group` as one batch and answers each.
    async fn commit(&self, group: Vec<Waiting>) {
        let mut refs = Vec::with_capacity(group.iter().map(|waiting| waiting.refs.len()).sum());
        let mut callers = Vec::with_capacity(group.len());
        for waiting in group {
            callers.push((waiting.refs.len(), waiting.answer));
            refs.extend(waiting.refs);
        }
        match self.enqueue_batch(refs).await {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (count, answer) in callers {
                    let _ = answer.send(Ok(outcomes.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                for (_, answer) in callers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }

    /// One batch, phase by phase: the lookups, the publishes, the acknowledgements, the marks.
    async fn enqueue_batch(&self, refs: Vec<ContentRef>) -> Answer {
        let mut outcomes = vec![EnqueueOutcome::Duplicate; refs.len()];
        let keys: Vec<String> = refs
            .iter()
            .map(|content| item_key(&content.tenant_id, &content.content_id))
            .collect();
        let found = join_all(keys.iter().map(|key| self.seen.get(key.as_str()))).await;
        let mut in_batch = HashSet::with_capacity(keys.len());
        let mut fresh = Vec::with_capacity(keys.len());
        for (index, found) in found.into_iter().enumerate() {
            let found = found.map_err(|error| self.failed("read the seen contentIds", error))?;
            if found.is_none() && in_batch.insert(keys[index].as_str()) {
                fresh.push(index);
            }
        }
        let now = self.clock.now();
        let mut published = Vec::with_capacity(fresh.len());
        let mut acks = Vec::with_capacity(fresh.len());
        for &index in &fresh {
            let content = &refs[index];
            let item = WorkItem::new(content, now);
            let publish = jetstream::message::PublishMessage::build()
                .payload(json(&item))
                .message_id(format!("{}/{}", content.tenant_id, content.content_id));
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|error| self.failed("queue a content reference", error))?;
            published.push((index, item));
            acks.push(ack.into_future());
        }
        let acks = join_all(acks).await;
        let mut marks = Vec::with_capacity(published.len());
        let mut duplicates = Vec::new();
        for ((index, item), ack) in published.into_iter().zip(acks) {
            let ack = ack.map_err(|error| self.failed("queue a content reference", error))?;
            let entry = SeenEntry {
                item,
                done_at: None,
                acked_records: 0,
                dead_records: 0,
            };
            if ack.duplicate {
                // Queued within the duplicate window by another replica, or by an earlier
                // call that failed before marking it seen: marked here unless already
                // marked (a tombstone is never overwritten).
                duplicates.push(self.seen.create(keys[index].as_str(), json(&entry)));
                continue;
            }
            outcomes[index] = EnqueueOutcome::Enqueued;
            marks.push(self.seen.put(keys[index].as_str(), json(&entry)));
        }
        let written = marks.len() as u64;
        for mark in join_all(marks).await {
            mark.map_err(|error| self.failed("mark a contentId as seen", error))?;
        }
        for mark in join_all(duplicates).await {
            match mark {
                Ok(_) => count_write(&self.writes, 1),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(self.failed("mark a contentId as seen", error)),
            }
        }
        count_write(&self.writes, fresh.len() as u64 + written);
        Ok(outcomes)
    }
}

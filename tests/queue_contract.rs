//! The queue contract of `src/queue/mod.rs`, one suite run against both backends: the
//! embedded store and NATS JetStream on a real `nats-server` (started by each test). Every
//! contract test is an `async fn(Harness)`; `contract_tests!` runs it once per backend.
//! Two replicas of one NATS server are two `NatsQueue`s; the embedded store has one process,
//! so both "replicas" are the same queue.
//!
//! The property test drives random operation sequences against both backends with
//! [`ItemState::apply`] as the model, bounded in cases and operations so that it stays
//! within seconds.

mod common;

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use proptest::prelude::*;

use common::DEADLINE;
use common::nats::NatsServer;
use common::queue::{content_ref, no_skip};
use o365_connector::clock::Clock;
use o365_connector::config::NatsConfig;
use o365_connector::queue::nats::NatsSettings;
use o365_connector::queue::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EmbeddedQueue, EnqueueOutcome, ItemState,
    LeaseId, LeasedItem, NatsQueue, QueueError, Source, Transition, TransitionError,
};

const TENANT: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

/// A long lease: no lease expires unless the test means it to.
const LONG: Duration = Duration::from_secs(60);

/// Two replicas of one queue, and what keeps its backend alive.
struct Harness {
    a: Arc<dyn ContentQueue>,
    b: Arc<dyn ContentQueue>,
    _backend: Backend,
}

enum Backend {
    Embedded(#[allow(dead_code)] tempfile::TempDir),
    Nats(#[allow(dead_code)] NatsServer),
}

fn nats_settings(url: &str, replica: &str, prefix: &str, lease: Duration) -> NatsSettings {
    NatsSettings {
        nats: NatsConfig {
            urls: vec![url.to_owned()],
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            replica_id: Some(replica.to_owned()),
            prefix: prefix.to_owned(),
            stream_replicas: 1,
            leader_lease_secs: NonZeroU64::new(2).unwrap(),
            connect_timeout_secs: NonZeroU64::new(5).unwrap(),
            url_credentials: None,
        },
        replica_id: replica.to_owned(),
        lease,
    }
}

async fn nats_replica(url: &str, replica: &str, prefix: &str, lease: Duration) -> NatsQueue {
    NatsQueue::connect(&nats_settings(url, replica, prefix, lease), Clock::system())
        .await
        .expect("the NATS queue opens")
}

impl Harness {
    /// The embedded store; `lease` is unused (its leases last what each call asks).
    async fn embedded(_lease: Duration) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue: Arc<dyn ContentQueue> = Arc::new(
            EmbeddedQueue::open(dir.path(), Clock::system())
                .await
                .expect("store opens"),
        );
        Self {
            a: queue.clone(),
            b: queue,
            _backend: Backend::Embedded(dir),
        }
    }

    /// Two replicas on a fresh nats-server whose consumer's ack wait is `lease`.
    async fn nats(lease: Duration) -> Self {
        let server = NatsServer::start().await;
        let a = nats_replica(&server.url, "a", "contract", lease).await;
        let b = nats_replica(&server.url, "b", "contract", lease).await;
        Self {
            a: Arc::new(a),
            b: Arc::new(b),
            _backend: Backend::Nats(server),
        }
    }
}

/// Runs each contract test against both backends.
macro_rules! contract_tests {
    ($($name:ident($lease:expr)),* $(,)?) => {
        mod embedded {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                super::$name(Harness::embedded($lease).await).await;
            })*
        }
        mod nats {
            use super::*;
            $(#[tokio::test]
            async fn $name() {
                super::$name(Harness::nats($lease).await).await;
            })*
        }
    };
}

contract_tests!(
    a_stale_lease_from_an_expired_holder_is_refused_and_changes_nothing(Duration::from_secs(1)),
    a_batch_reports_each_reference_and_every_enqueued_one_is_stored(LONG),
    acked_progress_never_moves_backwards_across_leases(LONG),
    dead_letters_round_trip_through_an_operator_requeue(LONG),
    an_item_is_not_handed_out_again_before_its_lease_until(Duration::from_secs(1)),
    open_items_counts_what_is_pending_or_leased(LONG),
    completing_together_reports_each_completion_and_a_stale_one_fails_alone(LONG),
);

fn content(content_id: &str) -> ContentRef {
    content_ref(
        TENANT,
        "Audit.SharePoint",
        format!("20260301120000.{content_id}$audit_sharepoint$emea0031"),
        Utc::now(),
        Source::Poll,
    )
}

/// Leases one item from `queue` with `duration`, trying until one is handed out.
async fn lease_one(queue: &dyn ContentQueue, duration: Duration) -> LeasedItem {
    let started = Instant::now();
    loop {
        if let Some(item) = queue.lease(1, duration, &no_skip()).await.unwrap().pop() {
            return item;
        }
        assert!(started.elapsed() < DEADLINE, "no item was handed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_stale<T: std::fmt::Debug>(result: Result<T, QueueError>) -> bool {
    matches!(result, Err(QueueError::StaleLease { .. }))
}

async fn a_stale_lease_from_an_expired_holder_is_refused_and_changes_nothing(queue: Harness) {
    let lease = Duration::from_secs(1);
    queue.a.enqueue(vec![content("stale")]).await.unwrap();
    let old = lease_one(queue.a.as_ref(), lease).await;
    queue
        .a
        .record_acked(&old.key(), old.lease, 4)
        .await
        .unwrap();
    // The first holder stalls past its lease; the other replica takes the item.
    let new = lease_one(queue.b.as_ref(), lease).await;
    assert_eq!(new.key(), old.key());
    assert_ne!(new.lease, old.lease);
    assert_eq!(new.acked_records, 4);
    queue
        .b
        .extend_lease(&new.key(), new.lease, LONG)
        .await
        .unwrap();
    queue
        .b
        .record_acked(&new.key(), new.lease, 6)
        .await
        .unwrap();

    let key = old.key();
    assert!(is_stale(queue.a.record_acked(&key, old.lease, 9).await));
    assert!(is_stale(queue.a.extend_lease(&key, old.lease, LONG).await));
    assert!(is_stale(queue.a.release(&key, old.lease).await));
    assert!(is_stale(
        queue
            .a
            .retry_later(&key, old.lease, Utc::now(), "late")
            .await
    ));
    assert!(is_stale(queue.a.dead_letter(&key, old.lease, "late").await));
    assert!(is_stale(queue.a.complete(&key, old.lease).await));
    let item = queue.b.get(&key).await.unwrap().unwrap();
    assert!(item.state.is_leased_by(new.lease), "{:?}", item.state);
    assert_eq!(item.acked_records, 6, "the stale holder moved no offset");

    queue.b.complete(&key, new.lease).await.unwrap();
    assert!(is_stale(queue.a.complete(&key, old.lease).await));
    let item = queue.a.get(&key).await.unwrap().unwrap();
    assert!(matches!(item.state, ItemState::Done { .. }));
    assert_eq!(item.acked_records, 6);
    assert!(queue.a.dead_items(10).await.unwrap().is_empty());
}

async fn a_batch_reports_each_reference_and_every_enqueued_one_is_stored(queue: Harness) {
    use EnqueueOutcome::{Duplicate, Enqueued};
    let batch = vec![content("p"), content("q"), content("p"), content("r")];
    assert_eq!(
        queue.a.enqueue(batch.clone()).await.unwrap(),
        [Enqueued, Enqueued, Duplicate, Enqueued]
    );
    for reference in &batch {
        let item = queue.b.get(&reference.key()).await.unwrap();
        assert!(
            matches!(item.map(|item| item.state), Some(ItemState::Pending { .. })),
            "{} is stored and pending",
            reference.key()
        );
    }
    assert_eq!(
        queue.b.enqueue(batch).await.unwrap(),
        [Duplicate; 4],
        "a retried batch changes nothing"
    );
    let stats = queue.a.stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.done), (3, 0, 0));
}

/// Waits until `queue.open_items()` is `expected`: NATS may reuse a count for a moment.
async fn wait_for_open_items(queue: &dyn ContentQueue, expected: u64, after: &str) {
    let what = format!("{expected} open items after {after}");
    common::wait_until_async(&what, DEADLINE, || async {
        queue.open_items().await.unwrap() == expected
    })
    .await;
}

/// The hard limit and `/readyz` read `open_items` on every notification: it must follow
/// enqueues, leases and completions (the embedded store counts at each commit).
async fn open_items_counts_what_is_pending_or_leased(queue: Harness) {
    wait_for_open_items(queue.a.as_ref(), 0, "opening").await;
    let batch = vec![content("o1"), content("o2"), content("o3"), content("o1")];
    queue.a.enqueue(batch).await.unwrap();
    wait_for_open_items(queue.a.as_ref(), 3, "three new references").await;
    let leased = lease_one(queue.a.as_ref(), LONG).await;
    wait_for_open_items(queue.b.as_ref(), 3, "a lease").await;
    queue.a.complete(&leased.key(), leased.lease).await.unwrap();
    wait_for_open_items(queue.a.as_ref(), 2, "a completion").await;
    let leased = lease_one(queue.a.as_ref(), LONG).await;
    queue
        .a
        .dead_letter(&leased.key(), leased.lease, "refused")
        .await
        .unwrap();
    wait_for_open_items(queue.b.as_ref(), 1, "a dead letter").await;
}

async fn acked_progress_never_moves_backwards_across_leases(queue: Harness) {
    queue.a.enqueue(vec![content("progress")]).await.unwrap();
    let first = lease_one(queue.a.as_ref(), LONG).await;
    let key = first.key();
    queue.a.record_acked(&key, first.lease, 10).await.unwrap();
    queue.a.record_acked(&key, first.lease, 5).await.unwrap();
    assert_eq!(queue.b.get(&key).await.unwrap().unwrap().acked_records, 10);
    queue.a.release(&key, first.lease).await.unwrap();

    let second = lease_one(queue.b.as_ref(), LONG).await;
    assert_eq!(second.acked_records, 10);
    assert_eq!(second.attempts, 0, "a release is not an attempt");
    queue.b.record_acked(&key, second.lease, 3).await.unwrap();
    queue
        .b
        .retry_later(&key, second.lease, Utc::now(), "HTTP 503")
        .await
        .unwrap();
    let third = lease_one(queue.a.as_ref(), LONG).await;
    assert_eq!(third.acked_records, 10);
    assert_eq!(third.attempts, 1);
    queue.a.complete(&key, third.lease).await.unwrap();
    assert_eq!(queue.b.get(&key).await.unwrap().unwrap().acked_records, 10);
}

fn dead_record(index: u64) -> DeadRecord {
    common::queue::dead_record(index, &format!("record {index} is not a JSON object"))
}

async fn dead_letters_round_trip_through_an_operator_requeue(queue: Harness) {
    queue.a.enqueue(vec![content("dead")]).await.unwrap();
    let first = lease_one(queue.a.as_ref(), LONG).await;
    let key = first.key();
    queue.a.record_acked(&key, first.lease, 8).await.unwrap();
    queue
        .a
        .add_dead_record(&key, first.lease, dead_record(2))
        .await
        .unwrap();
    queue
        .a
        .dead_letter(&key, first.lease, "HTTP 403 on every fetch")
        .await
        .unwrap();

    let dead = queue.b.dead_items(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].content.key(), key);
    assert!(matches!(
        &dead[0].state,
        ItemState::Dead { reason, .. } if reason == "HTTP 403 on every fetch"
    ));
    assert_eq!(
        queue.b.dead_records(10).await.unwrap(),
        [(key.clone(), dead_record(2))]
    );
    assert_eq!(queue.b.stats().await.unwrap().lost_records(), 1);

    assert!(queue.b.requeue_dead(&key).await.unwrap());
    assert!(
        !queue.b.requeue_dead(&key).await.unwrap(),
        "pending now: nothing to requeue"
    );
    let again = lease_one(queue.b.as_ref(), LONG).await;
    assert_eq!(again.key(), key);
    assert_eq!((again.acked_records, again.attempts), (8, 0));
    assert_eq!(again.redo_records.iter().copied().collect::<Vec<_>>(), [2]);
    assert_eq!(queue.a.stats().await.unwrap().lost_records(), 0);
    queue.b.complete(&key, again.lease).await.unwrap();
    assert!(queue.a.dead_records(10).await.unwrap().is_empty());
    assert!(queue.a.dead_items(10).await.unwrap().is_empty());
}

async fn an_item_is_not_handed_out_again_before_its_lease_until(queue: Harness) {
    let lease = Duration::from_secs(1);
    queue.a.enqueue(vec![content("until")]).await.unwrap();
    let held = lease_one(queue.a.as_ref(), lease).await;
    let slack = TimeDelta::milliseconds(200);
    assert!(held.lease_until >= Utc::now() + TimeDelta::from_std(lease).unwrap() - slack * 2);
    let again = lease_one(queue.b.as_ref(), lease).await;
    assert!(
        Utc::now() + slack >= held.lease_until,
        "handed out again before the first lease_until"
    );
    assert_eq!(again.attempts, 1, "the expired lease counts as an attempt");
}

async fn completing_together_reports_each_completion_and_a_stale_one_fails_alone(queue: Harness) {
    queue
        .a
        .enqueue(vec![content("first"), content("second")])
        .await
        .unwrap();
    let first = lease_one(queue.a.as_ref(), LONG).await;
    let stale = LeaseId(first.lease.0.wrapping_add(1_000_000));
    let done = queue
        .a
        .complete_all(vec![(first.key(), first.lease), (first.key(), stale)])
        .await;
    assert_eq!(done.len(), 2, "one result per completion");
    assert!(done[0].is_ok(), "{:?}", done[0]);
    assert!(
        is_stale(done[1].clone()),
        "a completion under a lease not held fails alone: {:?}",
        done[1]
    );
    let first_now = queue.b.get(&first.key()).await.unwrap().unwrap();
    assert!(
        matches!(first_now.state, ItemState::Done { .. }),
        "{:?}",
        first_now.state
    );
    let leased = queue.a.lease(2, LONG, &no_skip()).await.unwrap();
    assert_eq!(
        leased.len(),
        1,
        "the completed item is not handed out again"
    );
    assert_eq!(leased[0].content.content_id, content("second").content_id);
    let second = &leased[0];
    let last = queue
        .a
        .complete_all(vec![(second.key(), second.lease)])
        .await;
    assert!(last[0].is_ok(), "{:?}", last[0]);
    assert!(
        queue.a.lease(1, LONG, &no_skip()).await.unwrap().is_empty(),
        "nothing left to lease"
    );
    let stats = queue.a.stats().await.unwrap();
    assert_eq!((stats.done, stats.pending, stats.leased), (2, 0, 0));
}

/// One step of a random sequence. Keys are indices into a few contentIds; calls under a
/// lease use the last lease handed out for the key, which may be stale by then.
#[derive(Clone, Debug)]
enum Operation {
    Enqueue(Vec<usize>),
    Lease(usize),
    RecordAcked(usize, u64),
    Complete(usize),
    RetryLater(usize),
    Release(usize),
    DeadLetter(usize),
    Requeue(usize),
}

const KEYS: usize = 4;

fn operation() -> impl Strategy<Value = Operation> {
    let key = 0..KEYS;
    prop_oneof![
        2 => proptest::collection::vec(0..KEYS, 1..4).prop_map(Operation::Enqueue),
        3 => (1..4usize).prop_map(Operation::Lease),
        2 => (key.clone(), 0..20u64).prop_map(|(key, n)| Operation::RecordAcked(key, n)),
        1 => key.clone().prop_map(Operation::Complete),
        1 => key.clone().prop_map(Operation::RetryLater),
        1 => key.clone().prop_map(Operation::Release),
        1 => key.clone().prop_map(Operation::DeadLetter),
        1 => key.prop_map(Operation::Requeue),
    ]
}

/// What the model knows of one item: its state and its acked-record count.
struct Modelled {
    state: ItemState,
    acked: u64,
}

/// Runs `operations` against `queue` and [`ItemState::apply`] side by side; fails on the
/// first difference in an outcome, a state or an offset.
async fn run_against_model(queue: &dyn ContentQueue, operations: &[Operation]) {
    let keys: Vec<ContentRef> = (0..KEYS)
        .map(|index| content(&format!("model{index}")))
        .collect();
    let mut model: BTreeMap<usize, Modelled> = BTreeMap::new();
    let mut last_lease: BTreeMap<usize, LeaseId> = BTreeMap::new();
    for (step, operation) in operations.iter().enumerate() {
        let now = Utc::now();
        let at = format!("step {step} {operation:?}");
        match operation {
            Operation::Enqueue(indices) => {
                let outcomes = queue
                    .enqueue(indices.iter().map(|&i| keys[i].clone()).collect())
                    .await;
                let outcomes = outcomes.unwrap_or_else(|error| panic!("{at}: {error}"));
                for (&index, outcome) in indices.iter().zip(outcomes) {
                    let expected = match model.entry(index) {
                        std::collections::btree_map::Entry::Occupied(_) => {
                            EnqueueOutcome::Duplicate
                        }
                        std::collections::btree_map::Entry::Vacant(vacant) => {
                            vacant.insert(Modelled {
                                state: ItemState::Pending {
                                    not_before: now,
                                    attempts: 0,
                                },
                                acked: 0,
                            });
                            EnqueueOutcome::Enqueued
                        }
                    };
                    assert_eq!(outcome, expected, "{at}: key {index}");
                }
            }
            Operation::Lease(max) => {
                let leased = queue.lease(*max, LONG, &no_skip()).await.unwrap();
                assert!(leased.len() <= *max, "{at}");
                for item in leased {
                    let index = keys.iter().position(|key| key.key() == item.key()).unwrap();
                    let modelled = model.get_mut(&index).expect("a leased item was enqueued");
                    let ItemState::Pending { attempts, .. } = modelled.state else {
                        panic!("{at}: leased key {index} in state {:?}", modelled.state);
                    };
                    assert_eq!(item.attempts, attempts, "{at}: attempts of key {index}");
                    assert_eq!(
                        item.acked_records, modelled.acked,
                        "{at}: offset of key {index}"
                    );
                    let until = now + TimeDelta::from_std(LONG).unwrap();
                    modelled.state = ItemState::Leased {
                        lease: item.lease,
                        until,
                        attempts,
                    };
                    last_lease.insert(index, item.lease);
                }
            }
            Operation::Requeue(index) => {
                let requeued = queue.requeue_dead(&keys[*index].key()).await.unwrap();
                let expected = model
                    .get(index)
                    .is_some_and(|m| matches!(m.state, ItemState::Dead { .. }));
                assert_eq!(requeued, expected, "{at}");
                if requeued {
                    let modelled = model.get_mut(index).unwrap();
                    modelled.state = modelled
                        .state
                        .apply(Transition::Requeue { not_before: now }, now)
                        .unwrap();
                }
            }
            Operation::RecordAcked(index, count) => {
                let Some(&lease) = last_lease.get(index) else {
                    continue;
                };
                let result = queue.record_acked(&keys[*index].key(), lease, *count).await;
                let modelled = model.get_mut(index).unwrap();
                if modelled.state.is_leased_by(lease) {
                    result.unwrap_or_else(|error| panic!("{at}: {error}"));
                    modelled.acked = modelled.acked.max(*count);
                } else {
                    assert!(is_stale(result), "{at}: a stale lease is refused");
                }
            }
            Operation::Complete(index)
            | Operation::RetryLater(index)
            | Operation::Release(index)
            | Operation::DeadLetter(index) => {
                let Some(&lease) = last_lease.get(index) else {
                    continue;
                };
                let key = keys[*index].key();
                let (transition, result) = leased_call(queue, operation, &key, lease, now).await;
                let modelled = model.get_mut(index).unwrap();
                match modelled.state.apply(transition, now) {
                    Ok(next) => {
                        result.unwrap_or_else(|error| panic!("{at}: {error}"));
                        modelled.state = next;
                    }
                    Err(TransitionError::StaleLease) => {
                        assert!(is_stale(result), "{at}: a stale lease is refused");
                    }
                    Err(other) => panic!("{at}: the model refused with {other}"),
                }
            }
        }
        for (index, modelled) in &model {
            let stored = queue
                .get(&keys[*index].key())
                .await
                .unwrap()
                .expect("stored");
            assert_eq!(
                stored.state.name(),
                modelled.state.name(),
                "{at}: state of key {index}"
            );
            assert_eq!(
                stored.acked_records, modelled.acked,
                "{at}: offset of key {index}"
            );
        }
    }
}

/// Makes the call under a lease that `operation` names, and the model's transition for it.
async fn leased_call(
    queue: &dyn ContentQueue,
    operation: &Operation,
    key: &ContentKey,
    lease: LeaseId,
    now: chrono::DateTime<Utc>,
) -> (Transition, Result<(), QueueError>) {
    match operation {
        Operation::Complete(_) => (
            Transition::Complete {
                lease,
                tombstone_until: now + TimeDelta::days(7),
            },
            queue.complete(key, lease).await,
        ),
        Operation::RetryLater(_) => (
            Transition::RetryLater {
                lease,
                not_before: now,
            },
            queue.retry_later(key, lease, now, "HTTP 503").await,
        ),
        Operation::Release(_) => (
            Transition::Release {
                lease,
                not_before: now,
            },
            queue.release(key, lease).await,
        ),
        Operation::DeadLetter(_) => (
            Transition::DeadLetter {
                lease,
                reason: "given up".to_owned(),
            },
            queue.dead_letter(key, lease, "given up").await,
        ),
        _ => unreachable!("only calls under a lease"),
    }
}

/// Cases per backend, each of up to `MAX_OPERATIONS` steps: about ten seconds in all.
const CASES: u32 = 12;
const MAX_OPERATIONS: usize = 30;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        max_shrink_time: 30_000,
        ..ProptestConfig::default()
    }
}

#[test]
fn random_operations_on_the_embedded_store_follow_the_item_state_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    proptest!(config(), |(operations in proptest::collection::vec(operation(), 1..MAX_OPERATIONS))| {
        runtime.block_on(async {
            let queue = Harness::embedded(LONG).await;
            run_against_model(queue.a.as_ref(), &operations).await;
            queue.a.close().await.unwrap();
        });
    });
}

#[test]
fn random_operations_on_nats_follow_the_item_state_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(NatsServer::start());
    let case = std::sync::atomic::AtomicU32::new(0);
    proptest!(config(), |(operations in proptest::collection::vec(operation(), 1..MAX_OPERATIONS))| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(async {
            // A stream and buckets of its own per case, on the one server.
            let queue = nats_replica(&server.url, "model", &format!("model{case}"), LONG).await;
            run_against_model(&queue, &operations).await;
            queue.close().await.unwrap();
        });
    });
}

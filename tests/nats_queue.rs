//! The NATS JetStream queue backend against a real nats-server: the queue contract as two
//! replicas sharing one server see it, the leader lease, and a lost server.

mod common;

use std::collections::HashSet;
use std::num::NonZeroU64;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use common::nats::NatsServer;
use common::queue::{content_ref, dead_record, no_skip, record_counts};
use common::{DEADLINE, wait_until};
use o365_connector::clock::Clock;
use o365_connector::cluster::Leadership;
use o365_connector::config::NatsConfig;
use o365_connector::queue::nats::NatsSettings;
use o365_connector::queue::nats::leader::LeaderLease;
use o365_connector::queue::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EVERY_RECORD, EnqueueOutcome, ItemState,
    LeasedItem, MetaStore, NatsQueue, QueueError, QueueStore, Source,
};

const TENANT: &str = "4c0a1a50-aaaa-bbbb-cccc-1234567890ab";

fn settings(server: &NatsServer, replica: &str, lease: Duration) -> NatsSettings {
    NatsSettings {
        nats: NatsConfig {
            urls: vec![server.url.clone()],
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            replica_id: Some(replica.to_owned()),
            prefix: "test".to_owned(),
            stream_replicas: 1,
            leader_lease_secs: NonZeroU64::new(2).unwrap(),
            connect_timeout_secs: NonZeroU64::new(5).unwrap(),
            url_credentials: None,
        },
        replica_id: replica.to_owned(),
        lease,
    }
}

async fn replica(server: &NatsServer, name: &str, lease: Duration) -> NatsQueue {
    NatsQueue::connect(&settings(server, name, lease), Clock::system())
        .await
        .unwrap()
}

/// The error of connecting with `settings`.
async fn connect_error(settings: &NatsSettings) -> String {
    NatsQueue::connect(settings, Clock::system())
        .await
        .err()
        .expect("the connection is refused")
        .to_string()
}

/// A contentId with the characters Microsoft's have (`$`, `.`), which NATS keys may not.
fn content(content_id: &str) -> ContentRef {
    content_ref(
        TENANT,
        "Audit.Exchange",
        format!("20261126230000.{content_id}$audit_exchange$Audit_Exchange$emea0023"),
        Utc::now(),
        Source::Webhook,
    )
}

const LEASE: Duration = Duration::from_secs(30);

/// Leases one item from `queue`, trying until one comes back (a nak's delay, an ack wait).
async fn lease_when_back(queue: &NatsQueue) -> LeasedItem {
    let started = std::time::Instant::now();
    loop {
        let mut leased = queue.lease(1, LEASE, &no_skip()).await.unwrap();
        if let Some(item) = leased.pop() {
            return item;
        }
        assert!(started.elapsed() < DEADLINE, "the item did not come back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_content_id_is_queued_once_whichever_replica_is_told() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    use EnqueueOutcome::{Duplicate, Enqueued};

    let outcomes = a
        .enqueue(vec![content("x"), content("y"), content("x")])
        .await
        .unwrap();
    assert_eq!(outcomes, [Enqueued, Enqueued, Duplicate]);
    let outcomes = b.enqueue(vec![content("x"), content("z")]).await.unwrap();
    assert_eq!(outcomes, [Duplicate, Enqueued]);

    let stats = b.stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.done), (3, 0, 0));
    let item = a.get(&content("z").key()).await.unwrap().unwrap();
    assert_eq!(item.content, content("z").key_content(&item.content));
    assert!(matches!(item.state, ItemState::Pending { attempts: 0, .. }));
}

/// Concurrent callers are committed together in groups: each still gets the outcomes of its
/// own references, in order, and a contentId given by several callers is queued once.
#[tokio::test]
async fn concurrent_enqueues_each_get_their_own_outcomes_and_a_content_id_is_queued_once() {
    let server = NatsServer::start().await;
    let queue = std::sync::Arc::new(replica(&server, "a", LEASE).await);
    let callers = 64;
    // Caller n gives "own-n" and "shared-(n % 8)": every shared contentId has 8 callers.
    let calls: Vec<_> = (0..callers)
        .map(|n| {
            let queue = queue.clone();
            tokio::spawn(async move {
                let refs = vec![
                    content(&format!("own-{n}")),
                    content(&format!("shared-{}", n % 8)),
                ];
                (n, queue.enqueue(refs).await.unwrap())
            })
        })
        .collect();
    let mut shared_enqueued = vec![0; 8];
    for call in calls {
        let (n, outcomes) = call.await.unwrap();
        assert_eq!(outcomes.len(), 2, "caller {n}: one outcome per reference");
        assert_eq!(
            outcomes[0],
            EnqueueOutcome::Enqueued,
            "caller {n}: its own contentId"
        );
        if outcomes[1] == EnqueueOutcome::Enqueued {
            shared_enqueued[n % 8] += 1;
        }
    }
    assert_eq!(
        shared_enqueued,
        vec![1; 8],
        "each shared contentId is queued by one caller"
    );
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.pending, callers as u64 + 8);
    let again = queue
        .enqueue(vec![content("own-3"), content("shared-3")])
        .await
        .unwrap();
    assert_eq!(
        again,
        [EnqueueOutcome::Duplicate, EnqueueOutcome::Duplicate]
    );
}

/// Compares what matters of a reference (times are the test's own).
trait KeyContent {
    fn key_content(&self, stored: &ContentRef) -> ContentRef;
}

impl KeyContent for ContentRef {
    fn key_content(&self, stored: &ContentRef) -> ContentRef {
        ContentRef {
            content_created: stored.content_created,
            content_expiration: stored.content_expiration,
            ..self.clone()
        }
    }
}

#[tokio::test]
async fn a_leased_item_is_held_by_one_replica_and_done_becomes_a_tombstone() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    a.enqueue(vec![content("one"), content("two")])
        .await
        .unwrap();

    let first = a.lease(1, LEASE, &no_skip()).await.unwrap();
    assert_eq!(first.len(), 1);
    let second = b.lease(5, LEASE, &no_skip()).await.unwrap();
    assert_eq!(second.len(), 1, "the other item only");
    assert_ne!(first[0].key(), second[0].key());
    assert!(b.lease(5, LEASE, &no_skip()).await.unwrap().is_empty());

    let item = &first[0];
    assert!(matches!(
        b.complete(&item.key(), item.lease).await,
        Err(QueueError::StaleLease { .. })
    ));
    a.record_acked(&item.key(), item.lease, 12).await.unwrap();
    a.complete(&item.key(), item.lease).await.unwrap();
    let done = b.get(&item.key()).await.unwrap().unwrap();
    assert!(matches!(done.state, ItemState::Done { .. }));
    assert_eq!(done.acked_records, 12);
    assert_eq!(
        b.enqueue(vec![item.content.clone()]).await.unwrap(),
        [EnqueueOutcome::Duplicate],
        "a repeated notification of done content is a no-op"
    );
    let stats = a.stats().await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.done), (0, 1, 1));
}

#[tokio::test]
async fn a_dead_replicas_item_comes_back_after_the_ack_wait_with_its_acked_offset() {
    let server = NatsServer::start().await;
    let lease = Duration::from_secs(1);
    let a = replica(&server, "a", lease).await;
    let b = replica(&server, "b", lease).await;
    a.enqueue(vec![content("resume")]).await.unwrap();
    let held = a.lease(1, lease, &no_skip()).await.unwrap().remove(0);
    a.record_acked(&held.key(), held.lease, 7).await.unwrap();
    drop(a); // dies: no ack, no nak

    let item = lease_when_back(&b).await;
    assert_eq!(item.key(), held.key());
    assert_eq!(
        item.acked_records, 7,
        "the next holder skips what the engine has"
    );
    assert_eq!(item.attempts, 1, "the lost lease counts as an attempt");
    assert_ne!(item.lease, held.lease);
    b.complete(&item.key(), item.lease).await.unwrap();
}

#[tokio::test]
async fn retry_later_holds_an_item_back_and_release_gives_it_back_at_once() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    a.enqueue(vec![content("later")]).await.unwrap();
    let item = a.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    let not_before = Utc::now() + TimeDelta::seconds(2);
    a.retry_later(&item.key(), item.lease, not_before, "HTTP 503")
        .await
        .unwrap();
    assert!(a.lease(1, LEASE, &no_skip()).await.unwrap().is_empty());
    let item = lease_when_back(&a).await;
    assert!(Utc::now() >= not_before - TimeDelta::milliseconds(100));
    assert_eq!(item.attempts, 1);
    let stored = a.get(&item.key()).await.unwrap().unwrap();
    assert_eq!(stored.last_retry_reason.as_deref(), Some("HTTP 503"));

    a.release(&item.key(), item.lease).await.unwrap();
    let item = a.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    assert_eq!(item.attempts, 1, "a release is not an attempt");
}

#[tokio::test]
async fn a_paused_tenants_items_are_set_aside_without_counting_an_attempt() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    a.enqueue(vec![content("paused")]).await.unwrap();
    let paused: HashSet<String> = [TENANT.to_owned()].into();
    assert!(a.lease(1, LEASE, &paused).await.unwrap().is_empty());
    assert_eq!(lease_when_back(&a).await.attempts, 0);
}

#[tokio::test]
async fn dead_items_are_listed_and_an_operator_requeue_keeps_the_acked_offset() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    a.enqueue(vec![content("dead")]).await.unwrap();
    let item = a.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    a.record_acked(&item.key(), item.lease, 3).await.unwrap();
    let record = DeadRecord {
        index: 3,
        byte_range: (120, 180),
        sha256: [7; 32],
        reason: "engine refused the record".to_owned(),
    };
    a.add_dead_record(&item.key(), item.lease, record.clone())
        .await
        .unwrap();
    a.add_dead_record(&item.key(), item.lease, record.clone())
        .await
        .unwrap();
    a.dead_letter(&item.key(), item.lease, "content gone (AF20051)")
        .await
        .unwrap();

    let dead = b.dead_items(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        matches!(&dead[0].state, ItemState::Dead { reason, .. } if reason == "content gone (AF20051)")
    );
    assert_eq!(
        dead[0].dead_records, 1,
        "the same index twice is one record"
    );
    assert_eq!(b.dead_records(10).await.unwrap(), [(item.key(), record)]);
    assert_eq!(b.stats().await.unwrap().dead, 1);
    assert_eq!(
        b.enqueue(vec![item.content.clone()]).await.unwrap(),
        [EnqueueOutcome::Duplicate]
    );

    assert!(b.requeue_dead(&item.key()).await.unwrap());
    assert!(!b.requeue_dead(&item.key()).await.unwrap());
    let again = b.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    assert_eq!(again.key(), item.key());
    assert_eq!(again.acked_records, 3);
    assert_eq!(again.attempts, 0);
    assert!(b.dead_items(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_done_items_requeued_dead_records_are_redone_alone_by_any_replica_and_then_cleared() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    a.enqueue(vec![content("redo")]).await.unwrap();
    let first = a.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    let key = first.key();
    for index in [1, 4] {
        a.add_dead_record(&key, first.lease, dead_record(index, "invalid JSON"))
            .await
            .unwrap();
    }
    a.complete(&key, first.lease).await.unwrap();
    assert_eq!(record_counts(&b).await, (2, 0, 2), "both records are lost");

    assert!(b.requeue_dead(&key).await.unwrap());
    assert!(
        !b.requeue_dead(&key).await.unwrap(),
        "a pending item is not requeued twice"
    );
    assert_eq!(record_counts(&a).await, (2, 2, 0), "requeued, not lost");
    let item = a.get(&key).await.unwrap().expect("kept");
    assert!(
        matches!(item.state, ItemState::Pending { .. }),
        "{:?}",
        item.state
    );
    let redo = lease_when_back(&a).await;
    assert_eq!(
        (redo.key(), redo.acked_records, redo.attempts),
        (key.clone(), EVERY_RECORD, 0)
    );
    let sent: Vec<u64> = (0..10)
        .filter(|index| !redo.already_settled(*index))
        .collect();
    assert_eq!(sent, [1, 4], "only the requeued records are sent again");

    let still_bad = dead_record(4, "invalid JSON again");
    a.add_dead_record(&key, redo.lease, still_bad.clone())
        .await
        .unwrap();
    assert_eq!(
        record_counts(&b).await,
        (2, 1, 1),
        "failing again, it is lost again"
    );
    a.record_acked(&key, redo.lease, 2).await.unwrap();
    a.complete(&key, redo.lease).await.unwrap();
    assert_eq!(record_counts(&b).await, (1, 0, 1));
    assert_eq!(
        b.dead_records(10).await.unwrap(),
        [(key.clone(), still_bad)],
        "the record sent is cleared, the one that failed again is kept"
    );
    let done = b.get(&key).await.unwrap().expect("kept");
    assert!(
        matches!(done.state, ItemState::Done { .. }),
        "{:?}",
        done.state
    );
    assert_eq!(done.dead_records, 1);
    assert_eq!(
        b.enqueue(vec![item.content.clone()]).await.unwrap(),
        [EnqueueOutcome::Duplicate],
        "still deduplicated"
    );
}

#[tokio::test]
async fn a_requeued_dead_item_redoes_its_dead_records_below_the_acked_offset_until_it_dies_again() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    a.enqueue(vec![content("dead-redo")]).await.unwrap();
    let first = a.lease(1, LEASE, &no_skip()).await.unwrap().remove(0);
    let key = first.key();
    a.add_dead_record(&key, first.lease, dead_record(2, "invalid JSON"))
        .await
        .unwrap();
    a.record_acked(&key, first.lease, 5).await.unwrap();
    a.dead_letter(&key, first.lease, "blob truncated for good")
        .await
        .unwrap();

    assert!(a.requeue_dead(&key).await.unwrap());
    assert_eq!(record_counts(&a).await, (1, 1, 0));
    let again = lease_when_back(&a).await;
    assert_eq!((again.acked_records, again.attempts), (5, 0));
    let sent: Vec<u64> = (0..8)
        .filter(|index| !again.already_settled(*index))
        .collect();
    assert_eq!(
        sent,
        [2, 5, 6, 7],
        "the requeued record, then the rest after the offset"
    );
    a.dead_letter(&key, again.lease, "blob truncated for good")
        .await
        .unwrap();
    assert_eq!(
        record_counts(&a).await,
        (1, 0, 1),
        "dying again, its record is lost again"
    );
}

#[tokio::test]
async fn metadata_is_shared_and_keys_may_hold_any_character() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    let key = format!("poller/cursor/{TENANT}/Audit.Exchange $x");
    a.put_meta(&key, b"2026-11-26T23:00:00Z".to_vec())
        .await
        .unwrap();
    assert_eq!(
        b.get_meta(&key).await.unwrap().as_deref(),
        Some(&b"2026-11-26T23:00:00Z"[..])
    );
    assert_eq!(b.get_meta("absent").await.unwrap(), None);
}

#[tokio::test]
async fn replicas_starting_together_keep_one_generated_value() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let b = replica(&server, "b", LEASE).await;
    let (from_a, from_b) = tokio::join!(
        a.put_meta_if_absent("webhook/secret", b"from-a".to_vec()),
        b.put_meta_if_absent("webhook/secret", b"from-b".to_vec()),
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert_eq!(from_a, from_b, "both replicas use the value stored first");
    assert_eq!(a.get_meta("webhook/secret").await.unwrap(), Some(from_a));
}

#[tokio::test]
async fn the_leader_lease_moves_only_after_its_holder_stops_renewing() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let lease_time = Duration::from_secs(2);
    let start = |name: &str, leadership: Leadership| {
        let jetstream = a.jetstream().clone();
        let name = name.to_owned();
        async move {
            LeaderLease::open(
                &jetstream,
                "test",
                1,
                lease_time,
                name,
                leadership,
                Clock::system(),
            )
            .await
            .unwrap()
        }
    };
    let first = Leadership::contested("first");
    let first_stop = CancellationToken::new();
    tokio::spawn(start("first", first.clone()).await.run(first_stop.clone()));
    wait_until("the first replica leads", DEADLINE, || first.is_leading()).await;

    let second = Leadership::contested("second");
    let second_stop = CancellationToken::new();
    tokio::spawn(
        start("second", second.clone())
            .await
            .run(second_stop.clone()),
    );
    wait_until("the second replica sees the leader", DEADLINE, || {
        second.status().leader.as_deref() == Some("first")
    })
    .await;
    // Three renewals later, the lease has not moved.
    let bucket = a.jetstream().get_key_value("test_leader").await.unwrap();
    let revision = || async {
        bucket
            .entry("poller")
            .await
            .unwrap()
            .map_or(0, |e| e.revision)
    };
    let taken = revision().await;
    let started = std::time::Instant::now();
    while revision().await < taken + 3 {
        assert!(started.elapsed() < DEADLINE, "the holder renews its lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(first.is_leading());
    assert!(!second.is_leading());

    first_stop.cancel(); // the holder dies: it renews no more
    let stopped = std::time::Instant::now();
    wait_until("the second replica takes over", DEADLINE, || {
        second.is_leading()
    })
    .await;
    println!(
        "the lease moved {} ms after its holder stopped",
        stopped.elapsed().as_millis()
    );
    assert!(!first.is_leading());
    assert_eq!(second.status().leader.as_deref(), Some("second"));
    second_stop.cancel();
}

#[tokio::test]
async fn a_lost_server_fails_calls_with_a_retryable_error_until_it_is_back() {
    let mut server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    a.enqueue(vec![content("before")]).await.unwrap();
    assert!(a.health().connected);

    server.kill();
    wait_until("the connection is seen lost", DEADLINE, || {
        !a.health().connected
    })
    .await;
    let error = a.enqueue(vec![content("during")]).await.unwrap_err();
    assert!(error.is_retryable(), "{error}");
    assert!(error.to_string().contains("NATS"), "{error}");
    assert!(a.store_failures() >= 1);

    server.restart().await;
    wait_until("the connection is back", DEADLINE, || a.health().connected).await;
    assert_eq!(
        a.enqueue(vec![content("during"), content("before")])
            .await
            .unwrap(),
        [EnqueueOutcome::Enqueued, EnqueueOutcome::Duplicate],
        "what was queued before the loss is still there"
    );
    let key: ContentKey = content("before").key();
    assert!(a.get(&key).await.unwrap().is_some());
}

#[tokio::test]
async fn a_tls_server_is_reached_with_the_configured_ca_and_refused_without_it() {
    let certs_dir = tempfile::tempdir().unwrap();
    let (certs, _) =
        o365_connector::server::dev_certs::write_dev_certs(certs_dir.path(), false).unwrap();
    let server = NatsServer::start_with(vec![
        "--tls".into(),
        "--tlscert".into(),
        certs.server_cert.display().to_string(),
        "--tlskey".into(),
        certs.server_key.display().to_string(),
    ])
    .await;
    assert!(server.url.starts_with("tls://"));

    let mut trusted = settings(&server, "a", LEASE);
    trusted.nats.tls_ca_file = Some(certs.ca.clone());
    let queue = NatsQueue::connect(&trusted, Clock::system()).await.unwrap();
    assert_eq!(
        queue.enqueue(vec![content("over-tls")]).await.unwrap(),
        [EnqueueOutcome::Enqueued]
    );

    let untrusted = settings(&server, "b", LEASE);
    let error = connect_error(&untrusted).await;
    assert!(error.contains("store.nats.urls"), "{error}");
}

#[tokio::test]
async fn a_missing_credentials_file_is_named_in_the_error() {
    let server = NatsServer::start().await;
    let mut missing = settings(&server, "a", LEASE);
    missing.nats.creds_file = Some("/nonexistent/o365.creds".into());
    let error = connect_error(&missing).await;
    assert!(
        error.contains("store.nats.creds_file /nonexistent/o365.creds"),
        "{error}"
    );
}

#[tokio::test]
async fn a_reference_queued_by_a_call_that_failed_before_marking_it_seen_is_marked_by_the_retry() {
    let server = NatsServer::start().await;
    let a = replica(&server, "a", LEASE).await;
    let reference = content("half");
    // What an enqueue that failed after its publish and before its seen mark left behind.
    let client = async_nats::connect(server.url.as_str()).await.unwrap();
    let published = async_nats::jetstream::message::PublishMessage::build()
        .payload(
            serde_json::to_vec(&serde_json::json!({
                "tenant_id": reference.tenant_id,
                "content_type": reference.content_type,
                "content_id": reference.content_id,
                "content_uri": reference.content_uri,
                "content_created": reference.content_created,
                "content_expiration": reference.content_expiration,
                "source": "webhook",
                "enqueued_at": Utc::now(),
            }))
            .unwrap()
            .into(),
        )
        .message_id(format!("{}/{}", reference.tenant_id, reference.content_id));
    async_nats::jetstream::new(client)
        .send_publish("test.work", published)
        .await
        .unwrap()
        .await
        .unwrap();

    assert_eq!(
        a.enqueue(vec![reference.clone()]).await.unwrap(),
        [EnqueueOutcome::Duplicate],
        "the stream already holds it"
    );
    let stored = a.get(&reference.key()).await.unwrap();
    assert!(
        matches!(
            stored.map(|item| item.state),
            Some(ItemState::Pending { .. })
        ),
        "the retry marked it seen, so later notifications are duplicates"
    );
}

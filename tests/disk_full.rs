//! Fault suite: the store's disk fills up (ENOSPC injected through the store's storage
//! backend). The webhook answers 503 while the store cannot write, the store is reopened
//! without restarting once space is back, and nothing accepted with a 200 is lost or stored
//! twice. Times are printed, never asserted.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, TimeDelta, Utc};
use common::{DEADLINE, wait_until};
use o365_connector::clock::Clock;
use o365_connector::config::ContentType;
use o365_connector::ops::Metrics;
use o365_connector::ops::health::{EngineHealth, ProblemBoard, Readiness, ReadinessProbe};
use o365_connector::queue::embedded::{DiskFaults, StoreOptions};
use o365_connector::queue::{
    ContentKey, ContentQueue, ContentRef, EmbeddedQueue, EnqueueOutcome, MetaStore, QueueError,
    Source,
};
use o365_connector::retry::RetryPolicy;
use o365_connector::server::dev_certs::write_dev_certs;
use o365_connector::webhook::{self, WebhookSecrets, WebhookState, WebhookTenant};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};

const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";
const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SERVER_SECRET: &[u8] = b"disk-full server secret";
const API: &str = "https://manage.office.com";
const LEASE: Duration = Duration::from_secs(60);

/// The webhook over TLS on a real socket, in front of a store whose disk can be filled.
struct Rig {
    dir: tempfile::TempDir,
    faults: Arc<DiskFaults>,
    queue: Arc<EmbeddedQueue>,
    state: Arc<WebhookState>,
    address: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
    http: reqwest::Client,
}

/// How one POST was answered.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (certs, _) = write_dev_certs(&dir.path().join("certs"), false).unwrap();
        let faults = DiskFaults::new();
        let options = StoreOptions {
            faults: Some(Arc::clone(&faults)),
            reopen_retry: RetryPolicy::for_test(),
        };
        let queue = Arc::new(
            EmbeddedQueue::open_with(&dir.path().join("store"), Clock::system(), options)
                .await
                .unwrap(),
        );
        let tenant = WebhookTenant {
            tenant_id: TENANT.into(),
            client_id: CLIENT.into(),
            content_types: HashSet::from([ContentType::AuditExchange]),
            api_base: Url::parse(API).unwrap(),
        };
        let state = Arc::new(WebhookState::new(
            [tenant],
            WebhookSecrets::new(SERVER_SECRET.to_vec(), None),
            queue.clone() as Arc<dyn ContentQueue>,
            webhook::DEFAULT_MAX_BODY_BYTES,
            Arc::new(Metrics::default()),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let common::TlsWebhook {
            address,
            handle,
            http,
        } = common::serve_webhook_tls(state.clone(), &certs);
        Rig {
            dir,
            faults,
            queue,
            state,
            address,
            handle,
            http,
        }
    }

    /// POSTs a notification of `content_ids`, as Microsoft does.
    async fn notify(&self, content_ids: &[&str]) -> Answer {
        let items: Vec<Value> = content_ids.iter().map(|id| item(id)).collect();
        let response = self
            .http
            .post(format!(
                "https://localhost:{}/hook/{TENANT}",
                self.address.port()
            ))
            .header("Content-Type", "application/json; utf-8")
            .header("Webhook-AuthID", self.state.auth_id(TENANT))
            .body(Value::Array(items).to_string())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer { status, body }
    }

    /// Leases and completes every item; returns how often each contentId was handed out.
    async fn drain(&self) -> BTreeMap<String, u32> {
        let mut seen = BTreeMap::new();
        loop {
            let leased = self.queue.lease(64, LEASE, &HashSet::new()).await.unwrap();
            if leased.is_empty() {
                return seen;
            }
            for item in leased {
                *seen.entry(item.content.content_id.clone()).or_default() += 1;
                self.queue.complete(&item.key(), item.lease).await.unwrap();
            }
        }
    }

    /// `/readyz` as a fresh probe computes it (a probe caches its store check for 5 s).
    async fn readiness(&self) -> Readiness {
        let probe = ReadinessProbe::new(
            self.queue.clone(),
            1_000,
            Clock::system(),
            Arc::new(|| EngineHealth {
                connected: true,
                in_flight: 0,
                stalled: None,
            }),
            Arc::new(ProblemBoard::default()),
        );
        probe.check().await
    }

    async fn is_stored(&self, content_id: &str) -> bool {
        let key = ContentKey::new(TENANT, content_id);
        self.queue.get(&key).await.unwrap().is_some()
    }
}

fn item(content_id: &str) -> Value {
    let created = Utc::now();
    json!({
        "tenantId": TENANT, "clientId": CLIENT, "contentType": "Audit.Exchange",
        "contentId": content_id,
        "contentUri": format!("{API}/api/v1.0/{TENANT}/activity/feed/audit/{content_id}"),
        "contentCreated": created.to_rfc3339(),
        "contentExpiration": (created + TimeDelta::days(7)).to_rfc3339(),
    })
}

/// The 503 body tells Microsoft to retry and carries no secret, id or path.
fn assert_refusal_says_retry_and_nothing_else(rig: &Rig, answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.body
    );
    let text = answer.body.to_string();
    assert!(text.contains("retry"), "{text}");
    let auth_id = rig.state.auth_id(TENANT);
    let store_dir = rig.dir.path().display().to_string();
    for secret in [
        auth_id.as_str(),
        std::str::from_utf8(SERVER_SECRET).unwrap(),
        store_dir.as_str(),
    ] {
        assert!(
            !text.contains(secret),
            "the 503 body leaks {secret}: {text}"
        );
    }
}

#[tokio::test]
async fn a_full_disk_answers_503_and_once_space_returns_every_accepted_notification_is_kept_once() {
    let rig = Rig::start().await;
    let mut accepted = BTreeSet::new();
    for batch in [["a1", "a2"], ["a3", "a4"], ["a5", "a6"]] {
        let answer = rig.notify(&batch).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body["enqueued"], 2);
        accepted.extend(batch.map(String::from));
    }

    rig.faults.disk_full();
    for content_id in ["full1", "full2"] {
        let answer = rig.notify(&[content_id]).await;
        assert_refusal_says_retry_and_nothing_else(&rig, &answer);
    }
    let failed_by_the_commit = rig.faults.injected();
    assert!(
        failed_by_the_commit > 0,
        "the store did try to write (and failed)"
    );
    wait_until(
        "a reopen attempt to fail on the full disk",
        DEADLINE,
        || rig.faults.injected() > failed_by_the_commit,
    )
    .await;
    let answer = rig.notify(&["full3"]).await;
    assert_refusal_says_retry_and_nothing_else(&rig, &answer);
    assert_eq!(rig.queue.store_failure(), Some(QueueError::Full));
    let readiness = rig.readiness().await;
    assert!(
        !readiness.ready && !readiness.store_writable,
        "/readyz says not ready while the store is down: {readiness:?}"
    );
    assert_eq!(
        rig.queue.store_failures(),
        1,
        "one failed commit took the store down; the other refusals were answered at once"
    );

    rig.faults.clear();
    let space_back = Instant::now();
    let mut refused_after_space_back = 0;
    loop {
        let answer = rig.notify(&["after"]).await;
        if answer.status == StatusCode::OK {
            assert_eq!(answer.body["enqueued"], 1, "{}", answer.body);
            break;
        }
        assert_refusal_says_retry_and_nothing_else(&rig, &answer);
        refused_after_space_back += 1;
        assert!(
            space_back.elapsed() < DEADLINE,
            "the store did not recover within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = space_back.elapsed();
    accepted.insert("after".to_owned());
    println!(
        "store writable again {recovery:?} after space came back \
         ({refused_after_space_back} notifications refused meanwhile)"
    );
    assert_eq!(rig.queue.store_failure(), None);
    assert!(rig.readiness().await.ready, "ready again");

    // Microsoft retries what was refused: it is new to the store, so it was never stored.
    let retried = rig.notify(&["full1"]).await;
    assert_eq!(retried.status, StatusCode::OK);
    assert_eq!(
        (
            retried.body["enqueued"].as_u64(),
            retried.body["duplicates"].as_u64()
        ),
        (Some(1), Some(0)),
        "a refused notification was not stored"
    );
    accepted.insert("full1".to_owned());

    for refused in ["full2", "full3"] {
        assert!(!rig.is_stored(refused).await, "{refused} was answered 503");
    }
    let drained = rig.drain().await;
    assert_eq!(
        drained.keys().cloned().collect::<BTreeSet<_>>(),
        accepted,
        "every accepted notification and nothing else is in the queue"
    );
    assert!(
        drained.values().all(|count| *count == 1),
        "each item handed out once: {drained:?}"
    );
    let stats = rig.queue.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.done),
        (0, 0, accepted.len() as u64)
    );
    assert_eq!(rig.queue.store_failures(), 1);
    rig.handle.shutdown();
    rig.queue.close().await.unwrap();
}

#[tokio::test]
async fn notifications_racing_the_disk_filling_and_freeing_are_answered_200_only_once_stored() {
    const POSTERS: usize = 4;
    let rig = Arc::new(Rig::start().await);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted_count = Arc::new(AtomicU64::new(0));
    let refused_count = Arc::new(AtomicU64::new(0));
    let mut posters = Vec::new();
    for poster in 0..POSTERS {
        let rig = Arc::clone(&rig);
        let stop = Arc::clone(&stop);
        let accepted_count = Arc::clone(&accepted_count);
        let refused_count = Arc::clone(&refused_count);
        posters.push(tokio::spawn(async move {
            let (mut accepted, mut refused) = (Vec::new(), Vec::new());
            let mut sequence = 0;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let content_id = format!("p{poster}-{sequence}");
                let answer = rig.notify(&[&content_id]).await;
                match answer.status {
                    StatusCode::OK => {
                        accepted.push(content_id);
                        accepted_count.fetch_add(1, Ordering::Relaxed);
                    }
                    StatusCode::SERVICE_UNAVAILABLE => {
                        refused.push(content_id);
                        refused_count.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected answer {other}: {}", answer.body),
                }
            }
            (accepted, refused)
        }));
    }

    let at_least = |counter: &Arc<AtomicU64>, count: u64| {
        let counter = Arc::clone(counter);
        move || counter.load(Ordering::Relaxed) >= count
    };
    wait_until("accepted before", DEADLINE, at_least(&accepted_count, 20)).await;
    rig.faults.disk_full();
    wait_until("refused while full", DEADLINE, at_least(&refused_count, 20)).await;
    rig.faults.clear();
    let space_back = Instant::now();
    let accepted_at_clear = accepted_count.load(Ordering::Relaxed);
    wait_until(
        "accepted once space is back",
        DEADLINE,
        at_least(&accepted_count, accepted_at_clear + 1),
    )
    .await;
    let recovery = space_back.elapsed();
    wait_until(
        "accepted after",
        DEADLINE,
        at_least(&accepted_count, accepted_at_clear + 20),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let (mut accepted, mut refused) = (BTreeSet::new(), BTreeSet::new());
    for poster in posters {
        let (poster_accepted, poster_refused) = poster.await.unwrap();
        accepted.extend(poster_accepted);
        refused.extend(poster_refused);
    }

    let drained = rig.drain().await;
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| !drained.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted with 200 but lost: {missing:?}"
    );
    assert!(
        drained.values().all(|count| *count == 1),
        "each item handed out once: {drained:?}"
    );
    // A batch whose writes reached the file but whose final fsync failed can be found
    // committed after the reopen although it was answered 503: Microsoft retries it and the
    // queue dedupes it by contentId, so it is a duplicate at worst, never a loss. Only that
    // may be in the queue beyond what was accepted.
    let stored_though_refused: Vec<_> = drained
        .keys()
        .filter(|id| !accepted.contains(*id))
        .collect();
    assert!(
        stored_though_refused.iter().all(|id| refused.contains(*id)),
        "only posted notifications are stored: {stored_through:?}",
        stored_through = stored_though_refused
    );
    println!(
        "{} accepted, {} refused ({} of them found stored after the reopen), \
         {} store failures; store writable again {recovery:?} after space came back",
        accepted.len(),
        refused.len(),
        stored_though_refused.len(),
        rig.queue.store_failures()
    );
    assert!(rig.queue.store_failures() >= 1);
    rig.handle.shutdown();
    rig.queue.close().await.unwrap();
}

fn reference(content_id: &str) -> ContentRef {
    // The store keeps microseconds.
    let created = Utc::now().trunc_subsecs(6);
    ContentRef {
        tenant_id: TENANT.into(),
        content_type: "Audit.Exchange".into(),
        content_id: content_id.into(),
        content_uri: format!("{API}/api/v1.0/{TENANT}/activity/feed/audit/{content_id}"),
        content_created: created,
        content_expiration: created + TimeDelta::days(7),
        source: Source::Webhook,
    }
}

#[tokio::test]
async fn enospc_during_a_commit_leaves_a_file_that_a_fresh_open_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let faults = DiskFaults::new();
    let options = StoreOptions {
        faults: Some(Arc::clone(&faults)),
        reopen_retry: RetryPolicy::for_test(),
    };
    let queue = EmbeddedQueue::open_with(dir.path(), Clock::system(), options)
        .await
        .unwrap();
    let kept = ["kept1", "kept2", "kept3"].map(reference);
    let outcomes = queue.enqueue(kept.to_vec()).await.unwrap();
    assert_eq!(outcomes, [EnqueueOutcome::Enqueued; 3]);
    queue.put_meta("cursor", b"before".to_vec()).await.unwrap();

    faults.disk_full();
    let refused = ["lost1", "lost2"];
    assert_eq!(
        queue.enqueue(refused.map(reference).to_vec()).await,
        Err(QueueError::Full)
    );
    assert_eq!(
        queue.put_meta("cursor", b"during".to_vec()).await,
        Err(QueueError::Full)
    );
    assert!(faults.injected() > 0);
    // Closed while the disk is still full and the store down, as a stopping service would.
    queue.close().await.unwrap();
    faults.clear();

    // As a restarted process would: a fresh open of the file, without the fault switch.
    let reopened = EmbeddedQueue::open(dir.path(), Clock::system())
        .await
        .unwrap();
    for content in kept {
        let item = reopened.get(&content.key()).await.unwrap();
        assert_eq!(item.map(|item| item.content), Some(content));
    }
    for content_id in refused {
        let key = ContentKey::new(TENANT, content_id);
        assert_eq!(reopened.get(&key).await.unwrap(), None, "{content_id}");
    }
    assert_eq!(
        reopened.get_meta("cursor").await.unwrap().as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(reopened.stats().await.unwrap().pending, 3);
    let outcomes = reopened
        .enqueue(refused.map(reference).to_vec())
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [EnqueueOutcome::Enqueued; 2],
        "the file takes writes"
    );
    reopened.close().await.unwrap();
}

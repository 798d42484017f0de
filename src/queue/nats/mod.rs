//! The NATS JetStream backend: one queue shared by several replicas behind a load balancer.
//!
//! What lives where (names start with `store.nats.prefix`, `o365` by default):
//!
//! | What | JetStream object | Kept |
//! |---|---|---|
//! | queued content references | stream `{prefix}_work`, work-queue retention, subject `{prefix}.work` | until acked |
//! | leases | the stream's durable pull consumer `workers` (ack wait = `workers.lease_secs`) | |
//! | seen contentIds (dedupe) and done tombstones | KV `{prefix}_seen` | 8 days (bucket max age) |
//! | acked-record offsets, attempts | KV `{prefix}_progress` | 8 days after the last write |
//! | dead items, dead records | KV `{prefix}_dead`, `{prefix}_dead_records` | until removed |
//! | cursors, subscription state, webhook secret | KV `{prefix}_meta` | always |
//! | leader lease | KV `{prefix}_leader` ([`leader`]) | `leader_lease_secs` |
//!
//! **Enqueue** publishes each new reference with `Nats-Msg-Id` = `tenant/contentId` (the
//! server drops a repeat within its two-minute duplicate window), waits for the stream's
//! acknowledgement, and only then writes the contentId into the seen bucket. A crash between
//! the two leaves a queued reference that is not marked seen: a later notification of it
//! queues it again (a duplicate delivery, never a loss). Nothing is marked seen before it is
//! queued.
//!
//! **Leases** are JetStream deliveries: `lease` fetches from the pull consumer, the lease id
//! is the delivery's consumer sequence, `extend_lease` sends "in progress", `complete` acks
//! (waiting for the server's confirmation), `retry_later` naks with a delay, `release` naks
//! at once. A replica that dies holds its deliveries until the ack wait passes; then any
//! replica gets them again and resumes after the acked-record offset in the progress bucket.
//! `attempts` counts `retry_later` calls plus deliveries that ended without an answer (lease
//! expiry), from the delivery count minus the deliveries given back on purpose.
//!
//! **Durability.** A write returns once the NATS server stored it. With one server that is
//! its file store (it survives a server crash; a power loss may lose the last writes unless
//! the server syncs every write); with `stream_replicas = 3` in a NATS cluster, a write is
//! acknowledged once a majority stored it.
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

pub mod leader;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::IntoFuture;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv, stream};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::{
    ContentKey, ContentQueue, ContentRef, DeadRecord, EVERY_RECORD, EnqueueOutcome, ItemState,
    LeaseId, LeasedItem, MetaStore, QueueError, QueueItem, QueueStats, QueueStore, Source,
    StoreHealth,
};
use crate::clock::Clock;
use crate::config::{Config, NatsConfig};

/// The seen bucket's max age: longer than Microsoft keeps content (7 days), so a repeated
/// notification of any content that can still be fetched is recognised.
pub const SEEN_MAX_AGE: Duration = Duration::from_secs(8 * 24 * 3600);

/// The durable consumer every replica's workers pull from.
const CONSUMER: &str = "workers";

/// How often a compare-and-set write of an item's progress is tried again after another
/// replica's write came first.
const PROGRESS_WRITE_TRIES: usize = 5;

/// How long an item of a paused tenant (throttled, token outage) is set aside.
const SKIP_DELAY: Duration = Duration::from_secs(2);

/// What connecting needs, from `[store.nats]` and `[workers]`.
#[derive(Clone, Debug)]
pub struct NatsSettings {
    /// `[store.nats]`.
    pub nats: NatsConfig,
    /// This replica's id (connection name, leader lease value).
    pub replica_id: String,
    /// The consumer's ack wait: how long a lease lasts without an extension.
    pub lease: Duration,
}

impl NatsSettings {
    /// The settings of `config`, which must have `[store.nats]`.
    pub fn from_config(config: &Config, replica_id: String) -> anyhow::Result<Self> {
        let nats =
            config.store.nats.clone().ok_or_else(|| {
                anyhow::anyhow!("store.nats: missing; backend = \"nats\" needs it")
            })?;
        Ok(Self {
            nats,
            replica_id,
            lease: Duration::from_secs(config.workers.lease_secs.get()),
        })
    }
}

/// Connects to the NATS servers of `nats` and opens JetStream, failing with a message that
/// names the setting to fix.
async fn connect(
    settings: &NatsSettings,
) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let nats = &settings.nats;
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("o365-connector {}", settings.replica_id))
        .connection_timeout(Duration::from_secs(nats.connect_timeout_secs.get()))
        .request_timeout(Some(Duration::from_secs(10)));
    if let Some(path) = &nats.creds_file {
        options = options.credentials_file(path).await.map_err(|error| {
            anyhow::anyhow!(
                "store.nats.creds_file {}: cannot read the credentials file: {}",
                path.display(),
                error.kind()
            )
        })?;
    }
    if let Some(path) = &nats.tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&nats.tls_cert_file, &nats.tls_key_file) {
        options = options
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let urls = nats.urls.join(",");
    let deadline = Duration::from_secs(nats.connect_timeout_secs.get());
    let client = tokio::time::timeout(deadline, options.connect(urls.as_str()))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "store.nats.urls {urls}: no NATS server answered within {}s; start it or fix the URLs",
                deadline.as_secs()
            )
        })?
        .map_err(|error| anyhow::anyhow!("store.nats.urls {urls}: cannot connect: {error}"))?;
    let jetstream = jetstream::new(client.clone());
    Ok((client, jetstream))
}

/// Opens a key-value bucket, creating it with `max_age` (zero: no max age) when missing.
///
/// The bucket's stream is created here with the key-value conventions (ADR-8) rather than
/// with the client's `create_key_value`, which first reads account fields that
/// nats-server 2.9 (Debian's) does not send.
pub(crate) async fn open_bucket(
    jetstream: &jetstream::Context,
    name: String,
    max_age: Duration,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    if let Ok(store) = jetstream.get_key_value(name.as_str()).await {
        return Ok(store);
    }
    let created = jetstream
        .create_stream(stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await;
    let opened = jetstream.get_key_value(name.as_str()).await;
    match (created, opened) {
        (_, Ok(store)) => Ok(store),
        (Err(error), Err(_)) => Err(anyhow::anyhow!(
            "NATS: cannot create the key-value bucket {name}: {error}; is JetStream enabled on the server (nats-server -js)?"
        )),
        (Ok(_), Err(error)) => Err(anyhow::anyhow!(
            "NATS: cannot open the key-value bucket {name}: {error}"
        )),
    }
}

/// A content reference as queued: the message payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct WorkItem {
    tenant_id: String,
    content_type: String,
    content_id: String,
    content_uri: String,
    content_created: DateTime<Utc>,
    content_expiration: DateTime<Utc>,
    source: String,
    enqueued_at: DateTime<Utc>,
}

impl WorkItem {
    fn new(content: &ContentRef, enqueued_at: DateTime<Utc>) -> Self {
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

    fn content(&self) -> ContentRef {
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

    fn key(&self) -> ContentKey {
        ContentKey::new(&self.tenant_id, &self.content_id)
    }

    /// Its key in the key-value buckets.
    fn kv_key(&self) -> String {
        item_key(&self.tenant_id, &self.content_id)
    }
}

/// The seen bucket's value: the reference, and when it was done (its tombstone).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SeenEntry {
    item: WorkItem,
    done_at: Option<DateTime<Utc>>,
    /// For a done item: its progress, which is removed then.
    #[serde(default)]
    acked_records: u64,
    #[serde(default)]
    dead_records: u64,
}

/// The progress bucket's value for an item that was leased at least once.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Progress {
    acked_records: u64,
    dead_records: u64,
    /// `retry_later` calls.
    retries: u32,
    /// Deliveries handed back on purpose (release, retry, paused tenant).
    given_back: u64,
    last_retry_reason: Option<String>,
    /// Dead records an operator requeued, sent again until the item completes.
    #[serde(default)]
    redo_records: BTreeSet<u64>,
    /// The current lease (a delivery's consumer sequence), shared by every replica: a call
    /// under any other lease is stale. `None` while nobody holds the item.
    #[serde(default)]
    lease: Option<u64>,
    /// When the current lease expires (the consumer's ack wait after the delivery or the
    /// last extension).
    #[serde(default)]
    lease_until: Option<DateTime<Utc>>,
}

/// The dead bucket's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeadEntry {
    item: WorkItem,
    reason: String,
    attempts: u32,
}

/// The dead-records bucket's value.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeadRecordEntry {
    tenant_id: String,
    content_id: String,
    index: u64,
    start: u64,
    end: u64,
    sha256: String,
    reason: String,
    /// Requeued by an operator and waiting for its item to send it again; lost while false.
    #[serde(default)]
    requeued: bool,
}

/// A delivery this replica holds.
struct Held {
    lease: LeaseId,
    message: jetstream::Message,
    item: WorkItem,
    progress: Progress,
    attempts: u32,
}

/// The queue and metadata store on NATS JetStream (see the module doc).
pub struct NatsQueue {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream_name: String,
    subject: String,
    consumer: consumer::PullConsumer,
    seen: kv::Store,
    progress: kv::Store,
    dead: kv::Store,
    dead_records: kv::Store,
    meta: kv::Store,
    ack_wait: Duration,
    held: Mutex<HashMap<ContentKey, Held>>,
    clock: Clock,
    closed: AtomicBool,
    failures: AtomicU64,
    writes: AtomicU64,
}

/// A key-value key for `tenant/contentId` (contentIds hold characters keys may not).
fn item_key(tenant_id: &str, content_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tenant_id}/{content_id}"))
}

/// The dead-records bucket's key of record `index` of the item keyed `kv_key` (base64url
/// has no `.`, so `{kv_key}.` prefixes exactly that item's records).
fn dead_record_key(kv_key: &str, index: u64) -> String {
    format!("{kv_key}.{index}")
}

fn json<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).expect("queue values serialize"))
}

impl NatsQueue {
    /// Connects to the servers of `settings` and opens the queue.
    pub async fn connect(settings: &NatsSettings, clock: Clock) -> anyhow::Result<Self> {
        let (client, jetstream) = connect(settings).await?;
        Self::open(client, jetstream, settings, clock).await
    }

    /// Opens (creating when missing) the stream, the consumer and the buckets.
    async fn open(
        client: async_nats::Client,
        jetstream: jetstream::Context,
        settings: &NatsSettings,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let prefix = &settings.nats.prefix;
        let replicas = settings.nats.stream_replicas;
        let stream_name = format!("{prefix}_work");
        let subject = format!("{prefix}.work");
        let work = jetstream
            .get_or_create_stream(stream::Config {
                name: stream_name.clone(),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                duplicate_window: Duration::from_secs(120),
                ..stream::Config::default()
            })
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "NATS: cannot open the stream {stream_name}: {error}; is JetStream enabled on the server (nats-server -js)?"
                )
            })?;
        let consumer: consumer::PullConsumer = work
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: settings.lease,
                    max_deliver: -1,
                    max_ack_pending: -1,
                    num_replicas: replicas,
                    ..consumer::pull::Config::default()
                },
            )
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "NATS: cannot open the consumer {CONSUMER} of {stream_name}: {error}"
                )
            })?;
        let ack_wait = consumer.cached_info().config.ack_wait;
        if ack_wait != settings.lease {
            tracing::warn!(
                configured_secs = settings.lease.as_secs(),
                in_use_secs = ack_wait.as_secs(),
                "workers.lease_secs differs from the shared consumer's ack wait, which stays in use; delete the consumer {CONSUMER} while no replica runs to change it"
            );
        }
        let bucket = |name: &str, max_age: Duration| {
            open_bucket(&jetstream, format!("{prefix}_{name}"), max_age, replicas)
        };
        let seen = bucket("seen", SEEN_MAX_AGE).await?;
        let progress = bucket("progress", SEEN_MAX_AGE).await?;
        let dead = bucket("dead", Duration::ZERO).await?;
        let dead_records = bucket("dead_records", Duration::ZERO).await?;
        let meta = bucket("meta", Duration::ZERO).await?;
        Ok(Self {
            client,
            jetstream,
            stream_name,
            subject,
            consumer,
            seen,
            progress,
            dead,
            dead_records,
            meta,
            ack_wait,
            held: Mutex::new(HashMap::new()),
            clock,
            closed: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// The NATS connection, for the leader lease.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    fn check_open(&self) -> Result<(), QueueError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        Ok(())
    }

    /// A NATS failure, counted for `store_errors_total`.
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> QueueError {
        self.failures.fetch_add(1, Ordering::Relaxed);
        QueueError::Io {
            message: format!("NATS: cannot {what}: {error}"),
        }
    }

    fn wrote(&self, count: u64) {
        self.writes.fetch_add(count, Ordering::Relaxed);
    }

    /// The delivery held under `lease`, or [`QueueError::StaleLease`].
    fn held<T>(
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

    fn forget(&self, key: &ContentKey, lease: LeaseId) {
        let mut held = self.held.lock().expect("held deliveries lock");
        if held.get(key).is_some_and(|entry| entry.lease == lease) {
            held.remove(key);
        }
    }

    async fn read_progress(&self, key: &str) -> Result<Progress, QueueError> {
        let value = self
            .progress
            .get(key)
            .await
            .map_err(|error| self.failed("read an item's progress", error))?;
        Ok(value
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default())
    }

    async fn write_progress(&self, key: &str, progress: &Progress) -> Result<(), QueueError> {
        self.progress
            .put(key, json(progress))
            .await
            .map_err(|error| self.failed("write an item's progress", error))?;
        self.wrote(1);
        Ok(())
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
    async fn update_held_progress(
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
    fn lease_until_from_now(&self) -> DateTime<Utc> {
        self.clock.now()
            + chrono::Duration::from_std(self.ack_wait).unwrap_or(chrono::Duration::MAX)
    }

    /// Gives a held delivery back: progress first (so the next holder counts right), then
    /// the nak. A lost nak only means the delivery comes back when its ack wait passes.
    async fn give_back(
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

    async fn seen_entry(&self, key: &str) -> Result<Option<SeenEntry>, QueueError> {
        let value = self
            .seen
            .get(key)
            .await
            .map_err(|error| self.failed("read the seen contentIds", error))?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Turns one delivery into a lease held by this replica, or sets it aside (a paused
    /// tenant's item, `None`). A message that is not a content reference (not written by a
    /// connector) is removed, logged and counted.
    async fn take_delivery(
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

    /// The work stream, with its current state.
    async fn work_stream(&self) -> Result<stream::Stream, QueueError> {
        self.jetstream
            .get_stream(self.stream_name.as_str())
            .await
            .map_err(|error| self.failed("read the work stream", error))
    }

    async fn keys_of(&self, bucket: &kv::Store, what: &str) -> Result<Vec<String>, QueueError> {
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
    async fn dead_records_of(&self, kv_key: &str) -> Result<Vec<DeadRecordEntry>, QueueError> {
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

    async fn dead_record_entry(&self, name: &str) -> Result<Option<DeadRecordEntry>, QueueError> {
        let value = self
            .dead_records
            .get(name)
            .await
            .map_err(|error| self.failed("read a dead record", error))?;
        Ok(value.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    /// Sets the `requeued` flag of the item's dead records at `indices` (those still kept).
    async fn flag_requeued(
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
    async fn publish_again(&self, key: &ContentKey, item: &WorkItem) -> Result<(), QueueError> {
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
    async fn redoable_tombstone(
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

    async fn bucket_values<T: for<'de> Deserialize<'de>>(
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

#[async_trait]
impl ContentQueue for NatsQueue {
    async fn enqueue(&self, refs: Vec<ContentRef>) -> Result<Vec<EnqueueOutcome>, QueueError> {
        self.check_open()?;
        let mut outcomes = vec![EnqueueOutcome::Duplicate; refs.len()];
        let keys: Vec<String> = refs
            .iter()
            .map(|content| item_key(&content.tenant_id, &content.content_id))
            .collect();
        let found = join_all(keys.iter().map(|key| self.seen.get(key.as_str()))).await;
        let mut in_batch = HashSet::new();
        let mut fresh = Vec::new();
        for (index, found) in found.into_iter().enumerate() {
            let found = found.map_err(|error| self.failed("read the seen contentIds", error))?;
            if found.is_none() && in_batch.insert(keys[index].clone()) {
                fresh.push(index);
            }
        }
        let now = self.clock.now();
        let mut pending = Vec::with_capacity(fresh.len());
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
            pending.push((index, item, ack));
        }
        let (published, acks): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .map(|(index, item, ack)| ((index, item), ack.into_future()))
            .unzip();
        let acks = join_all(acks).await;
        let mut marks = Vec::new();
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
                Ok(_) => self.wrote(1),
                Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(error) => return Err(self.failed("mark a contentId as seen", error)),
            }
        }
        self.wrote(fresh.len() as u64 + written);
        Ok(outcomes)
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

    /// Every queued reference is a message of the work stream until it is acked: one request.
    async fn open_items(&self) -> Result<u64, QueueError> {
        self.check_open()?;
        Ok(self.work_stream().await?.cached_info().state.messages)
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

//! Connecting to NATS and setting up what the queue stores in it.
//!
//! Owns [`NatsSettings`] (from `[store.nats]` and `[workers]`), the connection (credentials
//! file, or the user/password or token UTMStack's `NATS_URL` carried; TLS; a connect
//! deadline), a [`probe`] for `check`, and the creation of the work stream, its durable consumer and the
//! key-value buckets (laid out in [`records`](super::records)). Guarantees: opening creates
//! what is missing and reuses what exists, so every replica may open at once; an existing
//! consumer's ack wait stays in use (a differing `workers.lease_secs` is warned about, not
//! applied); every failure names the setting or the server feature to fix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};

use super::NatsQueue;
use super::enqueue::{Committer, EnqueueGroups};
use crate::clock::Clock;
use crate::config::{Config, NatsConfig, NatsUrlCredentials};
use crate::secret::ExposeSecret;

/// The seen bucket's max age: longer than Microsoft keeps content (7 days), so a repeated
/// notification of any content that can still be fetched is recognised.
pub const SEEN_MAX_AGE: Duration = Duration::from_secs(8 * 24 * 3600);

/// The durable consumer every replica's workers pull from.
pub(super) const CONSUMER: &str = "workers";

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
    match &nats.url_credentials {
        Some(NatsUrlCredentials::UserPassword { user, password }) => {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        Some(NatsUrlCredentials::Token(token)) => {
            options = options.token(token.expose_secret().to_owned());
        }
        None => {}
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

/// Connects to the servers of `settings` and asks JetStream for its account information,
/// without creating anything (for `check`). Fails with the same messages as opening.
pub async fn probe(settings: &NatsSettings) -> anyhow::Result<()> {
    let (client, _) = connect(settings).await?;
    let answer = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "NATS answers but JetStream does not ({error}); enable it on the server (nats-server -js)"
            )
        })?;
    let info: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    if let Some(error) = info.get("error") {
        anyhow::bail!(
            "NATS answers but JetStream refuses: {}; enable JetStream for this account",
            error["description"].as_str().unwrap_or("no description")
        );
    }
    Ok(())
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
        let failures = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let enqueue_groups = EnqueueGroups::new(Committer {
            jetstream: jetstream.clone(),
            subject: async_nats::Subject::from(subject.as_str()),
            seen: seen.clone(),
            clock: clock.clone(),
            failures: failures.clone(),
            writes: writes.clone(),
        });
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
            failures,
            writes,
            enqueue_groups,
            open_items: tokio::sync::Mutex::new(None),
        })
    }

    /// The NATS connection, for the leader lease.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

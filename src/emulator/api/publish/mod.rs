//! Blob publication and webhook delivery: the emulated tenants' audit pipeline.
//!
//! For each tenant and each content type of its `publication`, a task publishes a blob of
//! `records_per_blob` records every `1 / blobs_per_second` seconds (none when the rate is
//! 0; `POST /_emulator/control {"publish": …}` publishes on demand). A blob is created
//! `late_content_hours` before the emulator's clock, handed to the feed
//! ([`super::feed::FeedState::add_blob`]), and — only when the feed kept it, i.e. a
//! subscription was enabled — recorded in the published log and notified to the
//! subscription's webhook.
//!
//! Guarantees:
//! - The published log ([`Publisher::published`], `GET /_emulator/published`) holds
//!   exactly the records of the blobs the feed kept, in publication order, each with the
//!   SHA-256 of its exact bytes: what a lossless connector must deliver.
//! - Records come from [`records`]: byte-exact file lines (cycling) or synthetic records.
//! - Notifications are delivered in the background by [`delivery`]; publication never
//!   waits for a webhook.
//!
//! Files: [`records`] (where records come from), [`delivery`] (the webhook HTTP client,
//! validation, notification retries and disablement).

pub mod delivery;
pub mod records;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::feed::ContentEntry;
use super::scenario::Scenario;
use super::{ApiEmulatorError, ApiState};
use delivery::{DeliveryPolicy, FailureCounts, Notification, WebhookClient};
use records::RecordSources;

/// One published record, for `GET /_emulator/published`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedRecord {
    /// Tenant GUID.
    pub tenant_id: String,
    /// Content type.
    pub content_type: String,
    /// Content id of the blob.
    pub content_id: String,
    /// contentUri of the blob.
    pub content_uri: String,
    /// Zero-based position in the blob.
    pub index: usize,
    /// The record's `Id`, when it has one.
    pub record_id: Option<String>,
    /// Lowercase hex SHA-256 of the record's exact bytes.
    pub sha256: String,
}

/// A published blob, stored compactly: blob fields once, 32-byte digests per record.
#[derive(Debug)]
struct PublishedBlob {
    tenant_id: String,
    content_type: String,
    content_id: String,
    content_uri: String,
    records: Vec<PublishedItem>,
}

#[derive(Debug)]
struct PublishedItem {
    record_id: Option<Box<str>>,
    sha256: [u8; 32],
}

/// Delivers validation requests and notifications to webhooks; keeps the record of
/// what was published.
pub struct Publisher {
    client: WebhookClient,
    policy: Mutex<DeliveryPolicy>,
    failures: FailureCounts,
    /// `None` until [`Publisher::load_records`] (or the first publication) loads them.
    sources: Mutex<Option<RecordSources>>,
    published: Mutex<Vec<PublishedBlob>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data with no invariant a panicking writer could break.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Publisher {
    /// A publisher trusting the system roots plus `extra_ca` (PEM) for webhooks.
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, ApiEmulatorError> {
        Ok(Self {
            client: WebhookClient::new(extra_ca)?,
            policy: Mutex::new(DeliveryPolicy::default()),
            failures: FailureCounts::default(),
            sources: Mutex::new(None),
            published: Mutex::new(Vec::new()),
        })
    }

    /// Loads the scenario's records files (once); an unreadable or empty file is an error.
    pub fn load_records(&self, scenario: &Scenario) -> Result<(), ApiEmulatorError> {
        let mut sources = lock(&self.sources);
        if sources.is_none() {
            *sources = Some(RecordSources::load(scenario)?);
        }
        Ok(())
    }

    /// The validation POST that `/start` with a webhook makes; true when it got HTTP 200.
    /// A non-https address is never called and is not valid.
    pub async fn validate_webhook(&self, address: &str, auth_id: Option<&str>) -> bool {
        match self.client.post_validation(address, auth_id).await {
            Ok(()) => true,
            Err(error) => {
                tracing::info!(%error, "webhook validation failed");
                false
            }
        }
    }

    /// Every record published while a subscription existed, in publication order.
    pub fn published(&self) -> Vec<PublishedRecord> {
        let blobs = lock(&self.published);
        blobs.iter().flat_map(expand_blob).collect()
    }

    /// The published log as NDJSON, one [`PublishedRecord`] per line.
    pub fn published_ndjson(&self) -> String {
        let blobs = lock(&self.published);
        let mut out = String::new();
        for record in blobs.iter().flat_map(expand_blob) {
            if let Ok(line) = serde_json::to_string(&record) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// The retry and disablement policy of notifications.
    pub fn delivery_policy(&self) -> DeliveryPolicy {
        *lock(&self.policy)
    }

    /// Replaces the retry and disablement policy (applies to the next attempts).
    pub fn set_delivery_policy(&self, policy: DeliveryPolicy) {
        *lock(&self.policy) = policy;
    }

    /// The webhook HTTP client.
    fn client(&self) -> &WebhookClient {
        &self.client
    }

    /// Consecutive delivery failures per webhook.
    fn failures(&self) -> &FailureCounts {
        &self.failures
    }

    fn record_published(&self, tenant_id: &str, entry: &ContentEntry, records: &[Bytes]) {
        let blob = PublishedBlob {
            tenant_id: tenant_id.to_string(),
            content_type: entry.content_type.clone(),
            content_id: entry.content_id.clone(),
            content_uri: entry.content_uri.clone(),
            records: records
                .iter()
                .map(|record| published_item(record))
                .collect(),
        };
        lock(&self.published).push(blob);
    }
}

fn published_item(record: &[u8]) -> PublishedItem {
    #[derive(serde::Deserialize)]
    struct WithId {
        #[serde(rename = "Id")]
        id: Option<serde_json::Value>,
    }
    let record_id = serde_json::from_slice::<WithId>(record)
        .ok()
        .and_then(|parsed| match parsed.id {
            Some(serde_json::Value::String(id)) => Some(id.into_boxed_str()),
            _ => None,
        });
    PublishedItem {
        record_id,
        sha256: Sha256::digest(record).into(),
    }
}

fn expand_blob(blob: &PublishedBlob) -> impl Iterator<Item = PublishedRecord> + '_ {
    blob.records
        .iter()
        .enumerate()
        .map(|(index, item)| PublishedRecord {
            tenant_id: blob.tenant_id.clone(),
            content_type: blob.content_type.clone(),
            content_id: blob.content_id.clone(),
            content_uri: blob.content_uri.clone(),
            index,
            record_id: item.record_id.as_deref().map(str::to_string),
            sha256: hex::encode(item.sha256),
        })
}

/// Publishes `blobs` blobs for (tenant, content type) now and notifies its webhook;
/// returns the entries created (none when the subscription is not enabled).
pub async fn publish_now(
    state: &Arc<ApiState>,
    tenant_id: &str,
    content_type: &str,
    blobs: usize,
) -> Vec<ContentEntry> {
    let entries = publish_blobs(state, tenant_id, content_type, blobs);
    notify(state, tenant_id, content_type, &entries);
    entries
}

/// Creates up to `blobs` blobs; stops at the first one the feed does not keep.
fn publish_blobs(
    state: &ApiState,
    tenant_id: &str,
    content_type: &str,
    blobs: usize,
) -> Vec<ContentEntry> {
    let Some(tenant) = state.scenario.tenant(tenant_id) else {
        return Vec::new();
    };
    if let Err(error) = state.publisher.load_records(&state.scenario) {
        tracing::error!(%error, "cannot publish");
        return Vec::new();
    }
    let tenant_id = tenant.tenant_id.as_str();
    let per_blob = tenant.publication.records_per_blob;
    let late_hours = state.feed.faults(tenant_id).late_content_hours.min(100_000);
    // Held across add_blob so concurrent publications of one pair never serve the same
    // file lines twice, and the published log follows the feed's order.
    let mut sources = lock(&state.publisher.sources);
    let Some(sources) = sources.as_mut() else {
        return Vec::new();
    };
    let mut entries = Vec::new();
    for _ in 0..blobs {
        let created = state.clock.now() - chrono::Duration::hours(late_hours as i64);
        let records = sources.peek(tenant_id, content_type, per_blob, created);
        let Some(entry) =
            state
                .feed
                .add_blob(&state.base_url, tenant_id, content_type, &records, created)
        else {
            break;
        };
        sources.commit(tenant_id, content_type, per_blob);
        state
            .publisher
            .record_published(tenant_id, &entry, &records);
        entries.push(entry);
    }
    entries
}

/// Starts the background delivery of `entries` to the webhook of (tenant, content type),
/// if it has an active one and delivery is not switched off.
fn notify(state: &Arc<ApiState>, tenant_id: &str, content_type: &str, entries: &[ContentEntry]) {
    if entries.is_empty() {
        return;
    }
    let Some(tenant) = state.scenario.tenant(tenant_id) else {
        return;
    };
    let faults = state.feed.faults(&tenant.tenant_id);
    if faults.webhook_delivery_off {
        return;
    }
    let Some(target) = state.feed.active_webhook(&tenant.tenant_id, content_type) else {
        return;
    };
    let notification = Notification {
        tenant_id: tenant.tenant_id.clone(),
        content_type: content_type.to_string(),
        target,
        entries: entries.to_vec(),
        body: delivery::notification_body(&tenant.tenant_id, &tenant.client_id, entries),
    };
    let copies = if faults.duplicate_notifications { 2 } else { 1 };
    tokio::spawn(delivery::deliver(state.clone(), notification, copies));
}

/// Shortest tick of a publication task; higher rates publish several blobs per tick.
const MIN_TICK: Duration = Duration::from_millis(10);

/// Starts the publication tasks of every tenant (rate from the scenario).
pub fn spawn_publishers(state: &Arc<ApiState>) {
    if let Err(error) = state.publisher.load_records(&state.scenario) {
        tracing::error!(%error, "publication disabled");
        return;
    }
    for tenant in &state.scenario.tenants {
        let rate = tenant.publication.blobs_per_second;
        if !(rate.is_finite() && rate > 0.0) {
            continue;
        }
        for content_type in &tenant.publication.content_types {
            let task = run_publication(
                state.clone(),
                tenant.tenant_id.clone(),
                content_type.clone(),
                rate,
            );
            tokio::spawn(task);
        }
    }
}

/// Publishes `rate` blobs per second for one (tenant, content type) until shutdown.
async fn run_publication(state: Arc<ApiState>, tenant_id: String, content_type: String, rate: f64) {
    let tick = Duration::try_from_secs_f64(1.0 / rate)
        .unwrap_or(Duration::MAX)
        .max(MIN_TICK);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Blobs owed by the real time elapsed, so late ticks and rates above 1/MIN_TICK
    // still hold the rate; at most one second's worth after a stall.
    let mut owed = 0.0f64;
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = tokio::time::Instant::now();
        owed = (owed + rate * (now - last).as_secs_f64()).min(rate.max(1.0));
        last = now;
        let due = owed.floor();
        owed -= due;
        if due >= 1.0 {
            publish_now(&state, &tenant_id, &content_type, due as usize).await;
        }
    }
}

//! The emulated feed: subscriptions, content listing, notifications listing, DLP types,
//! blobs, per-tenant throttling and fault injection. This module owns the mutable world
//! of the Management Activity API ([`FeedState`]) and its HTTP surface ([`routes`]).
//!
//! Guarantees, all by the emulator's [`Clock`]:
//! - content exists only while its subscription is enabled: [`FeedState::add_blob`]
//!   stores nothing otherwise, and a (re)started subscription lists and serves only
//!   content stored from its start on (the gap of a stop is lost, as Microsoft says);
//! - every blob gets a unique, opaque, Microsoft-shaped `contentId` (with `$`), a
//!   `contentUri` under the API host and a `contentExpiration` 7 days after creation;
//! - blob bodies are the records byte-exact, joined as one JSON array;
//! - every rejection uses Microsoft's envelope and AF code ([`AfError`](super::error::AfError)) and names the
//!   rule that fired, so `/_emulator/rejections` proves which rule it was.
//!
//! Files: `request` (checks common to every call), `window` (time windows and pages),
//! `subscriptions` (start, stop, list), `listing` (content, notifications, DLP types),
//! `blob` (retrieval and truncation), `guard` (throttling, latency and server errors),
//! `world` (the state behind the lock).

mod blob;
mod guard;
mod listing;
mod request;
mod subscriptions;
mod window;
mod world;

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::middleware;
use axum::routing::{get, post};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::scenario::{FaultScenario, Scenario};
use super::{ApiEmulatorError, ApiState};
use crate::clock::Clock;
use world::{Blob, NotificationRecord, World};

/// How long content stays retrievable after it became available.
pub const CONTENT_RETENTION_DAYS: i64 = 7;

/// One entry of a content listing (and, with tenant and client ids, of a notification).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentEntry {
    /// Content type.
    pub content_type: String,
    /// Opaque content id.
    pub content_id: String,
    /// Where the blob is fetched.
    pub content_uri: String,
    /// When the blob became available (`2015-05-23T17:35:00.000Z` style on the wire).
    #[serde(serialize_with = "serialize_api_time")]
    pub content_created: DateTime<Utc>,
    /// When retrieval stops working.
    #[serde(serialize_with = "serialize_api_time")]
    pub content_expiration: DateTime<Utc>,
}

/// Formats a time as Microsoft's listings do: `2015-05-23T17:35:00.000Z`.
pub fn serialize_api_time<S: serde::Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_api_time(time))
}

/// `2015-05-23T17:35:00.000Z`: the listings' time format.
pub fn format_api_time(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Where notifications of a (tenant, content type) go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The webhook address (https).
    pub address: String,
    /// Sent back as `Webhook-AuthID`, when set.
    pub auth_id: Option<String>,
}

/// The mutable world of the feed: one lock around every tenant's subscriptions, blobs,
/// notification records, faults and throttle window. The lock is a `std` mutex held only
/// for short, non-async sections (never across `.await`).
pub struct FeedState {
    clock: Clock,
    world: Mutex<World>,
}

impl FeedState {
    /// Builds the world from the scenario: every tenant with no subscription and the
    /// scenario's faults.
    pub fn new(scenario: &Scenario, clock: &Clock) -> Result<Self, ApiEmulatorError> {
        Ok(Self {
            clock: clock.clone(),
            world: Mutex::new(World::new(scenario)),
        })
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores a new blob made of `records` (each one JSON value, byte-exact) for
    /// (tenant, content type), created at `created`, and returns its listing entry; `None`
    /// when the subscription is not enabled (Microsoft keeps no content then).
    pub fn add_blob(
        &self,
        base_url: &str,
        tenant_id: &str,
        content_type: &str,
        records: &[Bytes],
        created: DateTime<Utc>,
    ) -> Option<ContentEntry> {
        let stored_at = self.clock.now();
        let mut world = self.world();
        let sequence = world.next_sequence();
        let tenant = world.tenant_mut(tenant_id)?;
        if !tenant.subscription_enabled(content_type) {
            return None;
        }
        let base = tenant
            .faults
            .foreign_content_uri_base
            .as_deref()
            .unwrap_or(base_url)
            .trim_end_matches('/');
        let content_id = world::content_id(created, sequence, content_type);
        let entry = ContentEntry {
            content_type: content_type.to_string(),
            content_uri: format!(
                "{base}/api/v1.0/{}/activity/feed/audit/{content_id}",
                tenant.tenant_id
            ),
            content_id,
            content_created: created,
            content_expiration: created
                .checked_add_signed(chrono::Duration::days(CONTENT_RETENTION_DAYS))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        };
        tenant.insert_blob(Blob {
            sequence,
            entry: entry.clone(),
            body: json_array(records),
            stored_at,
        });
        if sequence.is_multiple_of(world::PRUNE_EVERY_BLOBS) {
            tenant.prune(stored_at);
        }
        Some(entry)
    }

    /// Serves `records` from now on as the body of the stored blob `content_id` (its
    /// listing entry unchanged); `false` when the tenant has no such blob. Microsoft's blobs
    /// never change: this lets a test fix a bad record and check that a requeue sends it.
    pub fn replace_blob_records(
        &self,
        tenant_id: &str,
        content_id: &str,
        records: &[Bytes],
    ) -> bool {
        let mut world = self.world();
        let Some(tenant) = world.tenant_mut(tenant_id) else {
            return false;
        };
        let Some(blob) = tenant
            .blobs
            .iter_mut()
            .find(|blob| blob.entry.content_id == content_id)
        else {
            return false;
        };
        blob.body = json_array(records);
        true
    }

    /// The webhook to notify for (tenant, content type): the subscription is enabled and
    /// its webhook neither disabled nor expired.
    pub fn active_webhook(&self, tenant_id: &str, content_type: &str) -> Option<WebhookTarget> {
        let now = self.clock.now();
        let world = self.world();
        let subscription = world.tenant(tenant_id)?.subscriptions.get(content_type)?;
        if !subscription.enabled {
            return None;
        }
        let webhook = subscription.webhook.as_ref()?;
        (webhook.status(now) == world::WebhookStatus::Enabled).then(|| WebhookTarget {
            address: webhook.address.clone(),
            auth_id: webhook.auth_id.clone(),
        })
    }

    /// Marks the webhook of (tenant, content type) disabled (delivery failures, control);
    /// a later `/start` with a webhook re-enables it.
    pub fn disable_webhook(&self, tenant_id: &str, content_type: &str) {
        let mut world = self.world();
        let webhook = world
            .tenant_mut(tenant_id)
            .and_then(|tenant| tenant.subscriptions.get_mut(content_type))
            .and_then(|subscription| subscription.webhook.as_mut());
        if let Some(webhook) = webhook {
            webhook.disabled = true;
        }
    }

    /// Records a delivery attempt for `/subscriptions/notifications`.
    pub fn record_notification(
        &self,
        tenant_id: &str,
        entry: &ContentEntry,
        sent: DateTime<Utc>,
        status: &str,
    ) {
        let mut world = self.world();
        if let Some(tenant) = world.tenant_mut(tenant_id) {
            tenant.notifications.push(NotificationRecord {
                entry: entry.clone(),
                sent,
                status: status.to_string(),
            });
        }
    }

    /// The tenant's current faults (none for an unknown tenant).
    pub fn faults(&self, tenant_id: &str) -> FaultScenario {
        self.world()
            .tenant(tenant_id)
            .map(|tenant| tenant.faults.clone())
            .unwrap_or_default()
    }

    /// Replaces the faults of one tenant, or of every tenant when `tenant_id` is `None`.
    pub fn set_faults(&self, tenant_id: Option<&str>, faults: FaultScenario) {
        let mut world = self.world();
        match tenant_id {
            Some(tenant_id) => {
                if let Some(tenant) = world.tenant_mut(tenant_id) {
                    tenant.faults = faults;
                }
            }
            None => {
                for tenant in &mut world.tenants {
                    tenant.faults = faults.clone();
                }
            }
        }
    }

    /// (tenant, content type) pairs whose subscription is enabled, tenants in scenario
    /// order, content types in name order.
    pub fn enabled_subscriptions(&self) -> Vec<(String, String)> {
        let world = self.world();
        world
            .tenants
            .iter()
            .flat_map(|tenant| {
                tenant
                    .subscriptions
                    .iter()
                    .filter(|(_, subscription)| subscription.enabled)
                    .map(|(content_type, _)| (tenant.tenant_id.clone(), content_type.clone()))
            })
            .collect()
    }
}

/// `[` + records joined by `,` + `]`, each record's bytes untouched.
fn json_array(records: &[Bytes]) -> Bytes {
    let length = records.iter().map(Bytes::len).sum::<usize>() + records.len() + 2;
    let mut body = Vec::with_capacity(length);
    body.push(b'[');
    for (index, record) in records.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(record);
    }
    body.push(b']');
    Bytes::from(body)
}

/// Routes of the feed, under `/api/v1.0/{tenant}/activity/feed/`, behind the throttling
/// and fault-injection guard.
pub fn routes(state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    const ROOT: &str = "/api/v1.0/{tenant}/activity/feed";
    Router::new()
        .route(
            &format!("{ROOT}/subscriptions/start"),
            post(subscriptions::handle_start),
        )
        .route(
            &format!("{ROOT}/subscriptions/stop"),
            post(subscriptions::handle_stop),
        )
        .route(
            &format!("{ROOT}/subscriptions/list"),
            get(subscriptions::handle_list),
        )
        .route(
            &format!("{ROOT}/subscriptions/content"),
            get(listing::handle_content),
        )
        .route(
            &format!("{ROOT}/subscriptions/notifications"),
            get(listing::handle_notifications),
        )
        .route(
            &format!("{ROOT}/resources/dlpSensitiveTypes"),
            get(listing::handle_dlp_sensitive_types),
        )
        .route(
            &format!("{ROOT}/audit/{{content_id}}"),
            get(blob::handle_blob),
        )
        .route_layer(middleware::from_fn_with_state(state, guard::guard))
}

//! The emulated feed: subscriptions, content listing, notifications listing, DLP types,
//! blobs, per-tenant throttling and fault injection.
//! (Being written; the public signatures below are the contract other files use.)

use std::sync::Arc;

use axum::Router;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::scenario::{FaultScenario, Scenario};
use super::{ApiEmulatorError, ApiState};
use crate::clock::Clock;

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
    serializer.serialize_str(&time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// Where notifications of a (tenant, content type) go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The webhook address (https).
    pub address: String,
    /// Sent back as `Webhook-AuthID`, when set.
    pub auth_id: Option<String>,
}

/// The mutable world of the feed.
pub struct FeedState {}

impl FeedState {
    /// Builds the world from the scenario.
    pub fn new(_scenario: &Scenario, _clock: &Clock) -> Result<Self, ApiEmulatorError> {
        Ok(Self {})
    }

    /// Stores a new blob made of `records` (each one JSON value, byte-exact) for
    /// (tenant, content type), created at `created`, and returns its listing entry; `None`
    /// when the subscription is not enabled (Microsoft keeps no content then).
    pub fn add_blob(
        &self,
        _base_url: &str,
        _tenant_id: &str,
        _content_type: &str,
        _records: &[Bytes],
        _created: DateTime<Utc>,
    ) -> Option<ContentEntry> {
        None
    }

    /// The webhook to notify for (tenant, content type): enabled, not expired.
    pub fn active_webhook(&self, _tenant_id: &str, _content_type: &str) -> Option<WebhookTarget> {
        None
    }

    /// Marks the webhook of (tenant, content type) disabled (delivery failures, control).
    pub fn disable_webhook(&self, _tenant_id: &str, _content_type: &str) {}

    /// Records a delivery attempt for `/subscriptions/notifications`.
    pub fn record_notification(
        &self,
        _tenant_id: &str,
        _entry: &ContentEntry,
        _sent: DateTime<Utc>,
        _status: &str,
    ) {
    }

    /// The tenant's current faults.
    pub fn faults(&self, _tenant_id: &str) -> FaultScenario {
        FaultScenario::default()
    }

    /// Replaces the faults of one tenant, or of every tenant when `tenant_id` is `None`.
    pub fn set_faults(&self, _tenant_id: Option<&str>, _faults: FaultScenario) {}

    /// (tenant, content type) pairs whose subscription is enabled.
    pub fn enabled_subscriptions(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// Routes of the feed.
pub fn routes(_state: Arc<ApiState>) -> Router<Arc<ApiState>> {
    Router::new()
}

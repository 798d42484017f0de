//! Blob publication and webhook delivery (validation requests and notifications).
//! (Being written; the public signatures below are the contract other files use.)

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::feed::ContentEntry;
use super::{ApiEmulatorError, ApiState};

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

/// Delivers validation requests and notifications to webhooks; keeps the record of
/// what was published.
pub struct Publisher {}

impl Publisher {
    /// A publisher trusting the system roots plus `extra_ca` (PEM) for webhooks.
    pub fn new(_extra_ca: Option<&Path>) -> Result<Self, ApiEmulatorError> {
        Ok(Self {})
    }

    /// The validation POST that `/start` with a webhook makes; true when it got HTTP 200.
    pub async fn validate_webhook(&self, _address: &str, _auth_id: Option<&str>) -> bool {
        false
    }

    /// Every record published while a subscription existed, in publication order.
    pub fn published(&self) -> Vec<PublishedRecord> {
        Vec::new()
    }
}

/// Publishes `blobs` blobs for (tenant, content type) now and notifies its webhook;
/// returns the entries created (none when the subscription is not enabled).
pub async fn publish_now(
    _state: &Arc<ApiState>,
    _tenant_id: &str,
    _content_type: &str,
    _blobs: usize,
) -> Vec<ContentEntry> {
    Vec::new()
}

/// Starts the publication tasks of every tenant (rate from the scenario).
pub fn spawn_publishers(_state: &Arc<ApiState>) {}

//! What the manager remembers about each (tenant, content type) across restarts, in the
//! store's metadata area ([`MetaStore`]).
//!
//! On-disk format: key `subscriptions/state/{tenant id}/{content type}` (tenant id
//! lowercase, content type in the API's spelling), value a JSON object, every field
//! optional (absent fields read as their default, unknown fields are ignored, so a newer
//! or older version reads it):
//!
//! ```json
//! {"last_start": "2026-01-01T00:00:00Z", "last_start_with_webhook": true,
//!  "webhook_deferred_since": null, "last_webhook_attempt": "2026-01-01T00:00:00Z"}
//! ```
//!
//! `last_start` is written *before* each `/start` call, so a crash during the call still
//! counts it for the 15-minute spacing rule. A value that cannot be parsed reads as an
//! empty record, with a warning: the worst outcome is one start too early.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::queue::{MetaStore, QueueError};

/// The remembered state of one subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StartRecord {
    /// The last `/start` call (any outcome).
    pub last_start: Option<DateTime<Utc>>,
    /// That call asked for a webhook (so `webhook: null` right after it is "pending").
    pub last_start_with_webhook: bool,
    /// Since when Microsoft could not validate the webhook (AF20021); cleared once the
    /// webhook shows enabled.
    pub webhook_deferred_since: Option<DateTime<Utc>>,
    /// The last `/start` that asked for the webhook (the deferred retry counts from it).
    pub last_webhook_attempt: Option<DateTime<Utc>>,
}

/// The metadata key of a subscription's record.
pub fn record_key(tenant_id: &str, content_type: &str) -> String {
    format!(
        "subscriptions/state/{}/{content_type}",
        tenant_id.to_ascii_lowercase()
    )
}

/// Reads the record of a subscription (empty when none was stored).
pub async fn load_record(
    meta: &dyn MetaStore,
    tenant_id: &str,
    content_type: &str,
) -> Result<StartRecord, QueueError> {
    let key = record_key(tenant_id, content_type);
    let Some(bytes) = meta.get_meta(&key).await? else {
        return Ok(StartRecord::default());
    };
    Ok(serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        tracing::warn!(%key, %error, "unreadable subscription record; starting from an empty one");
        StartRecord::default()
    }))
}

/// Stores the record of a subscription (durable when it returns).
pub async fn save_record(
    meta: &dyn MetaStore,
    tenant_id: &str,
    content_type: &str,
    record: &StartRecord,
) -> Result<(), QueueError> {
    let bytes = serde_json::to_vec(record).map_err(|error| QueueError::Io {
        message: format!("cannot encode the subscription record: {error}"),
    })?;
    meta.put_meta(&record_key(tenant_id, content_type), bytes)
        .await
}

/// Claims a `/start` of (tenant, content type) at `now` for a caller outside the manager
/// (the poller after AF20022/AF20023, an operator command): true, with the start stored,
/// when the last start was at least [`START_SPACING`](super::START_SPACING) ago; false
/// when the spacing forbids it. The caller then makes the call. Read-modify-write, not a
/// transaction: two claims racing in the same instant could both succeed.
pub async fn claim_start(
    meta: &dyn MetaStore,
    tenant_id: &str,
    content_type: &str,
    with_webhook: bool,
    now: DateTime<Utc>,
) -> Result<bool, QueueError> {
    let mut record = load_record(meta, tenant_id, content_type).await?;
    if record
        .last_start
        .is_some_and(|last| now < last + super::START_SPACING)
    {
        return Ok(false);
    }
    record.last_start = Some(now);
    record.last_start_with_webhook = with_webhook;
    if with_webhook {
        record.last_webhook_attempt = Some(now);
    }
    save_record(meta, tenant_id, content_type, &record).await?;
    Ok(true)
}

/// Takes back a start claimed at `claimed_at` by [`claim_start`] whose call did not take
/// (a 5xx, throttling or a transport error): it must not hold the spacing, or the next
/// start (the subscription manager's, with the webhook) would wait 15 minutes for nothing.
/// Leaves the record alone when another start was stored since.
pub async fn release_start(
    meta: &dyn MetaStore,
    tenant_id: &str,
    content_type: &str,
    claimed_at: DateTime<Utc>,
) -> Result<(), QueueError> {
    let mut record = load_record(meta, tenant_id, content_type).await?;
    if record.last_start != Some(claimed_at) {
        return Ok(());
    }
    record.last_start = None;
    if record.last_webhook_attempt == Some(claimed_at) {
        record.last_webhook_attempt = None;
    }
    save_record(meta, tenant_id, content_type, &record).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_leniently() {
        let record: StartRecord =
            serde_json::from_str(r#"{"last_start":"2026-01-01T00:00:00Z","future":1}"#).unwrap();
        assert!(record.last_start.is_some());
        assert!(!record.last_start_with_webhook);
        assert_eq!(
            record_key("ABC", "DLP.All"),
            "subscriptions/state/abc/DLP.All"
        );
    }
}

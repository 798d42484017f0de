//! What the queue tests (embedded, NATS, the contract between them) share: content
//! references, dead records, the empty skip set and the record counts.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use o365_connector::queue::{ContentQueue, ContentRef, DeadRecord, Source};

/// A content reference of `tenant_id` as Microsoft lists it, created at `created` and
/// expiring 7 days later.
pub fn content_ref(
    tenant_id: &str,
    content_type: &str,
    content_id: String,
    created: DateTime<Utc>,
    source: Source,
) -> ContentRef {
    ContentRef {
        content_uri: format!(
            "https://manage.office.com/api/v1.0/{tenant_id}/activity/feed/audit/{content_id}"
        ),
        tenant_id: tenant_id.to_owned(),
        content_type: content_type.to_owned(),
        content_id,
        content_created: created,
        content_expiration: created + TimeDelta::days(7),
        source,
    }
}

/// No tenant paused: the skip set of a lease.
pub fn no_skip() -> HashSet<String> {
    HashSet::new()
}

/// A dead record at `index` (a made-up range and hash) for `reason`.
pub fn dead_record(index: u64, reason: &str) -> DeadRecord {
    DeadRecord {
        index,
        byte_range: (index * 100, index * 100 + 60),
        sha256: [index as u8; 32],
        reason: reason.to_owned(),
    }
}

/// (dead records, requeued, lost) from the queue's counts.
pub async fn record_counts(queue: &dyn ContentQueue) -> (u64, u64, u64) {
    let stats = queue.stats().await.expect("stats");
    (
        stats.dead_records,
        stats.requeued_records,
        stats.lost_records(),
    )
}

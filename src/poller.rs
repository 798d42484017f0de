//! The polling fallback: lists available content per (tenant, content type) on a schedule
//! and enqueues it, so nothing is missed when the webhook is slow, disabled or unreachable.
//! (Being written; the public signatures below are the contract other modules use.)

use chrono::{DateTime, Duration, Utc};

use crate::api::types::ContentItem;
use crate::api::{ApiClient, ApiError};
use crate::config::ContentType;

/// Lists every content item of `content_type` created in `[start, end)`, in windows of at
/// most `max_window`, following every `NextPageUri` to the end. The range must lie within
/// what the API serves (at most 7 days back).
pub async fn list_range(
    client: &ApiClient,
    content_type: ContentType,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    max_window: Duration,
) -> Result<Vec<ContentItem>, ApiError> {
    let _ = (client, content_type, start, end, max_window);
    Ok(Vec::new())
}

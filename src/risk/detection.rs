//! One risk detection as the engine receives it, and the watermark that says which were
//! forwarded.
//!
//! The Log (UTMStack's rules, spec `utmstack-engine.md` §6b, with its timestamp fault
//! fixed): `dataType` `o365`, `dataSource` the group name and `tenantId` the UTMStack
//! tenant as for audit records; `raw` the detection's JSON exactly as Graph sent it; `id`
//! the lowercase hex SHA-256 of `utmTenantId|groupKey|riskDetections|{detection id}`
//! ([`log_id`] with the literal [`CONTENT_URI`] in the contentUri's place); `timestamp` its
//! `activityDateTime`, else `detectedDateTime`, as UTC RFC 3339, or the collection time
//! when neither parses or when `engine.timestamp = "collection"`.
//!
//! # Watermark (on-disk format)
//!
//! In the [`crate::queue::MetaStore`] under `risk/watermark/{tenant id}`, JSON
//! `{"last_updated": "<lastUpdatedDateTime, verbatim>", "ids": ["<id>", …]}`: the
//! greatest `lastUpdatedDateTime` among detections the engine acknowledged, as Graph wrote
//! it (it goes back into `$filter` unchanged, so no precision is lost), and the ids of the
//! acknowledged detections updated at exactly that instant. The next listing asks for
//! `lastUpdatedDateTime ge` the watermark and skips those ids, so nothing after the
//! watermark is missed and nothing is sent twice, across restarts too.

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::types::parse_api_time;
use crate::config::TimestampSource;
use crate::forward::log::{DATA_TYPE, LogContext, log_id};
use crate::proto::Log;
use crate::queue::{MetaStore, QueueError};

/// What stands for the contentUri in a detection's `Log.id` (UTMStack's formula).
pub const CONTENT_URI: &str = "riskDetections";

/// The metadata key of a tenant's watermark.
pub fn watermark_key(tenant_id: &str) -> String {
    format!("risk/watermark/{tenant_id}")
}

/// The fields of a detection the connector reads, borrowed from its JSON.
#[derive(Deserialize, Default)]
struct Head<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(rename = "lastUpdatedDateTime", borrow, default)]
    last_updated: Option<Cow<'a, str>>,
    #[serde(rename = "activityDateTime", borrow, default)]
    activity: Option<Cow<'a, str>>,
    #[serde(rename = "detectedDateTime", borrow, default)]
    detected: Option<Cow<'a, str>>,
}

/// One detection of a page, read in one pass over its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// Its `id`; when Graph gave none, the hex SHA-256 of its JSON.
    pub id: String,
    /// Its `lastUpdatedDateTime`, verbatim, when it parses as a time.
    pub last_updated: Option<String>,
    /// That time, parsed.
    pub last_updated_at: Option<DateTime<Utc>>,
    /// When it happened: its `activityDateTime`, else its `detectedDateTime`, when one
    /// parses.
    pub event_time: Option<DateTime<Utc>>,
}

impl Detection {
    /// Reads `raw` (one element of a page's `value`).
    pub fn read(raw: &str) -> Self {
        let head: Head<'_> = serde_json::from_str(raw).unwrap_or_default();
        let last_updated_at = head.last_updated.as_deref().and_then(parse_api_time);
        Self {
            id: head
                .id
                .map(Cow::into_owned)
                .unwrap_or_else(|| hex::encode(Sha256::digest(raw.as_bytes()))),
            last_updated: last_updated_at.and(head.last_updated).map(Cow::into_owned),
            last_updated_at,
            event_time: head
                .activity
                .as_deref()
                .and_then(parse_api_time)
                .or_else(|| head.detected.as_deref().and_then(parse_api_time)),
        }
    }
}

/// The Log of `detection`, whose JSON is `raw`, collected at `collected_at`.
pub fn build_log(
    context: &LogContext,
    raw: &str,
    detection: &Detection,
    collected_at: DateTime<Utc>,
) -> Log {
    let event_time = match context.timestamp {
        TimestampSource::Event => detection.event_time,
        TimestampSource::Collection => None,
    };
    Log {
        id: log_id(context, CONTENT_URI, &detection.id),
        data_type: DATA_TYPE.to_owned(),
        data_source: context.group_name.clone(),
        timestamp: event_time
            .unwrap_or(collected_at)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
        tenant_id: context.utm_tenant_id.clone(),
        raw: raw.to_owned(),
    }
}

/// The stored watermark (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// The greatest acknowledged `lastUpdatedDateTime`, verbatim.
    pub last_updated: String,
    /// The acknowledged detections updated at exactly that instant.
    #[serde(default)]
    pub ids: Vec<String>,
}

/// Why a stored watermark could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkLoadError {
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] QueueError),
    /// The stored bytes are not a watermark.
    #[error("the stored risk detection watermark is unreadable: {0}")]
    Unreadable(#[from] serde_json::Error),
}

impl Watermark {
    /// The watermark stored for `tenant_id`, or `None` before the first acknowledged page.
    pub async fn load(
        meta: &(impl MetaStore + ?Sized),
        tenant_id: &str,
    ) -> Result<Option<Self>, WatermarkLoadError> {
        match meta.get_meta(&watermark_key(tenant_id)).await? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The watermark's instant, when it parses.
    pub fn at(&self) -> Option<DateTime<Utc>> {
        parse_api_time(&self.last_updated)
    }

    /// The value for `$filter`: the stored text when it is plain UTC RFC 3339 (`Z`, as
    /// Graph writes it), else the instant re-written so (an offset's `+` would need
    /// escaping in a query).
    pub fn filter_value(&self) -> Option<String> {
        let at = self.at()?;
        let text = self.last_updated.trim();
        let plain = text.ends_with('Z')
            && text
                .bytes()
                .all(|byte| byte.is_ascii_digit() || b"-:.TZ".contains(&byte));
        Some(if plain {
            text.to_string()
        } else {
            at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        })
    }

    /// True when `detection` was already acknowledged: updated before the watermark, or at
    /// its instant and listed in `ids`.
    pub fn covers(&self, detection: &Detection) -> bool {
        match (self.at(), detection.last_updated_at) {
            (Some(mark), Some(updated)) if updated < mark => true,
            (Some(mark), Some(updated)) if updated == mark => self.ids.contains(&detection.id),
            _ => false,
        }
    }

    /// Moves the watermark over `detection`, acknowledged by the engine.
    pub fn advance(&mut self, detection: &Detection) {
        let (Some(updated), Some(text)) = (detection.last_updated_at, &detection.last_updated)
        else {
            return;
        };
        match self.at() {
            Some(mark) if updated < mark => {}
            Some(mark) if updated == mark => {
                if !self.ids.contains(&detection.id) {
                    self.ids.push(detection.id.clone());
                }
            }
            _ => {
                self.last_updated = text.clone();
                self.ids = vec![detection.id.clone()];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(timestamp: TimestampSource) -> LogContext {
        LogContext {
            utm_tenant_id: "ce66672c-e36d-4761-a8c8-90058fee1a24".into(),
            group_name: "contoso".into(),
            timestamp,
        }
    }

    const DETECTION: &str = r#"{"id":"6a9a9a9b","riskEventType":"unfamiliarFeatures","activityDateTime":"2026-12-01T08:05:02.1234567Z","detectedDateTime":"2026-12-01T08:07:00Z","lastUpdatedDateTime":"2026-12-01T08:08:53.8512617Z","location":{"city":"Seattle"}}"#;

    #[test]
    fn a_detection_becomes_a_log_with_utmstacks_id_and_its_activity_time() {
        let collected = "2026-12-06T00:00:00Z".parse().unwrap();
        let detection = Detection::read(DETECTION);
        assert_eq!(detection.id, "6a9a9a9b");
        let log = build_log(
            &context(TimestampSource::Event),
            DETECTION,
            &detection,
            collected,
        );
        let expected_id = hex::encode(Sha256::digest(
            "ce66672c-e36d-4761-a8c8-90058fee1a24|ce66672c-e36d-4761-a8c8-90058fee1a24/contoso|riskDetections|6a9a9a9b",
        ));
        assert_eq!(log.id, expected_id);
        assert_eq!(
            (log.data_type.as_str(), log.data_source.as_str()),
            ("o365", "contoso")
        );
        assert_eq!(log.timestamp, "2026-12-01T08:05:02.123456700Z");
        assert_eq!(log.raw, DETECTION);
        let collection = build_log(
            &context(TimestampSource::Collection),
            DETECTION,
            &detection,
            collected,
        );
        assert_eq!(collection.timestamp, "2026-12-06T00:00:00Z");
        let detected_only = r#"{"id":"x","detectedDateTime":"2026-12-01T08:07:00Z"}"#;
        let log = build_log(
            &context(TimestampSource::Event),
            detected_only,
            &Detection::read(detected_only),
            collected,
        );
        assert_eq!(log.timestamp, "2026-12-01T08:07:00Z");
        let neither = build_log(
            &context(TimestampSource::Event),
            "{}",
            &Detection::read("{}"),
            collected,
        );
        assert_eq!(neither.timestamp, "2026-12-06T00:00:00Z");
    }

    #[test]
    fn the_watermark_covers_what_was_acknowledged_and_nothing_after() {
        let read = |id: &str, at: &str| {
            Detection::read(&format!(r#"{{"id":"{id}","lastUpdatedDateTime":"{at}"}}"#))
        };
        let mut mark = Watermark::default();
        assert!(!mark.covers(&read("a", "2026-12-01T00:00:00Z")));
        mark.advance(&read("a", "2026-12-01T00:00:00.5000000Z"));
        mark.advance(&read("b", "2026-12-01T00:00:00.5000000Z"));
        mark.advance(&read("z", "2026-11-30T00:00:00Z"));
        assert_eq!(mark.last_updated, "2026-12-01T00:00:00.5000000Z");
        assert_eq!(mark.ids, ["a", "b"]);
        assert_eq!(
            mark.filter_value().as_deref(),
            Some("2026-12-01T00:00:00.5000000Z")
        );
        assert!(mark.covers(&read("a", "2026-12-01T00:00:00.5Z")));
        assert!(mark.covers(&read("q", "2026-11-30T23:00:00Z")));
        assert!(!mark.covers(&read("c", "2026-12-01T00:00:00.5000000Z")));
        assert!(!mark.covers(&read("a", "2026-12-01T00:00:01Z")));
        mark.advance(&read("a", "2026-12-01T00:00:01Z"));
        assert_eq!(
            (mark.last_updated.as_str(), mark.ids.as_slice()),
            ("2026-12-01T00:00:01Z", &["a".to_string()][..])
        );
        let offset = Watermark {
            last_updated: "2026-12-01T01:00:00+01:00".into(),
            ids: vec![],
        };
        assert_eq!(
            offset.filter_value().as_deref(),
            Some("2026-12-01T00:00:00Z")
        );
        let stored = serde_json::to_vec(&mark).unwrap();
        assert_eq!(serde_json::from_slice::<Watermark>(&stored).unwrap(), mark);
    }

    #[test]
    fn a_detection_without_an_id_or_a_time_is_still_named_and_never_moves_the_watermark() {
        let detection = Detection::read(r#"{"riskLevel":"high","lastUpdatedDateTime":"soon"}"#);
        assert_eq!(detection.id.len(), 64);
        assert_eq!(detection.last_updated, None);
        let mut mark = Watermark::default();
        mark.advance(&detection);
        assert_eq!(mark, Watermark::default());
    }
}

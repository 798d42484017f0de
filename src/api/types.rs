//! The API's JSON shapes, parsed leniently (spec §2, §6, §7.14): optional fields are
//! `Option`, times accept every style Microsoft uses, unknown fields are ignored.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};

/// One entry of `/subscriptions/content` (and the content fields of a notification).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentItem {
    /// Content type, in the API's spelling.
    pub content_type: String,
    /// Opaque content id.
    pub content_id: String,
    /// Where the blob is fetched; used verbatim.
    pub content_uri: String,
    /// When the blob became available.
    #[serde(deserialize_with = "deserialize_api_time")]
    pub content_created: DateTime<Utc>,
    /// When retrieval stops working.
    #[serde(deserialize_with = "deserialize_api_time")]
    pub content_expiration: DateTime<Utc>,
}

/// A webhook as `/subscriptions/list` and `/start` show it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookStatus {
    /// `enabled`, `disabled` or `expired`.
    #[serde(default)]
    pub status: Option<String>,
    /// The registered address.
    #[serde(default)]
    pub address: Option<String>,
    /// The registered authId.
    #[serde(default)]
    pub auth_id: Option<String>,
    /// Expiration; `null` or `""` mean none.
    #[serde(default)]
    pub expiration: Option<String>,
}

/// One entry of `/subscriptions/list`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// Content type.
    pub content_type: String,
    /// `enabled` or `disabled`; absent in one of Microsoft's own samples.
    #[serde(default)]
    pub status: Option<String>,
    /// The webhook, or `None` for `webhook: null` (none, or pending validation).
    #[serde(default)]
    pub webhook: Option<WebhookStatus>,
}

/// The webhook a subscription start registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookRegistration {
    /// `{public URL}/{tenant id}`.
    pub address: String,
    /// The tenant's authId (an HMAC; sent back as `Webhook-AuthID`).
    pub auth_id: String,
    /// Empty: no expiration.
    pub expiration: String,
}

/// Parses the API's time styles as UTC: `2015-05-23T17:35:00.000Z`,
/// `2015-06-29T20:03:19`, with or without fractional seconds and `Z` or an offset.
pub fn parse_api_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    let naive = text.trim_end_matches(['Z', 'z']);
    // `FromStr` covers `%Y-%m-%dT%H:%M:%S%.f` (the audit records' CreationTime) with
    // pre-parsed items; a format string would be parsed again on every record.
    if let Ok(time) = naive.parse::<NaiveDateTime>() {
        return Some(time.and_utc());
    }
    NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M")
        .ok()
        .map(|time| time.and_utc())
}

/// Formats a listing window bound the way the API documents: `YYYY-MM-DDTHH:MM:SS`, UTC.
pub fn format_api_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn deserialize_api_time<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_api_time(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("not a date-time: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_time_style_parses_as_utc() {
        let expected = "2015-06-29T20:03:19Z".parse::<DateTime<Utc>>().unwrap();
        for text in [
            "2015-06-29T20:03:19",
            "2015-06-29T20:03:19Z",
            "2015-06-29T20:03:19.000Z",
            "2015-06-29T20:03:19.0000000",
            "2015-06-29T22:03:19+02:00",
        ] {
            assert_eq!(parse_api_time(text), Some(expected), "{text}");
        }
        assert_eq!(parse_api_time("yesterday"), None);
    }

    #[test]
    fn documented_listings_parse_with_and_without_a_byte_order_mark() {
        let read = |name: &str| std::fs::read(format!("tests/fixtures/ms-docs/{name}")).unwrap();
        let listing = read("ms_docs_list_content_response.json");
        let subscriptions = read("ms_docs_list_subscriptions_response.json");
        let notifications = read("ms_docs_list_notifications_response.json");
        for bom in [&[][..], &crate::api::json::UTF8_BOM[..]] {
            let marked = |body: &[u8]| [bom, body].concat();
            let items: Vec<ContentItem> = crate::api::json::from_slice(&marked(&listing)).unwrap();
            assert!(!items.is_empty());
            let subscriptions: Vec<SubscriptionStatus> =
                crate::api::json::from_slice(&marked(&subscriptions)).unwrap();
            assert!(
                subscriptions
                    .iter()
                    .any(|s| s.status.is_none() && s.webhook.is_none())
            );
            let notifications: Vec<ContentItem> =
                crate::api::json::from_slice(&marked(&notifications)).unwrap();
            assert!(!notifications.is_empty());
        }
    }
}

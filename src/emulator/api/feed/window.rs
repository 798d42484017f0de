//! Listing windows and pages, shared by `/subscriptions/content` and
//! `/subscriptions/notifications`.
//!
//! Window rules (REF, "List available content"), checked in this order:
//! - `startTime` and `endTime` parse as `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM` or
//!   `YYYY-MM-DDTHH:MM:SS` (optional fractional seconds and `Z`, UTC), else AF20002
//!   (Microsoft's "invalid parameter type … datetime");
//! - both or neither, else AF20030; neither means the 24 hours before now;
//! - start strictly before end, else AF20055;
//! - at most 24 hours apart, else AF20030;
//! - start at most 7 days before now, else AF20030.
//!
//! An entry belongs to a window when `startTime <= contentCreated < endTime`. Pages hold
//! `page_size` entries; a `nextPage` token names the key (blob sequence or notification
//! position) of the first entry of the next page, and one that names no entry of the
//! window answers AF20031.

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Utc};

use super::request::{Params, invalid_parameter};
use crate::emulator::api::error::AfError;

const WINDOW_MESSAGE: &str = "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past.";
const ORDER_MESSAGE: &str = "Start time and end time must both be specified (or both omitted) and must be less than or equal to 24 hours apart, with the start time no more than 7 days in the past and start time prior to end time.";

/// A listing window `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Window {
    /// Inclusive start.
    pub start: DateTime<Utc>,
    /// Exclusive end.
    pub end: DateTime<Utc>,
}

impl Window {
    /// The window a request asks for, checked against the rules at `now`.
    pub fn from_params(params: &Params, now: DateTime<Utc>) -> Result<Self, AfError> {
        let start = parse_param(params, "startTime")?;
        let end = parse_param(params, "endTime")?;
        let window = match (start, end) {
            (Some(start), Some(end)) => Self { start, end },
            (None, None) => {
                return Ok(Self {
                    start: now - Duration::hours(24),
                    end: now,
                });
            }
            _ => return Err(window_error("window_half_open")),
        };
        if window.start >= window.end {
            return Err(AfError::bad_request(
                "AF20055",
                "window_start_not_before_end",
                ORDER_MESSAGE,
            ));
        }
        if window.end - window.start > Duration::hours(24) {
            return Err(window_error("window_too_long"));
        }
        if window.start < now - Duration::days(7) {
            return Err(window_error("window_start_too_old"));
        }
        Ok(window)
    }

    /// `start <= time < end`.
    pub fn contains(&self, time: DateTime<Utc>) -> bool {
        self.start <= time && time < self.end
    }
}

fn window_error(rule: &'static str) -> AfError {
    AfError::bad_request("AF20030", rule, WINDOW_MESSAGE)
}

fn parse_param(params: &Params, name: &str) -> Result<Option<DateTime<Utc>>, AfError> {
    match params.get(name) {
        None => Ok(None),
        Some(text) => parse_api_time(text)
            .map(Some)
            .ok_or_else(|| invalid_parameter(name, "datetime")),
    }
}

/// Parses the API's time formats as UTC: `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM`,
/// `YYYY-MM-DDTHH:MM:SS[.fff][Z]`, or RFC 3339 with an offset.
pub fn parse_api_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.with_timezone(&Utc));
    }
    let naive = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(naive, format) {
            return Some(time.and_utc());
        }
    }
    NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .map(|time| time.and_utc())
}

/// Cuts `items` (key, value), already filtered and in listing order, into the page that
/// starts at `next_page` (or at the beginning); returns it and the token of the next
/// page, if more remain.
pub(super) fn paginate<T>(
    items: Vec<(u64, T)>,
    next_page: Option<&str>,
    page_size: usize,
) -> Result<(Vec<T>, Option<String>), AfError> {
    let first = match next_page {
        None => 0,
        Some(token) => parse_page_token(token)
            .and_then(|key| items.iter().position(|(item_key, _)| *item_key == key))
            .ok_or_else(|| {
                AfError::bad_request(
                    "AF20031",
                    "next_page_invalid",
                    format!("Invalid nextPage Input: {token}."),
                )
            })?,
    };
    let page_size = page_size.max(1);
    let mut rest = items.into_iter().skip(first);
    let page: Vec<T> = rest
        .by_ref()
        .take(page_size)
        .map(|(_, item)| item)
        .collect();
    let next = rest.next().map(|(key, _)| page_token(key));
    Ok((page, next))
}

/// An opaque token shaped like Microsoft's (`2015101900R022885001761`).
fn page_token(key: u64) -> String {
    format!("2015101900R{key:013}")
}

fn parse_page_token(token: &str) -> Option<u64> {
    let (prefix, key) = token.split_once('R')?;
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if prefix.len() != 10 || !digits(prefix) || !digits(key) || key.len() > 19 {
        return None;
    }
    key.parse().ok()
}

/// The `NextPageUri` of a listing: the same window spelled out, plus `nextPage`.
pub(super) fn next_page_uri(
    base: &str,
    tenant_id: &str,
    operation: &str,
    content_type: &str,
    window: &Window,
    token: &str,
) -> String {
    let time = |time: &DateTime<Utc>| time.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
    format!(
        "{}/api/v1.0/{tenant_id}/activity/feed/subscriptions/{operation}?contentType={content_type}&startTime={}&endTime={}&nextPage={token}",
        base.trim_end_matches('/'),
        time(&window.start),
        time(&window.end),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_three_documented_formats_and_variants_parse_as_utc() {
        assert_eq!(
            parse_api_time("2015-10-01"),
            Some(utc("2015-10-01T00:00:00Z"))
        );
        assert_eq!(
            parse_api_time("2015-10-01T10:20"),
            Some(utc("2015-10-01T10:20:00Z"))
        );
        assert_eq!(
            parse_api_time("2015-10-01T10:20:30"),
            Some(utc("2015-10-01T10:20:30Z"))
        );
        assert_eq!(
            parse_api_time("2015-10-01T10:20:30.250Z"),
            Some(utc("2015-10-01T10:20:30.250Z"))
        );
        assert_eq!(parse_api_time("yesterday"), None);
        assert_eq!(parse_api_time("2015-13-01"), None);
    }

    #[test]
    fn pages_follow_tokens_and_reject_unknown_ones() {
        let items: Vec<(u64, u64)> = (10..15).map(|key| (key, key)).collect();
        let (page, next) = paginate(items.clone(), None, 2).unwrap();
        assert_eq!(page, vec![10, 11]);
        let (page, next) = paginate(items.clone(), next.as_deref(), 2).unwrap();
        assert_eq!(page, vec![12, 13]);
        let (page, next) = paginate(items.clone(), next.as_deref(), 2).unwrap();
        assert_eq!((page, next), (vec![14], None));
        assert!(paginate(items.clone(), Some("2015101900R0000000000099"), 2).is_err());
        assert!(paginate(items, Some("garbage"), 2).is_err());
    }
}

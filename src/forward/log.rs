//! Building the engine's [`Log`] from one audit record.
//!
//! Owns the Log field rules of spec/utmstack-engine.md §2 and §4:
//! - `id`: lowercase hex SHA-256 of `utmTenantId|groupKey|contentUri|recordId`, where
//!   `groupKey` = `utmTenantId + "/" + groupName`, `contentUri` is the blob's URI without
//!   its query string (everything from the first `?` dropped), and `recordId` is the
//!   record's `Id` (its string value; its exact JSON text when it is not a string) or, when
//!   the record has none, its zero-based index in the blob in decimal. UTMStack's own
//!   collector uses the same formula, so both give the same id for the same record, and the
//!   same record repeated inside one blob gets the same id.
//! - `dataType` `"o365"`, `dataSource` the group name, `tenantId` the UTMStack tenant id.
//! - `raw`: the record's bytes exactly as Microsoft sent them (never re-serialised).
//! - `timestamp`: RFC 3339 in UTC, always ending in `Z`. With [`TimestampSource::Event`]
//!   it is the record's `CreationTime` (no zone means UTC; `Z`, offsets and fractions are
//!   accepted), falling back to the collection time when `CreationTime` is missing or
//!   unparsable; with [`TimestampSource::Collection`] it is always the collection time.
//!   Fractional seconds are kept when they are not zero, in 3, 6 or 9 digits
//!   (`2015-06-29T20:03:19Z`, `2015-06-29T20:03:19.120Z`): no precision is invented or lost
//!   beyond the nanosecond.
//!
//! `Id` and `CreationTime` are read in one serde pass over the record that skips every other
//! field: the splitter's, which validates the record ([`read_record_fields`]), or else the
//! builder's own. [`encode_log`] writes the protobuf message straight from the record's
//! bytes, the same bytes as prost's encoding of [`build_log`]'s Log. A record that is not a JSON object, or that names `Id` or `CreationTime` twice,
//! is treated as having neither (index as record id, collection time).

use std::borrow::Cow;
use std::ops::Range;

use chrono::{DateTime, SecondsFormat, Utc};
use prost::encoding;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::wire::EncodedLog;
use crate::api::types::parse_api_time;
use crate::config::TimestampSource;
use crate::proto::Log;

/// `Log.dataType` of every Log this connector sends.
pub const DATA_TYPE: &str = "o365";

/// What every Log of one UTMStack group shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogContext {
    /// The UTMStack tenant id (`Log.tenantId`, and part of `Log.id`).
    pub utm_tenant_id: String,
    /// The UTMStack group name, the tenant's configured `name` (`Log.dataSource`).
    pub group_name: String,
    /// Which time becomes `Log.timestamp`.
    pub timestamp: TimestampSource,
}

/// The two fields of a record the Log needs, borrowed from the record's bytes.
#[derive(Deserialize)]
struct RecordHead<'a> {
    #[serde(rename = "Id", borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(rename = "CreationTime", borrow, default)]
    creation_time: Option<&'a RawValue>,
}

/// Where a record's `Id` and `CreationTime` values are in its bytes (`[start, end)`, the
/// values' exact JSON text), as read by the serde pass that validated the record, so
/// building its Log does not parse it again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordFields {
    id: Option<Range<usize>>,
    creation_time: Option<Range<usize>>,
    /// The splitter also checked that the record is UTF-8, so `raw` needs no second check.
    utf8_checked: bool,
}

impl RecordFields {
    /// The same fields, of a record the caller checked to be UTF-8 (the splitter's records).
    pub(crate) fn of_utf8_record(self) -> Self {
        Self {
            utf8_checked: true,
            ..self
        }
    }
}

/// Parses the first JSON value of `json` as a record's head, skipping every other field:
/// its [`RecordFields`] and the offset where the value ends. `None` when serde_json
/// refuses it there (invalid, cut short, or naming `Id` or `CreationTime` twice): the
/// caller then validates it otherwise, and the Log's builder reads it again.
pub fn read_record_fields(json: &[u8]) -> Option<(RecordFields, usize)> {
    let mut values = serde_json::Deserializer::from_slice(json).into_iter::<RecordHead<'_>>();
    let head = values.next()?.ok()?;
    let span = |raw: &RawValue| {
        let start = raw.get().as_ptr() as usize - json.as_ptr() as usize;
        start..start + raw.get().len()
    };
    let fields = RecordFields {
        id: head.id.map(span),
        creation_time: head.creation_time.map(span),
        utf8_checked: false,
    };
    Some((fields, values.byte_offset()))
}

/// Builds the Log of the record at zero-based `index` of the blob at `content_uri`.
///
/// `record` is one top-level element of the blob, exact bytes, valid UTF-8 JSON (the
/// splitter guarantees it; invalid UTF-8 would be replaced, never panic).
/// `collected_at` is the collection time, used per [`LogContext::timestamp`].
pub fn build_log(
    context: &LogContext,
    record: &[u8],
    index: u64,
    content_uri: &str,
    collected_at: DateTime<Utc>,
) -> Log {
    let (id, timestamp) = id_and_timestamp(context, record, None, index, content_uri, collected_at);
    Log {
        id,
        data_type: DATA_TYPE.to_owned(),
        data_source: context.group_name.clone(),
        timestamp,
        tenant_id: context.utm_tenant_id.clone(),
        raw: raw_text(record).into_owned(),
    }
}

/// The Log of [`build_log`], protobuf-encoded straight from the record's bytes: the same
/// bytes as prost's encoding of that Log, without building it (no copy of `raw` or of the
/// context's strings before the one into the message). `fields`, when the splitter read
/// them ([`read_record_fields`] over exactly `record`), spare a second parse.
pub fn encode_log(
    context: &LogContext,
    record: &[u8],
    fields: Option<&RecordFields>,
    index: u64,
    content_uri: &str,
    collected_at: DateTime<Utc>,
) -> EncodedLog {
    let (id, timestamp) =
        id_and_timestamp(context, record, fields, index, content_uri, collected_at);
    let raw = match fields.is_some_and(|fields| fields.utf8_checked) {
        true => Cow::Borrowed(record),
        false => match raw_text(record) {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        },
    };
    // Log's fields in tag order, as prost writes them; proto3 leaves empty strings out.
    let fields: [(u32, &[u8]); 6] = [
        (1, id.as_bytes()),
        (2, DATA_TYPE.as_bytes()),
        (3, context.group_name.as_bytes()),
        (4, timestamp.as_bytes()),
        (5, context.utm_tenant_id.as_bytes()),
        (6, &raw),
    ];
    let length = fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(tag, value)| {
            encoding::key_len(*tag) + encoding::encoded_len_varint(value.len() as u64) + value.len()
        })
        .sum();
    let mut bytes = Vec::with_capacity(length);
    for (tag, value) in fields {
        if !value.is_empty() {
            encoding::encode_key(tag, encoding::WireType::LengthDelimited, &mut bytes);
            encoding::encode_varint(value.len() as u64, &mut bytes);
            bytes.extend_from_slice(value);
        }
    }
    EncodedLog {
        id,
        bytes: bytes.into(),
    }
}

/// `raw`: the record's text, replaced only where it is not UTF-8 (never, from the splitter).
fn raw_text(record: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(record) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(record),
    }
}

/// `Log.id` and `Log.timestamp` of the record, from `fields` or else one serde pass over it.
fn id_and_timestamp(
    context: &LogContext,
    record: &[u8],
    fields: Option<&RecordFields>,
    index: u64,
    content_uri: &str,
    collected_at: DateTime<Utc>,
) -> (String, String) {
    let read;
    let fields = match fields {
        Some(fields) => Some(fields),
        None => {
            read = read_record_fields(record)
                .filter(|(_, end)| {
                    record[*end..]
                        .iter()
                        .all(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
                })
                .map(|(fields, _)| fields);
            read.as_ref()
        }
    };
    let text = |range: &Option<Range<usize>>| {
        range
            .clone()
            .and_then(|range| record.get(range))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    };
    let record_id = fields
        .and_then(|fields| text(&fields.id))
        .map(json_text_or_string)
        .unwrap_or_else(|| Cow::Owned(index.to_string()));
    let event_time = match context.timestamp {
        TimestampSource::Event => fields
            .and_then(|fields| text(&fields.creation_time))
            .and_then(|raw| parse_api_time(&json_text_or_string(raw))),
        TimestampSource::Collection => None,
    };
    let timestamp = event_time
        .unwrap_or(collected_at)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    (log_id(context, content_uri, &record_id), timestamp)
}

/// The longest record (`Log.raw`, in bytes) whose Log of this context fits in
/// `max_message_bytes` encoded, whatever its id and timestamp: the message limit less the
/// Log's other fields at their longest (a 64-character id, a 30-character timestamp) and
/// `raw`'s own tag and length prefix. A longer record can never be sent.
pub fn max_raw_bytes(context: &LogContext, max_message_bytes: usize) -> usize {
    use prost::Message as _;
    let longest_other_fields = Log {
        id: "0".repeat(64),
        data_type: DATA_TYPE.to_owned(),
        data_source: context.group_name.clone(),
        timestamp: "2015-06-29T20:03:19.123456789Z".to_owned(),
        tenant_id: context.utm_tenant_id.clone(),
        raw: String::new(),
    }
    .encoded_len();
    // `raw`: one tag byte and a length varint of at most 5 bytes (lengths below 4 GiB).
    max_message_bytes.saturating_sub(longest_other_fields + 1 + 5)
}

/// `Log.id` per spec §4: hex SHA-256 of `utmTenantId|utmTenantId/groupName|uri|recordId`,
/// with the URI's query string dropped.
pub fn log_id(context: &LogContext, content_uri: &str, record_id: &str) -> String {
    let uri_without_query = content_uri.split('?').next().unwrap_or(content_uri);
    let mut hasher = Sha256::new();
    hasher.update(context.utm_tenant_id.as_bytes());
    hasher.update(b"|");
    hasher.update(context.utm_tenant_id.as_bytes());
    hasher.update(b"/");
    hasher.update(context.group_name.as_bytes());
    hasher.update(b"|");
    hasher.update(uri_without_query.as_bytes());
    hasher.update(b"|");
    hasher.update(record_id.as_bytes());
    let digest = hasher.finalize();
    // Into a stack buffer: `hex::encode` collects chars one by one.
    let mut text = [0u8; 64];
    match hex::encode_to_slice(digest, &mut text) {
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => hex::encode(digest),
    }
}

/// A JSON string's value (escapes resolved), or any other value's exact JSON text; borrowed
/// when it is a string without escapes (the usual `Id` and `CreationTime`).
fn json_text_or_string(text: &str) -> Cow<'_, str> {
    if let Some(inner) = text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        && !inner.contains('\\')
    {
        return Cow::Borrowed(inner);
    }
    if text.starts_with('"')
        && let Ok(value) = serde_json::from_str::<String>(text)
    {
        return Cow::Owned(value);
    }
    Cow::Borrowed(text)
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn a_record_of_max_raw_bytes_fits_the_message_limit_and_one_byte_more_does_not() {
        let context = context(TimestampSource::Collection);
        let limit = 4096;
        let budget = max_raw_bytes(&context, limit);
        let record = |len: usize| format!("{{\"Id\":\"x\",\"P\":\"{}\"}}", "a".repeat(len - 17));
        let fits = build_log(&context, record(budget).as_bytes(), 0, URI, Utc::now());
        assert_eq!(fits.raw.len(), budget);
        assert!(
            fits.encoded_len() <= limit,
            "{} > {limit}",
            fits.encoded_len()
        );
        assert!(
            budget + 120 > limit,
            "the margin stays small: budget {budget} of {limit}"
        );
    }

    const URI: &str = "https://manage.office.com/api/v1.0/t/activity/feed/audit/blob1";

    fn context(timestamp: TimestampSource) -> LogContext {
        LogContext {
            utm_tenant_id: "a".into(),
            group_name: "b".into(),
            timestamp,
        }
    }

    fn collected() -> DateTime<Utc> {
        "2026-01-02T03:04:05Z".parse().unwrap()
    }

    fn timestamp_of(record: &str, source: TimestampSource) -> String {
        build_log(&context(source), record.as_bytes(), 0, URI, collected()).timestamp
    }

    #[test]
    fn encode_log_writes_exactly_prosts_encoding_of_build_log() {
        let empty_group = LogContext {
            utm_tenant_id: "a".into(),
            group_name: String::new(),
            timestamp: TimestampSource::Event,
        };
        let long_raw = format!(r#"{{"Id":"x","P":"{}"}}"#, "é".repeat(300));
        for (context, record) in [
            (
                context(TimestampSource::Event),
                r#"{"Id":"x","CreationTime":"2015-06-29T20:03:19"}"#,
            ),
            (context(TimestampSource::Collection), r#"{"Operation":"y"}"#),
            (empty_group, r#"{}"#),
            (context(TimestampSource::Event), long_raw.as_str()),
            (
                context(TimestampSource::Event),
                r#"{"Id":"a\u0062","CreationTime":"2015-06-29T20:03:19.12Z","Id2":7}"#,
            ),
            (context(TimestampSource::Event), r#"{"Id":12.50}"#),
        ] {
            let log = build_log(&context, record.as_bytes(), 5, URI, collected());
            let encoded = encode_log(&context, record.as_bytes(), None, 5, URI, collected());
            assert_eq!(
                encoded.bytes.as_ref(),
                log.encode_to_vec().as_slice(),
                "{record}"
            );
            assert_eq!(encoded.id, log.id);
            let (fields, end) = read_record_fields(record.as_bytes()).unwrap();
            assert_eq!(end, record.len());
            let read = encode_log(
                &context,
                record.as_bytes(),
                Some(&fields),
                5,
                URI,
                collected(),
            );
            assert_eq!(
                read.bytes, encoded.bytes,
                "fields read by the splitter: {record}"
            );
        }
    }

    #[test]
    fn id_is_the_sha256_of_the_utmstack_formula() {
        // printf '%s' 'a|a/b|uri|id' | sha256sum
        let expected = "c65a5f99bdfcd892f62d5b029673d17b5032ca60afd8042992f400badea286ef";
        assert_eq!(
            log_id(&context(TimestampSource::Event), "uri", "id"),
            expected
        );
        let log = build_log(
            &context(TimestampSource::Event),
            br#"{"Operation":"x","Id":"id"}"#,
            7,
            "uri?PublisherIdentifier=p&x=1",
            collected(),
        );
        assert_eq!(log.id, expected, "query dropped, Id used, index ignored");
    }

    #[test]
    fn record_without_id_uses_its_zero_based_index() {
        let log = build_log(
            &context(TimestampSource::Event),
            br#"{"Operation":"x"}"#,
            3,
            "uri",
            collected(),
        );
        // printf '%s' 'a|a/b|uri|3' | sha256sum
        assert_eq!(
            log.id,
            "cb8c567100df551b307b2dfe42a1d60fdd2d6888b3df3ea3d4a79f7ef70d5c8f"
        );
    }

    #[test]
    fn non_string_id_uses_its_json_text_and_escaped_string_its_value() {
        let ctx = context(TimestampSource::Event);
        let numeric = build_log(&ctx, br#"{"Id": 12.50}"#, 0, "uri", collected());
        assert_eq!(numeric.id, log_id(&ctx, "uri", "12.50"));
        let escaped = build_log(&ctx, br#"{"Id":"a\u0062"}"#, 0, "uri", collected());
        assert_eq!(escaped.id, log_id(&ctx, "uri", "ab"));
    }

    #[test]
    fn fields_are_set_and_raw_is_byte_identical() {
        let record = r#"{ "Id" : "x", "Big": 12345678901234567890, "S":"<&>\u00e9" }"#;
        let log = build_log(
            &context(TimestampSource::Event),
            record.as_bytes(),
            0,
            URI,
            collected(),
        );
        assert_eq!(log.raw, record);
        assert_eq!(log.data_type, "o365");
        assert_eq!(log.data_source, "b");
        assert_eq!(log.tenant_id, "a");
    }

    #[test]
    fn event_timestamp_is_creation_time_in_utc_with_z() {
        let event = TimestampSource::Event;
        for (creation_time, expected) in [
            ("2015-06-29T20:03:19", "2015-06-29T20:03:19Z"),
            ("2015-06-29T20:03:19Z", "2015-06-29T20:03:19Z"),
            ("2015-06-29T22:03:19+02:00", "2015-06-29T20:03:19Z"),
            ("2015-06-29T20:03:19.0000000", "2015-06-29T20:03:19Z"),
            ("2015-06-29T20:03:19.12Z", "2015-06-29T20:03:19.120Z"),
        ] {
            let record = format!(r#"{{"CreationTime":"{creation_time}"}}"#);
            assert_eq!(timestamp_of(&record, event), expected, "{creation_time}");
        }
    }

    #[test]
    fn missing_or_unparsable_creation_time_falls_back_to_collection_time() {
        let event = TimestampSource::Event;
        for record in [
            r#"{"Id":"x"}"#,
            r#"{"CreationTime":"yesterday"}"#,
            r#"{"CreationTime":20150629}"#,
            r#"{"Id":"x","Id":"y"}"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(
                timestamp_of(record, event),
                "2026-01-02T03:04:05Z",
                "{record}"
            );
        }
    }

    #[test]
    fn collection_source_ignores_creation_time() {
        let record = r#"{"CreationTime":"2015-06-29T20:03:19"}"#;
        assert_eq!(
            timestamp_of(record, TimestampSource::Collection),
            "2026-01-02T03:04:05Z"
        );
    }
}

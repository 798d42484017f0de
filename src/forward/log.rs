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
//! builder's own. [`LogEncoder`] writes the protobuf message straight from the record's
//! bytes, the same bytes as prost's encoding of [`build_log`]'s Log. A record that is not a JSON object, or that names `Id` or `CreationTime` twice,
//! is treated as having neither (index as record id, collection time).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike, Utc};
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
    read_head(json, serde_json::Deserializer::from_slice(json))
}

/// The [`RecordFields`] of `json` when it is one JSON value and nothing else but JSON
/// whitespace; `None` when serde_json refuses it as a record head.
pub fn read_whole_record_fields(json: &[u8]) -> Option<RecordFields> {
    let (fields, end) = read_record_fields(json)?;
    let rest_is_whitespace = json[end..]
        .iter()
        .all(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    rest_is_whitespace.then_some(fields)
}

/// [`read_record_fields`] over text the caller already checked to be UTF-8 (serde_json
/// then does not check each key again).
pub fn read_record_fields_in_text(json: &str) -> Option<(RecordFields, usize)> {
    read_head(json.as_bytes(), serde_json::Deserializer::from_str(json))
}

/// The head of the first JSON value `values` reads from `json`, and where that value ends.
fn read_head<'de, R: serde_json::de::Read<'de>>(
    json: &[u8],
    values: serde_json::Deserializer<R>,
) -> Option<(RecordFields, usize)> {
    let mut values = values.into_iter::<RecordHead<'de>>();
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
    let id_prefix = LogIdPrefix::new(context, content_uri);
    let (id, timestamp) = id_and_timestamp(context, &id_prefix, record, None, index, collected_at);
    Log {
        id: id.as_str().to_owned(),
        data_type: DATA_TYPE.to_owned(),
        data_source: context.group_name.clone(),
        timestamp: timestamp.as_str().to_owned(),
        tenant_id: context.utm_tenant_id.clone(),
        raw: raw_text(record).into_owned(),
    }
}

/// Encodes the Logs of the records of one blob into one buffer: each Log is a slice of it, so a batch costs one allocation instead of
/// one per Log (and no id or timestamp string), and the buffer is freed when the batch's
/// last Log leaves the window.
pub struct LogEncoder<'a> {
    context: &'a LogContext,
    /// Every Log id of the blob starts with the same text: hashed once, per blob.
    id_prefix: LogIdPrefix,
    collected_at: DateTime<Utc>,
    buffer: BytesMut,
}

impl<'a> LogEncoder<'a> {
    /// An encoder for Logs of the blob at `content_uri`, with room for `capacity` bytes of
    /// them (the caller's reservation; more is allocated if they need it).
    pub fn new(
        context: &'a LogContext,
        content_uri: &'a str,
        collected_at: DateTime<Utc>,
        capacity: usize,
    ) -> Self {
        Self {
            context,
            id_prefix: LogIdPrefix::new(context, content_uri),
            collected_at,
            buffer: BytesMut::with_capacity(capacity),
        }
    }

    /// The Log of [`build_log`] for the record at zero-based `index`, protobuf-encoded
    /// straight from the record's bytes: the same bytes as prost's encoding of that Log,
    /// without building it (no copy of `raw` or of the context's strings before the one into
    /// the message). `fields`, when the splitter read them ([`read_record_fields`] over
    /// exactly `record`), spare a second parse.
    pub fn push(&mut self, record: &[u8], fields: Option<&RecordFields>, index: u64) -> EncodedLog {
        let context = self.context;
        let (id, timestamp) = id_and_timestamp(
            context,
            &self.id_prefix,
            record,
            fields,
            index,
            self.collected_at,
        );
        let raw = match fields.is_some_and(|fields| fields.utf8_checked) {
            true => Cow::Borrowed(record),
            false => match raw_text(record) {
                Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
                Cow::Owned(text) => Cow::Owned(text.into_bytes()),
            },
        };
        // Log's fields in tag order, as prost writes them; proto3 leaves empty strings out.
        let fields: [(u32, &[u8]); 6] = [
            (1, id.as_str().as_bytes()),
            (2, DATA_TYPE.as_bytes()),
            (3, context.group_name.as_bytes()),
            (4, timestamp.as_str().as_bytes()),
            (5, context.utm_tenant_id.as_bytes()),
            (6, &raw),
        ];
        let length = fields
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(tag, value)| {
                encoding::key_len(*tag)
                    + encoding::encoded_len_varint(value.len() as u64)
                    + value.len()
            })
            .sum();
        self.buffer.reserve(length);
        for (tag, value) in fields {
            if !value.is_empty() {
                encoding::encode_key(tag, encoding::WireType::LengthDelimited, &mut self.buffer);
                encoding::encode_varint(value.len() as u64, &mut self.buffer);
                self.buffer.put_slice(value);
            }
        }
        EncodedLog {
            bytes: self.buffer.split_to(self.buffer.len()).freeze(),
        }
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
    id_prefix: &LogIdPrefix,
    record: &[u8],
    fields: Option<&RecordFields>,
    index: u64,
    collected_at: DateTime<Utc>,
) -> (LogIdText, TimestampText) {
    let read;
    let fields = match fields {
        Some(fields) => Some(fields),
        None => {
            read = read_whole_record_fields(record);
            read.as_ref()
        }
    };
    let text = |range: &Option<Range<usize>>| {
        range
            .clone()
            .and_then(|range| record.get(range))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
    };
    let mut index_digits = [0u8; 20];
    let record_id = fields
        .and_then(|fields| text(&fields.id))
        .map(json_text_or_string)
        .unwrap_or_else(|| Cow::Borrowed(decimal(index, &mut index_digits)));
    let event_time = match context.timestamp {
        TimestampSource::Event => fields
            .and_then(|fields| text(&fields.creation_time))
            .and_then(|raw| parse_creation_time(&json_text_or_string(raw))),
        TimestampSource::Collection => None,
    };
    (
        id_prefix.id(&record_id),
        TimestampText::of(event_time.unwrap_or(collected_at)),
    )
}

/// `CreationTime` as [`parse_api_time`] reads it, with its usual form
/// (`2015-06-29T20:03:19`, optionally `Z`) read without chrono's general parser.
fn parse_creation_time(text: &str) -> Option<DateTime<Utc>> {
    let bytes = text.as_bytes();
    let plain = match bytes {
        [head @ .., b'Z'] if head.len() == 19 => head,
        _ if bytes.len() == 19 => bytes,
        _ => return parse_api_time(text),
    };
    let number = |range: Range<usize>| {
        plain[range].iter().try_fold(0u32, |value, &byte| {
            byte.is_ascii_digit()
                .then(|| value * 10 + u32::from(byte - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    let time = separators
        .iter()
        .all(|&(at, separator)| plain[at] == separator)
        .then(|| {
            let date = NaiveDate::from_ymd_opt(
                i32::try_from(number(0..4)?).ok()?,
                number(5..7)?,
                number(8..10)?,
            )?;
            date.and_hms_opt(number(11..13)?, number(14..16)?, number(17..19)?)
        })
        .flatten();
    // Anything else (a leap second, an invalid date) goes the general way, as before.
    match time {
        Some(time) => Some(time.and_utc()),
        None => parse_api_time(text),
    }
}

/// `value` in decimal, written at the end of `digits` (a u64 has at most 20).
fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &str {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&digits[start..]).unwrap_or_default()
}

/// The SHA-256 state after `utmTenantId|utmTenantId/groupName|uri|`, the text every Log id
/// of one blob starts with ([`log_id`]): a record's id hashes only its own `recordId` on a
/// copy of it, instead of the whole text (about three blocks of four) again.
#[derive(Clone)]
struct LogIdPrefix(Sha256);

impl LogIdPrefix {
    fn new(context: &LogContext, content_uri: &str) -> Self {
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
        Self(hasher)
    }

    /// The Log id of the record whose `recordId` is `record_id`.
    fn id(&self, record_id: &str) -> LogIdText {
        let mut hasher = self.0.clone();
        hasher.update(record_id.as_bytes());
        let mut text = [b'0'; 64];
        // 32 bytes are exactly 64 hex digits: the slice always fits.
        let _ = hex::encode_to_slice(hasher.finalize(), &mut text);
        LogIdText(text)
    }
}

/// `Log.id` as text, on the stack: 64 lowercase hex digits ([`log_id`]).
struct LogIdText([u8; 64]);

impl LogIdText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// `Log.timestamp` as text, on the stack: exactly what chrono's
/// `to_rfc3339_opts(SecondsFormat::AutoSi, true)` writes (`2015-06-29T20:03:19Z`,
/// fractions in 3, 6 or 9 digits when not zero), without its allocation; chrono's own text
/// outside the years 0 to 9999 and for a leap second.
struct TimestampText {
    bytes: [u8; 48],
    length: usize,
}

impl TimestampText {
    fn of(time: DateTime<Utc>) -> Self {
        let mut text = Self {
            bytes: [0; 48],
            length: 0,
        };
        let nanos = time.nanosecond();
        let year = time.year();
        if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
            text.put(time.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
            return text;
        }
        text.digits(year.unsigned_abs(), 4);
        text.put(b"-");
        text.digits(time.month(), 2);
        text.put(b"-");
        text.digits(time.day(), 2);
        text.put(b"T");
        text.digits(time.hour(), 2);
        text.put(b":");
        text.digits(time.minute(), 2);
        text.put(b":");
        text.digits(time.second(), 2);
        if nanos != 0 {
            text.put(b".");
            match (nanos % 1_000_000, nanos % 1_000) {
                (0, _) => text.digits(nanos / 1_000_000, 3),
                (_, 0) => text.digits(nanos / 1_000, 6),
                _ => text.digits(nanos, 9),
            }
        }
        text.put(b"Z");
        text
    }

    fn put(&mut self, bytes: &[u8]) {
        let end = (self.length + bytes.len()).min(self.bytes.len());
        let taken = end - self.length;
        self.bytes[self.length..end].copy_from_slice(&bytes[..taken]);
        self.length = end;
    }

    /// `value` in `width` (at most 9) decimal digits, zero-padded.
    fn digits(&mut self, mut value: u32, width: usize) {
        let mut digits = [b'0'; 9];
        for slot in digits[..width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.put(&digits[..width]);
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.length]).unwrap_or_default()
    }
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
    LogIdPrefix::new(context, content_uri)
        .id(record_id)
        .as_str()
        .to_owned()
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

    /// One Log, encoded by an encoder of its own.
    fn encode_log(
        context: &LogContext,
        record: &[u8],
        fields: Option<&RecordFields>,
        index: u64,
        content_uri: &str,
        collected_at: DateTime<Utc>,
    ) -> EncodedLog {
        LogEncoder::new(context, content_uri, collected_at, 0).push(record, fields, index)
    }

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
            assert_eq!(encoded.id(), log.id.as_bytes());
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
    fn a_batch_encoded_into_one_buffer_is_each_records_encode_log_back_to_back() {
        let context = context(TimestampSource::Event);
        let records = [
            r#"{"Id":"x","CreationTime":"2015-06-29T20:03:19"}"#.to_owned(),
            r#"{"Operation":"no id"}"#.to_owned(),
            format!(r#"{{"Id":"y","P":"{}"}}"#, "é".repeat(300)),
        ];
        let alone: Vec<EncodedLog> = records
            .iter()
            .enumerate()
            .map(|(index, record)| {
                encode_log(
                    &context,
                    record.as_bytes(),
                    None,
                    index as u64,
                    URI,
                    collected(),
                )
            })
            .collect();
        let room = alone.iter().map(|log| log.bytes.len()).sum();
        let mut encoder = LogEncoder::new(&context, URI, collected(), room);
        let batch: Vec<EncodedLog> = records
            .iter()
            .enumerate()
            .map(|(index, record)| encoder.push(record.as_bytes(), None, index as u64))
            .collect();
        for (one, alone) in batch.iter().zip(&alone) {
            assert_eq!(one.bytes, alone.bytes);
            assert_eq!(one.id(), alone.id());
        }
        // One buffer: each Log starts where the one before it ends.
        for pair in batch.windows(2) {
            let end = pair[0].bytes.as_ptr() as usize + pair[0].bytes.len();
            assert_eq!(pair[1].bytes.as_ptr() as usize, end);
        }
        // Past the room given, the encoder allocates more and stays exact.
        let mut small = LogEncoder::new(&context, URI, collected(), 3);
        let logs: Vec<EncodedLog> = records
            .iter()
            .enumerate()
            .map(|(index, record)| small.push(record.as_bytes(), None, index as u64))
            .collect();
        for (one, alone) in logs.iter().zip(&alone) {
            assert_eq!(one.bytes, alone.bytes);
        }
    }

    #[test]
    fn creation_times_read_the_short_way_are_what_parse_api_time_reads() {
        for text in [
            "2015-06-29T20:03:19",
            "2015-06-29T20:03:19Z",
            "2016-02-29T00:00:00",
            "2015-02-29T00:00:00",
            "2015-06-29T24:00:00",
            "2015-06-29T23:59:60",
            "2015-13-01T00:00:00",
            "2015-06-29 20:03:19",
            "2015-06-29T20:03:1x",
            "0000-01-01T00:00:00Z",
            "2015-06-29T20:03:19.5",
            "2015-06-29T20:03:19+02:00",
            "+2015-06-29T20:03:1",
        ] {
            assert_eq!(parse_creation_time(text), parse_api_time(text), "{text}");
        }
    }

    #[test]
    fn timestamps_are_chronos_rfc3339_text_to_the_byte() {
        let mut times: Vec<DateTime<Utc>> = [
            "2015-06-29T20:03:19Z",
            "2015-06-29T20:03:19.120Z",
            "2015-06-29T20:03:19.000120Z",
            "2015-06-29T20:03:19.000000120Z",
            "2015-06-29T20:03:19.123456789Z",
            "0000-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2016-12-31T23:59:60.5Z",
        ]
        .iter()
        .map(|text| DateTime::parse_from_rfc3339(text).unwrap().to_utc())
        .collect();
        // Years chrono writes otherwise (sign, five digits).
        for year in [-1, 10000] {
            let day = chrono::NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
            times.push(day.and_hms_opt(0, 0, 0).unwrap().and_utc());
        }
        // A spread of instants from 1970 to 9999, with each kind of fraction.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            let seconds = (state >> 11) as i64 % 253_402_300_800;
            let nanos = match state % 4 {
                0 => 0,
                1 => (state >> 7) as u32 % 1000 * 1_000_000,
                2 => (state >> 7) as u32 % 1_000_000 * 1000,
                _ => (state >> 7) as u32 % 1_000_000_000,
            };
            times.push(DateTime::from_timestamp(seconds, nanos).unwrap());
        }
        for time in times {
            assert_eq!(
                TimestampText::of(time).as_str(),
                time.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                "{time:?}"
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

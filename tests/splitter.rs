//! The streaming blob splitter against serde_json's own split (property tests), the real
//! audit-record fixtures, truncated bodies, broken structure, elements over the record
//! limit and the async adapter.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use o365_connector::worker::MAX_RECORD_BYTES;
use o365_connector::worker::splitter::{SplitEvent, SplitStream, Splitter};
use proptest::prelude::*;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Splits `body` in chunks of the given sizes (cycled), then finishes.
fn split_with(splitter: Splitter, body: &[u8], chunk_sizes: &[usize]) -> Vec<SplitEvent> {
    let mut splitter = splitter;
    let mut events = Vec::new();
    let mut start = 0;
    for size in chunk_sizes.iter().copied().cycle() {
        if start >= body.len() {
            break;
        }
        let end = (start + size.max(1)).min(body.len());
        events.extend(splitter.feed(Bytes::copy_from_slice(&body[start..end])));
        start = end;
    }
    events.extend(splitter.finish());
    events
}

fn split(body: &[u8], chunk_sizes: &[usize]) -> Vec<SplitEvent> {
    split_with(Splitter::new(MAX_RECORD_BYTES), body, chunk_sizes)
}

/// Chunk sizes from a small deterministic generator, 1 to `max` bytes each.
fn pseudo_random_chunk_sizes(seed: u64, max: usize) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..97)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % max as u64) as usize + 1
        })
        .collect()
}

/// The bytes an indexed event covers in `body`, checking that a Record's bytes are exactly
/// that slice.
fn element_bytes<'a>(body: &'a [u8], event: &SplitEvent) -> Option<(u64, &'a [u8])> {
    let (index, range) = match event {
        SplitEvent::Record {
            index,
            bytes,
            byte_range,
            ..
        } => {
            let slice = &body[byte_range.start as usize..byte_range.end as usize];
            assert_eq!(
                &bytes[..],
                slice,
                "record {index} differs from its byte range"
            );
            (*index, byte_range)
        }
        SplitEvent::BadRecord {
            index, byte_range, ..
        } => (*index, byte_range),
        _ => return None,
    };
    Some((index, &body[range.start as usize..range.end as usize]))
}

// ---------------------------------------------------------------- generated JSON text

fn whitespace() -> impl Strategy<Value = String> {
    "[ \t\r\n]{0,3}"
}

fn json_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9 ,:{}\\[\\]]{1,8}",
        1 => Just("\\\"".to_owned()),
        1 => Just("\\\\".to_owned()),
        1 => Just("\\/".to_owned()),
        1 => Just("\\n\\r\\t\\b\\f".to_owned()),
        1 => Just("\\u00e9".to_owned()),
        1 => Just("\\ud83d\\ude00".to_owned()),
        1 => Just("\\\\\\\"".to_owned()),
        1 => "[é漢字😀ß]{1,3}",
        1 => any::<String>().prop_map(|text| {
            text.chars()
                .filter(|character| !matches!(character, '"' | '\\') && !character.is_control())
                .collect::<String>()
        }),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,30})",
        "-?(0|[1-9][0-9]{0,5})\\.[0-9]{1,8}",
        "-?[1-9][0-9]{0,3}(\\.[0-9]{1,3})?[eE][+-]?[0-9]{1,3}",
    ]
}

fn json_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        json_string(),
        json_number(),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ]
}

fn joined(items: Vec<(String, String, String)>, open: &str, close: &str) -> String {
    let inner = items
        .into_iter()
        .map(|(before, item, after)| format!("{before}{item}{after}"))
        .collect::<Vec<_>>()
        .join(",");
    format!("{open}{inner}{close}")
}

fn json_object_of(value: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let member = (
        whitespace(),
        json_string(),
        whitespace(),
        whitespace(),
        value,
    )
        .prop_map(|(before, key, colon_before, colon_after, value)| {
            (
                before,
                format!("{key}{colon_before}:{colon_after}{value}"),
                String::new(),
            )
        });
    (prop::collection::vec(member, 0..5), whitespace())
        .prop_map(|(members, trailing)| joined(members, "{", &format!("{trailing}}}")))
}

fn json_value() -> BoxedStrategy<String> {
    json_leaf()
        .prop_recursive(4, 48, 5, |inner| {
            let element = (whitespace(), inner.clone(), whitespace());
            prop_oneof![
                prop::collection::vec(element, 0..5).prop_map(|items| joined(items, "[", "]")),
                json_object_of(inner),
            ]
        })
        .boxed()
}

fn json_record() -> impl Strategy<Value = String> {
    json_object_of(json_value())
}

/// A blob: mostly objects (records), sometimes another value (a bad record).
fn json_blob() -> impl Strategy<Value = String> {
    let element = prop_oneof![
        6 => json_record(),
        1 => json_value(),
    ];
    let spaced = (whitespace(), element, whitespace());
    (
        whitespace(),
        prop::collection::vec(spaced, 0..12),
        whitespace(),
    )
        .prop_map(|(before, items, after)| format!("{before}{}{after}", joined(items, "[", "]")))
}

/// Checks a split against serde_json's: same elements, same exact bytes, a Record exactly
/// when the element is an object, and a clean end.
fn assert_matches_serde(body: &[u8], events: &[SplitEvent]) {
    let text = std::str::from_utf8(body).expect("generated text is UTF-8");
    let expected: Vec<Box<RawValue>> = serde_json::from_str(text).expect("generated valid JSON");
    let elements: Vec<(u64, &[u8])> = events
        .iter()
        .filter_map(|event| element_bytes(body, event))
        .collect();
    assert_eq!(
        elements.len(),
        expected.len(),
        "element count, events {events:?}"
    );
    for (position, (raw, (index, bytes))) in expected.iter().zip(&elements).enumerate() {
        assert_eq!(*index, position as u64);
        assert_eq!(raw.get().as_bytes(), *bytes, "element {position}");
        let is_record = matches!(events[position], SplitEvent::Record { .. });
        assert_eq!(
            is_record,
            raw.get().starts_with('{'),
            "element {position} kind"
        );
    }
    assert_eq!(
        events.last(),
        Some(&SplitEvent::Complete {
            records: expected.len() as u64
        })
    );
}

/// Elements that are delimited fine (balanced brackets and quotes) but are not valid JSON.
fn invalid_but_delimited_element() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#"{"a" 1}"#,
        r#"{"a":01}"#,
        r#"{"k":"\x"}"#,
        r#"{"a":[1,]}"#,
        r#"{"a":1,}"#,
        r#"{,}"#,
        r#"{"a":tru}"#,
        r#"{"s":"\u12"}"#,
        "{\"raw control\":\"\u{1}\"}",
        r#"{"a":"]}"}"#,
        r#"[1 2]"#,
        r#"-"#,
        r#"nul"#,
    ])
    .prop_map(str::to_owned)
}

/// A blob mixing records, other values and invalid elements, with the elements kept apart
/// so the expected split is known without parsing.
fn mixed_blob() -> impl Strategy<Value = (String, Vec<String>)> {
    let element = prop_oneof![
        4 => json_record(),
        1 => json_value(),
        2 => invalid_but_delimited_element(),
    ];
    prop::collection::vec((whitespace(), element, whitespace()), 0..10).prop_map(|items| {
        let elements = items
            .iter()
            .map(|(_, element, _)| element.clone())
            .collect();
        (joined(items, "[", "]"), elements)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn invalid_elements_are_bad_records_and_every_other_element_still_comes_out(
        (blob, elements) in mixed_blob(),
        chunk_sizes in prop::collection::vec(1usize..40, 1..20),
    ) {
        let events = split(blob.as_bytes(), &chunk_sizes);
        let found: Vec<(u64, &[u8], bool)> = events
            .iter()
            .filter_map(|event| {
                let (index, bytes) = element_bytes(blob.as_bytes(), event)?;
                Some((index, bytes, matches!(event, SplitEvent::Record { .. })))
            })
            .collect();
        prop_assert_eq!(found.len(), elements.len(), "events {:?}", events);
        for (position, (element, (index, bytes, is_record))) in elements.iter().zip(&found).enumerate() {
            prop_assert_eq!(*index, position as u64);
            prop_assert_eq!(element.as_bytes(), *bytes);
            let valid_object = element.starts_with('{')
                && serde_json::from_str::<serde::de::IgnoredAny>(element).is_ok();
            prop_assert_eq!(*is_record, valid_object, "element {}: {}", position, element);
        }
        prop_assert_eq!(events.last(), Some(&SplitEvent::Complete { records: elements.len() as u64 }));
    }

    #[test]
    fn random_arrays_split_like_serde_json_with_random_chunks(
        blob in json_blob(),
        chunk_sizes in prop::collection::vec(1usize..40, 1..20),
    ) {
        let events = split(blob.as_bytes(), &chunk_sizes);
        assert_matches_serde(blob.as_bytes(), &events);
    }

    #[test]
    fn random_arrays_split_like_serde_json_one_byte_at_a_time(blob in json_blob()) {
        let events = split(blob.as_bytes(), &[1]);
        assert_matches_serde(blob.as_bytes(), &events);
    }

    #[test]
    fn random_arrays_split_like_serde_json_in_one_chunk(blob in json_blob()) {
        let events = split(blob.as_bytes(), &[usize::MAX]);
        assert_matches_serde(blob.as_bytes(), &events);
    }

    #[test]
    fn events_do_not_depend_on_chunk_boundaries(
        body in prop::collection::vec(prop::sample::select(b"[]{}\",:\\ \n1a\xff".to_vec()), 0..60),
        chunk_sizes in prop::collection::vec(1usize..8, 1..8),
    ) {
        let body = [b"[".as_slice(), &body].concat();
        let whole = split(&body, &[usize::MAX]);
        prop_assert_eq!(&split(&body, &chunk_sizes), &whole);
        prop_assert_eq!(&split(&body, &[1]), &whole);
    }

    #[test]
    fn arbitrary_bytes_never_panic_nor_yield_a_record_that_is_not_its_slice(
        body in prop::collection::vec(any::<u8>(), 0..200),
        chunk_sizes in prop::collection::vec(1usize..16, 1..8),
    ) {
        let events = split(&body, &chunk_sizes);
        for event in &events {
            element_bytes(&body, event);
        }
        let ends = events.iter().filter(|event| matches!(
            event,
            SplitEvent::Complete { .. } | SplitEvent::Truncated { .. } | SplitEvent::Unrecoverable { .. }
        )).count();
        prop_assert_eq!(ends, 1, "exactly one ending event: {:?}", events);
    }
}

// ---------------------------------------------------------------- fixtures

fn fixture_lines(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/events")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("reading {}: {error}", path.display()))
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

fn fixture_names() -> Vec<String> {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/events");
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .expect("fixtures directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name.ends_with(".ndjson"))
        .collect();
    names.sort();
    names
}

fn array_of(lines: &[String]) -> String {
    format!("[{}]", lines.join(",\n"))
}

#[test]
fn every_fixture_record_comes_out_byte_identical_under_random_chunking() {
    let names = fixture_names();
    assert!(names.len() >= 10, "fixtures found: {names:?}");
    for name in names
        .iter()
        .filter(|name| *name != "invalid-json-record.ndjson")
    {
        let lines = fixture_lines(name);
        let body = array_of(&lines);
        for seed in 0..12 {
            let events = split(body.as_bytes(), &pseudo_random_chunk_sizes(seed, 700));
            let records: Vec<&[u8]> = events
                .iter()
                .filter_map(|event| match event {
                    SplitEvent::Record { bytes, .. } => Some(&bytes[..]),
                    _ => None,
                })
                .collect();
            let expected: Vec<&[u8]> = lines.iter().map(|line| line.as_bytes()).collect();
            assert_eq!(records, expected, "{name}, seed {seed}");
            assert_eq!(
                events.last(),
                Some(&SplitEvent::Complete {
                    records: lines.len() as u64
                }),
                "{name}"
            );
        }
        let one_byte_at_a_time = split(body.as_bytes(), &[1]);
        assert_eq!(one_byte_at_a_time.len(), lines.len() + 1, "{name}");
    }
}

#[test]
fn invalid_fixture_record_is_a_bad_record_between_good_ones() {
    let invalid = fixture_lines("invalid-json-record.ndjson").remove(0);
    let good = fixture_lines("25-ms-teams.ndjson");
    let lines = vec![good[0].clone(), invalid.clone(), good[1].clone()];
    let body = array_of(&lines);
    for seed in 0..8 {
        let events = split(body.as_bytes(), &pseudo_random_chunk_sizes(seed, 300));
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(
            matches!(&events[0], SplitEvent::Record { index: 0, bytes, .. } if bytes[..] == *good[0].as_bytes())
        );
        let SplitEvent::BadRecord {
            index,
            byte_range,
            sha256,
            reason,
        } = &events[1]
        else {
            panic!("expected a bad record, got {:?}", events[1]);
        };
        assert_eq!(*index, 1);
        assert_eq!(
            &body.as_bytes()[byte_range.start as usize..byte_range.end as usize],
            invalid.as_bytes()
        );
        assert_eq!(sha256[..], Sha256::digest(invalid.as_bytes())[..]);
        assert!(reason.starts_with("invalid JSON at byte "), "{reason}");
        for secretish in ["QueryTime", "asr@", "testsiem", "GrantAdminPermission"] {
            assert!(
                !reason.contains(secretish),
                "reason quotes the record: {reason}"
            );
        }
        assert!(
            matches!(&events[2], SplitEvent::Record { index: 2, bytes, .. } if bytes[..] == *good[1].as_bytes())
        );
        assert_eq!(events[3], SplitEvent::Complete { records: 3 });
    }
}

// ---------------------------------------------------------------- truncation

#[test]
fn a_body_cut_anywhere_is_truncated_or_unrecoverable_and_never_yields_a_partial_record() {
    let body = br#"[ {"a":"x]\"y}","b":[1,{"c":null}]}, {"d":"\\"} ,7,{"e":1e5}]"#;
    let full = split(body, &[usize::MAX]);
    assert_eq!(full.last(), Some(&SplitEvent::Complete { records: 4 }));
    for cut in 0..body.len() {
        for chunk_sizes in [&[1usize][..], &[3, 5], &[usize::MAX]] {
            let events = split(&body[..cut], chunk_sizes);
            let last = events.last().expect("an ending event");
            assert!(
                matches!(last, SplitEvent::Truncated { offset } if *offset == cut as u64)
                    || matches!(last, SplitEvent::Unrecoverable { .. }),
                "cut at {cut}: {events:?}"
            );
            for event in &events[..events.len() - 1] {
                assert!(
                    full.contains(event),
                    "cut at {cut}: {event:?} is not in the full split"
                );
            }
        }
    }
}

// ---------------------------------------------------------------- garbage

fn unrecoverable_offset(events: &[SplitEvent]) -> (u64, String) {
    match events.last() {
        Some(SplitEvent::Unrecoverable { offset, reason }) => (*offset, reason.clone()),
        other => panic!("expected Unrecoverable last, got {other:?} in {events:?}"),
    }
}

#[test]
fn a_top_level_object_is_unrecoverable_at_byte_zero() {
    let events = split(br#"{"a":1}"#, &[usize::MAX]);
    assert_eq!(events.len(), 1);
    let (offset, reason) = unrecoverable_offset(&events);
    assert_eq!(offset, 0);
    assert!(reason.contains("not a JSON array"), "{reason}");
}

#[test]
fn non_object_elements_are_bad_records_and_indices_go_on() {
    let events = split(br#"[1, "two", [3], {"four":4}, null, true]"#, &[2]);
    let kinds: Vec<(u64, bool)> = events
        .iter()
        .filter_map(|event| match event {
            SplitEvent::Record { index, .. } => Some((*index, true)),
            SplitEvent::BadRecord { index, reason, .. } => {
                assert!(reason.starts_with("not a JSON object"), "{reason}");
                Some((*index, false))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, false),
            (1, false),
            (2, false),
            (3, true),
            (4, false),
            (5, false)
        ]
    );
    assert_eq!(events.last(), Some(&SplitEvent::Complete { records: 6 }));
}

#[test]
fn an_extra_closing_brace_is_unrecoverable_after_the_record_before_it() {
    let events = split(br#"[{"a":1}}]"#, &[1]);
    assert!(matches!(events[0], SplitEvent::Record { index: 0, .. }));
    let (offset, reason) = unrecoverable_offset(&events);
    assert_eq!(offset, 8);
    assert!(reason.contains("expected `,` or `]`"), "{reason}");
    assert_eq!(events.len(), 2);
}

#[test]
fn two_objects_without_a_comma_are_unrecoverable_at_the_second() {
    let events = split(br#"[{}{}]"#, &[usize::MAX]);
    assert!(matches!(events[0], SplitEvent::Record { index: 0, .. }));
    assert_eq!(unrecoverable_offset(&events).0, 3);
}

#[test]
fn a_bracket_closing_the_wrong_container_is_unrecoverable() {
    let events = split(br#"[{"a":[1}]"#, &[usize::MAX]);
    let (offset, reason) = unrecoverable_offset(&events);
    assert_eq!(offset, 8);
    assert!(reason.contains("found `}` where `]` closes"), "{reason}");
    assert_eq!(events.len(), 1);
}

#[test]
fn trailing_junk_after_the_array_is_unrecoverable_after_its_records() {
    let events = split(b"[{\"a\":1},{\"b\":2}]  \n x", &[4]);
    assert!(matches!(events[0], SplitEvent::Record { index: 0, .. }));
    assert!(matches!(events[1], SplitEvent::Record { index: 1, .. }));
    let (offset, reason) = unrecoverable_offset(&events);
    assert_eq!(offset, 21);
    assert!(reason.contains("trailing data"), "{reason}");
    assert!(!reason.contains('x'), "{reason}");
}

#[test]
fn trailing_whitespace_after_the_array_is_fine() {
    let events = split(b" \r\n[{}] \n\t", &[1]);
    assert_eq!(events.last(), Some(&SplitEvent::Complete { records: 1 }));
}

#[test]
fn a_leading_utf8_bom_is_skipped_even_split_across_chunks() {
    let body = b"\xEF\xBB\xBF[{\"a\":1}]";
    for chunk_sizes in [&[1usize][..], &[2], &[usize::MAX]] {
        let events = split(body, chunk_sizes);
        assert!(
            matches!(&events[0], SplitEvent::Record { byte_range, .. } if *byte_range == (4..11)),
            "{events:?}"
        );
        assert_eq!(events[1], SplitEvent::Complete { records: 1 });
    }
}

#[test]
fn a_bom_anywhere_else_or_incomplete_is_unrecoverable() {
    assert_eq!(unrecoverable_offset(&split(b" \xEF\xBB\xBF[]", &[1])).0, 1);
    assert_eq!(unrecoverable_offset(&split(b"\xEF\xBB[]", &[1])).0, 2);
}

#[test]
fn an_empty_array_is_complete_with_no_records() {
    assert_eq!(
        split(b"[]", &[1]),
        vec![SplitEvent::Complete { records: 0 }]
    );
    assert_eq!(
        split(b" [ \n ] ", &[1]),
        vec![SplitEvent::Complete { records: 0 }]
    );
}

#[test]
fn an_empty_or_whitespace_only_body_is_truncated() {
    assert_eq!(split(b"", &[1]), vec![SplitEvent::Truncated { offset: 0 }]);
    assert_eq!(
        split(b" \n\t ", &[1]),
        vec![SplitEvent::Truncated { offset: 4 }]
    );
}

#[test]
fn a_trailing_or_doubled_comma_is_unrecoverable() {
    let trailing = split(br#"[{},]"#, &[usize::MAX]);
    assert!(matches!(trailing[0], SplitEvent::Record { .. }));
    assert_eq!(unrecoverable_offset(&trailing).0, 4);
    assert_eq!(unrecoverable_offset(&split(br#"[{},,{}]"#, &[1])).0, 4);
    assert_eq!(unrecoverable_offset(&split(br#"[,{}]"#, &[1])).0, 1);
}

#[test]
fn invalid_utf8_inside_a_string_is_a_bad_record_and_the_next_record_comes_out() {
    let body = b"[{\"a\":\"\xff\xfe\"},{\"b\":1}]";
    let events = split(body, &[3]);
    match &events[0] {
        SplitEvent::BadRecord { index, reason, .. } => {
            assert_eq!(*index, 0);
            assert_eq!(reason, "invalid UTF-8 at byte 6 of the record");
        }
        other => panic!("expected a bad record, got {other:?}"),
    }
    assert!(matches!(events[1], SplitEvent::Record { index: 1, .. }));
    assert_eq!(events[2], SplitEvent::Complete { records: 2 });
}

#[test]
fn records_around_invalid_utf8_in_one_chunk_keep_their_fields_and_exact_bytes() {
    // The chunk's text is checked for UTF-8 once; the check stops at the bad byte and starts
    // again after it, so the records on both sides take the one-pass path (fields read).
    let mut body = "[{\"Id\":\"é\"},{\"x\":\"\"},{\"Id\":\"c\"}]"
        .as_bytes()
        .to_vec();
    // Inside the second record's empty string.
    let bad = body.iter().position(|&byte| byte == b'x').unwrap() + 4;
    body.insert(bad, 0xff);
    let events = split(&body, &[usize::MAX]);
    let records: Vec<(u64, &[u8], bool)> = events
        .iter()
        .filter_map(|event| match event {
            SplitEvent::Record {
                index,
                bytes,
                fields,
                ..
            } => Some((*index, bytes.as_ref(), fields.is_some())),
            _ => None,
        })
        .collect();
    assert_eq!(
        records,
        vec![
            (0, "{\"Id\":\"é\"}".as_bytes(), true),
            (2, br#"{"Id":"c"}"#.as_slice(), true)
        ]
    );
    assert!(
        matches!(&events[1], SplitEvent::BadRecord { index: 1, reason, .. } if reason.starts_with("invalid UTF-8")),
        "{events:?}"
    );
}

#[test]
fn invalid_json_inside_well_delimited_braces_is_a_bad_record() {
    let events = split(br#"[{"a" 1},{"b":01},{"c":"\q"},{"d":[1,]}]"#, &[5]);
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|event| match event {
            SplitEvent::BadRecord { reason, .. } => Some(reason.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons.len(), 4, "{events:?}");
    assert_eq!(
        reasons[0],
        "invalid JSON at byte 5 of the record: expected `:`"
    );
    assert!(
        reasons
            .iter()
            .all(|reason| reason.starts_with("invalid JSON at byte "))
    );
    assert_eq!(events.last(), Some(&SplitEvent::Complete { records: 4 }));
}

#[test]
fn debug_of_a_record_shows_its_length_not_its_bytes() {
    let events = split(br#"[{"password":"hunter2"}]"#, &[usize::MAX]);
    let debug = format!("{:?}", events[0]);
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(debug.contains("len: 22"), "{debug}");
}

#[test]
fn records_inside_one_chunk_are_slices_of_it() {
    let chunk = Bytes::from_static(br#"[{"a":1},{"b":2}]"#);
    let mut splitter = Splitter::new(MAX_RECORD_BYTES);
    let events = splitter.feed(chunk.clone());
    let SplitEvent::Record { bytes, .. } = &events[1] else {
        panic!("{events:?}");
    };
    assert_eq!(bytes.as_ptr(), chunk[9..].as_ptr());
}

// ---------------------------------------------------------------- async adapter

#[tokio::test]
async fn split_stream_reads_one_chunk_at_a_time() {
    let polled = Arc::new(AtomicUsize::new(0));
    let counter = polled.clone();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(br#"[{"a":1},{"b":2},"#)),
        Ok(Bytes::from_static(br#"{"c":3}"#)),
        Ok(Bytes::from_static(b"]")),
    ];
    let body = futures_util::stream::iter(chunks).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let mut stream = SplitStream::new(body, Splitter::new(MAX_RECORD_BYTES));
    let first = stream.next_event().await.expect("event").expect("no error");
    assert!(matches!(first, SplitEvent::Record { index: 0, .. }));
    assert_eq!(polled.load(Ordering::SeqCst), 1);
    let second = stream.next_event().await.expect("event").expect("no error");
    assert!(matches!(second, SplitEvent::Record { index: 1, .. }));
    assert_eq!(polled.load(Ordering::SeqCst), 1);
    let third = stream.next_event().await.expect("event").expect("no error");
    assert!(matches!(third, SplitEvent::Record { index: 2, .. }));
    assert_eq!(polled.load(Ordering::SeqCst), 2);
    let rest: Vec<SplitEvent> = stream.map(|event| event.expect("no error")).collect().await;
    assert_eq!(rest, vec![SplitEvent::Complete { records: 3 }]);
}

#[tokio::test]
async fn split_stream_yields_a_transport_error_and_ends() {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(br#"[{"a":1},{"b""#)),
        Err(std::io::Error::other("connection reset")),
        Ok(Bytes::from_static(b":2}]")),
    ];
    let mut stream = SplitStream::new(
        futures_util::stream::iter(chunks),
        Splitter::new(MAX_RECORD_BYTES),
    );
    assert!(matches!(
        stream.next_event().await,
        Some(Ok(SplitEvent::Record { index: 0, .. }))
    ));
    assert!(matches!(stream.next_event().await, Some(Err(_))));
    assert!(stream.next_event().await.is_none());
}

#[tokio::test]
async fn split_stream_stops_reading_after_an_unrecoverable() {
    let polled = Arc::new(AtomicUsize::new(0));
    let counter = polled.clone();
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"[{}}")),
        Ok(Bytes::from_static(b"more")),
    ];
    let body = futures_util::stream::iter(chunks).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let events: Vec<SplitEvent> = SplitStream::new(body, Splitter::new(MAX_RECORD_BYTES))
        .map(|event| event.expect("no error"))
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(
        events[1],
        SplitEvent::Unrecoverable { offset: 3, .. }
    ));
    assert_eq!(polled.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn split_stream_reports_truncation_when_the_body_ends_early() {
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::from_static(br#"[{"a":1},{"b":"#))];
    let events: Vec<SplitEvent> = SplitStream::new(
        futures_util::stream::iter(chunks),
        Splitter::new(MAX_RECORD_BYTES),
    )
    .map(|event| event.expect("no error"))
    .collect()
    .await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1], SplitEvent::Truncated { offset: 14 });
}

// ---------------------------------------------------------------- over the record limit

/// Feeds `body` in `chunk_bytes` slices of it, then finishes; also returns the most the
/// splitter held for an element after any chunk.
fn split_watching_memory(
    max_element_bytes: usize,
    body: &Bytes,
    chunk_bytes: usize,
) -> (Vec<SplitEvent>, usize) {
    let mut splitter = Splitter::new(max_element_bytes);
    let mut events = Vec::new();
    let mut most_held = 0;
    for start in (0..body.len()).step_by(chunk_bytes) {
        let end = (start + chunk_bytes).min(body.len());
        events.extend(splitter.feed(body.slice(start..end)));
        most_held = most_held.max(splitter.buffered_bytes());
    }
    events.extend(splitter.finish());
    (events, most_held)
}

/// A valid record of at least `min_bytes` whose strings hold what could fool a scanner:
/// brackets and braces, escaped quotes and backslashes (`\\` before a `\"`), `\u` escapes
/// and multi-byte characters.
fn record_of_at_least(min_bytes: usize) -> String {
    let item = r#"{"s":"x]}\"\\[{\\\"é漢😀\u00e9","n":[1,{"k":"}]"}]},"#;
    let mut record = String::with_capacity(min_bytes + 2 * item.len());
    record.push_str(r#"{"items":["#);
    while record.len() < min_bytes {
        record.push_str(item);
    }
    record.push_str("{}]}");
    record
}

fn oversized_event(index: u64, start: usize, element: &str) -> SplitEvent {
    SplitEvent::Oversized {
        index,
        byte_range: start as u64..(start + element.len()) as u64,
        sha256: Sha256::digest(element.as_bytes()).into(),
        size: element.len() as u64,
    }
}

#[test]
fn a_20_mib_record_is_oversized_in_bounded_memory_and_the_record_after_it_comes_out() {
    let big = record_of_at_least(20 * 1024 * 1024);
    assert!(serde_json::from_str::<serde::de::IgnoredAny>(&big).is_ok());
    let (first, last) = (r#"{"Id":"first"}"#, r#"{"Id":"last"}"#);
    let body = Bytes::from(format!("[{first},\n{big} ,{last}]"));
    let expected_oversized = oversized_event(1, 1 + first.len() + 2, &big);
    for chunk_bytes in [1, 7, 64 * 1024] {
        let (events, most_held) = split_watching_memory(MAX_RECORD_BYTES, &body, chunk_bytes);
        assert_eq!(events.len(), 4, "{chunk_bytes}-byte chunks: {events:?}");
        assert!(
            matches!(&events[0], SplitEvent::Record { index: 0, bytes, .. } if bytes[..] == *first.as_bytes()),
            "{events:?}"
        );
        assert_eq!(events[1], expected_oversized, "{chunk_bytes}-byte chunks");
        assert!(
            matches!(&events[2], SplitEvent::Record { index: 2, bytes, .. } if bytes[..] == *last.as_bytes()),
            "{events:?}"
        );
        assert_eq!(events[3], SplitEvent::Complete { records: 3 });
        assert!(
            most_held <= MAX_RECORD_BYTES,
            "{chunk_bytes}-byte chunks: held {most_held} bytes, over the limit"
        );
    }
}

#[test]
fn an_element_over_the_limit_is_oversized_and_the_next_record_comes_out() {
    let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(200));
    let body = format!(r#"[{{"small":1}}, {big}, {{"after":1}}]"#);
    for chunk_sizes in [&[1usize][..], &[64], &[usize::MAX]] {
        let events = split_with(Splitter::new(100), body.as_bytes(), chunk_sizes);
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(events[0], SplitEvent::Record { index: 0, .. }));
        assert_eq!(events[1], oversized_event(1, 14, &big));
        assert!(matches!(events[2], SplitEvent::Record { index: 2, .. }));
        assert_eq!(events[3], SplitEvent::Complete { records: 3 });
    }
    let exactly_at_limit = format!(r#"[{{"a":"{}"}}]"#, "x".repeat(92));
    let events = split_with(Splitter::new(100), exactly_at_limit.as_bytes(), &[7]);
    assert!(matches!(events[0], SplitEvent::Record { .. }), "{events:?}");
}

#[test]
fn strings_in_an_oversized_element_are_scanned_across_every_chunk_boundary() {
    // `]`, `}` and `"` inside strings, escaped quotes, an escaped backslash right before a
    // closing quote, a `\u` escape and a four-byte character: a chunk may cut any of them.
    let big = r#"{"a":"\\","b":"\"]}","c":["}",{"d":"\\\"[😀"}],"e":"\u005d"}"#;
    let body = format!(r#"[{big},{{"next":"]"}}]"#);
    let limit = 16;
    let expected = oversized_event(0, 1, big);
    for cut in 0..=body.len() {
        let events = split_with(Splitter::new(limit), body.as_bytes(), &[cut, body.len()]);
        assert_eq!(events.len(), 3, "cut at {cut}: {events:?}");
        assert_eq!(events[0], expected, "cut at {cut}");
        assert!(
            matches!(&events[1], SplitEvent::Record { index: 1, bytes, .. } if bytes[..] == *br#"{"next":"]"}"#),
            "cut at {cut}: {events:?}"
        );
        assert_eq!(events[2], SplitEvent::Complete { records: 2 });
    }
    assert_eq!(
        split_with(Splitter::new(limit), body.as_bytes(), &[1])[0],
        expected
    );
}

#[test]
fn an_element_over_the_limit_still_open_at_a_clean_end_is_unrecoverable_not_truncated() {
    let unclosed_string = format!(r#"[{{"a":1}},{{"b":"{}"#, "x".repeat(200));
    let unclosed_bracket = format!(r#"[{{"a":1}},{{"b":[{}"#, "1,".repeat(100));
    for body in [unclosed_string, unclosed_bracket] {
        for chunk_sizes in [&[1usize][..], &[33], &[usize::MAX]] {
            let events = split_with(Splitter::new(100), body.as_bytes(), chunk_sizes);
            assert!(matches!(events[0], SplitEvent::Record { index: 0, .. }));
            let (offset, reason) = unrecoverable_offset(&events);
            assert_eq!(offset, 9, "{events:?}");
            assert!(
                reason.contains("element 1 starting at byte 9 is still open when the body ends"),
                "{reason}"
            );
            assert!(reason.contains("limit of 100 bytes"), "{reason}");
            assert_eq!(events.len(), 2);
        }
    }
    let within_limit = br#"[{"a":1},{"b":"xx"#;
    assert_eq!(
        split(within_limit, &[3]).last(),
        Some(&SplitEvent::Truncated {
            offset: within_limit.len() as u64
        })
    );
}

#[test]
fn nesting_deeper_than_the_limit_is_counted_and_the_element_still_delimited() {
    let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
    let body = format!(r#"[{deep},{{"next":1}}]"#);
    for chunk_sizes in [&[1usize][..], &[5], &[usize::MAX]] {
        let events = split_with(Splitter::new(16), body.as_bytes(), chunk_sizes);
        assert_eq!(events[0], oversized_event(0, 1, &deep), "{events:?}");
        assert!(matches!(events[1], SplitEvent::Record { index: 1, .. }));
        assert_eq!(events[2], SplitEvent::Complete { records: 2 });
    }
}

#[test]
fn deep_nesting_within_the_limit_is_a_record_at_any_depth() {
    for depth in [129, 500, 100_000] {
        let record = format!(r#"{{"a":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
        let body = format!("[{record}]");
        for chunk_sizes in [&[4096usize][..], &[usize::MAX]] {
            let events = split(body.as_bytes(), chunk_sizes);
            assert!(
                matches!(&events[0], SplitEvent::Record { index: 0, bytes, .. } if bytes.len() == record.len()),
                "depth {depth}: {events:?}"
            );
            assert_eq!(events[1], SplitEvent::Complete { records: 1 });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn elements_over_a_random_limit_are_oversized_and_the_others_split_as_usual(
        (blob, elements) in mixed_blob(),
        limit in 1usize..64,
        chunk_sizes in prop::collection::vec(1usize..40, 1..20),
    ) {
        let events = split_with(Splitter::new(limit), blob.as_bytes(), &chunk_sizes);
        let found: Vec<(u64, &[u8], bool)> = events
            .iter()
            .filter_map(|event| match event {
                SplitEvent::Oversized { index, byte_range, sha256, size } => {
                    let bytes = &blob.as_bytes()[byte_range.start as usize..byte_range.end as usize];
                    assert_eq!(*size, bytes.len() as u64);
                    assert_eq!(sha256[..], Sha256::digest(bytes)[..]);
                    Some((*index, bytes, true))
                }
                other => element_bytes(blob.as_bytes(), other).map(|(index, bytes)| (index, bytes, false)),
            })
            .collect();
        prop_assert_eq!(found.len(), elements.len(), "events {:?}", events);
        for (position, (element, (index, bytes, oversized))) in elements.iter().zip(&found).enumerate() {
            prop_assert_eq!(*index, position as u64);
            prop_assert_eq!(element.as_bytes(), *bytes);
            prop_assert_eq!(*oversized, element.len() > limit, "element {}: {}", position, element);
        }
        prop_assert_eq!(events.last(), Some(&SplitEvent::Complete { records: elements.len() as u64 }));
    }
}

//! Fuzz entry points: each takes arbitrary bytes and drives one parser of untrusted or
//! operator-written input through the production code path, so the cargo-fuzz targets
//! (`fuzz/fuzz_targets/`) and the corpus replay test (`tests/fuzz_corpus.rs`) exercise
//! exactly what the service runs. Hidden from the documentation: not an API.
//!
//! Contract: no function here panics on any input, and none allocates more than a bounded
//! multiple of its input. A panic is either a production bug or a broken invariant checked
//! here (each `assert!` names the property it guards).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use bytes::Bytes;
use reqwest::Url;
use sha2::{Digest, Sha256};

use crate::config::{Config, ContentType};
use crate::utmstack::crypto::DerivedKey;
use crate::utmstack::{self, UtmstackEnvironment, files};
use crate::webhook::{self, WebhookTenant};
use crate::worker::splitter::{SplitEvent, Splitter, validate_record};

/// The tenant of the webhook target: the one of Microsoft's documented notification, so its
/// sample (in the seed corpus) has items that pass validation.
const WEBHOOK_TENANT_ID: &str = "f28ab78a-d401-4060-8012-736e373933eb";
/// The app of the webhook target's tenant.
const WEBHOOK_CLIENT_ID: &str = "00000000-0000-4000-8000-000000000001";
/// The encryption key of the UTMStack target (the one `tests/utmstack.rs` encrypts with).
const UTMSTACK_ENCRYPTION_KEY: &str = "utmstack-encryption-key";
/// The element cap the splitter target uses when the control byte asks for a small one.
const SMALL_MAX_ELEMENT_BYTES: usize = 64;

/// Derived once: PBKDF2 with 65,536 rounds would otherwise dominate every execution.
static UTMSTACK_KEY: LazyLock<DerivedKey> =
    LazyLock::new(|| DerivedKey::derive(UTMSTACK_ENCRYPTION_KEY));

/// A webhook notification body, parsed and validated as the handler does
/// ([`webhook::parse_notifications`]) for a tenant on the commercial cloud.
pub fn webhook_body(data: &[u8]) {
    let tenant = WebhookTenant {
        tenant_id: WEBHOOK_TENANT_ID.to_string(),
        client_id: WEBHOOK_CLIENT_ID.to_string(),
        content_types: HashSet::from([ContentType::AuditSharePoint, ContentType::AuditExchange]),
        api_base: Url::parse("https://manage.office.com").expect("constant URL"),
    };
    let Ok(items) = webhook::parse_notifications(&tenant, data) else {
        return;
    };
    for content in items.into_iter().flatten() {
        // What validation promises the workers: the token goes only to the tenant's API host.
        let uri = Url::parse(&content.content_uri).expect("a valid item's contentUri is a URL");
        assert_eq!(
            uri.origin(),
            tenant.api_base.origin(),
            "a valid item's contentUri is on the tenant's API host"
        );
        assert_eq!(content.tenant_id, tenant.tenant_id);
        assert!(!content.content_id.trim().is_empty(), "contentId not blank");
    }
}

/// A blob body fed to [`Splitter`] in chunks, then finished. Input layout: byte 0 is a
/// control byte (`k = byte & 7` chunk-size bytes follow; bit `0x08` caps elements at
/// [`SMALL_MAX_ELEMENT_BYTES`]); then the `k` chunk sizes (each `size + 1`, cycled; `k = 0`
/// is one chunk); then the body.
///
/// Checked: every record's bytes are the body's at its `byte_range`, fit the cap and pass
/// [`validate_record`], a bad record's fail it; an oversized element's size, range and
/// SHA-256 are its bytes' and it is over the cap; indices count from 0 without gaps;
/// nothing follows an Unrecoverable; and when the body is a JSON array of objects
/// (serde_json's word), the records are exactly its elements within the cap, byte for
/// byte, the oversized ones exactly those over it, then `Complete`.
pub fn splitter(data: &[u8]) {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let size_count = usize::from(control & 0x07).min(rest.len());
    let (sizes, body) = rest.split_at(size_count);
    let max_element_bytes = if control & 0x08 != 0 {
        SMALL_MAX_ELEMENT_BYTES
    } else {
        crate::worker::MAX_RECORD_BYTES
    };
    let body = Bytes::copy_from_slice(body);
    let mut splitter = Splitter::new(max_element_bytes);
    let mut events = Vec::new();
    let mut start = 0;
    for size in sizes.iter().cycle() {
        if start >= body.len() {
            break;
        }
        let end = body.len().min(start + usize::from(*size) + 1);
        events.extend(splitter.feed(body.slice(start..end)));
        start = end;
    }
    if start < body.len() {
        events.extend(splitter.feed(body.slice(start..)));
    }
    events.extend(splitter.finish());
    check_split_events(&body, &events, max_element_bytes);
    check_split_matches_serde_json(&body, &events, max_element_bytes);
}

/// The invariants that hold for any body.
fn check_split_events(body: &[u8], events: &[SplitEvent], max_element_bytes: usize) {
    let mut next_index = 0;
    for (position, event) in events.iter().enumerate() {
        let is_last = position + 1 == events.len();
        match event {
            SplitEvent::Record {
                index,
                bytes,
                byte_range,
                ..
            } => {
                assert_eq!(*index, next_index, "indices count every element");
                next_index += 1;
                assert_eq!(
                    &body[range(byte_range)],
                    &bytes[..],
                    "record bytes are the body's"
                );
                assert!(validate_record(bytes).is_ok(), "a record is valid");
                assert!(bytes.len() <= max_element_bytes, "a record fits the cap");
            }
            SplitEvent::Oversized {
                index,
                byte_range,
                sha256,
                size,
            } => {
                assert_eq!(*index, next_index, "indices count every element");
                next_index += 1;
                let element = &body[range(byte_range)];
                assert_eq!(element.len() as u64, *size, "the size is the range's");
                assert!(
                    element.len() > max_element_bytes,
                    "oversized is over the cap"
                );
                assert_eq!(
                    sha256[..],
                    Sha256::digest(element)[..],
                    "the SHA-256 is the element's"
                );
            }
            SplitEvent::BadRecord {
                index, byte_range, ..
            } => {
                assert_eq!(*index, next_index, "indices count every element");
                next_index += 1;
                assert!(
                    validate_record(&body[range(byte_range)]).is_err(),
                    "a bad record is invalid"
                );
            }
            SplitEvent::Unrecoverable { .. } => assert!(is_last, "nothing follows Unrecoverable"),
            SplitEvent::Complete { records } => {
                assert!(is_last, "Complete ends the events");
                assert_eq!(*records, next_index, "Complete counts every element");
            }
            SplitEvent::Truncated { offset } => {
                assert!(is_last, "Truncated ends the events");
                assert_eq!(*offset, body.len() as u64, "Truncated at the body's end");
            }
        }
    }
    assert!(
        matches!(
            events.last(),
            Some(
                SplitEvent::Unrecoverable { .. }
                    | SplitEvent::Complete { .. }
                    | SplitEvent::Truncated { .. }
            )
        ),
        "every body ends with Complete, Truncated or Unrecoverable"
    );
}

/// When serde_json reads the body as an array of objects: the records are its elements
/// within the cap, the oversized ones those over it.
fn check_split_matches_serde_json(body: &[u8], events: &[SplitEvent], max_element_bytes: usize) {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let Ok(elements) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text) else {
        return;
    };
    if elements
        .iter()
        .any(|element| !element.get().starts_with('{'))
    {
        return;
    }
    let found: Vec<(bool, &[u8])> = events
        .iter()
        .filter_map(|event| match event {
            SplitEvent::Record { bytes, .. } => Some((true, &bytes[..])),
            SplitEvent::Oversized { byte_range, .. } => Some((false, &body[range(byte_range)])),
            _ => None,
        })
        .collect();
    let expected: Vec<(bool, &[u8])> = elements
        .iter()
        .map(|element| {
            let bytes = element.get().as_bytes();
            (bytes.len() <= max_element_bytes, bytes)
        })
        .collect();
    assert_eq!(
        found, expected,
        "the records and oversized elements are the array's elements, byte for byte"
    );
    assert_eq!(
        events.last(),
        Some(&SplitEvent::Complete {
            records: elements.len() as u64
        }),
        "a valid array completes"
    );
}

fn range(byte_range: &std::ops::Range<u64>) -> std::ops::Range<usize> {
    byte_range.start as usize..byte_range.end as usize
}

/// A TOML configuration (invalid UTF-8 replaced) loaded with an empty environment, then
/// the poller's range checks. Secrets given as `{ file = … }` are read, as at start-up.
pub fn config_toml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::from_toml_with_env(&text, std::iter::empty()) else {
        return;
    };
    assert!(config.validate().is_ok(), "a loaded configuration is valid");
    assert!(
        config.poller.problems().is_empty(),
        "a loaded configuration has no poller problem"
    );
    let _ = config.warnings();
}

/// A `system_plugins_o365.yaml` text (invalid UTF-8 replaced) turned into a configuration
/// as [`utmstack::load`] does, with a fixed encryption key, no settings file and an empty
/// environment; the same text also read as a pipeline file for `com.utmstack` keys.
pub fn utmstack_yaml(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(pipeline) = files::parse_yaml(&text) {
        let _ = files::utmstack_key(&pipeline, "encryptionKey");
        let _ = files::utmstack_key(&pipeline, "pipelineDir");
    }
    let o365_file = PathBuf::from(utmstack::O365_FILE_NAME);
    let Ok(groups) = files::parse_groups(Path::new(&o365_file), &text) else {
        return;
    };
    let environment = UtmstackEnvironment {
        work_dir: PathBuf::from(utmstack::DEFAULT_WORK_DIR),
        env: Default::default(),
    };
    let result = utmstack::from_groups(
        &environment,
        None,
        o365_file,
        &groups,
        Some(&UTMSTACK_KEY),
        Vec::new(),
    );
    if let Ok(loaded) = result {
        assert!(
            loaded.config.tenants.len() + loaded.skipped.len() == groups.len(),
            "every group is a tenant or skipped"
        );
    }
}

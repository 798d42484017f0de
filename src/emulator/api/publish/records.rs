//! Where published records come from: a tenant's NDJSON records file, served byte-exact
//! and cycling, or synthetic common-schema records with unique `Id`s.
//!
//! Guarantees:
//! - A file record is the exact bytes of one non-empty line, without its line ending
//!   (`\n` or `\r\n`); it is never parsed or reserialised, so a line that is not JSON is
//!   served as-is (a poison record the connector must survive).
//! - Each (tenant, content type) has its own cursor over the file; it wraps around when
//!   the file is exhausted. The cursor only moves when records are actually published
//!   ([`RecordSources::commit`]), so records offered while no subscription exists are
//!   offered again later.
//! - Synthetic records are realistic for their content type (spec §6: `Id`, `RecordType`,
//!   `CreationTime` without zone, `Operation`, `OrganizationId`, `UserType`, `UserKey`,
//!   `Workload`, `UserId`, `ClientIP`, `ResultStatus`, `ObjectId`) and every `Id` is a
//!   fresh random v4 GUID.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use rand::RngExt;

use super::super::ApiEmulatorError;
use super::super::scenario::Scenario;

/// The records of every tenant, with the per-(tenant, content type) cursors.
#[derive(Debug, Default)]
pub struct RecordSources {
    /// Loaded records files by tenant GUID (lowercase); tenants absent here are synthetic.
    files: HashMap<String, Arc<Vec<Bytes>>>,
    /// Next line to serve, by (tenant, content type).
    cursors: HashMap<(String, String), usize>,
    /// Synthetic records made so far, for `ObjectId`s and user names that vary.
    synthetic_count: u64,
}

impl RecordSources {
    /// Loads the records file of every tenant that names one.
    pub fn load(scenario: &Scenario) -> Result<Self, ApiEmulatorError> {
        let mut files = HashMap::new();
        for tenant in &scenario.tenants {
            if let Some(path) = &tenant.publication.records {
                let records = read_records_file(path)?;
                files.insert(tenant.tenant_id.to_ascii_lowercase(), Arc::new(records));
            }
        }
        Ok(Self {
            files,
            ..Self::default()
        })
    }

    /// The next `count` records for (tenant, content type), without moving the cursor.
    /// Synthetic records carry `created` (UTC, no zone) as their `CreationTime`.
    pub fn peek(
        &self,
        tenant_id: &str,
        content_type: &str,
        count: usize,
        created: DateTime<Utc>,
    ) -> Vec<Bytes> {
        let Some(lines) = self.files.get(&tenant_id.to_ascii_lowercase()) else {
            return (0..count)
                .map(|offset| {
                    let sequence = self.synthetic_count + offset as u64;
                    synthetic_record(tenant_id, content_type, created, sequence)
                })
                .collect();
        };
        let start = self.cursor(tenant_id, content_type);
        (0..count)
            .map(|offset| lines[(start + offset) % lines.len()].clone())
            .collect()
    }

    /// Moves the cursor of (tenant, content type) past `count` published records.
    pub fn commit(&mut self, tenant_id: &str, content_type: &str, count: usize) {
        let key = cursor_key(tenant_id, content_type);
        match self.files.get(&key.0) {
            Some(lines) => {
                let cursor = self.cursors.entry(key).or_default();
                *cursor = (*cursor + count) % lines.len();
            }
            None => self.synthetic_count += count as u64,
        }
    }

    fn cursor(&self, tenant_id: &str, content_type: &str) -> usize {
        let key = cursor_key(tenant_id, content_type);
        self.cursors.get(&key).copied().unwrap_or_default()
    }
}

fn cursor_key(tenant_id: &str, content_type: &str) -> (String, String) {
    (tenant_id.to_ascii_lowercase(), content_type.to_string())
}

/// Reads a records file: one record per non-empty line, line endings stripped.
pub fn read_records_file(path: &Path) -> Result<Vec<Bytes>, ApiEmulatorError> {
    let content = std::fs::read(path).map_err(|error| {
        ApiEmulatorError::Scenario(format!("cannot read records {}: {error}", path.display()))
    })?;
    let records = split_records(&content);
    if records.is_empty() {
        return Err(ApiEmulatorError::Scenario(format!(
            "records file {} holds no record (no non-empty line)",
            path.display()
        )));
    }
    Ok(records)
}

/// Splits NDJSON bytes into records: each line without `\n` or `\r\n`; blank lines skipped.
pub fn split_records(content: &[u8]) -> Vec<Bytes> {
    content
        .split(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(Bytes::copy_from_slice)
        .collect()
}

/// What a synthetic record of a content type looks like.
struct RecordShape {
    record_type: u32,
    operation: &'static str,
    workload: &'static str,
    object_prefix: &'static str,
}

fn shape_of(content_type: &str) -> RecordShape {
    let (record_type, operation, workload, object_prefix) = match content_type {
        "Audit.AzureActiveDirectory" => (
            15,
            "UserLoggedIn",
            "AzureActiveDirectory",
            "00000003-0000-0000-c000-000000000000",
        ),
        "Audit.Exchange" => (2, "Send", "Exchange", "<message-"),
        "Audit.SharePoint" => (
            6,
            "FileAccessed",
            "SharePoint",
            "https://contoso.sharepoint.com/sites/finance/Shared Documents/report-",
        ),
        "DLP.All" => (
            11,
            "DlpRuleMatch",
            "SharePoint",
            "https://contoso.sharepoint.com/sites/hr/Shared Documents/payroll-",
        ),
        _ => (25, "MessageSent", "MicrosoftTeams", "19:meeting-"),
    };
    RecordShape {
        record_type,
        operation,
        workload,
        object_prefix,
    }
}

/// One synthetic common-schema record; `sequence` varies users, addresses and objects.
pub fn synthetic_record(
    tenant_id: &str,
    content_type: &str,
    created: DateTime<Utc>,
    sequence: u64,
) -> Bytes {
    let shape = shape_of(content_type);
    let user = format!("user{}@contoso.onmicrosoft.com", sequence % 50);
    let user_key = if content_type == "DLP.All" {
        "DlpAgent".to_string()
    } else {
        format!("1003BFFD{:08X}", sequence % 50)
    };
    let record = serde_json::json!({
        "Id": random_guid(),
        "RecordType": shape.record_type,
        "CreationTime": created.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "Operation": shape.operation,
        "OrganizationId": tenant_id,
        "UserType": 0,
        "UserKey": user_key,
        "Workload": shape.workload,
        "UserId": user,
        "ClientIP": format!("203.0.113.{}", sequence % 254 + 1),
        "ResultStatus": "Succeeded",
        "ObjectId": format!("{}{sequence}", shape.object_prefix),
        "Version": 1,
    });
    Bytes::from(record.to_string())
}

/// A random GUID in its canonical lowercase form (version 4, RFC 4122 variant).
pub fn random_guid() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_byte_exact_without_line_endings_and_blanks() {
        let records = split_records(b"{\"a\":1}\r\n\n  \n{not json\n{\"b\" : 2}");
        let expected: Vec<&[u8]> = vec![b"{\"a\":1}", b"{not json", b"{\"b\" : 2}"];
        assert_eq!(records, expected);
    }

    #[test]
    fn synthetic_records_have_unique_ids_and_the_common_schema() {
        let created = DateTime::parse_from_rfc3339("2026-11-26T12:00:00Z")
            .map(|time| time.with_timezone(&Utc))
            .expect("valid time");
        let first = synthetic_record("t1", "DLP.All", created, 0);
        let second = synthetic_record("t1", "DLP.All", created, 0);
        let parsed: serde_json::Value = serde_json::from_slice(&first).expect("json");
        let other: serde_json::Value = serde_json::from_slice(&second).expect("json");
        assert_ne!(parsed["Id"], other["Id"]);
        assert_eq!(parsed["CreationTime"], "2026-11-26T12:00:00");
        assert_eq!(parsed["OrganizationId"], "t1");
        assert_eq!(parsed["UserKey"], "DlpAgent");
        assert_eq!(parsed["RecordType"], 11);
        for key in ["Operation", "UserType", "Workload", "UserId", "ClientIP"] {
            assert!(parsed.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn guids_are_version_4() {
        let guid = random_guid();
        assert_eq!(guid.len(), 36);
        assert_eq!(&guid[14..15], "4");
    }
}

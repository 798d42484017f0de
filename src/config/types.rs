//! The value types of the configuration that other modules share: tenant GUIDs, the
//! publisher id, content types, the timestamp choice.
//!
//! Each parses strictly from its configuration spelling, so a wrong value fails at load with
//! the key named (by the loader) and the accepted spellings listed.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A GUID in its canonical form (8-4-4-4-12 hex digits), as Microsoft writes tenant and
/// client ids. Displays in lowercase.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(uuid::Uuid);

impl Guid {
    /// The underlying UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

/// A string that is not a GUID in 8-4-4-4-12 form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a GUID (expected 8-4-4-4-12 hex digits, like 6ba7b810-9dad-11d1-80b4-00c04fd430c8)"
)]
pub struct NotAGuid(pub String);

impl FromStr for Guid {
    type Err = NotAGuid;

    /// Accepts only the hyphenated form (no braces, no `urn:uuid:`, no bare 32 digits), in
    /// any case.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let hyphenated = text.len() == 36 && text.bytes().filter(|b| *b == b'-').count() == 4;
        match uuid::Uuid::try_parse(text) {
            Ok(uuid) if hyphenated => Ok(Guid(uuid)),
            _ => Err(NotAGuid(text.to_string())),
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), formatter)
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, formatter)
    }
}

impl Serialize for Guid {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Guid {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `PublisherIdentifier` sent on every API call: a tenant GUID, or a tenant domain
/// (`contoso.onmicrosoft.com`) that start-up resolves once to its GUID from the login
/// authority's OpenID configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PublisherId {
    /// A tenant GUID, used as is.
    Guid(Guid),
    /// A tenant domain, lowercased, to resolve to its GUID.
    Domain(String),
}

impl PublisherId {
    /// The GUID, when given as one.
    pub fn as_guid(&self) -> Option<Guid> {
        match self {
            PublisherId::Guid(guid) => Some(*guid),
            PublisherId::Domain(_) => None,
        }
    }
}

/// A publisher id that is neither a GUID nor a domain name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither a tenant GUID nor a domain name like contoso.onmicrosoft.com")]
pub struct InvalidPublisherId(pub String);

impl FromStr for PublisherId {
    type Err = InvalidPublisherId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Ok(guid) = text.parse::<Guid>() {
            return Ok(PublisherId::Guid(guid));
        }
        if is_domain_name(text) {
            return Ok(PublisherId::Domain(text.to_ascii_lowercase()));
        }
        Err(InvalidPublisherId(text.to_string()))
    }
}

/// An ASCII DNS name with at least two labels, each 1–63 letters, digits or inner hyphens.
fn is_domain_name(text: &str) -> bool {
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    text.len() <= 253 && text.split('.').count() >= 2 && text.split('.').all(label_ok)
}

impl fmt::Display for PublisherId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublisherId::Guid(guid) => fmt::Display::fmt(guid, formatter),
            PublisherId::Domain(domain) => formatter.write_str(domain),
        }
    }
}

impl<'de> Deserialize<'de> for PublisherId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A content type of the Management Activity API, spelled as the API spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContentType {
    /// `Audit.AzureActiveDirectory`: Entra ID (Azure AD) audit and sign-in records.
    #[serde(rename = "Audit.AzureActiveDirectory")]
    AuditAzureActiveDirectory,
    /// `Audit.Exchange`: Exchange admin and mailbox audit records.
    #[serde(rename = "Audit.Exchange")]
    AuditExchange,
    /// `Audit.SharePoint`: SharePoint and OneDrive records.
    #[serde(rename = "Audit.SharePoint")]
    AuditSharePoint,
    /// `Audit.General`: every other workload (Teams, Power BI, Defender, …).
    #[serde(rename = "Audit.General")]
    AuditGeneral,
    /// `DLP.All`: DLP events of all workloads (needs `ActivityFeed.ReadDlp`).
    #[serde(rename = "DLP.All")]
    DlpAll,
}

impl ContentType {
    /// All five, the default of a tenant's `content_types`.
    pub const ALL: [ContentType; 5] = [
        ContentType::AuditAzureActiveDirectory,
        ContentType::AuditExchange,
        ContentType::AuditSharePoint,
        ContentType::AuditGeneral,
        ContentType::DlpAll,
    ];

    /// The API spelling (`contentType=` parameter, `contentType` field).
    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::AuditAzureActiveDirectory => "Audit.AzureActiveDirectory",
            ContentType::AuditExchange => "Audit.Exchange",
            ContentType::AuditSharePoint => "Audit.SharePoint",
            ContentType::AuditGeneral => "Audit.General",
            ContentType::DlpAll => "DLP.All",
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A content type name that is none of the five.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown content type {0:?}")]
pub struct UnknownContentType(pub String);

impl FromStr for ContentType {
    type Err = UnknownContentType;

    /// Parses the API spelling exactly.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ContentType::ALL
            .into_iter()
            .find(|content_type| content_type.as_str() == text)
            .ok_or_else(|| UnknownContentType(text.to_string()))
    }
}

/// Which time becomes `Log.timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestampSource {
    /// The record's `CreationTime` (UTC), falling back to collection time when missing.
    #[default]
    Event,
    /// The time the connector collected the record.
    Collection,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_accepts_only_the_hyphenated_form() {
        assert!(
            "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"
                .parse::<Guid>()
                .is_ok()
        );
        assert!("6ba7b8109dad11d180b400c04fd430c8".parse::<Guid>().is_err());
        assert!(
            "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}"
                .parse::<Guid>()
                .is_err()
        );
        assert_eq!(
            "6BA7B810-9DAD-11D1-80B4-00C04FD430C8"
                .parse::<Guid>()
                .unwrap()
                .to_string(),
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
        );
    }

    #[test]
    fn publisher_id_is_a_guid_or_a_domain() {
        assert!(matches!(
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse(),
            Ok(PublisherId::Guid(_))
        ));
        assert_eq!(
            "Contoso.onmicrosoft.com".parse::<PublisherId>(),
            Ok(PublisherId::Domain("contoso.onmicrosoft.com".into()))
        );
        for bad in ["contoso", "https://contoso.com", "a..b", "-a.b", ""] {
            assert!(bad.parse::<PublisherId>().is_err(), "{bad}");
        }
    }
}

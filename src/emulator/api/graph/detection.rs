//! The `riskDetection` resource of Microsoft Graph v1.0, as `List riskDetections`
//! serves it: every documented property, in the documented order, and synthetic but
//! realistic values (Microsoft's enumerations, a user of the tenant, a sign-in's request
//! and correlation ids, an address and its location, an `additionalInfo` JSON string).
//!
//! Times are written as Graph writes `DateTimeOffset`s: UTC, `Z`, 100 ns ticks with the
//! trailing zeros of the fraction dropped (`2026-12-01T08:08:53.8512617Z`, and
//! `2018-09-05T00:11:27.773602Z` in Microsoft's own sample), so a client must accept 0 to 7
//! fractional digits.

use chrono::{DateTime, Duration, Utc};
use rand::RngExt;
use serde::Serialize;

use crate::emulator::api::publish::records::random_guid;

/// One risk detection, serialized with Graph's property names.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RiskDetection {
    /// Unique id (64 hex digits, as Graph's ids are).
    pub id: String,
    /// Request id of the sign-in; `null` for user (offline) detections.
    pub request_id: Option<String>,
    /// Correlation id of the sign-in; `null` for user (offline) detections.
    pub correlation_id: Option<String>,
    /// `unfamiliarFeatures`, `anonymizedIPAddress`, `leakedCredentials`, …
    pub risk_event_type: String,
    /// `atRisk`, `remediated`, `dismissed`, `confirmedSafe`, …
    pub risk_state: String,
    /// `low`, `medium`, `high`.
    pub risk_level: String,
    /// `none`, `userPerformedSecuredPasswordReset`, `adminDismissedAllRiskForUser`, …
    pub risk_detail: String,
    /// `IdentityProtection` or `activeDirectory`.
    pub source: String,
    /// `realtime`, `nearRealtime` or `offline`.
    pub detection_timing_type: String,
    /// `signin` or `user`.
    pub activity: String,
    /// `AzureAD`.
    pub token_issuer_type: String,
    /// Client address of the sign-in; `null` for user detections.
    pub ip_address: Option<String>,
    /// Where the sign-in came from.
    pub location: Option<SignInLocation>,
    /// When the risky activity happened.
    #[serde(serialize_with = "serialize_graph_time")]
    pub activity_date_time: DateTime<Utc>,
    /// When the risk was detected.
    #[serde(serialize_with = "serialize_graph_time")]
    pub detected_date_time: DateTime<Utc>,
    /// When the detection last changed: the watermark a collector filters on.
    #[serde(serialize_with = "serialize_graph_time")]
    pub last_updated_date_time: DateTime<Utc>,
    /// The user's object id.
    pub user_id: String,
    /// The user's display name.
    pub user_display_name: String,
    /// The user's UPN.
    pub user_principal_name: String,
    /// More detail, as a JSON string (`[{"Key":"userAgent","Value":"…"}]`).
    pub additional_info: String,
}

/// `signInLocation`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInLocation {
    /// City.
    pub city: String,
    /// State or province.
    pub state: String,
    /// Two-letter country code.
    pub country_or_region: String,
    /// Coordinates.
    pub geo_coordinates: GeoCoordinates,
}

/// `geoCoordinates`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GeoCoordinates {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
}

/// A user of an emulated tenant that detections name.
#[derive(Clone, Debug)]
pub struct RiskyUser {
    /// Object id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// UPN in the tenant's domain.
    pub principal_name: String,
}

impl RiskyUser {
    /// A few users of the domain, with fresh object ids.
    pub fn directory(domain: &str) -> Vec<Self> {
        [
            ("Olivia Lack", "olack"),
            ("Jason Mayer", "jmayer"),
            ("Alice Su", "asu"),
            ("Diego Siciliani", "diegos"),
            ("Megan Bowen", "meganb"),
        ]
        .into_iter()
        .map(|(name, alias)| Self {
            id: random_guid(),
            display_name: name.to_string(),
            principal_name: format!("{alias}@{domain}"),
        })
        .collect()
    }
}

/// Sign-in (real-time) detection types, with their level.
const SIGNIN_TYPES: [(&str, &str); 5] = [
    ("unfamiliarFeatures", "medium"),
    ("anonymizedIPAddress", "medium"),
    ("unlikelyTravel", "high"),
    ("maliciousIPAddress", "high"),
    ("suspiciousBrowser", "low"),
];

/// User (offline) detection types, with their level.
const USER_TYPES: [(&str, &str); 2] = [("leakedCredentials", "high"), ("passwordSpray", "high")];

const LOCATIONS: [(&str, &str, &str, f64, f64); 4] = [
    ("Seattle", "Washington", "US", 47.6062, -122.3321),
    ("Lisbon", "Lisboa", "PT", 38.7223, -9.1393),
    ("Singapore", "Singapore", "SG", 1.3521, 103.8198),
    ("Sao Paulo", "Sao Paulo", "BR", -23.5505, -46.6333),
];

/// The `sequence`-th detection of a tenant, last updated at `last_updated` (truncated to
/// Graph's 100 ns ticks); every fourth is a user (offline) detection.
pub fn synthesize(
    tenant_id: &str,
    sequence: u64,
    user: &RiskyUser,
    last_updated: DateTime<Utc>,
) -> RiskDetection {
    let mut rng = rand::rng();
    let last_updated = to_ticks(last_updated);
    let detected = last_updated;
    let activity_at = to_ticks(detected - Duration::milliseconds(rng.random_range(500..120_000)));
    let offline = sequence % 4 == 3;
    let index = sequence as usize;
    let (risk_event_type, risk_level) = if offline {
        USER_TYPES[index % USER_TYPES.len()]
    } else {
        SIGNIN_TYPES[index % SIGNIN_TYPES.len()]
    };
    let (city, state, country, latitude, longitude) = LOCATIONS[index % LOCATIONS.len()];
    let address = format!("198.51.100.{}", sequence % 254 + 1);
    let user_agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    let additional_info =
        serde_json::json!([{"Key": "userAgent", "Value": user_agent}]).to_string();
    let id = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{tenant_id}/{sequence}/{}", random_guid()));
        hex::encode(digest)
    };
    RiskDetection {
        id,
        request_id: (!offline).then(random_guid),
        correlation_id: (!offline).then(random_guid),
        risk_event_type: risk_event_type.to_string(),
        risk_state: "atRisk".to_string(),
        risk_level: risk_level.to_string(),
        risk_detail: "none".to_string(),
        source: if offline {
            "IdentityProtection"
        } else {
            "activeDirectory"
        }
        .to_string(),
        detection_timing_type: if offline { "offline" } else { "realtime" }.to_string(),
        activity: if offline { "user" } else { "signin" }.to_string(),
        token_issuer_type: "AzureAD".to_string(),
        ip_address: (!offline).then_some(address),
        location: (!offline).then(|| SignInLocation {
            city: city.to_string(),
            state: state.to_string(),
            country_or_region: country.to_string(),
            geo_coordinates: GeoCoordinates {
                latitude,
                longitude,
            },
        }),
        activity_date_time: activity_at,
        detected_date_time: detected,
        last_updated_date_time: last_updated,
        user_id: user.id.clone(),
        user_display_name: user.display_name.clone(),
        user_principal_name: user.principal_name.clone(),
        additional_info,
    }
}

/// `time` truncated to a whole 100 ns tick, Graph's resolution.
pub fn to_ticks(time: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = time.timestamp_subsec_nanos();
    time - Duration::nanoseconds(i64::from(nanos % 100))
}

/// Graph's `DateTimeOffset` text: `2026-12-01T08:08:53.8512617Z`, trailing zeros of the
/// fraction dropped (and the point, for a whole second).
pub fn format_graph_time(time: &DateTime<Utc>) -> String {
    let seconds = time.format("%Y-%m-%dT%H:%M:%S");
    let ticks = time.timestamp_subsec_nanos() / 100;
    if ticks == 0 {
        return format!("{seconds}Z");
    }
    let fraction = format!("{ticks:07}");
    format!("{seconds}.{}Z", fraction.trim_end_matches('0'))
}

fn serialize_graph_time<S: serde::Serializer>(
    time: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_graph_time(time))
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
    fn graph_times_have_at_most_seven_digits_without_trailing_zeros() {
        let time = to_ticks(utc("2026-12-01T08:08:53.851261789Z"));
        assert_eq!(format_graph_time(&time), "2026-12-01T08:08:53.8512617Z");
        assert_eq!(
            format_graph_time(&utc("2018-09-05T00:11:27.7736020Z")),
            "2018-09-05T00:11:27.773602Z"
        );
        assert_eq!(
            format_graph_time(&utc("2026-12-01T00:00:00Z")),
            "2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn detections_carry_every_documented_property_and_unique_ids() {
        let users = RiskyUser::directory("contoso.onmicrosoft.com");
        let now = utc("2026-12-01T08:00:00Z");
        let first = synthesize("t", 0, &users[0], now);
        let second = synthesize("t", 0, &users[0], now);
        assert_ne!(first.id, second.id);
        assert_eq!(first.id.len(), 64);
        let value = serde_json::to_value(&first).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "id",
            "requestId",
            "correlationId",
            "riskEventType",
            "riskState",
            "riskLevel",
            "riskDetail",
            "source",
            "detectionTimingType",
            "activity",
            "tokenIssuerType",
            "ipAddress",
            "location",
            "activityDateTime",
            "detectedDateTime",
            "lastUpdatedDateTime",
            "userId",
            "userDisplayName",
            "userPrincipalName",
            "additionalInfo",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(value["location"]["geoCoordinates"]["latitude"].is_f64());
        let offline = synthesize("t", 3, &users[1], now);
        assert_eq!(offline.activity, "user");
        assert!(offline.request_id.is_none());
    }
}

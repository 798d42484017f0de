//! Entra ID's error envelope for the login endpoints:
//! `{"error","error_description":"AADSTSnnnn: …","error_codes":[nnnn],"timestamp",
//! "trace_id","correlation_id","error_uri"}`, with the HTTP status Microsoft uses.
//!
//! Every such answer carries a [`Rejection`] (code `AADSTSnnnn`, the emulator rule), so
//! `GET /_emulator/rejections` counts it. Descriptions are built from fixed text plus
//! ids (tenant, client id, thumbprints), never from a secret or an assertion.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::super::error::Rejection;

/// One AADSTS-coded rejection of a login request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AadstsError {
    /// HTTP status (400 for request errors, 401 for failed client authentication…).
    pub status: StatusCode,
    /// OAuth `error` (`invalid_request`, `invalid_client`, `unauthorized_client`, …).
    pub error: &'static str,
    /// The AADSTS number (`7000215` for a wrong secret).
    pub code: u32,
    /// The emulator rule that fired, in snake case.
    pub rule: &'static str,
    /// The message after `AADSTSnnnn: `, in Microsoft's words where known.
    pub description: String,
    /// `Retry-After` seconds (only for `temporarily_unavailable`).
    pub retry_after_secs: Option<u64>,
}

impl AadstsError {
    /// An error with the given parts and no `Retry-After`.
    pub fn new(
        status: StatusCode,
        error: &'static str,
        code: u32,
        rule: &'static str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            status,
            error,
            code,
            rule,
            description: description.into(),
            retry_after_secs: None,
        }
    }

    /// HTTP 400 `invalid_request`.
    pub fn invalid_request(code: u32, rule: &'static str, description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            code,
            rule,
            description,
        )
    }

    /// HTTP 401 `invalid_client`: the client failed to authenticate.
    pub fn invalid_client(code: u32, rule: &'static str, description: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            code,
            rule,
            description,
        )
    }

    /// AADSTS900144: a required body parameter is missing (HTTP 400 `invalid_request`).
    pub fn missing_parameter(parameter: &str) -> Self {
        Self::invalid_request(
            900144,
            "missing_parameter",
            format!("The request body must contain the following parameter: '{parameter}'."),
        )
    }

    /// AADSTS90002: no such tenant, as the token endpoint answers it.
    pub fn unknown_tenant(tenant: &str) -> Self {
        Self::invalid_request(90002, "unknown_tenant", unknown_tenant_description(tenant))
    }

    /// The `AADSTSnnnn` code, as counted in rejections.
    pub fn code_name(&self) -> String {
        format!("AADSTS{}", self.code)
    }

    /// The response, stamped with `now`; `correlation_id` echoes the client's
    /// `client-request-id` header when it sent one, as Entra does.
    pub fn into_response_at(
        self,
        base_url: &str,
        now: DateTime<Utc>,
        request_headers: &HeaderMap,
    ) -> Response {
        let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
        let trace_id = random_guid();
        let correlation_id = request_headers
            .get("client-request-id")
            .and_then(|value| value.to_str().ok())
            .filter(|value| is_guid(value))
            .map(str::to_string)
            .unwrap_or_else(random_guid);
        let code_name = self.code_name();
        let body = serde_json::json!({
            "error": self.error,
            "error_description": format!(
                "{code_name}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.description
            ),
            "error_codes": [self.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("{}/error?code={}", base_url.trim_end_matches('/'), self.code),
        });
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store, no-cache"),
        );
        headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(Rejection {
            code: code_name,
            rule: self.rule,
        });
        response
    }
}

/// Microsoft's AADSTS90002 text.
pub fn unknown_tenant_description(tenant: &str) -> String {
    let tenant: String = tenant
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and \
         are signing into the correct cloud. Check with your subscription administrator, this \
         may happen if there are no active subscriptions for the tenant."
    )
}

/// A client-supplied value fit to quote in an error: at most 200 characters, no controls.
pub fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// A random GUID in the usual 8-4-4-4-12 lowercase form.
pub fn random_guid() -> String {
    let bytes: [u8; 16] = rand::random();
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

/// True for an 8-4-4-4-12 hexadecimal GUID.
pub fn is_guid(value: &str) -> bool {
    let lengths = [8, 4, 4, 4, 12];
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == lengths.len()
        && groups.iter().zip(lengths).all(|(group, length)| {
            group.len() == length && group.chars().all(|c| c.is_ascii_hexdigit())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_recognised() {
        assert!(is_guid(&random_guid()));
        assert!(is_guid("41463F53-8812-40f4-890f-865bf6e35190"));
        assert!(!is_guid("41463f53-8812-40f4-890f-865bf6e3519"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
    }

    #[test]
    fn quoted_values_lose_controls_and_length() {
        assert_eq!(printable("a\r\nb"), "ab");
        assert_eq!(printable(&"x".repeat(500)).len(), 200);
    }
}

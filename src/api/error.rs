//! The one classification of the Management Activity API's errors: AF code first, HTTP
//! status second (the spec's §4 table), into what the caller should do.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::auth::AuthError;

/// What a failed API call means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// AF429, HTTP 429, or 403 with AF429: pause the tenant, honour `Retry-After`.
    Throttled,
    /// 5xx, AF50000/AF50005/AF50006, 408: retry with backoff.
    Transient,
    /// 401 even after one token renewal.
    Unauthorized,
    /// AF20022: no subscription for the content type; start it, then retry.
    SubscriptionMissing,
    /// AF20023: the subscription was disabled; re-start it.
    SubscriptionDisabled,
    /// AF20024: already enabled, no property change; success for a start.
    AlreadyEnabled,
    /// AF20021: Microsoft could not validate the webhook.
    WebhookNotValidated,
    /// AF20030/AF20055: the listing window is invalid; re-clamp it.
    InvalidWindow,
    /// AF20031: the nextPage value is invalid; restart the window.
    InvalidNextPage,
    /// AF20050: the content does not exist (yet); retry, then count as missing.
    ContentMissing,
    /// AF20051: the content expired; a counted, logged loss.
    ContentExpired,
    /// AF10001: the app lacks a permission (DLP.All: ActivityFeed.ReadDlp).
    PermissionMissing,
    /// AF20010-AF20013: the tenant id, token tenant or tenant state is wrong.
    TenantMisconfigured,
    /// Unified audit logging is off in the tenant (`DataServiceException`).
    AuditDisabled,
    /// AF20001-AF20003, AF20020, AF20052-AF20054 and other 4xx: a request we should not
    /// have made; not retried.
    BadRequest,
    /// A 3xx: the endpoint answered with a redirect, which is never followed (it would
    /// carry the token, or read content, elsewhere). Retried with backoff, as a failing
    /// endpoint, and shown with advice.
    Redirected,
}

impl ErrorKind {
    /// True when the same call may succeed later without an operator's change.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Transient | Self::ContentMissing | Self::Redirected
        )
    }

    /// What the operator should do, for errors that need one.
    pub fn advice(self) -> Option<&'static str> {
        Some(match self {
            Self::PermissionMissing => {
                "grant the app the Office 365 Management APIs application permissions ActivityFeed.Read (and ActivityFeed.ReadDlp for DLP.All), then grant admin consent"
            }
            Self::TenantMisconfigured => {
                "check tenant_id (a GUID) and that the app is consented in that tenant"
            }
            Self::AuditDisabled => {
                "turn on audit logging in Microsoft Purview (Audit > Start recording user and admin activity); it takes up to 60 minutes to apply"
            }
            Self::WebhookNotValidated => {
                "Microsoft could not reach the webhook: check that server.public_url is reachable from the internet over HTTPS and answers 200"
            }
            Self::Unauthorized => {
                "the API refused the token: check the app's permissions and the cloud"
            }
            Self::Redirected => {
                "the API answered with a redirect, which the connector never follows: if a proxy or gateway in between redirects, fix it; to use another API address on purpose, set api.api_url (or O365_CONNECTOR_API_URL) to it"
            }
            _ => return None,
        })
    }
}

/// A failed API call. Messages name tenant, operation and code; never a token or secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The service answered with an error.
    #[error("tenant {tenant_id}: {operation} failed with HTTP {status}{}: {message}", af_code.as_ref().map(|code| format!(" {code}")).unwrap_or_default())]
    Service {
        /// The tenant.
        tenant_id: String,
        /// What was being done (`subscriptions/start`, `content`, `blob`, …).
        operation: &'static str,
        /// The classification.
        kind: ErrorKind,
        /// HTTP status.
        status: u16,
        /// The AF code, when the body had one.
        af_code: Option<String>,
        /// The service's message (truncated).
        message: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// The answer's `Date` header: the service's time when it refused, when given.
        server_date: Option<DateTime<Utc>>,
    },
    /// No token could be had.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The request did not complete (connection, TLS, timeout, truncated body).
    #[error("tenant {tenant_id}: {operation} failed: {reason}")]
    Transport {
        /// The tenant.
        tenant_id: String,
        /// What was being done.
        operation: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A URL to be called with our token is not in the tenant's feed on its API base
    /// (another host; user info, a query or a fragment where none belongs; a path outside
    /// the feed root); refused unsent.
    #[error("tenant {tenant_id}: refused to send a token: {reason}")]
    ForeignUrl {
        /// The tenant.
        tenant_id: String,
        /// Which rule the URL broke.
        reason: super::feed_uri::FeedUriError,
    },
    /// The answer was not the JSON the API documents.
    #[error("tenant {tenant_id}: {operation} answered unexpected content: {reason}")]
    Decode {
        /// The tenant.
        tenant_id: String,
        /// What was being done.
        operation: &'static str,
        /// The parse error.
        reason: String,
    },
}

impl ApiError {
    /// The classification of a service error; transport errors are [`ErrorKind::Transient`].
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Service { kind, .. } => Some(*kind),
            Self::Transport { .. } => Some(ErrorKind::Transient),
            Self::Auth(_) | Self::ForeignUrl { .. } | Self::Decode { .. } => None,
        }
    }

    /// True when the same call may succeed later without an operator's change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Service { kind, .. } => kind.is_retryable(),
            Self::Transport { .. } => true,
            Self::Auth(error) => error.is_retryable(),
            Self::ForeignUrl { .. } | Self::Decode { .. } => false,
        }
    }

    /// `Retry-After` from the service, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Service { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The AF code, when the service sent one.
    pub fn af_code(&self) -> Option<&str> {
        match self {
            Self::Service { af_code, .. } => af_code.as_deref(),
            _ => None,
        }
    }

    /// The service's time (its `Date` header) on the answer that failed, when it sent one.
    pub fn server_date(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Service { server_date, .. } => *server_date,
            _ => None,
        }
    }

    /// True for an HTTP 400, 403 or 404 that carries no AF code (and no message this
    /// classification recognises): the service refused without saying why. Microsoft
    /// answers expired content with AF20051; a bare refusal is retried and given up only
    /// once the content's own expiration has passed (see the worker pool). 401, 408 and
    /// 429 are classified on their own and never land here.
    pub fn refused_without_code(&self) -> bool {
        matches!(
            self,
            Self::Service {
                kind: ErrorKind::BadRequest,
                status: 400 | 403 | 404,
                af_code: None,
                ..
            }
        )
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The AF code and message of an error body, with or without a byte-order mark. Tolerates
/// the single-quoted variant shown in Microsoft's troubleshooting page.
pub fn parse_error_body(body: &[u8]) -> (Option<String>, String) {
    let body = super::json::without_bom(body);
    let parse = |bytes: &[u8]| super::json::from_slice::<ErrorEnvelope>(bytes).ok();
    let envelope =
        parse(body).or_else(|| parse(String::from_utf8_lossy(body).replace('\'', "\"").as_bytes()));
    match envelope {
        Some(ErrorEnvelope { error }) => (error.code, truncate(error.message.unwrap_or_default())),
        None => (None, truncate(String::from_utf8_lossy(body).into_owned())),
    }
}

/// The service's text as one log-safe line of at most 300 bytes (then `…`): surrounding
/// whitespace trimmed and every control character (a body's trailing newline, an HTML
/// page's line breaks) turned into a space, so a quoted body never breaks a log line.
fn truncate(text: String) -> String {
    const LIMIT: usize = 300;
    let mut text: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > LIMIT {
        let mut cut = LIMIT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Classifies by AF code first, HTTP status second.
pub fn classify(status: StatusCode, af_code: Option<&str>, message: &str) -> ErrorKind {
    if let Some(kind) = af_code.and_then(classify_code) {
        return kind;
    }
    if message.contains("DataServiceException") {
        return ErrorKind::AuditDisabled;
    }
    match status.as_u16() {
        429 => ErrorKind::Throttled,
        401 => ErrorKind::Unauthorized,
        408 | 500..=599 => ErrorKind::Transient,
        _ => ErrorKind::BadRequest,
    }
}

fn classify_code(code: &str) -> Option<ErrorKind> {
    Some(match code {
        "AF429" => ErrorKind::Throttled,
        "AF50000" | "AF50005" | "AF50006" => ErrorKind::Transient,
        "AF10001" => ErrorKind::PermissionMissing,
        "AF20010" | "AF20011" | "AF20012" | "AF20013" => ErrorKind::TenantMisconfigured,
        "AF20021" => ErrorKind::WebhookNotValidated,
        "AF20022" => ErrorKind::SubscriptionMissing,
        "AF20023" => ErrorKind::SubscriptionDisabled,
        "AF20024" => ErrorKind::AlreadyEnabled,
        "AF20030" | "AF20055" => ErrorKind::InvalidWindow,
        "AF20031" => ErrorKind::InvalidNextPage,
        "AF20050" => ErrorKind::ContentMissing,
        "AF20051" => ErrorKind::ContentExpired,
        code if code.starts_with("AF") => ErrorKind::BadRequest,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_bodies_are_trimmed_to_one_line() {
        assert_eq!(parse_error_body(b"null\n"), (None, "null".to_string()));
        let page = b"<html>\r\n<body>Not Found</body>\r\n</html>\n";
        let (_, message) = parse_error_body(page);
        assert!(!message.contains(['\n', '\r']), "{message:?}");
        assert!(message.starts_with("<html>") && message.ends_with("</html>"));
        let envelope = br#"{"error":{"code":"AF20051","message":" expired\n\tcontent \n"}}"#;
        assert_eq!(parse_error_body(envelope).1, "expired  content");
    }

    #[test]
    fn af_code_wins_over_http_status() {
        let forbidden = StatusCode::FORBIDDEN;
        assert_eq!(classify(forbidden, Some("AF429"), ""), ErrorKind::Throttled);
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, Some("AF20024"), ""),
            ErrorKind::AlreadyEnabled
        );
        assert_eq!(
            classify(StatusCode::INTERNAL_SERVER_ERROR, Some("AF20051"), ""),
            ErrorKind::ContentExpired
        );
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, None, ""),
            ErrorKind::Throttled
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None, ""),
            ErrorKind::Transient
        );
        assert_eq!(
            classify(
                StatusCode::BAD_REQUEST,
                None,
                "Microsoft.Office.Compliance.Audit.DataServiceException: Tenant x does not exist."
            ),
            ErrorKind::AuditDisabled
        );
    }

    fn blob_error(status: u16, body: &[u8]) -> ApiError {
        let (af_code, message) = parse_error_body(body);
        let kind = classify(
            StatusCode::from_u16(status).unwrap(),
            af_code.as_deref(),
            &message,
        );
        ApiError::Service {
            tenant_id: "t".into(),
            operation: "blob",
            kind,
            status,
            af_code,
            message,
            retry_after: None,
            server_date: None,
        }
    }

    #[test]
    fn a_bare_400_403_or_404_is_a_refusal_and_coded_or_other_answers_are_not() {
        for status in [400, 403, 404] {
            assert!(
                blob_error(status, b"null").refused_without_code(),
                "{status}"
            );
            assert!(blob_error(status, b"").refused_without_code(), "{status}");
        }
        let expired = br#"{"error":{"code":"AF20051","message":"expired"}}"#;
        assert!(!blob_error(400, expired).refused_without_code());
        let throttled = br#"{"error":{"code":"AF429","message":"slow down"}}"#;
        assert!(!blob_error(403, throttled).refused_without_code());
        for status in [401, 408, 429, 500] {
            assert!(
                !blob_error(status, b"null").refused_without_code(),
                "{status}"
            );
        }
        let audit_off =
            b"Microsoft.Office.Compliance.Audit.DataServiceException: Tenant x does not exist.";
        assert!(!blob_error(400, audit_off).refused_without_code());
    }

    #[test]
    fn documented_error_bodies_parse_including_single_quotes() {
        let documented = std::fs::read("tests/fixtures/ms-docs/ms_docs_error_body.json").unwrap();
        let (code, message) = parse_error_body(&documented);
        assert_eq!(code.as_deref(), Some("AF50000"));
        assert!(message.contains("Retry"));
        let quoted = br#"{'error':{'code':'AF429','message':'Too many requests. Method=GetBlob, PublisherId=00000000-0000-0000-0000-000000000000'}}"#;
        assert_eq!(parse_error_body(quoted).0.as_deref(), Some("AF429"));
    }

    #[test]
    fn error_bodies_with_a_byte_order_mark_keep_their_af_code_and_message() {
        let documented = std::fs::read("tests/fixtures/ms-docs/ms_docs_error_body.json").unwrap();
        let marked = [&crate::api::json::UTF8_BOM[..], &documented].concat();
        assert_eq!(parse_error_body(&marked), parse_error_body(&documented));
        let quoted = "\u{FEFF}{'error':{'code':'AF20051','message':'expired'}}";
        assert_eq!(
            parse_error_body(quoted.as_bytes()),
            (Some("AF20051".into()), "expired".into())
        );
        let plain = "\u{FEFF}The service is unavailable.";
        assert_eq!(
            parse_error_body(plain.as_bytes()).1,
            "The service is unavailable.",
            "a text body is quoted without the mark"
        );
    }
}

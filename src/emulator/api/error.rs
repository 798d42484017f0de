//! Error answers of the emulated Management Activity API, in Microsoft's shape:
//! `{"error":{"code":"AF…","message":"…"}}` with the HTTP status Microsoft uses.
//!
//! Every rejection carries a [`Rejection`] response extension naming its code and the
//! rule that rejected it; the inspection middleware counts them for
//! `GET /_emulator/rejections`, so tests can prove which rule fired.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Attached to every rejected response; read by the inspection middleware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The error code in the body (`AF20030`, `AADSTS7000215`, …).
    pub code: String,
    /// The emulator rule that fired, in snake case (`window_too_long`, `bad_secret`, …).
    pub rule: &'static str,
}

/// An AF-coded error of the feed API.
#[derive(Clone, Debug)]
pub struct AfError {
    /// HTTP status.
    pub status: StatusCode,
    /// `AF…` code (or another code Microsoft sends in the same envelope).
    pub code: String,
    /// Message, in Microsoft's words where documented.
    pub message: String,
    /// The emulator rule that fired.
    pub rule: &'static str,
    /// `Retry-After` seconds, for throttling answered as HTTP 429.
    pub retry_after_secs: Option<u64>,
}

impl AfError {
    /// An error with the given status, code, rule and message.
    pub fn new(
        status: StatusCode,
        code: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            rule,
            retry_after_secs: None,
        }
    }

    /// HTTP 400 with the given code.
    pub fn bad_request(
        code: impl Into<String>,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, rule, message)
    }

    /// Adds a `Retry-After` header.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }
}

impl IntoResponse for AfError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: a rejected bearer token is challenged.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Rejection {
            code: self.code,
            rule: self.rule,
        });
        response
    }
}

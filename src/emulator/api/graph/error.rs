//! Microsoft Graph's error answers: the status Graph uses and its envelope
//! `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`,
//! with the `request-id` and `client-request-id` headers (the client's own
//! `client-request-id` echoed when it sent one), `Retry-After` on 429 and 503, and
//! `WWW-Authenticate: Bearer` on 401. Every rejection carries a
//! [`Rejection`](crate::emulator::api::error::Rejection) for `/_emulator/rejections`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use crate::emulator::api::error::{AfError, Rejection};

/// One Graph error.
#[derive(Clone, Debug)]
pub struct GraphError {
    /// HTTP status.
    pub status: StatusCode,
    /// Graph's code (`InvalidAuthenticationToken`, `Authorization_RequestDenied`, …).
    pub code: &'static str,
    /// Message, in Graph's words where known.
    pub message: String,
    /// The emulator rule that fired.
    pub rule: &'static str,
    /// `Retry-After` seconds (429, 503).
    pub retry_after_secs: Option<u64>,
}

impl GraphError {
    /// An error with the given status, code, rule and message.
    pub fn new(
        status: StatusCode,
        code: &'static str,
        rule: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            rule,
            retry_after_secs: None,
        }
    }

    /// HTTP 400 `BadRequest`.
    pub fn bad_request(rule: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", rule, message)
    }

    /// A bearer rejection of the shared token checks, in Graph's envelope (HTTP 401
    /// `InvalidAuthenticationToken`, same message and rule).
    pub fn from_bearer(error: AfError) -> Self {
        Self::new(
            error.status,
            super::super::token::BEARER_ERROR_CODE,
            error.rule,
            error.message,
        )
    }

    /// The answer, stamped with the request's ids and the emulator's time.
    pub fn into_response_for(self, ids: &RequestIds, now: DateTime<Utc>) -> Response {
        let body = serde_json::json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": now.format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": ids.request_id,
                "client-request-id": ids.client_request_id,
            },
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        ids.stamp(headers);
        if let Some(seconds) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Rejection {
            code: self.code.to_string(),
            rule: self.rule,
        });
        response
    }
}

/// The ids Graph puts on every answer.
#[derive(Clone, Debug)]
pub struct RequestIds {
    /// Fresh per request.
    pub request_id: String,
    /// The client's `client-request-id` when it is a GUID, else the request id.
    pub client_request_id: String,
}

impl RequestIds {
    /// Ids for a request with these headers.
    pub fn for_request(headers: &axum::http::HeaderMap) -> Self {
        let request_id = crate::emulator::api::publish::records::random_guid();
        let client_request_id = headers
            .get("client-request-id")
            .and_then(|value| value.to_str().ok())
            .filter(|value| uuid::Uuid::try_parse(value).is_ok())
            .map_or_else(|| request_id.clone(), str::to_string);
        Self {
            request_id,
            client_request_id,
        }
    }

    /// Sets `request-id` and `client-request-id`.
    pub fn stamp(&self, headers: &mut axum::http::HeaderMap) {
        for (name, value) in [
            ("request-id", &self.request_id),
            ("client-request-id", &self.client_request_id),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
    }
}

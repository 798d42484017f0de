//! The `bom_bodies` fault: Microsoft's Management Activity API has put a UTF-8 byte-order
//! mark (`EF BB BF`) in front of its JSON bodies since May 2025 (Elastic's Filebeat broke
//! on it: elastic/beats#44327). With the fault on for a tenant, the emulator does the same.
//!
//! Guarantees, while the tenant's fault is on:
//! - every answer with a JSON `Content-Type` to a request naming the tenant (by GUID or
//!   domain in a login path, by GUID in an API path, by its token's `tid` on Graph) starts
//!   with the mark: token answers and token errors, OpenID discovery, subscriptions,
//!   listings, AF errors (throttling and injected 5xx included), blobs, and Graph's pages
//!   and errors once the token named the tenant. The rest of the body is unchanged, byte for byte,
//!   and a declared `Content-Length` grows by the mark's three bytes, so a blob cut short by
//!   `truncate_rate` is still cut short of its declared length;
//! - every notification POSTed to the tenant's webhook starts with the mark
//!   ([`prefixed`], applied per attempt, so switching the fault takes effect on the next
//!   attempt).
//!
//! Not marked: `/_emulator/*` (the emulator's own routes), requests naming no tenant of
//! the scenario, and the webhook validation POST (its body is ignored by design: a
//! receiver answers it by its `Webhook-ValidationCode` header).

use std::sync::Arc;

use axum::body::Body;
use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;

use super::graph::GraphTenant;
use super::{ApiState, tenant_in_path, token};
use crate::api::json::UTF8_BOM;

/// The middleware (see the module doc).
pub(super) async fn prefix_json_bodies(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if !marks_bodies(&state, &path, &response) || !is_json(&response) {
        return response;
    }
    prefix_response(response)
}

/// True when the request names a scenario tenant (in its path, or Graph's [`GraphTenant`])
/// whose `bom_bodies` fault is on.
fn marks_bodies(state: &ApiState, path: &str, response: &Response) -> bool {
    if path.starts_with("/_emulator/") {
        return false;
    }
    tenant_in_path(path)
        .or_else(|| {
            response
                .extensions()
                .get::<GraphTenant>()
                .map(|GraphTenant(tenant)| tenant.clone())
        })
        .and_then(|named| token::find_tenant(&state.scenario, &named))
        .is_some_and(|tenant| state.feed.faults(&tenant.tenant_id).bom_bodies)
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// The mark, then the body as it streams (an error in it stays an error).
fn prefix_response(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .or_else(|| body.size_hint().exact());
    if let Some(length) = length {
        parts.headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(length + UTF8_BOM.len() as u64),
        );
    }
    let mark = futures_util::stream::once(async { Ok(Bytes::from_static(&UTF8_BOM)) });
    let body = Body::from_stream(futures_util::StreamExt::chain(
        mark,
        body.into_data_stream(),
    ));
    Response::from_parts(parts, body)
}

/// `body` with the mark in front, for a notification POST.
pub fn prefixed(body: &[u8]) -> Bytes {
    Bytes::from([&UTF8_BOM[..], body].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefixed_response_declares_and_carries_three_more_bytes() {
        let response = Response::builder()
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from("[1]"))
            .unwrap();
        assert!(is_json(&response));
        let response = prefix_response(response);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "6");
        let body = axum::body::to_bytes(response.into_body(), 64)
            .await
            .unwrap();
        assert_eq!(&body[..], b"\xEF\xBB\xBF[1]");
        assert_eq!(&prefixed(b"[]")[..], b"\xEF\xBB\xBF[]");
    }

    #[test]
    fn only_json_content_types_are_marked() {
        let with_type = |value: &'static str| {
            Response::builder()
                .header(header::CONTENT_TYPE, value)
                .body(Body::empty())
                .unwrap()
        };
        assert!(is_json(&with_type("Application/JSON")));
        assert!(!is_json(&with_type("application/x-ndjson")));
        assert!(!is_json(&Response::new(Body::empty())));
    }
}

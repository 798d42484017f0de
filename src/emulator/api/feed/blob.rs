//! Blob retrieval, `GET /api/v1.0/{tenant}/activity/feed/audit/{contentId}`
//! (`PublisherIdentifier` accepted).
//!
//! After the common checks: a content id not shaped like ours → HTTP 400 AF20052; no
//! such blob in this tenant, or one stored before its subscription last (re)started →
//! HTTP 404 AF20050 (our status choice: Microsoft documents none, and Elastic skips a
//! 404); its subscription stopped → HTTP 400 AF20023; a `DLP.All` blob without
//! `ActivityFeed.ReadDlp` → HTTP 403 AF10001; past `contentExpiration` by the clock →
//! HTTP 400 AF20051. Otherwise 200, `Content-Type: application/json; charset=utf-8`, the
//! stored bytes with their `Content-Length`.
//!
//! The `blob_404_null` fault answers a listed blob it covers (all, a content type, or one
//! contentId) with HTTP 404 and the body `null`, no AF code, after the checks above and
//! before the expiration check: what an independent mock of the API answered for expired
//! content, where Microsoft sends AF20051.
//!
//! The `truncate_rate` fault (a deterministic share, see `world::take_credit`) answers
//! 200 with the full `Content-Length` but a body that yields half the bytes and then
//! fails, so the server drops the connection before the declared length: the client sees
//! a transport error, never a short but complete response.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use super::FeedState;
use super::listing::JSON_UTF8;
use super::request::{Caller, Params, authorize, dlp_allowed};
use super::subscriptions::subscription_disabled;
use super::world::{content_id_well_formed, take_credit};
use crate::emulator::api::ApiState;
use crate::emulator::api::error::{AfError, Rejection};

/// How long a truncated body pauses before failing, so its head reaches the client.
const TRUNCATION_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// A blob about to be served.
enum Served {
    /// The blob's bytes, cut short when `truncate`.
    Blob { body: Bytes, truncate: bool },
    /// The `blob_404_null` fault: HTTP 404, body `null`.
    NotFoundNull,
}

/// `GET …/audit/{contentId}`.
pub(super) async fn handle_blob(
    State(state): State<Arc<ApiState>>,
    Path((tenant, content_id)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, AfError> {
    let params = Params(params);
    let caller = authorize(&state, &tenant, &headers, &params)?;
    if !content_id_well_formed(&content_id) {
        return Err(AfError::bad_request(
            "AF20052",
            "content_id_invalid",
            format!("Content ID {content_id} in the URL is invalid."),
        ));
    }
    let served = state
        .feed
        .retrieve(&caller, &content_id, state.clock.now())?;
    Ok(blob_response(served))
}

impl FeedState {
    /// The blob's bytes and whether to truncate them, after the retrieval rules.
    fn retrieve(
        &self,
        caller: &Caller,
        content_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Served, AfError> {
        let not_found = || {
            AfError::new(
                StatusCode::NOT_FOUND,
                "AF20050",
                "content_missing",
                format!("The specified content ({content_id}) does not exist."),
            )
        };
        let mut world = self.world();
        let tenant = world.tenant_mut(&caller.tenant_id).ok_or_else(not_found)?;
        let blob = tenant.blob(content_id).ok_or_else(not_found)?;
        let content_type = blob.entry.content_type.clone();
        let subscription = tenant
            .subscriptions
            .get(&content_type)
            .ok_or_else(not_found)?;
        if !subscription.enabled {
            return Err(subscription_disabled());
        }
        if blob.stored_at < subscription.started_at {
            return Err(not_found());
        }
        dlp_allowed(caller, &content_type)?;
        if tenant.faults.answers_404_null(&content_type, content_id) {
            return Ok(Served::NotFoundNull);
        }
        if now >= blob.entry.content_expiration {
            return Err(AfError::bad_request(
                "AF20051",
                "content_expired",
                format!(
                    "Content requested with the key {content_id} has already expired. Content older than 7 days cannot be retrieved."
                ),
            ));
        }
        let body = blob.body.clone();
        let rate = tenant.faults.truncate_rate;
        let truncate = take_credit(&mut tenant.truncate_credit, rate);
        Ok(Served::Blob { body, truncate })
    }
}

fn blob_response(served: Served) -> Response {
    let (body, truncate) = match served {
        Served::Blob { body, truncate } => (body, truncate),
        Served::NotFoundNull => return not_found_null(),
    };
    let length = body.len();
    let body = if truncate {
        truncated_body(body)
    } else {
        Body::from(body)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// HTTP 404 with the JSON body `null`, counted as a rejection of the `blob_404_null` rule
/// (code `HTTP404`: there is no AF code).
fn not_found_null() -> Response {
    let mut response = Response::new(Body::from("null"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8));
    response.extensions_mut().insert(Rejection {
        code: "HTTP404".into(),
        rule: "blob_404_null",
    });
    response
}

/// Half the bytes, then (after a pause that lets the server flush the head and those
/// bytes) a stream error: hyper then drops the connection short of `Content-Length`.
fn truncated_body(body: Bytes) -> Body {
    let head = body.slice(..body.len() / 2);
    let first = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(head)]);
    let failure = futures_util::stream::once(async {
        tokio::time::sleep(TRUNCATION_PAUSE).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "blob truncated by fault injection",
        ))
    });
    Body::from_stream(first.chain(failure))
}

//! `GET subscriptions/content`, `GET subscriptions/notifications` and
//! `GET resources/dlpSensitiveTypes`.
//!
//! Both listings: the common checks, the content type, the window rules of `window`,
//! then the subscription: never started → AF20022, stopped → AF20023.
//! Content lists the blobs of the type stored since the subscription (re)started with
//! `startTime <= contentCreated < endTime`, in the order they became available.
//! Notifications list every delivery attempt since then whose content falls in the
//! window (the same rule on `contentCreated`, as REF words it), and nothing while the
//! subscription has no webhook. Pages of `page_size`, with a `NextPageUri` header (under
//! the `foreign_next_page_base` fault's host when set) while more remain.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::request::{Params, authorize, content_type};
use super::subscriptions::{no_subscription, subscription_disabled};
use super::window::{Window, next_page_uri, paginate};
use super::world::TenantWorld;
use super::{ContentEntry, FeedState, serialize_api_time};
use crate::emulator::api::ApiState;
use crate::emulator::api::error::AfError;

/// Microsoft's content type for JSON answers.
pub(super) const JSON_UTF8: &str = "application/json; charset=utf-8";

/// The two documented sensitive types (REF "Retrieve resource friendly names").
const DLP_SENSITIVE_TYPES: &str = r#"[{"id":"50842eb7-edc8-4019-85dd-5a5c1f2bb085","name":"CreditCardNumber"},{"id":"0e9b3178-9678-47dd-a509-37222ca96b42","name":"EUDebitCardNumber"}]"#;

/// One item of `/subscriptions/notifications`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NotificationView {
    #[serde(flatten)]
    entry: ContentEntry,
    #[serde(serialize_with = "serialize_api_time")]
    notification_sent: DateTime<Utc>,
    notification_status: String,
}

/// Which listing.
#[derive(Clone, Copy)]
enum Listing {
    Content,
    Notifications,
}

impl Listing {
    fn operation(self) -> &'static str {
        match self {
            Self::Content => "content",
            Self::Notifications => "notifications",
        }
    }
}

/// `GET subscriptions/content`.
pub(super) async fn handle_content(
    state: State<Arc<ApiState>>,
    tenant: Path<String>,
    params: Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, AfError> {
    handle_listing(Listing::Content, state, tenant, params, headers)
}

/// `GET subscriptions/notifications`.
pub(super) async fn handle_notifications(
    state: State<Arc<ApiState>>,
    tenant: Path<String>,
    params: Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, AfError> {
    handle_listing(Listing::Notifications, state, tenant, params, headers)
}

fn handle_listing(
    listing: Listing,
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, AfError> {
    let params = Params(params);
    let caller = authorize(&state, &tenant, &headers, &params)?;
    let content_type = content_type(&params, &caller)?;
    let window = Window::from_params(&params, state.clock.now())?;
    let request = ListingRequest {
        tenant_id: &caller.tenant_id,
        content_type,
        window,
        next_page: params.get("nextPage"),
        page_size: state.scenario.page_size,
    };
    let page = state.feed.list(listing, &request)?;
    let next_page_uri = page.next_page.map(|token| {
        let base = page.foreign_base.as_deref().unwrap_or(&state.base_url);
        next_page_uri(
            base,
            &caller.tenant_id,
            listing.operation(),
            content_type,
            &window,
            &token,
        )
    });
    Ok(json_response(page.body, next_page_uri.as_deref()))
}

/// One page of a listing, serialized.
struct ListingPage {
    /// The JSON array.
    body: Vec<u8>,
    /// The token of the next page, while more remain.
    next_page: Option<String>,
    /// The `foreign_next_page_base` fault, when on.
    foreign_base: Option<String>,
}

/// What a listing asks for, once checked.
struct ListingRequest<'a> {
    tenant_id: &'a str,
    content_type: &'a str,
    window: Window,
    next_page: Option<&'a str>,
    page_size: usize,
}

/// A 200 JSON answer with Microsoft's content type and, when given, `NextPageUri`.
fn json_response(body: Vec<u8>, next_page_uri: Option<&str>) -> Response {
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
        body,
    )
        .into_response();
    if let Some(value) = next_page_uri.and_then(|uri| HeaderValue::from_str(uri).ok()) {
        response.headers_mut().insert("NextPageUri", value);
    }
    response
}

impl FeedState {
    /// The page asked for, after the subscription rules.
    fn list(&self, listing: Listing, request: &ListingRequest<'_>) -> Result<ListingPage, AfError> {
        let world = self.world();
        let tenant = world
            .tenant(request.tenant_id)
            .ok_or_else(no_subscription)?;
        let subscription = tenant
            .subscriptions
            .get(request.content_type)
            .ok_or_else(no_subscription)?;
        if !subscription.enabled {
            return Err(subscription_disabled());
        }
        let since = subscription.started_at;
        let (body, next) = match listing {
            Listing::Content => {
                let items = content_items(tenant, request, since);
                let (page, next) = paginate(items, request.next_page, request.page_size)?;
                (to_json(&page), next)
            }
            Listing::Notifications => {
                let items = if subscription.webhook.is_some() {
                    notification_items(tenant, request, since)
                } else {
                    Vec::new()
                };
                let (page, next) = paginate(items, request.next_page, request.page_size)?;
                (to_json(&page), next)
            }
        };
        Ok(ListingPage {
            body,
            next_page: next,
            foreign_base: tenant.faults.foreign_next_page_base.clone(),
        })
    }
}

fn content_items(
    tenant: &TenantWorld,
    request: &ListingRequest<'_>,
    since: DateTime<Utc>,
) -> Vec<(u64, ContentEntry)> {
    tenant
        .blobs
        .iter()
        .filter(|blob| {
            blob.entry.content_type == request.content_type
                && blob.stored_at >= since
                && request.window.contains(blob.entry.content_created)
        })
        .map(|blob| (blob.sequence, blob.entry.clone()))
        .collect()
}

fn notification_items(
    tenant: &TenantWorld,
    request: &ListingRequest<'_>,
    since: DateTime<Utc>,
) -> Vec<(u64, NotificationView)> {
    tenant
        .notifications
        .iter()
        .enumerate()
        .filter(|(_, record)| {
            record.entry.content_type == request.content_type
                && record.sent >= since
                && request.window.contains(record.entry.content_created)
        })
        .map(|(position, record)| {
            let view = NotificationView {
                entry: record.entry.clone(),
                notification_sent: record.sent,
                notification_status: record.status.clone(),
            };
            (position as u64, view)
        })
        .collect()
}

fn to_json<T: Serialize>(items: &[T]) -> Vec<u8> {
    // Serializing plain structs of strings and times cannot fail.
    serde_json::to_vec(items).unwrap_or_else(|_| b"[]".to_vec())
}

/// `GET resources/dlpSensitiveTypes`: one language at most in `Accept-Language`
/// (AF20053), in valid syntax (AF20054).
pub(super) async fn handle_dlp_sensitive_types(
    State(state): State<Arc<ApiState>>,
    Path(tenant): Path<String>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, AfError> {
    let params = Params(params);
    authorize(&state, &tenant, &headers, &params)?;
    if let Some(value) = headers.get(header::ACCEPT_LANGUAGE) {
        check_accept_language(value)?;
    }
    Ok(json_response(DLP_SENSITIVE_TYPES.as_bytes().to_vec(), None))
}

fn check_accept_language(value: &HeaderValue) -> Result<(), AfError> {
    let invalid = || {
        AfError::bad_request(
            "AF20054",
            "accept_language_invalid",
            "Invalid syntax in Accept-Language header.",
        )
    };
    let text = value.to_str().map_err(|_| invalid())?;
    let languages: Vec<&str> = text.split(',').map(str::trim).collect();
    if !languages
        .iter()
        .all(|language| language_range_valid(language))
    {
        return Err(invalid());
    }
    if languages.len() > 1 {
        return Err(AfError::bad_request(
            "AF20053",
            "accept_language_several",
            "Only one language may be present in the Accept-Language header.",
        ));
    }
    Ok(())
}

/// `en`, `en-US`, `zh-Hant-TW`, `*`, optionally with `;q=0.8`.
fn language_range_valid(range: &str) -> bool {
    let (tag, quality) = match range.split_once(';') {
        Some((tag, quality)) => (tag.trim(), Some(quality.trim())),
        None => (range, None),
    };
    let quality_valid = quality.is_none_or(|quality| {
        quality
            .strip_prefix("q=")
            .is_some_and(|value| value.parse::<f32>().is_ok_and(|q| (0.0..=1.0).contains(&q)))
    });
    let mut subtags = tag.split('-');
    let primary_valid = subtags.next().is_some_and(|primary| {
        primary == "*"
            || (1..=8).contains(&primary.len()) && primary.bytes().all(|b| b.is_ascii_alphabetic())
    });
    primary_valid
        && quality_valid
        && subtags.all(|subtag| {
            (1..=8).contains(&subtag.len()) && subtag.bytes().all(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_rules() {
        let check = |text: &'static str| check_accept_language(&HeaderValue::from_static(text));
        assert!(check("en-US").is_ok());
        assert!(check("fr").is_ok());
        assert_eq!(check("en-US, fr-FR").unwrap_err().code, "AF20053");
        assert_eq!(check("en_US!").unwrap_err().code, "AF20054");
        assert_eq!(check("").unwrap_err().code, "AF20054");
    }
}

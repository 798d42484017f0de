//! Which URLs may carry a tenant's token besides the ones the client builds itself: a
//! contentUri (from a notification, a listing or the queue) and a `NextPageUri`.
//!
//! Guarantees: a URL passes [`check_feed_uri`] only when
//! - its scheme, host and port are the tenant's API base's (the origin rule);
//! - it has no user info (`user:pw@`: the host would get a Basic header beside the
//!   Bearer one) and no fragment;
//! - a contentUri has no query (Microsoft's have none; the client adds
//!   `PublisherIdentifier` itself); a `NextPageUri` has one, it carries the window and
//!   the page token;
//! - its path starts with the tenant's feed root, the API base's path followed by
//!   `/api/v1.0/{tenant}/activity/feed/`, and goes on with at least one non-empty
//!   segment, none of which encodes a slash or a backslash (a server decoding them would
//!   climb out of the feed root). Segments compare ASCII case-insensitively, as tenant
//!   GUIDs come in either case. An override with a base path
//!   (`api_url = "https://proxy.example/o365"`) keeps working: its path is part of the root.
//!
//! So a token is sent only to the operations of the tenant's own feed, never to another
//! path on the API host.

use reqwest::Url;

/// What kind of URL is checked: the rules differ only on the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedUriKind {
    /// A blob address from a notification, a listing or the queue.
    ContentUri,
    /// A listing's next page, followed verbatim.
    NextPageUri,
}

impl FeedUriKind {
    fn name(self) -> &'static str {
        match self {
            Self::ContentUri => "contentUri",
            Self::NextPageUri => "NextPageUri",
        }
    }
}

/// Why a URL may not carry the tenant's token. Names the URL's origin, never its path or
/// query (which the sender chose).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FeedUriError {
    /// Another scheme, host or port than the API base's.
    #[error("{kind} origin {origin} is not the tenant's API host {expected}")]
    ForeignOrigin {
        /// contentUri or NextPageUri.
        kind: &'static str,
        /// Scheme, host and port of the URL.
        origin: String,
        /// Scheme, host and port of the API base.
        expected: String,
    },
    /// `user[:password]@` before the host.
    #[error("{kind} carries user info")]
    UserInfo {
        /// contentUri or NextPageUri.
        kind: &'static str,
    },
    /// A query on a contentUri.
    #[error("{kind} carries a query")]
    Query {
        /// contentUri or NextPageUri.
        kind: &'static str,
    },
    /// A `#fragment`.
    #[error("{kind} carries a fragment")]
    Fragment {
        /// contentUri or NextPageUri.
        kind: &'static str,
    },
    /// The path is not under the tenant's feed root.
    #[error("{kind} path is not under the tenant's feed root {feed_root}/")]
    OutsideFeedRoot {
        /// contentUri or NextPageUri.
        kind: &'static str,
        /// `{api base}/api/v1.0/{tenant}/activity/feed`.
        feed_root: String,
    },
}

/// Checks `uri` against the rules of the module doc for the tenant `tenant_id` whose API
/// base is `api_base`.
pub fn check_feed_uri(
    kind: FeedUriKind,
    api_base: &Url,
    tenant_id: &str,
    uri: &Url,
) -> Result<(), FeedUriError> {
    let name = kind.name();
    if !crate::cloud::same_origin(uri, api_base) {
        return Err(FeedUriError::ForeignOrigin {
            kind: name,
            origin: uri.origin().ascii_serialization(),
            expected: api_base.origin().ascii_serialization(),
        });
    }
    if !uri.username().is_empty() || uri.password().is_some() {
        return Err(FeedUriError::UserInfo { kind: name });
    }
    if uri.fragment().is_some() {
        return Err(FeedUriError::Fragment { kind: name });
    }
    if kind == FeedUriKind::ContentUri && uri.query().is_some() {
        return Err(FeedUriError::Query { kind: name });
    }
    let root = feed_root_segments(api_base, tenant_id);
    let outside = || FeedUriError::OutsideFeedRoot {
        kind: name,
        feed_root: format!(
            "{}/{}",
            api_base.origin().ascii_serialization(),
            root.join("/")
        ),
    };
    let segments: Vec<&str> = uri.path_segments().ok_or_else(outside)?.collect();
    let Some(rest) = strip_segments(&segments, &root).filter(|rest| !rest.is_empty()) else {
        return Err(outside());
    };
    if rest.iter().any(|segment| !is_plain_segment(segment)) {
        return Err(outside());
    }
    Ok(())
}

/// The non-empty segments of the API base's path, then `api/v1.0/{tenant}/activity/feed`.
fn feed_root_segments<'a>(api_base: &'a Url, tenant_id: &'a str) -> Vec<&'a str> {
    let mut root: Vec<&str> = api_base
        .path_segments()
        .map(|segments| segments.filter(|segment| !segment.is_empty()).collect())
        .unwrap_or_default();
    root.extend(["api", "v1.0", tenant_id, "activity", "feed"]);
    root
}

/// Non-empty, and no percent-encoded slash or backslash.
fn is_plain_segment(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase();
    !segment.is_empty() && !lower.contains("%2f") && !lower.contains("%5c")
}

/// `segments` after `prefix`, comparing ASCII case-insensitively; `None` unless they
/// start with it.
fn strip_segments<'a, 'b>(segments: &'b [&'a str], prefix: &[&str]) -> Option<&'b [&'a str]> {
    let matches = segments.len() >= prefix.len()
        && segments
            .iter()
            .zip(prefix)
            .all(|(segment, expected)| segment.eq_ignore_ascii_case(expected));
    matches.then(|| &segments[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "41463f53-8812-40f4-890f-865bf6e35190";

    fn check(kind: FeedUriKind, base: &str, uri: &str) -> Result<(), FeedUriError> {
        check_feed_uri(
            kind,
            &Url::parse(base).unwrap(),
            TENANT,
            &Url::parse(uri).unwrap(),
        )
    }

    fn content(uri: &str) -> Result<(), FeedUriError> {
        check(FeedUriKind::ContentUri, "https://manage.office.com", uri)
    }

    #[test]
    fn microsofts_content_uris_and_next_pages_pass() {
        let blob = format!(
            "https://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/301a4f3a$audit_sharepoint$Audit_SharePoint$na0034"
        );
        assert_eq!(content(&blob), Ok(()));
        assert_eq!(
            content(
                &blob
                    .to_uppercase()
                    .replace("HTTPS://MANAGE.OFFICE.COM", "https://manage.office.com")
            ),
            Ok(()),
            "segments compare case-insensitively"
        );
        let next = format!(
            "https://manage.office.com/api/v1.0/{TENANT}/activity/feed/subscriptions/content?contentType=Audit.SharePoint&startTime=2015-10-01&endTime=2015-10-02&nextPage=2015101900R022885001761"
        );
        assert_eq!(
            check(FeedUriKind::NextPageUri, "https://manage.office.com", &next),
            Ok(())
        );
    }

    #[test]
    fn user_info_queries_fragments_and_other_paths_are_refused() {
        let root = format!("https://manage.office.com/api/v1.0/{TENANT}/activity/feed");
        let refused = [
            format!("https://user:pw@manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/1"),
            format!("https://user@manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/1"),
            format!("{root}/audit/1?redirect=elsewhere"),
            format!("{root}/audit/1#fragment"),
            format!("{root}/"),
            root.clone(),
            format!("https://manage.office.com/api/v1.0/{TENANT}/admin/audit/1"),
            format!("https://manage.office.com/other/api/v1.0/{TENANT}/activity/feed/audit/1"),
            format!(
                "https://manage.office.com/api/v1.0/0b6d3c3e-1111-4222-8333-444455556666/activity/feed/audit/{TENANT}"
            ),
            format!("{root}/audit%2F..%2F..%2Fadmin"),
            format!("{root}/audit%5c..%5cadmin"),
            format!("{root}/../../admin/x"),
            format!("https://attacker.example/api/v1.0/{TENANT}/activity/feed/audit/1"),
        ];
        for uri in &refused {
            assert!(content(uri).is_err(), "{uri} must be refused");
        }
        assert_eq!(
            content(&format!("{root}/audit/1?a=b")),
            Err(FeedUriError::Query { kind: "contentUri" })
        );
        let next_with_user = format!(
            "https://u@manage.office.com/api/v1.0/{TENANT}/activity/feed/subscriptions/content?x=1"
        );
        assert_eq!(
            check(
                FeedUriKind::NextPageUri,
                "https://manage.office.com",
                &next_with_user
            ),
            Err(FeedUriError::UserInfo {
                kind: "NextPageUri"
            })
        );
    }

    #[test]
    fn an_api_base_with_a_path_moves_the_feed_root_under_it() {
        let base = "https://proxy.example/o365/";
        let under = format!("https://proxy.example/o365/api/v1.0/{TENANT}/activity/feed/audit/1");
        assert_eq!(check(FeedUriKind::ContentUri, base, &under), Ok(()));
        assert_eq!(
            check(
                FeedUriKind::ContentUri,
                "https://proxy.example/o365",
                &under
            ),
            Ok(()),
            "with or without the trailing slash"
        );
        let beside = format!("https://proxy.example/api/v1.0/{TENANT}/activity/feed/audit/1");
        let error = check(FeedUriKind::ContentUri, base, &beside).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "contentUri path is not under the tenant's feed root https://proxy.example/o365/api/v1.0/{TENANT}/activity/feed/"
            )
        );
    }
}

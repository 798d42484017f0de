//! The OData query of `List riskDetections`, as far as the emulator serves it, and the
//! opaque `$skiptoken` of its next pages.
//!
//! - `$filter`: comparisons of `lastUpdatedDateTime` with `ge`, `gt`, `le` or `lt` and an
//!   unquoted ISO 8601 instant (OData's `DateTimeOffset` literal), joined by `and`
//!   (`lastUpdatedDateTime ge 2026-12-01T00:00:00Z and lastUpdatedDateTime lt …`). A
//!   quoted instant is a string and answers Graph's type mismatch; anything else answers
//!   HTTP 400 `BadRequest`.
//! - `$orderby`: `lastUpdatedDateTime` with `asc` (the default) or `desc`; ties are
//!   broken by `id`, so the order is total and pages never overlap.
//! - `$top`: 1 to 500 (Microsoft: "The default page size is 20 objects while the maximum
//!   with `$top` is 500"); out of range answers HTTP 400.
//! - `$skiptoken`: only as handed out in `@odata.nextLink`. It holds the cut-off (the
//!   newest version published when the first page was served: later publications and
//!   updates do not show in the remaining pages, so no detection appears twice or
//!   shifts the pages), the last (time, id) served, and a fingerprint of the tenant and
//!   query it belongs to; a token altered or replayed with another query answers 400.
//!
//! Other `$` options (`$select`, `$count`, `$skip`, …) are not served and answer 400
//! naming them.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::error::GraphError;

/// Default page size.
pub const DEFAULT_TOP: usize = 20;
/// Largest `$top`.
pub const MAX_TOP: usize = 500;

/// The filtered property.
const WATERMARK: &str = "lastUpdatedDateTime";

/// A comparison operator of `$filter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// `ge`.
    AtOrAfter,
    /// `gt`.
    After,
    /// `le`.
    AtOrBefore,
    /// `lt`.
    Before,
}

/// A checked query.
#[derive(Clone, Debug, PartialEq)]
pub struct ListQuery {
    /// Every comparison must hold.
    pub filter: Vec<(Comparison, DateTime<Utc>)>,
    /// Newest first.
    pub descending: bool,
    /// Page size.
    pub top: usize,
}

/// Where the next page starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkipToken {
    /// Only versions published up to this sequence number are listed.
    pub cutoff: u64,
    /// The last (`lastUpdatedDateTime`, id) served.
    pub after: (DateTime<Utc>, String),
    fingerprint: String,
}

impl ListQuery {
    /// True when `time` passes the filter.
    pub fn matches(&self, time: DateTime<Utc>) -> bool {
        self.filter
            .iter()
            .all(|(comparison, bound)| match comparison {
                Comparison::AtOrAfter => time >= *bound,
                Comparison::After => time > *bound,
                Comparison::AtOrBefore => time <= *bound,
                Comparison::Before => time < *bound,
            })
    }

    /// Binds the query to a tenant, so a token is only good for the listing it came from.
    fn fingerprint(&self, tenant_id: &str) -> String {
        let digest = Sha256::digest(format!("{}/{self:?}", tenant_id.to_ascii_lowercase()));
        hex::encode(&digest[..8])
    }

    /// The token of the page after `after`.
    pub fn skip_token(&self, tenant_id: &str, cutoff: u64, after: (DateTime<Utc>, &str)) -> String {
        let nanos = after.0.timestamp_nanos_opt().unwrap_or_default();
        let text = format!(
            "{cutoff}.{nanos}.{}.{}",
            self.fingerprint(tenant_id),
            after.1
        );
        URL_SAFE_NO_PAD.encode(text)
    }
}

/// Parses the query string (option names case-insensitive); `Ok((query, token))`.
pub fn parse(
    params: &[(String, String)],
    tenant_id: &str,
) -> Result<(ListQuery, Option<SkipToken>), GraphError> {
    let mut query = ListQuery {
        filter: Vec::new(),
        descending: false,
        top: DEFAULT_TOP,
    };
    let mut token = None;
    for (name, value) in params {
        match name.to_ascii_lowercase().as_str() {
            "$filter" => query.filter = parse_filter(value)?,
            "$orderby" => query.descending = parse_order(value)?,
            "$top" => query.top = parse_top(value)?,
            "$skiptoken" => token = Some(value.clone()),
            other if other.starts_with('$') => {
                return Err(GraphError::bad_request(
                    "graph_query_option_unsupported",
                    format!(
                        "Query option '{}' is not supported by the emulator for this \
                         resource; it serves $filter, $orderby, $top and $skiptoken.",
                        printable(name)
                    ),
                ));
            }
            _ => {}
        }
    }
    let token = token
        .map(|token| decode_token(&token, &query.fingerprint(tenant_id)))
        .transpose()?;
    Ok((query, token))
}

fn parse_filter(text: &str) -> Result<Vec<(Comparison, DateTime<Utc>)>, GraphError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut filter = Vec::new();
    for (index, clause) in words.split(|word| *word == "and").enumerate() {
        let [property, operator, literal] = clause else {
            return Err(invalid_filter(text));
        };
        if index > 1 || *property != WATERMARK {
            return Err(invalid_filter(text));
        }
        let comparison = match *operator {
            "ge" => Comparison::AtOrAfter,
            "gt" => Comparison::After,
            "le" => Comparison::AtOrBefore,
            "lt" => Comparison::Before,
            _ => return Err(invalid_filter(text)),
        };
        if literal.starts_with('\'') {
            return Err(GraphError::bad_request(
                "graph_filter_type_mismatch",
                format!(
                    "A binary operator with incompatible types was detected. Found operand \
                     types 'Edm.DateTimeOffset' and 'Edm.String' for operator kind '{}'.",
                    operator_kind(comparison)
                ),
            ));
        }
        let instant = DateTime::parse_from_rfc3339(literal)
            .map_err(|_| invalid_filter(text))?
            .with_timezone(&Utc);
        filter.push((comparison, instant));
    }
    Ok(filter)
}

fn operator_kind(comparison: Comparison) -> &'static str {
    match comparison {
        Comparison::AtOrAfter => "GreaterThanOrEqual",
        Comparison::After => "GreaterThan",
        Comparison::AtOrBefore => "LessThanOrEqual",
        Comparison::Before => "LessThan",
    }
}

fn invalid_filter(text: &str) -> GraphError {
    GraphError::bad_request(
        "graph_filter_invalid",
        format!(
            "Invalid filter clause: '{}'. The emulator serves comparisons of \
             lastUpdatedDateTime (ge, gt, le, lt) with an unquoted ISO 8601 instant, at most \
             two joined by 'and'.",
            printable(text)
        ),
    )
}

fn parse_order(text: &str) -> Result<bool, GraphError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [WATERMARK] | [WATERMARK, "asc"] => Ok(false),
        [WATERMARK, "desc"] => Ok(true),
        _ => Err(GraphError::bad_request(
            "graph_orderby_invalid",
            format!(
                "Invalid $orderby: '{}'. The emulator orders by lastUpdatedDateTime asc or desc.",
                printable(text)
            ),
        )),
    }
}

fn parse_top(text: &str) -> Result<usize, GraphError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|top| (1..=MAX_TOP).contains(top))
        .ok_or_else(|| {
            GraphError::bad_request(
                "graph_top_invalid",
                format!(
                    "Invalid page size specified: '{}'. Must be between 1 and {MAX_TOP} inclusive.",
                    printable(text)
                ),
            )
        })
}

fn decode_token(token: &str, fingerprint: &str) -> Result<SkipToken, GraphError> {
    let invalid = || {
        GraphError::bad_request(
            "graph_skiptoken_invalid",
            "Invalid $skiptoken: follow @odata.nextLink as it is, with the query it came with.",
        )
    };
    let text = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(invalid)?;
    let mut parts = text.splitn(4, '.');
    let cutoff = parts.next().and_then(|part| part.parse().ok());
    let nanos = parts.next().and_then(|part| part.parse::<i64>().ok());
    let (Some(cutoff), Some(nanos), Some(found), Some(id)) =
        (cutoff, nanos, parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    if found != fingerprint {
        return Err(invalid());
    }
    Ok(SkipToken {
        cutoff,
        after: (DateTime::from_timestamp_nanos(nanos), id.to_string()),
        fingerprint: found.to_string(),
    })
}

/// At most 200 characters of `value`, control characters dropped.
fn printable(value: &str) -> String {
    crate::emulator::api::token::aadsts::printable(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn the_connectors_query_parses_and_bounds_are_inclusive_or_not() {
        let (query, token) = parse(
            &params(&[
                ("$filter", "lastUpdatedDateTime ge 2026-12-01T00:00:00Z"),
                ("$orderby", "lastUpdatedDateTime asc"),
                ("$top", "500"),
            ]),
            "t",
        )
        .unwrap();
        assert!(token.is_none());
        assert_eq!(query.top, 500);
        let instant: DateTime<Utc> = "2026-12-01T00:00:00Z".parse().unwrap();
        assert!(query.matches(instant));
        let (strict, _) = parse(
            &params(&[(
                "$filter",
                "lastUpdatedDateTime gt 2026-12-01T00:00:00Z and lastUpdatedDateTime lt 2026-12-02T00:00:00Z",
            )]),
            "t",
        )
        .unwrap();
        assert!(!strict.matches(instant));
        assert!(strict.matches(instant + chrono::Duration::nanoseconds(100)));
        assert!(!strict.matches("2026-12-02T00:00:00Z".parse().unwrap()));
    }

    #[test]
    fn graph_refuses_what_it_does_not_serve() {
        for (name, value, rule) in [
            ("$top", "501", "graph_top_invalid"),
            ("$top", "0", "graph_top_invalid"),
            ("$filter", "riskLevel eq 'high'", "graph_filter_invalid"),
            (
                "$filter",
                "lastUpdatedDateTime ge '2026-12-01T00:00:00Z'",
                "graph_filter_type_mismatch",
            ),
            ("$orderby", "detectedDateTime desc", "graph_orderby_invalid"),
            ("$count", "true", "graph_query_option_unsupported"),
            ("$skiptoken", "bm9wZQ", "graph_skiptoken_invalid"),
        ] {
            let error = parse(&params(&[(name, value)]), "t").unwrap_err();
            assert_eq!(
                (error.status.as_u16(), error.rule),
                (400, rule),
                "{name}={value}"
            );
        }
    }

    #[test]
    fn a_skip_token_is_bound_to_its_tenant_and_query() {
        let (query, _) = parse(&params(&[("$top", "2")]), "t").unwrap();
        let time: DateTime<Utc> = "2026-12-01T00:00:00.1234567Z".parse().unwrap();
        let token = query.skip_token("t", 7, (time, "abc"));
        let (_, decoded) = parse(&params(&[("$top", "2"), ("$skiptoken", &token)]), "T").unwrap();
        assert_eq!(decoded.unwrap().after, (time, "abc".to_string()));
        assert!(parse(&params(&[("$top", "3"), ("$skiptoken", &token)]), "t").is_err());
        assert!(parse(&params(&[("$top", "2"), ("$skiptoken", &token)]), "u").is_err());
    }
}

//! Checks common to every feed and blob request, in this order (the first failure
//! answers):
//!
//! 1. the URL tenant is a GUID, else HTTP 400 AF20013;
//! 2. the bearer token verifies (signature, audience, expiry), else HTTP 401;
//! 3. the token's `tid` is the URL tenant, else AF20010 (HTTP 401: our status choice,
//!    Microsoft documents none);
//! 4. the tenant exists, else HTTP 400 AF20011;
//! 5. its unified audit logging is on, else HTTP 400 with Microsoft's
//!    `DataServiceException … Tenant <id> does not exist.` message (our status and code
//!    choice; rule `audit_disabled`, distinct from AF20011);
//! 6. the token has `ActivityFeed.Read`, else HTTP 403 AF10001 echoing its roles;
//! 7. `PublisherIdentifier`, when given, is a GUID, else HTTP 400 AF20002.
//!
//! Content-type checks ([`content_type`]) follow in the handlers that take one. Nothing
//! secret (tokens) is ever copied into a message.

use axum::http::{HeaderMap, StatusCode};

use crate::emulator::api::ApiState;
use crate::emulator::api::error::AfError;
use crate::emulator::api::scenario::{CONTENT_TYPES, ROLE_READ, ROLE_READ_DLP};
use crate::emulator::api::token::verify_bearer;

/// The query string, looked up case-insensitively as Microsoft's service does.
pub(super) struct Params(pub Vec<(String, String)>);

impl Params {
    /// The first value of `name`, whatever its case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A request that passed the common checks.
pub(super) struct Caller {
    /// The tenant GUID, as the scenario spells it.
    pub tenant_id: String,
    /// The token's roles.
    pub roles: Vec<String>,
    /// `PublisherIdentifier`, when given.
    pub publisher: Option<String>,
}

impl Caller {
    /// True when the token carries `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|granted| granted == role)
    }
}

/// Runs the common checks (see the module doc).
pub(super) fn authorize(
    state: &ApiState,
    url_tenant: &str,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Caller, AfError> {
    if !is_guid(url_tenant) {
        return Err(AfError::bad_request(
            "AF20013",
            "tenant_not_guid",
            format!("The tenant ID passed in the URL ({url_tenant}) is not a valid GUID."),
        ));
    }
    let claims = verify_bearer(state, headers)?;
    if !claims.tid.eq_ignore_ascii_case(url_tenant) {
        return Err(AfError::new(
            StatusCode::UNAUTHORIZED,
            "AF20010",
            "token_tenant_mismatch",
            format!(
                "The tenant ID passed in the URL ({url_tenant}) does not match the tenant ID passed in the access token ({}).",
                claims.tid
            ),
        ));
    }
    let tenant = state.scenario.tenant(url_tenant).ok_or_else(|| {
        AfError::bad_request(
            "AF20011",
            "tenant_unknown",
            format!(
                "Specified tenant ID ({url_tenant}) does not exist in the system or has been deleted."
            ),
        )
    })?;
    if !tenant.audit_enabled {
        return Err(AfError::bad_request(
            "DataServiceException",
            "audit_disabled",
            format!(
                "Microsoft.Office.Compliance.Audit.DataServiceException: Tenant {} does not exist.",
                tenant.tenant_id
            ),
        ));
    }
    let caller = Caller {
        tenant_id: tenant.tenant_id.clone(),
        roles: claims.roles,
        publisher: params.get("PublisherIdentifier").map(str::to_string),
    };
    if !caller.has_role(ROLE_READ) {
        return Err(permission_missing(&caller, ROLE_READ, "read_role_missing"));
    }
    if caller
        .publisher
        .as_deref()
        .is_some_and(|value| !is_guid(value))
    {
        return Err(invalid_parameter("PublisherIdentifier", "guid"));
    }
    Ok(caller)
}

/// The `contentType` parameter, in the API's spelling: missing → AF20001, not one of the
/// five → AF20020, `DLP.All` without `ActivityFeed.ReadDlp` → HTTP 403 AF10001 (our
/// choice where Microsoft documents nothing).
pub(super) fn content_type(params: &Params, caller: &Caller) -> Result<&'static str, AfError> {
    let requested = params.get("contentType").ok_or_else(|| {
        AfError::bad_request(
            "AF20001",
            "content_type_missing",
            "Missing parameter: contentType.",
        )
    })?;
    let content_type = known_content_type(requested).ok_or_else(|| {
        AfError::bad_request(
            "AF20020",
            "content_type_invalid",
            "The specified content type is not valid.",
        )
    })?;
    dlp_allowed(caller, content_type)?;
    Ok(content_type)
}

/// The API spelling of a content type given in any case.
pub(super) fn known_content_type(requested: &str) -> Option<&'static str> {
    CONTENT_TYPES
        .iter()
        .copied()
        .find(|known| known.eq_ignore_ascii_case(requested))
}

/// `DLP.All` needs `ActivityFeed.ReadDlp`.
pub(super) fn dlp_allowed(caller: &Caller, content_type: &str) -> Result<(), AfError> {
    if content_type == "DLP.All" && !caller.has_role(ROLE_READ_DLP) {
        return Err(permission_missing(
            caller,
            ROLE_READ_DLP,
            "dlp_role_missing",
        ));
    }
    Ok(())
}

/// HTTP 403 AF10001, echoing the token's permission set.
fn permission_missing(caller: &Caller, role: &str, rule: &'static str) -> AfError {
    AfError::new(
        StatusCode::FORBIDDEN,
        "AF10001",
        rule,
        format!(
            "The permission set ({}) sent in the request did not include the expected permission {role}.",
            caller.roles.join(" ")
        ),
    )
}

/// HTTP 400 AF20002.
pub(super) fn invalid_parameter(name: &str, expected: &str) -> AfError {
    AfError::bad_request(
        "AF20002",
        "parameter_invalid",
        format!("Invalid parameter type: {name}. Expected type: {expected}"),
    )
}

/// True for `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` in hex digits.
pub(super) fn is_guid(value: &str) -> bool {
    let bytes = value.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => *byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_shape_is_checked() {
        assert!(is_guid("41463f53-8812-40f4-890f-865bf6e35190"));
        assert!(is_guid("41463F53-8812-40F4-890F-865BF6E35190"));
        assert!(!is_guid("41463f53881240f4890f865bf6e35190"));
        assert!(!is_guid("contoso.onmicrosoft.com"));
        assert!(!is_guid("41463f53-8812-40f4-890f-865bf6e3519g"));
    }

    #[test]
    fn params_are_case_insensitive() {
        let params = Params(vec![("contenttype".into(), "Audit.General".into())]);
        assert_eq!(params.get("contentType"), Some("Audit.General"));
        assert_eq!(known_content_type("audit.general"), Some("Audit.General"));
        assert_eq!(known_content_type("Audit.Nothing"), None);
    }
}

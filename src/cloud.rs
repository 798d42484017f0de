//! The four Microsoft 365 clouds the Management Activity API runs in, and the endpoints a
//! tenant talks to.
//!
//! [`Cloud`] is the preset: login authority, API host and token scope as Microsoft documents
//! them (spec `o365-management-api.md` §1.1, UTMStack's table in `utmstack-engine.md` §5).
//! [`Endpoints`] is what a tenant actually uses: the preset, with the login and API base URLs
//! optionally overridden (tests, emulators, proxies). An override changes where requests go,
//! never the token scope: the scope names Microsoft's resource, not the host we talk to.
//!
//! Guarantees: preset URLs are `https` and carry no trailing slash; every URL built here
//! appends path segments to the base (so a base with a path prefix keeps it) and
//! percent-encodes the tenant segment.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use url::Url;

/// A Microsoft 365 cloud. Configuration spells it as UTMStack does:
/// `"Commercial"` (the default), `"GCC"`, `"GCCHigh"`, `"DoD"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Cloud {
    /// The commercial (enterprise) cloud, "Enterprise" in Microsoft's wording.
    #[default]
    Commercial,
    /// GCC (US government community cloud, on the public Entra authority).
    #[serde(rename = "GCC")]
    Gcc,
    /// GCC High (US government, on the Entra Government authority).
    #[serde(rename = "GCCHigh")]
    GccHigh,
    /// DoD (US Department of Defense, on the Entra Government authority).
    #[serde(rename = "DoD")]
    Dod,
}

impl Cloud {
    /// Every cloud, in the order of the spec tables.
    pub const ALL: [Cloud; 4] = [Cloud::Commercial, Cloud::Gcc, Cloud::GccHigh, Cloud::Dod];

    /// The configuration spelling: `"Commercial"`, `"GCC"`, `"GCCHigh"` or `"DoD"`.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Commercial => "Commercial",
            Cloud::Gcc => "GCC",
            Cloud::GccHigh => "GCCHigh",
            Cloud::Dod => "DoD",
        }
    }

    /// The Entra login authority, without a trailing slash.
    pub fn login_url(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::GccHigh | Cloud::Dod => "https://login.microsoftonline.us",
        }
    }

    /// The Management Activity API base URL, without a trailing slash.
    pub fn api_url(self) -> &'static str {
        self.resource()
    }

    /// The token resource (v1 `resource=`, and the audience of the token): equal to the API
    /// host, with no trailing slash (a trailing slash yields a token with the wrong audience).
    pub fn resource(self) -> &'static str {
        match self {
            Cloud::Commercial => "https://manage.office.com",
            Cloud::Gcc => "https://manage-gcc.office.com",
            Cloud::GccHigh => "https://manage.office365.us",
            Cloud::Dod => "https://manage.protection.apps.mil",
        }
    }

    /// The v2 client-credentials scope: the resource followed by `/.default`.
    pub fn token_scope(self) -> &'static str {
        match self {
            Cloud::Commercial => "https://manage.office.com/.default",
            Cloud::Gcc => "https://manage-gcc.office.com/.default",
            Cloud::GccHigh => "https://manage.office365.us/.default",
            Cloud::Dod => "https://manage.protection.apps.mil/.default",
        }
    }

    /// The Microsoft Graph base URL (risk detections), without a trailing slash; also the
    /// Graph token resource.
    pub fn graph_url(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://graph.microsoft.com",
            Cloud::GccHigh => "https://graph.microsoft.us",
            Cloud::Dod => "https://dod-graph.microsoft.us",
        }
    }

    /// The v2 client-credentials scope of Microsoft Graph: its base followed by `/.default`.
    pub fn graph_scope(self) -> &'static str {
        match self {
            Cloud::Commercial | Cloud::Gcc => "https://graph.microsoft.com/.default",
            Cloud::GccHigh => "https://graph.microsoft.us/.default",
            Cloud::Dod => "https://dod-graph.microsoft.us/.default",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A cloud name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cloud {0:?}: expected one of \"Commercial\", \"GCC\", \"GCCHigh\", \"DoD\"")]
pub struct UnknownCloud(pub String);

impl FromStr for Cloud {
    type Err = UnknownCloud;

    /// Parses the configuration spelling exactly (as UTMStack writes it).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Cloud::ALL
            .into_iter()
            .find(|cloud| cloud.name() == name)
            .ok_or_else(|| UnknownCloud(name.to_string()))
    }
}

/// Where one tenant's requests go: the login authority and the API base, with the cloud
/// they belong to (which fixes the token scope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The cloud preset these endpoints start from.
    pub cloud: Cloud,
    /// The login authority base (`https://login.microsoftonline.com` or an override).
    pub login: Url,
    /// The Management Activity API base (`https://manage.office.com` or an override).
    pub api: Url,
    /// The Microsoft Graph base (`https://graph.microsoft.com` or an override).
    pub graph: Url,
}

impl Endpoints {
    /// The preset endpoints of a cloud.
    pub fn for_cloud(cloud: Cloud) -> Self {
        Self::with_overrides(cloud, None, None)
    }

    /// The preset endpoints of a cloud, with the login and/or API base replaced.
    pub fn with_overrides(cloud: Cloud, login: Option<&Url>, api: Option<&Url>) -> Self {
        Self {
            cloud,
            login: login
                .cloned()
                .unwrap_or_else(|| preset_url(cloud.login_url())),
            api: api.cloned().unwrap_or_else(|| preset_url(cloud.api_url())),
            graph: preset_url(cloud.graph_url()),
        }
    }

    /// These endpoints with the Graph base replaced, when `graph` is given.
    pub fn with_graph(mut self, graph: Option<&Url>) -> Self {
        if let Some(graph) = graph {
            self.graph = graph.clone();
        }
        self
    }

    /// The scope of Graph tokens: always the cloud's, even when the Graph base is
    /// overridden.
    pub fn graph_scope(&self) -> &'static str {
        self.cloud.graph_scope()
    }

    /// The risk detections collection: `{graph}/v1.0/identityProtection/riskDetections`.
    pub fn risk_detections_url(&self) -> Url {
        append_segments(
            &self.graph,
            &["v1.0", "identityProtection", "riskDetections"],
        )
    }

    /// True when `url` has exactly the Graph base's scheme, host and port (checked before
    /// a Graph token goes anywhere, `@odata.nextLink` included).
    pub fn is_on_graph_origin(&self, url: &Url) -> bool {
        same_origin(url, &self.graph)
    }

    /// The v2 token endpoint of a tenant: `{login}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> Url {
        append_segments(&self.login, &[tenant, "oauth2", "v2.0", "token"])
    }

    /// The scope to request tokens with: always the cloud's, even when the API base is
    /// overridden (the audience names Microsoft's resource, not the host).
    pub fn token_scope(&self) -> &'static str {
        self.cloud.token_scope()
    }

    /// The OpenID configuration of a tenant (GUID or domain), whose `issuer` carries the
    /// tenant GUID: `{login}/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn openid_configuration_url(&self, tenant: &str) -> Url {
        append_segments(
            &self.login,
            &[tenant, "v2.0", ".well-known", "openid-configuration"],
        )
    }

    /// The feed root of a tenant: `{api}/api/v1.0/{tenant}/activity/feed`.
    pub fn feed_root(&self, tenant: &str) -> Url {
        append_segments(&self.api, &["api", "v1.0", tenant, "activity", "feed"])
    }

    /// True when `url` has exactly the API base's scheme, host and port (the check made
    /// before any request that carries a token).
    pub fn is_on_api_origin(&self, url: &Url) -> bool {
        same_origin(url, &self.api)
    }
}

/// True when both URLs have the same scheme, host and port (default ports made explicit):
/// the one origin comparison used wherever a token could leave for another host.
pub fn same_origin(url: &Url, base: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host() == base.host()
        && url.port_or_known_default() == base.port_or_known_default()
}

/// Parses one of the constant preset URLs above.
fn preset_url(url: &'static str) -> Url {
    // The presets are constants checked by the unit test below; parsing cannot fail.
    Url::parse(url).expect("cloud preset URLs are valid")
}

/// `base` with `segments` appended to its path (a trailing empty segment is dropped first).
fn append_segments(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_url_parses_and_has_no_trailing_slash() {
        for cloud in Cloud::ALL {
            for url in [
                cloud.login_url(),
                cloud.api_url(),
                cloud.resource(),
                cloud.graph_url(),
            ] {
                assert!(Url::parse(url).is_ok(), "{url}");
                assert!(url.starts_with("https://") && !url.ends_with('/'), "{url}");
            }
            assert_eq!(
                cloud.token_scope(),
                format!("{}/.default", cloud.resource())
            );
            assert_eq!(
                cloud.graph_scope(),
                format!("{}/.default", cloud.graph_url())
            );
        }
    }

    #[test]
    fn urls_keep_a_base_path_prefix() {
        let api = Url::parse("http://127.0.0.1:9000/prefix/").unwrap();
        let endpoints = Endpoints::with_overrides(Cloud::Commercial, None, Some(&api));
        assert_eq!(
            endpoints.feed_root("t1").as_str(),
            "http://127.0.0.1:9000/prefix/api/v1.0/t1/activity/feed"
        );
    }
}

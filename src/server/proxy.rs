//! Who the client is, behind reverse proxies, and which sources may call the webhook.
//!
//! The TCP peer is the client unless it is one of `server.trusted_proxies`: then
//! `X-Forwarded-For` (every occurrence, in order) is read from the right, skipping
//! addresses that are themselves trusted proxies, and the first one that is not is the
//! client. Anyone can write that header, so it is believed only from a proxy the operator
//! named, and only as far back as the chain of trusted proxies goes. An entry that is not
//! an address stops the walk at the proxy that passed it on, which then counts as the
//! client (so a garbled header can only make a request look like it comes from the
//! proxy, never from an allowed network). The RFC 7239 `Forwarded` header is not read:
//! the proxies this is deployed behind (nginx, Caddy, ingress controllers, cloud load
//! balancers) all set `X-Forwarded-For`.
//!
//! With `server.webhook_allowed_networks` set, webhook requests from any other client get
//! 403 before anything else is checked, counted as
//! `o365_connector_notifications_total{outcome="forbidden_source"}`. The health, status
//! and metrics routes are not affected.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use crate::ops::Metrics;
use crate::ops::metrics::OutcomeLabels;

/// The client's address as [`ProxyPolicy::client_address`] decided it; put in the
/// request's extensions by [`enforce_webhook_allowlist`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Trusted proxies and the webhook's allowed source networks.
#[derive(Clone, Debug, Default)]
pub struct ProxyPolicy {
    trusted_proxies: Vec<IpNet>,
    webhook_allowed_networks: Vec<IpNet>,
}

impl ProxyPolicy {
    /// A policy believing `X-Forwarded-For` from `trusted_proxies` and, when
    /// `webhook_allowed_networks` is not empty, allowing only those to the webhook.
    pub fn new(trusted_proxies: Vec<IpNet>, webhook_allowed_networks: Vec<IpNet>) -> Self {
        Self {
            trusted_proxies,
            webhook_allowed_networks,
        }
    }

    fn is_trusted_proxy(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }

    /// The client of a request whose TCP peer is `peer` (see the module doc).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.is_trusted_proxy(client) {
            return client;
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        for entry in forwarded.iter().rev() {
            let Some(address) = parse_forwarded_entry(entry) else {
                return client;
            };
            client = address;
            if !self.is_trusted_proxy(address) {
                return address;
            }
        }
        client
    }

    /// True when `client` may call the webhook.
    pub fn webhook_allows(&self, client: IpAddr) -> bool {
        self.webhook_allowed_networks.is_empty()
            || self
                .webhook_allowed_networks
                .iter()
                .any(|network| network.contains(&client))
    }
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

/// What [`enforce_webhook_allowlist`] needs.
#[derive(Clone)]
pub struct WebhookGate {
    /// The policy.
    pub policy: Arc<ProxyPolicy>,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// Middleware of the webhook routes: resolves the client (kept as a [`ClientAddress`]
/// extension) and answers 403 to sources outside the allowlist. A request without a
/// known peer (no `ConnectInfo`) is refused when an allowlist is set.
pub async fn enforce_webhook_allowlist(
    State(gate): State<WebhookGate>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let client = peer.map(|peer| gate.policy.client_address(peer, request.headers()));
    let allowed = match client {
        Some(client) => gate.policy.webhook_allows(client),
        None => gate.policy.webhook_allowed_networks.is_empty(),
    };
    if !allowed {
        gate.metrics
            .notifications
            .get_or_create(&OutcomeLabels {
                outcome: "forbidden_source",
            })
            .inc();
        tracing::debug!(?client, "webhook request from outside the allowed networks");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "error": "source address not in server.webhook_allowed_networks"
            })),
        )
            .into_response();
    }
    if let Some(client) = client {
        request.extensions_mut().insert(ClientAddress(client));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|text| text.parse().unwrap()).collect()
    }

    fn headers(forwarded: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let policy = ProxyPolicy::new(networks(&["10.0.0.0/8"]), vec![]);
        let client = policy.client_address(ip("203.0.113.9"), &headers(&["52.1.1.1"]));
        assert_eq!(client, ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_for_is_walked_from_the_right_through_trusted_proxies_only() {
        let policy = ProxyPolicy::new(networks(&["10.0.0.0/8"]), vec![]);
        // A client forging "52.1.1.1" before the real chain: the forged entry is never
        // reached, because 198.51.100.4 is the first untrusted hop.
        let headers = headers(&["52.1.1.1, 198.51.100.4", "10.1.2.3:8080"]);
        assert_eq!(
            policy.client_address(ip("10.0.0.1"), &headers),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn a_garbled_entry_leaves_the_proxy_as_the_client() {
        let policy = ProxyPolicy::new(networks(&["10.0.0.0/8"]), vec![]);
        let headers = headers(&["52.1.1.1, not-an-address"]);
        assert_eq!(
            policy.client_address(ip("10.0.0.1"), &headers),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let policy = ProxyPolicy::new(networks(&["10.0.0.0/8"]), networks(&["52.0.0.0/8"]));
        let client =
            policy.client_address(ip("::ffff:10.0.0.1"), &headers(&["[::ffff:52.1.1.1]:443"]));
        assert_eq!(client, ip("52.1.1.1"));
        assert!(policy.webhook_allows(client));
        assert!(!policy.webhook_allows(ip("53.0.0.1")));
    }

    async fn gated_status(gate: &WebhookGate, peer: Option<&str>, forwarded: &[&str]) -> u16 {
        use tower::ServiceExt;
        let router = axum::Router::new()
            .route("/hook/{tenant}", axum::routing::post(|| async { "passed" }))
            .layer(axum::middleware::from_fn_with_state(
                gate.clone(),
                enforce_webhook_allowlist,
            ));
        let mut request = axum::http::Request::post("/hook/t")
            .body(axum::body::Body::empty())
            .unwrap();
        *request.headers_mut() = headers(forwarded);
        if let Some(peer) = peer {
            let address = SocketAddr::new(ip(peer), 443);
            request.extensions_mut().insert(ConnectInfo(address));
        }
        router.oneshot(request).await.unwrap().status().as_u16()
    }

    #[tokio::test]
    async fn webhook_gate_refuses_and_counts_sources_outside_the_allowlist() {
        let metrics = Arc::new(Metrics::default());
        let gate = WebhookGate {
            policy: Arc::new(ProxyPolicy::new(
                networks(&["10.0.0.0/8"]),
                networks(&["52.96.0.0/14"]),
            )),
            metrics: metrics.clone(),
        };
        assert_eq!(gated_status(&gate, Some("52.96.1.1"), &[]).await, 200);
        assert_eq!(
            gated_status(&gate, Some("10.0.0.1"), &["52.97.2.2"]).await,
            200
        );
        assert_eq!(
            gated_status(&gate, Some("10.0.0.1"), &["198.51.100.7"]).await,
            403
        );
        assert_eq!(
            gated_status(&gate, Some("198.51.100.7"), &["52.96.1.1"]).await,
            403
        );
        assert_eq!(gated_status(&gate, None, &[]).await, 403, "unknown peer");
        let text = metrics.encode();
        assert!(
            text.contains(r#"o365_connector_notifications_total{outcome="forbidden_source"} 3"#),
            "{text}"
        );
    }

    #[test]
    fn an_empty_allowlist_allows_everyone() {
        assert!(ProxyPolicy::default().webhook_allows(ip("192.0.2.1")));
    }
}

//! `many_tenants`: every tenant polled, and the memory and CPU that costs.
//!
//! `MANY_TENANTS` tenants (default 1,000), each with one content type, polled every 10 s
//! (so at least `MANY_TENANTS / 10` listings a second). Figures: the start-up time (the
//! connector's process started → the first listing of the last tenant), the resident set
//! after it, the listings a second and the CPU they cost (per listing and in cores) over
//! three poll intervals. Targets: RSS ≤ 128 MiB up to 1,000 tenants, ≤ 256 MiB beyond;
//! ≤ 0.2 ms of CPU per listing and, at 10,000 tenants, ≤ 0.2 core.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use o365_connector::emulator::api::ApiEmulator;
use o365_connector::emulator::api::scenario::Scenario;

use crate::support::*;

fn tenant_ids(count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            if n == 0 {
                TENANT.to_string()
            } else {
                format!("00000000-0000-4000-8000-{n:012}")
            }
        })
        .collect()
}

fn is_listing(endpoint: &str) -> bool {
    endpoint.contains("subscriptions/content")
}

/// Follows the emulator's request log: the tenants listed so far and when the latest of
/// them was first listed. Reads only the requests recorded since its last call.
#[derive(Default)]
struct FirstListings {
    seen: usize,
    tenants: HashSet<String>,
    last_first: Option<DateTime<Utc>>,
}

impl FirstListings {
    fn update(&mut self, api: &ApiEmulator) -> usize {
        let inspection = api.state().inspection();
        for request in &inspection.requests[self.seen..] {
            if !is_listing(&request.endpoint) {
                continue;
            }
            if let Some(tenant) = &request.tenant
                && self.tenants.insert(tenant.clone())
            {
                self.last_first = Some(request.time);
            }
        }
        self.seen = inspection.requests.len();
        self.tenants.len()
    }
}

fn listings(api: &ApiEmulator) -> usize {
    api.state()
        .inspection()
        .requests
        .iter()
        .filter(|request| is_listing(&request.endpoint))
        .count()
}

pub async fn many_tenants(dir: &Path) {
    let count = env_number("MANY_TENANTS", 1000);
    let interval = 10u64;
    let records = records_file(dir);
    let tenants = tenant_ids(count);
    let scenario = Scenario {
        tenants: tenants
            .iter()
            .map(|id| tenant_scenario(id, &records, 10))
            .collect(),
        ..Scenario::single_tenant(tenant_scenario(TENANT, &records, 10))
    };
    let mut scenario = scenario;
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let _engine = start_engine(&socket).await;
    let spawned = Utc::now();
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        requests_per_minute: 2000,
        tenants: &tenants,
        webhook: false,
        poller: &eager_poller(interval),
        store: ("", ""),
    })
    .await;
    // Past the start-up (tokens, subscriptions, first listings): every tenant listed once.
    let mut first = FirstListings::default();
    wait_until("every tenant polled", Duration::from_secs(180), || {
        first.update(&api) >= count
    })
    .await;
    let startup = first
        .last_first
        .map_or(0.0, |last| (last - spawned).as_seconds_f64());
    let (cpu_before, listed_before) = (connector.cpu_seconds(), listings(&api));
    let window = Duration::from_secs(3 * interval);
    tokio::time::sleep(window).await;
    let (cpu, listed) = (
        connector.cpu_seconds() - cpu_before,
        listings(&api) - listed_before,
    );
    let rounds = listed as f64 / count as f64;
    let scenario = "many_tenants";
    figure(scenario, "tenants", count as f64, "tenants", None, None);
    figure(scenario, "startup", startup, "s", None, None);
    let rss_target = if count <= 1000 { 128.0 } else { 256.0 };
    figure(
        scenario,
        "rss",
        connector.rss() / MIB,
        "MiB",
        None,
        Some((rss_target, "le")),
    );
    figure(
        scenario,
        "rss_per_tenant",
        connector.rss() / 1024.0 / count as f64,
        "KiB",
        None,
        None,
    );
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        None,
    );
    figure(
        scenario,
        "listings_per_s",
        listed as f64 / window.as_secs_f64(),
        "requests/s",
        None,
        None,
    );
    figure(
        scenario,
        "cpu_ms_per_poll_cycle",
        cpu * 1e3 / rounds.max(1e-9),
        "ms",
        None,
        None,
    );
    figure(
        scenario,
        "cpu_ms_per_listing",
        cpu * 1e3 / (listed.max(1) as f64),
        "ms",
        None,
        Some((0.2, "le")),
    );
    figure(
        scenario,
        "cpu_share",
        cpu / window.as_secs_f64(),
        "cores",
        None,
        Some((0.2, "le")),
    );
    connector.stop();
    api.shutdown().await;
}

//! `many_tenants`: every tenant polled, and the memory that costs.

use std::path::Path;
use std::time::Duration;

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

fn listings(api: &ApiEmulator) -> usize {
    api.state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint.contains("subscriptions/content"))
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
    wait_until("every tenant polled", Duration::from_secs(180), || {
        listings(&api) >= count
    })
    .await;
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
    figure(
        scenario,
        "rss",
        connector.rss() / MIB,
        "MiB",
        None,
        Some((128.0, "le")),
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
        "cpu_share",
        cpu / window.as_secs_f64(),
        "cores",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

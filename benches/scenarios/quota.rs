//! `quota`: the drain under the API's throttling (AF429), within the request quota.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use o365_connector::emulator::api::ApiEmulator;
use o365_connector::emulator::api::scenario::{Scenario, ThrottleResponse};

use crate::support::*;

/// Throttled answers (AF429, as 403 or 429) the emulator gave so far.
fn af429(api: &ApiEmulator) -> u64 {
    let inspection = api.state().inspection();
    inspection
        .rejections
        .by_code
        .get("AF429")
        .copied()
        .unwrap_or(0)
}

pub async fn quota(dir: &Path) {
    // 2,000 requests per minute per tenant, compressed 10×: 200 per 6 s window.
    let compression = 10.0;
    let per_window = 200u32;
    let window_secs = 60.0 / compression;
    let blobs = env_number("QUOTA_BLOBS", 1000);
    let records = records_file(dir);
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, 10));
    scenario.throttle.requests_per_window = per_window;
    scenario.throttle.window_secs = window_secs;
    // HTTP 429 with Retry-After (the time left in the compressed window): the connector's
    // own pause after an AF429 without Retry-After (30 s) is not compressed.
    scenario.throttle.response = ThrottleResponse::Http429;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    publish(&api, blobs).await;
    // The poller's listing windows end on a whole second: start once the blobs' second is
    // over, so the first poll finds the backlog instead of the one a minute later.
    let into_second = chrono::Utc::now().timestamp_subsec_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1020 - into_second.min(1000))).await;
    let connector = Connector::start(ConnectorSetup {
        dir,
        socket: &socket,
        api_base: api.base_url(),
        // The same rate as the emulator's compressed window: 200 per 6 s is 2,000 a minute.
        requests_per_minute: 2000,
        tenants: &[TENANT.to_string()],
        webhook: false,
        poller: &eager_poller(60),
        store: ("", ""),
    })
    .await;
    let started = Instant::now();
    let start_index = api.state().inspection().requests.len();
    let throttled_before = af429(&api);
    // Bounded: a drain stalled by throttling is reported (records_acked_share), not waited out.
    let total = (blobs * 10) as u64;
    let deadline = Duration::from_secs(90);
    let (mut seen, mut last_progress) = (0, Duration::ZERO);
    while seen < total && started.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let acked = engine.acked.load(Ordering::Relaxed);
        if acked > seen {
            if std::env::var_os("QUOTA_TRACE").is_some() && acked / 1000 != seen / 1000 {
                eprintln!("{:.1}s acked {acked}", started.elapsed().as_secs_f64());
            }
            (seen, last_progress) = (acked, started.elapsed());
        }
    }
    let acked_share = engine.acked.load(Ordering::Relaxed) as f64 / total as f64;
    let elapsed = started.elapsed().as_secs_f64();
    let requests = {
        let inspection = api.state().inspection();
        let api_requests: Vec<_> = inspection.requests[start_index..]
            .iter()
            .filter(|request| request.endpoint.contains("activity"))
            .collect();
        api_requests.len() as f64
    };
    if std::env::var_os("QUOTA_TRACE").is_some() {
        let inspection = api.state().inspection();
        let first = inspection.requests[start_index].time;
        let mut per_second: std::collections::BTreeMap<i64, (u32, u32)> = Default::default();
        for request in &inspection.requests[start_index..] {
            let slot = per_second
                .entry((request.time - first).num_seconds())
                .or_default();
            slot.0 += 1;
            if request.status == 429 {
                slot.1 += 1;
            }
        }
        eprintln!("quota trace (second: requests, throttled): {per_second:?}");
    }
    let throttled = (af429(&api) - throttled_before) as f64;
    let served = requests - throttled;
    let quota = per_window as f64 * elapsed / window_secs;
    let scenario = "quota";
    figure(
        scenario,
        "quota_used",
        served / quota,
        "share",
        None,
        Some((0.9, "ge")),
    );
    figure(scenario, "requests_served", served, "requests", None, None);
    figure(scenario, "throttled", throttled, "responses", None, None);
    let share = throttled / requests.max(1.0);
    figure(
        scenario,
        "throttled_share",
        share,
        "share",
        None,
        Some((0.01, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    let active_quota = per_window as f64 * last_progress.as_secs_f64() / window_secs;
    figure(
        scenario,
        "quota_used_until_last_ack",
        served / active_quota,
        "share",
        None,
        None,
    );
    figure(
        scenario,
        "last_ack_s",
        last_progress.as_secs_f64(),
        "s",
        None,
        None,
    );
    figure(
        scenario,
        "records_acked_share",
        acked_share,
        "share",
        None,
        None,
    );
    connector.stop();
    api.shutdown().await;
}

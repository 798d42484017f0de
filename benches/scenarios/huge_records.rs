//! `huge_records`: records just under the engine's message limit, in bounded memory.

use std::path::Path;

use o365_connector::emulator::api::scenario::Scenario;

use crate::support::*;

/// Records of 3.9 MiB each, just under the engine's 4 MiB message limit, 10 per blob:
/// the forwarder's window, the workers' buffers and the queues between them are bounded
/// in bytes, so the connector's peak RSS stays under 256 MiB (issue "Delivery never
/// stalls", point 5). `HUGE_RECORDS` sets how many (default 200).
pub async fn huge_records(dir: &Path) {
    use std::io::Write as _;
    let count = env_number("HUGE_RECORDS", 200);
    let payload = "p".repeat((3.9 * MIB) as usize - 100);
    let records = dir.join("huge.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&records).unwrap());
    for n in 0..count {
        writeln!(
            file,
            r#"{{"CreationTime":"2026-01-02T03:04:05","Id":"huge-{n}","Operation":"MipLabel","Payload":"{payload}"}}"#
        )
        .unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let per_blob = 10;
    let mut scenario = Scenario::single_tenant(tenant_scenario(TENANT, &records, per_blob));
    scenario.throttle.requests_per_window = 0;
    let api = start_api(scenario).await;
    let socket = dir.join("engine.sock");
    let engine = start_engine(&socket).await;
    publish(&api, count.div_ceil(per_blob)).await;
    let (connector, elapsed) =
        drain_backlog(dir, &socket, api.base_url(), &engine, count as u64).await;
    let scenario = "huge_records";
    figure(scenario, "records", count as f64, "records", None, None);
    figure(
        scenario,
        "peak_rss",
        connector.peak_rss() / MIB,
        "MiB",
        None,
        Some((256.0, "le")),
    );
    figure(scenario, "elapsed_s", elapsed, "s", None, None);
    connector.stop();
    api.shutdown().await;
}

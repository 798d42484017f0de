//! Health, readiness, metrics and graceful shutdown of the running service. Readiness is
//! read on the private ops listener (its detail) and on the webhook listener (the verdict
//! alone, same status code).

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::time::{Duration, Instant};

use common::rig::{Rig, RigOptions, TENANT};
use common::{DEADLINE, wait_until};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::EngineFaults;
use serde_json::Value;

fn client(rig: &Rig) -> reqwest::Client {
    common::client_trusting(&rig.certs.ca)
}

fn url(rig: &Rig, path: &str) -> String {
    let address = rig.service.as_ref().unwrap().address;
    format!("https://localhost:{}{path}", address.port())
}

/// Options for a rig whose operations are private: `ops.listen` on a free port, nothing
/// of them on the webhook listener.
fn private_ops(mut options: RigOptions, extra_config: &str) -> RigOptions {
    options.ops_public = false;
    options.extra_config = format!("listen = \"127.0.0.1:0\"\n{extra_config}");
    options
}

fn ops_url(rig: &Rig, path: &str) -> String {
    let address = rig.service.as_ref().unwrap().ops_address.unwrap();
    format!("http://{address}{path}")
}

/// `/readyz` on the ops listener (status and detail) and on the webhook listener, which must
/// give the same status with `{"ready": …}` alone.
async fn readiness(rig: &Rig) -> (reqwest::StatusCode, Value) {
    let private = reqwest::get(ops_url(rig, "/readyz")).await.unwrap();
    let status = private.status();
    let detail: Value = private.json().await.unwrap();
    let public = client(rig).get(url(rig, "/readyz")).send().await.unwrap();
    assert_eq!(public.status(), status, "both listeners give one verdict");
    let summary: Value = public.json().await.unwrap();
    assert_eq!(summary, serde_json::json!({"ready": detail["ready"]}));
    (status, detail)
}

/// The metric names the README lists in its metrics table.
fn readme_metric_names() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    readme
        .lines()
        .filter_map(|line| line.strip_prefix("| `o365_connector_"))
        .map(|rest| format!("o365_connector_{}", rest.split('`').next().unwrap()))
        .collect()
}

#[tokio::test]
async fn metrics_expose_every_name_the_readme_lists() {
    let dir = tempfile::tempdir().unwrap();
    // A certificate tenant, so the certificate expiry gauge has a series too, collecting
    // risk detections, so their two families have series.
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.certificate = true;
    options.risk_detections = true;
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
    rig.wait_for_every_published_record().await;
    let names = readme_metric_names();
    assert!(names.len() >= 19, "the README lists the metrics: {names:?}");
    let missing = |text: &str| -> Vec<String> {
        names
            .iter()
            .filter(|name| !text.contains(&format!("# TYPE {} ", name.trim_end_matches("_total"))))
            .cloned()
            .collect()
    };
    // Some families get their first series from the first poll (the cursor's age), which
    // the tenant's request budget paces: scrape until every name is there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        let response = client(&rig)
            .get(url(&rig, "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let absent = missing(&text);
        if absent.is_empty() {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{absent:?} not exposed:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(text.contains(&format!("o365_connector_records_acked_total{{tenant=\"contoso\",content_type=\"Audit.Exchange\"}} {}", rig.published().len())), "{text}");
    assert!(!text.contains(TENANT), "no tenant id in a label");
    rig.shutdown().await;
}

#[tokio::test]
async fn readyz_stays_ready_while_the_engine_is_down_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let options = private_ops(RigOptions::synthetic(FaultScenario::default()), "");
    let mut rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    let http = client(&rig);
    assert_eq!(
        http.get(url(&rig, "/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    rig.stop_engine().await;
    let forwarder = rig.service.as_ref().unwrap().forwarder.clone();
    wait_until("the engine seen down", DEADLINE, || {
        !forwarder.stats().engine_connected
    })
    .await;
    let (status, detail) = readiness(&rig).await;
    assert_eq!(status, 200, "an engine outage does not stop webhooks");
    assert_eq!(detail["ready"], true);
    assert_eq!(detail["engine"]["connected"], false);
    assert_eq!(detail["store_writable"], true);
    rig.shutdown().await;
}

#[tokio::test]
async fn readyz_fails_at_the_queue_high_water_mark() {
    let dir = tempfile::tempdir().unwrap();
    let options = private_ops(
        RigOptions::synthetic(FaultScenario::default()),
        "queue_high_water = 2\n",
    );
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    rig.engine.set_faults(EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    });
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 3).await;
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let started = Instant::now();
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.pending + stats.leased >= 2 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "items never queued: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, detail) = readiness(&rig).await;
    assert_eq!(status, 503);
    assert_eq!(detail["ready"], false);
    assert!(detail["queue_open_items"].as_u64().unwrap() >= 2);
    rig.engine.set_faults(EngineFaults::default());
    rig.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_work_in_flight_ends_within_its_deadline_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.extra_config = "".into();
    let mut rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    rig.engine.set_faults(EngineFaults {
        no_ack: true,
        ..EngineFaults::default()
    });
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 4).await;
    rig.engine
        .wait_for(DEADLINE, |counts| counts.logs_received >= 10)
        .await
        .unwrap();
    let service = rig.service.take().unwrap();
    let started = Instant::now();
    let report = service.stop().await;
    let took = started.elapsed();
    println!(
        "stopped in {took:?} with {} records unacknowledged",
        report.unacked
    );
    assert!(report.within_deadline);
    assert!(report.unacked > 0, "the engine acknowledged nothing");
    // A new run delivers everything the first one could not.
    rig.engine.set_faults(EngineFaults::default());
    rig.start_service(None).await;
    rig.wait_for_every_published_record().await;
    rig.shutdown().await;
}

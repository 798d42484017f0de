//! Entra ID risk detections through Microsoft Graph (issue #18 point 4), end to end: the
//! service against the API emulator's Graph endpoint and the engine emulator, over real
//! sockets. Detections reach the engine with UTMStack's fields, across pages; a restart
//! resumes from the watermark without a gap or a repeat; a 403 stops only the risk
//! detections (the audit feed goes on) with a problem and a console notice; a 429's
//! `Retry-After` is honoured.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use common::rig::{GROUP, Rig, RigOptions, TENANT};
use common::{DEADLINE, wait_until};
use o365_connector::emulator::api::graph::PublishedDetection;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{FaultScenario, GraphFaultScenario};
use o365_connector::emulator::engine::ReceivedLog;
use o365_connector::ops::status::StatusReport;
use sha2::{Digest, Sha256};

/// The Graph route, as the emulator's request log names it.
const GRAPH_ENDPOINT: &str = "/v1.0/identityProtection/riskDetections";

/// A rig collecting risk detections, with `initial` detections published over the last
/// 12 hours; audit records only when the test publishes them.
async fn risk_rig(initial: usize, adjust: impl FnOnce(&mut RigOptions)) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.webhook = false;
    options.risk_detections = true;
    options.tenant.risk_detections.initial = initial;
    options.tenant.risk_detections.initial_spread_hours = 12;
    adjust(&mut options);
    Rig::start(dir, options).await
}

/// `Log.id` of a detection by UTMStack's formula.
fn detection_log_id(rig: &Rig, detection_id: &str) -> String {
    let utm = rig.config().engine.utm_tenant_id;
    hex::encode(Sha256::digest(format!(
        "{utm}|{utm}/{GROUP}|riskDetections|{detection_id}"
    )))
}

/// The acked Logs of risk detections, by Log id (every copy, in arrival order).
fn risk_logs(rig: &Rig, published: &[PublishedDetection]) -> HashMap<String, Vec<ReceivedLog>> {
    let ids: HashSet<String> = published
        .iter()
        .map(|detection| detection_log_id(rig, &detection.id))
        .collect();
    let mut logs: HashMap<String, Vec<ReceivedLog>> = HashMap::new();
    for log in rig.all_logs() {
        if log.acked && ids.contains(&log.id) {
            logs.entry(log.id.clone()).or_default().push(log);
        }
    }
    logs
}

fn detections(rig: &Rig) -> Vec<PublishedDetection> {
    rig.api.state().graph.risk_detections(Some(TENANT))
}

/// Waits until the engine acked a Log carrying each detection's current JSON.
async fn wait_for_detections(rig: &Rig) {
    let published = detections(rig);
    let what = format!("each of {} risk detections at the engine", published.len());
    common::wait_until(&what, DEADLINE, || {
        let logs = risk_logs(rig, &published);
        published.iter().all(|detection| {
            logs.get(&detection_log_id(rig, &detection.id))
                .is_some_and(|copies| copies.iter().any(|log| log.raw == detection.json))
        })
    })
    .await;
}

async fn status(rig: &Rig) -> StatusReport {
    rig.service.as_ref().unwrap().status.report().await
}

fn graph_requests(rig: &Rig) -> Vec<(DateTime<Utc>, u16)> {
    rig.api
        .state()
        .inspection()
        .requests
        .iter()
        .filter(|request| request.endpoint == GRAPH_ENDPOINT)
        .map(|request| (request.time, request.status))
        .collect()
}

fn json_time(json: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    let text = value[field].as_str()?;
    let time = DateTime::parse_from_rfc3339(text).ok()?;
    Some(
        time.with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_detections_reach_the_engine_with_utmstacks_fields_across_pages() {
    // 1,100 detections: three pages of $top=500, followed by @odata.nextLink.
    let rig = risk_rig(1_100, |_| {}).await;
    wait_for_detections(&rig).await;

    let published = detections(&rig);
    let logs = risk_logs(&rig, &published);
    let utm = rig.config().engine.utm_tenant_id;
    for detection in &published {
        let copies = &logs[&detection_log_id(&rig, &detection.id)];
        assert_eq!(copies.len(), 1, "detection {} sent twice", detection.id);
        let log = &copies[0];
        assert_eq!(
            log.raw, detection.json,
            "raw is the detection byte for byte"
        );
        assert_eq!(
            (
                log.data_type.as_str(),
                log.data_source.as_str(),
                log.tenant_id.as_str()
            ),
            ("o365", GROUP, utm.as_str())
        );
        // The event's time, not the collection time (UTMStack's issue 2437).
        let activity = json_time(&detection.json, "activityDateTime")
            .or_else(|| json_time(&detection.json, "detectedDateTime"))
            .unwrap();
        assert_eq!(log.timestamp, activity);
    }
    let requests = graph_requests(&rig);
    assert!(
        requests.iter().filter(|(_, status)| *status == 200).count() >= 3,
        "{requests:?}"
    );

    let report = status(&rig).await;
    let risk = &report.tenants[0].risk_detections;
    let newest = published
        .iter()
        .map(|detection| detection.last_updated_date_time.clone())
        .max_by_key(|text| DateTime::parse_from_rfc3339(text).unwrap())
        .unwrap();
    assert!(risk.enabled);
    assert_eq!(risk.watermark.as_deref(), Some(newest.as_str()));
    assert_eq!(risk.forwarded, Some(1_100));
    assert!(
        risk.last_run.is_some() && risk.errors.is_empty(),
        "{risk:?}"
    );
    let metrics = rig.service.as_ref().unwrap().metrics.encode();
    let forwarded =
        format!("o365_connector_risk_detections_total{{tenant=\"{GROUP}\",outcome=\"forwarded\"}}");
    assert_eq!(
        common::metric_value(&metrics, &forwarded),
        Some(1100.0),
        "{metrics}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_watermark_without_a_gap_or_a_repeat() {
    let mut rig = risk_rig(30, |_| {}).await;
    wait_for_detections(&rig).await;
    rig.stop_service().await;

    // While the connector is down: 20 new detections, all updated at the same instant (so
    // the watermark's instant is shared), and one old detection remediated.
    let old = detections(&rig)[3].clone();
    let (new_ids, updated) = {
        let graph = &rig.api.state().graph;
        let new_ids = graph.publish(TENANT, 20).unwrap();
        let updated = graph
            .update(
                TENANT,
                &old.id,
                "remediated",
                "userPerformedSecuredPasswordChange",
            )
            .unwrap();
        (new_ids, updated)
    };
    rig.start_service(None).await;
    // The previous run stopped cleanly: no work is expected to repeat.
    let metrics = rig.service.as_ref().unwrap().metrics.encode();
    assert_eq!(
        common::metric_value(&metrics, "o365_connector_unclean_restarts_total"),
        Some(0.0),
        "{metrics}"
    );
    wait_for_detections(&rig).await;

    // Every later collection finds nothing new.
    let collector = rig.service.as_ref().unwrap().risk_collectors[0].clone();
    let report = collector.run_once().await;
    assert_eq!(report.error, None);
    assert_eq!(report.forwarded, 0, "{report:?}");
    assert!(
        report.skipped >= 1 && report.skipped == report.listed,
        "{report:?}"
    );

    let published = detections(&rig);
    let logs = risk_logs(&rig, &published);
    for detection in &published {
        let copies = &logs[&detection_log_id(&rig, &detection.id)];
        let expected = if detection.id == old.id { 2 } else { 1 };
        assert_eq!(
            copies.len(),
            expected,
            "detection {} (new: {})",
            detection.id,
            new_ids.contains(&detection.id)
        );
    }
    let old_copies = &logs[&detection_log_id(&rig, &old.id)];
    assert_eq!(old_copies[0].raw, old.json);
    assert_eq!(old_copies[1].raw, updated.json);
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_stops_only_the_risk_detections_and_the_audit_feed_goes_on() {
    let rig = risk_rig(5, |options| {
        options.webhook = true;
        options.tenant.graph_roles = vec![];
    })
    .await;
    let service = rig.service.as_ref().unwrap();

    // The audit feed is untouched: records published now arrive through the webhook.
    rig.wait_for_webhooks(&["Audit.Exchange", "Audit.SharePoint"])
        .await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 2).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.SharePoint", 1).await;
    rig.wait_for_every_published_record().await;
    assert_eq!(rig.published().len(), 30);

    // The risk detections stop with a problem naming the permission and the licence, and
    // one console notice.
    wait_until("the forbidden problem on /status", DEADLINE, || {
        service
            .problems
            .snapshot()
            .iter()
            .any(|((tenant, key), problem)| {
                tenant == GROUP
                    && key == "riskDetections"
                    && problem.kind == "risk_detections_forbidden"
            })
    })
    .await;
    let report = status(&rig).await;
    let tenant = &report.tenants[0];
    let problem = &tenant.risk_detections.errors[0];
    assert!(problem.message.contains("403"), "{problem:?}");
    assert!(
        problem.advice.contains("IdentityRiskEvent.Read.All") && problem.advice.contains("P2"),
        "{problem:?}"
    );
    // The refusal stays with the risk detections: no audit problem mentions it (a poll may
    // still show its own start-up problem, a subscription being started).
    let about_risk = |errors: &[o365_connector::ops::status::StatusError]| {
        errors
            .iter()
            .any(|error| error.kind.starts_with("risk_") || error.message.contains("Graph"))
    };
    assert!(!about_risk(&tenant.errors), "{:?}", tenant.errors);
    for content_type in &tenant.content_types {
        assert!(!about_risk(&content_type.errors), "{content_type:?}");
    }
    wait_until("one console notice of the refusal", DEADLINE, || {
        rig.engine
            .messages()
            .iter()
            .any(|message| message.message.contains("risk_detections_forbidden"))
    })
    .await;
    let published = detections(&rig);
    assert!(risk_logs(&rig, &published).is_empty());
    let metrics = service.metrics.encode();
    let forbidden = format!(
        "o365_connector_risk_detection_runs_total{{tenant=\"{GROUP}\",outcome=\"forbidden\"}}"
    );
    assert_eq!(
        common::metric_value(&metrics, &forbidden),
        Some(1.0),
        "{metrics}"
    );

    // Retried hourly, not sooner; once granted, the detections arrive and the problem goes.
    let collector = service.risk_collectors[0].clone();
    let again = collector.run_once().await;
    assert_eq!(again.retry_in, Duration::from_secs(3600));
    rig.api.state().graph.set_access(
        TENANT,
        Some(vec!["IdentityRiskEvent.Read.All".to_string()]),
        None,
    );
    // The 403 dropped the token: the next collection's new token carries the role.
    let granted = collector.run_once().await;
    assert_eq!(granted.error, None);
    assert_eq!(granted.forwarded, 5, "{granted:?}");
    assert!(
        status(&rig).await.tenants[0]
            .risk_detections
            .errors
            .is_empty()
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_honoured_for_its_retry_after_and_the_detections_follow() {
    let rig = risk_rig(7, |_| {}).await;
    wait_for_detections(&rig).await;
    // The service's own run delivered; its next is an interval (300 s) away, so the runs
    // below are the only ones.
    let mut faults = rig.api.state().feed.faults(TENANT);
    faults.graph_throttle = Some(GraphFaultScenario {
        next_requests: 1,
        rate: 0.0,
        retry_after_secs: 4,
    });
    rig.api.state().feed.set_faults(Some(TENANT), faults);
    rig.api.state().graph.publish(TENANT, 3).unwrap();
    let collector = rig.service.as_ref().unwrap().risk_collectors[0].clone();

    let throttled = collector.run_once().await;
    assert!(
        throttled
            .error
            .as_deref()
            .is_some_and(|error| error.contains("429")),
        "{throttled:?}"
    );
    assert!(
        throttled.retry_in >= Duration::from_secs(4),
        "asked again in {:?} after a Retry-After of 4 s",
        throttled.retry_in
    );
    assert_eq!(throttled.forwarded, 0, "{throttled:?}");
    let requests = graph_requests(&rig);
    assert_eq!(
        requests.last().map(|(_, status)| *status),
        Some(429),
        "{requests:?}"
    );

    let next = collector.run_once().await;
    assert_eq!(next.error, None);
    assert_eq!(next.forwarded, 3, "{next:?}");
    wait_for_detections(&rig).await;
    let metrics = rig.service.as_ref().unwrap().metrics.encode();
    let failed = format!(
        "o365_connector_risk_detection_runs_total{{tenant=\"{GROUP}\",outcome=\"failed\"}}"
    );
    assert_eq!(
        common::metric_value(&metrics, &failed),
        Some(1.0),
        "{metrics}"
    );
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_watermark_starts_over_from_the_lookback_and_is_replaced() {
    use o365_connector::risk::detection::{Watermark, watermark_key};
    let rig = risk_rig(3, |_| {}).await;
    wait_for_detections(&rig).await;
    let service = rig.service.as_ref().unwrap();
    let key = watermark_key(TENANT);
    service
        .queue
        .put_meta(&key, b"not json".to_vec())
        .await
        .unwrap();
    let report = service.risk_collectors[0].run_once().await;
    // Collected again (repeats, never a gap), not stuck on the bad record.
    assert_eq!(report.error, None);
    assert_eq!(report.forwarded, 3, "{report:?}");
    let stored = service.queue.get_meta(&key).await.unwrap().unwrap();
    assert!(serde_json::from_slice::<Watermark>(&stored).is_ok());
    rig.shutdown().await;
}

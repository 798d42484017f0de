//! The real binary killed with SIGKILL at several points of a drain and started again:
//! nothing is lost; duplicates only for records in flight at the kill (printed).
//!
//! CI runs 3 kills over 400 records. The soak variant is the same test with
//! `O365_CRASH_KILLS` kills at random moments of `O365_CRASH_BLOBS` blobs of 10 records,
//! e.g. `O365_CRASH_KILLS=20 O365_CRASH_BLOBS=20000 cargo test --release --test crash --
//! --nocapture` for 20 kills in a 200,000-record drain.

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use common::rig::{Rig, RigOptions, SECRET, TENANT};
use common::{DEADLINE, RunningBinary, env_number, start_binary_with_env};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::EngineFaults;

/// A rig whose connector drains without throttling and polls often, started as the real
/// binary, its webhooks registered and its acks slowed (so records stay in flight and a
/// stop lands mid-drain); the arguments and environment that start it again.
async fn draining_rig(dir: tempfile::TempDir) -> (Rig, RunningBinary, Vec<String>) {
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.in_process = false;
    // The drain measures crash safety, not Microsoft's quota: no throttling on either side.
    options.throttle.requests_per_window = 0;
    let mut rig = Rig::start(dir, options).await;
    // Notifications Microsoft gives up on while the connector is down are found by the
    // poller: poll often, so the soak does not wait five minutes for them.
    rig.config_text = rig
        .config_text
        .replacen("[api]\n", "[api]\nrequests_per_minute = 1000000\n", 1)
        .replacen(
            "[workers]\n",
            "[poller]\npoll_interval_secs = 2\nlag_secs = 0\n\n[workers]\n",
            1,
        );
    let config = rig.write_config();
    let args = vec![
        "run".to_owned(),
        "--config".to_owned(),
        config.to_str().unwrap().to_owned(),
    ];
    let running = start(&args).await;
    assert!(
        running.ready_line.starts_with("listening https://"),
        "{}",
        running.ready_line
    );
    rig.wait_for_webhooks(&ALL).await;
    // Slow acks keep records in flight, so each stop lands mid-drain.
    rig.engine.set_faults(EngineFaults {
        ack_delay: std::time::Duration::from_millis(2),
        ..EngineFaults::default()
    });
    (rig, running, args)
}

async fn start(args: &[String]) -> RunningBinary {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_binary_with_env(&args, &[("RIG_SECRET", SECRET), ("RUST_LOG", "warn")]).await
}

/// Publishes `blobs` blobs of 10 records of Audit.General; the records published in all.
async fn publish_blobs(rig: &Rig, blobs: u64) -> u64 {
    while (rig.published().len() as u64) < blobs * 10 {
        let remaining = blobs - rig.published().len() as u64 / 10;
        publish::publish_now(
            rig.api.state(),
            TENANT,
            "Audit.General",
            remaining.min(500) as usize,
        )
        .await;
    }
    rig.published().len() as u64
}

/// A metric of the connector of `rig`, read from its `/metrics`.
async fn metric(rig: &Rig, name: &str) -> Option<f64> {
    let port = rig.config().server.listen.port();
    let metrics = common::get_text(
        &common::client_trusting(&rig.certs.ca),
        format!("https://localhost:{port}/metrics"),
    )
    .await;
    common::metric_value(&metrics, name)
}

#[tokio::test]
async fn sigkill_at_several_points_of_a_drain_loses_nothing() {
    let (rig, mut running, args) = draining_rig(tempfile::tempdir().unwrap()).await;
    let kills = env_number("O365_CRASH_KILLS", 3);
    let total = publish_blobs(&rig, env_number("O365_CRASH_BLOBS", 40)).await;
    // Random moments, in order, over the first 90 % of the drain.
    let mut moments: Vec<u64> = (0..kills)
        .map(|_| rand::random_range(1..total * 9 / 10))
        .collect();
    moments.sort();
    let deadline = DEADLINE * (1 + (total / 20_000) as u32);
    for target in moments {
        rig.engine
            .wait_for(deadline, |counts| counts.logs_received >= target)
            .await
            .unwrap();
        running.kill().await;
        println!(
            "killed after the engine received {} of {total} records",
            rig.engine.counts().logs_received
        );
        running = start(&args).await;
    }
    // The run after the last kill reports the leases the killed one left in the store (a
    // lease made since the last durable commit is undone by the kill instead, its item
    // simply pending again).
    let recovered = metric(&rig, "o365_connector_items_recovered_total").await;
    println!("items recovered at the last start: {recovered:?}");
    // Every kill is counted: the run after it knows its predecessor died.
    assert_eq!(
        metric(&rig, "o365_connector_unclean_restarts_total").await,
        Some(1.0)
    );
    rig.engine.set_faults(EngineFaults::default());
    rig.wait_for_every_published_record().await;
    let received = rig.engine.counts().logs_received;
    println!(
        "published {total}, received {received}: 0 lost, {} duplicates after {kills} kills",
        received - total
    );
    assert_eq!(running.terminate().await, Some(0));
    rig.shutdown().await;
}

#[tokio::test]
async fn a_clean_stop_mid_drain_leaves_no_lease_behind_and_loses_nothing() {
    // Workers lease a few items ahead of each other: a stop must hand back those too, or
    // the next start finds them leased by a run that is gone.
    let (rig, running, args) = draining_rig(tempfile::tempdir().unwrap()).await;
    let total = publish_blobs(&rig, 100).await;
    rig.engine
        .wait_for(DEADLINE, |counts| counts.logs_received >= total / 4)
        .await
        .unwrap();
    assert_eq!(running.terminate().await, Some(0));
    let running = start(&args).await;
    assert_eq!(
        metric(&rig, "o365_connector_unclean_restarts_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(&rig, "o365_connector_items_recovered_total").await,
        Some(0.0),
        "a clean stop released every lease it held"
    );
    rig.engine.set_faults(EngineFaults::default());
    rig.wait_for_every_published_record().await;
    assert_eq!(running.terminate().await, Some(0));
    rig.shutdown().await;
}

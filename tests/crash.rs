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
use common::{DEADLINE, env_number, start_binary_with_env};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::EngineFaults;

#[tokio::test]
async fn sigkill_at_several_points_of_a_drain_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
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
    let config = config.to_str().unwrap().to_string();
    let env = [("RIG_SECRET", SECRET), ("RUST_LOG", "warn")];
    let args = ["run", "--config", config.as_str()];
    let mut running = start_binary_with_env(&args, &env).await;
    assert!(
        running.ready_line.starts_with("listening https://"),
        "{}",
        running.ready_line
    );
    rig.wait_for_webhooks(&ALL).await;
    // Slow acks keep records in flight, so each kill lands mid-drain.
    rig.engine.set_faults(EngineFaults {
        ack_delay: std::time::Duration::from_millis(2),
        ..EngineFaults::default()
    });
    let kills = env_number("O365_CRASH_KILLS", 3);
    let blobs = env_number("O365_CRASH_BLOBS", 40);
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
    let total = rig.published().len() as u64;
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
        running = start_binary_with_env(&args, &env).await;
    }
    // The run after the last kill reports the leases the killed one left in the store (a
    // lease made since the last durable commit is undone by the kill instead, its item
    // simply pending again).
    let port = rig.config().server.listen.port();
    let metrics = common::get_text(
        &common::client_trusting(&rig.certs.ca),
        format!("https://localhost:{port}/metrics"),
    )
    .await;
    let recovered = common::metric_value(&metrics, "o365_connector_items_recovered_total");
    println!("items recovered at the last start: {recovered:?}");
    assert!(recovered.is_some(), "{metrics}");
    // Every kill is counted: the run after it knows its predecessor died.
    assert_eq!(
        common::metric_value(&metrics, "o365_connector_unclean_restarts_total"),
        Some(1.0),
        "{metrics}"
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

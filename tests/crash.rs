//! The real binary killed with SIGKILL at several points of a drain and started again:
//! nothing is lost; duplicates only for records in flight at the kill (printed).

mod common;

use common::rig::{Rig, RigOptions, SECRET, TENANT};
use common::{DEADLINE, start_binary_with_env};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::emulator::engine::EngineFaults;

const ALL: [&str; 5] = [
    "Audit.AzureActiveDirectory",
    "Audit.Exchange",
    "Audit.SharePoint",
    "Audit.General",
    "DLP.All",
];

#[tokio::test]
async fn sigkill_at_several_points_of_a_drain_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.in_process = false;
    let rig = Rig::start(dir, options).await;
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
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 40).await;
    let total = rig.published().len() as u64;
    for fraction in [5, 3, 2] {
        let target = total / fraction;
        rig.engine
            .wait_for(DEADLINE, |counts| counts.logs_received >= target)
            .await
            .unwrap();
        running.kill().await;
        println!(
            "killed after the engine received {} of {total} records",
            rig.engine.counts().logs_received
        );
        running = start_binary_with_env(&args, &env).await;
    }
    rig.engine.set_faults(EngineFaults::default());
    rig.wait_for_every_published_record().await;
    let received = rig.engine.counts().logs_received;
    println!(
        "published {total}, received {received}: {} duplicates after 3 kills",
        received - total
    );
    assert_eq!(running.terminate().await, Some(0));
    rig.shutdown().await;
}

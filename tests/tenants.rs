//! Tenants authenticating with a certificate (client assertion), end to end, and a
//! certificate the app registration does not know, which must fail with a clear error.

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use common::rig::{Rig, RigOptions, TENANT};
use common::{DEADLINE, wait_until};
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::FaultScenario;

#[tokio::test]
async fn certificate_authentication_delivers_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.certificate = true;
    let rig = Rig::start(dir, options).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.SharePoint", 3).await;
    rig.wait_for_every_published_record().await;
    let metrics = rig.service.as_ref().unwrap().metrics.encode();
    assert!(
        metrics.contains("o365_connector_certificate_expiry_seconds{tenant=\"contoso\"}"),
        "{metrics}"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn a_certificate_the_app_does_not_know_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.certificate = true;
    // The connector signs with a key that does not belong to the registered certificate.
    options.key_override = Some(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/app-cert/other-key.pem"),
    );
    let rig = Rig::start(dir, options).await;
    let problems = rig.service.as_ref().unwrap().problems.clone();
    wait_until("the refusal on the problem board", DEADLINE, || {
        !problems.snapshot().is_empty()
    })
    .await;
    let (_, problem) = problems.snapshot().into_iter().next().unwrap();
    assert!(
        problem.message.contains("AADSTS700027"),
        "{}",
        problem.message
    );
    assert!(
        problem.message.contains("certificate"),
        "says what to fix: {}",
        problem.message
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn the_legacy_rs256_assertion_with_x5t_is_accepted_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.certificate = true;
    options.in_process = false;
    let mut rig = Rig::start(dir, options).await;
    rig.config_text = rig
        .config_text
        .replace("app-key.pem\" }", "app-key.pem\", algorithm = \"RS256\" }");
    assert!(rig.config_text.contains("RS256"), "{}", rig.config_text);
    rig.start_service(None).await;
    rig.wait_for_webhooks(&ALL).await;
    publish::publish_now(rig.api.state(), TENANT, "Audit.General", 1).await;
    rig.wait_for_every_published_record().await;
    let rejections = rig.api.state().inspection().rejections.clone();
    assert!(
        rejections
            .by_code
            .keys()
            .all(|code| !code.starts_with("AADSTS")),
        "{rejections:?}"
    );
    rig.shutdown().await;
}

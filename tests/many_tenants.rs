//! Fifty tenants in one process, by polling: one with a wrong secret, one without
//! `ActivityFeed.ReadDlp`, one throttled hard. Every other tenant's records are delivered,
//! and the broken tenant's other content types too; each problem shows, with advice, and
//! metric labels stay bounded.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::DEADLINE;
use common::rig::sha256_hex;
use o365_connector::clock::Clock;
use o365_connector::config::Config;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::scenario::{
    CONTENT_TYPES, ROLE_READ, Scenario, TenantScenario, ThrottleResponse, ThrottleScenario,
};
use o365_connector::emulator::api::{ApiEmulator, ApiEmulatorConfig};
use o365_connector::emulator::engine::{EngineEmulator, EngineEmulatorConfig};
use o365_connector::retry::RetryPolicy;
use o365_connector::service::{self, ServiceOptions};

const CLIENT: &str = "a1b2c3d4-0000-4000-8000-00000000c11e";
const SECRET: &str = "fifty-tenants-secret";
const TENANTS: usize = 50;
const WRONG_SECRET: usize = 7;
const NO_DLP_ROLE: usize = 13;
const THROTTLED: usize = 21;

fn tenant_id(index: usize) -> String {
    format!("5a1e0000-0000-4000-8000-{index:012x}")
}

fn scenario() -> Scenario {
    let tenants = (0..TENANTS)
        .map(|index| {
            let mut tenant = TenantScenario::with_secret(&tenant_id(index), CLIENT, SECRET);
            tenant.publication.records_per_blob = 5;
            if index == NO_DLP_ROLE {
                tenant.roles = vec![ROLE_READ.to_string()];
            }
            if index == THROTTLED {
                tenant.throttle = Some(ThrottleScenario {
                    requests_per_window: 2,
                    window_secs: 30.0,
                    response: ThrottleResponse::Http429,
                });
            }
            tenant
        })
        .collect();
    Scenario {
        tenants,
        ..Scenario::single_tenant(TenantScenario::with_secret(&tenant_id(0), CLIENT, SECRET))
    }
}

fn config(dir: &std::path::Path, api_base: &str) -> Config {
    let mut text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[store]
path = "{store}"
[engine]
socket = "{socket}"
[api]
login_url = "{api_base}"
api_url = "{api_base}"
publisher_id = "{publisher}"
[workers]
count = 8
[ops]
max_tenant_series = 10
shutdown_secs = 3
[poller]
poll_interval_secs = 1
lag_secs = 0
"#,
        store = dir.join("store").display(),
        socket = dir.join("engine.sock").display(),
        publisher = tenant_id(0),
    );
    for index in 0..TENANTS {
        let secret = if index == WRONG_SECRET {
            "WRONG_SECRET"
        } else {
            "GOOD_SECRET"
        };
        text.push_str(&format!(
            "\n[[tenants]]\nname = \"tenant-{index}\"\ntenant_id = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ env = \"{secret}\" }}\n",
            tenant_id(index)
        ));
    }
    let env = [
        ("GOOD_SECRET".to_string(), SECRET.to_string()),
        ("WRONG_SECRET".to_string(), "not-the-secret".to_string()),
    ];
    Config::from_toml_with_env(&text, env).unwrap()
}

#[tokio::test]
async fn fifty_tenants_with_three_broken_ones_deliver_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let api = ApiEmulator::start(ApiEmulatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: scenario(),
        tls: None,
        webhook_ca: None,
        clock: Clock::system(),
    })
    .await
    .unwrap();
    let engine = EngineEmulator::start(EngineEmulatorConfig::in_memory(
        dir.path().join("engine.sock"),
    ))
    .await
    .unwrap();
    let options = ServiceOptions {
        retry: RetryPolicy::for_test(),
        idle_poll: Duration::from_millis(50),
        ..ServiceOptions::default()
    };
    let service = service::start(config(dir.path(), api.base_url()), options)
        .await
        .unwrap();

    // Every healthy (tenant, content type) gets subscribed (poll-only: no public URL).
    let expected_subscriptions = |index: usize, content_type: &str| {
        index != WRONG_SECRET
            && index != THROTTLED
            && !(index == NO_DLP_ROLE && content_type == "DLP.All")
    };
    let started = std::time::Instant::now();
    loop {
        let enabled = api.state().feed.enabled_subscriptions();
        let missing = (0..TENANTS)
            .flat_map(|index| CONTENT_TYPES.iter().map(move |ct| (index, *ct)))
            .filter(|(index, ct)| expected_subscriptions(*index, ct))
            .filter(|(index, ct)| {
                !enabled.iter().any(|(tenant, enabled_ct)| {
                    tenant.eq_ignore_ascii_case(&tenant_id(*index)) && enabled_ct == ct
                })
            })
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{missing} subscriptions never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for index in (0..TENANTS).filter(|index| *index != WRONG_SECRET && *index != THROTTLED) {
        for content_type in CONTENT_TYPES
            .iter()
            .filter(|ct| expected_subscriptions(index, ct))
        {
            publish::publish_now(api.state(), &tenant_id(index), content_type, 1).await;
        }
    }
    let published = api.state().publisher.published();
    assert_eq!(published.len(), (TENANTS - 2) * 5 * 5 - 5);
    let started = std::time::Instant::now();
    loop {
        let acked: HashMap<String, usize> =
            engine
                .logs()
                .iter()
                .filter(|log| log.acked)
                .fold(HashMap::new(), |mut counts, log| {
                    *counts.entry(sha256_hex(log.raw.as_bytes())).or_insert(0) += 1;
                    counts
                });
        let missing = published
            .iter()
            .filter(|record| !acked.contains_key(&record.sha256))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{missing} records of healthy tenants never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{} records of 47 healthy tenants delivered in {:?}",
        published.len(),
        started.elapsed()
    );

    let problems = service.problems.snapshot();
    let problem_of = |tenant: &str| {
        problems
            .iter()
            .find(|((name, _), _)| name == tenant)
            .map(|(_, problem)| problem.clone())
    };
    let wrong_secret =
        problem_of(&format!("tenant-{WRONG_SECRET}")).expect("the wrong secret is shown");
    assert!(
        wrong_secret.message.contains("AADSTS7000215"),
        "{}",
        wrong_secret.message
    );
    let no_dlp = problems
        .iter()
        .find(|((name, content_type), _)| {
            name == &format!("tenant-{NO_DLP_ROLE}") && content_type == "DLP.All"
        })
        .expect("the missing DLP permission is shown");
    assert!(
        no_dlp.1.advice.contains("ActivityFeed.ReadDlp"),
        "{}",
        no_dlp.1.advice
    );
    let metrics = service.metrics.encode();
    assert!(
        metrics.contains("tenant=\"other\""),
        "tenants beyond the series limit share one label"
    );
    assert!(
        !metrics.contains("tenant=\"tenant-49\""),
        "no series beyond the limit"
    );
    service.stop().await;
    engine.shutdown().await;
    api.shutdown().await;
}

//! The operator commands (`subscriptions`, `backfill`, `deadletters`) as the real binary
//! runs them against a service started in-process: through its admin socket in the store
//! directory, and, without a running service, `subscriptions` directly against the API
//! emulator while the others say the service must run. A requeued dead record travels the
//! whole way: blob fetched again from the API emulator, record acked by the engine emulator.

mod common;

use o365_connector::emulator::api::scenario::CONTENT_TYPES as ALL;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use common::rig::{Rig, RigOptions, SECRET, TENANT, acked_by_sha, sha256_hex};
use common::{DEADLINE, binary};
use o365_connector::clock::Clock;
use o365_connector::emulator::api::publish;
use o365_connector::emulator::api::publish::records::synthetic_record;
use o365_connector::emulator::api::scenario::FaultScenario;
use o365_connector::queue::{
    ContentKey, ContentQueue, ContentRef, EmbeddedQueue, ItemState, QueueStats, Source,
};

/// A tenant the configuration does not know: its items are never fetched.
const GHOST_TENANT: &str = "00000000-0000-4000-8000-0000000000aa";
const GHOST_CONTENT: &str =
    "20261126000000000000000000000000$ghost$Audit_Exchange$Audit_Exchange$emea0001";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` and the rig's configuration; waits for it to exit.
async fn command(rig: &Rig, args: &[&str]) -> Output {
    let config = rig.write_config();
    let child = tokio::process::Command::new(binary())
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("RIG_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not finish in time"))
        .expect("the binary runs");
    Output {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(output: &Output) -> serde_json::Value {
    assert_eq!(output.code, Some(0), "stderr: {}", output.stderr);
    serde_json::from_str(&output.stdout)
        .unwrap_or_else(|error| panic!("--json prints JSON ({error}): {}", output.stdout))
}

fn rfc3339(time: chrono::DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn enabled(rig: &Rig, content_type: &str) -> bool {
    rig.api
        .state()
        .feed
        .enabled_subscriptions()
        .contains(&(TENANT.to_string(), content_type.to_string()))
}

#[tokio::test]
async fn subscriptions_list_stop_and_start_go_through_the_running_service() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    rig.wait_for_webhooks(&ALL).await;
    let socket = rig.dir.path().join("store/admin.sock");
    let mode = std::fs::metadata(&socket)
        .expect("the admin socket is in the store directory")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "only the service's user may connect");

    let listed = command(&rig, &["subscriptions", "list"]).await;
    assert_eq!(listed.code, Some(0), "stderr: {}", listed.stderr);
    assert!(
        !listed.stderr.contains("directly"),
        "the service answered: {}",
        listed.stderr
    );
    for content_type in ALL {
        let line = listed
            .stdout
            .lines()
            .find(|line| line.contains(content_type))
            .unwrap_or_else(|| panic!("{content_type} is listed: {}", listed.stdout));
        assert!(line.contains("enabled"), "{line}");
        assert!(line.contains(&format!("/hook/{TENANT}")), "{line}");
    }
    let report = json(&command(&rig, &["subscriptions", "list", "--json"]).await);
    let rows = report["subscriptions"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|row| row["status"] == "enabled"
        && row["webhook_status"] == "enabled"
        && row["tenant"] == "contoso"));
    assert!(
        !report.to_string().to_lowercase().contains("authid"),
        "authIds are never shown"
    );

    let stopped = command(
        &rig,
        &["subscriptions", "stop", "--content-type", "Audit.General"],
    )
    .await;
    assert_eq!(stopped.code, Some(0), "stderr: {}", stopped.stderr);
    assert!(
        !enabled(&rig, "Audit.General"),
        "the emulator shows it stopped"
    );
    assert!(enabled(&rig, "Audit.Exchange"), "the others are untouched");

    let poll_only = command(
        &rig,
        &[
            "subscriptions",
            "start",
            "--content-type",
            "Audit.General",
            "--no-webhook",
        ],
    )
    .await;
    assert_eq!(poll_only.code, Some(0), "stderr: {}", poll_only.stderr);
    assert!(enabled(&rig, "Audit.General"));
    let state = rig.api.state();
    assert!(state.feed.active_webhook(TENANT, "Audit.General").is_none());

    let started = command(
        &rig,
        &["subscriptions", "start", "--content-type", "Audit.General"],
    )
    .await;
    assert_eq!(started.code, Some(0), "stderr: {}", started.stderr);
    assert!(started.stdout.contains("started"), "{}", started.stdout);
    let webhook = state
        .feed
        .active_webhook(TENANT, "Audit.General")
        .expect("the configured webhook is registered again");
    assert_eq!(
        webhook.address,
        format!(
            "https://localhost:{}/hook/{TENANT}",
            rig.config().server.listen.port()
        )
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn backfill_enqueues_what_the_api_published_in_the_range_and_every_record_reaches_the_engine()
{
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    };
    let rig = Rig::start(dir, RigOptions::synthetic(faults)).await;
    rig.wait_for_webhooks(&ALL).await;
    let from = Utc::now() - chrono::Duration::hours(1);
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 3).await;
    publish::publish_now(rig.api.state(), TENANT, "DLP.All", 2).await;
    let to = Utc::now() + chrono::Duration::minutes(1);

    let output = command(
        &rig,
        &[
            "backfill",
            "--from",
            &rfc3339(from),
            "--to",
            &rfc3339(to),
            "--content-type",
            "Audit.Exchange",
            "--content-type",
            "DLP.All",
            "--json",
        ],
    )
    .await;
    let report = json(&output);
    assert_eq!(report["listed"], 5, "{report}");
    assert_eq!(
        report["enqueued"].as_u64().unwrap() + report["already_known"].as_u64().unwrap(),
        5,
        "{report}"
    );
    assert_eq!(report["pairs"].as_array().unwrap().len(), 2);
    assert!(
        output.stderr.contains("backfill 2/2"),
        "progress on stderr: {}",
        output.stderr
    );
    rig.wait_for_every_published_record().await;

    let again = command(
        &rig,
        &[
            "backfill",
            "--from",
            &rfc3339(from),
            "--to",
            &rfc3339(Utc::now()),
            "--tenant",
            "contoso",
        ],
    )
    .await;
    assert_eq!(again.code, Some(0), "stderr: {}", again.stderr);
    let total = again
        .stdout
        .lines()
        .find(|line| line.starts_with("total"))
        .expect("a total line");
    let numbers: Vec<&str> = total.split_whitespace().skip(1).collect();
    assert_eq!(
        numbers,
        ["5", "0", "5"],
        "listed, new, already known: {total}"
    );
    rig.shutdown().await;
}

/// The value of the `source` series of `family` (`enqueued`, `deduplicated`).
fn source_count(rig: &Rig, family: &str, source: &str) -> u64 {
    let text = rig.service.as_ref().expect("in process").metrics.encode();
    let prefix = format!("o365_connector_{family}_total{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}series: {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_backfill_counts_what_it_enqueued_and_found_known_under_its_source() {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultScenario {
        webhook_delivery_off: true,
        ..FaultScenario::default()
    };
    let rig = Rig::start(dir, RigOptions::synthetic(faults)).await;
    rig.wait_for_webhooks(&ALL).await;
    let from = Utc::now() - chrono::Duration::hours(1);
    publish::publish_now(rig.api.state(), TENANT, "Audit.Exchange", 4).await;
    let to = Utc::now() + chrono::Duration::minutes(1);
    let args = [
        "backfill",
        "--from",
        &rfc3339(from),
        "--to",
        &rfc3339(to),
        "--content-type",
        "Audit.Exchange",
        "--json",
    ];

    let first = json(&command(&rig, &args).await);
    assert_eq!(
        source_count(&rig, "enqueued", "backfill"),
        first["enqueued"].as_u64().unwrap(),
        "{first}"
    );
    assert_eq!(
        source_count(&rig, "deduplicated", "backfill"),
        first["already_known"].as_u64().unwrap(),
        "{first}"
    );
    let again = json(&command(&rig, &args).await);
    assert_eq!(again["already_known"], 4, "{again}");
    assert_eq!(
        source_count(&rig, "enqueued", "backfill") + source_count(&rig, "deduplicated", "backfill"),
        8,
        "every listed blob counted once per backfill, new or known"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn a_backfill_older_than_seven_days_is_refused_with_the_reason_before_anything_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let before = queue.stats().await.unwrap();
    let from = Utc::now() - chrono::Duration::days(8);
    let to = from + chrono::Duration::hours(2);

    let output = command(
        &rig,
        &["backfill", "--from", &rfc3339(from), "--to", &rfc3339(to)],
    )
    .await;
    assert_eq!(output.code, Some(1), "stdout: {}", output.stdout);
    assert!(
        output.stderr.contains("at most 7 days back"),
        "the reason is given: {}",
        output.stderr
    );
    assert!(
        output.stdout.is_empty(),
        "nothing was done: {}",
        output.stdout
    );
    let after = queue.stats().await.unwrap();
    assert_eq!(
        (after.pending, after.leased, after.done),
        (before.pending, before.leased, before.done)
    );
    let usage = command(&rig, &["backfill", "--from", "yesterday", "--to", "now"]).await;
    assert_eq!(usage.code, Some(2), "bad usage: {}", usage.stderr);
    rig.shutdown().await;
}

/// Record bytes by SHA-256, from the records file the emulator publishes.
fn records_by_sha(rig: &Rig) -> HashMap<String, Vec<u8>> {
    let text = std::fs::read(rig.dir.path().join("all-records.ndjson")).unwrap();
    text.split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| (sha256_hex(line), line.to_vec()))
        .collect()
}

/// Puts one dead item of an unconfigured tenant into the (not yet locked) store.
async fn hand_made_dead_item(rig: &Rig) -> ContentKey {
    let queue = EmbeddedQueue::open(&rig.dir.path().join("store"), Clock::system())
        .await
        .unwrap();
    let now = Utc::now();
    let reference = ContentRef {
        tenant_id: GHOST_TENANT.into(),
        content_type: "Audit.Exchange".into(),
        content_id: GHOST_CONTENT.into(),
        content_uri: format!("https://api.invalid/{GHOST_TENANT}/{GHOST_CONTENT}"),
        content_created: now,
        content_expiration: now + chrono::Duration::days(7),
        source: Source::Poll,
    };
    let key = reference.key();
    queue.enqueue(vec![reference]).await.unwrap();
    let leased = queue
        .lease(1, Duration::from_secs(60), &Default::default())
        .await
        .unwrap();
    queue
        .dead_letter(&key, leased[0].lease, "hand-made for the test")
        .await
        .unwrap();
    queue.close().await.unwrap();
    key
}

async fn wait_for_dead_records(rig: &Rig) {
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let started = std::time::Instant::now();
    loop {
        let stats = queue.stats().await.unwrap();
        if stats.dead_records > 0 && stats.pending == 0 && stats.leased == 0 {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "no dead record: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deadletters_list_shows_dead_records_and_items_by_reference_and_requeue_makes_an_item_pending()
 {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::fixture_records(dir.path());
    options.in_process = false;
    let mut rig = Rig::start(dir, options).await;
    let ghost = hand_made_dead_item(&rig).await;
    rig.start_service(None).await;
    rig.wait_for_webhooks(&ALL).await;
    let records = records_by_sha(&rig);
    publish::publish_now(
        rig.api.state(),
        TENANT,
        "Audit.General",
        records.len().div_ceil(10) + 1,
    )
    .await;
    wait_for_dead_records(&rig).await;
    let invalid: Vec<_> = rig
        .published()
        .into_iter()
        .filter(|record| {
            serde_json::from_slice::<serde_json::Value>(&records[&record.sha256]).is_err()
        })
        .collect();
    assert!(!invalid.is_empty(), "the fixtures hold an invalid record");

    let output = command(&rig, &["deadletters", "list", "--json"]).await;
    let report = json(&output);
    let dead_records = report["dead_records"].as_array().unwrap();
    for record in &invalid {
        assert!(
            dead_records
                .iter()
                .any(|dead| dead["content_id"] == record.content_id.as_str()
                    && dead["index"] == record.index
                    && dead["sha256"] == record.sha256.as_str()
                    && dead["tenant"] == "contoso"
                    && dead["content_type"] == "Audit.General"),
            "record {} of {} is listed by reference: {report}",
            record.index,
            record.content_id
        );
        let bytes = String::from_utf8_lossy(&records[&record.sha256]).into_owned();
        assert!(
            !output.stdout.contains(bytes.trim()),
            "never the record's content"
        );
    }
    let dead_items = report["dead_items"].as_array().unwrap();
    assert_eq!(dead_items.len(), 1, "{report}");
    assert_eq!(dead_items[0]["content_id"], GHOST_CONTENT);
    assert_eq!(dead_items[0]["tenant"], GHOST_TENANT);
    assert_eq!(dead_items[0]["reason"], "hand-made for the test");

    let table = command(&rig, &["deadletters", "list"]).await;
    assert_eq!(table.code, Some(0), "stderr: {}", table.stderr);
    assert!(table.stdout.contains(GHOST_CONTENT), "{}", table.stdout);
    assert!(
        table.stdout.contains(&invalid[0].sha256),
        "{}",
        table.stdout
    );

    let usage = command(&rig, &["deadletters", "requeue"]).await;
    assert_eq!(usage.code, Some(2), "--content-id or --all is required");

    let requeued = command(
        &rig,
        &["deadletters", "requeue", "--content-id", GHOST_CONTENT],
    )
    .await;
    assert_eq!(requeued.code, Some(0), "stderr: {}", requeued.stderr);
    assert!(
        requeued.stdout.contains("requeued 1"),
        "{}",
        requeued.stdout
    );
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let item = queue.get(&ghost).await.unwrap().expect("the item is kept");
    assert!(
        matches!(
            item.state,
            ItemState::Pending { .. } | ItemState::Leased { .. }
        ),
        "requeued: {:?}",
        item.state
    );
    let report = json(&command(&rig, &["deadletters", "list", "--json"]).await);
    assert!(
        report["dead_items"].as_array().unwrap().is_empty(),
        "{report}"
    );

    let none_left = command(
        &rig,
        &["deadletters", "requeue", "--content-id", GHOST_CONTENT],
    )
    .await;
    assert_eq!(none_left.code, Some(1));
    assert!(
        none_left.stderr.contains("no dead item"),
        "{}",
        none_left.stderr
    );
    rig.shutdown().await;
}

/// Waits until the item of `key` is done and the queue's counts satisfy `counts`.
async fn wait_for_done(rig: &Rig, key: &ContentKey, counts: impl Fn(&QueueStats) -> bool) {
    let queue = rig.service.as_ref().unwrap().queue.clone();
    let started = std::time::Instant::now();
    loop {
        let item = queue.get(key).await.unwrap();
        let stats = queue.stats().await.unwrap();
        if item
            .as_ref()
            .is_some_and(|item| matches!(item.state, ItemState::Done { .. }))
            && counts(&stats)
        {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not done: {item:?}, {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn deadletters_requeue_sends_the_fixed_record_of_a_done_blob_once_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    rig.wait_for_webhooks(&["Audit.Exchange"]).await;
    let state = rig.api.state();
    let created = Utc::now();
    let record = |sequence| synthetic_record(TENANT, "Audit.Exchange", created, sequence);
    let (first, fixed, last) = (record(0), record(1), record(2));
    let broken = Bytes::from_static(br#"{"Id": "broken", "Operation": }"#);
    let entry = state
        .feed
        .add_blob(
            &state.base_url,
            TENANT,
            "Audit.Exchange",
            &[first.clone(), broken, last.clone()],
            created,
        )
        .expect("the subscription is enabled");
    let key = ContentKey::new(TENANT, &entry.content_id);
    let queue = rig.service.as_ref().unwrap().queue.clone();
    queue
        .enqueue(vec![ContentRef {
            tenant_id: TENANT.into(),
            content_type: entry.content_type.clone(),
            content_id: entry.content_id.clone(),
            content_uri: entry.content_uri.clone(),
            content_created: entry.content_created,
            content_expiration: entry.content_expiration,
            source: Source::Poll,
        }])
        .await
        .unwrap();
    wait_for_done(&rig, &key, |stats| stats.dead_records == 1).await;
    let service = rig.service.as_ref().unwrap();
    let client = common::client_trusting(&rig.certs.ca);
    let status: serde_json::Value = client
        .get(format!("{}/status", service.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        status["queue"]["lost_records"], 1,
        "a dead record not requeued is lost: {status}"
    );

    // The bad record is fixed where the blob is served; the requeue sends it, and only it.
    assert!(state.feed.replace_blob_records(
        TENANT,
        &entry.content_id,
        &[first.clone(), fixed.clone(), last.clone()]
    ));
    let report = json(
        &command(
            &rig,
            &[
                "deadletters",
                "requeue",
                "--content-id",
                &entry.content_id,
                "--json",
            ],
        )
        .await,
    );
    assert!(
        report["requeued"].as_array().unwrap().is_empty(),
        "{report}"
    );
    let records = report["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{report}");
    assert_eq!(records[0]["index"], 1);
    assert_eq!(records[0]["content_type"], "Audit.Exchange");
    wait_for_done(&rig, &key, |stats| stats.dead_records == 0).await;
    rig.wait_for_acked(3).await;

    let logs = rig.all_logs();
    assert_eq!(logs.len(), 3, "nothing but the fixed record was sent again");
    let acked = acked_by_sha(&logs);
    for (name, bytes) in [("first", &first), ("fixed", &fixed), ("last", &last)] {
        assert_eq!(acked.get(&sha256_hex(bytes)), Some(&1), "{name} acked once");
    }
    let stats = queue.stats().await.unwrap();
    assert_eq!((stats.dead_records, stats.lost_records()), (0, 0));
    let again = json(
        &command(
            &rig,
            &[
                "deadletters",
                "requeue",
                "--all",
                "--tenant",
                "contoso",
                "--json",
            ],
        )
        .await,
    );
    assert_eq!(
        (
            again["requeued"].as_array().unwrap().len(),
            again["records"].as_array().unwrap().len()
        ),
        (0, 0),
        "nothing is left to requeue: {again}"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn without_a_running_service_subscriptions_talk_to_the_api_and_the_others_say_it_must_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = RigOptions::synthetic(FaultScenario::default());
    options.in_process = false;
    let rig = Rig::start(dir, options).await;

    let dead = command(&rig, &["deadletters", "list"]).await;
    assert_eq!(dead.code, Some(1));
    assert!(
        dead.stderr.contains("the service must run"),
        "{}",
        dead.stderr
    );
    let elsewhere = rig.dir.path().join("elsewhere.sock");
    let elsewhere = elsewhere.to_str().unwrap();
    let overridden = command(&rig, &["deadletters", "list", "--admin-socket", elsewhere]).await;
    assert_eq!(overridden.code, Some(1));
    assert!(
        overridden.stderr.contains(elsewhere),
        "{}",
        overridden.stderr
    );
    let unknown = command(&rig, &["subscriptions", "list", "--tenant", "fabrikam"]).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("no tenant named \"fabrikam\"")
            && unknown.stderr.contains("contoso"),
        "says which tenants exist: {}",
        unknown.stderr
    );
    let now = Utc::now();
    let backfill = command(
        &rig,
        &[
            "backfill",
            "--from",
            &rfc3339(now - chrono::Duration::hours(1)),
            "--to",
            &rfc3339(now),
        ],
    )
    .await;
    assert_eq!(backfill.code, Some(1));
    assert!(
        backfill.stderr.contains("the service must run"),
        "{}",
        backfill.stderr
    );

    let report = json(&command(&rig, &["subscriptions", "list", "--json"]).await);
    let rows = report["subscriptions"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "every configured content type: {report}");
    assert!(
        rows.iter().all(|row| row["status"].is_null()),
        "none started yet"
    );

    let started = command(
        &rig,
        &[
            "subscriptions",
            "start",
            "--content-type",
            "Audit.Exchange",
            "--no-webhook",
        ],
    )
    .await;
    assert_eq!(started.code, Some(0), "stderr: {}", started.stderr);
    assert!(started.stderr.contains("directly"), "{}", started.stderr);
    assert!(enabled(&rig, "Audit.Exchange"));
    let listed = command(
        &rig,
        &["subscriptions", "list", "--content-type", "Audit.Exchange"],
    )
    .await;
    assert_eq!(listed.code, Some(0), "stderr: {}", listed.stderr);
    let line = listed
        .stdout
        .lines()
        .find(|line| line.contains("Audit.Exchange"))
        .expect("listed");
    assert!(line.contains("enabled"), "{line}");
    rig.shutdown().await;
}

/// The permission bits of `path`.
fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Sends one admin request line to `socket` from this process; the answer lines.
async fn admin_answer_as_this_user(socket: &std::path::Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut answer))
        .await
        .expect("the admin socket answers in time")
        .unwrap();
    answer
}

#[tokio::test]
async fn admin_socket_is_private_and_serves_only_root_and_the_service_user() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::start(dir, RigOptions::synthetic(FaultScenario::default())).await;
    let config = rig.config();
    let socket = o365_connector::admin::socket_path(&config);
    assert_eq!(mode_of(&config.store.path), 0o700, "the store directory");
    assert_eq!(mode_of(&socket), 0o600, "the admin socket");
    let leftovers: Vec<_> = std::fs::read_dir(&config.store.path)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with(".a"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    let request = serde_json::to_string(
        &o365_connector::admin::protocol::AdminRequest::DeadLettersList(Default::default()),
    )
    .unwrap();
    let own = admin_answer_as_this_user(&socket, &request).await;
    assert!(own.contains("dead_letters"), "this user is served: {own}");

    let perl = std::path::Path::new("/usr/bin/perl");
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if !root || !perl.is_file() {
        eprintln!(
            "SKIPPED the other-user half of admin_socket_is_private_and_serves_only_root_and_the_service_user: \
             it needs root (to run a peer as nobody) and /usr/bin/perl"
        );
        rig.shutdown().await;
        return;
    }
    // Open the files up, as a careless chmod would: the peer check alone must refuse.
    for (path, mode) in [
        (rig.dir.path(), 0o755),
        (config.store.path.as_path(), 0o755),
        (socket.as_path(), 0o666),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    // The service may refuse (and close) before the request is written: no SIGPIPE death.
    let script = r#"use IO::Socket::UNIX; $SIG{PIPE} = 'IGNORE';
        my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
        print $s "$ARGV[1]\n"; print while <$s>;"#;
    let mut peer = std::process::Command::new(perl);
    peer.args(["-e", script])
        .arg(&socket)
        .arg(&request)
        .current_dir("/")
        .uid(65534)
        .gid(65534);
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::from(peer)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the peer finishes in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the peer connects: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !stdout.contains("dead_letters"),
        "nobody was served: {stdout}"
    );
    assert!(
        stdout.contains("refused") && stdout.contains("not uid 65534"),
        "nobody is told why: {stdout}"
    );
    rig.shutdown().await;
}

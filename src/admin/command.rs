//! The operator commands (`subscriptions`, `backfill`, `deadletters`) as the binary runs
//! them: find the service's admin socket, send the request, show the answer as a table (or
//! JSON with `--json`) on stdout, progress on stderr.
//!
//! Without a running service (nothing answers on the socket), `subscriptions` builds the
//! tenants from the configuration as the service does and talks to the API itself; the
//! other commands need the service's queue and say so. A command that could not do all it
//! was asked returns an error after printing what it did, so the binary exits 1.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::client::{self, AdminClientError};
use super::operations::{self, check_backfill_range};
use super::protocol::{
    AdminEvent, AdminRequest, BackfillProgress, BackfillReport, BackfillRequest,
    DeadLetterSelection, DeadLettersReport, DeadRecordRow, RequeueReport,
    SubscriptionChangesReport, SubscriptionsReport,
};
use crate::api::http::http_client;
use crate::api::types::WebhookRegistration;
use crate::clock::Clock;
use crate::config::Config;
use crate::ops::Metrics;
use crate::queue::{ContentQueue, EmbeddedQueue, MetaStore, QueueError};
use crate::tenant::build_tenants;
use crate::utmstack::source::ConfigSource;
use crate::webhook::auth_id::load_or_create_secrets;

/// Where to find the service and how to print.
#[derive(Clone, Debug)]
pub struct CommandTarget {
    /// Where the service's configuration comes from (`--config FILE` or `--utmstack`).
    pub source: ConfigSource,
    /// The admin socket; default `{store.path}/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// Print JSON instead of tables.
    pub json: bool,
}

struct Loaded {
    config: Config,
    socket: PathBuf,
    json: bool,
}

fn load(target: &CommandTarget) -> anyhow::Result<Loaded> {
    let config = target.source.load()?;
    let socket = target
        .admin_socket
        .clone()
        .unwrap_or_else(|| super::socket_path(&config));
    Ok(Loaded {
        config,
        socket,
        json: target.json,
    })
}

/// `subscriptions list|start|stop`: through the service when it runs, else directly.
pub async fn subscriptions(target: &CommandTarget, request: AdminRequest) -> anyhow::Result<()> {
    let loaded = load(target)?;
    let answer = match client::connect(&loaded.socket).await {
        Ok(stream) => client::request(stream, &loaded.socket, &request, |_| {}).await?,
        Err(AdminClientError::NotRunning { path }) => {
            eprintln!(
                "no running service answers on {}; talking to the API directly",
                path.display()
            );
            subscriptions_directly(&loaded.config, &request).await?
        }
        Err(error) => return Err(error.into()),
    };
    match answer {
        AdminEvent::Subscriptions(report) => print_subscriptions(&report, loaded.json),
        AdminEvent::SubscriptionChanges(report) => print_changes(&report, loaded.json),
        other => unexpected(&other),
    }
}

async fn subscriptions_directly(
    config: &Config,
    request: &AdminRequest,
) -> anyhow::Result<AdminEvent> {
    let clock = Clock::system();
    let metrics = Arc::new(Metrics::new(
        config.tenants.iter().map(|tenant| tenant.name.as_str()),
        config.ops.max_tenant_series,
    ));
    let http = http_client(&config.api, None)?;
    let tenants = build_tenants(config, &http, &clock, &metrics).await?;
    Ok(match request {
        AdminRequest::SubscriptionsList(selection) => {
            AdminEvent::Subscriptions(operations::list_subscriptions(&tenants, selection).await?)
        }
        AdminRequest::SubscriptionsStart {
            selection,
            no_webhook,
        } => {
            let webhooks = if *no_webhook {
                HashMap::new()
            } else {
                configured_webhooks(config).await?
            };
            AdminEvent::SubscriptionChanges(
                operations::start_subscriptions(&tenants, &webhooks, selection, *no_webhook)
                    .await?,
            )
        }
        AdminRequest::SubscriptionsStop(selection) => AdminEvent::SubscriptionChanges(
            operations::stop_subscriptions(&tenants, selection).await?,
        ),
        other => anyhow::bail!("{other:?} needs the running service"),
    })
}

/// The webhook secrets the service uses: configured, or kept in `meta`.
async fn stored_secrets(
    config: &Config,
    meta: &dyn MetaStore,
) -> anyhow::Result<crate::webhook::WebhookSecrets> {
    load_or_create_secrets(
        config.server.webhook_secret.as_ref(),
        config.server.webhook_secret_previous.as_ref(),
        meta,
    )
    .await
    .context("cannot load the webhook secret")
}

/// Each tenant's webhook as the service registers it; the authIds come from the webhook
/// secret, read from the store when it is not configured (the service is not running, so
/// the store is free).
async fn configured_webhooks(
    config: &Config,
) -> anyhow::Result<HashMap<String, WebhookRegistration>> {
    if config.server.public_url.is_none() {
        return Ok(HashMap::new());
    }
    let secrets = if config.store.backend == crate::config::StoreBackendKind::Nats {
        let replica = format!("admin-{}", std::process::id());
        let settings = crate::queue::nats::NatsSettings::from_config(config, replica)?;
        let queue = crate::queue::NatsQueue::connect(&settings, Clock::system()).await?;
        let secrets = stored_secrets(config, &queue).await;
        queue.close().await?;
        secrets
    } else {
        let store = &config.store.path;
        let queue = EmbeddedQueue::open(store, Clock::system())
            .await
            .map_err(|error| match error {
                QueueError::AlreadyOpen { .. } => anyhow::anyhow!(
                    "store.path {}: the store is locked by a running service whose admin socket does not answer; check its log, or give its socket with --admin-socket",
                    store.display()
                ),
                other => anyhow::anyhow!("store.path {}: cannot open the store: {other}", store.display()),
            })?;
        let secrets = stored_secrets(config, &queue).await;
        queue.close().await?;
        secrets
    };
    let secrets = secrets?;
    let mut webhooks = HashMap::new();
    for tenant in &config.tenants {
        let tenant_id = tenant.tenant_id.to_string().to_ascii_lowercase();
        if let Some(url) = config.server.webhook_url(tenant.tenant_id) {
            webhooks.insert(
                tenant_id.clone(),
                WebhookRegistration {
                    address: url.to_string(),
                    auth_id: secrets.auth_id(&tenant_id),
                    expiration: String::new(),
                },
            );
        }
    }
    Ok(webhooks)
}

/// Sends a request that needs the running service; progress goes to `on_progress`.
async fn through_service(
    loaded: &Loaded,
    request: &AdminRequest,
    on_progress: impl FnMut(&BackfillProgress),
) -> anyhow::Result<AdminEvent> {
    let stream = client::connect(&loaded.socket).await?;
    Ok(client::request(stream, &loaded.socket, request, on_progress).await?)
}

/// `backfill`: the range is checked first, then listed and enqueued by the service.
pub async fn backfill(target: &CommandTarget, request: BackfillRequest) -> anyhow::Result<()> {
    let loaded = load(target)?;
    check_backfill_range(request.from, request.to, Utc::now())?;
    let mut display = ProgressDisplay::new();
    let answer = through_service(&loaded, &AdminRequest::Backfill(request), |progress| {
        display.show(progress)
    })
    .await;
    display.finish();
    match answer? {
        AdminEvent::Backfill(report) => print_backfill(&report, loaded.json),
        other => unexpected(&other),
    }
}

/// `deadletters list`.
pub async fn deadletters_list(
    target: &CommandTarget,
    selection: DeadLetterSelection,
) -> anyhow::Result<()> {
    let loaded = load(target)?;
    match through_service(&loaded, &AdminRequest::DeadLettersList(selection), |_| {}).await? {
        AdminEvent::DeadLetters(report) => print_dead_letters(&report, loaded.json),
        other => unexpected(&other),
    }
}

/// `deadletters requeue`.
pub async fn deadletters_requeue(
    target: &CommandTarget,
    selection: DeadLetterSelection,
) -> anyhow::Result<()> {
    let loaded = load(target)?;
    match through_service(
        &loaded,
        &AdminRequest::DeadLettersRequeue(selection),
        |_| {},
    )
    .await?
    {
        AdminEvent::Requeued(report) => print_requeued(&report, loaded.json),
        other => unexpected(&other),
    }
}

fn unexpected(answer: &AdminEvent) -> anyhow::Result<()> {
    anyhow::bail!(
        "the service answered something unexpected ({answer:?}); are the command and the service the same version?"
    )
}

/// Backfill progress on stderr: a bar on a terminal, one line per finished pair otherwise.
struct ProgressDisplay {
    bar: Option<ProgressBar>,
}

impl ProgressDisplay {
    fn new() -> Self {
        Self { bar: None }
    }

    fn show(&mut self, progress: &BackfillProgress) {
        let pair = &progress.pair;
        if !std::io::stderr().is_terminal() {
            if progress.finished {
                eprintln!(
                    "backfill {}/{}: {} {}: listed {}, new {}, already known {}{}",
                    progress.done,
                    progress.total,
                    pair.tenant,
                    pair.content_type,
                    pair.listed,
                    pair.enqueued,
                    pair.already_known,
                    pair.error
                        .as_deref()
                        .map(|error| format!(", failed: {error}"))
                        .unwrap_or_default()
                );
            }
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(progress.total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {elapsed} {msg}")
            {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        bar.set_position(progress.done as u64);
        bar.set_message(format!("{} {}", pair.tenant, pair.content_type));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Columns aligned on the widest cell; the last column is not padded.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index == last {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_string() + "\n"
    };
    let mut text = line(headers.to_vec());
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

fn or_dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".into())
}

fn print_subscriptions(report: &SubscriptionsReport, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .subscriptions
            .iter()
            .map(|row| {
                vec![
                    row.tenant.clone(),
                    row.content_type.clone(),
                    row.status.clone().unwrap_or_else(|| "not started".into()),
                    or_dash(&row.webhook_status),
                    or_dash(&row.webhook_address),
                    if row.configured { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                &[
                    "TENANT",
                    "CONTENT TYPE",
                    "STATUS",
                    "WEBHOOK",
                    "ADDRESS",
                    "CONFIGURED"
                ],
                &rows
            )
        );
    }
    for failure in &report.failures {
        eprintln!("tenant {}: {}", failure.tenant, failure.error);
    }
    anyhow::ensure!(
        report.failures.is_empty(),
        "the subscriptions of {} tenant(s) could not be listed",
        report.failures.len()
    );
    Ok(())
}

fn print_changes(report: &SubscriptionChangesReport, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        let rows: Vec<Vec<String>> = report
            .changes
            .iter()
            .map(|change| {
                vec![
                    change.tenant.clone(),
                    change.content_type.clone(),
                    change.outcome.clone(),
                    change
                        .webhook_address
                        .clone()
                        .unwrap_or_else(|| "(poll only)".into()),
                ]
            })
            .collect();
        let headers = if report.action == "start" {
            ["TENANT", "CONTENT TYPE", "OUTCOME", "WEBHOOK"].as_slice()
        } else {
            ["TENANT", "CONTENT TYPE", "OUTCOME"].as_slice()
        };
        let rows: Vec<Vec<String>> = rows
            .into_iter()
            .map(|row| row.into_iter().take(headers.len()).collect())
            .collect();
        print!("{}", table(headers, &rows));
        if report.action == "stop" {
            eprintln!(
                "note: content published while a subscription is stopped is never listed; a running service re-starts configured subscriptions at its next check"
            );
        }
    }
    let failed: Vec<_> = report
        .changes
        .iter()
        .filter(|change| change.error.is_some())
        .collect();
    for change in &failed {
        eprintln!(
            "tenant {} {}: {}",
            change.tenant,
            change.content_type,
            or_dash(&change.error)
        );
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} subscriptions could not be {}ed",
        failed.len(),
        report.changes.len(),
        if report.action == "stop" {
            "stopp"
        } else {
            "start"
        }
    );
    Ok(())
}

fn print_backfill(report: &BackfillReport, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        let mut rows: Vec<Vec<String>> = report
            .pairs
            .iter()
            .map(|pair| {
                vec![
                    pair.tenant.clone(),
                    pair.content_type.clone(),
                    pair.listed.to_string(),
                    pair.enqueued.to_string(),
                    pair.already_known.to_string(),
                    if pair.error.is_some() { "failed" } else { "ok" }.into(),
                ]
            })
            .collect();
        rows.push(vec![
            "total".into(),
            String::new(),
            report.listed.to_string(),
            report.enqueued.to_string(),
            report.already_known.to_string(),
            String::new(),
        ]);
        println!("backfill {} to {}", time(report.from), time(report.to));
        print!(
            "{}",
            table(
                &[
                    "TENANT",
                    "CONTENT TYPE",
                    "LISTED",
                    "NEW",
                    "ALREADY KNOWN",
                    "RESULT"
                ],
                &rows
            )
        );
    }
    for pair in report.pairs.iter().filter(|pair| pair.error.is_some()) {
        eprintln!(
            "tenant {} {}: {}",
            pair.tenant,
            pair.content_type,
            or_dash(&pair.error)
        );
    }
    anyhow::ensure!(
        !report.cancelled,
        "the backfill stopped early (the service is shutting down); what was listed is enqueued, run it again for the rest"
    );
    anyhow::ensure!(
        report.failed == 0,
        "{} of {} tenant and content type pairs could not be backfilled",
        report.failed,
        report.pairs.len()
    );
    Ok(())
}

fn time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn print_dead_letters(report: &DeadLettersReport, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(report);
    }
    println!("dead items: {}", report.dead_items.len());
    let rows: Vec<Vec<String>> = report
        .dead_items
        .iter()
        .map(|item| {
            vec![
                item.tenant.clone(),
                item.content_type.clone(),
                item.content_id.clone(),
                item.dead_records.to_string(),
                item.reason.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!(
            "{}",
            table(
                &[
                    "TENANT",
                    "CONTENT TYPE",
                    "CONTENT ID",
                    "DEAD RECORDS",
                    "REASON"
                ],
                &rows
            )
        );
    }
    println!("dead records: {}", report.dead_records.len());
    print_dead_record_table(&report.dead_records);
    if report.truncated {
        eprintln!(
            "note: only the first {} are listed",
            operations::DEAD_LETTER_LIMIT
        );
    }
    Ok(())
}

/// Dead records by reference, as a table (nothing when there are none).
fn print_dead_record_table(records: &[DeadRecordRow]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            vec![
                record.tenant.clone(),
                or_dash(&record.content_type),
                record.content_id.clone(),
                record.index.to_string(),
                format!("{}..{}", record.byte_range.0, record.byte_range.1),
                record.sha256.clone(),
                record.reason.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        print!(
            "{}",
            table(
                &[
                    "TENANT",
                    "CONTENT TYPE",
                    "CONTENT ID",
                    "INDEX",
                    "BYTES",
                    "SHA-256",
                    "REASON"
                ],
                &rows
            )
        );
    }
}

fn print_requeued(report: &RequeueReport, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(report)?;
    } else {
        println!(
            "requeued {} dead item(s) and {} dead record(s)",
            report.requeued.len(),
            report.records.len()
        );
        let rows: Vec<Vec<String>> = report
            .requeued
            .iter()
            .map(|item| {
                vec![
                    item.tenant.clone(),
                    item.content_type.clone(),
                    item.content_id.clone(),
                    item.reason.clone(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            print!(
                "{}",
                table(
                    &["TENANT", "CONTENT TYPE", "CONTENT ID", "WAS DEAD FOR"],
                    &rows
                )
            );
        }
        print_dead_record_table(&report.records);
    }
    if report.expired > 0 {
        eprintln!(
            "note: {} requeued item(s) have content Microsoft no longer serves; they will be dead-lettered again",
            report.expired
        );
    }
    if report.records_in_progress > 0 {
        eprintln!(
            "note: {} dead record(s) belong to blobs still being fetched; requeue them once those are done",
            report.records_in_progress
        );
    }
    if report.records_expired > 0 {
        eprintln!(
            "note: {} dead record(s) belong to blobs Microsoft no longer serves; they cannot be requeued",
            report.records_expired
        );
    }
    if report.truncated {
        eprintln!("note: more dead letters match; run the requeue again");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_do_not_pad_the_last() {
        let text = table(
            &["A", "BB"],
            &[
                vec!["long".into(), "x".into()],
                vec!["s".into(), "y".into()],
            ],
        );
        assert_eq!(text, "A     BB\nlong  x\ns     y\n");
    }
}

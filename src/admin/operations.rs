//! What the operator commands do, on the service's own components: the API's view of the
//! subscriptions, starts and stops, backfills through the content queue, and dead letters.
//!
//! Guarantees:
//! - a backfill range is checked before anything is listed ([`check_backfill_range`]): the
//!   API lists at most 7 days back, so an older `from` is refused with the reason;
//! - a backfill goes through the same [`Intake`] as the webhook and the poller
//!   ([`Source::Backfill`]), so dedupe by contentId makes it safe to run at any time, its
//!   count of new and known blobs is exact and counted in `enqueued_total{source="backfill"}`
//!   and `deduplicated_total{source="backfill"}`, and a pair listed while the queue is at
//!   `ops.queue_hard_limit` is reported failed with nothing enqueued; what was enqueued
//!   before a cancellation stays enqueued;
//! - one (tenant, content type) failing never stops the others;
//! - a requeue takes dead items and the dead records of done blobs alike
//!   ([`ContentQueue::requeue_dead`]), and reports every selected dead record it could not
//!   requeue, with why (blob still in progress, or no longer served by Microsoft);
//! - nothing secret (authIds, tokens) and no record content is ever put in a report.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{DateTime, Duration, DurationRound, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::{
    BackfillPairFinished, BackfillUrisRefused, DeadItemRequeued, DeadRecordsRequeued,
    SubscriptionStarted, SubscriptionStopped,
};
use super::protocol::{
    BackfillPair, BackfillProgress, BackfillReport, BackfillRequest, DeadItemRow,
    DeadLetterSelection, DeadLettersReport, DeadRecordRow, RequeueReport, SubscriptionChange,
    SubscriptionChangesReport, SubscriptionRow, SubscriptionSelection, SubscriptionsReport,
    TenantFailure,
};
use crate::api::types::{ContentItem, WebhookRegistration};
use crate::api::{ErrorKind, StartOutcome};
use crate::clock::Clock;
use crate::config::ContentType;
use crate::intake::{Intake, IntakeError};
use crate::poller::{earliest_listable, list_range};
use crate::queue::{ContentKey, DeadRecord, Source};
use crate::queue::{ContentQueue, ContentRef, ItemState, QueueError, QueueItem};
use crate::tenant::{Tenant, TenantSet, Tenants};

/// Kept between the oldest `from` accepted and the API's 7-day limit, so the first window
/// is still listable when its request arrives (a backfill of many pairs takes a while).
pub const RETENTION_MARGIN: Duration = Duration::minutes(10);

/// Most dead items or records one listing or requeue handles.
pub const DEAD_LETTER_LIMIT: usize = 10_000;

/// Why an operator command could not be carried out. Messages say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `--tenant` names no configured tenant.
    #[error("no tenant named {name:?} in the configuration; configured tenants: {known}")]
    UnknownTenant {
        /// The name given.
        name: String,
        /// The configured names, comma-separated.
        known: String,
    },
    /// `--content-type` is not one of the API's five.
    #[error(
        "unknown content type {0:?}; use Audit.AzureActiveDirectory, Audit.Exchange, Audit.SharePoint, Audit.General or DLP.All"
    )]
    UnknownContentType(String),
    /// The selected tenants do not collect the content type.
    #[error(
        "content type {content_type} is not collected by the selected tenants; add it to their content_types or choose another"
    )]
    ContentTypeNotCollected {
        /// The content type.
        content_type: String,
    },
    /// The backfill range cannot be served.
    #[error("cannot backfill {from} to {to}: {reason}")]
    InvalidRange {
        /// Requested start.
        from: DateTime<Utc>,
        /// Requested end.
        to: DateTime<Utc>,
        /// Why, and what to give instead.
        reason: String,
    },
    /// `deadletters requeue` without `--content-id` or `--all`.
    #[error("say which dead items to requeue: --content-id ID or --all")]
    RequeueNeedsSelection,
    /// No dead item and no dead record has this contentId.
    #[error(
        "no dead item and no dead record with contentId {0}; list them with `deadletters list`"
    )]
    NoSuchDeadItem(String),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What the admin listener needs from the running service.
pub struct AdminContext {
    /// The content queue.
    pub queue: Arc<dyn ContentQueue>,
    /// The current tenants.
    pub tenants: Arc<TenantSet>,
    /// Each current tenant's configured webhook, by tenant GUID; absent when polling only.
    /// Replaced with the tenants on reload.
    pub webhooks: Arc<ArcSwap<HashMap<String, WebhookRegistration>>>,
    /// The service's clock.
    pub clock: Clock,
    /// Where backfilled content goes (hard limit, outcome counts by source, the workers'
    /// wake-up); also wakes the workers after a requeue.
    pub intake: Intake,
    /// Longest listing window of a backfill.
    pub max_window: Duration,
}

/// The tenants named (all when `None`), ordered by name.
pub fn select_tenants(
    tenants: &Tenants,
    name: Option<&str>,
) -> Result<Vec<Arc<Tenant>>, AdminError> {
    let mut all: Vec<Arc<Tenant>> = tenants.values().cloned().collect();
    all.sort_by(|left, right| left.name.cmp(&right.name));
    let Some(name) = name else {
        return Ok(all);
    };
    match all.iter().find(|tenant| tenant.name == name) {
        Some(tenant) => Ok(vec![tenant.clone()]),
        None => Err(AdminError::UnknownTenant {
            name: name.to_string(),
            known: all
                .iter()
                .map(|tenant| tenant.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Parses a content type in the API's spelling.
pub fn parse_content_type(text: &str) -> Result<ContentType, AdminError> {
    text.parse()
        .map_err(|_| AdminError::UnknownContentType(text.to_string()))
}

/// The content types of `tenant` that `filter` selects (its configured ones when `None`).
fn selected_types(tenant: &Tenant, filter: Option<ContentType>) -> Vec<ContentType> {
    match filter {
        Some(content_type) => vec![content_type],
        None => tenant.content_types.clone(),
    }
}

/// The API's view of the selected subscriptions: per tenant, every configured (or the
/// selected) content type and whatever else the API lists.
pub async fn list_subscriptions(
    tenants: &Tenants,
    selection: &SubscriptionSelection,
) -> Result<SubscriptionsReport, AdminError> {
    let filter = selection
        .content_type
        .as_deref()
        .map(parse_content_type)
        .transpose()?;
    let mut report = SubscriptionsReport::default();
    for tenant in select_tenants(tenants, selection.tenant.as_deref())? {
        let listed = match tenant.client.list_subscriptions().await {
            Ok(listed) => listed,
            Err(error) => {
                report.failures.push(TenantFailure {
                    tenant: tenant.name.clone(),
                    error: with_advice(&error),
                });
                continue;
            }
        };
        let mut wanted: Vec<String> = selected_types(&tenant, filter)
            .iter()
            .map(|content_type| content_type.as_str().to_string())
            .collect();
        if filter.is_none() {
            for status in &listed {
                if !wanted.iter().any(|known| known == &status.content_type) {
                    wanted.push(status.content_type.clone());
                }
            }
        }
        for content_type in wanted {
            let status = listed
                .iter()
                .find(|status| status.content_type.eq_ignore_ascii_case(&content_type));
            let webhook = status.and_then(|status| status.webhook.as_ref());
            report.subscriptions.push(SubscriptionRow {
                tenant: tenant.name.clone(),
                tenant_id: tenant.tenant_id.clone(),
                configured: tenant
                    .content_types
                    .iter()
                    .any(|configured| configured.as_str() == content_type),
                content_type,
                status: status.and_then(|status| status.status.clone()),
                webhook_status: webhook.and_then(|webhook| webhook.status.clone()),
                webhook_address: webhook.and_then(|webhook| webhook.address.clone()),
            });
        }
    }
    Ok(report)
}

/// Starts the selected subscriptions with each tenant's configured webhook (poll-only with
/// `no_webhook` or when none is configured). AF20024 (already enabled) is success.
pub async fn start_subscriptions(
    tenants: &Tenants,
    webhooks: &HashMap<String, WebhookRegistration>,
    selection: &SubscriptionSelection,
    no_webhook: bool,
) -> Result<SubscriptionChangesReport, AdminError> {
    let filter = selection
        .content_type
        .as_deref()
        .map(parse_content_type)
        .transpose()?;
    let mut report = SubscriptionChangesReport {
        action: "start".into(),
        changes: Vec::new(),
    };
    for tenant in select_tenants(tenants, selection.tenant.as_deref())? {
        let webhook = webhooks.get(&tenant.tenant_id).filter(|_| !no_webhook);
        for content_type in selected_types(&tenant, filter) {
            let result = tenant
                .client
                .start_subscription(content_type.as_str(), webhook)
                .await;
            let (outcome, error) = match result {
                Ok(StartOutcome::Started(_)) => ("started", None),
                Ok(StartOutcome::AlreadyEnabled) => ("already enabled", None),
                Err(error) if error.kind() == Some(ErrorKind::WebhookNotValidated) => (
                    "failed",
                    Some(format!(
                        "{}; or start with --no-webhook to collect by polling",
                        with_advice(&error)
                    )),
                ),
                Err(error) => ("failed", Some(with_advice(&error))),
            };
            SubscriptionStarted {
                tenant: &tenant.name,
                content_type,
                outcome,
            }
            .emit();
            report.changes.push(SubscriptionChange {
                tenant: tenant.name.clone(),
                content_type: content_type.as_str().into(),
                outcome: outcome.into(),
                webhook_address: webhook.map(|webhook| webhook.address.clone()),
                error,
            });
        }
    }
    Ok(report)
}

/// Stops the selected subscriptions. Content published while a subscription is stopped is
/// never listed: the gap is lost.
pub async fn stop_subscriptions(
    tenants: &Tenants,
    selection: &SubscriptionSelection,
) -> Result<SubscriptionChangesReport, AdminError> {
    let filter = selection
        .content_type
        .as_deref()
        .map(parse_content_type)
        .transpose()?;
    let mut report = SubscriptionChangesReport {
        action: "stop".into(),
        changes: Vec::new(),
    };
    for tenant in select_tenants(tenants, selection.tenant.as_deref())? {
        for content_type in selected_types(&tenant, filter) {
            let result = tenant.client.stop_subscription(content_type.as_str()).await;
            SubscriptionStopped {
                tenant: &tenant.name,
                content_type,
                ok: result.is_ok(),
            }
            .emit();
            let (outcome, error) = match result {
                Ok(()) => ("stopped", None),
                Err(error) => ("failed", Some(with_advice(&error))),
            };
            report.changes.push(SubscriptionChange {
                tenant: tenant.name.clone(),
                content_type: content_type.as_str().into(),
                outcome: outcome.into(),
                webhook_address: None,
                error,
            });
        }
    }
    Ok(report)
}

fn with_advice(error: &crate::api::ApiError) -> String {
    match error.kind().and_then(ErrorKind::advice) {
        Some(advice) => format!("{error}; {advice}"),
        None => error.to_string(),
    }
}

/// The range a backfill lists, or why the API cannot serve it: `from` before `to`, not in
/// the future, and no more than 7 days (less [`RETENTION_MARGIN`]) back. The start is taken
/// to the whole second below and the end, at most `now`, to the whole second above, since
/// the API's times have whole seconds.
pub fn check_backfill_range(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), AdminError> {
    let refuse = |reason: String| AdminError::InvalidRange { from, to, reason };
    if from >= to {
        return Err(refuse("--from must be before --to".into()));
    }
    if from >= now {
        return Err(refuse(
            "--from is in the future: there is no content to list yet".into(),
        ));
    }
    let earliest = earliest_listable(now, RETENTION_MARGIN);
    if from < earliest {
        return Err(refuse(format!(
            "the API lists content at most 7 days back, so the earliest --from now is {} (7 days less a {}-minute margin); content older than that can no longer be listed or fetched",
            earliest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            RETENTION_MARGIN.num_minutes()
        )));
    }
    let second = Duration::seconds(1);
    let start = from.duration_trunc(second).unwrap_or(from);
    let end = to.min(now);
    let end = end
        .duration_trunc(second)
        .map(|truncated| {
            if truncated < end {
                truncated + second
            } else {
                truncated
            }
        })
        .unwrap_or(end);
    Ok((start, end))
}

/// The (tenant, content type) pairs a backfill covers.
fn plan_backfill(
    tenants: &Tenants,
    request: &BackfillRequest,
) -> Result<Vec<(Arc<Tenant>, ContentType)>, AdminError> {
    let selected = if request.tenants.is_empty() {
        select_tenants(tenants, None)?
    } else {
        let mut selected = Vec::new();
        for name in &request.tenants {
            selected.extend(select_tenants(tenants, Some(name))?);
        }
        selected
    };
    let wanted: Vec<ContentType> = request
        .content_types
        .iter()
        .map(|text| parse_content_type(text))
        .collect::<Result<_, _>>()?;
    for content_type in &wanted {
        if !selected
            .iter()
            .any(|tenant| tenant.content_types.contains(content_type))
        {
            return Err(AdminError::ContentTypeNotCollected {
                content_type: content_type.as_str().into(),
            });
        }
    }
    let mut plan = Vec::new();
    for tenant in selected {
        for content_type in &tenant.content_types {
            if wanted.is_empty() || wanted.contains(content_type) {
                plan.push((tenant.clone(), *content_type));
            }
        }
    }
    Ok(plan)
}

/// Lists `[from, to)` for each selected (tenant, content type) and enqueues what it finds,
/// sending a [`BackfillProgress`] as each pair starts and ends. Stops after the current pair
/// when `shutdown` is cancelled or `progress` is closed (the command went away).
pub async fn backfill(
    context: &AdminContext,
    request: BackfillRequest,
    progress: mpsc::Sender<BackfillProgress>,
    shutdown: CancellationToken,
) -> Result<BackfillReport, AdminError> {
    let (from, to) = check_backfill_range(request.from, request.to, context.clock.now())?;
    let plan = plan_backfill(&context.tenants.current(), &request)?;
    let mut report = BackfillReport {
        from,
        to,
        ..BackfillReport::default()
    };
    let total = plan.len();
    for (done, (tenant, content_type)) in plan.into_iter().enumerate() {
        if shutdown.is_cancelled() || progress.is_closed() {
            report.cancelled = true;
            break;
        }
        let mut pair = BackfillPair {
            tenant: tenant.name.clone(),
            content_type: content_type.as_str().into(),
            ..BackfillPair::default()
        };
        let started = BackfillProgress {
            total,
            done,
            pair: pair.clone(),
            finished: false,
        };
        let _ = progress.send(started).await;
        let listing = list_range(&tenant.client, content_type, from, to, context.max_window);
        let listed = tokio::select! {
            _ = shutdown.cancelled() => {
                report.cancelled = true;
                break;
            }
            listed = listing => listed,
        };
        match listed {
            Ok(items) => enqueue_listed(context, &tenant, items, &mut pair).await,
            Err(error) => pair.error = Some(with_advice(&error)),
        }
        BackfillPairFinished { pair: &pair }.emit();
        report.listed += pair.listed;
        report.enqueued += pair.enqueued;
        report.already_known += pair.already_known;
        report.failed += usize::from(pair.error.is_some());
        report.pairs.push(pair.clone());
        let finished = BackfillProgress {
            total,
            done: done + 1,
            pair,
            finished: true,
        };
        let _ = progress.send(finished).await;
    }
    Ok(report)
}

/// Enqueues listed items as [`Source::Backfill`] and counts the outcomes into `pair`.
async fn enqueue_listed(
    context: &AdminContext,
    tenant: &Tenant,
    items: Vec<ContentItem>,
    pair: &mut BackfillPair,
) {
    pair.listed = items.len() as u64;
    let mut refs = Vec::with_capacity(items.len());
    for item in items {
        let on_api_host = tenant.client.check_content_uri(&item.content_uri).is_ok();
        if !on_api_host {
            pair.rejected += 1;
            continue;
        }
        refs.push(ContentRef {
            tenant_id: tenant.tenant_id.clone(),
            content_type: item.content_type,
            content_id: item.content_id,
            content_uri: item.content_uri,
            content_created: item.content_created,
            content_expiration: item.content_expiration,
            source: Source::Backfill,
        });
    }
    if pair.rejected > 0 {
        BackfillUrisRefused {
            tenant: &tenant.name,
            rejected: pair.rejected,
        }
        .emit();
        pair.error = Some(format!(
            "{} listed contentUris are not on the tenant's API host and were refused",
            pair.rejected
        ));
    }
    match context.intake.enqueue(Source::Backfill, refs).await {
        Ok(admitted) => {
            pair.enqueued += admitted.enqueued;
            pair.already_known += admitted.duplicates;
        }
        Err(IntakeError::Full(full)) => {
            pair.error = Some(format!(
                "nothing enqueued: the queue holds {} open content references, at or above ops.queue_hard_limit ({}); run the backfill again once the workers drained it",
                full.open, full.limit
            ));
        }
        Err(error) => pair.error = Some(error.to_string()),
    }
}

fn tenant_name(tenants: &Tenants, tenant_id: &str) -> String {
    tenants
        .get(tenant_id)
        .map_or_else(|| tenant_id.to_string(), |tenant| tenant.name.clone())
}

fn dead_item_row(tenants: &Tenants, item: &QueueItem) -> DeadItemRow {
    let (reason, attempts) = match &item.state {
        ItemState::Dead { reason, attempts } => (reason.clone(), *attempts),
        other => (format!("now {}", other.name()), 0),
    };
    DeadItemRow {
        tenant: tenant_name(tenants, &item.content.tenant_id),
        tenant_id: item.content.tenant_id.clone(),
        content_type: item.content.content_type.clone(),
        content_id: item.content.content_id.clone(),
        reason,
        attempts,
        dead_records: item.dead_records,
        content_expiration: item.content.content_expiration,
    }
}

/// The tenant GUID a selection names, if it names one.
fn selected_tenant_id(
    tenants: &Tenants,
    selection: &DeadLetterSelection,
) -> Result<Option<String>, AdminError> {
    match selection.tenant.as_deref() {
        None => Ok(None),
        Some(name) => Ok(select_tenants(tenants, Some(name))?
            .first()
            .map(|tenant| tenant.tenant_id.clone())),
    }
}

fn matches(tenant_id: &Option<String>, content_id: &Option<String>, key: &ContentKey) -> bool {
    tenant_id
        .as_ref()
        .is_none_or(|wanted| *wanted == key.tenant_id)
        && content_id
            .as_ref()
            .is_none_or(|wanted| *wanted == key.content_id)
}

/// Dead items and dead records matching the selection.
pub async fn list_dead_letters(
    context: &AdminContext,
    selection: &DeadLetterSelection,
) -> Result<DeadLettersReport, AdminError> {
    let tenant_id = selected_tenant_id(&context.tenants.current(), selection)?;
    let items = context.queue.dead_items(DEAD_LETTER_LIMIT).await?;
    let records = context.queue.dead_records(DEAD_LETTER_LIMIT).await?;
    let mut report = DeadLettersReport {
        truncated: items.len() >= DEAD_LETTER_LIMIT || records.len() >= DEAD_LETTER_LIMIT,
        ..DeadLettersReport::default()
    };
    for item in items
        .iter()
        .filter(|item| matches(&tenant_id, &selection.content_id, &item.content.key()))
    {
        report
            .dead_items
            .push(dead_item_row(&context.tenants.current(), item));
    }
    for (key, records) in records_by_blob(records, &tenant_id, &selection.content_id) {
        let content_type = context
            .queue
            .get(&key)
            .await?
            .map(|item| item.content.content_type);
        report.dead_records.extend(dead_record_rows(
            &context.tenants.current(),
            &key,
            content_type,
            records,
        ));
    }
    Ok(report)
}

/// The listed dead records of the selected blobs, by blob.
fn records_by_blob(
    records: Vec<(ContentKey, DeadRecord)>,
    tenant_id: &Option<String>,
    content_id: &Option<String>,
) -> BTreeMap<ContentKey, Vec<DeadRecord>> {
    let mut by_blob: BTreeMap<ContentKey, Vec<DeadRecord>> = BTreeMap::new();
    for (key, record) in records {
        if matches(tenant_id, content_id, &key) {
            by_blob.entry(key).or_default().push(record);
        }
    }
    by_blob
}

fn dead_record_rows(
    tenants: &Tenants,
    key: &ContentKey,
    content_type: Option<String>,
    records: Vec<DeadRecord>,
) -> impl Iterator<Item = DeadRecordRow> + use<> {
    let tenant = tenant_name(tenants, &key.tenant_id);
    let key = key.clone();
    records.into_iter().map(move |record| DeadRecordRow {
        tenant: tenant.clone(),
        tenant_id: key.tenant_id.clone(),
        content_type: content_type.clone(),
        content_id: key.content_id.clone(),
        index: record.index,
        byte_range: record.byte_range,
        sha256: hex::encode(record.sha256),
        reason: record.reason,
    })
}

/// Requeues the selected dead items, with their dead records, and the dead records of the
/// selected done blobs (see [`ContentQueue::requeue_dead`]).
pub async fn requeue_dead_letters(
    context: &AdminContext,
    selection: &DeadLetterSelection,
) -> Result<RequeueReport, AdminError> {
    if selection.content_id.is_none() && !selection.all {
        return Err(AdminError::RequeueNeedsSelection);
    }
    let tenants = context.tenants.current();
    let tenant_id = selected_tenant_id(&tenants, selection)?;
    let items = context.queue.dead_items(DEAD_LETTER_LIMIT).await?;
    let records = context.queue.dead_records(DEAD_LETTER_LIMIT).await?;
    let mut report = RequeueReport {
        truncated: items.len() >= DEAD_LETTER_LIMIT || records.len() >= DEAD_LETTER_LIMIT,
        ..RequeueReport::default()
    };
    let mut records = records_by_blob(records, &tenant_id, &selection.content_id);
    let matched = !records.is_empty();
    let now = context.clock.now();
    let mut matched_items = false;
    for item in items
        .iter()
        .filter(|item| matches(&tenant_id, &selection.content_id, &item.content.key()))
    {
        matched_items = true;
        let key = item.content.key();
        if !context.queue.requeue_dead(&key).await? {
            continue;
        }
        let item_records = records.remove(&key).unwrap_or_default();
        DeadItemRequeued {
            key: &key,
            records: item_records.len(),
        }
        .emit();
        report.expired += usize::from(item.content.content_expiration <= now);
        report.requeued.push(dead_item_row(&tenants, item));
        let content_type = Some(item.content.content_type.clone());
        report
            .records
            .extend(dead_record_rows(&tenants, &key, content_type, item_records));
    }
    for (key, blob_records) in records {
        requeue_blob_records(context, &tenants, &key, blob_records, &mut report).await?;
    }
    if let Some(content_id) = &selection.content_id
        && !matched
        && !matched_items
    {
        return Err(AdminError::NoSuchDeadItem(content_id.clone()));
    }
    if !report.requeued.is_empty() || !report.records.is_empty() {
        context.intake.wake_workers();
    }
    Ok(report)
}

/// Requeues the dead records of one blob that is not a dead item, or counts why not.
async fn requeue_blob_records(
    context: &AdminContext,
    tenants: &Tenants,
    key: &ContentKey,
    records: Vec<DeadRecord>,
    report: &mut RequeueReport,
) -> Result<(), AdminError> {
    let count = records.len() as u64;
    let item = context.queue.get(key).await?;
    if context.queue.requeue_dead(key).await? {
        DeadRecordsRequeued {
            key,
            records: count,
        }
        .emit();
        let content_type = item.map(|item| item.content.content_type);
        report
            .records
            .extend(dead_record_rows(tenants, key, content_type, records));
        return Ok(());
    }
    match item.map(|item| item.state) {
        Some(ItemState::Pending { .. } | ItemState::Leased { .. }) => {
            report.records_in_progress += count;
        }
        // A dead item beyond the listing limit: the next run takes it.
        Some(ItemState::Dead { .. }) => report.truncated = true,
        Some(ItemState::Done { .. }) | None => report.records_expired += count,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("valid time")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_range_older_than_seven_days_is_refused_with_the_earliest_start() {
        let now = at("2026-11-26T12:00:00Z");
        let error = check_backfill_range(at("2026-11-19T11:00:00Z"), now, now)
            .expect_err("older than 7 days");
        let message = error.to_string();
        assert!(message.contains("at most 7 days back"), "{message}");
        assert!(message.contains("2026-11-19T12:10:00Z"), "{message}");
    }

    #[test]
    fn a_range_is_taken_to_whole_seconds_and_ends_at_most_now() {
        let now = at("2026-11-26T12:00:00.250Z");
        let (start, end) = check_backfill_range(
            at("2026-11-26T10:00:00.900Z"),
            at("2026-11-27T00:00:00Z"),
            now,
        )
        .expect("valid range");
        assert_eq!(start, at("2026-11-26T10:00:00Z"));
        assert_eq!(end, at("2026-11-26T12:00:01Z"));
        let (_, end) =
            check_backfill_range(at("2026-11-26T10:00:00Z"), at("2026-11-26T11:00:00Z"), now)
                .expect("valid range");
        assert_eq!(end, at("2026-11-26T11:00:00Z"));
    }

    #[test]
    fn an_empty_or_future_range_is_refused() {
        let now = at("2026-11-26T12:00:00Z");
        let backwards =
            check_backfill_range(at("2026-11-26T11:00:00Z"), at("2026-11-26T10:00:00Z"), now);
        assert!(
            backwards
                .expect_err("refused")
                .to_string()
                .contains("before --to")
        );
        let future =
            check_backfill_range(at("2026-11-26T13:00:00Z"), at("2026-11-26T14:00:00Z"), now);
        assert!(future.expect_err("refused").to_string().contains("future"));
    }
}

//! The polling fallback: lists available content per (tenant, content type) on a schedule
//! and enqueues it, so nothing is missed when the webhook is slow, disabled or
//! unreachable. The poller is the source of truth; the webhook is the low-latency path.
//! Both feed the same queue, and dedupe by contentId makes them safe together.
//!
//! # Cursor (on-disk format)
//!
//! Per (tenant, content type), in the [`MetaStore`]:
//! - `poller/cursor/{tenant id}/{content type}`: RFC 3339 UTF-8 text, the end of a window
//!   whose every page, and every page before it, was durably enqueued. Written only after
//!   the last page of a window was enqueued (the queue's durability contract), so a crash
//!   re-lists, never skips. Written after each window that enqueued something new;
//!   otherwise the running loop keeps the cursor in memory and writes it once it is
//!   [`CURSOR_STORE_INTERVAL`] (a minute) ahead of the stored one, and at shutdown: with
//!   thousands of tenants polled every few seconds, a store commit per empty listing was
//!   most of the poller's cost, and a crash re-lists at most a minute more of what the
//!   overlap re-lists anyway. `/status` reads the stored cursor, so it may show one
//!   minute more lag than there is.
//! - `poller/tail/{tenant id}/{content type}`: RFC 3339, when the last tail re-scan ended.
//!
//! The loop reads both once when it starts and keeps them (see [`TenantPoller::run`]).
//!
//! # One regular poll (spec §7, "suggested polling loop")
//!
//! On the service's time `now` (our [`Clock`] plus any skew found from the service's
//! `Date` header): list `[max(cursor − overlap, now − 7 d + margin), now − lag)` (first
//! run: from `now − initial_lookback`) in windows of at most `max_window`, each drained to
//! its last page, every page enqueued as it arrives, the cursor advanced after each
//! window. A cursor behind the 7-day floor is moved to the floor first, with an ERROR
//! naming the interval that can no longer be listed and `poll_gap_seconds_total`.
//! Every `tail_interval`, the tail re-scan lists `[now − tail_window, regular start)` again
//! for content that became available late (spec §7.2); it never moves the cursor.
//!
//! # Errors, per (tenant, content type)
//!
//! - AF20030/AF20055 (window refused): compare the service's `Date` with our clock; beyond
//!   `clock_skew_secs`, compute windows on the service's time from then on; re-clamp the
//!   window to the floor on the service's time (one extra hour from the 7-day limit when
//!   no skew explains the refusal) and retry once. Only a refusal triggers the check, as
//!   in Elastic's `adjust_clock`: until then our clock is trusted, and the margin and the
//!   overlap absorb skews of minutes.
//! - AF20022/AF20023 (subscription missing or disabled): start it (with the tenant's
//!   webhook, or without one when Microsoft cannot validate it, AF20021), at most once
//!   per 15 minutes, and retry once; a subscription that stays disabled is an ERROR.
//! - AF20031: the window is listed again from its first page ([`window::WindowPages`]).
//! - Throttling, transient errors, a queue that cannot store or is at its hard limit
//!   (`ops.queue_hard_limit`, checked before each page is enqueued): back off with the
//!   [`RetryPolicy`] (honouring `Retry-After`); configuration errors (permission, consent,
//!   audit off): retry every 15 minutes. Either way the problem shows on the
//!   [`ProblemBoard`] until the next success, and no other content type or tenant waits.
//!
//! # Many tenants
//!
//! Each poll of a content type first passes a gate shared by every tenant's poller and
//! subscription manager ([`crate::api::gate`]), so tenants due together (all of them, at
//! start) poll a few at a time over a few pooled connections, and their schedules spread
//! over the time the first round takes.
//!
//! Rules read time from the [`Clock`]; the loop sleeps on tokio timers. Tests drive cycles
//! explicitly with [`TenantPoller::run_once`].

pub mod events;
pub mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::gate::RequestGate;
use crate::api::types::{ContentItem, WebhookRegistration};
use crate::api::{ApiClient, ApiError, ErrorKind};
use crate::clock::Clock;
use crate::config::{ContentType, PollerConfig};
use crate::intake::{Intake, IntakeError, SkipReason};
use crate::ops::events::Telemetry;
use crate::ops::health::ProblemBoard;
use crate::ops::{Metrics, QueueFull};
use crate::queue::{ContentKey, ContentRef, MetaStore, QueueError, Source};
use crate::retry::{Backoff, RetryPolicy};
use window::{ListingPlan, PlanRules, Window, WindowPages, floor, plan, split};

/// Lists every content item of `content_type` created in `[start, end)`, in windows of at
/// most `max_window`, following every `NextPageUri` to the end. The range must lie within
/// what the API serves (at most 7 days back).
pub async fn list_range(
    client: &ApiClient,
    content_type: ContentType,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    max_window: Duration,
) -> Result<Vec<ContentItem>, ApiError> {
    let mut items = Vec::new();
    for listed in split(start, end, max_window) {
        let mut pages = WindowPages::new(client, content_type, listed);
        while let Some(page) = pages.next_page().await? {
            items.extend(page);
        }
    }
    Ok(items)
}

/// The earliest start the API serves at `now`, keeping `margin` from its 7-day limit
/// (for callers that must refuse a range before listing it, like backfill).
pub fn earliest_listable(now: DateTime<Utc>, margin: Duration) -> DateTime<Utc> {
    floor(now, margin)
}

/// Why a poll of one (tenant, content type) failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// The API refused or failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The queue could not store what was listed (the cursor stays where it was).
    #[error("cannot enqueue listed content: {0}")]
    Queue(#[from] QueueError),
    /// The queue is at its hard limit: nothing is enqueued, the cursor stays, the poll is
    /// retried after the backoff.
    #[error("listed content not enqueued: {0}")]
    QueueFull(#[from] QueueFull),
}

impl PollError {
    /// True when the same poll may succeed later without an operator's change.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(error) => error.is_retryable(),
            Self::Queue(error) => error.is_retryable(),
            Self::QueueFull(_) => true,
        }
    }

    fn retry_after(&self) -> Option<StdDuration> {
        match self {
            Self::Api(error) => error.retry_after(),
            Self::Queue(_) | Self::QueueFull(_) => None,
        }
    }

    fn kind(&self) -> Option<ErrorKind> {
        match self {
            Self::Api(error) => error.kind(),
            Self::Queue(_) | Self::QueueFull(_) => None,
        }
    }
}

/// The tenant a poller lists.
#[derive(Clone)]
pub struct PollTarget {
    /// The configured name (logs, metric label, problem board).
    pub name: String,
    /// The tenant's API client (token, budget, origin checks).
    pub client: Arc<ApiClient>,
    /// Content types to list.
    pub content_types: Vec<ContentType>,
    /// The webhook to register when the poller must start a subscription (AF20022/
    /// AF20023); `None` starts it poll-only.
    pub webhook: Option<WebhookRegistration>,
    /// Woken after the poller started a subscription itself, so the subscription manager
    /// lists again and its board (`/status`) shows the subscription as it now is.
    pub subscriptions_changed: Option<Arc<Notify>>,
}

/// What every tenant's poller shares.
#[derive(Clone)]
pub struct PollerDeps {
    /// Where listed content goes: the queue (under its hard limit), outcome counts, the
    /// workers' wake-up.
    pub intake: Intake,
    /// Where cursors live.
    pub meta: Arc<dyn MetaStore>,
    /// Poll metrics.
    pub metrics: Arc<Metrics>,
    /// Current problems per (tenant, content type).
    pub problems: Arc<ProblemBoard>,
    /// The time source of every rule.
    pub clock: Clock,
    /// Backoff of transient failures.
    pub retry: RetryPolicy,
}

/// What one poll of one content type did, for tests and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollReport {
    /// The windows listed (regular poll, then tail re-scan), in order.
    pub windows: Vec<Window>,
    /// Listing requests made (first pages and followed pages).
    pub pages: u64,
    /// Items listed.
    pub listed: u64,
    /// Items new to the queue.
    pub enqueued: u64,
    /// The interval that could no longer be listed, when the cursor was too old.
    pub gap: Option<Window>,
    /// A tail re-scan ran.
    pub tail: bool,
    /// Why the poll failed, if it did.
    pub error: Option<String>,
    /// When it failed: how long until this content type is polled again.
    pub retry_in: Option<StdDuration>,
}

/// Why a listed item of `listed_type` (in a listing of `content_type`) must not be
/// enqueued, if it must not: an item off the tenant's API host, or of another type.
fn skip_reason(on_host: bool, listed_type: &str, content_type: ContentType) -> Option<SkipReason> {
    if !on_host {
        Some(SkipReason::ContentUriOffHost)
    } else if !listed_type.eq_ignore_ascii_case(content_type.as_str()) {
        Some(SkipReason::ContentTypeMismatch)
    } else {
        None
    }
}

/// How long a configuration problem (consent, role, audit off) waits before the next try.
const CONFIGURATION_RETRY: StdDuration = StdDuration::from_secs(900);

/// Extra distance from the 7-day limit when a refused window is re-clamped.
const RECLAMP_EXTRA: Duration = Duration::hours(1);

/// How far the cursor in memory may run ahead of the stored one when the windows listed
/// since enqueued nothing new. A crash re-lists at most this much more (on top of the
/// overlap, an hour by default), all of it duplicates the queue drops.
const CURSOR_STORE_INTERVAL: Duration = Duration::seconds(60);

/// Schedule and failure streak of one content type.
struct TypeState {
    due: Instant,
    backoff: Option<Backoff>,
    /// Its stored times as the loop last read or wrote them; `None` until read.
    times: Option<StoredTimes>,
}

/// The cursor and tail times of one content type, kept between the polls of
/// [`TenantPoller::run`] so that a poll reads nothing from the store: while the loop runs
/// (this replica leads), nothing else writes them. Read again whenever the loop (re)starts
/// and by every [`TenantPoller::run_once`].
#[derive(Clone, Copy, Debug, Default)]
struct StoredTimes {
    /// Where listing goes on from: every window before it was durably enqueued.
    cursor: Option<DateTime<Utc>>,
    /// The cursor as last written to the store (never ahead of `cursor`).
    stored_cursor: Option<DateTime<Utc>>,
    /// When the last tail re-scan ended.
    tail: Option<DateTime<Utc>>,
}

/// The poller of one tenant: one cursor per content type.
pub struct TenantPoller {
    target: PollTarget,
    config: PollerConfig,
    deps: PollerDeps,
    /// Service time minus our clock, once a refused window revealed a skew; else zero.
    skew: Mutex<Duration>,
    types: tokio::sync::Mutex<HashMap<ContentType, TypeState>>,
    /// Shared with every tenant's poller and subscription manager: bounds the polls that
    /// run at once ([`TenantPoller::with_gate`]); `None` polls unbounded.
    gate: Option<Arc<RequestGate>>,
}

fn seconds(value: u64) -> Duration {
    Duration::seconds(i64::try_from(value).unwrap_or(i64::MAX / 1000))
}

impl TenantPoller {
    /// A poller for `target`; nothing runs until [`TenantPoller::run`] or
    /// [`TenantPoller::run_once`].
    pub fn new(target: PollTarget, config: PollerConfig, deps: PollerDeps) -> Self {
        let now = Instant::now();
        let types = target
            .content_types
            .iter()
            .map(|content_type| {
                let state = TypeState {
                    due: now,
                    backoff: None,
                    times: None,
                };
                (*content_type, state)
            })
            .collect();
        Self {
            target,
            config,
            deps,
            skew: Mutex::new(Duration::zero()),
            types: tokio::sync::Mutex::new(types),
            gate: None,
        }
    }

    /// Each poll of a content type by [`TenantPoller::run`] first passes `gate`, shared by
    /// all tenants, so thousands of tenants due together poll a few at a time over a few
    /// connections (see [`crate::api::gate`]).
    pub fn with_gate(mut self, gate: Arc<RequestGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Polls each content type when it is due until `shutdown`: every
    /// `poll_interval_secs` after a success, after the backoff after a failure.
    ///
    /// Cursors are read from the store when the loop starts (another replica may have led
    /// meanwhile), then kept in memory; a cursor is written after every window that
    /// enqueued new content, else at least every [`CURSOR_STORE_INTERVAL`] of progress, and
    /// once more at `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.forget_times().await;
        loop {
            // Boxed: only a tenant polling now holds a poll's state (a few KiB), not every
            // sleeping one.
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = Box::pin(self.poll_due()) => next,
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next) => {}
            }
        }
        self.store_cursors().await;
    }

    /// Drops the times kept in memory: the next poll reads them from the store.
    async fn forget_times(&self) {
        for state in self.types.lock().await.values_mut() {
            state.times = None;
        }
    }

    /// Writes every cursor that ran ahead of its stored value (at shutdown).
    async fn store_cursors(&self) {
        let mut types = self.types.lock().await;
        for (content_type, state) in types.iter_mut() {
            self.store_cursor_behind(*content_type, state).await;
        }
    }

    /// Polls every content type now, due or not; returns what each poll did.
    /// Cursors are read from the store first, and written after every window.
    pub async fn run_once(&self) -> Vec<(ContentType, PollReport)> {
        self.forget_times().await;
        let mut types = self.types.lock().await;
        let mut reports = Vec::new();
        for content_type in self.target.content_types.clone() {
            let report = self.poll_and_schedule(content_type, &mut types).await;
            if let Some(state) = types.get_mut(&content_type) {
                self.store_cursor_behind(content_type, state).await;
            }
            reports.push((content_type, report));
        }
        reports
    }

    /// Polls the content types that are due; returns when the next one is.
    async fn poll_due(&self) -> Instant {
        let mut types = self.types.lock().await;
        for content_type in self.target.content_types.clone() {
            if types
                .get(&content_type)
                .is_some_and(|state| state.due <= Instant::now())
            {
                let _pass = RequestGate::enter_if(self.gate.as_deref()).await;
                self.poll_and_schedule(content_type, &mut types).await;
            }
        }
        let interval = StdDuration::from_secs(self.config.poll_interval_secs.get());
        types
            .values()
            .map(|state| state.due)
            .min()
            .unwrap_or_else(|| Instant::now() + interval)
    }

    async fn poll_and_schedule(
        &self,
        content_type: ContentType,
        types: &mut HashMap<ContentType, TypeState>,
    ) -> PollReport {
        let mut report = PollReport::default();
        let Some(state) = types.get_mut(&content_type) else {
            return report;
        };
        let outcome = self.poll(content_type, &mut state.times, &mut report).await;
        match outcome {
            Ok(()) => {
                events::PollSucceeded {
                    tenant: &self.target.name,
                    content_type: content_type.as_str(),
                    recovered: state.backoff.take().is_some(),
                }
                .emit(&self.telemetry());
                state.due =
                    Instant::now() + StdDuration::from_secs(self.config.poll_interval_secs.get());
            }
            Err(error) => {
                let first_failure = state.backoff.is_none();
                let backoff = state
                    .backoff
                    .get_or_insert_with(|| self.deps.retry.backoff());
                // A missing or disabled subscription is being started (by the subscription
                // manager or by this poller): look again soon, not after the long
                // configuration delay.
                let starting = matches!(
                    error.kind(),
                    Some(ErrorKind::SubscriptionMissing | ErrorKind::SubscriptionDisabled)
                );
                let delay = if error.is_retryable() || starting {
                    backoff
                        .next_delay(error.retry_after())
                        .unwrap_or(self.deps.retry.max_delay)
                } else {
                    CONFIGURATION_RETRY
                };
                state.due = Instant::now() + delay;
                self.report_failure(content_type, &error, first_failure, delay);
                report.error = Some(error.to_string());
                report.retry_in = Some(delay);
            }
        }
        report
    }

    /// Writes the cursor kept in memory when it ran ahead of the stored one (after
    /// [`TenantPoller::run_once`], whose callers read the store, and at shutdown). A failure
    /// only means the next start lists again from the stored one.
    async fn store_cursor_behind(&self, content_type: ContentType, state: &mut TypeState) {
        let Some(times) = &mut state.times else {
            return;
        };
        let Some(cursor) = times
            .cursor
            .filter(|cursor| times.stored_cursor < Some(*cursor))
        else {
            return;
        };
        match self
            .store_time(&cursor_key(self.tenant_id(), content_type), cursor)
            .await
        {
            Ok(()) => times.stored_cursor = Some(cursor),
            Err(error) => {
                tracing::debug!(tenant = %self.target.name, %content_type, %error, "the cursor was not stored; the next start lists again from the stored one");
            }
        }
    }

    /// The cursor and tail times of `content_type`, from the store.
    async fn load_times(&self, content_type: ContentType) -> Result<StoredTimes, PollError> {
        let cursor = self
            .load_time(&cursor_key(self.tenant_id(), content_type))
            .await?;
        let tail = if self.config.tail_window_secs == 0 {
            None
        } else {
            self.load_time(&tail_key(self.tenant_id(), content_type))
                .await?
        };
        Ok(StoredTimes {
            cursor,
            stored_cursor: cursor,
            tail,
        })
    }

    /// One regular poll of `content_type`, then the tail re-scan when it is due. `kept`:
    /// the times kept since the last poll, read from the store when `None`.
    async fn poll(
        &self,
        content_type: ContentType,
        kept: &mut Option<StoredTimes>,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let times = match kept {
            Some(times) => times,
            None => kept.insert(self.load_times(content_type).await?),
        };
        let cursor = times.cursor;
        let now = self.service_now();
        let planned = plan(cursor, now, &self.plan_rules());
        if let Some(gap) = planned.gap {
            self.record_gap(content_type, gap).await?;
            times.cursor = Some(gap.end);
            times.stored_cursor = Some(gap.end);
            report.gap = Some(gap);
        }
        for listed in split(planned.start, planned.end, self.max_window()) {
            let enqueued_before = report.enqueued;
            self.list_window_with_recovery(content_type, listed, report)
                .await?;
            times.cursor = Some(listed.end);
            // Durable up to `listed.end` (every page enqueued). Stored when it enqueued
            // something new, or when the stored cursor fell too far behind.
            let store_due = times
                .stored_cursor
                .is_none_or(|stored| listed.end - stored >= CURSOR_STORE_INTERVAL);
            if report.enqueued > enqueued_before || store_due {
                self.store_time(&cursor_key(self.tenant_id(), content_type), listed.end)
                    .await?;
                times.stored_cursor = Some(listed.end);
            }
        }
        self.set_cursor_age(content_type, planned.end);
        self.tail_rescan(content_type, cursor.is_none(), &planned, times, report)
            .await
    }

    /// Lists `[now − tail_window, regular start)` when the last re-scan is older than
    /// `tail_interval_secs`. A first run (no cursor) only records the time: its listing
    /// already covered the lookback.
    async fn tail_rescan(
        &self,
        content_type: ContentType,
        first_run: bool,
        planned: &ListingPlan,
        times: &mut StoredTimes,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        if self.config.tail_window_secs == 0 {
            return Ok(());
        }
        let key = tail_key(self.tenant_id(), content_type);
        let now = self.service_now();
        if !first_run {
            let last = times.tail;
            let interval = seconds(self.config.tail_interval_secs.get());
            if last.is_some_and(|last| now - last < interval) {
                return Ok(());
            }
            let start =
                (now - seconds(self.config.tail_window_secs)).max(floor(now, self.margin()));
            report.tail = true;
            for listed in split(start, planned.start, self.max_window()) {
                self.list_window_with_recovery(content_type, listed, report)
                    .await?;
            }
        }
        self.store_time(&key, now).await?;
        times.tail = Some(now);
        Ok(())
    }

    /// Lists one window into the queue, recovering once from a refused window or a
    /// missing or disabled subscription. Done when every page of what the service still
    /// serves of the window is enqueued.
    async fn list_window_with_recovery(
        &self,
        content_type: ContentType,
        mut listed: Window,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let mut recovered = false;
        loop {
            let error = match self.list_window(content_type, listed, report).await {
                Ok(()) => return Ok(()),
                Err(error) if recovered => return Err(error),
                Err(error) => error,
            };
            recovered = true;
            match error.kind() {
                Some(ErrorKind::InvalidWindow) => {
                    let skewed = self.detect_skew(content_type, listed, &error);
                    match self.reclamp(content_type, listed, skewed) {
                        Some(reclamped) => listed = reclamped,
                        None => return Ok(()),
                    }
                }
                Some(ErrorKind::SubscriptionMissing | ErrorKind::SubscriptionDisabled) => {
                    if !self.start_subscription(content_type).await {
                        return Err(error);
                    }
                }
                _ => return Err(error),
            }
        }
    }

    /// Drains one window, enqueuing each page as it arrives.
    async fn list_window(
        &self,
        content_type: ContentType,
        listed: Window,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        report.windows.push(listed);
        let mut pages = WindowPages::new(&self.target.client, content_type, listed);
        let result = async {
            while let Some(items) = pages.next_page().await? {
                let (listed_count, enqueued) = self.enqueue(content_type, items).await?;
                report.listed += listed_count;
                report.enqueued += enqueued;
            }
            Ok(())
        }
        .await;
        report.pages += pages.requests();
        result
    }

    /// Enqueues one page (durable when it returns); returns (listed, new).
    async fn enqueue(
        &self,
        content_type: ContentType,
        items: Vec<ContentItem>,
    ) -> Result<(u64, u64), PollError> {
        let listed = items.len() as u64;
        let metrics = &self.deps.metrics;
        metrics
            .poll_listed
            .get_or_create(&metrics.content(&self.target.name, content_type.as_str()))
            .inc_by(listed);
        let refs: Vec<ContentRef> = items
            .into_iter()
            .filter_map(|item| self.content_ref(content_type, item))
            .collect();
        let admitted = self
            .deps
            .intake
            .enqueue(Source::Poll, refs)
            .await
            .map_err(|error| match error {
                IntakeError::Full(full) => PollError::QueueFull(full),
                IntakeError::Queue(error) => PollError::Queue(error),
            })?;
        let enqueued = admitted.enqueued;
        Ok((listed, enqueued))
    }

    /// The queue reference of a listed item; `None` for an item whose contentUri is not
    /// in the tenant's feed on its API host (`ApiClient::check_content_uri`), or of
    /// another type: counted once and warned about at a bounded rate
    /// ([`Intake::skip_listed`]).
    fn content_ref(&self, content_type: ContentType, item: ContentItem) -> Option<ContentRef> {
        let tenant_id = self.tenant_id();
        let on_host = self
            .target
            .client
            .check_content_uri(&item.content_uri)
            .is_ok();
        if let Some(reason) = skip_reason(on_host, &item.content_type, content_type) {
            let key = ContentKey::new(tenant_id, item.content_id);
            self.deps
                .intake
                .skip_listed(&self.target.name, content_type.as_str(), &key, reason);
            return None;
        }
        Some(ContentRef {
            tenant_id: tenant_id.to_string(),
            content_type: content_type.as_str().to_string(),
            content_id: item.content_id,
            content_uri: item.content_uri,
            content_created: item.content_created,
            content_expiration: item.content_expiration,
            source: Source::Poll,
        })
    }

    /// After a refused window: the service's `Date` against our clock. Beyond
    /// `clock_skew_secs`, windows are computed on the service's time from now on. Returns
    /// true when a skew was found.
    fn detect_skew(&self, content_type: ContentType, listed: Window, error: &PollError) -> bool {
        let Some(server_now) = self.target.client.last_server_date() else {
            return false;
        };
        let difference = server_now - self.deps.clock.now();
        let threshold = seconds(self.config.clock_skew_secs);
        let mut skew = self
            .skew
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if difference.abs() > threshold {
            tracing::warn!(
                tenant = %self.target.name, %content_type, %listed, %error,
                skew_secs = difference.num_seconds(),
                "the service refused a listing window and its clock differs from ours: listing windows are computed on the service's time from now on; fix this host's time synchronisation (NTP)"
            );
            *skew = difference;
            true
        } else {
            tracing::warn!(
                tenant = %self.target.name, %content_type, %listed, %error,
                "the service refused a listing window; re-clamping it further from the 7-day limit"
            );
            *skew = Duration::zero();
            false
        }
    }

    /// The window clamped to the 7-day floor on the service's time, one more hour away
    /// from the limit unless a clock skew explained the refusal; `None` when nothing of it
    /// is left.
    fn reclamp(&self, content_type: ContentType, listed: Window, skewed: bool) -> Option<Window> {
        let margin = if skewed {
            self.margin()
        } else {
            self.margin() + RECLAMP_EXTRA
        };
        let earliest = floor(self.service_now(), margin);
        let start = listed.start.max(earliest);
        if start > listed.start {
            tracing::error!(
                tenant = %self.target.name, %content_type,
                skipped = %Window { start: listed.start, end: start.min(listed.end) },
                "content created in this interval can no longer be listed: the service refuses starts this old"
            );
        }
        (start < listed.end).then_some(Window {
            start,
            end: listed.end,
        })
    }

    /// Starts the subscription of `content_type` after AF20022/AF20023: with the webhook,
    /// or poll-only when Microsoft cannot validate it. At most once per 15 minutes per
    /// (tenant, content type), counted in the store together with the subscription
    /// manager's starts ([`crate::subscriptions::claim_start`]). Returns true when it was
    /// started.
    async fn start_subscription(&self, content_type: ContentType) -> bool {
        let now = self.deps.clock.now();
        let webhook_wanted = self.target.webhook.is_some();
        match crate::subscriptions::claim_start(
            self.deps.meta.as_ref(),
            self.tenant_id(),
            content_type.as_str(),
            webhook_wanted,
            now,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(error) => {
                tracing::warn!(tenant = %self.target.name, %content_type, %error, "cannot record the subscription start; not starting now");
                return false;
            }
        }
        let client = &self.target.client;
        let webhook = self.target.webhook.as_ref();
        let started = match client
            .start_subscription(content_type.as_str(), webhook)
            .await
        {
            Err(error)
                if webhook.is_some() && error.kind() == Some(ErrorKind::WebhookNotValidated) =>
            {
                tracing::warn!(tenant = %self.target.name, %content_type, %error, "webhook not validated; starting the subscription without it so polling collects");
                client.start_subscription(content_type.as_str(), None).await
            }
            other => other,
        };
        match started {
            Ok(_) => {
                tracing::info!(tenant = %self.target.name, %content_type, "the listing found no enabled subscription (AF20022/AF20023); started it");
                if let Some(changed) = &self.target.subscriptions_changed {
                    changed.notify_one();
                }
                true
            }
            Err(error) if error.is_retryable() => {
                // The start did not take: it must not hold the 15-minute spacing.
                tracing::warn!(tenant = %self.target.name, %content_type, %error, "the listing found no enabled subscription and starting it failed; retrying at the next cycle");
                if let Err(store_error) = crate::subscriptions::release_start(
                    self.deps.meta.as_ref(),
                    self.tenant_id(),
                    content_type.as_str(),
                    now,
                )
                .await
                {
                    tracing::warn!(tenant = %self.target.name, %content_type, error = %store_error, "cannot take back the failed subscription start; the next start waits for the spacing");
                }
                if let Some(changed) = &self.target.subscriptions_changed {
                    changed.notify_one();
                }
                false
            }
            Err(error) => {
                tracing::error!(tenant = %self.target.name, %content_type, %error, "the subscription is missing or disabled and cannot be started; nothing of this content type is collected");
                false
            }
        }
    }

    async fn record_gap(&self, content_type: ContentType, gap: Window) -> Result<(), PollError> {
        // The cursor moves to the floor first, so the gap is counted once.
        self.store_time(&cursor_key(self.tenant_id(), content_type), gap.end)
            .await?;
        let metrics = &self.deps.metrics;
        let gap_seconds = (gap.end - gap.start).num_seconds().max(0) as u64;
        metrics
            .poll_gap_seconds
            .get_or_create(&metrics.content(&self.target.name, content_type.as_str()))
            .inc_by(gap_seconds);
        tracing::error!(
            tenant = %self.target.name, %content_type, interval = %gap, gap_seconds,
            "content created in this interval can no longer be listed: the API lists 7 days back at most; the poller was stopped or failing for too long"
        );
        Ok(())
    }

    fn report_failure(
        &self,
        content_type: ContentType,
        error: &PollError,
        first_failure: bool,
        retry_in: StdDuration,
    ) {
        // A missing or disabled subscription is being started (by the subscription manager
        // or by this poller): a warning; configuration problems need the operator.
        let starting = matches!(
            error.kind(),
            Some(ErrorKind::SubscriptionMissing | ErrorKind::SubscriptionDisabled)
        );
        events::PollFailed {
            tenant: &self.target.name,
            content_type: content_type.as_str(),
            error,
            kind: error.kind(),
            first_failure,
            needs_operator: !error.is_retryable() && !starting,
            retry_in,
        }
        .emit(&self.telemetry());
    }

    /// Where this poller's events land, now (its failures reach the console through the
    /// board).
    fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            metrics: &self.deps.metrics,
            problems: &self.deps.problems,
            console: None,
            now: self.deps.clock.now(),
        }
    }

    fn set_cursor_age(&self, content_type: ContentType, cursor: DateTime<Utc>) {
        let metrics = &self.deps.metrics;
        let age = (self.service_now() - cursor).num_seconds().max(0);
        metrics
            .poll_cursor_age_seconds
            .get_or_create(&metrics.content(&self.target.name, content_type.as_str()))
            .set(age);
    }

    async fn load_time(&self, key: &str) -> Result<Option<DateTime<Utc>>, PollError> {
        let Some(bytes) = self.deps.meta.get_meta(key).await? else {
            return Ok(None);
        };
        let parsed = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            .map(|time| time.with_timezone(&Utc));
        if parsed.is_none() {
            tracing::warn!(
                key,
                "stored poller time is not RFC 3339; starting as if none was stored"
            );
        }
        Ok(parsed)
    }

    async fn store_time(&self, key: &str, time: DateTime<Utc>) -> Result<(), PollError> {
        self.deps
            .meta
            .put_meta(key, time.to_rfc3339().into_bytes())
            .await?;
        Ok(())
    }

    /// Our clock plus the skew found from the service's `Date`, if any.
    fn service_now(&self) -> DateTime<Utc> {
        let skew = *self
            .skew
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.deps.clock.now() + skew
    }

    fn tenant_id(&self) -> &str {
        self.target.client.tenant_id()
    }

    fn margin(&self) -> Duration {
        seconds(self.config.retention_margin_secs)
    }

    fn max_window(&self) -> Duration {
        seconds(self.config.max_window_secs.get())
    }

    fn plan_rules(&self) -> PlanRules {
        PlanRules {
            overlap: seconds(self.config.overlap_secs),
            margin: self.margin(),
            lag: seconds(self.config.lag_secs),
            initial_lookback: seconds(self.config.initial_lookback_secs),
        }
    }
}

/// `poller/cursor/{tenant id}/{content type}`.
pub fn cursor_key(tenant_id: &str, content_type: ContentType) -> String {
    format!("poller/cursor/{tenant_id}/{}", content_type.as_str())
}

/// `poller/tail/{tenant id}/{content type}`.
pub fn tail_key(tenant_id: &str, content_type: ContentType) -> String {
    format!("poller/tail/{tenant_id}/{}", content_type.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_item_of_another_type_is_skipped_as_a_mismatch() {
        let listed = ContentType::AuditExchange;
        assert_eq!(
            skip_reason(true, "Audit.SharePoint", listed),
            Some(SkipReason::ContentTypeMismatch)
        );
        assert_eq!(
            skip_reason(false, "Audit.Exchange", listed),
            Some(SkipReason::ContentUriOffHost)
        );
        assert_eq!(skip_reason(true, "audit.exchange", listed), None);
    }
}

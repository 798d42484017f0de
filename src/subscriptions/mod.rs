//! Subscriptions: keeps every configured (tenant, content type) started with the tenant's
//! webhook, for as long as the service runs.
//!
//! One [`SubscriptionManager`] per tenant checks `/subscriptions/list` on an interval
//! (`subscriptions.check_interval_secs`, default 15 minutes; sooner when a grace period,
//! the spacing or a deferred retry ends) and calls `/start` only where [`decide`] says so.
//! The first check runs at start; the regular checks of each tenant then fall at a phase
//! of the interval fixed by its tenant id ([`check_phase`]), so thousands of tenants
//! started together check spread over the interval, not all at once; every check passes
//! the gate shared with the pollers ([`crate::api::gate`]).
//! Guarantees (spec §2.1–2.3, §3, §7.8–7.10):
//!
//! - `/start` only for a subscription that is missing or disabled, or whose webhook is
//!   missing, disabled, expired, or registered with another address or authId (the
//!   public URL changed, or the server secret rotated so the wanted authId changed).
//! - Never two `/start` calls of one (tenant, content type) within 15 minutes, across
//!   restarts: the time of each call is stored *before* the call ([`record`]). The one
//!   exception is below (AF20021 on a subscription that is not enabled).
//! - AF20024 (already enabled, no property change) is success.
//! - Each content type is decided, started and reported on its own: one content type's
//!   answer (AF10001 on DLP.All without `ActivityFeed.ReadDlp`, say) never affects another's.
//! - `webhook: null` right after a start with a webhook is *pending validation* for
//!   `subscriptions.webhook_pending_secs`, not missing.
//! - AF20021 (Microsoft could not validate the webhook): a subscription that is not
//!   enabled (new, or disabled) is started at once without a webhook, exempt from the
//!   spacing, so content is collected by polling; an enabled one is left as it was
//!   (Microsoft keeps it so). Either way the webhook is *deferred*: retried every
//!   `subscriptions.deferred_webhook_retry_secs` (default hourly), logged with the address
//!   Microsoft could not reach and the usual causes, counted in
//!   `o365_connector_webhooks_deferred` and shown on the problem board.
//! - A subscription of a content type no longer configured is stopped only with
//!   `subscriptions.stop_removed` (a stop loses the content of the gap).
//!
//! The state of every subscription is on the [`SubscriptionBoard`] (for `/status`); what
//! needs an operator is on the [`ProblemBoard`], set and cleared, with the log lines and
//! metrics, only through the typed events of [`events`]. Time comes from the [`Clock`]: tests call
//! [`SubscriptionManager::check_once`] after moving a manual clock.

pub mod board;
pub mod decide;
pub mod events;
pub mod record;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use board::{SubscriptionBoard, SubscriptionEntry, SubscriptionState, WebhookState};
pub use decide::{Action, Assessment, DecisionSettings, START_SPACING, assess};
pub use record::{StartRecord, claim_start, release_start};

use crate::api::gate::RequestGate;
use crate::api::types::{SubscriptionStatus, WebhookRegistration};
use crate::api::{ApiError, ErrorKind, StartOutcome};
use crate::clock::Clock;
use crate::config::{ContentType, SubscriptionsConfig};
use crate::ops::Metrics;
use crate::ops::events::Telemetry;
use crate::ops::health::ProblemBoard;
use crate::queue::{MetaStore, QueueError};
use crate::retry::RetryPolicy;
use crate::tenant::Tenant;
use events::Subscription;

/// Wait before retrying a start Microsoft answered with a transient error (5xx, throttling
/// without `Retry-After`, transport).
const TRANSIENT_START_RETRY: Duration = Duration::from_secs(5);

/// The manager's settings, from `[subscriptions]`.
#[derive(Clone, Copy, Debug)]
pub struct SubscriptionSettings {
    /// How often `/subscriptions/list` is checked.
    pub check_interval: Duration,
    /// Grace period and deferred retry.
    pub decision: DecisionSettings,
    /// Stop the subscriptions of content types no longer configured.
    pub stop_removed: bool,
}

impl SubscriptionSettings {
    /// The settings of a `[subscriptions]` section. Durations beyond a year are taken as
    /// a year, so time arithmetic cannot overflow.
    pub fn from_config(config: &SubscriptionsConfig) -> Self {
        const YEAR_SECS: u64 = 365 * 24 * 3600;
        let seconds = |secs: u64| {
            chrono::Duration::seconds(i64::try_from(secs.min(YEAR_SECS)).unwrap_or_default())
        };
        Self {
            check_interval: Duration::from_secs(config.check_interval_secs.get().min(YEAR_SECS)),
            decision: DecisionSettings {
                pending_grace: seconds(config.webhook_pending_secs),
                deferred_retry: seconds(config.deferred_webhook_retry_secs.get()),
            },
            stop_removed: config.stop_removed,
        }
    }
}

impl Default for SubscriptionSettings {
    fn default() -> Self {
        Self::from_config(&SubscriptionsConfig::default())
    }
}

/// What every tenant's manager shares.
#[derive(Clone)]
pub struct SubscriptionContext {
    /// Where start times and deferred webhooks are remembered.
    pub meta: Arc<dyn MetaStore>,
    /// The state of every subscription, for `/status`.
    pub board: Arc<SubscriptionBoard>,
    /// Current problems, for `/readyz` and `/status`.
    pub problems: Arc<ProblemBoard>,
    /// Start, stop and deferred-webhook metrics.
    pub metrics: Arc<Metrics>,
    /// The time source of every rule.
    pub clock: Clock,
    /// Intervals and options.
    pub settings: SubscriptionSettings,
}

/// The outcome of one check of a tenant.
#[derive(Clone, Debug)]
pub struct CheckReport {
    /// The state of each configured content type after the check.
    pub entries: Vec<SubscriptionEntry>,
    /// When the next check is due (by the clock).
    pub next_check: DateTime<Utc>,
}

/// Keeps one tenant's subscriptions started with its webhook (see the module doc).
pub struct SubscriptionManager {
    tenant: Arc<Tenant>,
    webhook: Option<WebhookRegistration>,
    context: SubscriptionContext,
    wake: Arc<Notify>,
    /// Content types reported as "still subscribed, no longer configured" (logged once).
    reported_removed: Mutex<HashSet<String>>,
    /// Shared with every tenant's poller and manager: bounds the checks that run at once.
    gate: Option<Arc<RequestGate>>,
}

impl SubscriptionManager {
    /// A manager for `tenant`, registering `webhook` (`None`: poll only).
    pub fn new(
        tenant: Arc<Tenant>,
        webhook: Option<WebhookRegistration>,
        context: SubscriptionContext,
    ) -> Self {
        Self {
            tenant,
            webhook,
            context,
            wake: Arc::new(Notify::new()),
            reported_removed: Mutex::new(HashSet::new()),
            gate: None,
        }
    }

    /// Each check by [`SubscriptionManager::run`] first passes `gate`, shared by all
    /// tenants (see [`crate::api::gate`]).
    pub fn with_gate(mut self, gate: Arc<RequestGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Asks the running loop for a check now (the poller calls it on AF20022/AF20023).
    /// The spacing rule still applies.
    pub fn check_soon(&self) {
        self.wake.notify_one();
    }

    /// What [`Self::check_soon`] notifies, for a component that runs beside the manager
    /// (the poller, after it started a subscription itself).
    pub fn check_soon_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Checks until `shutdown`: at once, then when [`CheckReport::next_check`] is due; a
    /// failed `/subscriptions/list` is retried with `retry`'s backoff when transient, at the
    /// regular interval otherwise.
    ///
    /// Spread: the first regular wait is `check_interval × (0.5 + phase)`, `phase` in
    /// `[0, 1)` fixed by the tenant id ([`check_phase`]), and each later one the interval;
    /// so the checks of many tenants started together spread over the interval instead
    /// of firing together every interval, and no wait is longer than 1.5 intervals.
    pub async fn run(self: Arc<Self>, retry: RetryPolicy, shutdown: CancellationToken) {
        let mut backoff = retry.backoff();
        let interval = self.context.settings.check_interval;
        let mut spread = true;
        loop {
            let checked = {
                let _pass = RequestGate::enter_if(self.gate.as_deref()).await;
                // Boxed: only a tenant checking now holds a check's state, not every
                // sleeping one.
                Box::pin(self.check_once()).await
            };
            let delay = match checked {
                Ok(report) => {
                    backoff = retry.backoff();
                    let delay = self.delay_until(report.next_check);
                    if spread && delay >= interval {
                        spread = false;
                        interval.mul_f64(0.5 + check_phase(&self.tenant.tenant_id))
                    } else {
                        delay
                    }
                }
                Err(error) if error.is_retryable() => backoff
                    .next_delay(error.retry_after())
                    .unwrap_or(retry.max_delay),
                Err(_) => interval,
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Real time to wait until `at` by the clock, between one second and the interval.
    fn delay_until(&self, at: DateTime<Utc>) -> Duration {
        let interval = self.context.settings.check_interval;
        (at - self.context.clock.now())
            .to_std()
            .unwrap_or_default()
            .clamp(Duration::from_secs(1), interval.max(Duration::from_secs(1)))
    }

    /// One check: lists the tenant's subscriptions, then decides, starts and reports each
    /// configured content type on its own, and handles those no longer configured. Fails
    /// only when `/subscriptions/list` fails (shown as a tenant-wide problem).
    pub async fn check_once(&self) -> Result<CheckReport, ApiError> {
        let now = self.context.clock.now();
        let listed = match self.tenant.client.list_subscriptions().await {
            Ok(listed) => {
                events::SubscriptionsListed {
                    tenant: &self.tenant.name,
                }
                .emit(&self.telemetry());
                listed
            }
            Err(error) => {
                events::SubscriptionsUnlisted {
                    tenant: &self.tenant.name,
                    error: &error,
                }
                .emit(&self.telemetry());
                return Err(error);
            }
        };
        let mut next_check = now
            + chrono::Duration::from_std(self.context.settings.check_interval)
                .unwrap_or(chrono::Duration::minutes(15));
        let mut entries = Vec::with_capacity(self.tenant.content_types.len());
        for content_type in &self.tenant.content_types {
            let current = find(&listed, content_type.as_str());
            let (entry, recheck_at) = self.check_content_type(*content_type, current, now).await;
            if let Some(recheck_at) = recheck_at {
                next_check = next_check.min(recheck_at);
            }
            self.context.board.set(entry.clone());
            entries.push(entry);
        }
        self.handle_removed(&listed).await;
        events::DeferredWebhooksCounted {
            deferred: self.context.board.deferred_webhooks(),
        }
        .emit(&self.telemetry());
        Ok(CheckReport {
            entries,
            next_check,
        })
    }

    /// Decides and acts for one content type; returns its state and when to look again.
    async fn check_content_type(
        &self,
        content_type: ContentType,
        current: Option<&SubscriptionStatus>,
        now: DateTime<Utc>,
    ) -> (SubscriptionEntry, Option<DateTime<Utc>>) {
        let tenant_id = &self.tenant.tenant_id;
        let meta = self.context.meta.as_ref();
        let mut record = match record::load_record(meta, tenant_id, content_type.as_str()).await {
            Ok(record) => record,
            Err(error) => return (self.record_unreadable(content_type, &error, now), None),
        };
        let assessment = assess(
            current,
            self.webhook.as_ref(),
            &record,
            now,
            self.context.settings.decision,
        );
        if assessment.webhook == WebhookState::Enabled && record.webhook_deferred_since.is_some() {
            events::DeferredWebhookRegistered {
                subscription: self.subscription(content_type),
            }
            .emit(&self.telemetry());
            record.webhook_deferred_since = None;
            self.save_record(content_type, &record).await;
        }
        let entry = self.entry(
            content_type,
            assessment.subscription,
            assessment.webhook,
            record.last_start,
            now,
        );
        match assessment.action {
            Action::Keep => {
                self.report_kept(content_type, &entry);
                (entry, assessment.recheck_at)
            }
            Action::WaitForSpacing { until } => {
                events::StartWaitingForSpacing {
                    subscription: self.subscription(content_type),
                    state: entry.subscription,
                    webhook: entry.webhook,
                    until,
                }
                .emit(&self.telemetry());
                (entry, assessment.recheck_at)
            }
            Action::Start => self.start(content_type, entry, record, now).await,
        }
    }

    /// Nothing to do: clears this module's problem, or shows the deferred webhook.
    fn report_kept(&self, content_type: ContentType, entry: &SubscriptionEntry) {
        if entry.webhook == WebhookState::Deferred {
            self.show_deferred(content_type);
        } else {
            events::SubscriptionAsWanted {
                subscription: self.subscription(content_type),
            }
            .emit(&self.telemetry());
        }
    }

    /// Calls `/start` (after storing the attempt) and records what came of it; returns the
    /// entry and, after a transient failure, when to try again.
    async fn start(
        &self,
        content_type: ContentType,
        mut entry: SubscriptionEntry,
        mut record: StartRecord,
        now: DateTime<Utc>,
    ) -> (SubscriptionEntry, Option<DateTime<Utc>>) {
        let tenant_id = &self.tenant.tenant_id;
        let meta = self.context.meta.as_ref();
        let before = record.clone();
        record.last_start = Some(now);
        record.last_start_with_webhook = self.webhook.is_some();
        if self.webhook.is_some() {
            record.last_webhook_attempt = Some(now);
        }
        entry.last_start = Some(now);
        if let Err(error) =
            record::save_record(meta, tenant_id, content_type.as_str(), &record).await
        {
            // Without the record the spacing cannot be kept across restarts: do not start.
            let message = format!("cannot record the start in the store: {error}");
            events::StartRecordUnavailable {
                subscription: self.subscription(content_type),
                message: &message,
            }
            .emit(&self.telemetry());
            entry.last_error = Some(message);
            return (entry, None);
        }
        let result = self
            .tenant
            .client
            .start_subscription(content_type.as_str(), self.webhook.as_ref())
            .await;
        match result {
            Ok(outcome) => (
                self.started(content_type, entry, record, &outcome).await,
                None,
            ),
            Err(error) if error.kind() == Some(ErrorKind::WebhookNotValidated) => (
                self.webhook_not_validated(content_type, entry, record, now)
                    .await,
                None,
            ),
            Err(error) if error.is_retryable() => {
                // Microsoft asked us to retry (5xx, throttling, transport): the start did not
                // take, so it does not count against the spacing; try again shortly.
                events::StartRetrying {
                    subscription: self.subscription(content_type),
                    error: &error,
                }
                .emit(&self.telemetry());
                self.save_record(content_type, &before).await;
                entry.last_start = before.last_start;
                entry.last_error = Some(error.to_string());
                let retry_in = error.retry_after().unwrap_or(TRANSIENT_START_RETRY);
                let retry_at = now
                    + chrono::Duration::from_std(retry_in).unwrap_or(chrono::Duration::seconds(30));
                (entry, Some(retry_at))
            }
            Err(error) => {
                events::StartFailed {
                    subscription: self.subscription(content_type),
                    error: &error,
                    webhook_deferred: false,
                }
                .emit(&self.telemetry());
                entry.last_error = Some(error.to_string());
                (entry, None)
            }
        }
    }

    /// A start succeeded (or AF20024): the webhook validated, so nothing is deferred.
    async fn started(
        &self,
        content_type: ContentType,
        mut entry: SubscriptionEntry,
        mut record: StartRecord,
        outcome: &StartOutcome,
    ) -> SubscriptionEntry {
        let shown = match outcome {
            StartOutcome::Started(view) => view.webhook.as_ref(),
            StartOutcome::AlreadyEnabled => None,
        };
        events::SubscriptionStarted {
            subscription: self.subscription(content_type),
            with_webhook: self.webhook.is_some(),
            outcome,
        }
        .emit(&self.telemetry());
        entry.subscription = SubscriptionState::Enabled;
        entry.webhook = match (&self.webhook, outcome, shown) {
            (None, _, _) => WebhookState::None,
            (Some(_), StartOutcome::AlreadyEnabled, _) => WebhookState::Enabled,
            (Some(_), _, Some(_)) => WebhookState::Enabled,
            (Some(_), _, None) => WebhookState::Pending,
        };
        entry.last_error = None;
        if record.webhook_deferred_since.take().is_some() {
            self.save_record(content_type, &record).await;
        }
        entry
    }

    /// AF20021: defer the webhook; a subscription that is not enabled is started without
    /// it at once (exempt from the spacing) so content is collected by polling.
    async fn webhook_not_validated(
        &self,
        content_type: ContentType,
        mut entry: SubscriptionEntry,
        mut record: StartRecord,
        now: DateTime<Utc>,
    ) -> SubscriptionEntry {
        let address = self.webhook_address();
        events::WebhookNotValidated {
            subscription: self.subscription(content_type),
            address,
        }
        .emit(&self.telemetry());
        record.webhook_deferred_since.get_or_insert(now);
        entry.webhook = WebhookState::Deferred;
        entry.last_error = Some(format!(
            "Microsoft could not validate the webhook {address} (AF20021)"
        ));
        if entry.subscription != SubscriptionState::Enabled {
            match self
                .tenant
                .client
                .start_subscription(content_type.as_str(), None)
                .await
            {
                Ok(_) => {
                    events::PollOnlyStarted {
                        subscription: self.subscription(content_type),
                    }
                    .emit(&self.telemetry());
                    record.last_start_with_webhook = false;
                    entry.subscription = SubscriptionState::Enabled;
                }
                Err(error) => {
                    events::StartFailed {
                        subscription: self.subscription(content_type),
                        error: &error,
                        webhook_deferred: true,
                    }
                    .emit(&self.telemetry());
                    entry.last_error = Some(error.to_string());
                }
            }
        }
        self.save_record(content_type, &record).await;
        self.show_deferred(content_type);
        entry
    }

    /// Subscriptions of content types no longer configured: stopped with `stop_removed`,
    /// otherwise reported once.
    async fn handle_removed(&self, listed: &[SubscriptionStatus]) {
        for status in listed {
            let Ok(content_type) = status.content_type.parse::<ContentType>() else {
                continue;
            };
            let enabled = !status
                .status
                .as_deref()
                .is_some_and(|status| status.eq_ignore_ascii_case("disabled"));
            if !enabled || self.tenant.content_types.contains(&content_type) {
                continue;
            }
            if !self.context.settings.stop_removed {
                let first = self
                    .reported_removed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(content_type.as_str().to_string());
                if first {
                    events::RemovedSubscriptionKept {
                        subscription: self.subscription(content_type),
                    }
                    .emit(&self.telemetry());
                }
                continue;
            }
            match self
                .tenant
                .client
                .stop_subscription(content_type.as_str())
                .await
            {
                Ok(()) => {
                    events::RemovedSubscriptionStopped {
                        subscription: self.subscription(content_type),
                    }
                    .emit(&self.telemetry());
                    self.context
                        .board
                        .remove(&self.tenant.name, content_type.as_str());
                }
                Err(error) => events::RemovedStopFailed {
                    subscription: self.subscription(content_type),
                    error: &error,
                }
                .emit(&self.telemetry()),
            }
        }
    }

    /// The record could not be read: nothing is started (the spacing could not be kept).
    fn record_unreadable(
        &self,
        content_type: ContentType,
        error: &QueueError,
        now: DateTime<Utc>,
    ) -> SubscriptionEntry {
        let message = format!("cannot read the subscription record: {error}");
        events::StartRecordUnavailable {
            subscription: self.subscription(content_type),
            message: &message,
        }
        .emit(&self.telemetry());
        let mut entry = self.entry(
            content_type,
            SubscriptionState::Unknown,
            WebhookState::None,
            None,
            now,
        );
        entry.last_error = Some(message);
        entry
    }

    /// Stores an updated record; a failure is logged (the next check tries again).
    async fn save_record(&self, content_type: ContentType, record: &StartRecord) {
        let meta = self.context.meta.as_ref();
        let saved =
            record::save_record(meta, &self.tenant.tenant_id, content_type.as_str(), record).await;
        if let Err(error) = saved {
            events::RecordNotUpdated {
                subscription: self.subscription(content_type),
                error: &error,
            }
            .emit(&self.telemetry());
        }
    }

    fn entry(
        &self,
        content_type: ContentType,
        subscription: SubscriptionState,
        webhook: WebhookState,
        last_start: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> SubscriptionEntry {
        SubscriptionEntry {
            tenant: self.tenant.name.clone(),
            tenant_id: self.tenant.tenant_id.clone(),
            content_type: content_type.as_str().to_string(),
            subscription,
            webhook,
            last_start,
            last_check: Some(now),
            last_error: None,
        }
    }

    /// Where this manager's events land, now (its problems reach the console through the
    /// board).
    fn telemetry(&self) -> Telemetry<'_> {
        Telemetry {
            metrics: &self.context.metrics,
            problems: &self.context.problems,
            console: None,
            now: self.context.clock.now(),
        }
    }

    fn subscription(&self, content_type: ContentType) -> Subscription<'_> {
        Subscription {
            tenant: &self.tenant.name,
            content_type,
        }
    }

    /// The webhook address registered (empty when polling only).
    fn webhook_address(&self) -> &str {
        self.webhook
            .as_ref()
            .map_or("", |webhook| webhook.address.as_str())
    }

    fn show_deferred(&self, content_type: ContentType) {
        events::WebhookDeferred {
            subscription: self.subscription(content_type),
            address: self.webhook_address(),
        }
        .emit(&self.telemetry());
    }
}

/// The `/subscriptions/list` entry of a content type.
fn find<'a>(
    listed: &'a [SubscriptionStatus],
    content_type: &str,
) -> Option<&'a SubscriptionStatus> {
    listed
        .iter()
        .find(|status| status.content_type.eq_ignore_ascii_case(content_type))
}

/// Where in the check interval a tenant's regular checks fall, in `[0, 1)`: a fixed
/// function of its id (FNV-1a, then splitmix64's finalizer so ids that differ in one digit
/// land far apart), the same at every start and spread evenly over many tenants.
pub fn check_phase(tenant_id: &str) -> f64 {
    let mut hash = tenant_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_phases_of_sequential_tenant_ids_spread_evenly_over_the_interval() {
        let mut tenths = [0usize; 10];
        for n in 0..10_000 {
            let phase = check_phase(&format!("00000000-0000-4000-8000-{n:012}"));
            assert!((0.0..1.0).contains(&phase));
            tenths[(phase * 10.0) as usize] += 1;
        }
        for (tenth, count) in tenths.iter().enumerate() {
            assert!(
                (850..=1150).contains(count),
                "tenth {tenth} of the interval holds {count} of 10,000 tenants' checks"
            );
        }
        assert_eq!(
            check_phase("contoso"),
            check_phase("contoso"),
            "fixed per id"
        );
    }
}

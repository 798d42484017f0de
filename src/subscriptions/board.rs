//! The subscription board: the last known state of every (tenant, content type)
//! subscription, kept in memory by the managers and read by `/status`.
//!
//! The board is a view, not a source of truth: `/subscriptions/list` is (read at every
//! check), and the start times that the spacing rule needs are in the store (see
//! [`super::record`]). A restart begins with an empty board that the first check fills.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A subscription's status as `/subscriptions/list` last showed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionState {
    /// Not checked yet (or `/subscriptions/list` failed since the start).
    Unknown,
    /// Enabled: content can be listed and fetched.
    Enabled,
    /// Disabled (stopped): nothing can be listed.
    Disabled,
    /// Not in `/subscriptions/list`: never started.
    Missing,
}

/// A subscription's webhook, as the manager understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// Registered with our address and authId, and enabled.
    Enabled,
    /// Disabled by Microsoft (delivery failures): re-enabled by the next start.
    Disabled,
    /// Past its expiration: renewed by the next start.
    Expired,
    /// Registered with another address or authId (public URL changed, secret rotated).
    Outdated,
    /// `webhook: null` within the grace period after a start with a webhook: Microsoft
    /// shows it so until validation settles.
    Pending,
    /// Microsoft could not validate it (AF20021): left off, content collected by polling,
    /// retried on the deferred-webhook interval.
    Deferred,
    /// No webhook: none is configured (poll only), or it is missing and will be added.
    None,
}

impl SubscriptionState {
    /// The spelling `/status` shows (`enabled`, `disabled`, `missing`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Missing => "missing",
        }
    }
}

impl WebhookState {
    /// The spelling `/status` shows (`enabled`, `disabled`, `expired`, `outdated`,
    /// `pending`, `deferred`, `none`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
            Self::Outdated => "outdated",
            Self::Pending => "pending",
            Self::Deferred => "deferred",
            Self::None => "none",
        }
    }
}

/// The state of one (tenant, content type) subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubscriptionEntry {
    /// The tenant's configured name.
    pub tenant: String,
    /// The tenant GUID, lowercase.
    pub tenant_id: String,
    /// The content type.
    pub content_type: String,
    /// The subscription's status.
    pub subscription: SubscriptionState,
    /// The webhook's status.
    pub webhook: WebhookState,
    /// The last `/start` call made for it (any outcome), from the store.
    pub last_start: Option<DateTime<Utc>>,
    /// The last check of `/subscriptions/list` that covered it.
    pub last_check: Option<DateTime<Utc>>,
    /// What went wrong at the last attempt, if anything (never a secret).
    pub last_error: Option<String>,
}

/// Called with every state recorded on the board (e.g. to report it to `/status`).
type Listener = Box<dyn Fn(&SubscriptionEntry) + Send + Sync>;

/// Every subscription's state, keyed by tenant name and content type. Shared by the
/// managers of all tenants.
#[derive(Default)]
pub struct SubscriptionBoard {
    entries: Mutex<BTreeMap<(String, String), SubscriptionEntry>>,
    listener: Option<Listener>,
}

impl fmt::Debug for SubscriptionBoard {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("SubscriptionBoard")
            .field("entries", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl SubscriptionBoard {
    /// A board that also hands every recorded state to `listener` (called outside the
    /// board's lock).
    pub fn with_listener(listener: impl Fn(&SubscriptionEntry) + Send + Sync + 'static) -> Self {
        Self {
            entries: Mutex::default(),
            listener: Some(Box::new(listener)),
        }
    }

    /// Records (or replaces) the state of one subscription.
    pub fn set(&self, entry: SubscriptionEntry) {
        if let Some(listener) = &self.listener {
            listener(&entry);
        }
        let key = (entry.tenant.clone(), entry.content_type.clone());
        self.lock().insert(key, entry);
    }

    /// The state of one subscription, if it was recorded.
    pub fn get(&self, tenant: &str, content_type: &str) -> Option<SubscriptionEntry> {
        self.lock()
            .get(&(tenant.to_string(), content_type.to_string()))
            .cloned()
    }

    /// Forgets one subscription (a content type no longer collected).
    pub fn remove(&self, tenant: &str, content_type: &str) {
        self.lock()
            .remove(&(tenant.to_string(), content_type.to_string()));
    }

    /// Every subscription's state, ordered by tenant name and content type.
    pub fn snapshot(&self) -> Vec<SubscriptionEntry> {
        self.lock().values().cloned().collect()
    }

    /// How many subscriptions have their webhook deferred.
    pub fn deferred_webhooks(&self) -> usize {
        self.lock()
            .values()
            .filter(|entry| entry.webhook == WebhookState::Deferred)
            .count()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), SubscriptionEntry>> {
        // Plain data: a panicking writer cannot leave a broken invariant.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

//! The state behind the feed's lock: per tenant, its subscriptions (by content type),
//! blobs (in the order they became available), notification delivery records, current
//! faults, fault-choice credits and throttle window.
//!
//! A subscription entry, once created by a successful `/start`, is never removed: a
//! stop only disables it. So "a content type ever subscribed" (AF20023 rather than
//! AF20022) is simply "has an entry".

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::ContentEntry;
use crate::emulator::api::scenario::{FaultScenario, Scenario};

/// Expired content is forgotten entirely this many days after its expiration.
pub(super) const FORGET_AFTER_EXPIRY_DAYS: i64 = 7;

/// A tenant's world is pruned every this many blobs (world-wide sequence numbers).
pub(super) const PRUNE_EVERY_BLOBS: u64 = 1024;

/// Every tenant of the scenario, in scenario order.
pub(super) struct World {
    /// The tenants.
    pub tenants: Vec<TenantWorld>,
    /// Source of blob sequence numbers, unique across tenants.
    sequence: u64,
}

impl World {
    /// An empty world for the scenario's tenants, with their scenario faults.
    pub fn new(scenario: &Scenario) -> Self {
        let tenants = scenario
            .tenants
            .iter()
            .map(|tenant| TenantWorld::new(&tenant.tenant_id, tenant.faults.clone()))
            .collect();
        Self {
            tenants,
            sequence: 0,
        }
    }

    /// The next blob sequence number.
    pub fn next_sequence(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    /// The tenant with this id (case-insensitive).
    pub fn tenant(&self, tenant_id: &str) -> Option<&TenantWorld> {
        self.tenants
            .iter()
            .find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
    }

    /// The tenant with this id (case-insensitive), mutable.
    pub fn tenant_mut(&mut self, tenant_id: &str) -> Option<&mut TenantWorld> {
        self.tenants
            .iter_mut()
            .find(|tenant| tenant.tenant_id.eq_ignore_ascii_case(tenant_id))
    }
}

/// One tenant's part of the world.
pub(super) struct TenantWorld {
    /// The tenant GUID as the scenario spells it.
    pub tenant_id: String,
    /// Subscriptions by content type (API spelling).
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Blobs in the order they became available.
    pub blobs: Vec<Blob>,
    /// Position in `blobs` by content id.
    blob_positions: HashMap<String, usize>,
    /// Every notification delivery attempt, in order.
    pub notifications: Vec<NotificationRecord>,
    /// Current faults.
    pub faults: FaultScenario,
    /// Accumulated share of requests owed an HTTP 500 (see [`take_credit`]).
    pub server_error_credit: f64,
    /// Accumulated share of blob responses owed a truncation.
    pub truncate_credit: f64,
    /// Accumulated share of Graph requests owed a `graph_throttle` answer.
    pub graph_throttle_credit: f64,
    /// Accumulated share of Graph requests owed a `graph_unavailable` answer.
    pub graph_unavailable_credit: f64,
    /// The current throttle window.
    pub throttle: ThrottleWindow,
}

impl TenantWorld {
    fn new(tenant_id: &str, faults: FaultScenario) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            subscriptions: BTreeMap::new(),
            blobs: Vec::new(),
            blob_positions: HashMap::new(),
            notifications: Vec::new(),
            faults,
            server_error_credit: 0.0,
            truncate_credit: 0.0,
            graph_throttle_credit: 0.0,
            graph_unavailable_credit: 0.0,
            throttle: ThrottleWindow::default(),
        }
    }

    /// True when the subscription of `content_type` exists and is enabled.
    pub fn subscription_enabled(&self, content_type: &str) -> bool {
        self.subscriptions
            .get(content_type)
            .is_some_and(|subscription| subscription.enabled)
    }

    /// Appends a blob.
    pub fn insert_blob(&mut self, blob: Blob) {
        self.blob_positions
            .insert(blob.entry.content_id.clone(), self.blobs.len());
        self.blobs.push(blob);
    }

    /// Bounds memory on long runs: drops the bodies of expired blobs (they only answer
    /// AF20051 now) and forgets blobs and notification records expired for more than
    /// [`FORGET_AFTER_EXPIRY_DAYS`] (their content ids then answer AF20050).
    pub fn prune(&mut self, now: DateTime<Utc>) {
        let forget_before = now - chrono::Duration::days(FORGET_AFTER_EXPIRY_DAYS);
        self.blobs
            .retain(|blob| blob.entry.content_expiration > forget_before);
        for blob in &mut self.blobs {
            if blob.entry.content_expiration <= now {
                blob.body = Bytes::new();
            }
        }
        self.blob_positions = self
            .blobs
            .iter()
            .enumerate()
            .map(|(position, blob)| (blob.entry.content_id.clone(), position))
            .collect();
        self.notifications
            .retain(|record| record.entry.content_expiration > forget_before);
    }

    /// The blob with this content id.
    pub fn blob(&self, content_id: &str) -> Option<&Blob> {
        self.blob_positions
            .get(content_id)
            .map(|&position| &self.blobs[position])
    }
}

/// A subscription to one content type.
pub(super) struct Subscription {
    /// `enabled` or `disabled` (stopped) in `/list`.
    pub enabled: bool,
    /// The webhook, when one was given at the last start.
    pub webhook: Option<Webhook>,
    /// When it was last enabled: only content stored from then on is served.
    pub started_at: DateTime<Utc>,
    /// Until then `/list` shows `webhook: null` (the `webhook_pending_secs` fault).
    pub webhook_hidden_until: Option<DateTime<Utc>>,
}

/// A subscription's webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Webhook {
    /// https address.
    pub address: String,
    /// Sent back as `Webhook-AuthID`.
    pub auth_id: Option<String>,
    /// After it, the webhook reads `expired` and gets no notifications.
    pub expiration: Option<DateTime<Utc>>,
    /// Disabled for delivery failures or on demand.
    pub disabled: bool,
}

/// `webhook.status` of `/list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WebhookStatus {
    /// Notifications are delivered.
    Enabled,
    /// Disabled for failures or on demand.
    Disabled,
    /// Past its expiration.
    Expired,
}

impl WebhookStatus {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
            Self::Expired => "expired",
        }
    }
}

impl Webhook {
    /// The status at `now`: disabled wins over expired.
    pub fn status(&self, now: DateTime<Utc>) -> WebhookStatus {
        if self.disabled {
            WebhookStatus::Disabled
        } else if self.expiration.is_some_and(|expiration| expiration <= now) {
            WebhookStatus::Expired
        } else {
            WebhookStatus::Enabled
        }
    }
}

/// A stored blob.
pub(super) struct Blob {
    /// Unique, increasing across the world: the listing order and the page key.
    pub sequence: u64,
    /// Its listing entry.
    pub entry: ContentEntry,
    /// The JSON array served.
    pub body: Bytes,
    /// When it was stored, by the emulator's clock (may differ from `contentCreated` for
    /// late content).
    pub stored_at: DateTime<Utc>,
}

/// One notification delivery attempt.
pub(super) struct NotificationRecord {
    /// What was notified.
    pub entry: ContentEntry,
    /// When it was sent.
    pub sent: DateTime<Utc>,
    /// Outcome (`success`, `failed`, …).
    pub status: String,
}

/// A fixed throttle window of real time.
#[derive(Default)]
pub(super) struct ThrottleWindow {
    /// When the window opened; `None` before the first request.
    pub opened: Option<Instant>,
    /// Requests admitted in it.
    pub admitted: u32,
}

/// Deterministic fault choice (error diffusion): adds `rate` to `credit` and fires when
/// a whole unit has accumulated, so exactly ⌊n·rate⌋ of the first n calls fire, evenly
/// spread (rate 1 fires always, 0.5 every second call, 0 never). No RNG, so tests are
/// reproducible.
pub(super) fn take_credit(credit: &mut f64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    *credit += rate.min(1.0);
    if *credit >= 1.0 - 1e-9 {
        *credit = (*credit - 1.0).max(0.0);
        return true;
    }
    false
}

/// A Microsoft-shaped content id:
/// `{yyyyMMddHHmmssfff}{sequence}${same}${audit_sharepoint}${Audit_SharePoint}$na`.
/// Unique because the sequence is.
pub(super) fn content_id(created: DateTime<Utc>, sequence: u64, content_type: &str) -> String {
    let digits = format!("{}{sequence:06}", created.format("%Y%m%d%H%M%S%3f"));
    let upper = content_type.replace('.', "_");
    let lower = upper.to_ascii_lowercase();
    format!("{digits}${digits}${lower}${upper}$na")
}

/// True when `content_id` has the shape of an id this API hands out: non-empty, at most
/// 512 characters of `[A-Za-z0-9_.-]` and `$`, with at least one `$`.
pub(super) fn content_id_well_formed(content_id: &str) -> bool {
    !content_id.is_empty()
        && content_id.len() <= 512
        && content_id.contains('$')
        && content_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '$' | '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_fires_exactly_the_rate() {
        let mut credit = 0.0;
        let fired = (0..100).filter(|_| take_credit(&mut credit, 0.25)).count();
        assert_eq!(fired, 25);
        let mut credit = 0.0;
        assert!((0..10).all(|_| take_credit(&mut credit, 1.0)));
        let mut credit = 0.0;
        assert!(!(0..10).any(|_| take_credit(&mut credit, 0.0)));
    }

    fn blob(sequence: u64, created: DateTime<Utc>) -> Blob {
        Blob {
            sequence,
            entry: ContentEntry {
                content_type: "Audit.General".into(),
                content_id: content_id(created, sequence, "Audit.General"),
                content_uri: String::new(),
                content_created: created,
                content_expiration: created + chrono::Duration::days(7),
            },
            body: Bytes::from_static(b"[{}]"),
            stored_at: created,
        }
    }

    #[test]
    fn prune_drops_expired_bodies_and_forgets_long_expired_blobs() {
        let now = DateTime::parse_from_rfc3339("2024-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut tenant = TenantWorld::new("t", FaultScenario::default());
        let forgotten = blob(1, now - chrono::Duration::days(15));
        let expired = blob(2, now - chrono::Duration::days(8));
        let live = blob(3, now - chrono::Duration::days(1));
        let ids = [&forgotten, &expired, &live].map(|blob| blob.entry.content_id.clone());
        for blob in [forgotten, expired, live] {
            tenant.insert_blob(blob);
        }
        tenant.prune(now);
        assert!(tenant.blob(&ids[0]).is_none());
        assert!(tenant.blob(&ids[1]).unwrap().body.is_empty());
        assert_eq!(&tenant.blob(&ids[2]).unwrap().body[..], b"[{}]");
    }

    #[test]
    fn content_ids_are_unique_and_microsoft_shaped() {
        let created = DateTime::parse_from_rfc3339("2024-01-01T12:34:56.789Z")
            .unwrap()
            .with_timezone(&Utc);
        let first = content_id(created, 12, "Audit.SharePoint");
        assert_eq!(
            first,
            "20240101123456789000012$20240101123456789000012$audit_sharepoint$Audit_SharePoint$na"
        );
        assert_ne!(first, content_id(created, 13, "Audit.SharePoint"));
        assert!(content_id_well_formed(&first));
        assert!(!content_id_well_formed("no-dollar"));
        assert!(!content_id_well_formed("a$b/c"));
    }
}

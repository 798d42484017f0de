//! Health (`/healthz`), readiness (`/readyz`) and the board of current problems.
//!
//! `/healthz` answers 200 while the process serves HTTP. `/readyz` means "send me
//! webhooks": 200 while the store is writable and the queue is below its high-water mark,
//! 503 otherwise. An engine outage or a broken tenant does NOT fail readiness — the durable
//! queue absorbs both — but both show in the JSON detail, with what to do.
//!
//! The [`ProblemBoard`] holds the current problems of each (tenant, content type) — or of a
//! whole tenant — with their advice, one per kind, so components (subscriptions, poller,
//! workers) never overwrite or clear each other's: each sets a problem when it hits one and
//! clears its own kinds when the next attempt succeeds. The board shows what is wrong now,
//! not history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::clock::Clock;
use crate::queue::{QueueStore, StoreHealth};

/// One current problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Short machine-readable kind (`token_refused`, `permission_missing`, `throttled`, …).
    pub kind: String,
    /// What happened (never a secret).
    pub message: String,
    /// What to do about it.
    pub advice: String,
    /// Since when it holds.
    pub since: DateTime<Utc>,
}

/// The problems of the moment, keyed by tenant name, content type (`*` for the whole
/// tenant) and kind.
#[derive(Debug, Default)]
pub struct ProblemBoard {
    problems: Mutex<BoardMap>,
}

impl ProblemBoard {
    /// Records (or replaces) the problem of this `kind` of `tenant` / `content_type`; keeps
    /// the first `since` while it lasts.
    pub fn set(
        &self,
        tenant: &str,
        content_type: &str,
        kind: &str,
        message: String,
        advice: &str,
        now: DateTime<Utc>,
    ) {
        let mut problems = self.lock();
        let key = (
            tenant.to_string(),
            content_type.to_string(),
            kind.to_string(),
        );
        let since = problems.get(&key).map_or(now, |existing| existing.since);
        problems.insert(
            key,
            Problem {
                kind: kind.to_string(),
                message,
                advice: advice.to_string(),
                since,
            },
        );
    }

    /// Clears the problems of these `kinds` of `tenant` / `content_type`, if any: a
    /// component clears the kinds it sets, never another's.
    pub fn clear(&self, tenant: &str, content_type: &str, kinds: &[&str]) {
        let mut problems = self.lock();
        for kind in kinds {
            problems.remove(&(
                tenant.to_string(),
                content_type.to_string(),
                kind.to_string(),
            ));
        }
    }

    /// Clears every problem of `tenant`: it was removed, or restarted with new settings
    /// (its components report again what still holds).
    pub fn clear_tenant(&self, tenant: &str) {
        self.lock().retain(|(name, _, _), _| name != tenant);
    }

    /// Every current problem, ordered by tenant, content type and kind.
    pub fn snapshot(&self) -> Vec<((String, String), Problem)> {
        self.lock()
            .iter()
            .map(|((tenant, content_type, _), problem)| {
                ((tenant.clone(), content_type.clone()), problem.clone())
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BoardMap> {
        self.problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The board's entries by (tenant, content type, kind).
type BoardMap = BTreeMap<(String, String, String), Problem>;

/// What the engine forwarder reports for readiness.
#[derive(Clone, Debug, Serialize)]
pub struct EngineHealth {
    /// A stream to the engine is open.
    pub connected: bool,
    /// Records sent and not yet acknowledged.
    pub in_flight: u64,
    /// Logs in flight and no Ack for `engine.stall_secs`: what, and what to do.
    pub stalled: Option<EngineStall>,
}

/// The engine makes no progress, as `/readyz` and `/status` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EngineStall {
    /// "engine stalled: N Logs unacknowledged for S s: <last error>".
    pub message: String,
    /// What to do.
    pub advice: &'static str,
}

impl EngineStall {
    /// The advice of every stall.
    pub const ADVICE: &'static str = "the engine is not acknowledging logs: check that the UTMStack engine (EventProcessor) is running and healthy and that engine.socket is its socket; nothing is lost meanwhile, the queue holds the content";

    /// The stall as shown.
    pub fn new(stall: &crate::forward::Stall) -> Self {
        Self {
            message: stall.to_string(),
            advice: Self::ADVICE,
        }
    }
}

/// The readiness answer.
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// Ready to receive webhooks.
    pub ready: bool,
    /// The store accepted a write recently.
    pub store_writable: bool,
    /// Items pending or leased.
    pub queue_open_items: u64,
    /// The high-water mark.
    pub queue_high_water: u64,
    /// The store behind the queue (embedded, or the NATS connection); not ready while
    /// disconnected.
    pub store: StoreHealth,
    /// The engine connection (does not affect `ready`).
    pub engine: EngineHealth,
    /// Current problems (do not affect `ready`).
    pub problems: Vec<ProblemDetail>,
}

/// A problem as `/readyz` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProblemDetail {
    /// The tenant's name.
    pub tenant: String,
    /// The content type, or `*`.
    pub content_type: String,
    /// The problem.
    #[serde(flatten)]
    pub problem: Problem,
}

/// Computes readiness, probing the store at most every few seconds.
pub struct ReadinessProbe {
    store: Arc<dyn QueueStore>,
    high_water: u64,
    clock: Clock,
    engine: Arc<dyn Fn() -> EngineHealth + Send + Sync>,
    problems: Arc<ProblemBoard>,
    last_write_probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

/// How long a store write probe result is reused (load balancers probe every few seconds).
const WRITE_PROBE_TTL: Duration = Duration::from_secs(5);

impl ReadinessProbe {
    /// A probe over the store (queue depth, writability, connection), the engine health
    /// and the problem board.
    pub fn new(
        store: Arc<dyn QueueStore>,
        high_water: u64,
        clock: Clock,
        engine: Arc<dyn Fn() -> EngineHealth + Send + Sync>,
        problems: Arc<ProblemBoard>,
    ) -> Self {
        Self {
            store,
            high_water,
            clock,
            engine,
            problems,
            last_write_probe: tokio::sync::Mutex::new(None),
        }
    }

    async fn store_writable(&self) -> bool {
        let mut last = self.last_write_probe.lock().await;
        if let Some((at, writable)) = *last
            && at.elapsed() < WRITE_PROBE_TTL
        {
            return writable;
        }
        let stamp = self.clock.now().to_rfc3339().into_bytes();
        let writable = self
            .store
            .put_meta("ops/readiness-probe", stamp)
            .await
            .is_ok();
        *last = Some((Instant::now(), writable));
        writable
    }

    /// The current readiness.
    pub async fn check(&self) -> Readiness {
        let store_writable = self.store_writable().await;
        let (stats_ok, open) = match self.store.open_items().await {
            Ok(open) => (true, open),
            Err(_) => (false, 0),
        };
        let problems = self
            .problems
            .snapshot()
            .into_iter()
            .map(|((tenant, content_type), problem)| ProblemDetail {
                tenant,
                content_type,
                problem,
            })
            .collect();
        let store = self.store.health();
        Readiness {
            ready: store_writable && stats_ok && store.connected && open < self.high_water,
            store_writable,
            store,
            queue_open_items: open,
            queue_high_water: self.high_water,
            engine: (self.engine)(),
            problems,
        }
    }
}

//! Health (`/healthz`), readiness (`/readyz`) and the board of current problems.
//!
//! `/healthz` answers 200 while the process serves HTTP. `/readyz` means "send me
//! webhooks": 200 while the store is writable and the queue is below its high-water mark,
//! 503 otherwise. An engine outage or a broken tenant does NOT fail readiness — the durable
//! queue absorbs both — but both show in the JSON detail ([`Readiness`]), with what to do.
//! The detail names tenants and their errors, so it is private: the public listener answers
//! the [`ReadinessSummary`] alone (`{"ready": …}`), with the same status code.
//!
//! The [`ProblemBoard`] holds the current problems of each (tenant, content type) — or of a
//! whole tenant — with their advice, one per kind, so components (subscriptions, poller,
//! workers) never overwrite or clear each other's: each sets a problem when it hits one and
//! clears its own kinds when the next attempt succeeds. The board shows what is wrong now,
//! not history.
//!
//! A problem about particular blobs (a blob the API keeps refusing) is *held* instead
//! ([`ProblemBoard::hold_blob`]): it lasts while any blob it covers is unresolved, however
//! many other blobs of the content type succeed meanwhile, and each blob leaves it only
//! when that blob is resolved ([`ProblemBoard::release_blob`]: completed, or given up and
//! dead-lettered). However many blobs it covers, it is one row with their `count`.
//!
//! Every problem has advice: a caller that has none gets [`GENERIC_ADVICE`], never an
//! empty string.

use std::collections::{BTreeMap, BTreeSet};
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
    /// How many blobs a held problem covers; absent for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// The advice of a problem whose reporter had none to give.
pub const GENERIC_ADVICE: &str = "the connector retries by itself; if this persists, check the tenant's app registration and the connector's network access, and report the message";

/// One blob a held problem covers, and what the problem says (see
/// [`ProblemBoard::hold_blob`]).
#[derive(Clone, Copy, Debug)]
pub struct HeldBlob<'a> {
    /// The problem's kind.
    pub kind: &'a str,
    /// The blob's contentId.
    pub content_id: &'a str,
    /// What is wrong with each blob, after "N blobs" (`refused by the API …`).
    pub summary: &'a str,
    /// What happened to this blob (shown as the latest).
    pub detail: &'a str,
    /// What to do about it.
    pub advice: &'a str,
}

/// The problems of the moment, keyed by tenant name, content type (`*` for the whole
/// tenant) and kind.
#[derive(Debug, Default)]
pub struct ProblemBoard {
    problems: Mutex<Board>,
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
        let mut board = self.lock();
        let key = board_key(tenant, content_type, kind);
        let since = board.plain.get(&key).map_or(now, |existing| existing.since);
        board.plain.insert(
            key,
            Problem {
                kind: kind.to_string(),
                message,
                advice: advice_or_generic(advice).to_string(),
                since,
                count: None,
            },
        );
    }

    /// Adds `blob` to the held problem of its kind of `tenant` / `content_type` (created
    /// if none), which then lasts until every blob it covers is released; keeps the first
    /// `since`. Returns true when the blob was not covered yet (its first report, worth a
    /// warning; later ones are repeats).
    pub fn hold_blob(
        &self,
        tenant: &str,
        content_type: &str,
        blob: HeldBlob<'_>,
        now: DateTime<Utc>,
    ) -> bool {
        let mut board = self.lock();
        let held = board
            .held
            .entry(board_key(tenant, content_type, blob.kind))
            .or_insert_with(|| HeldProblem {
                content_ids: BTreeSet::new(),
                summary: String::new(),
                latest: String::new(),
                advice: String::new(),
                since: now,
            });
        held.summary = blob.summary.to_string();
        held.latest = blob.detail.to_string();
        held.advice = advice_or_generic(blob.advice).to_string();
        held.content_ids.insert(blob.content_id.to_string())
    }

    /// Resolves `content_id` in the held problem of `kind` of `tenant` / `content_type`;
    /// the problem goes when its last blob does. A blob it does not cover is ignored.
    pub fn release_blob(&self, tenant: &str, content_type: &str, kind: &str, content_id: &str) {
        let mut board = self.lock();
        let key = board_key(tenant, content_type, kind);
        let Some(held) = board.held.get_mut(&key) else {
            return;
        };
        held.content_ids.remove(content_id);
        if held.content_ids.is_empty() {
            board.held.remove(&key);
        }
    }

    /// Clears the problems of these `kinds` of `tenant` / `content_type`, if any: a
    /// component clears the kinds it sets, never another's. Held problems are not
    /// cleared this way: they go blob by blob ([`ProblemBoard::release_blob`]).
    pub fn clear(&self, tenant: &str, content_type: &str, kinds: &[&str]) {
        let mut board = self.lock();
        for kind in kinds {
            board.plain.remove(&board_key(tenant, content_type, kind));
        }
    }

    /// Clears every problem of `tenant`, held ones included: it was removed, or restarted
    /// with new settings (its components report again what still holds).
    pub fn clear_tenant(&self, tenant: &str) {
        let mut board = self.lock();
        board.plain.retain(|(name, _, _), _| name != tenant);
        board.held.retain(|(name, _, _), _| name != tenant);
    }

    /// Every current problem, ordered by tenant, content type and kind; a held problem is
    /// one entry with its count.
    pub fn snapshot(&self) -> Vec<((String, String), Problem)> {
        let board = self.lock();
        let plain = board
            .plain
            .iter()
            .map(|(key, problem)| (key, problem.clone()));
        let held = board
            .held
            .iter()
            .map(|(key, held)| (key, held.problem(&key.2)));
        let mut problems: Vec<_> = plain.chain(held).collect();
        problems.sort_by(|left, right| left.0.cmp(right.0));
        problems
            .into_iter()
            .map(|((tenant, content_type, _), problem)| {
                ((tenant.clone(), content_type.clone()), problem)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.problems
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The board's entries by (tenant, content type, kind).
type BoardKey = (String, String, String);

fn board_key(tenant: &str, content_type: &str, kind: &str) -> BoardKey {
    (
        tenant.to_string(),
        content_type.to_string(),
        kind.to_string(),
    )
}

fn advice_or_generic(advice: &str) -> &str {
    if advice.trim().is_empty() {
        GENERIC_ADVICE
    } else {
        advice
    }
}

/// The problems set and cleared as a whole, and those held per blob.
#[derive(Debug, Default)]
struct Board {
    plain: BTreeMap<BoardKey, Problem>,
    held: BTreeMap<BoardKey, HeldProblem>,
}

/// A problem that lasts while any blob it covers is unresolved.
#[derive(Debug)]
struct HeldProblem {
    content_ids: BTreeSet<String>,
    summary: String,
    latest: String,
    advice: String,
    since: DateTime<Utc>,
}

impl HeldProblem {
    /// The one row that shows it: "N blobs {summary}; latest: {detail}".
    fn problem(&self, kind: &str) -> Problem {
        let count = self.content_ids.len();
        let blobs = if count == 1 { "blob" } else { "blobs" };
        Problem {
            kind: kind.to_string(),
            message: format!("{count} {blobs} {}; latest: {}", self.summary, self.latest),
            advice: self.advice.clone(),
            since: self.since,
            count: Some(count as u64),
        }
    }
}

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

/// What `/readyz` says on the public listener: the verdict without the detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ReadinessSummary {
    /// Ready to receive webhooks.
    pub ready: bool,
}

impl Readiness {
    /// The verdict alone, for the public listener.
    pub fn summary(&self) -> ReadinessSummary {
        ReadinessSummary { ready: self.ready }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &str = "content_refused";

    fn refused<'a>(content_id: &'a str, detail: &'a str) -> HeldBlob<'a> {
        HeldBlob {
            kind: KIND,
            content_id,
            summary: "refused by the API without an AF code",
            detail,
            advice: "nothing to do",
        }
    }

    fn rows(board: &ProblemBoard) -> Vec<Problem> {
        board
            .snapshot()
            .into_iter()
            .map(|(_, problem)| problem)
            .collect()
    }

    #[test]
    fn a_held_problem_is_one_row_that_lasts_until_its_last_blob_is_released() {
        let board = ProblemBoard::default();
        let start = DateTime::<Utc>::UNIX_EPOCH;
        assert!(board.hold_blob("contoso", "Audit.Exchange", refused("a", "HTTP 404"), start));
        let later = start + chrono::Duration::minutes(5);
        assert!(board.hold_blob("contoso", "Audit.Exchange", refused("b", "HTTP 403"), later));
        assert!(!board.hold_blob("contoso", "Audit.Exchange", refused("a", "HTTP 404"), later));
        let shown = rows(&board);
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert_eq!(shown[0].count, Some(2));
        assert_eq!(shown[0].since, start);
        assert!(shown[0].message.starts_with("2 blobs refused"), "{shown:?}");
        assert!(shown[0].message.ends_with("latest: HTTP 404"), "{shown:?}");

        // Another blob of the type succeeding clears the plain kinds only.
        board.clear("contoso", "Audit.Exchange", &[KIND, "fetch_refused"]);
        board.release_blob("contoso", "Audit.Exchange", KIND, "unrelated");
        board.release_blob("contoso", "Audit.Exchange", KIND, "a");
        let shown = rows(&board);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].count, Some(1));
        assert!(shown[0].message.starts_with("1 blob refused"), "{shown:?}");
        board.release_blob("contoso", "Audit.Exchange", KIND, "b");
        assert_eq!(rows(&board), vec![]);
    }

    #[test]
    fn every_problem_has_advice_and_a_tenant_reset_clears_held_ones_too() {
        let board = ProblemBoard::default();
        let now = DateTime::<Utc>::UNIX_EPOCH;
        board.set("contoso", "*", "list_failed", "failed".into(), "", now);
        let no_advice = HeldBlob {
            advice: " ",
            ..refused("a", "HTTP 404")
        };
        board.hold_blob("contoso", "DLP.All", no_advice, now);
        let shown = rows(&board);
        assert_eq!(shown.len(), 2);
        for problem in &shown {
            assert_eq!(problem.advice, GENERIC_ADVICE, "{problem:?}");
        }
        board.clear_tenant("contoso");
        assert_eq!(rows(&board), vec![]);
    }
}

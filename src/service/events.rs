//! The service's own telemetry events (see `ops::events`): the engine stall its upkeep
//! watches, and what it meets opening, maintaining and closing the store. The stall's
//! metrics (`engine_in_flight`, …) are gauges the upkeep sets from the forwarder's stats,
//! and `/readyz` and `/status` show it from [`crate::forward::Forwarder::stall`]; these
//! events say when it begins and ends.
//!
//! | event                      | level | metric | board | console                     |
//! |----------------------------|-------|--------|-------|-----------------------------|
//! | [`EngineStalled`]          | ERROR with the advice | — | — (shown by `/status`) | once per stall |
//! | [`EngineStallEnded`]       | INFO  | —      | —     | —                           |
//! | [`OrphanedLeasesReleased`] | WARN  | `items_recovered_total` | — | —                   |
//! | [`PreviousRunEnded`]       | WARN when unclean | `unclean_restarts_total` | — | —     |
//! | [`TombstonesPurged`]       | DEBUG | —      | —     | —                           |
//! | [`TombstonePurgeFailed`]   | WARN  | —      | —     | —                           |
//! | [`RunMarkerUnwritten`]     | WARN  | —      | —     | —                           |
//! | [`StoreCloseFailed`]       | WARN  | —      | —     | —                           |

use crate::forward::{DATA_TYPE, Forwarder, Stall};
use crate::ops::health::EngineStall;
use crate::queue::QueueError;

/// Logs are in flight and none was acknowledged for `engine.stall_secs`.
pub struct EngineStalled<'a> {
    /// The stall.
    pub stall: &'a Stall,
}

impl EngineStalled<'_> {
    /// Logs it as an ERROR with its advice and tells the engine's console.
    pub fn emit(self, forwarder: &Forwarder) {
        let stall = self.stall;
        tracing::error!(
            unacked_logs = stall.unacked,
            unacked_secs = stall.unacked_for.as_secs(),
            last_error = stall.last_error.as_deref().unwrap_or(""),
            "{}",
            EngineStall::ADVICE
        );
        forwarder.notify_integration_failure(DATA_TYPE, &stall.to_string());
    }
}

/// The engine acknowledges Logs again after a reported stall.
pub struct EngineStallEnded;

impl EngineStallEnded {
    /// Says so.
    pub fn emit(self) {
        tracing::info!("the engine acknowledges logs again; the stall is over");
    }
}

/// The embedded store held leases of a run that did not stop cleanly; they are released,
/// so their items are delivered again.
pub struct OrphanedLeasesReleased {
    /// Leases released.
    pub orphaned: u64,
}

impl OrphanedLeasesReleased {
    /// Counts them (`items_recovered_total`, at zero too, so the series exists) and, when
    /// there are any, logs a WARN: nothing is lost, but each item's records acknowledged
    /// after its last stored progress (at most one progress interval, or the whole blob
    /// when its completion was still in the grouped commit) are sent again. A lease made
    /// after the last durable commit is undone by the crash instead (its item is simply
    /// pending again), so this counts the items known to repeat work, not every one.
    pub fn emit(self, metrics: &crate::ops::Metrics) {
        metrics.items_recovered.inc_by(self.orphaned);
        if self.orphaned > 0 {
            tracing::warn!(
                orphaned = self.orphaned,
                "released the leases of a previous run that did not stop cleanly: their records acknowledged since their last stored progress are sent again (duplicates, bounded by these items)"
            );
        }
    }
}

/// What the store says of the previous run of this replica.
pub struct PreviousRunEnded {
    /// It did not stop cleanly (killed, crashed, or stopped past its deadline).
    pub unclean: bool,
    /// `workers.count`: how many blobs were in flight at most.
    pub workers: usize,
}

impl PreviousRunEnded {
    /// Counts an unclean end (`unclean_restarts_total`, at zero too) and logs a WARN with the
    /// bound on the work that repeats: nothing is lost, but the records of the blobs in
    /// flight (at most `workers.count`, and the blobs whose completion was in the grouped
    /// commit, at most 256) acknowledged since their last stored progress are sent again.
    pub fn emit(self, metrics: &crate::ops::Metrics) {
        metrics.unclean_restarts.inc_by(u64::from(self.unclean));
        if self.unclean {
            tracing::warn!(
                workers = self.workers,
                "the previous run did not stop cleanly: records of the blobs it had in flight (at most workers.count, plus at most 256 whose completion was being grouped), acknowledged since each blob's last stored progress, are sent again; the engine receives them twice"
            );
        }
    }
}

/// The hourly purge removed expired tombstones.
pub struct TombstonesPurged {
    /// Tombstones removed.
    pub purged: u64,
}

impl TombstonesPurged {
    /// Logs it at DEBUG.
    pub fn emit(self) {
        tracing::debug!(purged = self.purged, "expired tombstones purged");
    }
}

/// The hourly purge of expired tombstones failed; it is tried again in an hour.
pub struct TombstonePurgeFailed<'a> {
    /// The failure.
    pub error: &'a QueueError,
}

impl TombstonePurgeFailed<'_> {
    /// Logs a WARN.
    pub fn emit(self) {
        let error = self.error;
        tracing::warn!(%error, "cannot purge expired tombstones");
    }
}

/// The `stopped` run marker could not be written at a clean stop: the next start finds the
/// run still marked as running and counts an unclean restart ([`PreviousRunEnded`]), though
/// nothing was left in flight.
pub struct RunMarkerUnwritten<'a> {
    /// The failure.
    pub error: &'a QueueError,
}

impl RunMarkerUnwritten<'_> {
    /// Logs a WARN.
    pub fn emit(self) {
        let error = self.error;
        tracing::warn!(%error, "the clean stop could not be recorded: the next start will count an unclean restart");
    }
}

/// Closing the store at stop failed.
pub struct StoreCloseFailed<'a> {
    /// The failure.
    pub error: &'a QueueError,
}

impl StoreCloseFailed<'_> {
    /// Logs a WARN.
    pub fn emit(self) {
        let error = self.error;
        tracing::warn!(%error, "closing the store");
    }
}

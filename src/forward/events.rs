//! The forwarder's telemetry events (see `ops::events`): one type per notable occurrence
//! of the Log stream and the notify channel, whose `emit` writes the log line and updates
//! the forwarder's own [`Counters`] (read by [`super::Forwarder::stats`], turned into
//! metrics by the service's upkeep). The forwarder has no metrics registry and no board:
//! a stall reaches `/status` and the console through the service (`service::events`).
//!
//! | event                  | level                      | counter (`ForwarderStats`)      |
//! |------------------------|----------------------------|---------------------------------|
//! | [`EngineConnected`]    | INFO (first stream only)   | — (`engine_connected` by the task) |
//! | [`StreamFailed`]       | WARN when an outage begins, DEBUG while it lasts | `last_error`, `engine_connected` |
//! | [`OutageRecovered`]    | INFO                       | —                               |
//! | [`StreamRefused`]      | WARN                       | — (the first Log is isolated)   |
//! | [`PoisonLogGivenUp`]   | ERROR                      | `refused`                       |
//! | [`UnmatchedAck`]       | WARN at most once a minute | `unmatched_acks`                |
//! | [`StoppedUnacked`]     | WARN                       | —                               |
//! | [`NotificationDelivered`] | —                       | `notifications_sent`, `engine_connected` |
//! | [`NotificationGivenUp`] | WARN                      | `notifications_failed`          |
//! | [`NotificationDropped`] | —                         | `notifications_dropped`         |

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Counters, POISON_ATTEMPTS};

/// Unmatched acks are logged at most this often.
const UNMATCHED_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A stream to the engine opened.
pub(super) struct EngineConnected {
    /// No stream opened before in this forwarder's life.
    pub first: bool,
}

impl EngineConnected {
    /// Says so once, for the first stream.
    pub fn emit(self) {
        if self.first {
            tracing::info!("connected to the engine");
        }
    }
}

/// The stream (or an attempt to open one) failed; the forwarder reconnects with backoff
/// and resends every unacknowledged Log.
pub(super) struct StreamFailed<'a> {
    /// Why.
    pub reason: &'a str,
    /// Logs in the window.
    pub unacked_logs: usize,
    /// The engine was reachable until now: an outage begins (one WARN per outage).
    pub outage_began: bool,
}

impl StreamFailed<'_> {
    /// Marks the engine disconnected with the reason; WARN when the outage begins, DEBUG
    /// while it lasts.
    pub fn emit(self, counters: &Counters) {
        let reason = self.reason;
        counters.set_connected(false);
        counters.set_last_error(reason);
        if self.outage_began {
            tracing::warn!(
                reason,
                unacked_logs = self.unacked_logs,
                "engine stream failed; reconnecting with backoff, unacknowledged logs will be resent"
            );
        } else {
            tracing::debug!(reason, "engine still unreachable");
        }
    }
}

/// The outage is over: the first Ack after reconnecting, or a stream opening with
/// nothing to resend.
pub(super) struct OutageRecovered {
    /// How long the engine was unreachable.
    pub outage: Duration,
    /// Logs resent when the current stream opened.
    pub resent_logs: u64,
}

impl OutageRecovered {
    /// Says so with the outage's length.
    pub fn emit(self) {
        tracing::info!(
            outage_secs = self.outage.as_secs_f64(),
            resent_logs = self.resent_logs,
            "engine connection recovered"
        );
    }
}

/// The engine ended a stream with a status that may be the first Log's fault: it is
/// sent alone next.
pub(super) struct StreamRefused<'a> {
    /// The status.
    pub reason: &'a str,
}

impl StreamRefused<'_> {
    /// Says the first Log is isolated.
    pub fn emit(self) {
        tracing::warn!(
            reason = self.reason,
            "the engine refused a stream; sending the first unacknowledged log alone to find out whether it is the cause"
        );
    }
}

/// The first Log of the window was refused [`POISON_ATTEMPTS`] times alone: its receipt
/// resolves to `Refused` and its record is dead-lettered by the worker.
pub(super) struct PoisonLogGivenUp<'a> {
    /// The Log's id.
    pub log_id: &'a str,
    /// The last refusal.
    pub reason: &'a str,
}

impl PoisonLogGivenUp<'_> {
    /// Counts `refused` and logs it as an ERROR.
    pub fn emit(self, counters: &Counters) {
        Counters::add(&counters.refused, 1);
        tracing::error!(
            log_id = %self.log_id,
            attempts = POISON_ATTEMPTS,
            reason = self.reason,
            "the engine refused a log every time it was sent alone; giving it up (its record is dead-lettered by reference)"
        );
    }
}

/// An Ack named no Log in the window: ignored.
pub(super) struct UnmatchedAck;

impl UnmatchedAck {
    /// Counts `unmatched_acks`; logs the total at most once per
    /// [`UNMATCHED_LOG_INTERVAL`], `logged_at` keeping when it last did.
    pub fn emit(self, counters: &Counters, logged_at: &mut Option<Instant>) {
        Counters::add(&counters.unmatched_acks, 1);
        let due = logged_at.is_none_or(|at| at.elapsed() >= UNMATCHED_LOG_INTERVAL);
        if !due {
            return;
        }
        *logged_at = Some(Instant::now());
        let total = counters.unmatched_acks.load(Ordering::Relaxed);
        tracing::warn!(
            unmatched_acks_total = total,
            "the engine acknowledged a log id that is not in flight; ignored"
        );
    }
}

/// The stream task stopped with Logs unacknowledged: their items are not completed and
/// the queue delivers them again.
pub(super) struct StoppedUnacked {
    /// Logs in the window or queued for it.
    pub unacked_logs: u64,
}

impl StoppedUnacked {
    /// Logs it as a WARN (nothing is lost).
    pub fn emit(self) {
        tracing::warn!(
            unacked_logs = self.unacked_logs,
            "engine forwarder stopped with unacknowledged logs; their content will be delivered again"
        );
    }
}

/// The engine acknowledged a notification.
pub(super) struct NotificationDelivered;

impl NotificationDelivered {
    /// Counts it; the engine is reachable (see `Counters::note_notification_delivered`).
    pub fn emit(self, counters: &Counters) {
        counters.note_notification_delivered();
        Counters::add(&counters.notifications_sent, 1);
    }
}

/// A notification failed every attempt.
pub(super) struct NotificationGivenUp<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// The last attempt's failure.
    pub reason: &'a str,
}

impl NotificationGivenUp<'_> {
    /// Counts `notifications_failed` and logs a WARN (best effort: nothing else is lost).
    pub fn emit(self, counters: &Counters) {
        tracing::warn!(
            topic = self.topic,
            reason = self.reason,
            "could not notify the engine; gave up"
        );
        Counters::add(&counters.notifications_failed, 1);
    }
}

/// A notification was not queued (notify queue full or shut down).
pub(super) struct NotificationDropped;

impl NotificationDropped {
    /// Counts `notifications_dropped` (the caller learns it from `notify`'s answer).
    pub fn emit(self, counters: &Counters) {
        Counters::add(&counters.notifications_dropped, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unmatched_ack_is_counted_but_logged_at_most_once_a_minute() {
        let counters = Counters::default();
        let mut logged_at = None;
        UnmatchedAck.emit(&counters, &mut logged_at);
        let first_logged = logged_at.expect("the first unmatched ack is logged");
        UnmatchedAck.emit(&counters, &mut logged_at);
        assert_eq!(logged_at, Some(first_logged), "the second is not logged");
        assert_eq!(counters.unmatched_acks.load(Ordering::Relaxed), 2);
        let long_ago = Instant::now().checked_sub(UNMATCHED_LOG_INTERVAL);
        logged_at = long_ago;
        UnmatchedAck.emit(&counters, &mut logged_at);
        assert!(
            logged_at > long_ago,
            "logged again once the interval passed"
        );
        assert_eq!(counters.unmatched_acks.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_notification_given_up_or_dropped_counts_without_marking_the_engine_reachable() {
        let counters = Counters::default();
        counters.set_starting();
        NotificationGivenUp {
            topic: "integration_failure",
            reason: "no ack",
        }
        .emit(&counters);
        NotificationDropped.emit(&counters);
        assert_eq!(counters.notifications_failed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.notifications_dropped.load(Ordering::Relaxed), 1);
        assert!(!counters.engine_connected.load(Ordering::Relaxed));
        NotificationDelivered.emit(&counters);
        assert_eq!(counters.notifications_sent.load(Ordering::Relaxed), 1);
        assert!(counters.engine_connected.load(Ordering::Relaxed));
    }
}

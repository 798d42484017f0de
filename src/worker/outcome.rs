//! How a pass over a blob ends, and the fixed delays before an item is tried again: the
//! one place that says what happens to an item after a pass (see `design.md`).
//!
//! Backoff of transient failures comes from the workers' [`crate::retry::RetryPolicy`]
//! (by the item's attempts, raised to a `Retry-After`); the delays here are for failures
//! that backoff would only hammer, because they wait on a change elsewhere.

/// How one pass over a blob ended, and so what happens to its item.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PassOutcome {
    /// The closing `]` was read and every record is settled: complete the item.
    Complete,
    /// The body broke off, the fetch failed or a dead letter could not be stored: retry
    /// from the settled prefix on the item's backoff.
    Retry(String),
    /// Shutdown, or the forwarder stopped before every ack came: give the item back
    /// (release), its settled prefix recorded.
    Interrupted,
    /// The structure is lost from `offset` (record `index` onwards): dead-letter the item
    /// from that point.
    Unrecoverable {
        /// The first record not read.
        index: u64,
        /// Where the structure broke, in bytes.
        offset: u64,
        /// The splitter's reason.
        reason: String,
    },
}

impl PassOutcome {
    /// The outcome of the pass once its last receipts are settled: a failure to settle
    /// (`settled`) overrides what the blob's stream said.
    pub(super) fn then(self, settled: Result<(), PassOutcome>) -> PassOutcome {
        match settled {
            Ok(()) => self,
            Err(outcome) => outcome,
        }
    }
}

/// The fixed delays of the workers.
pub(super) mod delay {
    use std::time::Duration;

    /// An item whose tenant is no longer configured: kept, looked at hourly, for when the
    /// tenant returns (3,600 s).
    pub const TENANT_REMOVED: Duration = Duration::from_secs(3600);

    /// An item whose subscription is missing or disabled: the subscription manager is
    /// starting it (300 s).
    pub const SUBSCRIPTION_NOT_READY: Duration = Duration::from_secs(300);

    /// A refusal that names a configuration problem but may pass by itself (60 s).
    pub const CONFIGURATION_RETRYABLE: Duration = Duration::from_secs(60);

    /// A configuration problem (credentials, consent, roles, audit off) the operator must
    /// fix: retried every 15 minutes (900 s), the content kept.
    pub const CONFIGURATION: Duration = Duration::from_secs(900);

    /// The wait after a failed lease when the backoff gives none (5 s).
    pub const LEASE_FAILED: Duration = Duration::from_secs(5);
}

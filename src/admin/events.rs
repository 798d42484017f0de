//! The operator commands' telemetry events (see `ops::events`): what an operator did to
//! the running service, logged once per change so the service's log tells who changed
//! what. They log only: a backfill's enqueues are counted by the intake
//! (`enqueued_total{source="backfill"}`), and the command's report carries every detail.
//! Listing dead letters changes nothing and logs nothing.
//!
//! | event                      | level | when                                              |
//! |----------------------------|-------|---------------------------------------------------|
//! | [`SubscriptionStarted`]    | INFO  | a start was asked, with its outcome               |
//! | [`SubscriptionStopped`]    | WARN  | a stop was asked (content published meanwhile is lost) |
//! | [`BackfillPairFinished`]   | INFO  | a (tenant, content type) of a backfill ended      |
//! | [`BackfillUrisRefused`]    | WARN  | listed contentUris were not on the tenant's API host |
//! | [`DeadItemRequeued`]       | INFO  | a dead item went back to pending                  |
//! | [`DeadRecordsRequeued`]    | INFO  | a done blob's dead records went back to pending   |

use super::protocol::BackfillPair;
use crate::config::ContentType;
use crate::queue::ContentKey;

/// The operator started a subscription (or tried to).
pub struct SubscriptionStarted<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: ContentType,
    /// "started", "already enabled" or "failed".
    pub outcome: &'a str,
}

impl SubscriptionStarted<'_> {
    /// Logs it at INFO.
    pub fn emit(self) {
        let (tenant, content_type, outcome) = (self.tenant, self.content_type, self.outcome);
        tracing::info!(%tenant, %content_type, outcome, "operator started a subscription");
    }
}

/// The operator stopped a subscription (or tried to).
pub struct SubscriptionStopped<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: ContentType,
    /// The API accepted the stop.
    pub ok: bool,
}

impl SubscriptionStopped<'_> {
    /// Logs a WARN: content published while it is stopped is never listed.
    pub fn emit(self) {
        let (tenant, content_type, ok) = (self.tenant, self.content_type, self.ok);
        tracing::warn!(%tenant, %content_type, ok, "operator stopped a subscription");
    }
}

/// A (tenant, content type) of a backfill was listed and enqueued, or failed.
pub struct BackfillPairFinished<'a> {
    /// The pair's outcome, as reported.
    pub pair: &'a BackfillPair,
}

impl BackfillPairFinished<'_> {
    /// Logs it at INFO with its counts and error.
    pub fn emit(self) {
        let pair = self.pair;
        tracing::info!(tenant = %pair.tenant, content_type = %pair.content_type, listed = pair.listed, enqueued = pair.enqueued, error = pair.error.as_deref().unwrap_or(""), "backfill");
    }
}

/// A backfill listed contentUris outside the tenant's API host; they were not enqueued.
pub struct BackfillUrisRefused<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// How many.
    pub rejected: u64,
}

impl BackfillUrisRefused<'_> {
    /// Logs a WARN.
    pub fn emit(self) {
        let (tenant, rejected) = (self.tenant, self.rejected);
        tracing::warn!(%tenant, rejected, "backfill: contentUris not on the tenant's API host were refused");
    }
}

/// The operator requeued a dead item, with its dead records.
pub struct DeadItemRequeued<'a> {
    /// The item.
    pub key: &'a ContentKey,
    /// Its dead records requeued with it.
    pub records: usize,
}

impl DeadItemRequeued<'_> {
    /// Logs it at INFO.
    pub fn emit(self) {
        let (key, records) = (self.key, self.records);
        tracing::info!(%key, records, "operator requeued a dead item");
    }
}

/// The operator requeued the dead records of a done blob.
pub struct DeadRecordsRequeued<'a> {
    /// The blob.
    pub key: &'a ContentKey,
    /// Records requeued.
    pub records: u64,
}

impl DeadRecordsRequeued<'_> {
    /// Logs it at INFO.
    pub fn emit(self) {
        let (key, records) = (self.key, self.records);
        tracing::info!(%key, records, "operator requeued dead records");
    }
}

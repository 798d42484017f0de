//! The admin protocol: newline-delimited JSON over the admin Unix socket.
//!
//! One connection carries one request. The client writes one [`AdminRequest`] as a single
//! JSON line (at most [`MAX_REQUEST_BYTES`]); the service answers with zero or more
//! [`AdminEvent::Progress`] lines (backfill only), then exactly one final line — the
//! command's report or [`AdminEvent::Error`] — and closes the connection. Every type here
//! is plain data: no secret (client secrets, tokens, authIds) and no record content ever
//! crosses the socket; dead letters travel as references (index, byte range, SHA-256).
//!
//! Why not HTTP: the socket is private to the service's user, has one client at a time and
//! needs a streamed answer (backfill progress); a JSON line per message does that with no
//! HTTP client in the command, and `socat`/`nc -U` can drive it by hand.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Longest request line the service reads; longer requests are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest answer line the command reads (a long dead-letter listing is one line).
pub const MAX_ANSWER_LINE_BYTES: usize = 256 * 1024 * 1024;

/// Which subscriptions a `subscriptions` command concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSelection {
    /// A configured tenant's name; `None` means every tenant.
    pub tenant: Option<String>,
    /// A content type in the API's spelling; `None` means every configured one.
    pub content_type: Option<String>,
}

/// A backfill: list `[from, to)` again and enqueue what is found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillRequest {
    /// Tenant names; empty means every tenant.
    pub tenants: Vec<String>,
    /// Content types (API spelling); empty means each tenant's configured ones.
    pub content_types: Vec<String>,
    /// Start of the range (inclusive), on `contentCreated`.
    pub from: DateTime<Utc>,
    /// End of the range (exclusive).
    pub to: DateTime<Utc>,
}

/// Which dead letters a `deadletters` command concerns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterSelection {
    /// A configured tenant's name; `None` means every tenant.
    pub tenant: Option<String>,
    /// One contentId; `None` means every dead item (requeue needs `all` then).
    pub content_id: Option<String>,
    /// Requeue every selected dead item (guards against a requeue without `content_id`).
    #[serde(default)]
    pub all: bool,
}

/// One request to the running service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The API's view of the selected subscriptions.
    SubscriptionsList(SubscriptionSelection),
    /// Start the selected subscriptions (with the configured webhook unless `no_webhook`).
    SubscriptionsStart {
        /// What to start.
        selection: SubscriptionSelection,
        /// Start poll-only, without the configured webhook.
        no_webhook: bool,
    },
    /// Stop the selected subscriptions (content published until a restart is lost).
    SubscriptionsStop(SubscriptionSelection),
    /// List a range again and enqueue it.
    Backfill(BackfillRequest),
    /// List dead items and dead records.
    DeadLettersList(DeadLetterSelection),
    /// Put dead items back to pending, and the dead records of done blobs with them.
    DeadLettersRequeue(DeadLetterSelection),
}

/// One subscription as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRow {
    /// Tenant name.
    pub tenant: String,
    /// Tenant GUID.
    pub tenant_id: String,
    /// Content type.
    pub content_type: String,
    /// Collected by the configuration.
    pub configured: bool,
    /// `enabled` or `disabled`; `None` when the API lists no such subscription.
    pub status: Option<String>,
    /// `enabled`, `disabled` or `expired`; `None` when there is no webhook (or it is still
    /// being validated).
    pub webhook_status: Option<String>,
    /// The registered webhook address, if any.
    pub webhook_address: Option<String>,
}

/// A tenant whose subscriptions could not be listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantFailure {
    /// Tenant name.
    pub tenant: String,
    /// What went wrong and what to fix.
    pub error: String,
}

/// Answer to `subscriptions list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionsReport {
    /// One row per (tenant, content type), tenants by name.
    pub subscriptions: Vec<SubscriptionRow>,
    /// Tenants whose listing failed.
    pub failures: Vec<TenantFailure>,
}

/// What a start or stop did to one subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChange {
    /// Tenant name.
    pub tenant: String,
    /// Content type.
    pub content_type: String,
    /// `started`, `already enabled`, `stopped`, or `failed`.
    pub outcome: String,
    /// The webhook address registered by a start (`None`: poll-only).
    pub webhook_address: Option<String>,
    /// Why it failed, and what to do.
    pub error: Option<String>,
}

/// Answer to `subscriptions start` and `subscriptions stop`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionChangesReport {
    /// `start` or `stop`.
    pub action: String,
    /// One entry per subscription acted on.
    pub changes: Vec<SubscriptionChange>,
}

/// The backfill of one (tenant, content type).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillPair {
    /// Tenant name.
    pub tenant: String,
    /// Content type.
    pub content_type: String,
    /// Content blobs listed.
    pub listed: u64,
    /// Of those, new to the queue (enqueued as pending).
    pub enqueued: u64,
    /// Of those, already known (pending, in progress, done or dead).
    pub already_known: u64,
    /// Of those, refused because their contentUri is not on the tenant's API host.
    pub rejected: u64,
    /// Why listing or enqueuing failed; `None` on success.
    pub error: Option<String>,
}

/// Progress of a backfill, sent before its report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillProgress {
    /// Pairs in the backfill.
    pub total: usize,
    /// Pairs finished so far.
    pub done: usize,
    /// The pair this event is about.
    pub pair: BackfillPair,
    /// `false`: the pair's listing starts; `true`: the pair is finished.
    pub finished: bool,
}

/// Answer to `backfill`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackfillReport {
    /// The start listed (the requested one, to the whole second).
    pub from: DateTime<Utc>,
    /// The end listed (the requested one, at most now).
    pub to: DateTime<Utc>,
    /// Each (tenant, content type), in order.
    pub pairs: Vec<BackfillPair>,
    /// Total blobs listed.
    pub listed: u64,
    /// Total new to the queue.
    pub enqueued: u64,
    /// Total already known.
    pub already_known: u64,
    /// Pairs that failed.
    pub failed: usize,
    /// The backfill stopped early (service shutdown or the command went away).
    pub cancelled: bool,
}

/// A dead item (a content blob given up on), by reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadItemRow {
    /// Tenant name (the GUID when the tenant is no longer configured).
    pub tenant: String,
    /// Tenant GUID.
    pub tenant_id: String,
    /// Content type.
    pub content_type: String,
    /// Microsoft's contentId.
    pub content_id: String,
    /// Why it was given up (for a requeued item: why it had been).
    pub reason: String,
    /// Failed attempts before it was given up.
    pub attempts: u32,
    /// Records of the blob dead-lettered on their own.
    pub dead_records: u64,
    /// When Microsoft stops serving the blob (a requeue after that dies again).
    pub content_expiration: DateTime<Utc>,
}

/// A dead record (one record of a blob), by reference: never its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRecordRow {
    /// Tenant name (the GUID when the tenant is no longer configured).
    pub tenant: String,
    /// Tenant GUID.
    pub tenant_id: String,
    /// Content type, when the blob's item is still known.
    pub content_type: Option<String>,
    /// Microsoft's contentId of the blob.
    pub content_id: String,
    /// Index of the record in the blob's JSON array.
    pub index: u64,
    /// Byte range `[start, end)` of the record in the blob.
    pub byte_range: (u64, u64),
    /// SHA-256 of those bytes, lowercase hex.
    pub sha256: String,
    /// Why it was dead-lettered.
    pub reason: String,
}

/// Answer to `deadletters list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLettersReport {
    /// Dead items, oldest first.
    pub dead_items: Vec<DeadItemRow>,
    /// Dead records, by tenant, contentId and index.
    pub dead_records: Vec<DeadRecordRow>,
    /// More exist than were listed.
    pub truncated: bool,
}

/// Answer to `deadletters requeue`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueReport {
    /// The dead items put back to pending.
    pub requeued: Vec<DeadItemRow>,
    /// Of those, how many have content that already expired (they will die again).
    pub expired: usize,
    /// The dead records requeued (of the requeued dead items and of done blobs): their
    /// blob is fetched again and only they are sent (plus, for a dead item, the records
    /// after its acked prefix); each is removed once the engine acked it.
    #[serde(default)]
    pub records: Vec<DeadRecordRow>,
    /// Selected dead records not requeued because their blob is still pending or being
    /// fetched: requeue them once it is done.
    #[serde(default)]
    pub records_in_progress: u64,
    /// Selected dead records not requeued because Microsoft no longer serves their blob
    /// (past its `contentExpiration`): lost for good.
    #[serde(default)]
    pub records_expired: u64,
    /// More dead letters matched than one requeue handles; run it again.
    pub truncated: bool,
}

/// One line of an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum AdminEvent {
    /// Backfill progress (zero or more, before the report).
    Progress(BackfillProgress),
    /// Final: `subscriptions list`.
    Subscriptions(SubscriptionsReport),
    /// Final: `subscriptions start|stop`.
    SubscriptionChanges(SubscriptionChangesReport),
    /// Final: `backfill`.
    Backfill(BackfillReport),
    /// Final: `deadletters list`.
    DeadLetters(DeadLettersReport),
    /// Final: `deadletters requeue`.
    Requeued(RequeueReport),
    /// Final: the request failed as a whole.
    Error {
        /// What went wrong and what to fix.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_as_single_json_lines() {
        let request = AdminRequest::SubscriptionsStart {
            selection: SubscriptionSelection {
                tenant: Some("contoso".into()),
                content_type: Some("DLP.All".into()),
            },
            no_webhook: true,
        };
        let line = serde_json::to_string(&request).expect("serializes");
        assert!(!line.contains('\n'));
        assert!(
            line.contains(r#""command":"subscriptions_start""#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<AdminRequest>(&line).expect("parses"),
            request
        );
        let answer = AdminEvent::Error {
            message: "no tenant named x".into(),
        };
        let line = serde_json::to_string(&answer).expect("serializes");
        assert_eq!(
            serde_json::from_str::<AdminEvent>(&line).expect("parses"),
            answer
        );
    }
}

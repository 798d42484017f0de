//! The workers' telemetry events (see `ops::events`): one type per occurrence of a blob
//! pass, whose `emit` writes the log line, counts it, sets or clears the board's problem
//! with its advice, and reports a counted loss to the console. The pool decides what
//! happens to the item; these say so.
//!
//! | event                  | level | metric (`blobs_fetched` outcome, family) | board                        | console        |
//! |------------------------|-------|------------------------------------------|------------------------------|----------------|
//! | [`BlobCompleted`]      | —     | `ok`                                     | clears `fetch_refused`, releases the blob | —  |
//! | [`BlobRetried`]        | —     | `retry`                                  | —                            | —              |
//! | [`FetchRefused`]       | —     | `retry` or `refused`                     | `fetch_refused` with advice  | via the board  |
//! | [`SubscriptionNotReady`] | —   | `refused`                                | — (the subscription manager's) | —            |
//! | [`ContentExpired`]     | ERROR | `expired`, `content_expired`             | —                            | reported       |
//! | [`ContentMissing`]     | ERROR | `missing`, `content_missing`             | —                            | —              |
//! | [`ForeignUrlRefused`]  | ERROR | `foreign_url`                            | —                            | —              |
//! | [`RefusedBlobRetried`] | WARN once per blob | `retry`                     | holds the blob on `content_refused` | via the board |
//! | [`RefusedBlobExpired`] | ERROR | `refused_expired`, `content_refused`     | —                            | reported       |
//! | [`BlobUnrecoverable`]  | ERROR | `unrecoverable`, `content_unrecoverable` | —                            | reported       |
//! | [`RecordDeadLettered`] | WARN (invalid) / ERROR | `records_invalid`/`_oversized`/`_refused` | `records_dead_lettered` (not for invalid) | reported |
//!
//! The pool's own occurrences, outside a blob's outcome, log only (they have no metric or
//! problem of their own; the queue's redelivery is the remedy):
//!
//! | event                  | level | what follows                                        |
//! |------------------------|-------|-----------------------------------------------------|
//! | [`WorkerPanicked`]     | ERROR | the worker starts again; its item comes back when its lease expires |
//! | [`LeaseFailed`]        | ERROR | the worker retries the lease on backoff             |
//! | [`QueueUpdateFailed`]  | WARN  | per [`QueueUpdate`]: the item is redelivered, or work repeats |

use chrono::{DateTime, Utc};

use crate::api::ApiError;
use crate::ops::events::{Telemetry, problem_kind};
use crate::ops::health::HeldBlob;
use crate::queue::{ContentKey, QueueError};

/// What to do about blobs refused without an AF code.
const REFUSED_ADVICE: &str = "nothing is needed while the blobs are not yet expired: each is retried on its backoff and, once its contentExpiration has passed by Microsoft's clock and a last fetch is refused, counted lost (content_refused_total); if many blobs are refused, check that api_url points at Microsoft's API for the tenant's cloud and whether Microsoft reports an incident";

/// What to do about other refusals that name no advice of their own.
pub const BAD_REQUEST_ADVICE: &str = "the API refused the blob request (see the AF code in the message); the connector retries every 15 minutes and keeps the content; if it persists, check the tenant's configuration (tenant_id, cloud, publisher_id) and report the message";

/// What to do while Microsoft's token endpoint fails.
pub const TOKEN_ENDPOINT_ADVICE: &str =
    "Microsoft's token endpoint is not answering; the connector retries by itself";

/// What to do about a refused token (credentials, consent).
pub const CREDENTIALS_ADVICE: &str = "check the tenant's credentials and the app registration";

/// The blob an event is about.
#[derive(Clone, Copy, Debug)]
pub struct Blob<'a> {
    /// The tenant's name.
    pub tenant: &'a str,
    /// The content type.
    pub content_type: &'a str,
    /// The contentId.
    pub content_id: &'a str,
}

/// Every record of the blob is settled: the pass completed it.
pub struct BlobCompleted<'a> {
    /// The blob.
    pub blob: Blob<'a>,
}

impl BlobCompleted<'_> {
    /// Counts `ok`; the type's fetches work again, and this blob is no longer refused.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        telemetry.count_blob(tenant, content_type, "ok");
        telemetry
            .problems
            .clear(tenant, content_type, &[problem_kind::FETCH_REFUSED]);
        telemetry.problems.release_blob(
            tenant,
            content_type,
            problem_kind::CONTENT_REFUSED,
            content_id,
        );
    }
}

/// The pass ended early or the fetch failed transiently: the item is retried on backoff.
pub struct BlobRetried<'a> {
    /// The blob.
    pub blob: Blob<'a>,
}

impl BlobRetried<'_> {
    /// Counts `retry` (the queue keeps the reason; nothing for the operator).
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.count_blob(self.blob.tenant, self.blob.content_type, "retry");
    }
}

/// The fetch failed for a reason shown on the board until a blob of the type completes.
pub struct FetchRefused<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// The failure.
    pub error: &'a ApiError,
    /// What to do about it.
    pub advice: &'a str,
    /// `retry` when it fixes itself (redirect, token endpoint down), else `refused`.
    pub outcome: &'static str,
}

impl FetchRefused<'_> {
    /// Counts the outcome and sets `fetch_refused` with the error and its advice.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            ..
        } = self.blob;
        telemetry.count_blob(tenant, content_type, self.outcome);
        telemetry.problems.set(
            tenant,
            content_type,
            problem_kind::FETCH_REFUSED,
            self.error.to_string(),
            self.advice,
            telemetry.now,
        );
    }
}

/// The subscription is missing or disabled: the subscription manager starts it and shows
/// its own problem; the item waits.
pub struct SubscriptionNotReady<'a> {
    /// The blob.
    pub blob: Blob<'a>,
}

impl SubscriptionNotReady<'_> {
    /// Counts `refused`.
    pub fn emit(self, telemetry: &Telemetry) {
        telemetry.count_blob(self.blob.tenant, self.blob.content_type, "refused");
    }
}

/// AF20051: the content expired before it could be fetched; its records are lost.
pub struct ContentExpired<'a> {
    /// The blob.
    pub blob: Blob<'a>,
}

impl ContentExpired<'_> {
    /// The dead-letter reason.
    pub const REASON: &'static str = "content expired before it could be fetched (AF20051)";

    /// Counts the loss, logs it as an ERROR and reports it to the console.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        telemetry.count_blob(tenant, content_type, "expired");
        telemetry.count_content(&telemetry.metrics.content_expired, tenant, content_type);
        tracing::error!(%tenant, content_type, content_id, "content expired before it could be fetched (AF20051): its records are lost");
        telemetry.report(
            tenant,
            content_type,
            "content expired before it could be fetched",
        );
    }
}

/// AF20050 after repeated attempts: the content is counted as missing.
pub struct ContentMissing<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// Attempts made, this one included.
    pub attempts: u32,
}

impl ContentMissing<'_> {
    /// The dead-letter reason.
    pub const REASON: &'static str = "content does not exist (AF20050) after repeated attempts";

    /// Counts it and logs it as an ERROR.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        telemetry.count_blob(tenant, content_type, "missing");
        telemetry.count_content(&telemetry.metrics.content_missing, tenant, content_type);
        tracing::error!(%tenant, content_type, content_id, attempts = self.attempts, "content still does not exist (AF20050); counted as missing");
    }
}

/// A contentUri outside the tenant's feed reached a worker (the intake checks each, so a
/// bug or a changed configuration): never fetched, kept as a dead letter.
pub struct ForeignUrlRefused<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// The refusal.
    pub error: &'a ApiError,
}

impl ForeignUrlRefused<'_> {
    /// Logs it as an ERROR and counts `foreign_url`.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        let error = self.error;
        tracing::error!(%tenant, content_type, content_id, %error, "refusing to fetch content from a foreign host");
        telemetry.count_blob(tenant, content_type, "foreign_url");
    }
}

/// The API refused the blob without an AF code before its `contentExpiration`: retried on
/// backoff, held on the board.
pub struct RefusedBlobRetried<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// Its listed `contentExpiration`.
    pub expiration: DateTime<Utc>,
    /// The refusal.
    pub error: &'a ApiError,
}

impl RefusedBlobRetried<'_> {
    /// Counts `retry`, holds the blob on `content_refused`; one WARN per blob, then DEBUG.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        let (expiration, error) = (self.expiration, self.error);
        telemetry.count_blob(tenant, content_type, "retry");
        let detail = format!("{content_id}: {error}");
        let held = HeldBlob {
            kind: problem_kind::CONTENT_REFUSED,
            content_id,
            summary: "refused by the API without an AF code (each retried until its contentExpiration passes)",
            detail: &detail,
            advice: REFUSED_ADVICE,
        };
        let first_report = telemetry
            .problems
            .hold_blob(tenant, content_type, held, telemetry.now);
        if first_report {
            tracing::warn!(%tenant, content_type, content_id, %expiration, %error, "the API refused the blob without an AF code; retrying on backoff until its contentExpiration passes by Microsoft's clock, then it is counted lost");
        } else {
            tracing::debug!(%tenant, content_type, content_id, %expiration, %error, "the API refused the blob again");
        }
    }
}

/// The API kept refusing the blob without an AF code until after its `contentExpiration`
/// by Microsoft's clock: a counted loss.
pub struct RefusedBlobExpired<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// Its listed `contentExpiration`.
    pub expiration: DateTime<Utc>,
    /// Microsoft's time of the last refusal.
    pub microsoft_time: DateTime<Utc>,
    /// The last refusal.
    pub error: &'a ApiError,
}

impl RefusedBlobExpired<'_> {
    /// The dead-letter reason.
    pub fn reason(&self) -> String {
        format!(
            "refused without an AF code until after its contentExpiration {} (Microsoft's time {}): {}",
            self.expiration, self.microsoft_time, self.error
        )
    }

    /// Counts the loss, logs it as an ERROR and reports it to the console.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        let (expiration, microsoft_time, error) =
            (self.expiration, self.microsoft_time, self.error);
        telemetry.count_content(&telemetry.metrics.content_refused, tenant, content_type);
        telemetry.count_blob(tenant, content_type, "refused_expired");
        tracing::error!(%tenant, content_type, content_id, %expiration, %microsoft_time, %error, "the API kept refusing the blob without an AF code until after its contentExpiration: dead-lettered, its records are lost");
        telemetry.report(
            tenant,
            content_type,
            "content refused by the API until it expired",
        );
    }
}

/// The blob's JSON structure is lost from `offset`: dead-lettered from that point.
pub struct BlobUnrecoverable<'a> {
    /// The blob.
    pub blob: Blob<'a>,
    /// The first record not read.
    pub index: u64,
    /// Where the structure broke, in bytes.
    pub offset: u64,
    /// The splitter's reason.
    pub reason: &'a str,
}

impl BlobUnrecoverable<'_> {
    /// Counts the loss, logs it as an ERROR and reports it to the console.
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        let (index, offset, reason) = (self.index, self.offset, self.reason);
        telemetry.count_content(
            &telemetry.metrics.content_unrecoverable,
            tenant,
            content_type,
        );
        telemetry.count_blob(tenant, content_type, "unrecoverable");
        tracing::error!(%tenant, content_type, content_id, index, offset, reason, "blob structure cannot be recovered; dead-lettered from this point");
        telemetry.report(tenant, content_type, "a content blob could not be parsed");
    }
}

/// Why a record is dead-lettered on its own while its blob goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordFault {
    /// Not valid UTF-8, not valid JSON, or not an object.
    Invalid,
    /// Its Log would exceed the engine's message limit.
    Oversized,
    /// The engine refused it every time it was sent alone.
    Refused,
}

/// A record was dead-lettered (its dead letter is stored) while its blob goes on.
pub struct RecordDeadLettered<'a> {
    /// The record's blob.
    pub blob: Blob<'a>,
    /// Why.
    pub fault: RecordFault,
    /// Its index in the blob.
    pub index: u64,
    /// Its bytes in the blob.
    pub byte_range: (u64, u64),
    /// The dead letter's reason.
    pub reason: &'a str,
}

impl RecordDeadLettered<'_> {
    /// Counts it in its fault's family and reports it to the console; an invalid record
    /// is a WARN, an oversized or refused one an ERROR with the records problem (a loss
    /// until requeued).
    pub fn emit(self, telemetry: &Telemetry) {
        let Blob {
            tenant,
            content_type,
            content_id,
        } = self.blob;
        let (index, reason) = (self.index, self.reason);
        let metrics = telemetry.metrics;
        let (family, what, advice) = match self.fault {
            RecordFault::Invalid => {
                telemetry.count_content(&metrics.records_invalid, tenant, content_type);
                tracing::warn!(%tenant, content_type, content_id, index, %reason, "invalid record dead-lettered");
                telemetry.report(tenant, content_type, "invalid records dead-lettered");
                return;
            }
            RecordFault::Oversized => (
                &metrics.records_oversized,
                "records too large for the engine dead-lettered",
                "raise the engine's gRPC receive limit and engine.max_message_bytes to match, then `o365-connector deadletters requeue` these records",
            ),
            RecordFault::Refused => (
                &metrics.records_refused,
                "records refused by the engine dead-lettered",
                "look in the engine's log for why it refused them, fix that, then `o365-connector deadletters requeue` these records",
            ),
        };
        telemetry.count_content(family, tenant, content_type);
        let (bytes_start, bytes_end) = self.byte_range;
        tracing::error!(%tenant, content_type, content_id, index, bytes_start, bytes_end, %reason, "record dead-lettered: it is lost until requeued");
        telemetry.report(tenant, content_type, what);
        telemetry.problems.set(
            tenant,
            content_type,
            problem_kind::RECORDS_DEAD_LETTERED,
            format!("{what}; last: contentId {content_id}, record {index}: {reason}"),
            advice,
            telemetry.now,
        );
    }
}

/// A worker panicked on an item; its supervisor starts it again.
pub struct WorkerPanicked {
    /// The worker's number.
    pub worker: usize,
}

impl WorkerPanicked {
    /// Logs it as an ERROR (a bug to report).
    pub fn emit(self) {
        tracing::error!(
            worker = self.worker,
            "a worker panicked; starting it again (its item is redelivered when its lease expires)"
        );
    }
}

/// A worker could not lease from the queue; it tries again on backoff.
pub struct LeaseFailed<'a> {
    /// The worker's number.
    pub worker: usize,
    /// The store's failure.
    pub error: &'a QueueError,
}

impl LeaseFailed<'_> {
    /// Logs it as an ERROR (no work moves while it lasts).
    pub fn emit(self) {
        let (worker, error) = (self.worker, self.error);
        tracing::error!(worker, %error, "cannot lease from the queue");
    }
}

/// The queue write a worker could not make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueUpdate {
    /// Recording the settled prefix: the next pass repeats some records.
    Progress,
    /// Completing the item: it is redelivered.
    Complete,
    /// Extending the lease: the pass goes on under the old one.
    ExtendLease,
    /// Recording where the blob's structure broke.
    BrokenAt,
    /// Retrying, releasing or dead-lettering the item: its lease expires and it is
    /// redelivered.
    Settle,
}

/// A worker's write to the queue failed; nothing is lost (the lease expires and the item
/// comes back), work may repeat.
pub struct QueueUpdateFailed<'a> {
    /// The item.
    pub key: &'a ContentKey,
    /// Which write.
    pub update: QueueUpdate,
    /// The store's failure.
    pub error: &'a QueueError,
}

impl QueueUpdateFailed<'_> {
    /// Logs a WARN saying what follows.
    pub fn emit(self) {
        let (key, error) = (self.key, self.error);
        match self.update {
            QueueUpdate::Progress => {
                tracing::warn!(%key, %error, "cannot record progress; the next pass repeats some records")
            }
            QueueUpdate::Complete => {
                tracing::warn!(%key, %error, "cannot complete the item; it will be redelivered")
            }
            QueueUpdate::ExtendLease => tracing::warn!(%key, %error, "cannot extend the lease"),
            QueueUpdate::BrokenAt => {
                tracing::warn!(%key, %error, "cannot record where the blob broke")
            }
            QueueUpdate::Settle => {
                tracing::warn!(%key, %error, "cannot update the queue item; it will be redelivered")
            }
        }
    }
}

//! Integration failures shown in UTMStack's console: the problems on the
//! [`ProblemBoard`] sent to the engine through `Notify` (topic `integration_failure`, body
//! `{"error", "dataType": "o365", "dataSource": <the tenant's name, i.e. the group>}`).
//!
//! Rule, per (tenant, problem kind): a notice when the problem first appears (or appears
//! again after it cleared), then at most one per hour while it persists. The board is
//! read every few seconds rather than hooked, so the components that set problems stay
//! unaware of the engine; a problem that appears and clears between two reads is not
//! sent (it shows in the logs and metrics). Failures that never reach the board (content
//! lost to AF20051, which is logged and counted) are not sent from here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::forward::Forwarder;
use crate::ops::health::ProblemBoard;

/// How often the board is read.
pub const BOARD_READ_INTERVAL: Duration = Duration::from_secs(2);
/// Least time between two notices of the same persisting problem.
pub const REPEAT_AFTER: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// One notice to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureNotice {
    /// The tenant's name (`dataSource`).
    pub tenant: String,
    /// The `error` text: kind, content types, message and advice (never a secret).
    pub error: String,
}

/// The content types of one (tenant, kind), by their (message, advice).
type MessagesOfKind<'a> = BTreeMap<(&'a str, &'a str), BTreeSet<&'a str>>;

/// Which problems were already announced, and when.
#[derive(Debug, Default)]
pub struct FailureNotices {
    last_sent: BTreeMap<(String, String), DateTime<Utc>>,
}

impl FailureNotices {
    /// The notices due for the board's current `snapshot` at `now`; forgets problems that
    /// cleared, so they are announced again if they come back.
    pub fn due(
        &mut self,
        snapshot: &[((String, String), crate::ops::health::Problem)],
        now: DateTime<Utc>,
    ) -> Vec<FailureNotice> {
        // Per (tenant, kind), each distinct message with the content types that have it:
        // content types failing differently are each reported with their own message.
        let mut current: BTreeMap<(String, String), MessagesOfKind> = BTreeMap::new();
        for ((tenant, content_type), problem) in snapshot {
            current
                .entry((tenant.clone(), problem.kind.clone()))
                .or_default()
                .entry((problem.message.as_str(), problem.advice.as_str()))
                .or_default()
                .insert(content_type.as_str());
        }
        self.last_sent.retain(|key, _| current.contains_key(key));
        let mut notices = Vec::new();
        for (key, messages) in current {
            let due = self
                .last_sent
                .get(&key)
                .is_none_or(|sent| now - *sent >= REPEAT_AFTER);
            if !due {
                continue;
            }
            let error = messages
                .into_iter()
                .map(|((message, advice), content_types)| {
                    let content_types: Vec<&str> = content_types.into_iter().collect();
                    format!(
                        "{} ({}): {message}. {advice}",
                        key.1,
                        content_types.join(", ")
                    )
                })
                .collect::<Vec<_>>()
                .join(" | ");
            notices.push(FailureNotice {
                tenant: key.0.clone(),
                error,
            });
            self.last_sent.insert(key, now);
        }
        notices
    }
}

/// Reads the board every [`BOARD_READ_INTERVAL`] and sends the due notices until
/// `shutdown`.
pub async fn run(
    board: Arc<ProblemBoard>,
    forwarder: Arc<Forwarder>,
    clock: Clock,
    shutdown: CancellationToken,
) {
    let mut notices = FailureNotices::default();
    loop {
        for notice in notices.due(&board.snapshot(), clock.now()) {
            tracing::info!(tenant = %notice.tenant, "integration failure sent to the engine");
            if !forwarder.notify_integration_failure(&notice.tenant, &notice.error) {
                tracing::warn!(tenant = %notice.tenant, "integration failure notice dropped");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(BOARD_READ_INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::health::Problem;

    fn problem(kind: &str, since: DateTime<Utc>) -> Problem {
        Problem {
            kind: kind.into(),
            message: "token request refused".into(),
            advice: "fix the secret".into(),
            since,
            count: None,
        }
    }

    fn snapshot(kind: &str, since: DateTime<Utc>) -> Vec<((String, String), Problem)> {
        ["Audit.Exchange", "DLP.All"]
            .iter()
            .map(|content_type| {
                (
                    ("contoso".to_string(), content_type.to_string()),
                    problem(kind, since),
                )
            })
            .collect()
    }

    #[test]
    fn new_problem_is_sent_once_per_tenant_and_kind_then_hourly() {
        let start = Utc::now();
        let mut notices = FailureNotices::default();
        let first = notices.due(&snapshot("subscription_failed", start), start);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].tenant, "contoso");
        assert!(first[0].error.contains("Audit.Exchange, DLP.All"));
        let later = start + chrono::TimeDelta::minutes(59);
        assert!(
            notices
                .due(&snapshot("subscription_failed", start), later)
                .is_empty()
        );
        let hour = start + REPEAT_AFTER;
        assert_eq!(
            notices
                .due(&snapshot("subscription_failed", start), hour)
                .len(),
            1
        );
    }

    #[test]
    fn content_types_failing_differently_are_each_reported_with_their_own_message() {
        let start = Utc::now();
        let failing = |content_type: &str, message: &str| {
            (
                ("contoso".to_string(), content_type.to_string()),
                Problem {
                    message: message.into(),
                    ..problem("fetch_refused", start)
                },
            )
        };
        let snapshot = vec![
            failing("Audit.Exchange", "blob failed with HTTP 404: null"),
            failing("DLP.All", "blob failed with HTTP 401: unauthorized"),
            failing("Audit.General", "blob failed with HTTP 404: null"),
        ];
        let notices = FailureNotices::default().due(&snapshot, start);
        assert_eq!(notices.len(), 1, "one notice per tenant and kind");
        let error = &notices[0].error;
        assert!(
            error.contains("fetch_refused (DLP.All): blob failed with HTTP 401"),
            "{error}"
        );
        assert!(
            error.contains(
                "fetch_refused (Audit.Exchange, Audit.General): blob failed with HTTP 404"
            ),
            "{error}"
        );
    }

    #[test]
    fn cleared_problem_is_sent_again_when_it_returns() {
        let start = Utc::now();
        let mut notices = FailureNotices::default();
        assert_eq!(
            notices.due(&snapshot("fetch_refused", start), start).len(),
            1
        );
        assert!(notices.due(&[], start).is_empty());
        assert_eq!(
            notices.due(&snapshot("fetch_refused", start), start).len(),
            1
        );
    }
}

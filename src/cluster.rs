//! Which replica leads: the one that runs the pollers and the subscription managers.
//!
//! Any replica accepts webhook calls and processes queued items, but listing content and
//! starting subscriptions must happen on one replica at a time (two pollers would spend the
//! tenant's request quota twice, two subscription managers would fight over the webhook).
//! With the embedded store there is one instance, which always leads ([`Leadership::sole`]).
//! With NATS, a lease in a key-value bucket decides ([`crate::queue::nats::leader`]) and
//! drives a [`Leadership::contested`] handle.
//!
//! Leading duties run under [`Leadership::run_while_leading`]: started when the lease is
//! won, cancelled (and awaited) as soon as it is lost. The lease task steps down before its
//! lease can expire on the NATS server, so the next holder never starts while the previous
//! one still runs.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What `/status` shows about the replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// This replica's id, when several replicas may run.
    pub replica_id: Option<String>,
    /// True when this replica runs the pollers and subscription managers.
    pub leading: bool,
    /// The replica holding the leader lease, as last seen (this one when `leading`).
    pub leader: Option<String>,
    /// When this replica last became leader, or saw the current leader first.
    pub leader_since: Option<DateTime<Utc>>,
}

/// A handle on this replica's leadership; clones share it.
#[derive(Clone, Debug)]
pub struct Leadership {
    state: watch::Sender<ClusterStatus>,
}

impl Leadership {
    /// A single instance: it always leads.
    pub fn sole() -> Self {
        let (state, _) = watch::channel(ClusterStatus {
            leading: true,
            ..ClusterStatus::default()
        });
        Self { state }
    }

    /// One replica among several: it leads only once [`Self::won`] is called.
    pub fn contested(replica_id: impl Into<String>) -> Self {
        let (state, _) = watch::channel(ClusterStatus {
            replica_id: Some(replica_id.into()),
            ..ClusterStatus::default()
        });
        Self { state }
    }

    /// True while this replica leads.
    pub fn is_leading(&self) -> bool {
        self.state.borrow().leading
    }

    /// The current state, for `/status`.
    pub fn status(&self) -> ClusterStatus {
        self.state.borrow().clone()
    }

    /// This replica holds the lease (from `now`, unless it already did).
    pub fn won(&self, now: DateTime<Utc>) {
        self.state.send_if_modified(|state| {
            if state.leading {
                return false;
            }
            state.leading = true;
            state.leader = state.replica_id.clone();
            state.leader_since = Some(now);
            true
        });
    }

    /// This replica does not hold the lease; `holder` is who does, when known.
    pub fn lost(&self, holder: Option<String>, now: DateTime<Utc>) {
        self.state.send_if_modified(|state| {
            let changed = state.leading || state.leader != holder;
            if changed {
                state.leading = false;
                state.leader_since = holder.as_ref().map(|_| now);
                state.leader = holder;
            }
            changed
        });
    }

    /// Runs `duty` each time this replica becomes leader, with a token cancelled when it
    /// stops leading or at `shutdown`; waits for the duty to end before it may start again.
    /// Returns at `shutdown`.
    pub async fn run_while_leading<F, Fut>(&self, shutdown: CancellationToken, mut duty: F)
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut changes = self.state.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                leading = changes.wait_for(|state| state.leading) => {
                    if leading.is_err() {
                        return;
                    }
                }
            }
            let token = shutdown.child_token();
            let running = duty(token.clone());
            tokio::pin!(running);
            let lost = tokio::select! {
                _ = &mut running => false,
                _ = changes.wait_for(|state| !state.leading) => true,
            };
            if lost {
                token.cancel();
                running.await;
                tracing::info!("no longer the leader: pollers and subscription managers stopped");
            } else if shutdown.is_cancelled()
                || changes.wait_for(|state| !state.leading).await.is_err()
            {
                // Shutdown, or the duty ended on its own: it starts again after the next
                // election.
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn duties_run_only_while_leading_and_stop_when_the_lease_is_lost() {
        let leadership = Leadership::contested("r1");
        let shutdown = CancellationToken::new();
        let running = Arc::new(AtomicU32::new(0));
        let started = Arc::new(AtomicU32::new(0));
        let task = {
            let leadership = leadership.clone();
            let running = running.clone();
            let started = started.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                leadership
                    .run_while_leading(shutdown, |token| {
                        let running = running.clone();
                        started.fetch_add(1, Ordering::SeqCst);
                        async move {
                            running.fetch_add(1, Ordering::SeqCst);
                            token.cancelled().await;
                            running.fetch_sub(1, Ordering::SeqCst);
                        }
                    })
                    .await;
            })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            started.load(Ordering::SeqCst),
            0,
            "not leading: nothing runs"
        );

        leadership.won(Utc::now());
        wait_for("the duty starts", || running.load(Ordering::SeqCst) == 1).await;
        assert_eq!(leadership.status().leader.as_deref(), Some("r1"));

        leadership.lost(Some("r2".into()), Utc::now());
        wait_for("the duty stops", || running.load(Ordering::SeqCst) == 0).await;
        assert_eq!(leadership.status().leader.as_deref(), Some("r2"));
        assert!(!leadership.is_leading());

        leadership.won(Utc::now());
        wait_for("it starts again", || started.load(Ordering::SeqCst) == 2).await;
        shutdown.cancel();
        task.await.unwrap();
    }
}

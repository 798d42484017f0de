//! The leader lease: which replica runs the pollers and the subscription managers.
//!
//! One key in the bucket `{prefix}_leader`, whose max age is the lease time. A replica takes
//! the lease by creating the key (which fails while someone holds it) and keeps it by
//! updating it every third of the lease time, each update naming the revision it last wrote
//! (so an update after someone else took over fails instead of stealing the lease). A holder
//! that dies stops updating; the server removes the key when its max age passes and the next
//! replica to try creates it.
//!
//! A holder steps down on its own when it could not renew for most of the lease: it counts
//! the lease from the moment it *sent* its last successful write, which is no later than the
//! server's timestamp of that write, and steps down a margin before that, so the server
//! cannot hand the lease to another replica while this one still polls.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::Leadership;

/// The key every replica competes for.
const KEY: &str = "poller";

/// The lease's bucket and this replica's claim on it.
pub struct LeaderLease {
    store: kv::Store,
    replica_id: String,
    lease: Duration,
    leadership: Leadership,
    clock: Clock,
}

impl LeaderLease {
    /// Opens (creating when missing) the bucket `{prefix}_leader` with max age `lease`.
    pub async fn open(
        jetstream: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        lease: Duration,
        replica_id: String,
        leadership: Leadership,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let store =
            super::open_bucket(jetstream, format!("{prefix}_leader"), lease, replicas).await?;
        let in_use = store
            .status()
            .await
            .map_or(lease, |status| status.max_age());
        if in_use != lease {
            tracing::warn!(
                configured_secs = lease.as_secs(),
                in_use_secs = in_use.as_secs(),
                "store.nats.leader_lease_secs differs from the leader bucket's max age, which stays in use; delete the bucket {prefix}_leader while no replica runs to change it"
            );
        }
        Ok(Self {
            store,
            replica_id,
            lease: in_use,
            leadership,
            clock,
        })
    }

    /// Takes and keeps the lease until `shutdown`. It is not handed back at shutdown: it
    /// ages out, so a replica stopping mid-poll can never overlap with the next holder.
    pub async fn run(self, shutdown: CancellationToken) {
        let renew_every = self.lease / 3;
        let margin = self.lease / 5;
        let retry_every = (self.lease / 6).max(Duration::from_millis(200));
        let mut revision: Option<u64> = None;
        let mut valid_until = Instant::now();
        loop {
            let sent = Instant::now();
            let value = bytes::Bytes::from(self.replica_id.clone());
            let result = match revision {
                None => self.store.create(KEY, value).await.map_err(Claim::from),
                Some(last) => self
                    .store
                    .update(KEY, value, last)
                    .await
                    .map_err(Claim::from),
            };
            let next = match result {
                Ok(written) => {
                    if revision.is_none() {
                        tracing::info!(replica = %self.replica_id, "took the leader lease: this replica polls and manages subscriptions");
                    }
                    revision = Some(written);
                    valid_until = sent + self.lease - margin;
                    self.leadership.won(self.clock.now());
                    sent + renew_every
                }
                Err(Claim::Held) => {
                    if revision.take().is_some() {
                        tracing::warn!(replica = %self.replica_id, "lost the leader lease to another replica");
                    }
                    let holder = self.holder().await;
                    self.leadership.lost(holder, self.clock.now());
                    Instant::now() + renew_every
                }
                Err(Claim::Failed(error)) => {
                    // A holder keeps trying until its lease runs out (checked below).
                    tracing::warn!(%error, "cannot reach the leader lease; trying again");
                    Instant::now() + retry_every
                }
            };
            // A holder wakes up at the latest when its lease is about to run out.
            let wake = if revision.is_some() {
                next.min(valid_until)
            } else {
                next
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.leadership.lost(None, self.clock.now());
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if revision.is_some() && Instant::now() >= valid_until {
                tracing::warn!(replica = %self.replica_id, "could not renew the leader lease in time; stepping down");
                revision = None;
                self.leadership.lost(None, self.clock.now());
            }
        }
    }

    async fn holder(&self) -> Option<String> {
        let value = self.store.get(KEY).await.ok()??;
        String::from_utf8(value.to_vec()).ok()
    }
}

/// Why a claim failed.
enum Claim {
    /// Someone else holds the lease (create: the key exists; update: another revision).
    Held,
    /// NATS could not be asked.
    Failed(String),
}

impl From<kv::CreateError> for Claim {
    fn from(error: kv::CreateError) -> Self {
        match error.kind() {
            kv::CreateErrorKind::AlreadyExists => Claim::Held,
            _ => Claim::Failed(error.to_string()),
        }
    }
}

impl From<kv::UpdateError> for Claim {
    fn from(error: kv::UpdateError) -> Self {
        match error.kind() {
            kv::UpdateErrorKind::WrongLastRevision => Claim::Held,
            _ => Claim::Failed(error.to_string()),
        }
    }
}

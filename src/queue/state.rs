//! The life of one queue item: its states and the one function that moves it between them.
//!
//! ```text
//!             lease (not_before passed)            complete
//!   Pending ───────────────────────────► Leased ───────────► Done (tombstone until contentExpiration)
//!      ▲  ◄─────────────────────────────  │  │
//!      │   release (no attempt counted),  │  └─ dead_letter ─► Dead { reason }
//!      │   retry_later (attempt counted)  │                        │
//!      └── lease expiry: the item can be leased again; the new lease counts the lost one as an attempt
//!      ▲                                                            │
//!      ├──────────── requeue (operator; attempts reset to 0) ◄──────┘
//!      │
//!      └──────────── redo records (operator; a done item with dead records) ◄── Done
//! ```
//!
//! Every transition out of `Leased` names the lease it acts under; a lease that is no longer the
//! current one (it expired and another worker leased the item) is refused with
//! [`TransitionError::StaleLease`], never applied. A lease that expired but was not yet taken by
//! anyone is still the current one, so a slow worker can still complete its item.
//! `Done` is final: only the tombstone purge removes it. `Dead` is final for the pipeline; only
//! an operator moves it on, with [`Transition::Requeue`] (`o365-connector deadletters requeue`),
//! back to `Pending`, due at once, with its attempts reset (the item's acked-record count is
//! kept, so records the engine already has are not sent again). A `Done` item leaves its
//! tombstone only by [`Transition::RedoRecords`]: an operator requeued the records it
//! dead-lettered, and it is pending again to send those alone (the queue checks that it has
//! dead records and that its content is still served; the state does not know either).

use chrono::{DateTime, Utc};

/// Identifies one lease of one item. Lease ids are unique for the lifetime of a store (they
/// come from a persisted counter), so a lease taken before a restart never matches a later one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "lease-{}", self.0)
    }
}

/// Where a queue item stands. `attempts` counts failed attempts so far: each `retry_later`
/// and each lease that expired without an outcome; a `release` (orderly shutdown) is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemState {
    /// Waiting for a worker; not leased before `not_before`.
    Pending {
        /// The earliest time the item may be leased.
        not_before: DateTime<Utc>,
        /// Failed attempts so far.
        attempts: u32,
    },
    /// A worker holds it until `until`; after that it can be leased again.
    Leased {
        /// The lease every later transition must name.
        lease: LeaseId,
        /// When the lease expires.
        until: DateTime<Utc>,
        /// Failed attempts before this lease.
        attempts: u32,
    },
    /// Every record was acked; kept as a tombstone so a repeated notification is a no-op.
    Done {
        /// When the tombstone may be purged: the content's expiration.
        tombstone_until: DateTime<Utc>,
    },
    /// Given up; the reason says why. Kept until an operator removes it.
    Dead {
        /// Why the item was given up (never record content).
        reason: String,
        /// Failed attempts before it was given up.
        attempts: u32,
    },
}

/// A request to move an item from one state to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Take a pending item whose `not_before` passed, or a leased item whose lease expired.
    Lease {
        /// The new lease.
        lease: LeaseId,
        /// When it expires.
        until: DateTime<Utc>,
    },
    /// Push the expiry of the current lease to `until`.
    Extend {
        /// The lease the caller holds.
        lease: LeaseId,
        /// The new expiry.
        until: DateTime<Utc>,
    },
    /// Every record is acked: keep a tombstone until `tombstone_until`.
    Complete {
        /// The lease the caller holds.
        lease: LeaseId,
        /// The content's expiration.
        tombstone_until: DateTime<Utc>,
    },
    /// The attempt failed; try again from `not_before`, counting one attempt.
    RetryLater {
        /// The lease the caller holds.
        lease: LeaseId,
        /// The earliest next attempt.
        not_before: DateTime<Utc>,
    },
    /// Give the item back untouched (shutdown): pending now, no attempt counted.
    Release {
        /// The lease the caller holds.
        lease: LeaseId,
        /// When it becomes leasable again (normally now).
        not_before: DateTime<Utc>,
    },
    /// Give up on the item.
    DeadLetter {
        /// The lease the caller holds.
        lease: LeaseId,
        /// Why (never record content).
        reason: String,
    },
    /// An operator puts a dead item back: pending from `not_before`, attempts reset. Only
    /// from `Dead`; it names no lease (dead items have none).
    Requeue {
        /// When it becomes leasable (normally now).
        not_before: DateTime<Utc>,
    },
    /// An operator requeues the dead records of a done item: pending from `not_before`,
    /// no attempt counted. Only from `Done`; it names no lease.
    RedoRecords {
        /// When it becomes leasable (normally now).
        not_before: DateTime<Utc>,
    },
}

/// Why a transition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The caller's lease is not the item's current lease (or the item is no longer leased).
    #[error("the lease is no longer held")]
    StaleLease,
    /// A lease was asked for an item that is not pending-and-due nor leased-and-expired.
    #[error("the item is not available for leasing")]
    NotLeasable,
    /// A requeue was asked for an item that is not dead.
    #[error("the item is not dead")]
    NotDead,
    /// A redo of dead records was asked for an item that is not done.
    #[error("the item is not done")]
    NotDone,
}

impl ItemState {
    /// Short lowercase name of the state, for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            ItemState::Pending { .. } => "pending",
            ItemState::Leased { .. } => "leased",
            ItemState::Done { .. } => "done",
            ItemState::Dead { .. } => "dead",
        }
    }

    /// True when `lease` names the item's current lease.
    pub fn is_leased_by(&self, lease: LeaseId) -> bool {
        matches!(self, ItemState::Leased { lease: current, .. } if *current == lease)
    }

    /// The one transition function: the state after `transition` at time `now`, or why not.
    pub fn apply(
        &self,
        transition: Transition,
        now: DateTime<Utc>,
    ) -> Result<ItemState, TransitionError> {
        match transition {
            Transition::Lease { lease, until } => return self.lease(lease, until, now),
            Transition::Requeue { not_before } => return self.requeue(not_before),
            Transition::RedoRecords { not_before } => return self.redo_records(not_before),
            _ => {}
        }
        let ItemState::Leased {
            lease: current,
            until: current_until,
            attempts,
        } = self
        else {
            return Err(TransitionError::StaleLease);
        };
        let attempts = *attempts;
        let (held, next) = match transition {
            Transition::Lease { .. }
            | Transition::Requeue { .. }
            | Transition::RedoRecords { .. } => {
                unreachable!("handled above")
            }
            Transition::Extend { lease, until } => {
                let until = until.max(*current_until);
                (
                    lease,
                    ItemState::Leased {
                        lease,
                        until,
                        attempts,
                    },
                )
            }
            Transition::Complete {
                lease,
                tombstone_until,
            } => (lease, ItemState::Done { tombstone_until }),
            Transition::RetryLater { lease, not_before } => (
                lease,
                ItemState::Pending {
                    not_before,
                    attempts: attempts.saturating_add(1),
                },
            ),
            Transition::Release { lease, not_before } => (
                lease,
                ItemState::Pending {
                    not_before,
                    attempts,
                },
            ),
            Transition::DeadLetter { lease, reason } => {
                (lease, ItemState::Dead { reason, attempts })
            }
        };
        if held != *current {
            return Err(TransitionError::StaleLease);
        }
        Ok(next)
    }

    fn requeue(&self, not_before: DateTime<Utc>) -> Result<ItemState, TransitionError> {
        match self {
            ItemState::Dead { .. } => Ok(ItemState::Pending {
                not_before,
                attempts: 0,
            }),
            _ => Err(TransitionError::NotDead),
        }
    }

    fn redo_records(&self, not_before: DateTime<Utc>) -> Result<ItemState, TransitionError> {
        match self {
            ItemState::Done { .. } => Ok(ItemState::Pending {
                not_before,
                attempts: 0,
            }),
            _ => Err(TransitionError::NotDone),
        }
    }

    fn lease(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ItemState, TransitionError> {
        match self {
            ItemState::Pending {
                not_before,
                attempts,
            } if *not_before <= now => Ok(ItemState::Leased {
                lease,
                until,
                attempts: *attempts,
            }),
            // The previous holder neither finished nor gave the item back: count it as an attempt.
            ItemState::Leased {
                until: expired,
                attempts,
                ..
            } if *expired <= now => Ok(ItemState::Leased {
                lease,
                until,
                attempts: attempts.saturating_add(1),
            }),
            _ => Err(TransitionError::NotLeasable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid timestamp")
    }

    fn leased(lease: u64, until: i64, attempts: u32) -> ItemState {
        ItemState::Leased {
            lease: LeaseId(lease),
            until: at(until),
            attempts,
        }
    }

    #[test]
    fn pending_item_is_leasable_only_once_due() {
        let pending = ItemState::Pending {
            not_before: at(10),
            attempts: 0,
        };
        let early = pending.apply(
            Transition::Lease {
                lease: LeaseId(1),
                until: at(70),
            },
            at(9),
        );
        assert_eq!(early, Err(TransitionError::NotLeasable));
        let due = pending.apply(
            Transition::Lease {
                lease: LeaseId(1),
                until: at(70),
            },
            at(10),
        );
        assert_eq!(due, Ok(leased(1, 70, 0)));
    }

    #[test]
    fn expired_lease_can_be_taken_and_counts_an_attempt() {
        let state = leased(1, 60, 0);
        let still_held = state.apply(
            Transition::Lease {
                lease: LeaseId(2),
                until: at(120),
            },
            at(59),
        );
        assert_eq!(still_held, Err(TransitionError::NotLeasable));
        let taken = state.apply(
            Transition::Lease {
                lease: LeaseId(2),
                until: at(120),
            },
            at(60),
        );
        assert_eq!(taken, Ok(leased(2, 120, 1)));
    }

    #[test]
    fn transitions_under_another_lease_are_refused() {
        let state = leased(2, 120, 1);
        let stale = state.apply(
            Transition::Complete {
                lease: LeaseId(1),
                tombstone_until: at(999),
            },
            at(61),
        );
        assert_eq!(stale, Err(TransitionError::StaleLease));
        let done = ItemState::Done {
            tombstone_until: at(999),
        };
        let after_done = done.apply(
            Transition::Release {
                lease: LeaseId(2),
                not_before: at(0),
            },
            at(0),
        );
        assert_eq!(after_done, Err(TransitionError::StaleLease));
    }

    #[test]
    fn release_keeps_attempts_and_retry_counts_one() {
        let state = leased(3, 60, 2);
        let released = state.apply(
            Transition::Release {
                lease: LeaseId(3),
                not_before: at(1),
            },
            at(1),
        );
        assert_eq!(
            released,
            Ok(ItemState::Pending {
                not_before: at(1),
                attempts: 2
            })
        );
        let retried = state.apply(
            Transition::RetryLater {
                lease: LeaseId(3),
                not_before: at(300),
            },
            at(1),
        );
        assert_eq!(
            retried,
            Ok(ItemState::Pending {
                not_before: at(300),
                attempts: 3
            })
        );
    }

    #[test]
    fn requeue_makes_a_dead_item_pending_with_attempts_reset_and_nothing_else() {
        let dead = ItemState::Dead {
            reason: "content expired".into(),
            attempts: 4,
        };
        let requeue = Transition::Requeue { not_before: at(5) };
        assert_eq!(
            dead.apply(requeue.clone(), at(5)),
            Ok(ItemState::Pending {
                not_before: at(5),
                attempts: 0
            })
        );
        let pending = ItemState::Pending {
            not_before: at(1),
            attempts: 2,
        };
        let done = ItemState::Done {
            tombstone_until: at(999),
        };
        for state in [pending, done, leased(1, 60, 0)] {
            assert_eq!(
                state.apply(requeue.clone(), at(5)),
                Err(TransitionError::NotDead),
                "{state:?}"
            );
        }
    }

    #[test]
    fn redo_records_makes_only_a_done_item_pending_again() {
        let done = ItemState::Done {
            tombstone_until: at(999),
        };
        let redo = Transition::RedoRecords { not_before: at(5) };
        assert_eq!(
            done.apply(redo.clone(), at(5)),
            Ok(ItemState::Pending {
                not_before: at(5),
                attempts: 0
            })
        );
        let dead = ItemState::Dead {
            reason: "content expired".into(),
            attempts: 4,
        };
        let pending = ItemState::Pending {
            not_before: at(1),
            attempts: 2,
        };
        for state in [dead, pending, leased(1, 60, 0)] {
            assert_eq!(
                state.apply(redo.clone(), at(5)),
                Err(TransitionError::NotDone),
                "{state:?}"
            );
        }
    }

    #[test]
    fn extend_never_shortens_a_lease() {
        let state = leased(4, 60, 0);
        let extended = state.apply(
            Transition::Extend {
                lease: LeaseId(4),
                until: at(30),
            },
            at(1),
        );
        assert_eq!(extended, Ok(leased(4, 60, 0)));
        let longer = state.apply(
            Transition::Extend {
                lease: LeaseId(4),
                until: at(60) + Duration::seconds(60),
            },
            at(1),
        );
        assert_eq!(longer, Ok(leased(4, 120, 0)));
    }
}

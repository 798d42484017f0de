//! The gate that bounds how many scheduled API operations of all tenants run at once: a
//! poll of one (tenant, content type) (its listing pages, its token if one is due) or a
//! subscription check of one tenant.
//!
//! Why: every tenant schedules its own polls and checks, and at start they are all due at
//! once. Unbounded, 10,000 tenants open 10,000 connections together (each with its buffers
//! and connection task, about 70 KiB), and the pool keeps them; every interval the burst
//! repeats. Through the gate they share a few connections of the one HTTP client, and their
//! schedules spread by themselves over the time the first round takes.
//!
//! Guarantee: at most `capacity` passes are out at once; waiters are admitted in the order
//! they arrived (tokio's semaphore is fair), so no tenant starves. A pass is held for one
//! operation, never across a sleep. Blob fetches by the workers do not pass the gate: the
//! worker count bounds them.

use std::num::NonZeroUsize;

use tokio::sync::{Semaphore, SemaphorePermit};

/// How many scheduled operations run at once by default: enough to keep a Management API
/// host busy at a few milliseconds per answer (thousands of listings a second), few enough
/// that connections and in-flight buffers stay a few MiB.
pub const DEFAULT_OPERATIONS_AT_ONCE: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// Admits a bounded number of scheduled API operations at once (see the module doc).
#[derive(Debug)]
pub struct RequestGate {
    permits: Semaphore,
}

/// Held while one operation runs; dropping it admits the next waiter.
pub struct GatePass<'a> {
    _permit: Option<SemaphorePermit<'a>>,
}

impl RequestGate {
    /// A gate admitting `capacity` operations at once.
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            permits: Semaphore::new(capacity.get()),
        }
    }

    /// Waits for a pass (in arrival order).
    pub async fn enter(&self) -> GatePass<'_> {
        // The semaphore is never closed, so `acquire` cannot fail; were it closed, the
        // operation would run unbounded rather than never.
        GatePass {
            _permit: self.permits.acquire().await.ok(),
        }
    }

    /// A pass from `gate` when there is one; an open way (no wait) when there is none, for
    /// components run without a gate (tests, single operations).
    pub async fn enter_if(gate: Option<&RequestGate>) -> GatePass<'_> {
        match gate {
            Some(gate) => gate.enter().await,
            None => GatePass { _permit: None },
        }
    }
}

impl Default for RequestGate {
    fn default() -> Self {
        Self::new(DEFAULT_OPERATIONS_AT_ONCE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::FutureExt;

    #[tokio::test]
    async fn no_more_than_the_capacity_is_admitted_and_a_returned_pass_admits_the_next() {
        let gate = RequestGate::new(NonZeroUsize::new(2).unwrap());
        let first = gate.enter().await;
        let _second = gate.enter().await;
        assert_eq!(gate.permits.available_permits(), 0);
        let third = gate.enter();
        tokio::pin!(third);
        assert!(
            third.as_mut().now_or_never().is_none(),
            "a third operation waits while two run"
        );
        drop(first);
        assert!(
            third.as_mut().now_or_never().is_some(),
            "a returned pass admits the waiter"
        );
    }
}

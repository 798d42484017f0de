//! The one retry policy of the connector, with named presets. Every operation that retries
//! picks a preset; delays grow exponentially with jitter, are capped, start over after a
//! success (each failure streak builds a new backoff), and yield to a server's
//! `Retry-After` when it asks for longer.
//!
//! The backoff arithmetic is backon's; this module only names the policies and adds the
//! `Retry-After` rule and the delay for the Nth attempt of a persisted work item.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// An exponential backoff policy: `min_delay`, doubling, jittered, capped at `max_delay`,
/// for at most `max_attempts` retries (`None`: forever).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub min_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
    /// Retries before giving up; `None` retries forever.
    pub max_attempts: Option<usize>,
    /// Add random jitter so that many clients do not retry in step.
    pub jitter: bool,
}

impl RetryPolicy {
    /// API calls and blob fetches: 1 s doubling to 5 minutes (Microsoft's own advice is
    /// minutes, and Elastic waits 5 minutes between errors), forever.
    pub const fn standard() -> Self {
        Self {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: None,
            jitter: true,
        }
    }

    /// Local peers that come back quickly (the engine socket): 100 ms doubling to 10 s.
    pub const fn aggressive() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
            jitter: true,
        }
    }

    /// No retry.
    pub const fn none() -> Self {
        Self {
            min_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
            max_attempts: Some(0),
            jitter: false,
        }
    }

    /// For tests: 10 ms doubling to 200 ms, no jitter, forever.
    pub const fn for_test() -> Self {
        Self {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
            max_attempts: None,
            jitter: false,
        }
    }

    fn builder(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0);
        let builder = match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts),
            None => builder.without_max_times(),
        };
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// A fresh backoff: the delays of one failure streak. Drop it after a success.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            delays: self.builder().build(),
        }
    }

    /// The delay before retry number `attempt` (1 = the first retry) of a work item whose
    /// attempts are counted elsewhere (e.g. persisted in the queue); `None` once the policy
    /// gives up.
    pub fn delay_for_attempt(&self, attempt: u32) -> Option<Duration> {
        let index = (attempt.max(1) - 1) as usize;
        self.builder().build().nth(index)
    }
}

/// The delays of one failure streak.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Backoff {
    /// The delay before the next attempt, or `None` when the policy gives up. A server's
    /// `Retry-After` wins when it is longer.
    pub fn next_delay(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let delay = self.delays.next()?;
        Some(retry_after.map_or(delay, |asked| asked.max(delay)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_retry_after_wins_when_longer() {
        let mut backoff = RetryPolicy::for_test().backoff();
        let delays: Vec<_> = (0..7).map(|_| backoff.next_delay(None).unwrap()).collect();
        // backon multiplies in f32: compare to the nearest millisecond.
        let millis: Vec<u64> = delays
            .iter()
            .map(|d| (d.as_secs_f64() * 1e3).round() as u64)
            .collect();
        assert_eq!(millis, [10, 20, 40, 80, 160, 200, 200]);
        assert_eq!(
            backoff.next_delay(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            backoff.next_delay(Some(Duration::from_millis(1))),
            Some(Duration::from_millis(200))
        );
    }

    #[test]
    fn jitter_differs_between_backoffs_so_items_that_failed_together_do_not_retry_in_step() {
        // A queue item's next attempt is `delay_for_attempt(attempts)`, one fresh backoff per
        // call: with a jitter that repeats, every item that failed N times waits exactly as
        // long, so items that failed together retry together and meet the same fault again.
        let policy = RetryPolicy::standard();
        let per_item: std::collections::HashSet<Duration> = (0..20)
            .map(|_| policy.delay_for_attempt(3).expect("retries forever"))
            .collect();
        assert!(
            per_item.len() > 1,
            "20 items at their third retry all wait {per_item:?}"
        );
        let first_delays: std::collections::HashSet<Duration> = (0..20)
            .map(|_| policy.backoff().next_delay(None).expect("retries forever"))
            .collect();
        assert!(
            first_delays.len() > 1,
            "20 fresh backoffs all start with {first_delays:?}"
        );
    }

    #[test]
    fn jitter_stays_within_the_cap_and_none_gives_up_at_once() {
        let policy = RetryPolicy::standard();
        let mut backoff = policy.backoff();
        for _ in 0..20 {
            let delay = backoff.next_delay(None).unwrap();
            assert!(
                delay >= policy.min_delay && delay <= policy.max_delay * 2,
                "{delay:?}"
            );
        }
        assert_eq!(RetryPolicy::none().backoff().next_delay(None), None);
        let third = RetryPolicy::for_test().delay_for_attempt(3).unwrap();
        assert!(third > Duration::from_millis(39) && third <= Duration::from_millis(40));
    }
}

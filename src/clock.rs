//! The one time source of the library.
//!
//! Every rule that depends on wall-clock time (token expiry, the API's 24-hour and 7-day
//! listing windows, content expiration, subscription spacing) reads the time through a
//! [`Clock`]. Production uses [`Clock::system`]; in-process tests use [`Clock::manual`] and
//! move time forward with [`Clock::advance`], so day-long rules are tested in milliseconds.
//! A clock is a cheap handle: clones share the same time, so a test can hand one clock to
//! the API emulator and to the connector and move both at once.
//!
//! The clock only answers "what time is it"; it does not drive timers. Code that waits
//! uses tokio's timers for real durations and the clock for the rules.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};

/// A shared handle on the current time: the system clock (optionally shifted by an
/// offset) or a manual clock that moves only when told to.
#[derive(Clone, Debug)]
pub struct Clock {
    state: Arc<Mutex<ClockState>>,
}

#[derive(Debug)]
enum ClockState {
    /// The system clock plus an offset (zero unless moved with [`Clock::advance`]).
    System { offset: Duration },
    /// A frozen instant that moves only through [`Clock::advance`] and [`Clock::set`].
    Manual { now: DateTime<Utc> },
}

impl Clock {
    /// The system clock: production time.
    pub fn system() -> Self {
        Self::from_state(ClockState::System {
            offset: Duration::zero(),
        })
    }

    /// A clock frozen at `start`, moved only by [`Clock::advance`] and [`Clock::set`].
    pub fn manual(start: DateTime<Utc>) -> Self {
        Self::from_state(ClockState::Manual { now: start })
    }

    fn from_state(state: ClockState) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The current time according to this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match &*self.lock() {
            ClockState::System { offset } => Utc::now() + *offset,
            ClockState::Manual { now } => *now,
        }
    }

    /// Moves the clock by `by` (which may be negative). On a system clock this shifts
    /// every later reading by the same amount; on a manual clock it moves the frozen time.
    pub fn advance(&self, by: Duration) {
        match &mut *self.lock() {
            ClockState::System { offset } => *offset += by,
            ClockState::Manual { now } => *now += by,
        }
    }

    /// Sets the clock to `to`: a manual clock jumps there, a system clock takes the offset
    /// that makes it read `to` now.
    pub fn set(&self, to: DateTime<Utc>) {
        match &mut *self.lock() {
            ClockState::System { offset } => *offset = to - Utc::now(),
            ClockState::Manual { now } => *now = to,
        }
    }

    /// True for a manual (frozen) clock.
    pub fn is_manual(&self) -> bool {
        matches!(&*self.lock(), ClockState::Manual { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The state is plain data with no invariant a panicking writer could break.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Clock::manual(start);
        let shared = clock.clone();
        assert_eq!(clock.now(), start);
        shared.advance(Duration::days(7));
        assert_eq!(clock.now(), start + Duration::days(7));
        clock.set(start);
        assert_eq!(shared.now(), start);
        assert!(clock.is_manual());
    }

    #[test]
    fn system_clock_can_be_shifted() {
        let clock = Clock::system();
        let before = Utc::now();
        clock.advance(Duration::hours(25));
        let shifted = clock.now();
        assert!(shifted >= before + Duration::hours(25));
        assert!(shifted < Utc::now() + Duration::hours(26));
        assert!(!clock.is_manual());
    }
}

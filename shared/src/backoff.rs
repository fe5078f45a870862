//! Exponential backoff between retries, shared by the extension's worker (delivery to Redis),
//! the module's connection pool and its mapping loader (connections to PostgreSQL). Pure: the
//! caller passes the current `Instant`, so the schedule is unit-tested without sleeping.

use std::time::{Duration, Instant};

/// Failures in a row and when the next attempt may be made.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// No failure yet (usable in a `static`).
    pub const fn new() -> Self {
        Backoff { failures: 0, retry_at: None }
    }

    /// The wait after the `failures`-th failure in a row (1-based): `first`, doubling each
    /// time, never more than `max` (nor less than `first`).
    pub fn wait_after(failures: u32, first: Duration, max: Duration) -> Duration {
        // Past 2^20 the cap has long been reached; the bound keeps the shift defined.
        let doublings = failures.saturating_sub(1).min(20);
        first.saturating_mul(1u32 << doublings).min(max.max(first))
    }

    /// Records a failure at `now`; returns how long to wait before the next attempt.
    pub fn fail(&mut self, now: Instant, first: Duration, max: Duration) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = Self::wait_after(self.failures, first, max);
        self.retry_at = Some(now + wait);
        wait
    }

    /// Records a success: the next failure waits `first` again.
    pub fn succeed(&mut self) {
        *self = Backoff::new();
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Time left at `now` before the next attempt (zero when one may be made).
    pub fn remaining(&self, now: Instant) -> Duration {
        self.retry_at.map(|t| t.saturating_duration_since(now)).unwrap_or_default()
    }

    /// Whether, at `now`, the next attempt must still wait.
    pub fn waiting(&self, now: Instant) -> bool {
        !self.remaining(now).is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn doubles_from_first_up_to_max() {
        let waits: Vec<u64> = (1..=7).map(|n| Backoff::wait_after(n, MS(100), MS(5000)).as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000]);
        assert_eq!(Backoff::wait_after(u32::MAX, MS(100), MS(5000)), MS(5000));
        // A max below first (settings in the wrong order) waits first.
        assert_eq!(Backoff::wait_after(3, MS(100), MS(10)), MS(100));
    }

    #[test]
    fn fail_wait_succeed() {
        let t0 = Instant::now();
        let mut b = Backoff::new();
        assert!(!b.waiting(t0));
        assert_eq!(b.fail(t0, MS(100), MS(1000)), MS(100));
        assert_eq!(b.fail(t0, MS(100), MS(1000)), MS(200));
        assert_eq!(b.failures(), 2);
        assert_eq!(b.remaining(t0), MS(200));
        assert_eq!(b.remaining(t0 + MS(150)), MS(50));
        assert!(b.waiting(t0 + MS(199)));
        assert!(!b.waiting(t0 + MS(200)));
        b.succeed();
        assert_eq!((b.failures(), b.remaining(t0)), (0, Duration::ZERO));
        assert_eq!(b.fail(t0, MS(100), MS(1000)), MS(100));
    }

    #[test]
    fn limits_may_change_between_failures() {
        // The worker reads its limits from settings that can change while it retries.
        let t0 = Instant::now();
        let mut b = Backoff::new();
        b.fail(t0, MS(100), MS(1000));
        b.fail(t0, MS(100), MS(1000));
        assert_eq!(b.fail(t0, MS(10), MS(1000)), MS(40));
    }
}

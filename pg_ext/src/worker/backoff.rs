//! Exponential backoff between retries, bounded by `pg_redis.retry_min_ms` / `retry_max_ms`.

use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone)]
pub struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Backoff {
    /// Records a failure; returns how long to wait.
    pub fn fail(&mut self, min: Duration, max: Duration) -> Duration {
        let wait = min.saturating_mul(1u32 << self.failures.min(20)).min(max.max(min));
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(Instant::now() + wait);
        wait
    }

    pub fn succeed(&mut self) {
        self.failures = 0;
        self.retry_at = None;
    }

    /// Time left before the next attempt (zero when one may be made now).
    pub fn remaining(&self) -> Duration {
        self.retry_at.map(|t| t.saturating_duration_since(Instant::now())).unwrap_or_default()
    }

    pub fn waiting(&self) -> bool {
        !self.remaining().is_zero()
    }
}

//! Counters for `PG.STATS` and `INFO redis_pg`, lock-free so the hit path stays cheap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// Fill latencies in power-of-two microsecond buckets: enough for p50/p99 within a factor of
/// two, without locks or allocation.
pub struct Latency {
    buckets: [AtomicU64; 32],
}

impl Latency {
    pub const fn new() -> Self {
        Latency { buckets: [const { AtomicU64::new(0) }; 32] }
    }

    fn reset(&self) {
        self.buckets.iter().for_each(|b| b.store(0, Ordering::Relaxed));
    }

    pub fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let b = (63 - us.leading_zeros()) as usize;
        if let Some(bucket) = self.buckets.get(b).or(self.buckets.last()) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..1), or 0 with no samples.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return 1u64 << (i + 1);
            }
        }
        1u64 << 32
    }
}

pub struct Stats {
    pub hits: Counter,
    pub misses: Counter,
    pub fills: Counter,
    pub negative_hits: Counter,
    pub joined_misses: Counter,
    pub stale_fills_refused: Counter,
    pub pg_queries: Counter,
    pub pg_errors: Counter,
    pub timeouts: Counter,
    pub busy: Counter,
    /// Reads run again on a new connection after their pooled one was found dead.
    pub pg_reconnects: Counter,
    pub fill_latency: Latency,
    /// Time PostgreSQL took to answer a read (on the pool thread).
    pub query_latency: Latency,
}

impl Stats {
    /// Back to zero (module unload: the next load starts fresh).
    pub fn reset(&self) {
        for c in [
            &self.hits,
            &self.misses,
            &self.fills,
            &self.negative_hits,
            &self.joined_misses,
            &self.stale_fills_refused,
            &self.pg_queries,
            &self.pg_errors,
            &self.timeouts,
            &self.busy,
            &self.pg_reconnects,
        ] {
            c.reset();
        }
        self.fill_latency.reset();
        self.query_latency.reset();
    }
}

pub static STATS: Stats = Stats {
    hits: Counter::new(),
    misses: Counter::new(),
    fills: Counter::new(),
    negative_hits: Counter::new(),
    joined_misses: Counter::new(),
    stale_fills_refused: Counter::new(),
    pg_queries: Counter::new(),
    pg_errors: Counter::new(),
    timeouts: Counter::new(),
    busy: Counter::new(),
    pg_reconnects: Counter::new(),
    fill_latency: Latency::new(),
    query_latency: Latency::new(),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let l = Latency::new();
        assert_eq!(l.quantile_us(0.5), 0);
        for _ in 0..99 {
            l.record(Duration::from_micros(300));
        }
        l.record(Duration::from_millis(20));
        assert_eq!(l.quantile_us(0.5), 512);
        assert_eq!(l.quantile_us(0.99), 512);
        assert_eq!(l.quantile_us(1.0), 32768);
    }
}

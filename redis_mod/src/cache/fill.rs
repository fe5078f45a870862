//! Storing a row read through: once, under its lease, only on a primary, with the TTL and its
//! jitter, through the command table (so it replicates and reaches the AOF like any write).

use super::leases::{abandon_lease, add_negative, consume_lease};
use crate::{config, guard, stats::STATS};
use pg_redis_shared::Encoded;
use redis_module::{CallOptionsBuilder, CallResult, Context};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A row read from PostgreSQL, to be stored under a lease by whichever waiting client's answer
/// reaches the main thread first.
pub struct Fill {
    pub key: Vec<u8>,
    pub token: u64,
    /// False when the row's own key differs from the key asked for (`users:042` for row 42):
    /// the row is answered but not stored, since no push would ever update that key.
    pub store: bool,
    /// The encoded row, or None when the row does not exist.
    pub value: Option<Encoded>,
    /// Seconds the key lives (mapping TTL or default_ttl); None: no expiry.
    pub ttl: Option<u64>,
    pub started: Instant,
    done: AtomicBool,
    /// Clients still to be answered; the last to leave unanswered drops the lease.
    pending: AtomicUsize,
}

impl Fill {
    pub fn new(
        key: Vec<u8>,
        token: u64,
        value: Option<(String, Encoded)>,
        ttl: Option<u64>,
        started: Instant,
        waiters: usize,
    ) -> Arc<Fill> {
        let store = value.as_ref().is_none_or(|(k, _)| k.as_bytes() == key.as_slice());
        let value = value.map(|(_, v)| v);
        Arc::new(Fill {
            key,
            token,
            store,
            value,
            ttl,
            started,
            done: AtomicBool::new(false),
            pending: AtomicUsize::new(waiters.max(1)),
        })
    }

    /// Stores the row (main thread), once, if the lease is still live.
    pub fn apply(&self, ctx: &Context) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        if !consume_lease(&self.key, self.token) {
            STATS.stale_fills_refused.inc();
            return;
        }
        if !self.store {
            return;
        }
        // Only a primary stores (a replica's data comes from its primary), and never past
        // maxmemory (the row is still answered).
        if !ctx.get_flags().contains(redis_module::ContextFlags::MASTER) {
            return;
        }
        match &self.value {
            None => add_negative(&self.key),
            Some(v) => {
                if let Err(e) = store(ctx, &self.key, v, self.ttl) {
                    guard::log_warning(&format!("could not cache {}: {e}", String::from_utf8_lossy(&self.key)));
                    return;
                }
            }
        }
        STATS.fills.inc();
        STATS.fill_latency.record(self.started.elapsed());
    }

    /// A waiting client left without an answer (timeout or disconnect).
    pub fn abandon(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 && !self.done.swap(true, Ordering::AcqRel) {
            abandon_lease(&self.key, self.token);
        }
    }
}

/// Writes a row with its TTL (plus jitter) through the command table, so that it is
/// replicated, written to the AOF and seen by client-side caching like any other write.
fn store(ctx: &Context, key: &[u8], value: &Encoded, ttl: Option<u64>) -> Result<(), String> {
    let opts = CallOptionsBuilder::new().replicate().verify_oom().errors_as_replies().build();
    let px = ttl.map(|t| jittered_ms(t).to_string());
    let check = |r: CallResult| r.map(|_| ()).map_err(|e| e.to_string());
    match value {
        Encoded::Json(s) => {
            let mut args: Vec<&[u8]> = vec![key, s.as_bytes()];
            if let Some(px) = &px {
                args.extend([b"PX".as_slice(), px.as_bytes()]);
            }
            check(ctx.call_ext("SET", &opts, args.as_slice()))
        }
        Encoded::Hash(fields) => {
            check(ctx.call_ext("DEL", &opts, [key].as_slice()))?;
            if fields.is_empty() {
                return Ok(());
            }
            let mut args: Vec<&[u8]> = Vec::with_capacity(1 + 2 * fields.len());
            args.push(key);
            for (f, v) in fields {
                args.push(f.as_bytes());
                args.push(v.as_bytes());
            }
            check(ctx.call_ext("HSET", &opts, args.as_slice()))?;
            match &px {
                Some(px) => check(ctx.call_ext("PEXPIRE", &opts, [key, px.as_bytes()].as_slice())),
                None => Ok(()),
            }
        }
    }
}

/// TTL in ms, lengthened by a random share of up to `ttl_jitter_pct`, so keys filled together
/// do not all expire together.
fn jittered_ms(ttl_s: u64) -> u64 {
    let base = ttl_s.saturating_mul(1000);
    let pct = config::ttl_jitter_pct();
    if pct == 0 || base == 0 {
        return base.max(1);
    }
    let r = random_u64() % (pct * 100 + 1);
    base + base * r / 10_000
}

fn random_u64() -> u64 {
    // xorshift seeded from the clock: spread, not secrecy.
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(88172645463325252)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

/// Seconds a filled key of this mapping lives.
pub fn ttl_for(mapping_ttl: Option<u32>) -> Option<u64> {
    mapping_ttl.map(u64::from).or_else(config::default_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        config::TTL_JITTER_PCT.store(10, Ordering::Relaxed);
        for _ in 0..1000 {
            let ms = jittered_ms(100);
            assert!((100_000..=110_000).contains(&ms), "{ms}");
        }
    }
}

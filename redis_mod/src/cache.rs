//! What makes read-through safe and cheap:
//!
//! - **Leases** (no stale fill): a miss takes a token for its key. Any write, delete, expiry or
//!   eviction of that key (seen through keyspace events, so pushes from a PostgreSQL worker
//!   that knows nothing of the module count too), `PG.INVALIDATE`, or a revoke signal from the
//!   worker (`pg_redis:revoke*`, written before it deletes keys) revokes the token. A fill
//!   stores its row only while its token is live, so a row read before a change can never
//!   overwrite that change.
//! - **Single flight**: concurrent misses of one key wait for one PostgreSQL query.
//! - **Negative entries**: a key whose row does not exist answers nil for `negative_ttl`
//!   without asking PostgreSQL again; any write of the key (the push of an insert) ends it.
//!
//! All of it lives in memory of this process: Redis's main thread takes the locks briefly, pool
//! threads only to hand over waiters.

use crate::blocking::Blocked;
use crate::{config, guard, stats::STATS};
use pg_redis_shared::apply::{REVOKE_KEY, REVOKE_PREFIX_KEY};
use pg_redis_shared::Encoded;
use redis_module::{CallOptionsBuilder, CallResult, Context};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

struct Lease {
    token: u64,
    live: bool,
}

static FLIGHTS: Mutex<Option<HashMap<Vec<u8>, Vec<Blocked>>>> = Mutex::new(None);
static LEASES: Mutex<Option<HashMap<Vec<u8>, Lease>>> = Mutex::new(None);
static NEGATIVE: Mutex<Option<HashMap<Vec<u8>, Instant>>> = Mutex::new(None);
/// Leases plus negative entries: lets the keyspace handler return at once when both are empty.
static WATCHED: AtomicUsize = AtomicUsize::new(0);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
const NEGATIVE_MAX: usize = 100_000;

fn with<K, V, R>(m: &Mutex<Option<HashMap<K, V>>>, f: impl FnOnce(&mut HashMap<K, V>) -> R) -> R {
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

/// How a miss proceeds.
pub enum Miss {
    /// This request queries PostgreSQL; fills need this token.
    Lead(u64),
    /// Another request is already querying this key: wait for its answer.
    Join,
}

/// Starts a miss of `key` (main thread).
pub fn begin_miss(key: &[u8]) -> Miss {
    let joined = with(&FLIGHTS, |f| {
        if f.contains_key(key) {
            true
        } else {
            f.insert(key.to_vec(), Vec::new());
            false
        }
    });
    if joined {
        STATS.joined_misses.inc();
        return Miss::Join;
    }
    Miss::Lead(take_lease(key))
}

/// A fresh lease for `key` (a newer one replaces any older one, whose fill is then refused).
pub fn take_lease(key: &[u8]) -> u64 {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    with(&LEASES, |l| {
        if l.insert(key.to_vec(), Lease { token, live: true }).is_none() {
            WATCHED.fetch_add(1, Ordering::Relaxed);
        }
    });
    token
}

/// Adds a client to the in-flight read of `key`; gives it back if that read already finished.
pub fn wait_for(key: &[u8], blocked: Blocked) -> Result<(), Blocked> {
    with(&FLIGHTS, |f| match f.get_mut(key) {
        Some(w) => {
            w.push(blocked);
            Ok(())
        }
        None => Err(blocked),
    })
}

/// Ends the in-flight read of `key` (pool thread): returns the clients that joined it.
pub fn end_flight(key: &[u8]) -> Vec<Blocked> {
    with(&FLIGHTS, |f| f.remove(key)).unwrap_or_default()
}

/// Consumes the lease if `token` still holds it: true means the fill may store.
fn consume_lease(key: &[u8], token: u64) -> bool {
    with(&LEASES, |l| match l.get(key) {
        Some(lease) if lease.token == token => {
            let live = lease.live;
            l.remove(key);
            WATCHED.fetch_sub(1, Ordering::Relaxed);
            live
        }
        _ => false,
    })
}

/// Drops a lease whose fill will never run (every waiting client left).
pub fn abandon_lease(key: &[u8], token: u64) {
    consume_lease(key, token);
}

/// A key changed, was deleted, expired or was evicted: revoke its lease, end its negative entry.
pub fn revoke(key: &[u8]) {
    if WATCHED.load(Ordering::Relaxed) == 0 {
        return;
    }
    with(&LEASES, |l| {
        if let Some(lease) = l.get_mut(key) {
            lease.live = false;
        }
    });
    if with(&NEGATIVE, |n| n.remove(key)).is_some() {
        WATCHED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `PG.INVALIDATE`: revoke even when nothing else is watched.
pub fn revoke_unconditionally(key: &[u8]) {
    with(&LEASES, |l| {
        if let Some(lease) = l.get_mut(key) {
            lease.live = false;
        }
    });
    if with(&NEGATIVE, |n| n.remove(key)).is_some() {
        WATCHED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every key starting with `prefix` (TRUNCATE of a table).
pub fn revoke_prefix(prefix: &[u8]) {
    with(&LEASES, |l| {
        for (k, lease) in l.iter_mut() {
            if k.starts_with(prefix) {
                lease.live = false;
            }
        }
    });
    let removed = with(&NEGATIVE, |n| {
        let before = n.len();
        n.retain(|k, _| !k.starts_with(prefix));
        before - n.len()
    });
    WATCHED.fetch_sub(removed, Ordering::Relaxed);
}

/// FLUSHALL / FLUSHDB: nothing cached before may be refilled by an older read.
pub fn revoke_all() {
    with(&LEASES, |l| l.values_mut().for_each(|lease| lease.live = false));
    let removed = with(&NEGATIVE, |n| std::mem::take(n).len());
    WATCHED.fetch_sub(removed, Ordering::Relaxed);
}

/// Keyspace events: any change of a key revokes; the worker's revoke signals name their keys.
pub fn on_keyspace_event(ctx: &Context, key: &[u8]) {
    if key.starts_with(b"pg_redis:") {
        if key == REVOKE_KEY.as_bytes() || key == REVOKE_PREFIX_KEY.as_bytes() {
            let target = read_string(ctx, key);
            if let Some(t) = target {
                if key == REVOKE_KEY.as_bytes() {
                    revoke(&t);
                } else {
                    revoke_prefix(&t);
                }
            }
        } else if key.starts_with(pg_redis_shared::apply::mappings_changed_key("").as_bytes()) {
            crate::mappings::request_reload();
        }
        return;
    }
    revoke(key);
}

fn read_string(ctx: &Context, key: &[u8]) -> Option<Vec<u8>> {
    let name = redis_module::RedisString::create_from_slice(ctx.ctx, key);
    let k = ctx.open_key(&name);
    k.read().ok().flatten().map(<[u8]>::to_vec)
}

/// Whether `key` is known to have no row (and the entry is still fresh).
pub fn negative_hit(key: &[u8]) -> bool {
    if WATCHED.load(Ordering::Relaxed) == 0 {
        return false;
    }
    with(&NEGATIVE, |n| match n.get(key) {
        Some(until) if *until > Instant::now() => true,
        Some(_) => {
            n.remove(key);
            WATCHED.fetch_sub(1, Ordering::Relaxed);
            false
        }
        None => false,
    })
}

fn add_negative(key: &[u8]) {
    let ttl = config::negative_ttl();
    if ttl.is_zero() {
        return;
    }
    with(&NEGATIVE, |n| {
        if n.len() >= NEGATIVE_MAX {
            let now = Instant::now();
            let before = n.len();
            n.retain(|_, until| *until > now);
            WATCHED.fetch_sub(before - n.len(), Ordering::Relaxed);
            if n.len() >= NEGATIVE_MAX {
                return;
            }
        }
        if n.insert(key.to_vec(), Instant::now() + ttl).is_none() {
            WATCHED.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// A row read from PostgreSQL, to be stored under a lease by whichever waiting client's answer
/// reaches the main thread first.
pub struct Fill {
    pub key: Vec<u8>,
    pub token: u64,
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
    pub fn new(key: Vec<u8>, token: u64, value: Option<Encoded>, ttl: Option<u64>, started: Instant, waiters: usize) -> Arc<Fill> {
        Arc::new(Fill { key, token, value, ttl, started, done: AtomicBool::new(false), pending: AtomicUsize::new(waiters.max(1)) })
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
    let opts = CallOptionsBuilder::new().replicate().errors_as_replies().build();
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
        x = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(88172645463325252) | 1;
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
    fn leases_are_revoked_by_changes() {
        let t = take_lease(b"k1");
        revoke(b"k1");
        assert!(!consume_lease(b"k1", t), "a revoked lease may not fill");
        let t = take_lease(b"k2");
        assert!(consume_lease(b"k2", t));
        assert!(!consume_lease(b"k2", t), "a lease fills once");
        let old = take_lease(b"k3");
        let new = take_lease(b"k3");
        assert!(!consume_lease(b"k3", old), "a newer miss supersedes an older one");
        assert!(consume_lease(b"k3", new));
        let t = take_lease(b"users:9");
        revoke_prefix(b"users:");
        assert!(!consume_lease(b"users:9", t));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        config::TTL_JITTER_PCT.store(10, Ordering::Relaxed);
        for _ in 0..1000 {
            let ms = jittered_ms(100);
            assert!((100_000..=110_000).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn single_flight_joins() {
        assert!(matches!(begin_miss(b"sf"), Miss::Lead(_)));
        assert!(matches!(begin_miss(b"sf"), Miss::Join));
        assert!(end_flight(b"sf").is_empty());
        assert!(matches!(begin_miss(b"sf"), Miss::Lead(_)));
        end_flight(b"sf");
    }
}

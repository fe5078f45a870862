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
use pg_redis_shared::apply::{MAPPINGS_CHANGED_PREFIX, RESERVED_PREFIX, REVOKE_KEY, REVOKE_PREFIX_KEY};
use pg_redis_shared::Encoded;
use redis_module::{CallOptionsBuilder, CallResult, Context};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Per key with reads in flight: when it was last revoked, how many fills are pending, and the
/// reads clients may join.
struct KeyState {
    /// The sequence number of the last revocation; a fill that started before it may not store.
    revoked_at: u64,
    pending: u32,
    flights: Vec<Flight>,
}

struct Flight {
    token: u64,
    waiters: Vec<Blocked>,
}

static KEYS: Mutex<Option<HashMap<Vec<u8>, KeyState>>> = Mutex::new(None);
static NEGATIVE: Mutex<Option<HashMap<Vec<u8>, Instant>>> = Mutex::new(None);
/// Keys in KEYS plus negative entries: lets the keyspace handler return at once when both are
/// empty.
static WATCHED: AtomicUsize = AtomicUsize::new(0);
/// One sequence for read starts and revocations: a read may store iff no revocation of its key
/// came after it started.
static SEQ: AtomicU64 = AtomicU64::new(1);
const NEGATIVE_MAX: usize = 100_000;
/// When the full negative map was last swept (sweeping is O(n); not on every insert).
static NEGATIVE_SWEPT: Mutex<Option<Instant>> = Mutex::new(None);

fn with<K, V, R>(m: &Mutex<Option<HashMap<K, V>>>, f: impl FnOnce(&mut HashMap<K, V>) -> R) -> R {
    let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(HashMap::new))
}

fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

fn state<'a>(keys: &'a mut HashMap<Vec<u8>, KeyState>, key: &[u8]) -> &'a mut KeyState {
    keys.entry(key.to_vec()).or_insert_with(|| {
        WATCHED.fetch_add(1, Ordering::Relaxed);
        KeyState { revoked_at: 0, pending: 0, flights: Vec::new() }
    })
}

fn forget_if_idle(keys: &mut HashMap<Vec<u8>, KeyState>, key: &[u8]) {
    if keys.get(key).is_some_and(|s| s.pending == 0 && s.flights.is_empty()) {
        keys.remove(key);
        WATCHED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a miss proceeds.
pub enum Miss {
    /// This request queries PostgreSQL, as read `token`.
    Lead(u64),
    /// A read of this key that started after its last change is in flight: wait for it.
    Join(u64),
}

/// Starts a miss of `key` (main thread).
pub fn begin_miss(key: &[u8]) -> Miss {
    with(&KEYS, |keys| {
        let st = state(keys, key);
        if let Some(f) = st.flights.iter().rev().find(|f| f.token > st.revoked_at) {
            STATS.joined_misses.inc();
            return Miss::Join(f.token);
        }
        let token = next_seq();
        st.pending += 1;
        st.flights.push(Flight { token, waiters: Vec::new() });
        Miss::Lead(token)
    })
}

/// A lease for a read that nobody can join (PG.MGET): its fill stores only if the key does not
/// change meanwhile.
pub fn take_lease(key: &[u8]) -> u64 {
    with(&KEYS, |keys| {
        let token = next_seq();
        state(keys, key).pending += 1;
        token
    })
}

/// Adds a client to read `token` of `key`; gives it back if that read already finished.
pub fn wait_for(key: &[u8], token: u64, blocked: Blocked) -> Result<(), Blocked> {
    with(&KEYS, |keys| match keys.get_mut(key).and_then(|s| s.flights.iter_mut().find(|f| f.token == token)) {
        Some(f) => {
            f.waiters.push(blocked);
            Ok(())
        }
        None => Err(blocked),
    })
}

/// Ends read `token` of `key` (pool thread): returns the clients that joined it.
pub fn end_flight(key: &[u8], token: u64) -> Vec<Blocked> {
    with(&KEYS, |keys| {
        let Some(st) = keys.get_mut(key) else { return Vec::new() };
        let waiters = match st.flights.iter().position(|f| f.token == token) {
            Some(i) => st.flights.swap_remove(i).waiters,
            None => Vec::new(),
        };
        forget_if_idle(keys, key);
        waiters
    })
}

/// Ends read `token`'s claim on `key`: true when it may store (no change since it started).
fn consume_lease(key: &[u8], token: u64) -> bool {
    with(&KEYS, |keys| {
        let Some(st) = keys.get_mut(key) else { return false };
        st.pending = st.pending.saturating_sub(1);
        let live = st.revoked_at < token;
        forget_if_idle(keys, key);
        live
    })
}

/// Drops a lease whose fill will never run (every waiting client left, or the read failed).
pub fn abandon_lease(key: &[u8], token: u64) {
    consume_lease(key, token);
}

/// A key changed, was deleted, expired or was evicted: revoke its reads, end its negative entry.
pub fn revoke(key: &[u8]) {
    if WATCHED.load(Ordering::Relaxed) == 0 {
        return;
    }
    revoke_unconditionally(key);
}

/// `PG.INVALIDATE`: revoke even when nothing else is watched.
pub fn revoke_unconditionally(key: &[u8]) {
    with(&KEYS, |keys| {
        if let Some(st) = keys.get_mut(key) {
            st.revoked_at = next_seq();
        }
    });
    if with(&NEGATIVE, |n| n.remove(key)).is_some() {
        WATCHED.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every key starting with `prefix` (TRUNCATE of a table).
pub fn revoke_prefix(prefix: &[u8]) {
    let seq = next_seq();
    with(&KEYS, |keys| {
        for (k, st) in keys.iter_mut() {
            if k.starts_with(prefix) {
                st.revoked_at = seq;
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
    let seq = next_seq();
    with(&KEYS, |keys| keys.values_mut().for_each(|st| st.revoked_at = seq));
    let removed = with(&NEGATIVE, |n| std::mem::take(n).len());
    WATCHED.fetch_sub(removed, Ordering::Relaxed);
}

/// Forgets everything (module unload: the library may stay mapped and keep its statics).
pub fn reset() {
    with(&KEYS, |keys| keys.clear());
    with(&NEGATIVE, |n| n.clear());
    WATCHED.store(0, Ordering::Relaxed);
}

/// Keyspace events: any change of a key revokes; the worker's revoke signals name their keys.
pub fn on_keyspace_event(ctx: &Context, key: &[u8]) {
    if key.starts_with(RESERVED_PREFIX.as_bytes()) {
        if key == REVOKE_KEY.as_bytes() || key == REVOKE_PREFIX_KEY.as_bytes() {
            let target = read_string(ctx, key);
            if let Some(t) = target {
                if key == REVOKE_KEY.as_bytes() {
                    revoke(&t);
                } else {
                    revoke_prefix(&t);
                }
            }
        } else if key.starts_with(MAPPINGS_CHANGED_PREFIX.as_bytes()) {
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
            // Sweep expired entries at most once a second; until there is room, remember no more.
            let now = Instant::now();
            let mut swept = NEGATIVE_SWEPT.lock().unwrap_or_else(|e| e.into_inner());
            if swept.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
                return;
            }
            *swept = Some(now);
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
    fn leases_are_revoked_by_changes() {
        let t = take_lease(b"k1");
        revoke(b"k1");
        assert!(!consume_lease(b"k1", t), "a revoked read may not fill");
        let t = take_lease(b"k2");
        assert!(consume_lease(b"k2", t));
        let a = take_lease(b"k3");
        let b = take_lease(b"k3");
        assert!(consume_lease(b"k3", b), "reads that saw no change both may fill");
        assert!(consume_lease(b"k3", a));
        let old = take_lease(b"k4");
        revoke(b"k4");
        let new = take_lease(b"k4");
        assert!(!consume_lease(b"k4", old), "a read older than the change may not");
        assert!(consume_lease(b"k4", new), "a read newer than the change may");
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
    fn single_flight_joins_only_fresh_reads() {
        let Miss::Lead(t1) = begin_miss(b"sf") else { panic!("first miss leads") }; // ok: unit test
        assert!(matches!(begin_miss(b"sf"), Miss::Join(t) if t == t1));
        revoke(b"sf");
        let Miss::Lead(t2) = begin_miss(b"sf") else { panic!("after a change, a new read leads") }; // ok: unit test
        assert!(matches!(begin_miss(b"sf"), Miss::Join(t) if t == t2));
        assert!(end_flight(b"sf", t1).is_empty());
        assert!(end_flight(b"sf", t2).is_empty());
        abandon_lease(b"sf", t1);
        abandon_lease(b"sf", t2);
        assert!(matches!(begin_miss(b"sf"), Miss::Lead(_)));
    }
}

//! Leases, single flight and negative entries: which read may store its row, which misses
//! join a read in flight, which keys are known to have no row. Plain data behind locks, no
//! Redis API: Redis's main thread takes the locks briefly, pool threads only to hand over
//! waiters.

use crate::blocking::Blocked;
use crate::{config, stats::STATS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
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
pub(super) fn consume_lease(key: &[u8], token: u64) -> bool {
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

pub(super) fn add_negative(key: &[u8]) {
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

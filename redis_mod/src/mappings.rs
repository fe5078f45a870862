//! The table mappings, as PostgreSQL's `redis.tables` has them. A thread of its own (with its
//! own connection) loads them at module load, whenever the extension signals a change (it
//! writes `pg_redis:mappings:<db>`, which the keyspace handler sees), on `PG.RELOAD`, and every
//! minute as a safety net. Loading never blocks Redis; until the first load succeeds, commands
//! that need a mapping answer with an error saying so.

use crate::guard;
use crate::pool::Session;
use pg_redis_shared::backoff::Backoff;
use pg_redis_shared::mapping::{CatalogRow, ACTIVE_MAPPINGS_SQL};
use pg_redis_shared::{Error, MappingSet, TableMapping};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

static CURRENT: RwLock<Option<Arc<MappingSet>>> = RwLock::new(None);
/// Why the last load failed (shown until one succeeds).
static LAST_ERROR: Mutex<String> = Mutex::new(String::new());
pub static LOADS: AtomicU64 = AtomicU64::new(0);

struct Wake {
    requested: Mutex<bool>,
    cv: Condvar,
}
static WAKE: Wake = Wake { requested: Mutex::new(false), cv: Condvar::new() };
static STOP: AtomicBool = AtomicBool::new(false);
static THREAD: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

const REFRESH: Duration = Duration::from_secs(60);
/// Wait after the first failed load, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(400);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The mappings in force, or why there are none yet.
pub fn current() -> Result<Arc<MappingSet>, Error> {
    if let Some(m) = CURRENT.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Ok(m.clone());
    }
    let why = LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Err(Error::Unavailable {
        server: "PostgreSQL",
        reason: if why.is_empty() {
            "the table mappings are still loading".into()
        } else {
            format!("the table mappings could not be loaded yet: {why}")
        },
    })
}

/// Whether `key` belongs to a mapped table (None while no mappings are loaded). The cache-hit
/// path asks this without cloning the set.
pub fn owns(key: &[u8]) -> Option<bool> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|m| m.owner_of(key).is_some())
}

/// Asks the loader thread for a reload (cheap; callable from any callback).
pub fn request_reload() {
    *WAKE.requested.lock().unwrap_or_else(|e| e.into_inner()) = true;
    WAKE.cv.notify_one();
}

/// Loads started, and the start number of the set installed (an older load never replaces a
/// newer one: PG.RELOAD and the loader thread may overlap).
static LOAD_SEQ: AtomicU64 = AtomicU64::new(0);
static INSTALLED_SEQ: AtomicU64 = AtomicU64::new(0);

/// Loads the mappings now on `session` and installs them.
pub fn load_with(session: &mut Session) -> Result<usize, Error> {
    let seq = LOAD_SEQ.fetch_add(1, Ordering::AcqRel) + 1;
    let rows = session.query(ACTIVE_MAPPINGS_SQL, &[]).map_err(|e| match e {
        e if e.is_undefined_table() => Error::Unavailable {
            server: "PostgreSQL",
            reason: "the pg_redis extension is not installed in the database redis_pg.pg_url names (CREATE EXTENSION pg_redis)".into(),
        },
        other => other,
    })?;
    let mut mappings = Vec::with_capacity(rows.len());
    for r in rows {
        // The catalog's constraints rule both failures out; a row that breaks them is skipped.
        let row = match CatalogRow::decode(&r) {
            Ok(Some(row)) => row,
            Ok(None) => {
                guard::log_warning("ignoring a mapping: a column that cannot be NULL is NULL");
                continue;
            }
            Err(e) => {
                guard::log_warning(&format!("ignoring a mapping: {e}"));
                continue;
            }
        };
        match TableMapping::try_from(row) {
            Ok(m) => mappings.push(m),
            Err(e) => guard::log_warning(&format!("ignoring a mapping: {e}")),
        }
    }
    let n = mappings.len();
    let mut current = CURRENT.write().unwrap_or_else(|e| e.into_inner());
    if INSTALLED_SEQ.load(Ordering::Acquire) < seq {
        *current = Some(Arc::new(MappingSet::new(mappings)));
        INSTALLED_SEQ.store(seq, Ordering::Release);
    }
    drop(current);
    LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()).clear();
    LOADS.fetch_add(1, Ordering::Relaxed);
    Ok(n)
}

pub fn start() {
    STOP.store(false, Ordering::Release);
    request_reload();
    match std::thread::Builder::new()
        .name("redis_pg-mappings".into())
        .spawn(|| guard::thread_body("the mapping loader", run))
    {
        Ok(t) => *THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
        Err(e) => guard::log_warning(&format!("cannot start the mapping loader: {e}")),
    }
}

pub fn stop() {
    {
        // Under the wake lock, so the thread cannot check the flag and then sleep through it.
        let _g = WAKE.requested.lock().unwrap_or_else(|e| e.into_inner());
        STOP.store(true, Ordering::Release);
        WAKE.cv.notify_all();
    }
    if let Some(t) = THREAD.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = t.join();
    }
    *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = None;
    INSTALLED_SEQ.store(0, Ordering::Release);
    LOAD_SEQ.store(0, Ordering::Release);
}

fn run() {
    let mut session = Session::default();
    let mut backoff = Backoff::new();
    let mut retry = Duration::ZERO;
    let mut next_refresh = Instant::now() + REFRESH;
    while !STOP.load(Ordering::Acquire) {
        let due = {
            let mut requested = WAKE.requested.lock().unwrap_or_else(|e| e.into_inner());
            if STOP.load(Ordering::Acquire) {
                break;
            }
            let failing = backoff.failures() > 0;
            let wait = if failing { retry } else { next_refresh.saturating_duration_since(Instant::now()) };
            if !*requested && !wait.is_zero() {
                requested = WAKE.cv.wait_timeout(requested, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
            let due = *requested || failing || Instant::now() >= next_refresh;
            *requested = false;
            due
        };
        if STOP.load(Ordering::Acquire) || !due {
            continue;
        }
        let mut outcome = Err(Error::Busy { what: "loader panicked".into() });
        guard::callback("loading mappings", || outcome = load_with(&mut session));
        match outcome {
            Ok(n) => {
                if backoff.failures() > 0 {
                    guard::log_notice(&format!("loaded {n} table mappings from PostgreSQL"));
                }
                backoff.succeed();
                next_refresh = Instant::now() + REFRESH;
            }
            Err(e) => {
                if backoff.failures() == 0 {
                    guard::log_warning(&format!("cannot load table mappings yet, retrying: {e}"));
                }
                *LAST_ERROR.lock().unwrap_or_else(|e| e.into_inner()) = e.to_string();
                // The loop sleeps this long (or until a reload is asked for), then tries again.
                retry = backoff.fail(Instant::now(), RETRY_FIRST, RETRY_MAX);
            }
        }
    }
}

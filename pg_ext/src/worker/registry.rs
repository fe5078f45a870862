//! Shared memory: one slot per database with a delivery worker (its pid, state and last error),
//! so that committing backends can wake it and `redis.status` can show it.

use pgrx::prelude::*;
use pgrx::{PGRXSharedMemory, PgLwLock};

pub const MAX_DATABASES: usize = 64;
const ERROR_LEN: usize = 240;

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum WorkerState {
    Free = 0,
    Starting = 1,
    Idle = 2,
    Delivering = 3,
    /// Redis is failing; the worker waits before retrying.
    Backoff = 4,
    /// The database is a copy of the one whose keys its outbox targets: nothing is delivered
    /// until an administrator adopts it (`redis.adopt_copy()`).
    Paused = 5,
}

impl WorkerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => WorkerState::Starting,
            2 => WorkerState::Idle,
            3 => WorkerState::Delivering,
            4 => WorkerState::Backoff,
            5 => WorkerState::Paused,
            _ => WorkerState::Free,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Free => "stopped",
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Delivering => "delivering",
            WorkerState::Backoff => "waiting to retry",
            WorkerState::Paused => "paused: copied database",
        }
    }
}

#[derive(Copy, Clone)]
pub struct Slot {
    dboid: u32,
    pid: i32,
    state: u8,
    /// Asked to stop for good (its database is being dropped or copied).
    stop: bool,
    /// The worker delivers from the replication slot: any writing commit may concern it.
    decodes: bool,
    /// The worker's PGPROC (shared memory, at the same address in every process): waking it
    /// at each writing commit must not take ProcArrayLock as a pid lookup does.
    proc_addr: usize,
    error_len: u16,
    error: [u8; ERROR_LEN],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            dboid: 0,
            pid: 0,
            state: 0,
            stop: false,
            decodes: false,
            proc_addr: 0,
            error_len: 0,
            error: [0; ERROR_LEN],
        }
    }
}

#[derive(Copy, Clone)]
pub struct Registry {
    slots: [Slot; MAX_DATABASES],
    launcher_pid: i32,
    /// Bumped when a database got the extension: the launcher then looks at every database.
    probe_requests: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { slots: [Slot::default(); MAX_DATABASES], launcher_pid: 0, probe_requests: 0 }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Registry {}

// SAFETY: the name is unique to this extension.
pub static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"pg_redis_registry") };

#[allow(unexpected_cfgs)] // pg_shmem_init! tests pg13..pg18 features in this crate
pub fn init_shmem() {
    pgrx::pg_shmem_init!(REGISTRY);
}

/// Shared memory exists only when the library was preloaded.
fn available() -> bool {
    crate::preloaded()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: BackendPidGetProc only reads the proc array under its lock.
    pid > 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

/// Takes the slot of `dboid` for this process. False when a live worker already holds it.
pub fn claim(dboid: pg_sys::Oid) -> bool {
    if !available() {
        return false;
    }
    let db = dboid.to_u32();
    // SAFETY: reading our own pid.
    let me = unsafe { pg_sys::MyProcPid };
    let mut reg = REGISTRY.exclusive();
    if let Some(s) = reg.slots.iter().find(|s| s.dboid == db) {
        if s.pid != me && process_alive(s.pid) {
            return false;
        }
    }
    let idx = reg
        .slots
        .iter()
        .position(|s| s.dboid == db)
        .or_else(|| reg.slots.iter().position(|s| s.dboid == 0 || !process_alive(s.pid)));
    match idx.and_then(|i| reg.slots.get_mut(i)) {
        Some(slot) => {
            *slot = Slot { dboid: db, pid: me, state: WorkerState::Starting as u8, ..Slot::default() };
            true
        }
        None => false,
    }
}

pub fn release(dboid: pg_sys::Oid) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let mut reg = REGISTRY.exclusive();
    for s in reg.slots.iter_mut().filter(|s| s.dboid == db) {
        *s = Slot::default();
    }
}

/// Records this database's worker state, and its last error (None keeps the previous one).
pub fn set_state(dboid: pg_sys::Oid, state: WorkerState, error: Option<&str>) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let mut reg = REGISTRY.exclusive();
    if let Some(s) = reg.slots.iter_mut().find(|s| s.dboid == db) {
        s.state = state as u8;
        if let Some(e) = error {
            // The longest prefix that fits and ends on a character boundary.
            let n = (0..=e.len().min(ERROR_LEN)).rev().find(|n| e.is_char_boundary(*n)).unwrap_or(0);
            if let (Some(to), Some(from)) = (s.error.get_mut(..n), e.as_bytes().get(..n)) {
                to.copy_from_slice(from);
                s.error_len = n as u16;
            }
        }
    }
}

/// (pid, state, last error) of the worker of `dboid`, if one runs.
pub fn info(dboid: pg_sys::Oid) -> Option<(i32, WorkerState, String)> {
    if !available() {
        return None;
    }
    let db = dboid.to_u32();
    let reg = REGISTRY.share();
    reg.slots.iter().find(|s| s.dboid == db && process_alive(s.pid)).map(|s| {
        (
            s.pid,
            WorkerState::from_u8(s.state),
            String::from_utf8_lossy(s.error.get(..s.error_len as usize).unwrap_or_default()).into_owned(),
        )
    })
}

pub fn set_launcher(pid: i32) {
    if !available() {
        return;
    }
    REGISTRY.exclusive().launcher_pid = pid;
}

/// Sets the latch of the worker of `dboid`. Safe at commit time: takes only LWLocks, never
/// raises an error.
pub fn wake(dboid: pg_sys::Oid) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let pid = REGISTRY.share().slots.iter().find(|s| s.dboid == db).map(|s| s.pid).unwrap_or(0);
    set_latch_of(pid);
}

/// Says whether the worker of `dboid` delivers from the replication slot.
pub fn set_decoding(dboid: pg_sys::Oid, decodes: bool) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let mut reg = REGISTRY.exclusive();
    if let Some(s) = reg.slots.iter_mut().find(|s| s.dboid == db) {
        s.decodes = decodes;
        // SAFETY: this process's own PGPROC, valid while it lives.
        s.proc_addr = unsafe { pg_sys::MyProc } as usize;
    }
}

/// Wakes the worker of `dboid` if it delivers from the replication slot.
pub fn wake_if_decoding(dboid: pg_sys::Oid) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let proc_addr = REGISTRY.share().slots.iter().find(|s| s.dboid == db && s.decodes).map(|s| s.proc_addr);
    if let Some(addr) = proc_addr.filter(|a| *a != 0) {
        // SAFETY: a PGPROC in shared memory, which lives as long as the cluster; should the
        // worker have exited since, its latch is reused or idle: a spurious wake-up at worst.
        unsafe { pg_sys::SetLatch(&raw mut (*(addr as *mut pg_sys::PGPROC)).procLatch) };
    }
}

/// Asks the worker of `dboid` to stop for good and waits (up to `timeout`) until it did.
pub fn stop_worker(dboid: pg_sys::Oid, timeout: std::time::Duration) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let pid = {
        let mut reg = REGISTRY.exclusive();
        match reg.slots.iter_mut().find(|s| s.dboid == db && process_alive(s.pid)) {
            Some(s) => {
                s.stop = true;
                s.pid
            }
            None => return,
        }
    };
    set_latch_of(pid);
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if info(dboid).is_none() {
            return;
        }
        // SAFETY: a plain sleep of the calling backend.
        unsafe { pg_sys::pg_usleep(10_000) };
    }
}

/// Withdraws a request to stop the worker of `dboid` (the statement that asked was refused):
/// a worker that has not stopped yet carries on.
pub fn allow_worker(dboid: pg_sys::Oid) {
    if !available() {
        return;
    }
    let db = dboid.to_u32();
    let mut reg = REGISTRY.exclusive();
    for s in reg.slots.iter_mut().filter(|s| s.dboid == db) {
        s.stop = false;
    }
}

/// Whether this database's worker was asked to stop for good.
pub fn stop_requested(dboid: pg_sys::Oid) -> bool {
    if !available() {
        return false;
    }
    let db = dboid.to_u32();
    REGISTRY.share().slots.iter().any(|s| s.dboid == db && s.stop)
}

/// Asks the launcher to start workers where missing (a database got the extension).
pub fn request_probe() {
    if !available() {
        return;
    }
    let pid = {
        let mut reg = REGISTRY.exclusive();
        reg.probe_requests = reg.probe_requests.wrapping_add(1);
        reg.launcher_pid
    };
    set_latch_of(pid);
}

pub fn probe_requests() -> u32 {
    if !available() {
        return 0;
    }
    REGISTRY.share().probe_requests
}

fn set_latch_of(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: the PGPROC lives in shared memory for the life of the cluster; setting the latch
    // of a proc that has since been reused is a harmless spurious wake-up.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&raw mut (*proc_).procLatch);
        }
    }
}

//! Waking the delivery worker at commit. The capture trigger (and `redis.on_commit`) only set a
//! flag; a transaction callback, registered once per process, sets the worker's latch when a
//! transaction that queued events commits. A rollback wakes nobody.
//!
//! Under WAL capture no trigger runs: the callback, registered in every process, wakes the
//! worker when a transaction that wrote anything commits in a database whose worker decodes
//! the WAL (one shared-memory read per writing commit; the worker finds out what it was).
//!
//! The callback also remembers which of this session's transactions queued events, so that
//! `redis.wait_synced()` can tell the session when one of its own changes was parked in
//! `redis.dead_letter`, even if the worker parked it before the call.

use crate::worker::registry;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_void;

/// How many of this session's writing transactions are remembered between two
/// `wait_synced()` calls; older ones are forgotten first.
const REMEMBERED_WRITES: usize = 4096;

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
    /// The committing transaction wrote (has a transaction id).
    static WROTE: Cell<bool> = const { Cell::new(false) };
    /// The committing transaction's id (as `txid_current()` gives it), taken at pre-commit.
    static COMMITTING: Cell<Option<i64>> = const { Cell::new(None) };
    /// Transactions of this session that queued events and committed, since the last check.
    static COMMITTED: RefCell<VecDeque<i64>> = const { RefCell::new(VecDeque::new()) };
    static PROBE: Cell<bool> = const { Cell::new(false) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Notes that this transaction queued events (cheap: called per captured row).
pub fn after_commit() {
    PENDING.set(true);
    register();
}

/// Notes that this transaction installs the extension: at commit, the launcher starts the
/// database's worker (it could not see the uncommitted extension before).
pub fn start_worker_after_commit() {
    PROBE.set(true);
    register();
}

/// This session's committed transactions that queued events since the last `forget_writes`.
pub fn committed_writes() -> Vec<i64> {
    COMMITTED.with_borrow(|c| c.iter().copied().collect())
}

/// Forgets the first `n` transactions `committed_writes` returned (they have been checked).
pub fn forget_writes(n: usize) {
    COMMITTED.with_borrow_mut(|c| {
        c.drain(..n.min(c.len()));
    });
}

/// Registers the callback in every process (called while the library is preloaded).
pub fn register_everywhere() {
    register();
}

fn register() {
    if !REGISTERED.get() {
        // SAFETY: registering a plain C callback with no state; done once per process.
        unsafe { pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut()) };
        REGISTERED.set(true);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // SAFETY: reading the id of the transaction being committed.
            let xid = unsafe { pg_sys::GetTopFullTransactionIdIfAny() }.value;
            WROTE.set(xid != 0);
            // Every writing transaction: under WAL capture its changes are queued nowhere the
            // session could see, and wait_synced still owes it word of any parked.
            COMMITTING.set((xid != 0).then_some(xid as i64));
        }
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if PENDING.replace(false) {
                // SAFETY: reading this backend's database id.
                registry::wake(unsafe { pg_sys::MyDatabaseId });
            } else if WROTE.get() {
                // SAFETY: reading this backend's database id.
                registry::wake_if_decoding(unsafe { pg_sys::MyDatabaseId });
            }
            WROTE.set(false);
            if let Some(xid) = COMMITTING.take() {
                COMMITTED.with_borrow_mut(|c| {
                    if c.len() == REMEMBERED_WRITES {
                        c.pop_front();
                    }
                    c.push_back(xid);
                });
            }
            if PROBE.replace(false) {
                registry::request_probe();
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            PENDING.set(false);
            WROTE.set(false);
            PROBE.set(false);
            COMMITTING.set(None);
        }
        _ => {}
    }
}

//! Waking the delivery worker at commit. The capture trigger (and `redis.on_commit`) only set a
//! flag; a transaction callback, registered once per process, sets the worker's latch when a
//! transaction that queued events commits. A rollback wakes nobody.

use crate::worker::registry;
use pgrx::prelude::*;
use std::cell::Cell;
use std::ffi::c_void;

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
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
        XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => {
            if PENDING.replace(false) {
                // SAFETY: reading this backend's database id.
                registry::wake(unsafe { pg_sys::MyDatabaseId });
            }
            if PROBE.replace(false) {
                registry::request_probe();
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            PENDING.set(false);
            PROBE.set(false);
        }
        _ => {}
    }
}

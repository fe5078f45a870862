//! The utility hook: statements the extension must take part in.
//!
//! - DROP DATABASE (and CREATE DATABASE ... TEMPLATE, which needs the template unused) would
//!   collide with the database's connected delivery worker: the worker is stopped first. The
//!   statement may still be refused (not the owner, other sessions, a transaction block, a
//!   taken name): whatever the outcome, the worker is allowed again and the launcher asked to
//!   start what is missing, so a refused statement never stops delivery (after a copy the
//!   template's worker comes back, and the copy's starts).
//! - DDL on synced tables that event triggers cannot follow exactly (partitions leaving or
//!   joining, column renames): see `crate::ddl`.

use crate::ddl;
use crate::worker::registry;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// The hook that was installed before ours (called in its place), set once.
static PREVIOUS: std::sync::OnceLock<pg_sys::ProcessUtility_hook_type> = std::sync::OnceLock::new();

pub fn install() {
    // SAFETY: hooks are chained once, in _PG_init of the postmaster, before any statement runs.
    unsafe {
        if PREVIOUS.set(pg_sys::ProcessUtility_hook).is_ok() {
            pg_sys::ProcessUtility_hook = Some(process_utility);
        }
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: the planned statement and its utility node are valid for this call.
    let stopped = unsafe { stop_colliding_worker(pstmt) };
    // SAFETY: as above.
    let followups = unsafe { ddl::before(pstmt) };
    let run = AssertUnwindSafe(|| {
        // SAFETY: passing our arguments on unchanged.
        unsafe {
            match PREVIOUS.get().copied().flatten() {
                Some(prev) => prev(pstmt, query, read_only_tree, context, params, env, dest, qc),
                None => pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc),
            }
        }
    });
    if let Some(dboid) = stopped {
        // SAFETY: as above.
        let dropping = unsafe { (*(*pstmt).utilityStmt).type_ == pg_sys::NodeTag::T_DropdbStmt };
        // Refused: the stopped worker runs again at once. Succeeded: a copied template gets its
        // worker back and the copy its own once committed; a dropped database is asked for no
        // worker (before its commit the launcher would still see it, and start one that could
        // only fail from then on).
        PgTryBuilder::new(run)
            .catch_others(move |e| {
                registry::allow_worker(dboid);
                registry::request_probe();
                e.rethrow()
            })
            .execute();
        registry::allow_worker(dboid);
        if !dropping {
            registry::request_probe();
            // A new database becomes visible to the launcher only once committed.
            crate::capture::wake::start_worker_after_commit();
        }
    } else {
        (run.0)();
    }
    ddl::after(followups);
}

/// Stops the worker a database statement would collide with; the database's oid if one was
/// asked to stop.
unsafe fn stop_colliding_worker(pstmt: *mut pg_sys::PlannedStmt) -> Option<pg_sys::Oid> {
    // SAFETY: see the caller.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return None;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let stmt = node as *mut pg_sys::DropdbStmt;
                stop(CStr::from_ptr((*stmt).dbname))
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let stmt = node as *mut pg_sys::CreatedbStmt;
                let list = (*stmt).options;
                let mut stopped = None;
                if !list.is_null() {
                    for i in 0..(*list).length as usize {
                        let def = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
                        if !def.is_null()
                            && CStr::from_ptr((*def).defname).to_bytes() == b"template"
                            && !(*def).arg.is_null()
                        {
                            let name = pg_sys::defGetString(def);
                            stopped = stop(CStr::from_ptr(name));
                        }
                    }
                }
                stopped
            }
            _ => None,
        }
    }
}

fn stop(dbname: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup by name; missing databases are left to the statement to report.
    let oid = unsafe { pg_sys::get_database_oid(dbname.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        return None;
    }
    registry::stop_worker(oid, Duration::from_secs(10));
    Some(oid)
}

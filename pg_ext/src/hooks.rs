//! A utility hook for the statements a connected delivery worker would block: DROP DATABASE
//! (and CREATE DATABASE ... TEMPLATE, which needs the template to be unused) stop the
//! database's worker first; after a copy, the launcher starts the template's worker again.

use crate::worker::registry;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

pub fn install() {
    // SAFETY: hooks are chained once, in _PG_init of the postmaster.
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
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
    let copied_template = unsafe { before(pstmt) };
    // SAFETY: passing our arguments on unchanged.
    unsafe {
        match PREVIOUS {
            Some(prev) => prev(pstmt, query, read_only_tree, context, params, env, dest, qc),
            None => pg_sys::standard_ProcessUtility(pstmt, query, read_only_tree, context, params, env, dest, qc),
        }
    }
    if copied_template {
        registry::request_probe();
    }
}

/// Stops the worker a statement would collide with; true when a template was copied.
unsafe fn before(pstmt: *mut pg_sys::PlannedStmt) -> bool {
    // SAFETY: see the caller.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return false;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let stmt = node as *mut pg_sys::DropdbStmt;
                stop(CStr::from_ptr((*stmt).dbname));
                false
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let stmt = node as *mut pg_sys::CreatedbStmt;
                let list = (*stmt).options;
                let mut copied = false;
                if !list.is_null() {
                    for i in 0..(*list).length as usize {
                        let def = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::DefElem;
                        if !def.is_null() && CStr::from_ptr((*def).defname).to_bytes() == b"template" && !(*def).arg.is_null() {
                            let name = pg_sys::defGetString(def);
                            stop(CStr::from_ptr(name));
                            copied = true;
                        }
                    }
                }
                copied
            }
            _ => false,
        }
    }
}

fn stop(dbname: &CStr) {
    // SAFETY: a catalog lookup by name; missing databases are left to the statement to report.
    let oid = unsafe { pg_sys::get_database_oid(dbname.as_ptr(), true) };
    if oid != pg_sys::InvalidOid {
        registry::stop_worker(oid, Duration::from_secs(10));
    }
}

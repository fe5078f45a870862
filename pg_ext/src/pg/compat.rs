//! Version differences: object ownership checks (one function per catalog until 15, one for
//! all catalogs since 16), the local transaction id (inside the virtual transaction id since
//! 17), where a tuple descriptor keeps its attributes (after the compact ones since 18), the
//! arguments of enabling a trigger (a parent and recursion since 16), and where a decoded
//! row change keeps its tuples (in a buffer until 16).

use pgrx::pg_sys;

/// Whether `role` owns the relation `relid` (or is a superuser, as PostgreSQL's checks say).
pub fn owns_relation(relid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    // SAFETY: a catalog lookup on the backend's main thread.
    unsafe {
        pg_sys::pg_class_ownercheck(relid, role)
    }
    #[cfg(not(feature = "pg15"))]
    // SAFETY: a catalog lookup on the backend's main thread.
    unsafe {
        pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, role)
    }
}

/// This backend's local transaction id (changes with every top-level transaction).
pub fn local_transaction_id() -> u32 {
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    // SAFETY: MyProc is this backend's own PGPROC, valid for its whole life.
    unsafe {
        (*pg_sys::MyProc).lxid
    }
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    // SAFETY: as above.
    unsafe {
        (*pg_sys::MyProc).vxid.lxid
    }
}

/// The attributes of a tuple descriptor, in column order (dropped ones included).
///
/// # Safety
/// `tupdesc` is a valid descriptor that outlives the returned slice.
pub unsafe fn attributes<'a>(tupdesc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: see the function's contract; natts counts the attributes stored.
    unsafe {
        let natts = (*tupdesc).natts.max(0) as usize;
        #[cfg(not(feature = "pg18"))]
        let first = (*tupdesc).attrs.as_ptr();
        #[cfg(feature = "pg18")]
        let first = (*tupdesc).compact_attrs.as_ptr().add(natts).cast::<pg_sys::FormData_pg_attribute>();
        std::slice::from_raw_parts(first, natts)
    }
}

/// Makes the trigger `name` of the open relation `rel` fire in every replication role
/// (`ENABLE ALWAYS`), on that relation only.
///
/// # Safety
/// `rel` is open with at least `lockmode`; `name` names one of its triggers.
pub unsafe fn enable_trigger_always(rel: pg_sys::Relation, name: &std::ffi::CStr, lockmode: i32) {
    let always = pg_sys::TRIGGER_FIRES_ALWAYS as std::ffi::c_char;
    #[cfg(feature = "pg15")]
    // SAFETY: see the function's contract.
    unsafe {
        pg_sys::EnableDisableTrigger(rel, name.as_ptr(), always, false, lockmode)
    }
    #[cfg(not(feature = "pg15"))]
    // SAFETY: see the function's contract; no parent trigger, no recursion.
    unsafe {
        pg_sys::EnableDisableTrigger(rel, name.as_ptr(), pg_sys::InvalidOid, always, false, false, lockmode)
    }
}

/// The old and new tuples of a decoded row change (either may be null): inside a buffer until
/// 16, the tuple itself since 17.
///
/// # Safety
/// `change` is a live INSERT, UPDATE or DELETE change handed to an output plugin callback.
pub unsafe fn decoded_tuples(change: *const pg_sys::ReorderBufferChange) -> (pg_sys::HeapTuple, pg_sys::HeapTuple) {
    // SAFETY: see the function's contract; `tp` is the union member of row changes.
    let tp = unsafe { (*change).data.tp };
    #[cfg(any(feature = "pg15", feature = "pg16"))]
    {
        let tuple = |b: *mut pg_sys::ReorderBufferTupleBuf| {
            if b.is_null() {
                std::ptr::null_mut()
            } else {
                // SAFETY: a non-null buffer of this change, which holds its tuple inline.
                unsafe { &raw mut (*b).tuple }
            }
        };
        (tuple(tp.oldtuple), tuple(tp.newtuple))
    }
    #[cfg(not(any(feature = "pg15", feature = "pg16")))]
    {
        (tp.oldtuple, tp.newtuple)
    }
}

/// Releases the replication slot this process holds, if any, and drops its temporary and
/// half-created ones: what PostgresMain does after an ERROR (a background worker that catches
/// errors must do it itself).
pub fn release_replication_slots() {
    // SAFETY: PostgreSQL's own cleanup, called outside any transaction after an abort.
    unsafe {
        if !pg_sys::MyReplicationSlot.is_null() {
            pg_sys::ReplicationSlotRelease();
        }
        #[cfg(any(feature = "pg15", feature = "pg16"))]
        pg_sys::ReplicationSlotCleanup();
        #[cfg(not(any(feature = "pg15", feature = "pg16")))]
        pg_sys::ReplicationSlotCleanup(false);
    }
}

//! Relations through the catalog caches: by name, their owner, whether one is a partition, and
//! the locks taken on them outside a statement's own.

use pgrx::prelude::*;
use std::ffi::CStr;

/// The relation `schema.name` (exact names, no search path), if there is one.
pub fn relation_oid(schema: &CStr, name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: syscache lookups on the backend's main thread.
    let rel = unsafe {
        let nsp = pg_sys::get_namespace_oid(schema.as_ptr(), true);
        if nsp == pg_sys::InvalidOid {
            return None;
        }
        pg_sys::get_relname_relid(name.as_ptr(), nsp)
    };
    (rel != pg_sys::InvalidOid).then_some(rel)
}

/// The owner of a relation, through the relcache (cheap enough for a trigger, and invalidated
/// by PostgreSQL itself); None if there is no such relation.
pub fn relation_owner(rel: pg_sys::Oid) -> Option<pg_sys::Oid> {
    // SAFETY: a relcache lookup on the backend's main thread; the entry is closed after reading.
    unsafe {
        let r = pg_sys::RelationIdGetRelation(rel);
        if r.is_null() {
            return None;
        }
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        Some(owner)
    }
}

/// Whether the relation is a partition of another.
pub fn is_partition(rel: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup.
    unsafe { pg_sys::get_rel_relispartition(rel) }
}

/// The lock modes taken here (PostgreSQL's numbering).
#[derive(Clone, Copy)]
pub enum Lock {
    Share = pg_sys::ShareLock as isize,
    AccessExclusive = pg_sys::AccessExclusiveLock as isize,
}

/// Takes `mode` on the relation until the end of the transaction.
pub fn lock_relation(rel: pg_sys::Oid, mode: Lock) {
    // SAFETY: a lock in the current transaction, released at its end.
    unsafe { pg_sys::LockRelationOid(rel, mode as i32) };
}

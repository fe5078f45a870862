//! Who may do what. The functions of schema `redis` are not executable by PUBLIC (an
//! administrator grants them); `sync_table` and friends also require owning the table. Their
//! writes to pg_redis's own catalog then run as the extension's owner, so a table owner never
//! needs (and never gets) the right to write the outbox directly, which would let them invent
//! changes.

use crate::errors::raise_with;
use pgrx::prelude::*;

/// Raises insufficient_privilege unless the current user owns the table.
pub fn require_owner(oid: pg_sys::Oid, display: &str) {
    // SAFETY: catalog lookups on the backend's main thread.
    let owns = unsafe { pg_sys::pg_class_ownercheck(oid, pg_sys::GetUserId()) };
    if !owns {
        raise_with(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {display} to sync it to Redis"), None);
    }
}

/// Runs `f` as the extension's owner. An ERROR inside unwinds through the transaction abort,
/// which restores the previous user by itself.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = Spi::get_one::<pg_sys::Oid>("SELECT extowner FROM pg_extension WHERE extname = 'pg_redis'").ok().flatten();
    let Some(owner) = owner else { return f() };
    let (mut saved_user, mut saved_ctx) = (pg_sys::InvalidOid, 0);
    // SAFETY: the documented save/switch/restore of the current user (as SECURITY DEFINER does).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(owner, saved_ctx | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let r = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    r
}

//! Who may do what. The functions of schema `redis` are not executable by PUBLIC (an
//! administrator grants them); `sync_table` and friends also require owning the table.
//!
//! Writes to pg_redis's own catalog (mappings, the outbox) run as the extension's owner, so a
//! table owner or writer never needs the right to write the outbox directly (which would let
//! them invent changes). Nothing the caller controls runs with those rights: `to_jsonb` of
//! rows runs as the caller, only finished values cross over, the owner is found through the
//! catalog caches (not by a name the caller could shadow), the switch is a restricted
//! operation, and `search_path` is pinned to `pg_catalog` for statements that are not fully
//! qualified.

use crate::errors::raise_with;
use pgrx::prelude::*;

/// Raises insufficient_privilege unless the current user owns the table.
pub fn require_owner(oid: pg_sys::Oid, display: &str) {
    // SAFETY: reading the current user id.
    let owns = crate::pg::compat::owns_relation(oid, unsafe { pg_sys::GetUserId() });
    if !owns {
        raise_with(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("must be owner of table {display} to sync it to Redis"), None);
    }
}

/// The extension's owner: the owner of `redis.outbox`, found through the syscache and relcache
/// (cheap enough for the capture trigger, and invalidated by PostgreSQL itself).
pub fn extension_owner() -> pg_sys::Oid {
    // SAFETY: syscache and relcache lookups on the backend's main thread.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"redis".as_ptr(), true);
        let rel = if nsp == pg_sys::InvalidOid { pg_sys::InvalidOid } else { pg_sys::get_relname_relid(c"outbox".as_ptr(), nsp) };
        if rel == pg_sys::InvalidOid {
            raise_with(PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "the pg_redis extension is not installed in this database", Some("CREATE EXTENSION pg_redis"));
        }
        let r = pg_sys::RelationIdGetRelation(rel);
        let owner = (*(*r).rd_rel).relowner;
        pg_sys::RelationClose(r);
        owner
    }
}

/// Runs `f` as `role` in a restricted operation. An ERROR inside unwinds through the
/// transaction abort, which restores the previous user by itself.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_ctx) = (pg_sys::InvalidOid, 0);
    // SAFETY: the documented save/switch/restore of the current user (as SECURITY DEFINER and
    // maintenance commands do).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(role, saved_ctx | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32);
    }
    let r = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    r
}

/// Runs `f` (fully qualified statements of our own) as the extension's owner.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    as_role(extension_owner(), f)
}

/// Runs `f` as the extension's owner with `search_path` pinned to `pg_catalog, pg_temp`, for
/// statements with unqualified operators and functions. Not for hot paths.
pub fn as_extension_owner_pinned<R>(f: impl FnOnce() -> R) -> R {
    as_extension_owner(|| with_catalog_search_path(f))
}

/// Runs `f` with `search_path = pg_catalog, pg_temp` (restored afterwards, also on ERROR).
pub fn with_catalog_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: a GUC nest level, as functions with a SET clause use.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let r = f();
    // SAFETY: pops the level pushed above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

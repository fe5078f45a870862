//! Who the backend acts as: the current user, superuser checks, and running code as another
//! role the way SECURITY DEFINER functions and maintenance commands do.

use pgrx::prelude::*;

/// The role privileges are checked against now.
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: reading the current user id on the backend's main thread.
    unsafe { pg_sys::GetUserId() }
}

/// Whether the current user is a superuser.
pub fn is_superuser() -> bool {
    // SAFETY: a catalog lookup of the current user, on the backend's main thread.
    unsafe { pg_sys::superuser() }
}

/// Runs `f` as `role` in a restricted operation. An ERROR inside unwinds through the
/// transaction abort, which restores the previous user by itself.
pub fn as_role<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_ctx) = (pg_sys::InvalidOid, 0);
    // SAFETY: the documented save/switch/restore of the current user (as SECURITY DEFINER and
    // maintenance commands do).
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_ctx | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION) as i32,
        );
    }
    let r = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_ctx) };
    r
}

//! Settings (GUCs): set for the length of a call, as a function's `SET` clause does, or pinned
//! for the rest of a process, and read by name.

use pgrx::prelude::*;
use std::ffi::CStr;

/// Runs `f` with each `(name, value)` setting in force, then restores the previous values.
/// The settings are pushed at a GUC nest level, as `fmgr_security_definer` does for a
/// function's `SET` clause; an ERROR inside unwinds through the transaction abort, which pops
/// the level by itself. No level is pushed when there is nothing to set.
pub fn with_settings<'a, R>(settings: impl IntoIterator<Item = (&'a CStr, &'a CStr)>, f: impl FnOnce() -> R) -> R {
    with_settings_in(pg_sys::GucContext::PGC_USERSET, settings, f)
}

/// [`with_settings`] for settings only a superuser may change (the background workers, which
/// run as one).
pub fn with_superuser_settings<'a, R>(
    settings: impl IntoIterator<Item = (&'a CStr, &'a CStr)>,
    f: impl FnOnce() -> R,
) -> R {
    with_settings_in(pg_sys::GucContext::PGC_SUSET, settings, f)
}

fn with_settings_in<'a, R>(
    context: pg_sys::GucContext::Type,
    settings: impl IntoIterator<Item = (&'a CStr, &'a CStr)>,
    f: impl FnOnce() -> R,
) -> R {
    let mut level = None;
    for (name, value) in settings {
        // SAFETY: a nest level and a setting on the backend's main thread.
        unsafe {
            level.get_or_insert_with(|| pg_sys::NewGUCNestLevel());
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                context,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let r = f();
    if let Some(level) = level {
        // SAFETY: pops the level pushed above.
        unsafe { pg_sys::AtEOXact_GUC(true, level) };
    }
    r
}

/// Sets `name` for the rest of this process, over any database, role or session value (for
/// background workers, whose settings must not depend on where they connect).
pub fn pin(name: &CStr, value: &CStr) {
    // SAFETY: setting a GUC on the process's main thread, as an override.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// [`pin`], when this PostgreSQL version has the setting (a name it does not know is an ERROR).
pub fn pin_if_known(name: &CStr, value: &CStr) {
    if with_current(name, |v| v.is_some()) {
        pin(name, value);
    }
}

/// Calls `f` with the current value of `name` as text (None for an unknown setting), read in
/// place: the GUC machinery reuses its buffer on the next call, and the trigger's hot path
/// should not copy it.
pub fn with_current<R>(name: &CStr, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
    // SAFETY: a GUC lookup by name on the backend's main thread.
    let value = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if value.is_null() {
        return f(None);
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery, read before any other GUC call.
    f(Some(unsafe { CStr::from_ptr(value) }.to_bytes()))
}

/// Re-reads the configuration files (a background worker's answer to SIGHUP).
pub fn reload_config_file() {
    // SAFETY: the documented way for a background worker to apply a reload.
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
}

//! Rows become text under the canonical session settings (`shared::encoding::CANONICAL_SETTINGS`),
//! never the writer's: a `timestamptz` key written from a UTC session and updated from a Paris
//! one must render the same key, and a float, interval or bytea the same bytes, whoever wrote
//! them and whatever the module's own session says.
//!
//! The settings are pushed at a GUC nest level (as a function's `SET` clause does) and popped
//! afterwards; an ERROR inside unwinds through the transaction abort, which pops the level by
//! itself. Only settings that differ are set, so a session already in canonical form pays a
//! few lookups per row and nothing more.

use pg_redis_shared::encoding::CANONICAL_SETTINGS;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

thread_local! {
    /// The canonical settings as C strings, made once per backend.
    static SETTINGS: Vec<(CString, CString)> = CANONICAL_SETTINGS
        .iter()
        .filter_map(|(k, v)| Some((CString::new(*k).ok()?, CString::new(*v).ok()?)))
        .collect();
}

/// Runs `f` with every canonical setting in force.
pub fn with_canonical_settings<R>(f: impl FnOnce() -> R) -> R {
    let level = SETTINGS.with(|settings| {
        let mut level = None;
        for (name, value) in settings {
            if is_canonical(name, value) {
                continue;
            }
            // SAFETY: GUC lookups and a nest level on the backend's main thread, as
            // fmgr_security_definer does for a function's SET clause.
            unsafe {
                level.get_or_insert_with(|| pg_sys::NewGUCNestLevel());
                pg_sys::set_config_option(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_USERSET,
                    pg_sys::GucSource::PGC_S_SESSION,
                    pg_sys::GucAction::GUC_ACTION_SAVE,
                    true,
                    0,
                    false,
                );
            }
        }
        level
    });
    let r = f();
    if let Some(level) = level {
        // SAFETY: pops the level pushed above.
        unsafe { pg_sys::AtEOXact_GUC(true, level) };
    }
    r
}

/// Sets the canonical settings for the rest of this process (the delivery worker, whose casts
/// of key text to key types must read the text as it was written).
pub fn pin_canonical_settings() {
    SETTINGS.with(|settings| {
        for (name, value) in settings {
            // SAFETY: setting a GUC on the process's main thread, as an override.
            unsafe {
                pg_sys::SetConfigOption(
                    name.as_ptr(),
                    value.as_ptr(),
                    pg_sys::GucContext::PGC_SUSET,
                    pg_sys::GucSource::PGC_S_OVERRIDE,
                )
            };
        }
    });
}

/// Whether the session's value already prints rows the canonical way. Every zone that is UTC
/// at all times prints timestamps alike (`+00:00`, and no abbreviation under ISO DateStyle).
fn is_canonical(name: &CStr, value: &CStr) -> bool {
    // SAFETY: a GUC lookup by name; the returned string is valid until the next GUC call.
    let current = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if current.is_null() {
        return false;
    }
    // SAFETY: a NUL-terminated string owned by the GUC machinery.
    let current = unsafe { CStr::from_ptr(current) }.to_bytes();
    if current.eq_ignore_ascii_case(value.to_bytes()) {
        return true;
    }
    name.to_bytes() == b"TimeZone" && UTC_ZONES.iter().any(|z| current.eq_ignore_ascii_case(z.as_bytes()))
}

const UTC_ZONES: &[&str] = &[
    "UTC",
    "Etc/UTC",
    "UCT",
    "Etc/UCT",
    "Universal",
    "Etc/Universal",
    "Zulu",
    "Etc/Zulu",
    "GMT",
    "Etc/GMT",
    "Greenwich",
    "Etc/Greenwich",
    "GMT0",
    "Etc/GMT0",
    "GMT+0",
    "Etc/GMT+0",
    "GMT-0",
    "Etc/GMT-0",
];

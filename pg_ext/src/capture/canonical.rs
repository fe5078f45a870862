//! Rows become text under the canonical session settings (`shared::encoding::CANONICAL_SETTINGS`),
//! never the writer's: a `timestamptz` key written from a UTC session and updated from a Paris
//! one must render the same key, and a float, interval or bytea the same bytes, whoever wrote
//! them and whatever the module's own session says.
//!
//! The settings are pushed at a GUC nest level (as a function's `SET` clause does) and popped
//! afterwards; an ERROR inside unwinds through the transaction abort, which pops the level by
//! itself. Only settings that differ are set, so a session already in canonical form pays a
//! few lookups per row and nothing more.

use crate::pg::guc;
use pg_redis_shared::encoding::CANONICAL_SETTINGS;
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
    SETTINGS.with(|settings| {
        let differing = settings.iter().filter(|(name, value)| !is_canonical(name, value));
        guc::with_settings(differing.map(|(name, value)| (name.as_c_str(), value.as_c_str())), f)
    })
}

/// Sets the canonical settings for the rest of this process (the delivery worker, whose casts
/// of key text to key types must read the text as it was written).
pub fn pin_canonical_settings() {
    SETTINGS.with(|settings| settings.iter().for_each(|(name, value)| guc::pin(name, value)));
}

/// Whether the session's value already prints rows the canonical way. Every zone that is UTC
/// at all times prints timestamps alike (`+00:00`, and no abbreviation under ISO DateStyle).
fn is_canonical(name: &CStr, value: &CStr) -> bool {
    guc::with_current(name, |current| {
        current.is_some_and(|current| {
            current.eq_ignore_ascii_case(value.to_bytes())
                || (name.to_bytes() == b"TimeZone"
                    && UTC_ZONES.iter().any(|z| current.eq_ignore_ascii_case(z.as_bytes())))
        })
    })
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

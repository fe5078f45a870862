//! Which capture a table gets, and whether the worker consumes the replication slot.
//!
//! A server with `wal_level = logical` captures from the write-ahead log (no per-row work in
//! the writer's transaction); others, such as managed servers whose WAL level cannot change,
//! capture by trigger. `pg_redis.capture` can force either. Each mapping version records the
//! mode it was made with, so a change is captured exactly once: the plugin decodes changes of
//! `wal` versions only, and only `trigger` versions have triggers.

use crate::gucs::{CaptureSetting, CAPTURE};
use pgrx::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    Trigger,
    Wal,
}

impl Capture {
    /// As `redis.mapping.capture` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Capture::Trigger => "trigger",
            Capture::Wal => "wal",
        }
    }
}

/// Whether the server writes what logical decoding needs, and can keep a slot.
pub fn wal_is_logical() -> bool {
    // SAFETY: reading postmaster-set globals.
    unsafe { pg_sys::wal_level >= pg_sys::WalLevel::WAL_LEVEL_LOGICAL as i32 && pg_sys::max_replication_slots > 0 }
}

/// Whether this server captures from the WAL: the worker keeps and consumes the slot.
pub fn server_decodes_wal() -> bool {
    CAPTURE.get() != CaptureSetting::Trigger && wal_is_logical()
}

/// The capture of a mapping version made now for `table` (as messages name it), given what
/// its owner asked (`requested`, None: what the server's setting picks). `pg_redis.capture =
/// trigger` wins over a table's wish (it is how the server leaves WAL capture). An ERROR when
/// WAL capture is demanded but wal_level is too low; with the capture, the NOTICE to give once
/// the call succeeded when the server falls back to the trigger. `slot_ready`: the worker's slot exists (see [`slot_ready`]); until it does, a
/// table is captured by trigger, and the worker moves it to WAL capture once the slot is there
/// (in one commit, nothing captured twice or lost).
pub fn for_new_mapping(table: &str, slot_ready: bool, requested: Option<Capture>) -> (Capture, Option<String>) {
    let setting = CAPTURE.get();
    let wants_wal = match (setting, requested) {
        (CaptureSetting::Trigger, _) | (_, Some(Capture::Trigger)) => false,
        (CaptureSetting::Wal, _) | (_, Some(Capture::Wal)) => {
            if !wal_is_logical() {
                crate::errors::raise(pg_redis_shared::Error::WalCaptureUnavailable {
                    table: table.to_owned(),
                    wal_level: wal_level_name(),
                });
            }
            true
        }
        (CaptureSetting::Auto, None) if !wal_is_logical() => {
            return (
                Capture::Trigger,
                Some(format!(
                    "pg_redis: changes of {table} are captured by a trigger (wal_level is '{}'); with wal_level = logical they are decoded from the WAL at a fraction of the writers' cost",
                    wal_level_name()
                )),
            );
        }
        (CaptureSetting::Auto, None) => true,
    };
    match wants_wal {
        false => (Capture::Trigger, None),
        true if slot_ready => (Capture::Wal, None),
        true => (
            Capture::Trigger,
            Some(format!(
                "pg_redis: changes of {table} are captured by a trigger until the delivery worker has made its replication slot; it then moves the table to WAL capture"
            )),
        ),
    }
}

/// The capture a table should have now, for the worker (no messages, no errors): the server's
/// setting, or the table's own wish where the server allows it.
pub fn desired(requested: Option<Capture>) -> Capture {
    match (CAPTURE.get(), requested) {
        (CaptureSetting::Trigger, _) => Capture::Trigger,
        _ if !wal_is_logical() => Capture::Trigger,
        (_, Some(c)) => c,
        _ => Capture::Wal,
    }
}

impl std::str::FromStr for Capture {
    type Err = pg_redis_shared::Error;
    fn from_str(s: &str) -> Result<Capture, Self::Err> {
        match s {
            "wal" => Ok(Capture::Wal),
            "trigger" => Ok(Capture::Trigger),
            other => Err(pg_redis_shared::Error::invalid_value(
                "capture",
                format!("'{other}'"),
                "it must be 'wal', 'trigger' or NULL (what pg_redis.capture picks)",
            )),
        }
    }
}

fn wal_level_name() -> String {
    crate::pg::guc::with_current(c"wal_level", |v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
        .unwrap_or_else(|| "unknown".into())
}

/// The replication slot of the database `dboid` (slot names allow `[a-z0-9_]` only).
pub fn slot_name(dboid: pg_sys::Oid) -> String {
    format!("pg_redis_{}", dboid.to_u32())
}

/// Whether the worker's slot is ready for tables captured from the WAL, waiting a few seconds
/// for it when this server decodes the WAL. Call it before the transaction writes anything:
/// the slot's creation waits for every transaction that did (after a write it only looks).
pub fn slot_ready() -> bool {
    if !server_decodes_wal() {
        return false;
    }
    // SAFETY: reading this backend's database id and transaction id.
    let (dboid, xid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::GetTopTransactionIdIfAny()) };
    let name = slot_name(dboid);
    // Made, and caught up with by the worker (its bookkeeping row committed).
    let ready = || {
        crate::api::privileges::as_extension_owner_pinned(|| {
            crate::pg::xact::on_latest_snapshot(|| {
                crate::pg::read::one::<bool>(
                    "SELECT EXISTS (SELECT 1 FROM pg_replication_slots r JOIN redis.wal_slot w ON w.slot_name = r.slot_name \
                      WHERE r.slot_name = $1 AND r.confirmed_flush_lsn IS NOT NULL)",
                    &[name.clone().into()],
                )
            })
        })
        .ok()
        .flatten()
        .unwrap_or(false)
    };
    if ready() {
        return true;
    }
    if xid != pg_sys::InvalidTransactionId {
        return false;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        crate::worker::registry::wake(dboid);
        // SAFETY: a plain sleep; interrupts are checked right after.
        unsafe { pg_sys::pg_usleep(10_000) };
        check_for_interrupts!();
        if ready() {
            return true;
        }
    }
    false
}

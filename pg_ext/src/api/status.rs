//! Observability: the delivery worker of this database, and waiting for delivery.

use crate::errors::raise_with;
use crate::worker::registry;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The delivery worker of this database: pid, state, last error (all NULL when none runs).
#[pg_extern(volatile, parallel_safe)]
fn worker_status() -> TableIterator<'static, (name!(pid, Option<i32>), name!(state, Option<String>), name!(last_error, Option<String>))> {
    // SAFETY: reading this backend's database id.
    let info = registry::info(unsafe { pg_sys::MyDatabaseId });
    let row = match info {
        Some((pid, state, err)) => (Some(pid), Some(state.name().to_owned()), (!err.is_empty()).then_some(err)),
        None => (None, Some(if crate::preloaded() { "not running" } else { "not running: pg_redis is not in shared_preload_libraries" }.to_owned()), None),
    };
    TableIterator::once(row)
}

/// Waits until every change committed before the call has been acknowledged by Redis; false
/// when `timeout_ms` passes first. Changes of the calling transaction itself are not waited
/// for (they are not committed yet).
#[pg_extern(volatile, parallel_unsafe)]
fn wait_synced(timeout_ms: default!(Option<i32>, "10000")) -> bool {
    // SAFETY: reading the transaction's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        raise_with(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "redis.wait_synced() needs READ COMMITTED: a snapshot held for the whole transaction never sees the outbox drain",
            Some("call it outside the REPEATABLE READ or SERIALIZABLE transaction"),
        );
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(10_000).max(0) as u64);
    let last = Spi::get_one::<i64>("SELECT max(id) FROM redis.outbox").ok().flatten();
    let Some(last) = last else { return true };
    // SAFETY: reading this backend's database id.
    registry::wake(unsafe { pg_sys::MyDatabaseId });
    let mut pause = Duration::from_micros(500);
    loop {
        let pending = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM redis.outbox WHERE id <= $1 AND xmin <> coalesce(xid(pg_current_xact_id_if_assigned()), '0'::xid))",
            &[last.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if !pending {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        sleep_interruptibly(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Sleeps on this backend's latch, answering query cancels.
fn sleep_interruptibly(d: Duration) {
    // SAFETY: the standard latch wait of a backend.
    unsafe {
        pg_sys::WaitLatch(pg_sys::MyLatch, (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32, d.as_millis().max(1) as i64, pg_sys::PG_WAIT_EXTENSION);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

/// Called by CREATE EXTENSION: once it commits, the launcher starts this database's worker.
#[pg_extern(volatile, parallel_unsafe)]
fn _start_worker() {
    crate::capture::wake::start_worker_after_commit();
}

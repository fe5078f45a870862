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
    // This session's own committed writes since its last call: if the worker parked one of them,
    // even before this call, the session must hear of it.
    let mine = crate::capture::wake::committed_writes();
    let first_dead = Spi::get_one::<i64>("SELECT coalesce(max(id), 0) FROM redis.dead_letter").ok().flatten().unwrap_or(0);
    let last = Spi::get_one::<i64>("SELECT max(id) FROM redis.outbox").ok().flatten().unwrap_or(0);
    if last > 0 {
        // SAFETY: reading this backend's database id.
        registry::wake(unsafe { pg_sys::MyDatabaseId });
        let mut pause = Duration::from_micros(500);
        while others_pending(last) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            sleep_interruptibly(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
    // Delivered, or parked for good: say so rather than claim success.
    let parked = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM redis.dead_letter WHERE (id > $1 AND id <= $2) OR tx_id = ANY ($3)",
        &[first_dead.into(), last.into(), mine.clone().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    crate::capture::wake::forget_writes(mine.len());
    if parked > 0 {
        warning!("pg_redis: {parked} change(s) could not be applied and were moved to redis.dead_letter");
        return false;
    }
    true
}

/// Whether the outbox holds an event up to `last` that another transaction wrote (this one's
/// own, subtransactions included, are not committed yet and not waited for).
fn others_pending(last: i64) -> bool {
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, u32)> = Spi::connect(|c| {
            c.select("SELECT id, xmin::text::int8 FROM redis.outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT 200", None, &[after.into(), last.into()])
                .map(|t| t.filter_map(|r| Some((r.get::<i64>(1).ok()??, r.get::<i64>(2).ok()?? as u32))).collect())
                .unwrap_or_default()
        });
        if rows.is_empty() {
            return false;
        }
        // SAFETY: asking whether an xid is one of this transaction's.
        if rows.iter().any(|(_, xmin)| !unsafe { pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(*xmin)) }) {
            return true;
        }
        if rows.len() < 200 {
            return false;
        }
        after = rows.last().map(|r| r.0).unwrap_or(last);
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

//! Observability: the delivery worker of this database, and waiting for delivery.

use crate::api::privileges::as_extension_owner_pinned;
use crate::errors::raise;
use crate::worker::registry;
use pg_redis_shared::Error;
use pgrx::prelude::*;
use std::time::{Duration, Instant};

/// The delivery worker of this database: pid, state, last error (all NULL when none runs).
#[pg_extern(volatile, parallel_safe)]
fn worker_status(
) -> TableIterator<'static, (name!(pid, Option<i32>), name!(state, Option<String>), name!(last_error, Option<String>))>
{
    // SAFETY: reading this backend's database id.
    let info = registry::info(unsafe { pg_sys::MyDatabaseId });
    let row = match info {
        Some((pid, state, err)) => (Some(pid), Some(state.name().to_owned()), (!err.is_empty()).then_some(err)),
        None => (
            None,
            Some(
                if crate::preloaded() {
                    "not running"
                } else {
                    "not running: pg_redis is not in shared_preload_libraries"
                }
                .to_owned(),
            ),
            None,
        ),
    };
    TableIterator::once(row)
}

/// Waits until every change committed before the call has been acknowledged by Redis; false
/// when `timeout_ms` passes first. Changes of the calling transaction itself are not waited
/// for (they are not committed yet).
///
/// It reads the outbox and the dead letters as the extension's owner (a role granted only this
/// function need not read them), and any failure to read them is an ERROR: a query that failed
/// never reads as "nothing pending".
#[pg_extern(volatile, parallel_unsafe)]
fn wait_synced(timeout_ms: default!(Option<i32>, "10000")) -> bool {
    if crate::pg::xact::is_repeatable_read() {
        raise(Error::WaitNeedsReadCommitted);
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(10_000).max(0) as u64);
    // This session's own committed writes since its last call: if the worker parked one of them,
    // even before this call, the session must hear of it.
    let mine = crate::capture::wake::committed_writes();
    let parked = as_extension_owner_pinned(|| {
        let first_dead = count_of("redis.dead_letter", "SELECT coalesce(max(id), 0) FROM redis.dead_letter", &[]);
        let last = count_of("redis.outbox", "SELECT coalesce(max(id), 0) FROM redis.outbox", &[]);
        if last > 0 {
            // SAFETY: reading this backend's database id.
            registry::wake(unsafe { pg_sys::MyDatabaseId });
            let mut pause = Duration::from_micros(500);
            while others_pending(last) {
                let now = Instant::now();
                if now >= deadline {
                    return None;
                }
                sleep_interruptibly(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
        // Delivered, or parked for good: say so rather than claim success.
        Some(count_of(
            "redis.dead_letter",
            "SELECT count(*) FROM redis.dead_letter WHERE (id > $1 AND id <= $2) OR tx_id = ANY ($3)",
            &[first_dead.into(), last.into(), mine.clone().into()],
        ))
    });
    let Some(parked) = parked else {
        return false;
    };
    crate::capture::wake::forget_writes(mine.len());
    if parked > 0 {
        warning!("pg_redis: {parked} change(s) could not be applied and were moved to redis.dead_letter");
        return false;
    }
    true
}

/// The bigint a query of pg_redis's catalog returns; an ERROR naming `what` when it cannot be
/// read, since wait_synced must never mistake a failed read for an empty queue.
fn count_of(what: &str, query: &str, args: &[pgrx::datum::DatumWithOid]) -> i64 {
    match Spi::get_one_with_args::<i64>(query, args) {
        Ok(Some(n)) => n,
        Ok(None) => cannot_read(what, "no value"),
        Err(e) => cannot_read(what, e),
    }
}

fn cannot_read(what: &str, why: impl std::fmt::Display) -> ! {
    raise(Error::WaitCannotRead { what: what.to_owned(), reason: why.to_string() })
}

/// Whether the outbox holds an event up to `last` that another transaction wrote (this one's
/// own, subtransactions included, are not committed yet and not waited for).
fn others_pending(last: i64) -> bool {
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, i64)> = Spi::connect(|c| {
            let table = c.select(
                "SELECT id, xmin::text::int8 FROM redis.outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT 200",
                None,
                &[after.into(), last.into()],
            )?;
            table
                .map(|r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))))
                .collect::<spi::SpiResult<Vec<_>>>()
        })
        .unwrap_or_else(|e| cannot_read("redis.outbox", e));
        if rows.is_empty() {
            return false;
        }
        if rows.iter().any(|(_, xmin)| !crate::pg::xact::is_current_transaction(*xmin as u32)) {
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
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            d.as_millis().max(1) as i64,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
    check_for_interrupts!();
}

/// Called by CREATE EXTENSION: once it commits, the launcher starts this database's worker.
#[pg_extern(volatile, parallel_unsafe)]
fn _start_worker() {
    crate::capture::wake::start_worker_after_commit();
}

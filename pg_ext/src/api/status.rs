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
        // Backfills the worker reads in chunks (under WAL capture) end when all is in Redis;
        // waited for first: one whose table left WAL capture queues its rows in the outbox.
        let mut pause = Duration::from_millis(1);
        while backfills_pending() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            sleep_interruptibly(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        let last = count_of("redis.outbox", "SELECT coalesce(max(id), 0) FROM redis.outbox", &[]);
        // Under WAL capture: every commit before this call ends before the WAL's insert
        // position now; the worker moves its slot past what Redis acknowledged.
        let decoded = match slot_reaches(deadline) {
            Some(decoded) => decoded,
            None => return None,
        };
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
        // A decoded change parked meanwhile has an id past `last` (it had no outbox row): any
        // parked since the call began counts, so as never to claim success for one.
        let upto = if decoded { i64::MAX } else { last };
        Some(count_of(
            "redis.dead_letter",
            "SELECT count(*) FROM redis.dead_letter WHERE (id > $1 AND id <= $2) OR tx_id = ANY ($3)",
            &[first_dead.into(), upto.into(), mine.clone().into()],
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

/// Waits until the database's replication slot, when there is one, is confirmed up to the
/// WAL's insert position at the call: Some(whether there is a slot), None when `deadline`
/// passes first.
fn slot_reaches(deadline: Instant) -> Option<bool> {
    // SAFETY: reading this backend's database id.
    let dboid = unsafe { pg_sys::MyDatabaseId };
    let name = crate::capture::mode::slot_name(dboid);
    // SAFETY: reading the recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return Some(false);
    }
    let mut target = flushed_insert_position();
    let mut caught_up = true;
    let mut pause = Duration::from_micros(500);
    loop {
        // The slot, and whether the worker caught up with it (its row in redis.wal_slot).
        let row = crate::pg::xact::on_latest_snapshot(|| {
            crate::pg::read::two::<String, bool>(
                "SELECT coalesce(r.confirmed_flush_lsn, '0/0')::text, w.slot_name IS NOT NULL \
                   FROM pg_replication_slots r LEFT JOIN redis.wal_slot w ON w.slot_name = r.slot_name \
                  WHERE r.slot_name = $1",
                &[name.clone().into()],
            )
        });
        let confirmed = match row {
            Ok((Some(l), Some(true))) => {
                if !caught_up {
                    // The worker caught up during the wait: the resync it queued for changes
                    // the slot could not decode is before the position now.
                    target = target.max(flushed_insert_position());
                    caught_up = true;
                }
                crate::worker::parse_lsn(&l).unwrap_or(0)
            }
            // No slot and no table captured from the WAL: the outbox tells.
            Ok((None, _)) if !wal_tables() => return Some(false),
            // Tables captured from the WAL but no slot yet, or one not caught up with (a copied
            // database, a slot dropped by hand, made a moment ago): their changes reach Redis
            // once the worker made it and resynced them.
            Ok(_) => {
                caught_up = false;
                0
            }
            Err(e) => cannot_read("pg_replication_slots", e),
        };
        if confirmed >= target {
            return Some(true);
        }
        // The worker moves the slot as it polls: wake it each time.
        registry::wake(dboid);
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        sleep_interruptibly(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The WAL's insert position (as a record's end), flushed: decoding reads flushed WAL only, and
/// a commit made with synchronous_commit = off, or records after the last commit, may sit
/// unflushed for a long time on a quiet server.
fn flushed_insert_position() -> u64 {
    // SAFETY: reading the insert position, as pg_current_wal_insert_lsn() does; flushing up to
    // it, as a commit does.
    unsafe {
        let target = record_end(pg_sys::GetXLogInsertRecPtr());
        pg_sys::XLogFlush(target);
        target
    }
}

/// Whether a table of this database is captured from the WAL (the catalog as of now).
fn wal_tables() -> bool {
    crate::pg::xact::on_latest_snapshot(|| {
        crate::pg::read::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM redis.mapping WHERE active AND capture = 'wal')",
            &[],
        )
    })
    .unwrap_or_else(|e| cannot_read("redis.mapping", e))
    .unwrap_or(false)
}

/// The insert position as a record's end reads: at the start of a page the position points past
/// the page header, while the record before (and the flush position after it) ends before it.
fn record_end(insert: u64) -> u64 {
    // SAFETY: reading the segment size PostgreSQL set at start.
    let segment = unsafe { pg_sys::wal_segment_size } as u64;
    let page = pg_sys::XLOG_BLCKSZ as u64;
    let long = size_of::<pg_sys::XLogLongPageHeaderData>() as u64;
    let short = size_of::<pg_sys::XLogPageHeaderData>() as u64;
    if segment > 0 && insert % segment == long {
        insert - long
    } else if insert % page == short {
        insert - short
    } else {
        insert
    }
}

/// The bigint a query of pg_redis's catalog returns; an ERROR naming `what` when it cannot be
/// read, since wait_synced must never mistake a failed read for an empty queue.
fn count_of(what: &str, query: &str, args: &[pgrx::datum::DatumWithOid]) -> i64 {
    // Read-only (a transaction id held while waiting would hold back the worker's slot
    // creation), so on a snapshot taken now: read-only SPI keeps the statement's.
    match crate::pg::xact::on_latest_snapshot(|| crate::pg::read::one::<i64>(query, args)) {
        Ok(Some(n)) => n,
        Ok(None) => cannot_read(what, "no value"),
        Err(e) => cannot_read(what, e),
    }
}

fn cannot_read(what: &str, why: impl std::fmt::Display) -> ! {
    raise(Error::WaitCannotRead { what: what.to_owned(), reason: why.to_string() })
}

/// Whether a backfill committed by another transaction is under way (this transaction's own
/// cannot start before it commits).
fn backfills_pending() -> bool {
    let xmins: Vec<i64> = crate::pg::xact::on_latest_snapshot(|| {
        Spi::connect(|c| {
            c.select("SELECT xmin::text::int8 FROM redis.backfill", None, &[])?
                .map(|r| Ok(r.get::<i64>(1)?.unwrap_or(0)))
                .collect::<spi::SpiResult<Vec<_>>>()
        })
    })
    .unwrap_or_else(|e| cannot_read("redis.backfill", e));
    xmins.iter().any(|x| !crate::pg::xact::is_current_transaction(*x as u32))
}

/// Whether the outbox holds an event up to `last` that another transaction wrote (this one's
/// own, subtransactions included, are not committed yet and not waited for).
fn others_pending(last: i64) -> bool {
    let mut after = 0i64;
    loop {
        // A snapshot taken now each time: the rows go as the worker delivers them.
        let rows: Vec<(i64, i64)> = crate::pg::xact::on_latest_snapshot(|| {
            Spi::connect(|c| {
                let table = c.select(
                    "SELECT id, xmin::text::int8 FROM redis.outbox WHERE id > $1 AND id <= $2 ORDER BY id LIMIT 200",
                    None,
                    &[after.into(), last.into()],
                )?;
                table
                    .map(|r| Ok((r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(0))))
                    .collect::<spi::SpiResult<Vec<_>>>()
            })
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

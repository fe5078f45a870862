//! Transactions, subtransactions and snapshots: the brackets the worker and the copy check run
//! their work in, and what identifies the statement or transaction a backend is in.

use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;

/// The message of an ERROR (or a Rust panic turned into one) caught by `PgTryBuilder`.
pub fn error_message(e: &CaughtError) -> String {
    match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) | CaughtError::RustPanic { ereport: r, .. } => {
            r.message().to_owned()
        }
    }
}

/// Runs `f` in a transaction of its own (background workers only); an ERROR rolls the
/// transaction back and comes back as its message, so the worker lives on.
pub fn try_in_transaction<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let f = AssertUnwindSafe(f);
    PgTryBuilder::new(AssertUnwindSafe(|| Ok(BackgroundWorker::transaction(AssertUnwindSafe(|| (f.0)())))))
        .catch_others(|e| {
            // SAFETY: the failed transaction must be aborted before the next one starts.
            unsafe { pg_sys::AbortCurrentTransaction() };
            // A replication slot the failed work held (decoding, creating one) is released as
            // a backend's error recovery does: a slot left acquired, or a half-made one left
            // behind, would fail every later use.
            crate::pg::compat::release_replication_slots();
            Err(error_message(&e))
        })
        .execute()
}

/// [`try_in_transaction`], logging an ERROR as `what` failed and giving None.
pub fn in_transaction<R>(what: &str, f: impl FnOnce() -> R) -> Option<R> {
    try_in_transaction(f).map_err(|msg| log!("pg_redis: {what} failed: {msg}")).ok()
}

/// Runs `f` in a subtransaction; an ERROR rolls back only that and comes back as its message.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> Result<R, String> {
    // SAFETY: the same bracket PL/pgSQL uses for EXCEPTION blocks: remember the memory context
    // and resource owner, begin, and on both paths restore them.
    unsafe {
        let (mcx, owner) = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(mcx);
        let r = PgTryBuilder::new(|| Ok(f()))
            .catch_others(move |e| {
                let msg = error_message(&e);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(mcx);
                pg_sys::CurrentResourceOwner = owner;
                Err(msg)
            })
            .execute();
        if r.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
            pg_sys::MemoryContextSwitchTo(mcx);
            pg_sys::CurrentResourceOwner = owner;
        }
        r
    }
}

/// Runs `f` (SPI reads) on a snapshot taken now. SPI runs a read-only query on the active
/// snapshot, and it counts as read-only until the (sub)transaction has a transaction id: in
/// a worker transaction that lasts several batches, that is the snapshot of its start, which
/// misses every row committed since. The worker runs READ COMMITTED (see
/// `worker::pin_settings`), so the transaction snapshot asked for here is a new one.
pub fn on_latest_snapshot<R>(f: impl FnOnce() -> R) -> R {
    debug_assert!(!is_repeatable_read(), "a REPEATABLE READ transaction has one snapshot");
    // SAFETY: pushed and popped around `f`; should `f` raise an ERROR, the (sub)transaction's
    // abort pops what it pushed.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = f();
    // SAFETY: the snapshot pushed above is still the active one: `f` pushes and pops in pairs.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// Waits until transaction `xid` (a full id) has ended and every new snapshot sees it. A
/// transaction is in the WAL, and decoded, once its commit record is flushed; other sessions
/// see it only after it leaves the process array (a synchronous commit waits for its standby
/// in between). Its lock goes after that, so waiting for the lock is waiting for visibility.
pub fn wait_until_visible(xid: i64) {
    // The 32 low bits are the xid; a transaction this old or older has ended long ago.
    let xid = pg_sys::TransactionId::from_inner(xid as u32);
    // SAFETY: plain reads of the process array, then a lock wait PostgreSQL can interrupt.
    unsafe {
        if pg_sys::TransactionIdIsInProgress(xid) {
            pg_sys::XactLockTableWait(xid, std::ptr::null_mut(), std::ptr::null_mut(), pg_sys::XLTW_Oper::XLTW_None);
        }
    }
}

/// Whether the transaction keeps one snapshot for all its statements (REPEATABLE READ or
/// SERIALIZABLE).
pub fn is_repeatable_read() -> bool {
    // SAFETY: reading the transaction's isolation level on the backend's main thread.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// The current command id of the transaction (a statement's writes, ours included, advance it).
pub fn command_id() -> u32 {
    // SAFETY: reading this backend's command counter.
    unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// When the current statement started.
pub fn statement_start() -> i64 {
    // SAFETY: reading this backend's statement start time.
    unsafe { pg_sys::GetCurrentStatementStartTimestamp() }
}

/// Whether `xid` (a 32-bit transaction id) is the current transaction or one of its
/// subtransactions.
pub fn is_current_transaction(xid: u32) -> bool {
    // SAFETY: a lookup in this backend's own transaction state.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(pg_sys::TransactionId::from(xid)) }
}

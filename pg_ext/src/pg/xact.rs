//! Transactions and snapshots for code that runs outside a client's statement (the worker):
//! subtransactions that turn an ERROR into a value, and reads that must see what is committed
//! now rather than what was committed when the transaction began.

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

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
                let msg = match &e {
                    CaughtError::PostgresError(r)
                    | CaughtError::ErrorReport(r)
                    | CaughtError::RustPanic { ereport: r, .. } => r.message().to_owned(),
                };
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
    // SAFETY: pushed and popped around `f`; should `f` raise an ERROR, the (sub)transaction's
    // abort pops what it pushed.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = f();
    // SAFETY: the snapshot pushed above is still the active one: `f` pushes and pops in pairs.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

//! The output plugin `pg_redis` (`pg_create_logical_replication_slot(name, 'pg_redis')`): the
//! extension's library is also a logical decoding plugin. It sees committed transactions only,
//! whole and in commit order (no streaming, no two-phase callbacks), and writes one text
//! record per change of a synced table, one per row queued in `redis.outbox`, one per backfill
//! watermark and one per commit (`shared::wal`).
//!
//! Decoding runs inside a transaction PostgreSQL opens and aborts itself: the callbacks read
//! catalogs (and `redis.mapping`, a user catalog table) under the historic snapshot, and never
//! write or take a transaction id. Each change is turned into text in a memory context reset
//! right after it.

use super::decode;
use super::synced::{Relation, Relations};
use pg_redis_shared::wal::{WalOp, WalRecord, Watermark};
use pg_redis_shared::{Op, OutboxOp};
use pgrx::pg_sys::ReorderBufferChangeType as Action;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A transaction with nothing for pg_redis still gets a record this often, so that whoever
/// consumes the slot can advance it past such transactions (the WAL they keep is released).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// One decoding session (a slot's decoding context): what is known of the relations, whether
/// the transaction being decoded wrote records.
struct Session {
    context: pg_sys::MemoryContext,
    relations: Relations,
    wrote: bool,
    last_record: Instant,
    /// Mappings whose keys the transaction being decoded asks to sweep: one sweep each, at its
    /// end, however many rows asked (a sweep scans every key of the table).
    sweeps: BTreeSet<i64>,
    /// The transaction being decoded, written before its first record (if it has any).
    opening: Option<WalRecord>,
}

thread_local! {
    /// A process decodes one slot at a time.
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Registers the callbacks; PostgreSQL calls it when a slot using plugin `pg_redis` starts
/// decoding.
///
/// # Safety
/// Called by PostgreSQL with its zeroed callback table.
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn _PG_output_plugin_init(cb: *mut pg_sys::OutputPluginCallbacks) {
    // SAFETY: see the function's contract.
    let cb = unsafe { &mut *cb };
    cb.startup_cb = Some(startup);
    cb.begin_cb = Some(begin);
    cb.change_cb = Some(change);
    cb.truncate_cb = Some(truncate);
    cb.commit_cb = Some(commit);
    cb.message_cb = Some(message);
    cb.shutdown_cb = Some(shutdown);
    // No origin filter: changes a subscription applies are synced too, as the capture trigger
    // (ENABLE ALWAYS) syncs them. No stream or prepare callback: only committed transactions.
}

#[pg_guard]
unsafe extern "C-unwind" fn startup(
    ctx: *mut pg_sys::LogicalDecodingContext,
    options: *mut pg_sys::OutputPluginOptions,
    _is_init: bool,
) {
    // SAFETY: PostgreSQL's live decoding context and options.
    unsafe {
        let given = (*ctx).output_plugin_options;
        if pg_sys::list_length(given) > 0 {
            let first = pg_sys::list_nth(given, 0).cast::<pg_sys::DefElem>();
            let name = std::ffi::CStr::from_ptr((*first).defname).to_string_lossy();
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("the pg_redis output plugin takes no options, and was given \"{name}\""),
                "Call pg_logical_slot_peek_changes (or get_changes) with the slot name and limits only."
            );
        }
        if pg_sys::GetDatabaseEncoding() != pg_sys::pg_enc::PG_UTF8 as i32 {
            let encoding = std::ffi::CStr::from_ptr(pg_sys::GetDatabaseEncodingName()).to_string_lossy();
            ereport!(
                ERROR,
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("the pg_redis output plugin needs a UTF-8 database, and this one is {encoding}"),
                "Capture this database's tables by trigger (the default), or move it to a UTF-8 database."
            );
        }
        (*options).output_type = pg_sys::OutputPluginOutputType::OUTPUT_PLUGIN_TEXTUAL_OUTPUT;
        (*options).receive_rewrites = false;
        let context = pg_sys::AllocSetContextCreateInternal(
            (*ctx).context,
            c"pg_redis decoding".as_ptr(),
            pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
            pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
        );
        SESSION.set(Some(Session {
            context,
            relations: Relations::new(),
            wrote: false,
            last_record: Instant::now(),
            sweeps: BTreeSet::new(),
            opening: None,
        }));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn begin(_ctx: *mut pg_sys::LogicalDecodingContext, txn: *mut pg_sys::ReorderBufferTXN) {
    // SAFETY: PostgreSQL's live transaction; its commit time is set before it is replayed.
    let (xid, commit_time) = unsafe { ((*txn).xid, (*txn).xact_time.commit_time) };
    let opening = WalRecord::Begin { xid: decode::full_transaction_id(xid), commit_ms: decode::unix_ms(commit_time) };
    with_session(|s| {
        s.wrote = false;
        s.sweeps.clear();
        s.opening = Some(opening);
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn change(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    rel: pg_sys::Relation,
    change: *mut pg_sys::ReorderBufferChange,
) {
    // SAFETY: PostgreSQL's live change of this callback.
    let action = unsafe { (*change).action };
    if !matches!(
        action,
        Action::REORDER_BUFFER_CHANGE_INSERT
            | Action::REORDER_BUFFER_CHANGE_UPDATE
            | Action::REORDER_BUFFER_CHANGE_DELETE
    ) {
        return;
    }
    // SAFETY: the relation of this change, under its historic snapshot.
    let class = with_session(|s| unsafe { s.relations.classify(rel) });
    let decode = |old, new| match &class {
        // SAFETY: the relation and tuples of this change, under its historic snapshot.
        Relation::Synced(r) if !r.user_types => unsafe {
            decode::row_change(rel, &r.watch, r.identity, action, old, new)
        },
        Relation::Synced(r) => {
            // User code (a cast to json, an output function) may raise an ERROR: it must not
            // stop decoding at this change forever. A subtransaction takes no transaction id.
            let guarded = std::panic::AssertUnwindSafe(|| {
                // SAFETY: as above.
                unsafe { decode::row_change(rel, &r.watch, r.identity, action, old, new) }
            });
            crate::pg::xact::in_subtransaction(guarded)
                .unwrap_or_else(|reason| vec![WalRecord::Undecodable { mapping_id: r.watch.mapping_id, reason }])
        }
        Relation::Outbox if action == Action::REORDER_BUFFER_CHANGE_INSERT => {
            // SAFETY: as above.
            unsafe { decode::queued_row(rel, new) }.into_iter().collect()
        }
        _ => Vec::new(),
    };
    match class {
        Relation::Synced(..) | Relation::Outbox => {}
        Relation::MappingCatalog => {
            with_session(|s| s.relations.forget());
            return;
        }
        Relation::NotSynced => return,
    }
    let context = with_session(|s| s.context);
    // SAFETY: the session's context outlives this call; the tuples belong to this change; the
    // record is owned Rust data before the context is reset.
    let records = unsafe {
        let previous = pg_sys::MemoryContextSwitchTo(context);
        let (old, new) = crate::pg::compat::decoded_tuples(change);
        let records = decode(old, new);
        pg_sys::MemoryContextSwitchTo(previous);
        pg_sys::MemoryContextReset(context);
        records
    };
    for r in &records {
        if let WalRecord::Change { mapping_id, op: WalOp::Outbox(OutboxOp::Sweep), .. } = r {
            with_session(|s| s.sweeps.insert(*mapping_id));
        } else {
            // SAFETY: the live decoding context.
            unsafe { write(ctx, r) };
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn truncate(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    nrelations: std::ffi::c_int,
    relations: *mut pg_sys::Relation,
    _change: *mut pg_sys::ReorderBufferChange,
) {
    // A whole synced table is purged; a partition of one alone is swept (the other partitions'
    // keys stay). One statement may list a table and its partitions: one purge covers them.
    let mut whole_by_mapping: BTreeMap<i64, bool> = BTreeMap::new();
    for i in 0..nrelations.max(0) as usize {
        // SAFETY: PostgreSQL passes nrelations open relations.
        let rel = unsafe { *relations.add(i) };
        // SAFETY: as above, under the historic snapshot.
        match with_session(|s| unsafe { s.relations.classify(rel) }) {
            Relation::Synced(r) => {
                // SAFETY: as above.
                let whole = unsafe { (*rel).rd_id } == r.watch.table;
                *whole_by_mapping.entry(r.watch.mapping_id).or_default() |= whole;
            }
            Relation::MappingCatalog => with_session(|s| s.relations.forget()),
            _ => {}
        }
    }
    for (mapping_id, whole) in whole_by_mapping {
        let op = if whole { OutboxOp::Row(Op::Truncate) } else { OutboxOp::Sweep };
        let record = WalRecord::Change { mapping_id, op: WalOp::Outbox(op), before: None, after: None };
        // SAFETY: the live decoding context.
        unsafe { write(ctx, &record) };
    }
}

/// Logical messages: only the backfill watermarks the worker commits (transactional messages
/// of prefix `pg_redis`), in their commit's place among the changes.
#[pg_guard]
unsafe extern "C-unwind" fn message(
    ctx: *mut pg_sys::LogicalDecodingContext,
    _txn: *mut pg_sys::ReorderBufferTXN,
    _lsn: pg_sys::XLogRecPtr,
    transactional: bool,
    prefix: *const std::ffi::c_char,
    size: pg_sys::Size,
    content: *const std::ffi::c_char,
) {
    // SAFETY: PostgreSQL's prefix (a C string) and content (`size` bytes) of this message.
    let (prefix, content) =
        unsafe { (std::ffi::CStr::from_ptr(prefix), std::slice::from_raw_parts(content.cast::<u8>(), size)) };
    if !transactional || prefix.to_bytes() != Watermark::PREFIX.as_bytes() {
        return;
    }
    // Anything else under the prefix is not pg_redis's: not a record.
    let parsed = std::str::from_utf8(content).ok().and_then(|t| WalRecord::parse(t).ok());
    if let Some(record @ WalRecord::Watermark(_)) = parsed {
        // SAFETY: the live decoding context.
        unsafe { write(ctx, &record) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn commit(
    ctx: *mut pg_sys::LogicalDecodingContext,
    txn: *mut pg_sys::ReorderBufferTXN,
    _commit_lsn: pg_sys::XLogRecPtr,
) {
    for mapping_id in with_session(|s| std::mem::take(&mut s.sweeps)) {
        let sweep = WalRecord::Change { mapping_id, op: WalOp::Outbox(OutboxOp::Sweep), before: None, after: None };
        // SAFETY: the live decoding context.
        unsafe { write(ctx, &sweep) };
    }
    let (wrote, last) = with_session(|s| (s.wrote, s.last_record));
    let record = if wrote {
        // SAFETY: PostgreSQL's live transaction; commit_time is the member a commit sets.
        let (xid, commit_time) = unsafe { ((*txn).xid, (*txn).xact_time.commit_time) };
        Some(WalRecord::Commit { xid: decode::full_transaction_id(xid), commit_ms: decode::unix_ms(commit_time) })
    } else if last.elapsed() >= KEEPALIVE_EVERY {
        Some(WalRecord::Keepalive)
    } else {
        None
    };
    if let Some(r) = record {
        // SAFETY: the live decoding context; its write location is this commit's end.
        unsafe { write(ctx, &r) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shutdown(_ctx: *mut pg_sys::LogicalDecodingContext) {
    // The memory context goes with the decoding context's.
    SESSION.set(None);
}

/// Runs `f` on the decoding session; a callback without one (startup never ran) is a bug, and
/// an ERROR rather than changes silently skipped.
fn with_session<R>(f: impl FnOnce(&mut Session) -> R) -> R {
    let r = SESSION.with_borrow_mut(|s| s.as_mut().map(f));
    match r {
        Some(r) => r,
        None => error!("pg_redis decoding callback called without a decoding session"),
    }
}

/// Writes one record as one row of output.
///
/// # Safety
/// `ctx` is the live decoding context of a callback that may write.
unsafe fn write(ctx: *mut pg_sys::LogicalDecodingContext, record: &WalRecord) {
    if !matches!(record, WalRecord::Commit { .. } | WalRecord::Keepalive) {
        if let Some(opening) = with_session(|s| s.opening.take()) {
            // SAFETY: as for this call.
            unsafe { write_one(ctx, &opening) };
        }
    }
    // SAFETY: as for this call.
    unsafe { write_one(ctx, record) };
}

/// Writes `record` alone.
///
/// # Safety
/// As for [`write`].
unsafe fn write_one(ctx: *mut pg_sys::LogicalDecodingContext, record: &WalRecord) {
    let text = record.encode();
    // SAFETY: see the function's contract; `out` is the context's output buffer.
    unsafe {
        pg_sys::OutputPluginPrepareWrite(ctx, true);
        pg_sys::appendBinaryStringInfo((*ctx).out, text.as_ptr().cast(), text.len() as i32);
        pg_sys::OutputPluginWrite(ctx, true);
    }
    with_session(|s| {
        s.wrote = true;
        s.last_record = Instant::now();
    })
}

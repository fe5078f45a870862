//! A decoded row change of a synced table becomes the record the trigger would have queued:
//! the same `to_jsonb` under the same canonical settings, the same filter of UPDATEs that
//! change nothing mapped, the old row kept only for a new key or a stream or channel.
//!
//! What the WAL may lack, and what stands in for it (never a guess):
//! - an UPDATE keeps a large value stored out of line: the WAL has only a pointer to it. The
//!   old row has the value when the replica identity is FULL; otherwise the record asks the
//!   worker to re-read the row (`Refetch`, with the old row when the key changed).
//! - unless FULL, the old row of an UPDATE or DELETE holds only the replica identity's columns.
//!   When they do not hold the key (or under NOTHING), a DELETE, and an UPDATE that may have
//!   changed the key unseen, ask for a sweep of the table's keys; UPDATEs that change no mapped
//!   column cannot be told apart, and are kept.

use super::synced::Identity;
use crate::capture::canonical::with_canonical_settings;
use crate::capture::watch::Watch;
use crate::pg::compat::attributes;
use crate::pg::tuple::{columns_changed, row_to_jsonb};
use pg_redis_shared::wal::{QueuedRow, WalOp, WalRecord};
use pg_redis_shared::{Op, OutboxOp};
use pgrx::pg_sys::ReorderBufferChangeType as Action;
use pgrx::prelude::*;
use std::ffi::CStr;

/// The records of one INSERT, UPDATE or DELETE of `rel` (none when it changes nothing
/// pg_redis keeps).
///
/// # Safety
/// `rel` is the open relation of the change; `old` and `new` are its tuples (or null), described
/// by `rel`'s descriptor; the historic snapshot of the change is in force.
pub unsafe fn row_change(
    rel: pg_sys::Relation,
    watch: &Watch,
    identity: Identity,
    action: Action::Type,
    old: pg_sys::HeapTuple,
    new: pg_sys::HeapTuple,
) -> Vec<WalRecord> {
    // SAFETY: see the function's contract.
    let (desc, rowtype) = unsafe { ((*rel).rd_att, (*(*rel).rd_rel).reltype) };
    let old = (!old.is_null()).then_some(old);
    let new = (!new.is_null()).then_some(new);
    // FULL always logs the old row of an UPDATE or DELETE; should it be missing, trust nothing.
    let identity = if identity == Identity::Full && old.is_none() { Identity::Partial } else { identity };
    // SAFETY: tuples of this change, described by desc.
    let text = |t: pg_sys::HeapTuple| unsafe { jsonb_text(t, desc, rowtype) };
    let record = |op: WalOp, before: Option<pg_sys::HeapTuple>, after: Option<pg_sys::HeapTuple>| WalRecord::Change {
        mapping_id: watch.mapping_id,
        op,
        before: before.map(text),
        after: after.map(text),
    };
    let sweep = || record(WalOp::Outbox(OutboxOp::Sweep), None, None);
    match action {
        Action::REORDER_BUFFER_CHANGE_INSERT => {
            new.map(|n| record(WalOp::Outbox(OutboxOp::Row(Op::Create)), None, Some(n))).into_iter().collect()
        }
        Action::REORDER_BUFFER_CHANGE_UPDATE => {
            let Some(new) = new else { return Vec::new() };
            // SAFETY: both tuples belong to this change.
            let (new, missing) = unsafe { with_unchanged_values(new, old, desc, watch.columns.as_deref()) };
            // Unless FULL, the old row holds the identity's columns only (the rest reads NULL),
            // and comes only when one of them changed: it tells an old key only when the
            // identity holds the key, and without it the key did not change.
            let (old_key_row, full_old) = match identity {
                Identity::Full => (old, old),
                Identity::CoversKey => (old, None),
                Identity::Partial => (None, None),
            };
            // SAFETY: as above.
            let key_changed =
                old_key_row.filter(|o| unsafe { columns_changed(Some(&watch.key_columns), *o, new, desc) });
            if let Some(o) = full_old {
                // SAFETY: as above.
                if !missing && !unsafe { columns_changed(watch.columns.as_deref(), o, new, desc) } {
                    return Vec::new();
                }
            }
            let before = key_changed.or(full_old.filter(|_| watch.needs_before));
            let op = if missing { WalOp::Refetch } else { WalOp::Outbox(OutboxOp::Row(Op::Update)) };
            let mut records = vec![record(op, before, Some(new))];
            if identity == Identity::Partial {
                // The key may have changed unseen: the old key goes with the sweep.
                records.push(sweep());
            }
            records
        }
        Action::REORDER_BUFFER_CHANGE_DELETE => {
            let usable = old.filter(|o| match identity {
                Identity::Full => true,
                // SAFETY: as above.
                Identity::CoversKey => unsafe { holds_key(*o, desc, &watch.key_columns) },
                Identity::Partial => false,
            });
            match usable {
                Some(o) => vec![record(WalOp::Outbox(OutboxOp::Row(Op::Delete)), Some(o), None)],
                None => vec![sweep()],
            }
        }
        _ => Vec::new(),
    }
}

/// The record of a row inserted into `redis.outbox`.
///
/// # Safety
/// `rel` is the open outbox and `new` its inserted tuple.
pub unsafe fn queued_row(rel: pg_sys::Relation, new: pg_sys::HeapTuple) -> Option<WalRecord> {
    if new.is_null() {
        return None;
    }
    // SAFETY: see the function's contract.
    let desc = unsafe { (*rel).rd_att };
    // SAFETY: `new` is described by desc.
    let value = |name: &str| unsafe { column(new, desc, name) };
    // SAFETY: the bigint columns (id, mapping_id, tx_id) are passed by value.
    let int = |name: &str| value(name).and_then(|d| unsafe { i64::from_datum(d, false) });
    let jsonb = |name: &str| {
        // SAFETY: jsonb values of this tuple; jsonb_out detoasts them and returns a C string.
        value(name).map(|d| unsafe {
            let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), d);
            CStr::from_ptr(text).to_string_lossy().into_owned()
        })
    };
    // SAFETY: op is a "char", captured_at a timestamptz and command a text[] of this tuple.
    let (op, captured, command) = unsafe {
        (
            value("op").map(|d| d.value() as u8 as char),
            value("captured_at").and_then(|d| i64::from_datum(d, false)),
            value("command").and_then(|d| Vec::<String>::from_datum(d, false)),
        )
    };
    Some(WalRecord::Queued(QueuedRow {
        id: int("id")?,
        mapping_id: int("mapping_id"),
        op: op?,
        tx_id: int("tx_id").unwrap_or_default(),
        captured_ms: captured.map(unix_ms).unwrap_or_default(),
        old_row: jsonb("old_row"),
        new_row: jsonb("new_row"),
        command,
    }))
}

/// The value of the column `name` of `tuple`, None when NULL or absent.
///
/// # Safety
/// `tuple` is live and described by `desc`.
unsafe fn column(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, name: &str) -> Option<pg_sys::Datum> {
    // SAFETY: see the function's contract.
    let attrs = unsafe { attributes(desc) };
    let i = attrs.iter().position(|a| {
        // SAFETY: attname is a NUL-terminated NameData.
        !a.attisdropped && unsafe { CStr::from_ptr(a.attname.data.as_ptr()) }.to_bytes() == name.as_bytes()
    })?;
    let mut isnull = true;
    // SAFETY: i is within the descriptor.
    let d = unsafe { pg_sys::heap_getattr(tuple, i as i32 + 1, desc, &mut isnull) };
    (!isnull).then_some(d)
}

/// A decoded transaction's id with its epoch, as `txid_current()` gives it (the outbox's
/// `tx_id`): decoded transactions are in the past, within 2^31 ids of the next one.
pub fn full_transaction_id(xid: pg_sys::TransactionId) -> i64 {
    // SAFETY: reads the shared counter under its lock.
    let next = unsafe { pg_sys::ReadNextFullTransactionId() }.value;
    let xid = xid.into_inner();
    let mut epoch = next >> 32;
    if xid > next as u32 {
        epoch = epoch.saturating_sub(1);
    }
    ((epoch << 32) | u64::from(xid)) as i64
}

/// PostgreSQL's timestamp (µs since 2000-01-01) as ms since the Unix epoch.
pub fn unix_ms(t: pg_sys::TimestampTz) -> i64 {
    const POSTGRES_EPOCH_MS: i64 = 946_684_800_000;
    t / 1000 + POSTGRES_EPOCH_MS
}

/// The text of `to_jsonb(row)`, as the trigger computes it.
///
/// # Safety
/// `tuple` is live and described by `desc`, whose row type is `rowtype`.
unsafe fn jsonb_text(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, rowtype: pg_sys::Oid) -> String {
    with_canonical_settings(|| {
        // SAFETY: see the function's contract; jsonb_out returns a palloc'd C string.
        unsafe {
            let jsonb = row_to_jsonb(tuple, desc, rowtype);
            let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), jsonb);
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    })
}

/// `new` with each value the UPDATE left out of line (only a pointer in the WAL) taken from
/// `old`, and whether a mapped column's value was nowhere to be had (then set to NULL).
///
/// # Safety
/// `new` and `old` are tuples of one UPDATE, described by `desc`.
unsafe fn with_unchanged_values(
    new: pg_sys::HeapTuple,
    old: Option<pg_sys::HeapTuple>,
    desc: pg_sys::TupleDesc,
    mapped: Option<&[String]>,
) -> (pg_sys::HeapTuple, bool) {
    // SAFETY: see the function's contract; the arrays hold natts entries each.
    unsafe {
        let attrs = attributes(desc);
        let natts = attrs.len();
        let mut values = vec![pg_sys::Datum::from(0usize); natts];
        let mut nulls = vec![true; natts];
        pg_sys::heap_deform_tuple(new, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        let (mut old_values, mut old_nulls) = (vec![pg_sys::Datum::from(0usize); natts], vec![true; natts]);
        if let Some(o) = old {
            pg_sys::heap_deform_tuple(o, desc, old_values.as_mut_ptr(), old_nulls.as_mut_ptr());
        }
        let (mut replaced, mut missing) = (false, false);
        for (i, att) in attrs.iter().enumerate() {
            let (Some(value), Some(null)) = (values.get_mut(i), nulls.get_mut(i)) else { continue };
            if *null || att.attlen != -1 || !is_out_of_line(*value) {
                continue;
            }
            replaced = true;
            match (old_values.get(i), old_nulls.get(i)) {
                (Some(v), Some(false)) if !is_out_of_line(*v) => *value = *v,
                _ => {
                    *null = true;
                    let name = CStr::from_ptr(att.attname.data.as_ptr()).to_bytes();
                    missing |= mapped.is_none_or(|m| m.iter().any(|c| c.as_bytes() == name));
                }
            }
        }
        if !replaced {
            return (new, false);
        }
        (pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr()), missing)
    }
}

/// Whether a varlena datum is a pointer to a value stored out of line on disk.
///
/// # Safety
/// `value` is a non-null datum of a varlena column.
unsafe fn is_out_of_line(value: pg_sys::Datum) -> bool {
    let p = value.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: see the function's contract.
    unsafe {
        pgrx::varlena::varatt_is_1b_e(p)
            && pgrx::varlena::vartag_external(p) == pg_sys::vartag_external::VARTAG_ONDISK as u8
    }
}

/// Whether `old` holds a value in every key column (the replica identity may log fewer).
///
/// # Safety
/// `old` is live and described by `desc`.
unsafe fn holds_key(old: pg_sys::HeapTuple, desc: pg_sys::TupleDesc, key_columns: &[String]) -> bool {
    // SAFETY: see the function's contract.
    key_columns.iter().all(|k| unsafe { column(old, desc, k) }.is_some())
}

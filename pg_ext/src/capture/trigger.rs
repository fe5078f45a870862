//! The capture trigger: `redis.capture('<mapping id>')`, installed by `redis.sync_table` as an
//! AFTER ROW trigger (INSERT, UPDATE, DELETE) and an AFTER STATEMENT trigger (TRUNCATE).
//!
//! It only appends to `redis.outbox` in the user's transaction. `to_jsonb` of the row is called
//! directly (no SQL round trip) under the canonical session settings, as the user who changed the row, so a user-defined cast a type
//! brings runs with that user's rights; only the INSERT of the finished values runs as the
//! extension's owner (users need no right on the outbox, and cannot invent events). The key and
//! stored value are computed later by the worker, with the mapping version the trigger names.
//! An UPDATE that changes none of the mapped columns (nor the key columns) queues nothing; one
//! that keeps the key of a table without stream or channel does not store the old row.

use crate::api::privileges::as_extension_owner;
use crate::capture::canonical::with_canonical_settings;
use crate::capture::{enqueue, wake};
use crate::errors::raise;
use pg_redis_shared::{Error, Op, OutboxOp};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

thread_local! {
    /// What the trigger needs of each mapping version, by (trigger oid, mapping id): versions
    /// never change, and a recreated extension has new triggers.
    static MAPPINGS: RefCell<HashMap<(u32, i64), Rc<Watch>>> = RefCell::new(HashMap::new());
    /// `to_jsonb` ready to call for each row type (kept for the life of the backend).
    static TO_JSONB: RefCell<HashMap<u32, usize>> = RefCell::new(HashMap::new());
}

struct Watch {
    /// Columns whose change matters, by name; `None` means every column.
    columns: Option<Vec<String>>,
    key_columns: Vec<String>,
    /// Whether events carry the old row (`before`) to a stream or channel.
    needs_before: bool,
    /// The synced table; a TRUNCATE of one of its partitions fires on the partition.
    table: pg_sys::Oid,
}

#[pg_trigger(sql = r#"
CREATE FUNCTION redis."capture"() RETURNS trigger
    LANGUAGE c
    AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn capture<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let td = trigger.trigger_data();
    let tg = trigger.trigger();
    let mapping_id = mapping_id_arg(tg);
    let event = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    // SAFETY: tg_relation and the tuples are valid for the duration of the trigger call.
    let (tupdesc, relid, rowtype) =
        unsafe { ((*td.tg_relation).rd_att, (*td.tg_relation).rd_id, (*(*td.tg_relation).rd_rel).reltype) };
    let (op, old, new) = match event {
        pg_sys::TRIGGER_EVENT_INSERT => (OutboxOp::Row(Op::Create), None, Some(td.tg_trigtuple)),
        pg_sys::TRIGGER_EVENT_DELETE => (OutboxOp::Row(Op::Delete), Some(td.tg_trigtuple), None),
        pg_sys::TRIGGER_EVENT_UPDATE => {
            let w = watch(tg.tgoid, mapping_id);
            let (old, new) = (td.tg_trigtuple, td.tg_newtuple);
            // SAFETY: both tuples belong to this UPDATE of this relation.
            if !unsafe { columns_changed(w.columns.as_deref(), old, new, tupdesc) } {
                return Ok(None);
            }
            // SAFETY: as above.
            let keep_old = w.needs_before || unsafe { columns_changed(Some(&w.key_columns), old, new, tupdesc) };
            (OutboxOp::Row(Op::Update), keep_old.then_some(old), Some(new))
        }
        pg_sys::TRIGGER_EVENT_TRUNCATE => {
            // A partition alone: its keys go, the other partitions' stay (a sweep, not a purge).
            // When the whole table is truncated, its partitions' triggers fire too: one purge
            // covers them.
            let w = watch(tg.tgoid, mapping_id);
            let whole = relid == w.table;
            if !first_truncate_of_statement(mapping_id, whole) {
                return Ok(None);
            }
            (if whole { OutboxOp::Row(Op::Truncate) } else { OutboxOp::Sweep }, None, None)
        }
        _ => return Ok(None),
    };
    let jsonb = |t: Option<*mut pg_sys::HeapTupleData>| match t {
        // SAFETY: the tuple is live and described by tupdesc.
        Some(t) if !t.is_null() => unsafe { DatumWithOid::new(row_to_jsonb(t, tupdesc, rowtype), pg_sys::JSONBOID) },
        _ => DatumWithOid::null_oid(pg_sys::JSONBOID),
    };
    let (old, new) = with_canonical_settings(|| (jsonb(old), jsonb(new)));
    as_extension_owner(|| enqueue::row_change(mapping_id, op, old, new));
    if matches!(op, OutboxOp::Row(Op::Truncate) | OutboxOp::Sweep) {
        truncate_queued();
    }
    wake::after_commit();
    Ok(None)
}

/// (local transaction, command) of the TRUNCATE statement being captured, and the (mapping,
/// whole table) events queued for it.
type TruncateStatement = (u32, u32, Vec<(i64, bool)>);

thread_local! {
    static TRUNCATES: RefCell<TruncateStatement> = const { RefCell::new((0, 0, Vec::new())) };
}

fn statement_id() -> (u32, u32) {
    // SAFETY: reading this backend's command counter.
    (crate::pg::compat::local_transaction_id(), unsafe { pg_sys::GetCurrentCommandId(false) })
}

/// Whether this TRUNCATE event of a mapping still needs queueing in the current statement: a
/// purge of the whole table makes the sweeps of its partitions (same statement) pointless.
fn first_truncate_of_statement(mapping_id: i64, whole: bool) -> bool {
    let (lxid, cid) = statement_id();
    TRUNCATES.with_borrow_mut(|(l, c, seen)| {
        if (*l, *c) != (lxid, cid) {
            *l = lxid;
            *c = cid;
            seen.clear();
        }
        if seen.iter().any(|(m, w)| *m == mapping_id && (*w || !whole)) {
            return false;
        }
        seen.push((mapping_id, whole));
        true
    })
}

/// Our own INSERT into the outbox advanced the command counter: the next trigger of the same
/// TRUNCATE (a partition's) must still count as the same statement.
fn truncate_queued() {
    let (lxid, cid) = statement_id();
    TRUNCATES.with_borrow_mut(|(l, c, _)| {
        if *l == lxid {
            *c = cid;
        }
    });
}

/// `to_jsonb(row)` by a direct function call, as the current user.
///
/// # Safety
/// `tuple` is a live tuple described by `tupdesc`, whose row type is `rowtype`.
unsafe fn row_to_jsonb(
    tuple: *mut pg_sys::HeapTupleData,
    tupdesc: pg_sys::TupleDesc,
    rowtype: pg_sys::Oid,
) -> pg_sys::Datum {
    // SAFETY: see the function's contract; the FmgrInfo lives in TopMemoryContext.
    unsafe {
        let row = pg_sys::heap_copy_tuple_as_datum(tuple, tupdesc);
        let flinfo = TO_JSONB
            .with_borrow_mut(|cache| *cache.entry(rowtype.to_u32()).or_insert_with(|| to_jsonb_for(rowtype) as usize))
            as *mut pg_sys::FmgrInfo;
        pg_sys::FunctionCall1Coll(flinfo, pg_sys::InvalidOid, row)
    }
}

/// A call descriptor of `to_jsonb` whose argument is known to be of `rowtype` (to_jsonb reads
/// its argument's type from the call expression).
unsafe fn to_jsonb_for(rowtype: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
    // SAFETY: allocations in TopMemoryContext, kept for the life of the backend.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let flinfo = pg_sys::palloc0(size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info(pg_sys::Oid::from(pg_sys::F_TO_JSONB), flinfo);
        let arg = pg_sys::makeNullConst(rowtype, -1, pg_sys::InvalidOid);
        let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(pg_sys::F_TO_JSONB),
            pg_sys::JSONBOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        (*flinfo).fn_expr = expr.cast();
        pg_sys::MemoryContextSwitchTo(old);
        flinfo
    }
}

fn mapping_id_arg(t: &pg_sys::Trigger) -> i64 {
    let arg = if t.tgnargs >= 1 && !t.tgargs.is_null() {
        // SAFETY: tgargs holds tgnargs C strings.
        unsafe { std::ffi::CStr::from_ptr(*t.tgargs) }.to_str().ok().and_then(|s| s.parse::<i64>().ok())
    } else {
        None
    };
    arg.unwrap_or_else(|| raise(Error::TriggerWithoutMapping))
}

/// What the trigger needs of a mapping version (cached).
fn watch(tgoid: pg_sys::Oid, mapping_id: i64) -> Rc<Watch> {
    let key = (tgoid.to_u32(), mapping_id);
    if let Some(w) = MAPPINGS.with_borrow(|m| m.get(&key).cloned()) {
        return w;
    }
    let row = as_extension_owner(|| {
        Spi::connect(|c| {
            let rows = c
                .select(
                    "SELECT columns, key_columns, stream_key IS NOT NULL OR channel IS NOT NULL, table_name::pg_catalog.oid FROM redis.mapping WHERE id OPERATOR(pg_catalog.=) $1",
                    None,
                    &[mapping_id.into()],
                )
                .unwrap_or_report();
            rows.into_iter().next().map(|r| {
                (
                    r.get::<Vec<String>>(1).ok().flatten(),
                    r.get::<Vec<String>>(2).ok().flatten().unwrap_or_default(),
                    r.get::<bool>(3).ok().flatten().unwrap_or(true),
                    r.get::<pg_sys::Oid>(4).ok().flatten().unwrap_or(pg_sys::InvalidOid),
                )
            })
        })
    });
    let Some((columns, key_columns, needs_before, table)) = row else {
        raise(Error::TriggerMappingGone { mapping_id });
    };
    let w = Rc::new(Watch {
        columns: columns.map(|mut c| {
            c.extend(key_columns.iter().cloned());
            c
        }),
        key_columns,
        needs_before,
        table,
    });
    MAPPINGS.with_borrow_mut(|m| m.insert(key, w.clone()));
    w
}

/// Whether an UPDATE changed any of `columns` (every column when None). Binary comparison: a
/// value rewritten to an equal but differently stored form counts as a change, which is
/// harmless.
unsafe fn columns_changed(
    columns: Option<&[String]>,
    old: *mut pg_sys::HeapTupleData,
    new: *mut pg_sys::HeapTupleData,
    tupdesc: pg_sys::TupleDesc,
) -> bool {
    // SAFETY: tupdesc describes both tuples and lives through this call.
    let attrs = unsafe { crate::pg::compat::attributes(tupdesc) };
    for (i, att) in attrs.iter().enumerate() {
        if att.attisdropped {
            continue;
        }
        if let Some(w) = columns {
            // SAFETY: attname is a NUL-terminated NameData.
            let name = unsafe { std::ffi::CStr::from_ptr(att.attname.data.as_ptr()) }.to_bytes();
            if !w.iter().any(|c| c.as_bytes() == name) {
                continue;
            }
        }
        let attnum = i as i32 + 1;
        let (mut null_a, mut null_b) = (false, false);
        // SAFETY: attnum is within the descriptor.
        let a = unsafe { pg_sys::heap_getattr(old, attnum, tupdesc, &mut null_a) };
        // SAFETY: the same attribute of the other tuple of this UPDATE (same descriptor).
        let b = unsafe { pg_sys::heap_getattr(new, attnum, tupdesc, &mut null_b) };
        if null_a != null_b {
            return true;
        }
        // SAFETY: both datums are non-null values of this attribute, whose byval/len are given.
        if !null_a && !unsafe { same_datum(a, b, att.attbyval, att.attlen) } {
            return true;
        }
    }
    false
}

unsafe fn same_datum(a: pg_sys::Datum, b: pg_sys::Datum, byval: bool, len: i16) -> bool {
    if byval {
        return a == b;
    }
    let (pa, pb) = (a.cast_mut_ptr::<u8>(), b.cast_mut_ptr::<u8>());
    // SAFETY: by-reference datums point at valid values of the column's type.
    unsafe {
        let (la, lb) = match len {
            -1 => (
                pgrx::varlena::varsize_any(pa as *const pg_sys::varlena),
                pgrx::varlena::varsize_any(pb as *const pg_sys::varlena),
            ),
            -2 => (
                std::ffi::CStr::from_ptr(pa as *const _).to_bytes().len(),
                std::ffi::CStr::from_ptr(pb as *const _).to_bytes().len(),
            ),
            n => (n as usize, n as usize),
        };
        la == lb && std::slice::from_raw_parts(pa, la) == std::slice::from_raw_parts(pb, lb)
    }
}

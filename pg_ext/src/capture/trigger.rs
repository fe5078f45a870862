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
use crate::capture::watch::Watch;
use crate::capture::{enqueue, wake};
use crate::errors::raise;
use crate::pg::tuple::{columns_changed, row_to_jsonb};
use crate::pg::xact;
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
    (crate::pg::compat::local_transaction_id(), xact::command_id())
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
    let w = Rc::new(Watch::new(mapping_id, columns, key_columns, needs_before, table));
    MAPPINGS.with_borrow_mut(|m| m.insert(key, w.clone()));
    w
}

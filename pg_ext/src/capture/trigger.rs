//! The capture trigger: `redis.capture('<mapping id>')`, installed by `redis.sync_table` as an
//! AFTER ROW trigger (INSERT, UPDATE, DELETE) and an AFTER STATEMENT trigger (TRUNCATE).
//!
//! It only appends to `redis.outbox` in the user's transaction, through one prepared plan kept
//! for the life of the backend: `to_jsonb` of the row runs in SQL on the row datum itself, so
//! there is no text round trip here. The key and the stored value are computed later, by the
//! worker, with the mapping version the trigger names. An UPDATE that changes none of the
//! mapped columns (nor the key columns) queues nothing.

use crate::capture::wake;
use crate::errors::raise_with;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use std::cell::RefCell;
use std::collections::HashMap;

const INSERT_SQL: &str = "INSERT INTO redis.outbox (mapping_id, op, old_row, new_row) VALUES ($1, $2::\"char\", to_jsonb($3), to_jsonb($4))";

thread_local! {
    static INSERT_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
    /// Per mapping version (immutable once written): the columns whose change matters, by
    /// name; `None` means every column.
    static WATCHED: RefCell<HashMap<i64, Option<Vec<String>>>> = RefCell::new(HashMap::new());
}

#[pg_trigger(sql = r#"
CREATE FUNCTION redis."capture"() RETURNS trigger
    LANGUAGE c SECURITY DEFINER
    AS 'MODULE_PATHNAME', '@FUNCTION_NAME@';
"#)]
fn capture<'a>(trigger: &'a PgTrigger<'a>) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    let td = trigger.trigger_data();
    let mapping_id = mapping_id_arg(trigger.trigger());
    let event = td.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    // SAFETY: tg_relation and the tuples are valid for the duration of the trigger call.
    let tupdesc = unsafe { (*td.tg_relation).rd_att };
    let (op, old, new) = match event {
        pg_sys::TRIGGER_EVENT_INSERT => ('c', None, Some(td.tg_trigtuple)),
        pg_sys::TRIGGER_EVENT_DELETE => ('d', Some(td.tg_trigtuple), None),
        pg_sys::TRIGGER_EVENT_UPDATE => {
            // SAFETY: both tuples belong to this UPDATE of this relation.
            if !unsafe { watched_columns_changed(mapping_id, td.tg_trigtuple, td.tg_newtuple, tupdesc) } {
                return Ok(None);
            }
            ('u', Some(td.tg_trigtuple), Some(td.tg_newtuple))
        }
        pg_sys::TRIGGER_EVENT_TRUNCATE => ('t', None, None),
        _ => return Ok(None),
    };
    // SAFETY: the tuples are live; heap_copy_tuple_as_datum makes a self-contained composite
    // datum (TOASTed values inlined) whose header names the row type.
    let row = |t: Option<*mut pg_sys::HeapTupleData>| match t {
        Some(t) if !t.is_null() => unsafe { DatumWithOid::new(pg_sys::heap_copy_tuple_as_datum(t, tupdesc), pg_sys::RECORDOID) },
        _ => DatumWithOid::null_oid(pg_sys::RECORDOID),
    };
    let args = [mapping_id.into(), op.to_string().into(), row(old), row(new)];
    Spi::connect_mut(|client| {
        INSERT_PLAN.with_borrow_mut(|plan| {
            if plan.is_none() {
                let p = client
                    .prepare_mut(INSERT_SQL, &[pg_sys::INT8OID.into(), pg_sys::TEXTOID.into(), pg_sys::RECORDOID.into(), pg_sys::RECORDOID.into()])
                    .unwrap_or_report();
                *plan = Some(p.keep());
            }
            if let Some(p) = plan.as_ref() {
                client.update(p, None, &args).unwrap_or_report();
            }
        })
    });
    wake::after_commit();
    Ok(None)
}

fn mapping_id_arg(t: &pg_sys::Trigger) -> i64 {
    let arg = if t.tgnargs >= 1 && !t.tgargs.is_null() {
        // SAFETY: tgargs holds tgnargs C strings.
        unsafe { std::ffi::CStr::from_ptr(*t.tgargs) }.to_str().ok().and_then(|s| s.parse::<i64>().ok())
    } else {
        None
    };
    arg.unwrap_or_else(|| {
        raise_with(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "redis.capture() must be installed by redis.sync_table(), which passes the mapping id",
            Some("call SELECT redis.sync_table('your_table') instead of creating the trigger by hand"),
        )
    })
}

/// The watched column names of a mapping version (cached: versions never change).
fn watched(mapping_id: i64) -> Option<Vec<String>> {
    if let Some(w) = WATCHED.with_borrow(|m| m.get(&mapping_id).cloned()) {
        return w;
    }
    let (columns, key_columns) = Spi::get_two_with_args::<Vec<String>, Vec<String>>("SELECT columns, key_columns FROM redis.mapping WHERE id = $1", &[mapping_id.into()])
        .unwrap_or((None, None));
    let w = columns.map(|mut c| {
        c.extend(key_columns.unwrap_or_default());
        c
    });
    WATCHED.with_borrow_mut(|m| m.insert(mapping_id, w.clone()));
    w
}

/// Whether an UPDATE changed any watched column (binary comparison: a value rewritten to an
/// equal but differently stored form still counts as a change, which is harmless).
unsafe fn watched_columns_changed(mapping_id: i64, old: *mut pg_sys::HeapTupleData, new: *mut pg_sys::HeapTupleData, tupdesc: pg_sys::TupleDesc) -> bool {
    let watched = watched(mapping_id);
    // SAFETY: tupdesc describes both tuples.
    let natts = unsafe { (*tupdesc).natts } as usize;
    let attrs = unsafe { (*tupdesc).attrs.as_slice(natts) };
    for (i, att) in attrs.iter().enumerate() {
        if att.attisdropped {
            continue;
        }
        if let Some(w) = &watched {
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
        let b = unsafe { pg_sys::heap_getattr(new, attnum, tupdesc, &mut null_b) };
        if null_a != null_b {
            return true;
        }
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
            -1 => (pgrx::varlena::varsize_any(pa as *const pg_sys::varlena), pgrx::varlena::varsize_any(pb as *const pg_sys::varlena)),
            -2 => (std::ffi::CStr::from_ptr(pa as *const _).to_bytes().len(), std::ffi::CStr::from_ptr(pb as *const _).to_bytes().len()),
            n => (n as usize, n as usize),
        };
        la == lb && std::slice::from_raw_parts(pa, la) == std::slice::from_raw_parts(pb, lb)
    }
}

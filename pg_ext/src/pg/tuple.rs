//! Row tuples of a trigger: whether an UPDATE changed given columns (binary comparison, no
//! operator call) and `to_jsonb` of a row by a direct function call (no SQL round trip).

use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    /// `to_jsonb` ready to call for each row type (kept for the life of the backend).
    static TO_JSONB: RefCell<HashMap<u32, usize>> = RefCell::new(HashMap::new());
}

/// `to_jsonb(row)` by a direct function call, as the current user.
///
/// # Safety
/// `tuple` is a live tuple described by `tupdesc`, whose row type is `rowtype`.
pub unsafe fn row_to_jsonb(
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
///
/// # Safety
/// `rowtype` is a composite type; called on the backend's main thread.
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

/// Whether an UPDATE changed any of `columns` (every column when None). Binary comparison: a
/// value rewritten to an equal but differently stored form counts as a change, which is
/// harmless.
///
/// # Safety
/// `old` and `new` are the live tuples of one UPDATE, both described by `tupdesc`.
pub unsafe fn columns_changed(
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

/// Whether two values of one attribute hold the same bytes.
///
/// # Safety
/// `a` and `b` are non-null values of an attribute whose `attbyval` and `attlen` are `byval`
/// and `len`.
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

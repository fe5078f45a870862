//! The replica identity a table captured from the WAL needs, on every leaf (the setting does
//! not pass from a partitioned table to its partitions):
//! - with a change stream or a channel, FULL: the WAL then carries the whole old row of every
//!   UPDATE and DELETE, so the events are the trigger's (the old row in `before`), and a value
//!   stored out of line that an UPDATE kept is read from the old row;
//! - otherwise an identity that holds the key columns is enough (a key that changed is always
//!   seen); the default one, the primary key, usually does, and writers then log less.

use crate::api::privileges::as_extension_owner_pinned;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// Sets REPLICA IDENTITY FULL on the tables of `mapping_id`'s tree (`rel`) whose identity
/// does not give what the mapping needs, saying so.
pub(crate) fn require_identity(rel: pg_sys::Oid, display: &str, mapping_id: i64) {
    let (key_columns, old_rows) = as_extension_owner_pinned(|| {
        let keys = Spi::get_one_with_args::<Vec<String>>(
            "SELECT key_columns FROM redis.mapping WHERE id = $1",
            &[mapping_id.into()],
        )
        .unwrap_or_report()
        .unwrap_or_default();
        let old_rows = Spi::get_one_with_args::<bool>(
            "SELECT stream_key IS NOT NULL OR channel IS NOT NULL FROM redis.mapping WHERE id = $1",
            &[mapping_id.into()],
        )
        .unwrap_or_report()
        .unwrap_or(true);
        (keys, old_rows)
    });
    require_full_identity(rel, display, (!old_rows).then_some(key_columns.as_slice()));
}

/// Sets REPLICA IDENTITY FULL on the tables of `rel`'s tree that lack it (with `key_columns`:
/// only on those whose identity does not hold them all), saying so.
fn require_full_identity(rel: pg_sys::Oid, display: &str, key_columns: Option<&[String]>) {
    // Listed as the extension's owner (the caller may not run redis.* functions), under the
    // catalog's search path; altered as the caller, who must own each table.
    let lacking: Vec<(pg_sys::Oid, String)> = as_extension_owner_pinned(|| {
        Spi::connect(|c| {
            c.select(
            "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM redis._partition_tree($1) p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r' AND c.relreplident <> 'f' \
                AND NOT ($2 AND EXISTS (SELECT 1 FROM pg_index i \
                     WHERE i.indrelid = c.oid \
                       AND CASE c.relreplident WHEN 'd' THEN i.indisprimary WHEN 'i' THEN i.indisreplident ELSE false END \
                       AND (SELECT array_agg(a.attname::text) FROM pg_attribute a \
                             WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey)) @> $3::text[])) \
              ORDER BY p.level, c.oid",
            None,
            &[rel.into(), key_columns.is_some().into(), key_columns.unwrap_or_default().to_vec().into()],
        )
        .unwrap_or_report()
        .filter_map(|r| Some((r.get::<pg_sys::Oid>(1).ok()??, r.get::<String>(2).ok()??)))
        .collect()
        })
    });
    if lacking.is_empty() {
        return;
    }
    for (oid, _) in &lacking {
        set_full(*oid);
    }
    let names: Vec<&str> = lacking.iter().map(|l| l.1.as_str()).collect();
    let why = if key_columns.is_some() {
        "their replica identity does not hold the key columns"
    } else {
        "the change stream or channel carries old rows"
    };
    notice!(
        "pg_redis: REPLICA IDENTITY FULL set on {} so that changes of {display} decode from the WAL ({why})",
        names.join(", ")
    );
}

/// What `ALTER TABLE ... REPLICA IDENTITY FULL` does, called directly: sync_table holds the
/// table open, which ALTER TABLE refuses ("being used by active queries"). The permission
/// checks of ALTER TABLE (ownership) still run.
fn set_full(oid: pg_sys::Oid) {
    // SAFETY: nodes built in the current memory context as ALTER TABLE's parser builds them;
    // AlterTableInternal takes the lock the command needs and reports errors as ERRORs.
    unsafe {
        let mut identity = PgBox::<pg_sys::ReplicaIdentityStmt>::alloc_node(pg_sys::NodeTag::T_ReplicaIdentityStmt);
        identity.identity_type = pg_sys::REPLICA_IDENTITY_FULL as std::ffi::c_char;
        let mut cmd = PgBox::<pg_sys::AlterTableCmd>::alloc_node(pg_sys::NodeTag::T_AlterTableCmd);
        cmd.subtype = pg_sys::AlterTableType::AT_ReplicaIdentity;
        cmd.def = identity.into_pg().cast();
        let cmds = pg_sys::lappend(std::ptr::null_mut(), cmd.into_pg().cast());
        pg_sys::AlterTableInternal(oid, cmds, false);
        pg_sys::CommandCounterIncrement();
    }
}

//! The replica identity a table captured from the WAL needs: FULL, on every leaf (the setting
//! does not pass from a partitioned table to its partitions). Then the WAL carries the whole
//! old row of every UPDATE and DELETE, so decoding yields the same events as the trigger: the
//! old row in the change streams, a key that changed always seen, and a value stored out of
//! line that an UPDATE kept read from the old row instead of from the table.

use crate::api::privileges::as_extension_owner_pinned;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// Sets REPLICA IDENTITY FULL on the tables of `rel`'s tree that lack it, saying so.
pub(crate) fn require_full_identity(rel: pg_sys::Oid, display: &str) {
    // Listed as the extension's owner (the caller may not run redis.* functions), under the
    // catalog's search path; altered as the caller, who must own each table.
    let lacking: Vec<(pg_sys::Oid, String)> = as_extension_owner_pinned(|| {
        Spi::connect(|c| {
            c.select(
            "SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
               FROM redis._partition_tree($1) p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind = 'r' AND c.relreplident <> 'f' ORDER BY p.level, c.oid",
            None,
            &[rel.into()],
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
    notice!(
        "pg_redis: REPLICA IDENTITY FULL set on {} so that changes of {display} decode with their old rows",
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

//! The capture triggers (`pg_redis_capture`, `pg_redis_capture_truncate`): creating them on a
//! synced table and its partitions, making them fire in every replication role, dropping them.
//! Also used by the DDL hook when partitions join or leave a synced table.

use super::checks::Table;
use pg_redis_shared::mapping::quote_ident;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

const TRIGGERS: [&str; 2] = ["pg_redis_capture", "pg_redis_capture_truncate"];

/// Drops the capture triggers that exist (quietly: no NOTICE for missing ones), also the
/// TRUNCATE triggers of partitions.
pub(super) fn drop_triggers(t: &Table) {
    drop_triggers_in_tree(t.oid);
}

/// Drops the capture triggers of `rel` and of its partitions that are not clones (a detached
/// partition keeps its own TRUNCATE triggers; PostgreSQL removes the cloned row triggers).
pub(crate) fn drop_triggers_in_tree(rel: pg_sys::Oid) {
    let triggers: Vec<(String, String)> = Spi::connect(|c| {
        c.select(
            "SELECT t.tgname::text, quote_ident(n.nspname) || '.' || quote_ident(r.relname) \
               FROM redis._partition_tree($1) p JOIN pg_trigger t ON t.tgrelid = p.relid AND t.tgparentid = 0 \
               JOIN pg_class r ON r.oid = p.relid JOIN pg_namespace n ON n.oid = r.relnamespace \
              WHERE t.tgname = ANY ($2)",
            None,
            &[rel.into(), TRIGGERS.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()],
        )
        .unwrap_or_report()
        .filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<String>(2).ok()??)))
        .collect()
    });
    for (name, rel) in triggers {
        Spi::run(&format!("DROP TRIGGER {} ON {rel}", quote_ident(&name))).unwrap_or_report();
    }
}

/// Row triggers (cloned to every partition by PostgreSQL, present and future) and TRUNCATE
/// triggers, on the table and on each of its partitions (statement triggers are not cloned; a
/// partition's TRUNCATE sweeps only the keys whose rows went; partitions created or attached
/// later get theirs from the DDL hook). Every capture trigger fires in every replication role
/// (ENABLE ALWAYS): a change applied by a logical-replication subscriber, or by a restore tool
/// running with `session_replication_role = replica`, is a change of the table like any other.
/// PostgreSQL 15 clones a row trigger with its firing state, also onto partitions made later.
pub(super) fn install_triggers(t: &Table, mapping_id: i64) {
    drop_triggers(t);
    Spi::run(&format!("CREATE TRIGGER pg_redis_capture AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW EXECUTE FUNCTION redis.capture('{mapping_id}')", t.quoted)).unwrap_or_report();
    install_truncate_triggers(t.oid, mapping_id);
}

/// TRUNCATE triggers on `rel` and each of its partitions; then every capture trigger of the
/// tree fires in every replication role.
pub(crate) fn install_truncate_triggers(rel: pg_sys::Oid, mapping_id: i64) {
    let rels: Vec<String> = Spi::connect(|c| {
        c.select(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(r.relname) FROM redis._partition_tree($1) p \
               JOIN pg_class r ON r.oid = p.relid JOIN pg_namespace n ON n.oid = r.relnamespace ORDER BY p.level",
            None,
            &[rel.into()],
        )
        .unwrap_or_report()
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect()
    });
    for rel in rels {
        Spi::run(&format!("CREATE TRIGGER pg_redis_capture_truncate AFTER TRUNCATE ON {rel} FOR EACH STATEMENT EXECUTE FUNCTION redis.capture('{mapping_id}')")).unwrap_or_report();
    }
    enable_always(rel);
}

/// Makes the capture triggers of `rel` and its partitions (clones included) fire in every
/// replication role: what ALTER TABLE ... ENABLE ALWAYS TRIGGER does, called directly because
/// sync_table holds the table open, which ALTER TABLE refuses ("being used by active queries").
fn enable_always(rel: pg_sys::Oid) {
    let triggers: Vec<(pg_sys::Oid, String)> = Spi::connect(|c| {
        c.select(
            "SELECT t.tgrelid, t.tgname::text FROM redis._partition_tree($1) p JOIN pg_trigger t ON t.tgrelid = p.relid \
              WHERE t.tgname = ANY ($2) AND t.tgenabled <> 'A'",
            None,
            &[rel.into(), TRIGGERS.iter().map(|s| s.to_string()).collect::<Vec<_>>().into()],
        )
        .unwrap_or_report()
        .filter_map(|r| Some((r.get::<pg_sys::Oid>(1).ok()??, r.get::<String>(2).ok()??)))
        .collect()
    });
    for (relid, name) in triggers {
        let Ok(name) = std::ffi::CString::new(name) else { continue };
        // SAFETY: the relation exists (its trigger was just listed) and is opened with the lock
        // ALTER TABLE ... ENABLE TRIGGER takes; the trigger is looked up by its exact name.
        unsafe {
            let r = pg_sys::relation_open(relid, pg_sys::ShareRowExclusiveLock as i32);
            crate::pg::compat::enable_trigger_always(r, &name, pg_sys::ShareRowExclusiveLock as i32);
            pg_sys::relation_close(r, pg_sys::NoLock as i32);
            // Makes the new state visible: the call may have carried it to the partitions'
            // clones already (minor versions differ), which are then left as they are.
            pg_sys::CommandCounterIncrement();
        }
    }
}

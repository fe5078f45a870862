//! Partitions joining and leaving a synced table. After each statement the keys in Redis are
//! again exactly the rows of the synced table.
//!
//! - Created (PARTITION OF) or attached: PostgreSQL clones the row capture trigger (with its
//!   ENABLE ALWAYS); TRUNCATE triggers are statement triggers, never cloned, so they are
//!   installed here, on the partition and on its own partitions. An attached table may already
//!   hold rows: each is queued as a read ('r'), as the backfill of sync_table would.
//! - Detached or dropped: a delete ('d') is queued for each of its rows, as the rows it held
//!   leave the synced table. That is exact (the rows are read under a lock that keeps writers
//!   out, in the DDL's transaction) and costs as much as the partition. The other choice, a
//!   sweep ('S') of the table's keys, costs as much as the whole table at delivery time: a
//!   partition dropped from a large time-partitioned table would scan every key of every other
//!   partition. A dropped partition's rows must be read before the DROP (at sql_drop they are
//!   gone); a detached one's after the DETACH (the table still holds them).
//!
//! Nested partitions: whatever level is added or removed, its leaves are read, and the mapping
//! is the one of its nearest synced ancestor.

use crate::api::privileges::{as_extension_owner_pinned, with_catalog_search_path};
use crate::api::sync::{capture_of, drop_triggers_in_tree, install_truncate_triggers, require_identity};
use crate::capture::mode::Capture;
use crate::capture::wake;
use crate::ddl::RelName;
use crate::pg::catalog::{is_partition, lock_relation, Lock};
use crate::pg::role;
use pg_redis_shared::Op;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// The active mapping of the nearest synced ancestor of `rel` (`rel` itself counted when
/// `include_self`).
fn synced_ancestor_mapping(rel: pg_sys::Oid, include_self: bool) -> Option<i64> {
    as_extension_owner_pinned(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT m.id FROM pg_partition_ancestors($1) WITH ORDINALITY AS a(relid, n) \
                   JOIN redis.mapping m ON m.table_name::oid = a.relid::oid AND m.active \
                  WHERE $2 OR a.relid::oid <> $1 ORDER BY a.n LIMIT 1",
                None,
                &[rel.into(), include_self.into()],
            )
            .unwrap_or_report()
            .next()
            .and_then(|r| r.get::<i64>(1).ok().flatten())
        })
    })
}

/// Before DROP TABLE: for every named partition of a synced table (whose synced ancestor is
/// not dropped by the same statement), deletes of its rows are queued. Locks the parent, then
/// the partition, as DROP itself does (same order: no deadlock), so no writer slips in between
/// the read and the drop. If the DROP fails, its transaction takes the events with it.
pub fn before_drop(names: &[RelName]) {
    let oids: Vec<pg_sys::Oid> = names.iter().filter_map(RelName::resolve).collect();
    for &rel in &oids {
        // Someone else's table: the DROP will be refused; take no lock and read nothing for it.
        if !is_partition(rel) || !crate::pg::compat::owns_relation(rel, role::current_user()) {
            continue;
        }
        let Some(mapping_id) = synced_ancestor_mapping(rel, false) else { continue };
        // A dropped ancestor takes this partition with it: its own handling covers the rows.
        let ancestors: Vec<pg_sys::Oid> = with_catalog_search_path(|| {
            Spi::connect(|c| {
                c.select(
                    "SELECT relid::oid FROM pg_partition_ancestors($1) WHERE relid::oid <> $1",
                    None,
                    &[rel.into()],
                )
                .unwrap_or_report()
                .filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
                .collect()
            })
        });
        if ancestors.iter().any(|a| oids.contains(a)) {
            continue;
        }
        if let Some(parent) = ancestors.first() {
            // The locks the DROP is about to take anyway, in the same order.
            lock_relation(*parent, Lock::AccessExclusive);
            lock_relation(rel, Lock::AccessExclusive);
        }
        queue_tree(rel, mapping_id, Op::Delete);
    }
}

/// After CREATE TABLE ... PARTITION OF or ATTACH PARTITION.
pub fn after_add(partition: &RelName, backfill: bool) {
    let Some(rel) = partition.resolve() else { return };
    if !is_partition(rel) {
        return;
    }
    let Some(mapping_id) = synced_ancestor_mapping(rel, false) else { return };
    let capture = as_extension_owner_pinned(|| {
        // A table attached again may still carry TRUNCATE triggers of an older mapping.
        drop_triggers_in_tree(rel);
        let capture = capture_of(mapping_id);
        if capture == Capture::Trigger {
            install_truncate_triggers(rel, mapping_id);
        }
        capture
    });
    if capture == Capture::Wal {
        // As the user running the DDL, who owns the partition.
        require_identity(rel, &partition.display(), mapping_id);
    }
    if backfill {
        queue_tree(rel, mapping_id, Op::Read);
    }
    wake::after_commit();
}

/// After DETACH PARTITION (also its CONCURRENTLY and FINALIZE forms): the table still holds
/// the rows that left the synced table.
pub fn after_detach(parent: &RelName, partition: &RelName, concurrent: bool) {
    let (Some(parent), Some(rel)) = (parent.resolve(), partition.resolve()) else { return };
    let Some(mapping_id) = synced_ancestor_mapping(parent, true) else { return };
    if concurrent {
        // The detach took no lock that keeps writers out: wait for those that wrote through
        // the row trigger before PostgreSQL removed it, so their rows are seen below.
        lock_relation(rel, Lock::Share);
    }
    queue_tree(rel, mapping_id, Op::Delete);
    as_extension_owner_pinned(|| drop_triggers_in_tree(rel));
    wake::after_commit();
}

/// Queues `op` (a read: new_row, a delete: old_row) for every row of the leaves of `rel`, through the
/// backfill's own reader: rows are read as the user running the DDL (who owns the table),
/// under the canonical settings, in chunks bounded by bytes; only the finished values are
/// written to the outbox, as the extension's owner.
fn queue_tree(rel: pg_sys::Oid, mapping_id: i64, op: Op) -> i64 {
    let leaves: Vec<String> = as_extension_owner_pinned(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) \
                   FROM redis._partition_tree($1) p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE p.isleaf AND c.relkind = 'r' ORDER BY p.level, c.oid",
                None,
                &[rel.into()],
            )
            .unwrap_or_report()
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect()
        })
    });
    let mut total = 0;
    for leaf in leaves {
        crate::api::sync::queue_leaf(&leaf, mapping_id, op, &mut |n| total += n);
    }
    total
}

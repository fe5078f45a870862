//! Choosing what is synced: `redis.sync_table`, `redis.unsync_table`, `redis.resync`.
//!
//! Each runs in the caller's transaction and takes a SHARE ROW EXCLUSIVE lock on the table, so
//! no writer interleaves between installing the triggers and queueing the backfill: a row's
//! backfill event always comes before any later change of it in the outbox.
//!
//! This file holds only the entry points (check, lock, act); the steps live by concern:
//! - `checks`: what must hold before anything is stored (the table, its columns and keys).
//! - `mapping`: mapping versions in `redis.mapping` and the outbox events about them.
//! - `triggers`: creating and dropping the capture triggers.
//! - `backfill`: queueing every row of a table.
//! - `rename`: a mapping following a column rename (reached from the DDL hook, not from SQL).

mod backfill;
mod checks;
mod identity;
mod mapping;
mod rename;
mod triggers;

// The DDL hook (`crate::ddl`) reaches these through `api::sync`.
pub(crate) use backfill::queue_leaf;
pub(crate) use identity::require_identity;
pub(crate) use mapping::capture_of;
pub(crate) use rename::follow_column_rename;
pub(crate) use triggers::{drop_triggers_in_tree, install_truncate_triggers};

use crate::api::privileges::as_extension_owner_pinned;
use crate::capture::mode::{self, Capture};
use crate::capture::wake;
use crate::errors::{raise, OrRaise};
use checks::{
    check_against_other_mappings, primary_key, require_preloaded, require_read_committed, require_unique_key,
    table_columns, Table,
};
use mapping::{active_mapping_id, current_database, insert_mapping, queue_mappings_changed, queue_row_event};
use pg_redis_shared::mapping::default_stream_key;
use pg_redis_shared::{Error, Format, KeyTemplate, Op, OutboxOp, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use pgrx::PgRelation;
use triggers::{drop_triggers, install_triggers};

/// Starts syncing a table to Redis (or updates its mapping): validates everything, stores the
/// mapping, sets up capture (from the WAL, or by trigger: see `capture::mode`) and, with
/// `backfill`, queues every existing row.
/// Returns the number of rows queued for backfill.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn sync_table(
    tbl: PgRelation,
    key: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "'json'"),
    ttl: default!(Option<i32>, "NULL"),
    columns: default!(Option<Vec<Option<String>>>, "NULL"),
    stream: default!(Option<bool>, "true"),
    channel: default!(Option<&str>, "NULL"),
    backfill: default!(Option<bool>, "true"),
    capture: default!(Option<&str>, "NULL"),
) -> i64 {
    require_preloaded();
    require_read_committed("redis.sync_table()");
    // First: the slot can only be made while this transaction has written nothing.
    let slot_ready = mode::slot_ready();
    let table = Table::check(&tbl);
    let cols = table_columns(table.oid);
    let template = match key {
        None => {
            let pk = primary_key(table.oid, &table.display);
            KeyTemplate::default_for(&table.schema, &table.name, &pk.iter().map(String::as_str).collect::<Vec<_>>())
                .or_raise()
        }
        Some(t) => KeyTemplate::parse(t).or_raise(),
    };
    template.check_columns(&table.display, cols.iter().map(|c| c.name.as_str())).or_raise();
    require_unique_key(&table, &template);
    let mut key_types = Vec::new();
    for kc in template.columns() {
        let c = cols.iter().find(|c| c.name == kc).map(|c| (c.sql_type.clone(), c.not_null)).unwrap_or_default();
        if !c.1 {
            raise(Error::NullableKeyColumn { column: kc.to_owned(), table: table.display.clone() });
        }
        key_types.push(c.0);
    }
    let format: Format = format.unwrap_or("json").parse().or_raise();
    if let Some(t) = ttl {
        if t <= 0 {
            raise(Error::invalid_value("ttl", t, "it must be a positive number of seconds (or NULL for no expiry)"));
        }
    }
    let columns: Option<Vec<String>> = columns.map(|c| c.into_iter().flatten().collect());
    if let Some(c) = &columns {
        if c.is_empty() {
            raise(Error::invalid_value("columns", "'{}'", "name at least one column, or pass NULL for every column"));
        }
        for name in c {
            if !cols.iter().any(|tc| &tc.name == name) {
                raise(Error::UndefinedColumn { table: table.display.clone(), column: name.clone() });
            }
        }
    }
    if let Some(ch) = channel {
        if ch.is_empty() {
            raise(Error::invalid_value("channel", "''", "name a channel, or pass NULL for no PUBLISH"));
        }
    }
    let requested: Option<Capture> = capture.map(|c| c.parse().or_raise());
    let (capture, capture_notice) = mode::for_new_mapping(&table.display, slot_ready, requested);
    let database = current_database();
    let stream_key = stream.unwrap_or(true).then(|| default_stream_key(&database, &table.schema, &table.name));
    let mapping = TableMapping {
        id: 0,
        schema: table.schema.clone(),
        table: table.name.clone(),
        key: template,
        key_types,
        format,
        ttl: ttl.map(|t| t as u32),
        columns,
        stream_key,
        channel: channel.map(str::to_owned),
    };
    lock(&table);
    let (id, previous) = as_extension_owner_pinned(|| {
        // One sync_table at a time checks prefixes against the others.
        Spi::run("LOCK TABLE redis.mapping IN SHARE ROW EXCLUSIVE MODE").unwrap_or_report();
        check_against_other_mappings(&mapping, table.oid);
        let previous = Spi::get_two_with_args::<i64, String>(
            "SELECT id, key_template FROM redis.mapping WHERE table_name = $1::oid::regclass AND active",
            &[table.oid.into()],
        );
        Spi::run_with_args(
            "UPDATE redis.mapping SET active = false WHERE table_name = $1::oid::regclass AND active",
            &[table.oid.into()],
        )
        .unwrap_or_report();
        let id = insert_mapping(&mapping, table.oid, capture, requested);
        if let Ok((Some(old_id), Some(ref old_template))) = previous {
            if old_template.as_str() != mapping.key.as_str() {
                // Keys of the old template would linger: delete them first, in order.
                queue_row_event(old_id, OutboxOp::Row(Op::Truncate));
            }
        }
        match capture {
            // From this commit on the plugin decodes the table's changes, and no trigger
            // queues them any more (one of an older version is dropped): each change is
            // captured exactly once, whichever side of the commit it falls on.
            Capture::Wal => drop_triggers(&table),
            Capture::Trigger => install_triggers(&table, id),
        }
        queue_mappings_changed(&database, id);
        (id, previous)
    });
    if capture == Capture::Wal {
        require_identity(table.oid, &table.display, id);
    }
    let queued = if backfill.unwrap_or(true) { backfill::backfill(&table, id, false) } else { 0 };
    if let Ok((Some(_), _)) = previous {
        notice!("pg_redis: mapping of {} updated", table.display);
    }
    if let Some(n) = capture_notice {
        notice!("{n}");
    }
    wake::after_commit();
    queued
}

/// Stops syncing a table: removes its triggers and mapping. With `purge`, its keys are
/// deleted from Redis too (in order, after every change already queued).
#[pg_extern(volatile, parallel_unsafe)]
fn unsync_table(tbl: PgRelation, purge: default!(Option<bool>, "false")) {
    let table = Table::check(&tbl);
    lock(&table);
    as_extension_owner_pinned(|| {
        let id = active_mapping_id(&table);
        drop_triggers(&table);
        Spi::run_with_args("UPDATE redis.mapping SET active = false WHERE id = $1", &[id.into()]).unwrap_or_report();
        if purge.unwrap_or(false) {
            queue_row_event(id, OutboxOp::Row(Op::Truncate));
        }
        queue_mappings_changed(&current_database(), id);
    });
    wake::after_commit();
}

/// Pushes every row again and deletes keys whose rows no longer exist (repairs drift, e.g.
/// after Redis lost data). Returns the number of rows queued.
#[pg_extern(volatile, parallel_unsafe)]
fn resync(tbl: PgRelation) -> i64 {
    require_preloaded();
    require_read_committed("redis.resync()");
    let table = Table::check(&tbl);
    lock(&table);
    let id = as_extension_owner_pinned(|| active_mapping_id(&table));
    let n = backfill::backfill(&table, id, true);
    wake::after_commit();
    n
}

/// Captures the table's changes the way the server's setting (`pg_redis.capture`, `wal_level`)
/// and the table's own wish (sync_table's `capture`) pick now: a new mapping version, identical but for its capture, made in one commit with
/// the triggers created or dropped, so every change is captured once, before or after it.
/// Returns the capture in force ('wal' or 'trigger'). The worker calls it for every table once
/// it decodes the WAL; call it after lowering capture to 'trigger'.
#[pg_extern(volatile, parallel_unsafe)]
fn recapture(tbl: PgRelation) -> String {
    require_preloaded();
    require_read_committed("redis.recapture()");
    let slot_ready = mode::slot_ready();
    let table = Table::check(&tbl);
    let requested = as_extension_owner_pinned(|| requested_capture(&table));
    let (capture, capture_notice) = mode::for_new_mapping(&table.display, slot_ready, requested);
    lock(&table);
    let changed = as_extension_owner_pinned(|| {
        Spi::run("LOCK TABLE redis.mapping IN SHARE ROW EXCLUSIVE MODE").unwrap_or_report();
        let id = active_mapping_id(&table);
        if capture_of(id) == capture {
            return None;
        }
        Spi::run_with_args("UPDATE redis.mapping SET active = false WHERE id = $1", &[id.into()]).unwrap_or_report();
        let new_id = Spi::get_one_with_args::<i64>(
            "INSERT INTO redis.mapping (table_name, schema_name, rel_name, key_template, key_columns, key_types, format, ttl, columns, stream_key, channel, capture, capture_requested) \
             SELECT table_name, schema_name, rel_name, key_template, key_columns, key_types, format, ttl, columns, stream_key, channel, $2, capture_requested \
               FROM redis.mapping WHERE id = $1 RETURNING id",
            &[id.into(), capture.as_str().into()],
        )
        .unwrap_or_report()
        .unwrap_or_default();
        match capture {
            Capture::Wal => drop_triggers(&table),
            Capture::Trigger => install_triggers(&table, new_id),
        }
        queue_mappings_changed(&current_database(), new_id);
        Some(new_id)
    });
    if let Some(n) = capture_notice {
        notice!("{n}");
    }
    if let Some(new_id) = changed {
        if capture == Capture::Wal {
            require_identity(table.oid, &table.display, new_id);
        }
        notice!(
            "pg_redis: changes of {} are now captured {}",
            table.display,
            match capture {
                Capture::Wal => "from the WAL",
                Capture::Trigger => "by trigger",
            }
        );
        wake::after_commit();
    }
    capture.as_str().to_owned()
}

/// The capture the table's owner asked for at sync_table, if any.
fn requested_capture(t: &Table) -> Option<Capture> {
    let id = active_mapping_id(t);
    Spi::get_one_with_args::<String>("SELECT capture_requested FROM redis.mapping WHERE id = $1", &[id.into()])
        .ok()
        .flatten()
        .and_then(|c| c.parse().ok())
}

fn lock(t: &Table) {
    Spi::run(&format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", t.quoted)).unwrap_or_report();
}

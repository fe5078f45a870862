//! Mapping versions in `redis.mapping` (storing one, finding the active one) and the outbox
//! events about a mapping: a TRUNCATE or sweep of its keys, and the command that tells readers
//! of the mappings (the Redis module) to reload them, queued in order with the changes.

use super::checks::Table;
use crate::capture::enqueue;
use crate::capture::mode::Capture;
use crate::errors::raise;
use pg_redis_shared::apply::mappings_changed_key;
use pg_redis_shared::{Error, OutboxOp, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

pub(super) fn current_database() -> String {
    Spi::get_one::<String>("SELECT current_database()::text").ok().flatten().unwrap_or_default()
}

pub(super) fn insert_mapping(m: &TableMapping, oid: pg_sys::Oid, capture: Capture, requested: Option<Capture>) -> i64 {
    let key_columns: Vec<String> = m.key.columns().map(str::to_owned).collect();
    Spi::get_one_with_args::<i64>(
        "INSERT INTO redis.mapping (table_name, schema_name, rel_name, key_template, key_columns, key_types, format, ttl, columns, stream_key, channel, capture, capture_requested) \
         VALUES ($1::oid::regclass, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
        &[
            oid.into(),
            m.schema.clone().into(),
            m.table.clone().into(),
            m.key.as_str().to_owned().into(),
            key_columns.into(),
            m.key_types.clone().into(),
            m.format.to_string().into(),
            m.ttl.map(|t| t as i32).into(),
            m.columns.clone().into(),
            m.stream_key.clone().into(),
            m.channel.clone().into(),
            capture.as_str().into(),
            requested.map(Capture::as_str).into(),
        ],
    )
    .unwrap_or_report()
    .unwrap_or_default()
}

pub(super) fn active_mapping_id(t: &Table) -> i64 {
    match Spi::get_one_with_args::<i64>(
        "SELECT id FROM redis.mapping WHERE table_name = $1::oid::regclass AND active",
        &[t.oid.into()],
    ) {
        Ok(Some(id)) => id,
        _ => raise(Error::NotSynced { table: t.display.clone() }),
    }
}

/// How the changes of mapping version `mapping_id` are captured.
pub(crate) fn capture_of(mapping_id: i64) -> Capture {
    let mode =
        Spi::get_one_with_args::<String>("SELECT capture FROM redis.mapping WHERE id = $1", &[mapping_id.into()]);
    match mode {
        Ok(Some(m)) if m == "wal" => Capture::Wal,
        _ => Capture::Trigger,
    }
}

pub(super) fn queue_row_event(mapping_id: i64, op: OutboxOp) {
    enqueue::table_event(mapping_id, op);
}

/// Tells readers of the mappings (the Redis module) to reload them, in order with the changes.
pub(super) fn queue_mappings_changed(database: &str, mapping_id: i64) {
    let cmd = vec!["SET".to_string(), mappings_changed_key(database), mapping_id.to_string()];
    enqueue::command(cmd);
}

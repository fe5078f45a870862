//! A synced table's mapping follows a RENAME COLUMN. Reached from the DDL hook (`crate::ddl`),
//! not from SQL; it stores a new mapping version, moves the triggers and queues the rows again,
//! the same steps `sync_table` takes.

use super::backfill::queue_rows;
use super::checks::Table;
use super::mapping::{current_database, queue_mappings_changed};
use super::triggers::install_triggers;
use crate::api::privileges::as_extension_owner_pinned;
use crate::capture::wake;
use crate::errors::raise;
use pg_redis_shared::mapping::quote_ident;
use pg_redis_shared::{Error, KeyTemplate};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// A column of a synced table was renamed.
/// - When the active mapping names it (a key column, or one of `columns`), a new mapping
///   version names the new column instead (the key template too: `users:{id}` becomes
///   `users:{uid}` and renders the same keys), the capture triggers move to the new version,
///   and readers of the mappings (the module) are told, in order.
/// - When the column is part of the stored value (every column is, without `columns`), every
///   row is queued again: stored values carry field names as `to_jsonb` reports them, so the
///   values pushed before the rename would otherwise keep the old name.
///
/// Events captured before the rename keep naming the older version, whose column names are
/// those of their rows, so they still apply, in order, before the rows queued here.
pub(crate) fn follow_column_rename(table: pg_sys::Oid, old: &str, new: &str) {
    let followed = as_extension_owner_pinned(|| {
        let row = Spi::connect(|c| {
            c.select("SELECT id, key_template, key_columns, columns FROM redis.mapping WHERE table_name = $1::oid::regclass AND active", None, &[table.into()])
                .unwrap_or_report()
                .next()
                .map(|r| {
                    (
                        r.get::<i64>(1).ok().flatten().unwrap_or_default(),
                        r.get::<String>(2).ok().flatten().unwrap_or_default(),
                        r.get::<Vec<String>>(3).ok().flatten().unwrap_or_default(),
                        r.get::<Vec<String>>(4).ok().flatten(),
                    )
                })
        });
        let (old_id, template, key_columns, columns) = row?;
        let listed = columns.as_ref().is_some_and(|cols| cols.iter().any(|c| c == old));
        let stored = columns.is_none() || listed;
        let names = Spi::get_two_with_args::<String, String>(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[table.into()],
        )
        .unwrap_or_report();
        let (Some(schema), Some(name)) = names else { return None };
        let display = if schema == "public" { name.clone() } else { format!("{schema}.{name}") };
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let t = Table { oid: table, schema, name, display, quoted };
        if !key_columns.iter().any(|c| c == old) && !listed {
            return Some((t, old_id, stored));
        }
        let renamed = crate::ddl::renames::rename_in_template(&template, old, new);
        if let Err(e) = KeyTemplate::parse(&renamed) {
            raise(Error::KeyColumnRename { old: old.to_owned(), new: new.to_owned(), reason: e.to_string() });
        }
        Spi::run_with_args("UPDATE redis.mapping SET active = false WHERE id = $1", &[old_id.into()])
            .unwrap_or_report();
        let new_id = Spi::get_one_with_args::<i64>(
            "INSERT INTO redis.mapping (table_name, schema_name, rel_name, key_template, key_columns, key_types, format, ttl, columns, stream_key, channel) \
             SELECT table_name, schema_name, rel_name, $2, array_replace(key_columns, $3, $4), key_types, format, ttl, array_replace(columns, $3, $4), stream_key, channel \
               FROM redis.mapping WHERE id = $1 RETURNING id",
            &[old_id.into(), renamed.into(), old.into(), new.into()],
        )
        .unwrap_or_report()
        .unwrap_or_default();
        install_triggers(&t, new_id);
        queue_mappings_changed(&current_database(), new_id);
        Some((t, new_id, stored))
    });
    if let Some((t, id, true)) = followed {
        // Read as the user renaming the column (the table's owner), like a backfill.
        queue_rows(&t, id);
    }
    wake::after_commit();
}

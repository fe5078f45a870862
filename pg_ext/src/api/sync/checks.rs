//! The checks `sync_table` and `resync` make before anything is stored: the table (kind,
//! persistence, ownership), its columns and primary key, that a key template names one row, that
//! its prefix clashes with no other mapping, and the session (preloaded library, READ COMMITTED).
//! They only read the catalogs and raise; nothing here writes.

use crate::api::privileges::{require_owner, with_catalog_search_path};
use crate::errors::{raise, OrRaise};
use crate::worker::outbox::SpiCatalogRow;
use pg_redis_shared::key_type::KeyType;
use pg_redis_shared::mapping::{check_unambiguous, quote_ident, CatalogRow, CATALOG_COLUMNS};
use pg_redis_shared::{Error, KeyTemplate, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use pgrx::PgRelation;

pub(super) struct Column {
    pub(super) name: String,
    pub(super) sql_type: String,
    pub(super) not_null: bool,
}

/// The backfill reads the table in the caller's snapshot: under REPEATABLE READ that snapshot
/// predates the lock, and a change committed while waiting for it would be missed.
pub(super) fn require_read_committed(what: &str) {
    if crate::pg::xact::is_repeatable_read() {
        raise(Error::NeedsReadCommitted { what: what.to_owned() });
    }
}

/// A template's columns must identify one row: a unique index (not partial) over some of them.
pub(super) fn require_unique_key(t: &Table, template: &KeyTemplate) {
    let cols: Vec<String> = template.columns().map(str::to_owned).collect();
    let unique = with_catalog_search_path(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indimmediate \
               AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey) k(attnum) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE a.attname::text <> ALL ($2)) \
               AND 0 <> ALL (i.indkey::int2[]))",
            &[t.oid.into(), cols.clone().into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false);
    if !unique {
        raise(Error::KeyNotUnique { columns: cols.join(", "), table: t.display.clone() });
    }
}

pub(super) fn require_preloaded() {
    if !crate::preloaded() {
        raise(Error::NotPreloaded);
    }
}

/// A synced table, checked: its kind, persistence and ownership.
pub(super) struct Table {
    pub(super) oid: pg_sys::Oid,
    pub(super) schema: String,
    pub(super) name: String,
    /// How messages name it (schema-qualified unless public).
    pub(super) display: String,
    /// How SQL names it.
    pub(super) quoted: String,
}

impl Table {
    pub(super) fn check(rel: &PgRelation) -> Table {
        let oid = rel.oid();
        let schema = rel.namespace().to_owned();
        let name = rel.name().to_owned();
        let display = if schema == "public" { name.clone() } else { format!("{schema}.{name}") };
        let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        // SAFETY: rd_rel is valid while the relation is open.
        let (kind, persistence) = unsafe { ((*rel.rd_rel).relkind as u8, (*rel.rd_rel).relpersistence as u8) };
        match kind {
            b'r' | b'p' => {}
            other => {
                let what = match other {
                    b'v' => "a view",
                    b'm' => "a materialized view",
                    b'f' => "a foreign table",
                    b'S' => "a sequence",
                    b'i' | b'I' => "an index",
                    b'c' => "a composite type",
                    _ => "not a table",
                };
                raise(Error::NotATable { table: display, what });
            }
        }
        if persistence == b't' {
            raise(Error::TemporaryTable { table: display });
        }
        require_owner(oid, &display);
        if persistence == b'u' {
            notice!("pg_redis: {display} is UNLOGGED: after a crash PostgreSQL empties it, and its keys in Redis are not removed until you call redis.resync('{display}')");
        }
        Table { oid, schema, name, display, quoted }
    }
}

/// Columns with their type as a schema-qualified name (key values are cast to it later, under
/// whatever search_path the reader has).
pub(super) fn table_columns(oid: pg_sys::Oid) -> Vec<Column> {
    with_catalog_search_path(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT a.attname::text, quote_ident(n.nspname), quote_ident(t.typname), a.attnotnull \
               FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace n ON n.oid = t.typnamespace \
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                None,
                &[oid.into()],
            )
            .unwrap_or_report()
            .map(|r| Column {
                name: r.get(1).ok().flatten().unwrap_or_default(),
                sql_type: KeyType::new(
                    &r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    &r.get::<String>(3).ok().flatten().unwrap_or_default(),
                )
                .to_string(),
                not_null: r.get(4).ok().flatten().unwrap_or(false),
            })
            .collect()
        })
    })
}

/// Primary-key columns in index order; an error naming the table when there is none.
pub(super) fn primary_key(oid: pg_sys::Oid, display: &str) -> Vec<String> {
    let cols: Vec<String> = with_catalog_search_path(|| {
        Spi::connect(|c| {
            c.select(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
            None,
            &[oid.into()],
        )
        .unwrap_or_report()
        .filter_map(|r| r.get::<String>(1).ok().flatten())
        .collect()
        })
    });
    if cols.is_empty() {
        raise(Error::NoPrimaryKey { table: display.to_owned() });
    }
    cols
}

pub(super) fn check_against_other_mappings(new: &TableMapping, oid: pg_sys::Oid) {
    let mut all: Vec<TableMapping> = Spi::connect(|c| {
        c.select(
            &format!("SELECT {CATALOG_COLUMNS} FROM redis.tables WHERE table_name::oid <> $1"),
            None,
            &[oid.into()],
        )
        .unwrap_or_report()
        .filter_map(|r| TableMapping::try_from(CatalogRow::decode(&SpiCatalogRow(&r)).ok().flatten()?).ok())
        .collect()
    });
    all.push(new.clone());
    check_unambiguous(&all).or_raise();
    for m in &all {
        for s in all.iter().filter_map(|o| o.stream_key.as_deref()) {
            if s.starts_with(m.key.prefix()) {
                raise(Error::invalid_template(m.key.as_str(), format_args!("the change stream \"{s}\" starts with this template's prefix, so a TRUNCATE would delete it; choose another prefix")));
            }
        }
    }
}

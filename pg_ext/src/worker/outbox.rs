//! The worker's SQL: read a batch of the outbox (oldest first, rows locked, never a "last id
//! seen" cursor), delete what Redis acknowledged, park what it refused for good, keep the
//! delivery bookkeeping, load mapping versions. Runs inside the worker's transaction.

use pg_redis_shared::mapping::CatalogRow;
use pg_redis_shared::{Op, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// One outbox row.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub mapping_id: Option<i64>,
    pub kind: Kind,
    pub tx_id: i64,
    pub captured_ms: i64,
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Row(Op),
    /// Remove keys whose rows no longer exist (resync).
    Sweep,
    /// A Redis command queued by `redis.on_commit`.
    Command,
    Unknown(char),
}

impl Kind {
    fn from_code(c: char) -> Kind {
        match c {
            'S' => Kind::Sweep,
            'x' => Kind::Command,
            c => Op::from_code(c).map(Kind::Row).unwrap_or(Kind::Unknown(c)),
        }
    }
}

const BATCH_SQL: &str = "SELECT id, mapping_id, op::text, tx_id, (extract(epoch FROM captured_at) * 1000)::int8, old_row::text, new_row::text, command \
     FROM redis.outbox WHERE NOT (coalesce(mapping_id, 0) = ANY($2)) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED";

/// The oldest `limit` events, skipping mapping versions in `excluded` (0 = commands).
pub fn read_batch(limit: i64, excluded: &[i64]) -> Vec<Event> {
    Spi::connect_mut(|client| {
        let rows = client.update(BATCH_SQL, None, &[limit.into(), excluded.to_vec().into()]).unwrap_or_report();
        rows.map(|r| {
            let op: String = r.get(3).unwrap_or_report().unwrap_or_default();
            Event {
                id: r.get(1).unwrap_or_report().unwrap_or_default(),
                mapping_id: r.get(2).unwrap_or_report(),
                kind: Kind::from_code(op.chars().next().unwrap_or('?')),
                tx_id: r.get(4).unwrap_or_report().unwrap_or_default(),
                captured_ms: r.get(5).unwrap_or_report().unwrap_or_default(),
                old_row: r.get(6).unwrap_or_report(),
                new_row: r.get(7).unwrap_or_report(),
                command: r.get(8).unwrap_or_report(),
            }
        })
        .collect()
    })
}

pub fn delete(ids: &[i64]) {
    if !ids.is_empty() {
        Spi::run_with_args("DELETE FROM redis.outbox WHERE id = ANY($1)", &[ids.to_vec().into()]).unwrap_or_report();
    }
}

/// Moves events to `redis.dead_letter` with the reason each was refused.
pub fn dead_letter(failed: &[(i64, String)]) {
    if failed.is_empty() {
        return;
    }
    let ids: Vec<i64> = failed.iter().map(|f| f.0).collect();
    let errors: Vec<String> = failed.iter().map(|f| f.1.clone()).collect();
    Spi::run_with_args(
        "WITH gone AS (DELETE FROM redis.outbox WHERE id = ANY($1) RETURNING *) \
         INSERT INTO redis.dead_letter (id, mapping_id, op, tx_id, captured_at, old_row, new_row, command, error) \
         SELECT g.id, g.mapping_id, g.op, g.tx_id, g.captured_at, g.old_row, g.new_row, g.command, e.error \
           FROM gone g JOIN unnest($1::int8[], $2::text[]) AS e(id, error) ON e.id = g.id \
         ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now()",
        &[ids.into(), errors.into()],
    )
    .unwrap_or_report();
}

/// Where delivery bookkeeping is kept: a table (by oid) or the queued commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Table(pg_sys::Oid),
    Commands,
}

impl Scope {
    fn key(self) -> String {
        match self {
            Scope::Table(oid) => oid.to_u32().to_string(),
            Scope::Commands => "commands".into(),
        }
    }

    fn table(self) -> Option<pg_sys::Oid> {
        match self {
            Scope::Table(oid) => Some(oid),
            Scope::Commands => None,
        }
    }
}

pub fn record_delivered(scope: Scope, n: i64) {
    Spi::run_with_args(
        "INSERT INTO redis.delivery (scope, table_name, delivered, last_delivered_at) VALUES ($1, $2::oid::regclass, $3, now()) \
         ON CONFLICT (scope) DO UPDATE SET delivered = redis.delivery.delivered + EXCLUDED.delivered, last_delivered_at = now()",
        &[scope.key().into(), scope.table().into(), n.into()],
    )
    .unwrap_or_report();
}

pub fn record_error(scope: Scope, error: &str) {
    Spi::run_with_args(
        "INSERT INTO redis.delivery (scope, table_name, last_error, last_error_at) VALUES ($1, $2::oid::regclass, $3, now()) \
         ON CONFLICT (scope) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = now()",
        &[scope.key().into(), scope.table().into(), error.into()],
    )
    .unwrap_or_report();
}

/// Mapping versions by id, with the oid of their table.
pub fn load_mappings(ids: &[i64]) -> Vec<(TableMapping, pg_sys::Oid)> {
    Spi::connect(|client| {
        let rows = client
            .select(
                "SELECT id, schema_name::text, rel_name::text, key_template, key_types, format, ttl, columns, stream_key, channel, table_name::oid \
                 FROM redis.mapping WHERE id = ANY($1)",
                None,
                &[ids.to_vec().into()],
            )
            .unwrap_or_report();
        let mut out = Vec::new();
        for r in rows {
            let row = CatalogRow {
                id: r.get(1).unwrap_or_report().unwrap_or_default(),
                schema_name: r.get(2).unwrap_or_report().unwrap_or_default(),
                rel_name: r.get(3).unwrap_or_report().unwrap_or_default(),
                key_template: r.get(4).unwrap_or_report().unwrap_or_default(),
                key_types: r.get(5).unwrap_or_report().unwrap_or_default(),
                format: r.get(6).unwrap_or_report().unwrap_or_default(),
                ttl: r.get(7).unwrap_or_report(),
                columns: r.get(8).unwrap_or_report(),
                stream_key: r.get(9).unwrap_or_report(),
                channel: r.get(10).unwrap_or_report(),
            };
            let oid: pg_sys::Oid = r.get(11).unwrap_or_report().unwrap_or(pg_sys::InvalidOid);
            match TableMapping::try_from(row) {
                Ok(m) => out.push((m, oid)),
                Err(e) => warning!("pg_redis: mapping cannot be used: {e}"),
            }
        }
        out
    })
}

/// Removes mapping versions no queued event names any more.
pub fn forget_unused_mappings() {
    Spi::run("DELETE FROM redis.mapping m WHERE NOT m.active AND NOT EXISTS (SELECT 1 FROM redis.outbox o WHERE o.mapping_id = m.id)").unwrap_or_report();
}

/// Positions (0-based) of the keys, given as one value list per key, whose rows still exist.
pub fn existing_keys(mapping: &TableMapping, keys: &[Vec<String>]) -> Vec<usize> {
    let ncols = mapping.key.columns().count();
    let columns: Vec<Vec<String>> = (0..ncols).map(|c| keys.iter().map(|k| k.get(c).cloned().unwrap_or_default()).collect()).collect();
    let sql = pg_redis_shared::sql::existing_keys(mapping);
    Spi::connect(|client| {
        let args: Vec<pgrx::datum::DatumWithOid> = columns.into_iter().map(Into::into).collect();
        let rows = client.select(sql.as_str(), None, &args).unwrap_or_report();
        rows.filter_map(|r| r.get::<i64>(1).ok().flatten()).map(|ord| ord as usize - 1).collect()
    })
}

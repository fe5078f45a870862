//! The worker's SQL: read a batch of the outbox (oldest first, rows locked, never a "last id
//! seen" cursor), delete what Redis acknowledged, park what it refused for good, keep the
//! delivery bookkeeping, load mapping versions. Runs inside the worker's transaction.

use crate::pg::xact::{in_subtransaction, on_latest_snapshot};
use pg_redis_shared::mapping::{CatalogColumns, CatalogRow, CATALOG_COLUMNS};
use pg_redis_shared::{Op, OutboxOp, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;

/// One outbox row.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    /// Where the row is: deletes go straight to it (the row is locked, so it cannot move).
    pub ctid: String,
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
        match OutboxOp::from_code(c) {
            Some(OutboxOp::Row(op)) => Kind::Row(op),
            Some(OutboxOp::Sweep) => Kind::Sweep,
            Some(OutboxOp::Command) => Kind::Command,
            None => Kind::Unknown(c),
        }
    }
}

/// The rows are picked, ordered and locked in the inner query, which carries large values only
/// as TOAST pointers; they are turned into text in the outer one, row by row as the cursor
/// fetches them (a sort over the text would detoast the whole queue for every batch).
const BATCH_SQL: &str = "SELECT id, mapping_id, op::text, tx_id, (date_part('epoch', captured_at) * 1000)::int8, old_row::text, new_row::text, command, ctid::text \
     FROM (SELECT ctid, * FROM redis.outbox WHERE NOT (coalesce(mapping_id, 0) = ANY($2)) AND id <> ALL($3) AND id <= $4 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) AS head";

/// The oldest events, at most `limit` of them and about `max_bytes` of row data (at least one),
/// skipping mapping versions in `excluded` (0 = commands) and the events in `taken` (already
/// read by this transaction, on their way to Redis). A cursor locks only the rows it fetched,
/// so what lies past the bounds stays free for the next batch. Only ids up to `upto` are read
/// (the rows queued before the replication slot existed, while they are drained). Also says whether the byte bound
/// was reached (more may be waiting).
pub fn read_batch(limit: i64, max_bytes: usize, excluded: &[i64], taken: &[i64], upto: i64) -> (Vec<Event>, bool) {
    Spi::connect_mut(|client| {
        let mut cursor = client
            .open_cursor_mut(BATCH_SQL, &[limit.into(), excluded.to_vec().into(), taken.to_vec().into(), upto.into()]);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        // Start small: nothing is known yet of the rows' size.
        let mut fetch = 16i64;
        while (events.len() as i64) < limit && bytes < max_bytes {
            let table = cursor.fetch(fetch.min(limit - events.len() as i64)).unwrap_or_report();
            if table.is_empty() {
                break;
            }
            for r in table {
                let e = event_of(&r);
                bytes += e.size();
                events.push(e);
            }
            // SAFETY: the table of this fetch, fully read into owned events above.
            unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
            // Large rows: fetch about as many as still fit, so one fetch never holds far more.
            let average = bytes / events.len().max(1);
            fetch = ((max_bytes.saturating_sub(bytes)) / average.max(1)).clamp(1, 256) as i64;
        }
        (events, bytes >= max_bytes)
    })
}

fn event_of(r: &spi::SpiHeapTupleData) -> Event {
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
        ctid: r.get(9).unwrap_or_report().unwrap_or_default(),
    }
}

impl Event {
    /// Bytes of row data and command arguments this event holds.
    fn size(&self) -> usize {
        let rows = self.old_row.as_ref().map_or(0, String::len) + self.new_row.as_ref().map_or(0, String::len);
        rows + self.command.as_ref().map_or(0, |c| c.iter().map(String::len).sum())
    }
}

/// Deletes delivered events by their row address (a TID scan: no index lookups; with
/// thousands of addresses the planner would otherwise prefer scanning the whole outbox).
pub fn delete(ctids: &[String]) {
    if !ctids.is_empty() {
        Spi::run("SET LOCAL enable_seqscan = off").unwrap_or_report();
        Spi::run_with_args("DELETE FROM redis.outbox WHERE ctid = ANY($1::tid[])", &[ctids.to_vec().into()])
            .unwrap_or_report();
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

/// A row of an SPI result as [`CatalogColumns`] (SPI numbers columns from 1).
pub struct SpiCatalogRow<'a, 'conn>(pub &'a spi::SpiHeapTupleData<'conn>);

impl CatalogColumns for SpiCatalogRow<'_, '_> {
    type Error = spi::SpiError;
    fn int8(&self, i: usize) -> spi::SpiResult<Option<i64>> {
        self.0.get(i + 1)
    }
    fn int4(&self, i: usize) -> spi::SpiResult<Option<i32>> {
        self.0.get(i + 1)
    }
    fn text(&self, i: usize) -> spi::SpiResult<Option<String>> {
        self.0.get(i + 1)
    }
    fn text_array(&self, i: usize) -> spi::SpiResult<Option<Vec<String>>> {
        self.0.get(i + 1)
    }
}

/// Mapping versions by id, with the oid of their table: the catalog columns, then the oid.
/// Current names (renamed tables); a dropped table keeps the names it had when synced (its
/// queued changes and the purge of its keys still apply).
fn mapping_versions_sql() -> String {
    format!(
        "SELECT {CATALOG_COLUMNS}, table_oid FROM (\
         SELECT m.id AS mapping_id, coalesce(n.nspname, m.schema_name) AS schema_name, coalesce(c.relname, m.rel_name) AS rel_name, \
                m.key_template, m.key_types, m.format, m.ttl, m.columns, m.stream_key, m.channel, m.table_name::oid AS table_oid \
           FROM redis.mapping m LEFT JOIN pg_class c ON c.oid = m.table_name LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE m.id = ANY($1)) AS m"
    )
}

/// Mapping versions by id, with the oid of their table.
pub fn load_mappings(ids: &[i64]) -> Vec<(TableMapping, pg_sys::Oid)> {
    // A mapping (or its table's new name) committed after this transaction began must be seen:
    // SPI reads on the transaction's first snapshot until the transaction has written, which
    // `read_batch` (rows locked) has done by now; say so rather than rely on it.
    on_latest_snapshot(|| {
        Spi::connect(|client| {
            let rows = client.select(&mapping_versions_sql(), None, &[ids.to_vec().into()]).unwrap_or_report();
            let mut out = Vec::new();
            for r in rows {
                let Some(row) = CatalogRow::decode(&SpiCatalogRow(&r)).unwrap_or_report() else {
                    continue;
                };
                let oid: pg_sys::Oid = r.get(11).unwrap_or_report().unwrap_or(pg_sys::InvalidOid);
                match TableMapping::try_from(row) {
                    Ok(m) => out.push((m, oid)),
                    Err(e) => warning!("pg_redis: mapping cannot be used: {e}"),
                }
            }
            out
        })
    })
}

/// Removes mapping versions no queued event names any more.
pub fn forget_unused_mappings() {
    Spi::run("DELETE FROM redis.mapping m WHERE NOT m.active AND NOT EXISTS (SELECT 1 FROM redis.outbox o WHERE o.mapping_id = m.id)").unwrap_or_report();
}

/// Positions (0-based) of the keys, given as one value list per key, whose rows still exist.
/// The query runs as the table's owner (casting key text to the key types may run code of
/// theirs, such as a domain's CHECK) inside a subtransaction: keys whose values do not even
/// cast count as existing (kept), and an error never stalls delivery.
pub fn existing_keys(mapping: &TableMapping, table: pg_sys::Oid, keys: &[Vec<String>]) -> Vec<usize> {
    let ncols = mapping.key.columns().count();
    let columns: Vec<Vec<String>> =
        (0..ncols).map(|c| keys.iter().map(|k| k.get(c).cloned().unwrap_or_default()).collect()).collect();
    let sql = pg_redis_shared::sql::existing_keys(mapping);
    let owner = on_latest_snapshot(|| {
        Spi::get_one_with_args::<pg_sys::Oid>("SELECT relowner FROM pg_class WHERE oid = $1", &[table.into()])
    })
    .ok()
    .flatten();
    let Some(owner) = owner else { return (0..keys.len()).collect() };
    // The rows committed up to now decide, not those of the transaction's start: this
    // transaction may have delivered batches for a while, and a row committed meanwhile whose
    // key the sweep met would be taken for gone.
    let query = std::panic::AssertUnwindSafe(|| {
        on_latest_snapshot(|| {
            crate::pg::role::as_role(owner, || {
                Spi::connect(|client| {
                    let args: Vec<pgrx::datum::DatumWithOid> = columns.clone().into_iter().map(Into::into).collect();
                    let rows = client.select(sql.as_str(), None, &args).unwrap_or_report();
                    rows.filter_map(|r| r.get::<i64>(1).ok().flatten())
                        .map(|ord| ord as usize - 1)
                        .collect::<Vec<usize>>()
                })
            })
        })
    });
    in_subtransaction(query).unwrap_or_else(|msg| {
        log!(
            "pg_redis: keeping {} keys of {} whose rows could not be checked: {msg}",
            keys.len(),
            mapping.display_name()
        );
        (0..keys.len()).collect()
    })
}

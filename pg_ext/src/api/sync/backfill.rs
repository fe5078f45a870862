//! The backfill: queueing a read event for every row of a synced table (`sync_table`, `resync`,
//! a column rename), or an event for every row of one partition (the DDL hook, when partitions
//! join or leave), in chunks bounded by rows and bytes.

use super::checks::{require_read_committed, Table};
use super::mapping::capture_of;
use crate::api::privileges::{as_extension_owner, as_extension_owner_pinned, with_catalog_search_path};
use crate::capture::canonical::with_canonical_settings;
use crate::capture::enqueue;
use crate::capture::mode::Capture;
use pg_redis_shared::{Op, OutboxOp};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

/// Backfills a synced table: under WAL capture the delivery worker reads it in chunks between
/// watermarks and pushes them straight to Redis (`sweep`: then deletes keys whose rows are
/// gone); otherwise every row is queued in the outbox now (and the sweep after them). Returns
/// the number of rows: queued, or under WAL capture those the table holds now.
pub(super) fn backfill(t: &Table, mapping_id: i64, sweep: bool) -> i64 {
    if as_extension_owner_pinned(|| capture_of(mapping_id)) != Capture::Wal {
        // A backfill the worker had under way is replaced by this one.
        as_extension_owner_pinned(|| {
            Spi::run_with_args("DELETE FROM redis.backfill WHERE table_oid = $1", &[t.oid.into()]).unwrap_or_report()
        });
        let n = queue_rows(t, mapping_id);
        if sweep {
            as_extension_owner_pinned(|| enqueue::table_event(mapping_id, OutboxOp::Sweep));
        }
        return n;
    }
    require_read_committed("a backfill (sync_table, resync)");
    // Counted as the caller, who must be able to read every row the worker will push.
    let rows = with_catalog_search_path(|| {
        Spi::get_one::<i64>(&format!("SELECT count(*) FROM {}", t.quoted)).unwrap_or_report().unwrap_or(0)
    });
    as_extension_owner_pinned(|| {
        // A backfill already under way starts over for the new version (one per table).
        Spi::run_with_args(
            "INSERT INTO redis.backfill (table_oid, mapping_id, sweep, rows_about) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (table_oid) DO UPDATE SET mapping_id = EXCLUDED.mapping_id, \
                 sweep = redis.backfill.sweep OR EXCLUDED.sweep, leaf = NULL, filenode = NULL, after = '(0,0)', \
                 rows_done = 0, rows_about = EXCLUDED.rows_about, started_at = now(), failed_at = NULL, last_error = NULL",
            &[t.oid.into(), mapping_id.into(), sweep.into(), rows.into()],
        )
        .unwrap_or_report()
    });
    notice!(
        "pg_redis: backfill of {}: {rows} rows, read in chunks by the delivery worker once this transaction commits (progress in redis.status)",
        t.display
    );
    rows
}

/// Queues a read event for every row, partition by partition, in chunks bounded by rows and by
/// bytes (`pg_redis.batch_max_bytes`), reporting progress. Rows are read through a cursor and
/// turned into jsonb as the caller, under the canonical settings; only the finished values are
/// written to the outbox as the extension's owner. No chunk ever holds more than the bound, so
/// tables of large rows backfill in bounded memory and never meet the 1 GB datum limit.
pub(super) fn queue_rows(t: &Table, mapping_id: i64) -> i64 {
    let leaves: Vec<(String, i64)> = as_extension_owner_pinned(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), greatest(c.reltuples, 0)::int8 \
                   FROM redis._partition_tree($1) p JOIN pg_class c ON c.oid = p.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE p.isleaf ORDER BY p.level, c.oid",
                None,
                &[t.oid.into()],
            )
            .unwrap_or_report()
            .filter_map(|r| Some((r.get::<String>(1).ok()??, r.get::<i64>(2).ok()??)))
            .collect()
        })
    });
    let estimate: i64 = leaves.iter().map(|l| l.1).sum::<i64>().max(1);
    let mut progress = Progress { table: &t.display, estimate, total: 0, last_notice: std::time::Instant::now() };
    for (leaf, _) in &leaves {
        queue_leaf(leaf, mapping_id, Op::Read, &mut |n| progress.add(n));
    }
    notice!("pg_redis: backfill of {}: {} rows queued for Redis", t.display, progress.total);
    progress.total
}

struct Progress<'a> {
    table: &'a str,
    estimate: i64,
    total: i64,
    last_notice: std::time::Instant,
}

impl Progress<'_> {
    fn add(&mut self, n: i64) {
        self.total += n;
        check_for_interrupts!();
        if self.last_notice.elapsed() >= std::time::Duration::from_secs(1) {
            self.last_notice = std::time::Instant::now();
            let pct = (self.total * 100 / self.estimate).min(99);
            notice!("pg_redis: backfill of {}: {} rows queued (about {pct}%)", self.table, self.total);
        }
    }
}

/// Rows per cursor fetch of the backfill, and per outbox insert at most.
const BACKFILL_FETCH: i64 = 1000;
const BACKFILL_CHUNK_ROWS: usize = 50_000;

/// Queues `op` for every row of one leaf table: a read (the row as `new_row`) or a delete (the
/// row leaves the synced table, as `old_row`). `on_chunk` hears how many rows each chunk held.
pub(crate) fn queue_leaf(leaf: &str, mapping_id: i64, op: Op, on_chunk: &mut dyn FnMut(i64)) {
    // Also reached from DDL on synced tables (partitions joining or leaving, renames).
    require_read_committed("reading the rows of a synced table (sync_table, resync, or DDL that moves rows in or out)");
    let budget = crate::gucs::batch_max_bytes();
    Spi::connect_mut(|client| {
        // The jsonb values of one chunk live in a context of their own, emptied after each insert.
        let chunk_cx = PgMemoryContexts::new("pg_redis backfill chunk");
        let read = format!("SELECT to_jsonb(t.*) FROM ONLY {leaf} AS t");
        let mut cursor = with_catalog_search_path(|| client.open_cursor(read.as_str(), &[]));
        let mut chunk: Vec<pg_sys::Datum> = Vec::new();
        let mut bytes = 0usize;
        // Rows per fetch: few at first, then as many as fit in what is left of the chunk.
        let mut fetch = 8i64;
        let (mut seen_rows, mut seen_bytes) = (0usize, 0usize);
        loop {
            // to_jsonb runs while fetching: as the caller, under the canonical settings.
            let fetched = with_catalog_search_path(|| {
                with_canonical_settings(|| {
                    let n = cursor.fetch(fetch).unwrap_or_report().len();
                    // SAFETY: SPI_tuptable is the table this fetch returned (nothing ran since);
                    // each jsonb is copied (detoasted) into the chunk's context before the table
                    // is freed.
                    unsafe {
                        let tt = pg_sys::SPI_tuptable;
                        if !tt.is_null() {
                            let old = pg_sys::MemoryContextSwitchTo(chunk_cx.value());
                            for i in 0..(*tt).numvals as usize {
                                let mut null = false;
                                let d = pg_sys::SPI_getbinval(*(*tt).vals.add(i), (*tt).tupdesc, 1, &mut null);
                                if !null {
                                    let copy = pg_sys::pg_detoast_datum_copy(d.cast_mut_ptr());
                                    let size = pgrx::varlena::varsize_any(copy as *const pg_sys::varlena);
                                    bytes += size;
                                    seen_bytes += size;
                                    seen_rows += 1;
                                    chunk.push(pg_sys::Datum::from(copy));
                                }
                            }
                            pg_sys::MemoryContextSwitchTo(old);
                            pg_sys::SPI_freetuptable(tt);
                        }
                    }
                    n
                })
            });
            let done = fetched == 0;
            let average = (seen_bytes / seen_rows.max(1)).max(1);
            fetch = (budget.saturating_sub(bytes) / average).clamp(1, BACKFILL_FETCH as usize) as i64;
            if !chunk.is_empty() && (done || bytes >= budget || chunk.len() >= BACKFILL_CHUNK_ROWS) {
                let n = chunk.len() as i64;
                insert_chunk(client, mapping_id, op, &chunk, &chunk_cx);
                chunk.clear();
                bytes = 0;
                // SAFETY: nothing refers to the chunk's values any more.
                unsafe { pg_sys::MemoryContextReset(chunk_cx.value()) };
                on_chunk(n);
            }
            if done {
                break;
            }
        }
    })
}

/// Inserts one chunk of backfill rows as the extension's owner (the values cross as one jsonb
/// array, built in the chunk's context).
fn insert_chunk(
    client: &mut spi::SpiClient,
    mapping_id: i64,
    op: Op,
    chunk: &[pg_sys::Datum],
    chunk_cx: &PgMemoryContexts,
) {
    // SAFETY: the datums are jsonb values in chunk_cx; the array is built there too and lives
    // until the context is reset after this insert.
    let array = unsafe {
        let old = pg_sys::MemoryContextSwitchTo(chunk_cx.value());
        let a = pg_sys::construct_array(
            chunk.as_ptr().cast_mut(),
            chunk.len() as i32,
            pg_sys::JSONBOID,
            -1,
            false,
            pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        pg_sys::MemoryContextSwitchTo(old);
        pgrx::datum::DatumWithOid::new(pg_sys::Datum::from(a), pg_sys::JSONBARRAYOID)
    };
    as_extension_owner(|| enqueue::rows(client, mapping_id, op, array));
}

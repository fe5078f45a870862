//! Backfill under WAL capture, at scan speed and without a race (DBLog's watermarks).
//!
//! `sync_table` and `resync` record a job in `redis.backfill`; the worker reads the table in
//! chunks and pushes each straight to Redis, no queue row written. It reads a chunk and
//! commits a watermark (a transactional logical message) in the same transaction. From the
//! moment it read the chunk, every change of the table it decodes drops its keys from the
//! chunk: that change is newer than (or as new as) what the chunk read, and is delivered in its
//! place. At the watermark the rest of the chunk is delivered, in that place of the commit
//! order. A TRUNCATE (or a change whose keys are not known) voids the chunk: it is read again.
//!
//! DBLog commits a low watermark before the chunk's select and tracks changes from there. Here
//! tracking starts when the chunk is read, which covers more: a transaction committed just
//! before a low watermark could still be invisible to the select (a commit is in the WAL
//! before other sessions see it), and its change would be overwritten by the older chunk. Every
//! transaction decoded before the chunk was read was visible by then (the worker waits for
//! that), so the chunk saw it.
//!
//! Chunks are ranges of each leaf's rows in physical order (`ctid`), so no index is needed
//! and a chunk is read at the speed of a sequential scan. A row moved by an UPDATE meanwhile
//! was delivered by that UPDATE. The job's position moves only once Redis acknowledged a
//! chunk: a crash reads that chunk again.

use super::outbox::{Event, Kind};
use super::{in_transaction, Worker};
use crate::gucs;
use crate::pg::xact::{on_latest_snapshot, try_in_transaction};
use crate::pg::{guc, read};
use pg_redis_shared::wal::Watermark;
use pg_redis_shared::{Op, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::collections::HashSet;

/// Blocks of a leaf the first chunk covers; later chunks size themselves to the rows found.
pub(super) const FIRST_BLOCKS: i64 = 64;

/// How long after a chunk could not be read the worker tries again.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// A job of `redis.backfill`, as the worker reads it.
#[derive(Clone)]
struct Job {
    table: pg_sys::Oid,
    sweep: bool,
    leaf: Option<pg_sys::Oid>,
    filenode: Option<pg_sys::Oid>,
    after: String,
    started_at: String,
}

/// A chunk read between its watermarks, waiting for the high one to be decoded.
pub(super) struct Chunk {
    number: i64,
    job: Job,
    mapping_id: i64,
    rows: Vec<String>,
    /// Where the next chunk starts: the leaf, its file, the last row read; None: all done.
    next: Option<Next>,
    /// Keys of the table changed since the chunk was read (decoded again after a round that
    /// stopped: a key too many only leaves it to its change).
    changed: HashSet<String>,
    /// A change whose keys are unknown came: the chunk is read again.
    void: bool,
}

/// What a decoded record means to the chunk in flight.
pub(super) enum Seen<'a> {
    Watermark(Watermark),
    /// Rows of a change (old and new), by mapping.
    Rows(i64, [Option<&'a str>; 2]),
    /// A change of the mapping's table whose keys are unknown (a TRUNCATE, a sweep, a change
    /// that could not be decoded).
    Whole(i64),
}

/// What the high watermark of the chunk in flight hands to delivery.
pub(super) struct Finished {
    pub(super) events: Vec<Event>,
}

impl Worker {
    /// Reads the next chunk of the oldest backfill, when none is in flight, and commits its
    /// watermark.
    pub(super) fn start_chunk_if_due(&mut self) {
        if self.chunk.is_some() || self.chunk_failed_at.is_some_and(|t| t.elapsed() < RETRY_AFTER) {
            return;
        }
        let Some(job) = in_transaction("reading the backfills", next_job).flatten() else { return };
        let Some(mapping_id) = self.job_mapping(&job) else { return };
        self.chunks_made += 1;
        self.chunk_read_at = Some(std::time::Instant::now());
        let number = self.chunks_made;
        let watermark = Watermark { table: job.table.to_u32(), chunk: number };
        let blocks = self.chunk_blocks;
        let target_rows = (gucs::BATCH_SIZE.get() as usize).saturating_mul(10);
        let read = try_in_transaction(|| {
            let read = read_chunk(&job, blocks, target_rows, gucs::batch_max_bytes());
            emit(&watermark);
            read
        });
        match read {
            Ok(read) => {
                // Aim the next chunk at the target number of rows (whole blocks, at least one).
                if !read.stopped_early {
                    let per_block = (read.rows.len() as i64).max(1) as f64 / read.blocks.max(1) as f64;
                    let wanted = (target_rows as f64 / per_block) as i64;
                    self.chunk_blocks = wanted.clamp(1, blocks.saturating_mul(4)).clamp(1, 1 << 20);
                }
                self.chunk = Some(Chunk {
                    number,
                    job,
                    mapping_id,
                    rows: read.rows,
                    next: read.next,
                    changed: HashSet::new(),
                    void: false,
                });
            }
            Err(msg) => {
                self.chunk_failed_at = Some(std::time::Instant::now());
                log!("pg_redis: reading a chunk of table {} for its backfill failed: {msg}", job.table.to_u32());
                // The table may have gone: the job goes with it. Otherwise it is tried again, after
                // the other tables' backfills.
                in_transaction("recording a backfill's failure", || {
                    Spi::run_with_args(
                        "DELETE FROM redis.backfill b WHERE table_oid = $1 \
                         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = b.table_oid)",
                        &[job.table.into()],
                    )
                    .unwrap_or_report();
                    Spi::run_with_args(
                        "UPDATE redis.backfill SET failed_at = now(), last_error = $3 \
                          WHERE table_oid = $1 AND started_at = $2::timestamptz",
                        &[job.table.into(), job.started_at.clone().into(), msg.clone().into()],
                    )
                    .unwrap_or_report()
                });
            }
        }
    }

    /// The active mapping the job's chunks are pushed under; None when the table left WAL
    /// capture (its backfill moves to the outbox) or is no longer synced (it ends).
    fn job_mapping(&mut self, job: &Job) -> Option<i64> {
        let table = job.table;
        in_transaction("checking a backfill's mapping", || {
            let (id, capture) = read::two::<i64, String>(
                "SELECT id, capture FROM redis.mapping WHERE table_name::oid = $1 AND active",
                &[table.into()],
            )
            .unwrap_or_report();
            match (id, capture.as_deref()) {
                (Some(id), Some("wal")) => Some(id),
                (Some(_), _) => {
                    log!(
                        "pg_redis: table {} is captured by trigger now: its backfill is queued in the outbox",
                        table.to_u32()
                    );
                    // Its lock waits for the table's writers: briefly, retried later.
                    guc::with_settings([(c"lock_timeout", c"2s")], || {
                        Spi::run_with_args("SELECT redis.resync($1::regclass)", &[table.into()]).unwrap_or_report()
                    });
                    delete_job(job);
                    None
                }
                (None, _) => {
                    delete_job(job);
                    None
                }
            }
        })
        .unwrap_or_else(|| {
            self.chunk_failed_at = Some(std::time::Instant::now());
            None
        })
    }

    /// Follows a decoded record for the chunk in flight; at its watermark, returns the chunk's
    /// rows to deliver (keys changed since it was read left out).
    pub(super) fn chunk_sees(&mut self, seen: Seen<'_>) -> Option<Finished> {
        let chunk = self.chunk.as_ref()?;
        let (number, table) = (chunk.number, chunk.job.table);
        match seen {
            Seen::Watermark(w) if w.chunk == number && w.table == table.to_u32() => self.finish_chunk(),
            Seen::Watermark(_) => None,
            Seen::Rows(mapping_id, rows) => {
                let m = self.table_mapping(mapping_id, table)?;
                let keys: Vec<String> = rows.iter().flatten().filter_map(|r| key_of(&m, r)).collect();
                let chunk = self.chunk.as_mut()?;
                // A key that cannot be rendered: the chunk cannot be sure of it.
                chunk.void |= keys.len() < rows.iter().flatten().count();
                chunk.changed.extend(keys);
                None
            }
            Seen::Whole(mapping_id) => {
                self.table_mapping(mapping_id, table)?;
                self.chunk.as_mut()?.void = true;
                None
            }
        }
    }

    /// The chunk's watermark: its rows (and the sweep, after the last chunk of a resync) as
    /// events; a void chunk is forgotten, to be read again.
    fn finish_chunk(&mut self) -> Option<Finished> {
        let chunk = self.chunk.as_ref()?;
        let (mapping_id, table) = (chunk.mapping_id, chunk.job.table);
        if chunk.void {
            self.chunk = None;
            return None;
        }
        let Some(m) = self.table_mapping(mapping_id, table) else {
            // The job's mapping is gone: the next round finds out what became of the table.
            self.chunk = None;
            return None;
        };
        let chunk = self.chunk.as_ref()?;
        let mut events: Vec<Event> = chunk
            .rows
            .iter()
            .filter(|row| chunk.changed.is_empty() || key_of(&m, row).is_none_or(|k| !chunk.changed.contains(&k)))
            .map(|row| chunk_event(chunk.mapping_id, Kind::Row(Op::Read), Some(row.clone())))
            .collect();
        if chunk.next.is_none() && chunk.job.sweep {
            events.push(chunk_event(chunk.mapping_id, Kind::Sweep, None));
        }
        Some(Finished { events })
    }

    /// Redis acknowledged the chunk: the job moves past it (in the round's transaction), or
    /// ends after its last chunk.
    pub(super) fn chunk_delivered(&mut self) {
        let Some(chunk) = self.chunk.take() else { return };
        let job = &chunk.job;
        let n = chunk.rows.len() as i64;
        // A sync_table or resync restarting the job holds its row until it commits: the worker
        // never waits for it (delivery would stand still); the chunk is simply read again.
        let ours = Spi::get_one_with_args::<bool>(
            "SELECT true FROM redis.backfill WHERE table_oid = $1 AND started_at = $2::timestamptz FOR UPDATE SKIP LOCKED",
            &[job.table.into(), job.started_at.clone().into()],
        );
        if !matches!(ours, Ok(Some(true))) {
            return;
        }
        match &chunk.next {
            Some(next) => Spi::run_with_args(
                "UPDATE redis.backfill SET leaf = $3, filenode = $4, after = $5::tid, rows_done = rows_done + $6, failed_at = NULL, last_error = NULL \
                  WHERE table_oid = $1 AND started_at = $2::timestamptz",
                &[
                    job.table.into(),
                    job.started_at.clone().into(),
                    next.leaf.into(),
                    next.filenode.into(),
                    next.after.clone().into(),
                    n.into(),
                ],
            )
            .unwrap_or_report(),
            None => {
                delete_job(job);
                log!("pg_redis: backfill of table {} done", job.table.to_u32());
            }
        }
    }

    /// The mapping `mapping_id` when it is one of `table`'s.
    fn table_mapping(&mut self, mapping_id: i64, table: pg_sys::Oid) -> Option<std::sync::Arc<TableMapping>> {
        if !self.mappings.contains_key(&mapping_id) {
            for (m, oid) in super::outbox::load_mappings(&[mapping_id]) {
                self.mappings.insert(m.id, (std::sync::Arc::new(m), oid));
            }
        }
        self.mappings.get(&mapping_id).filter(|(_, oid)| *oid == table).map(|(m, _)| m.clone())
    }
}

/// The oldest backfill.
fn next_job() -> Option<Job> {
    on_latest_snapshot(|| {
        Spi::connect(|c| {
            let mut rows = c
                .select(
                    "SELECT table_oid, sweep, leaf, after::text, started_at::text, filenode FROM redis.backfill ORDER BY coalesce(failed_at, '-infinity'), started_at, table_oid LIMIT 1",
                    None,
                    &[],
                )
                .unwrap_or_report();
            let r = rows.next()?;
            Some(Job {
                table: r.get::<pg_sys::Oid>(1).ok()??,
                sweep: r.get::<bool>(2).ok()??,
                leaf: r.get::<pg_sys::Oid>(3).ok().flatten(),
                after: r.get::<String>(4).ok()??,
                started_at: r.get::<String>(5).ok()??,
                filenode: r.get::<pg_sys::Oid>(6).ok().flatten(),
            })
        })
    })
}

fn delete_job(job: &Job) {
    Spi::run_with_args(
        "DELETE FROM redis.backfill WHERE table_oid = $1 AND started_at = $2::timestamptz",
        &[job.table.into(), job.started_at.clone().into()],
    )
    .unwrap_or_report();
}

/// Commits nothing by itself: writes the watermark into the transaction.
fn emit(w: &Watermark) {
    Spi::run_with_args(
        "SELECT pg_catalog.pg_logical_emit_message(true, $1, $2)",
        &[Watermark::PREFIX.into(), w.encode().into()],
    )
    .unwrap_or_report();
}

struct ChunkRead {
    rows: Vec<String>,
    blocks: i64,
    /// Whether the rows or bytes bound ended the chunk before its last block.
    stopped_early: bool,
    next: Option<Next>,
}

/// Where a job's next chunk starts.
struct Next {
    leaf: pg_sys::Oid,
    /// The leaf's file when the position was taken.
    filenode: Option<pg_sys::Oid>,
    after: String,
}

/// Reads the job's next chunk: up to `blocks` blocks of the current leaf, rows after the last
/// one read, at most `target_rows` rows and about `max_bytes` of row text. Rows are read as
/// the table's owner, under the canonical settings, as `to_jsonb` of the whole row: the bytes
/// the capture trigger queues.
fn read_chunk(job: &Job, blocks: i64, target_rows: usize, max_bytes: usize) -> ChunkRead {
    // Locked first (writers pass): what is read of its leaves below (which they are, their
    // files, their sizes) then holds for the read. Unlocked, a VACUUM FULL could rewrite a leaf
    // between the check of its file and the read, which would read the new file from a
    // position in the old one.
    let table = read::one::<String>("SELECT $1::regclass::text", &[job.table.into()]).unwrap_or_report();
    let Some(table) = table else { error!("table {} is gone", job.table.to_u32()) };
    Spi::run(&format!("LOCK TABLE {table} IN ACCESS SHARE MODE")).unwrap_or_report();
    let leaves: Vec<pg_sys::Oid> = Spi::connect(|c| {
        c.select(
            "SELECT p.relid FROM redis._partition_tree($1) p WHERE p.isleaf ORDER BY p.relid::oid::int8",
            None,
            &[job.table.into()],
        )
        .unwrap_or_report()
        .filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
        .collect()
    });
    let filenode_of = |leaf: pg_sys::Oid| {
        read::one::<pg_sys::Oid>("SELECT pg_catalog.pg_relation_filenode($1)", &[leaf.into()]).ok().flatten()
    };
    // The job's leaf, or the next one when it left the table meanwhile; from its start when it
    // was rewritten since (VACUUM FULL, CLUSTER: every row moved).
    let (leaf, after) = match job.leaf {
        Some(l) if leaves.contains(&l) && job.filenode.is_some_and(|f| Some(f) != filenode_of(l)) => {
            (l, "(0,0)".to_owned())
        }
        Some(l) if leaves.contains(&l) => (l, job.after.clone()),
        Some(l) => match leaves.iter().find(|o| o.to_u32() > l.to_u32()) {
            Some(next) => (*next, "(0,0)".to_owned()),
            None => return ChunkRead { rows: Vec::new(), blocks: 0, stopped_early: false, next: None },
        },
        None => match leaves.first() {
            Some(first) => (*first, "(0,0)".to_owned()),
            None => return ChunkRead { rows: Vec::new(), blocks: 0, stopped_early: false, next: None },
        },
    };
    let (name, owner) = read::two::<String, pg_sys::Oid>(
        "SELECT c.oid::regclass::text, c.relowner FROM pg_catalog.pg_class c WHERE c.oid = $1",
        &[leaf.into()],
    )
    .unwrap_or_report();
    let size = read::one::<i64>(
        "SELECT pg_catalog.pg_relation_size($1) / pg_catalog.current_setting('block_size')::int8",
        &[leaf.into()],
    )
    .unwrap_or_report();
    let (Some(name), Some(owner), Some(size)) = (name, owner, size) else {
        error!("leaf {} of table {} is gone", leaf.to_u32(), job.table.to_u32());
    };
    let first_block = parse_tid(&after).map_or(0, |(b, _)| b);
    let end_block = first_block.saturating_add(blocks.max(1));
    let sql = format!(
        "SELECT t.ctid::text, pg_catalog.to_jsonb(t.*)::text FROM ONLY {name} AS t \
          WHERE t.ctid > $1::tid AND t.ctid < $2::tid"
    );
    let end = format!("({end_block},0)");
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut last = after.clone();
    let mut stopped_early = false;
    guc::with_settings([(c"synchronize_seqscans", c"off"), (c"enable_seqscan", c"off")], || {
        crate::pg::role::as_role(owner, || {
            crate::capture::canonical::with_canonical_settings(|| {
                Spi::connect(|c| {
                    let mut cursor = c.open_cursor(&sql, &[after.clone().into(), end.clone().into()]);
                    'fetch: loop {
                        let table = cursor.fetch(1000).unwrap_or_report();
                        if table.is_empty() {
                            break;
                        }
                        for r in table {
                            let (Some(ctid), Some(row)) =
                                (r.get::<String>(1).unwrap_or_report(), r.get::<String>(2).unwrap_or_report())
                            else {
                                continue;
                            };
                            bytes += row.len();
                            rows.push(row);
                            last = ctid;
                            if rows.len() >= target_rows || bytes >= max_bytes {
                                stopped_early = true;
                                break 'fetch;
                            }
                        }
                    }
                })
            })
        })
    });
    let filenode = filenode_of(leaf);
    let next = if stopped_early {
        Some(Next { leaf, filenode, after: last })
    } else if end_block < size {
        Some(Next { leaf, filenode, after: end.clone() })
    } else {
        // This leaf is done: the next one, from its start.
        leaves.iter().find(|o| o.to_u32() > leaf.to_u32()).map(|l| Next {
            leaf: *l,
            filenode: filenode_of(*l),
            after: "(0,0)".to_owned(),
        })
    };
    ChunkRead { rows, blocks: end_block - first_block, stopped_early, next }
}

fn parse_tid(tid: &str) -> Option<(i64, i64)> {
    let (b, o) = tid.trim_start_matches('(').trim_end_matches(')').split_once(',')?;
    Some((b.trim().parse().ok()?, o.trim().parse().ok()?))
}

fn key_of(m: &TableMapping, row: &str) -> Option<String> {
    let parsed = pg_redis_shared::encoding::parse_row(row).ok()?;
    m.key.render_row(&parsed).ok()
}

fn chunk_event(mapping_id: i64, kind: Kind, row: Option<String>) -> Event {
    Event {
        id: 0,
        ctid: String::new(),
        mapping_id: Some(mapping_id),
        kind,
        tx_id: 0,
        captured_ms: 0,
        old_row: None,
        new_row: row,
        command: None,
    }
}

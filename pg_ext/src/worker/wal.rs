//! Delivery under WAL capture: the worker consumes its database's replication slot
//! (`pg_redis_<database oid>`, output plugin `pg_redis`), whose records are the changes of
//! tables captured from the WAL and every row queued in the outbox, in commit order.
//!
//! One round: peek the slot's next transactions (decoding does not move the slot), apply them
//! to Redis in commit order, commit the bookkeeping (delivered queued rows deleted, refused
//! ones parked), then advance the slot to the end of the last transaction Redis acknowledged.
//! A crash anywhere decodes those transactions again: row changes are idempotent, and a queued
//! row whose outbox row is gone was delivered already and is skipped (so a queued command never
//! runs twice). When Redis refuses a change, delivery stops there and retries it: the slot
//! cannot hold a later change back while an earlier one waits.
//!
//! The slot is made by the worker, in a transaction of its own (PostgreSQL creates logical
//! slots only in transactions that wrote nothing). What committed before it could decode is
//! caught up with: outbox rows that existed then are drained from the outbox first, and every
//! table captured from the WAL is resynced. An invalidated slot (`max_slot_wal_keep_size`) is
//! repaired the same way: dropped, made again, every such table resynced. Never skipped.

use super::backfill::Seen;
use super::outbox::{self, Event, Kind, Scope};
use super::redis_sink::Outcome;
use super::registry::{self, WorkerState};
use super::settle::split;
use super::{in_transaction, Drained, Worker};
use crate::capture::mode;
use crate::gucs;
use crate::pg::guc;
use crate::pg::read;
use crate::pg::xact::{on_latest_snapshot, try_in_transaction, wait_until_visible};
use pg_redis_shared::wal::{QueuedRow, WalOp, WalRecord};
use pg_redis_shared::{delivery, Op, OutboxOp, TableMapping};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

/// How often a worker capturing by trigger looks for a slot an earlier setting left.
const SLOT_LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// How long after a failed attempt to make the slot the worker tries again.
const SLOT_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// The slot's state, as the worker keeps it between rounds.
pub(super) struct Slot {
    pub(super) name: String,
    /// Outbox rows up to this id committed before the slot could decode them: drained from the
    /// outbox first (0: done).
    pub(super) outbox_upto: i64,
    /// Mapping versions found unused, and the WAL position after which no record names them.
    forget: Option<(Vec<i64>, u64)>,
}

/// One record of the slot, turned into what the worker delivers.
struct Decoded {
    event: Event,
    /// Whether it is a row queued in the outbox (deleted once delivered).
    queued: bool,
}

/// What the slot's rows are to the worker, in order.
enum Item {
    Event(Decoded),
    /// A transaction's end (or transactions with nothing to deliver): the slot may move here
    /// once everything before it was acknowledged.
    End(u64),
    /// The backfill chunk in flight was delivered once everything before this was.
    ChunkDone,
}

/// Where a round is in the slot's rows.
#[derive(Default)]
struct Reader {
    /// The open transaction's id and commit time (from its `B` record).
    transaction: Option<(i64, i64)>,
    /// The end of the last transaction wholly acknowledged.
    acked_through: Option<u64>,
}

/// What the slot says of itself.
struct Health {
    confirmed: u64,
    /// PostgreSQL removed WAL it still needed: its changes are lost, a resync repairs.
    invalidated: Option<String>,
}

impl Worker {
    /// Whether this worker delivers from the slot: the server captures from the WAL, or a slot
    /// of an earlier setting still holds changes.
    pub(super) fn uses_slot(&mut self) -> bool {
        // A slot left by an earlier setting is looked for now and then, not every round: trigger
        // capture's drain must not pay a transaction per batch for it.
        let look = mode::server_decodes_wal() || self.slot_looked.is_none_or(|t| t.elapsed() >= SLOT_LOOK_EVERY);
        if self.slot.is_none() && look {
            self.slot_looked = Some(Instant::now());
            if mode::server_decodes_wal() || slot_exists(&mode::slot_name(self.dboid)) {
                self.slot = in_transaction("preparing the replication slot", || self.open_slot()).flatten();
            }
        }
        let decodes = self.slot.is_some() || mode::server_decodes_wal();
        if decodes != self.announced_decoding {
            registry::set_decoding(self.dboid, decodes);
            self.announced_decoding = decodes;
        }
        self.slot.is_some()
    }

    /// Makes the slot when it is missing (then catches up with what it cannot decode) and reads
    /// its bookkeeping.
    fn open_slot(&self) -> Option<Slot> {
        let name = mode::slot_name(self.dboid);
        let recorded = read::two::<String, i64>("SELECT slot_name::text, outbox_upto FROM redis.wal_slot", &[])
            .ok()
            .and_then(|(n, upto)| Some((n?, upto?)));
        match recorded {
            Some((n, upto)) if n == name && slot_is_there(&name) => {
                Some(Slot { name, outbox_upto: upto, forget: None })
            }
            _ => None,
        }
    }

    /// Creates the slot (a write-free transaction of its own), then records it and catches up
    /// in the next: the outbox rows it cannot decode, and a resync of every table captured
    /// from the WAL (their changes before the slot existed are nowhere else).
    pub(super) fn create_slot(&mut self) -> bool {
        let name = mode::slot_name(self.dboid);
        if self.slot_attempt.is_some_and(|t| t.elapsed() < SLOT_RETRY) {
            return false;
        }
        self.slot_attempt = Some(Instant::now());
        // The catch-up below must run for this slot even if the worker stops right after
        // making it: the row saying it ran goes first.
        if in_transaction("forgetting the replication slot", || {
            Spi::run("DELETE FROM redis.wal_slot").unwrap_or_report()
        })
        .is_none()
        {
            return false;
        }
        if !slot_exists(&name) {
            // Read-only SPI: a mutable one assigns a transaction id, and PostgreSQL creates
            // logical slots only in transactions without one.
            // It waits for every transaction that wrote to end: not for ever (a forgotten
            // prepared transaction); tables stay captured by trigger until it succeeds.
            let made = try_in_transaction(|| {
                guc::with_settings([(c"statement_timeout", c"10s")], || {
                    read::one::<String>(
                        "SELECT (pg_create_logical_replication_slot($1, 'pg_redis')).slot_name::text",
                        &[name.clone().into()],
                    )
                    .unwrap_or_report()
                })
            });
            if let Err(e) = made {
                let msg = format!("cannot create replication slot {name}: {e}");
                log!("pg_redis: {msg}");
                registry::set_state(self.dboid, WorkerState::Backoff, Some(&msg));
                return false;
            }
            log!("pg_redis: replication slot {name} created: changes are delivered from the WAL");
        }
        self.slot_attempt = None;
        let slot = in_transaction("catching up with the new replication slot", || {
            let upto =
                read::one::<i64>("SELECT coalesce(max(id), 0) FROM redis.outbox", &[]).unwrap_or_report().unwrap_or(0);
            Spi::run_with_args(
                "INSERT INTO redis.wal_slot (slot_name, outbox_upto) VALUES ($1, $2) \
                 ON CONFLICT (only_row) DO UPDATE SET slot_name = EXCLUDED.slot_name, created_at = now(), outbox_upto = EXCLUDED.outbox_upto, resynced_at = now()",
                &[name.clone().into(), upto.into()],
            )
            .unwrap_or_report();
            let tables: Vec<String> = Spi::connect(|c| {
                c.select(
                    "SELECT table_name::text FROM redis.mapping WHERE active AND capture = 'wal' ORDER BY id",
                    None,
                    &[],
                )
                .unwrap_or_report()
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
            });
            for t in &tables {
                log!("pg_redis: resyncing {t}: its changes before replication slot {name} existed cannot be decoded");
                Spi::run_with_args("SELECT redis.resync($1::regclass)", &[t.clone().into()]).unwrap_or_report();
            }
            Slot { name: name.clone(), outbox_upto: upto, forget: None }
        });
        self.slot = slot;
        self.recapture_due = true;
        // A chunk read for an earlier slot would wait for a watermark this one never decodes.
        self.chunk = None;
        self.slot.is_some()
    }

    /// One round of delivery from the slot. None: the round failed (or the extension is gone).
    pub(super) fn drain_slot_once(&mut self) -> Option<Drained> {
        let now = Instant::now();
        let left = self.backoff.remaining(now).max(self.slot_refused.remaining(now));
        if !left.is_zero() {
            return Some(Drained::Failed(left));
        }
        let Some(slot) = self.slot.as_ref() else {
            // No slot yet (or it cannot be made): tables are captured by trigger meanwhile, and
            // the outbox is drained as without WAL capture.
            if self.create_slot() {
                return Some(Drained::Some { full: true });
            }
            return self.drain_outbox_once();
        };
        let name = slot.name.clone();
        if slot.outbox_upto > 0 {
            // Rows queued before the slot existed go first, from the outbox, in id order.
            return self.drain_outbox_before_slot();
        }
        let health = match try_in_transaction(|| health(&name)) {
            Ok(Some(Some(h))) => h,
            // The extension is gone: the caller finds out and stops.
            Ok(None) => return None,
            Ok(Some(None)) => {
                // Dropped by hand: make it again, and resync what it would have carried.
                log!("pg_redis: replication slot {name} is gone; creating it again and resyncing tables captured from the WAL");
                self.slot = None;
                return Some(if self.create_slot() { Drained::Some { full: true } } else { self.slot_failed() });
            }
            Err(msg) => {
                log!("pg_redis: reading replication slot {name} failed: {msg}");
                return Some(self.slot_failed());
            }
        };
        if let Some(why) = health.invalidated {
            return Some(self.repair_invalidated(&name, &why));
        }
        if self.recapture_due {
            self.recapture_due = false;
            self.recapture_tables();
        }
        // A chunk's watermark lands at the WAL's end: with a backlog to decode first, the chunk
        // would wait (tracking every change meanwhile). The backlog goes first, for a second at
        // most: writers that never let up must not starve the backfill.
        if !self.slot_behind || self.chunk_read_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            self.start_chunk_if_due();
        }
        let limit = gucs::BATCH_SIZE.get() as i64;
        let this = AssertUnwindSafe(&mut *self);
        let peeked = name.clone();
        let round = try_in_transaction(move || {
            let this = this;
            this.0.deliver_from_slot(&peeked, limit)
        });
        let drained = match round {
            Ok((drained, lsn)) => {
                self.slot_behind = matches!(drained, Drained::Some { full: true });
                if let Some(lsn) = lsn.filter(|l| *l > health.confirmed) {
                    let advanced = in_transaction("advancing the replication slot", || advance(&name, lsn)).is_some();
                    if advanced {
                        self.forget_unused_mappings(lsn);
                    }
                }
                drained
            }
            Err(msg) => {
                let msg = format!("delivering changes from replication slot failed: {msg}");
                log!("pg_redis: {msg}");
                registry::set_state(self.dboid, WorkerState::Backoff, Some(&msg));
                return None;
            }
        };
        if matches!(drained, Drained::Empty | Drained::Some { full: false }) && !mode::server_decodes_wal() {
            return Some(self.leave_slot_if_unused());
        }
        Some(drained)
    }

    /// Moves every synced table to the capture the server's setting picks now (each in its own
    /// transaction: a table whose conversion fails keeps its capture and is retried later).
    pub(super) fn recapture_tables(&mut self) {
        let tables = in_transaction("listing tables to recapture", || {
            Spi::connect(|c| {
                c.select(
                    "SELECT table_name::oid, capture, capture_requested FROM redis.mapping WHERE active ORDER BY id",
                    None,
                    &[],
                )
                .unwrap_or_report()
                .filter_map(|r| {
                    let oid = r.get::<pg_sys::Oid>(1).ok().flatten()?;
                    let now: mode::Capture = r.get::<String>(2).ok().flatten()?.parse().ok()?;
                    let requested = r.get::<String>(3).ok().flatten().and_then(|c| c.parse().ok());
                    (mode::desired(requested) != now).then_some(oid)
                })
                .collect::<Vec<_>>()
            })
        })
        .unwrap_or_default();
        for t in tables {
            // Its locks wait for the table's writers: briefly, and the table is tried again
            // later, rather than delivery standing still behind a long transaction.
            let done = in_transaction("changing how a table is captured", || {
                guc::with_settings([(c"lock_timeout", c"2s")], || {
                    Spi::get_one_with_args::<String>("SELECT redis.recapture($1::regclass)", &[t.into()])
                        .unwrap_or_report()
                })
            });
            match done.flatten() {
                Some(mode) => log!("pg_redis: table {} is captured by {mode}", t.to_u32()),
                None => self.recapture_due = true,
            }
        }
    }

    /// The server no longer captures from the WAL: once no table is captured from it and the
    /// slot is consumed to its end, the slot goes (it would hold WAL for nothing, and a server
    /// holding a logical slot refuses to start with a lower wal_level). The outbox is drained
    /// again from then on.
    fn leave_slot_if_unused(&mut self) -> Drained {
        let wal_tables = in_transaction("looking for tables captured from the WAL", || {
            read::one::<bool>("SELECT EXISTS (SELECT 1 FROM redis.mapping WHERE active AND capture = 'wal')", &[])
                .unwrap_or_report()
                .unwrap_or(true)
        });
        if wal_tables != Some(false) {
            return Drained::Empty;
        }
        let name = mode::slot_name(self.dboid);
        let dropped = in_transaction("dropping the replication slot", || {
            // No sync_table may make a version captured from the WAL meanwhile (one that had
            // not yet read the new setting): checked again under the catalog's lock.
            Spi::run("LOCK TABLE redis.mapping IN SHARE ROW EXCLUSIVE MODE").unwrap_or_report();
            let wal =
                Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM redis.mapping WHERE active AND capture = 'wal')")
                    .unwrap_or_report()
                    .unwrap_or(true);
            if !wal {
                Spi::run("DELETE FROM redis.wal_slot").unwrap_or_report();
                drop_slot_named(&name);
            }
            !wal
        });
        if dropped == Some(false) {
            self.recapture_due = true;
        }
        if dropped == Some(true) {
            log!("pg_redis: replication slot {name} dropped: changes are captured by trigger");
            self.slot = None;
            self.chunk = None;
            registry::set_decoding(self.dboid, false);
        }
        Drained::Some { full: true }
    }

    fn slot_failed(&mut self) -> Drained {
        let wait =
            self.backoff.fail(Instant::now(), super::ms(gucs::RETRY_MIN_MS.get()), super::ms(gucs::RETRY_MAX_MS.get()));
        Drained::Failed(wait)
    }

    /// The outbox rows the slot cannot decode, drained as without a slot; then the slot.
    fn drain_outbox_before_slot(&mut self) -> Option<Drained> {
        let upto = self.slot.as_ref().map_or(0, |s| s.outbox_upto);
        self.outbox_upto = upto;
        let drained = self.drain_outbox_once();
        self.outbox_upto = i64::MAX;
        if let Some(Drained::Empty) = drained {
            let left = in_transaction("checking the outbox", || {
                read::one::<bool>("SELECT EXISTS (SELECT 1 FROM redis.outbox WHERE id <= $1)", &[upto.into()])
                    .unwrap_or_report()
                    .unwrap_or(true)
            });
            if left == Some(false)
                && in_transaction("recording the replication slot", || {
                    Spi::run("UPDATE redis.wal_slot SET outbox_upto = 0").unwrap_or_report()
                })
                .is_some()
            {
                if let Some(s) = self.slot.as_mut() {
                    s.outbox_upto = 0;
                }
                return Some(Drained::Some { full: true });
            }
        }
        drained
    }

    /// PostgreSQL invalidated the slot: changes it held are gone. Drop it and make it again,
    /// which resyncs every table captured from the WAL.
    fn repair_invalidated(&mut self, name: &str, why: &str) -> Drained {
        let msg = format!(
            "replication slot {name} was invalidated ({why}): changes it held are lost; resyncing every table captured from the WAL (raise max_slot_wal_keep_size to keep more WAL while Redis is away)"
        );
        warning!("pg_redis: {msg}");
        registry::set_state(self.dboid, WorkerState::Delivering, Some(&msg));
        let dropped = in_transaction("dropping the invalidated replication slot", || {
            drop_slot_named(name);
            Spi::run("DELETE FROM redis.wal_slot").unwrap_or_report();
        });
        self.slot = None;
        if dropped.is_some() && self.create_slot() {
            Drained::Some { full: true }
        } else {
            self.slot_failed()
        }
    }

    /// Peeks the slot and applies what it holds in commit order, in batches bounded by events
    /// and bytes (a large transaction is read and applied in parts), settling the outbox and
    /// the dead letters after each; returns where the slot may move: the end of the last
    /// transaction wholly acknowledged, or the end of the WAL read when everything was.
    fn deliver_from_slot(&mut self, name: &str, batch: i64) -> (Drained, Option<u64>) {
        let flushed = current_lsn("pg_current_wal_flush_lsn()");
        // Changes decoded per round (whole transactions: a larger one is read whole).
        let limit = (batch * 10).min(i32::MAX as i64);
        let max_bytes = gucs::batch_max_bytes();
        let mut reader = Reader::default();
        let mut rows_read = 0i64;
        let mut failed = None;
        guc::with_superuser_settings(QUIET, || {
            Spi::connect(|client| {
                let mut cursor = client.open_cursor(PEEK_SQL, &[name.into(), (limit as i32).into()]);
                loop {
                    let rows = fetch(&mut cursor, batch, max_bytes);
                    if rows.is_empty() {
                        break;
                    }
                    rows_read += rows.len() as i64;
                    let items = self.decode_rows(rows, &mut reader);
                    if let Err(d) = self.deliver_part(items, &mut reader) {
                        failed = Some(d);
                        break;
                    }
                }
            })
        });
        let full = rows_read >= limit;
        match failed {
            Some(d) => (d, reader.acked_through),
            None if rows_read == 0 => (Drained::Empty, flushed),
            // Everything read was acknowledged: past transactions with nothing to deliver too.
            None if !full => {
                self.slot_refused.succeed();
                (Drained::Some { full: false }, reader.acked_through.max(flushed))
            }
            None => (Drained::Some { full: true }, reader.acked_through),
        }
    }

    /// Applies one part of a round; moves `reader.acked_through` past every transaction end
    /// in it that Redis acknowledged everything before. Err: stop the round, with the wait.
    fn deliver_part(&mut self, items: Vec<Item>, reader: &mut Reader) -> Result<(), Drained> {
        let mut decoded: Vec<Decoded> = Vec::new();
        // Per item: how many events precede it (for the transaction ends).
        let mut ends: Vec<(usize, u64)> = Vec::new();
        let mut chunk_done = None;
        for item in items {
            match item {
                Item::Event(d) => decoded.push(d),
                Item::End(lsn) => ends.push((decoded.len(), lsn)),
                Item::ChunkDone => chunk_done = Some(decoded.len()),
            }
        }
        // A queued row whose outbox row is gone was delivered (before the slot existed, or in
        // a round whose advance did not happen): skip it. Positions shift: ends count kept ones.
        let queued: Vec<i64> = decoded.iter().filter(|d| d.queued).map(|d| d.event.id).collect();
        let present = outbox_rows_present(&queued);
        let mut kept = Vec::with_capacity(decoded.len());
        let mut kept_before = Vec::with_capacity(decoded.len() + 1);
        for d in decoded {
            kept_before.push(kept.len());
            if !d.queued || present.contains(&d.event.id) {
                kept.push(d);
            }
        }
        kept_before.push(kept.len());
        let ends: Vec<(usize, u64)> =
            ends.into_iter().map(|(i, lsn)| (kept_before.get(i).copied().unwrap_or(kept.len()), lsn)).collect();
        let chunk_done = chunk_done.map(|i| kept_before.get(i).copied().unwrap_or(kept.len()));
        let acked = if kept.is_empty() { 0 } else { self.apply_part(&kept)? };
        if chunk_done.is_some_and(|before| before <= acked) {
            self.chunk_delivered();
        }
        for (before, lsn) in &ends {
            if *before <= acked {
                reader.acked_through = Some(*lsn);
            }
        }
        if acked < kept.len() {
            let (min, max) = (super::ms(gucs::RETRY_MIN_MS.get()), super::ms(gucs::RETRY_MAX_MS.get()));
            return Err(Drained::Failed(self.slot_refused.fail(Instant::now(), min, max)));
        }
        Ok(())
    }

    /// Sends events to Redis and settles them; how many, from the first, were acknowledged.
    fn apply_part(&mut self, decoded: &[Decoded]) -> Result<usize, Drained> {
        let events: Vec<Event> = decoded.iter().map(|d| d.event.clone()).collect();
        registry::set_state(self.dboid, WorkerState::Delivering, None);
        let planned = self.plan_all(&events);
        let (runnable, status) = split(planned);
        match self.send_now(&runnable) {
            Ok(outcomes) => {
                self.backoff.succeed();
                Ok(self.settle_from_slot(decoded, status, outcomes))
            }
            Err(e) => {
                if let Some(c) = self.redis.take() {
                    c.abandon();
                }
                Err(self.failed(&events, e))
            }
        }
    }

    /// Settles a round: queued rows Redis applied are deleted, events that can never apply are
    /// parked; returns how many events, from the first, were acknowledged (delivery stops at
    /// the first one Redis did not take, to keep commit order).
    fn settle_from_slot(
        &mut self,
        decoded: &[Decoded],
        status: Vec<Result<(), String>>,
        outcomes: Vec<Outcome>,
    ) -> usize {
        let mut outcomes = outcomes.into_iter();
        let mut delete = Vec::new();
        let mut dead_queued: Vec<(i64, String)> = Vec::new();
        let mut dead_decoded: Vec<(&Event, String)> = Vec::new();
        let mut delivered: HashMap<Scope, i64> = HashMap::new();
        let mut errors: HashMap<Scope, String> = HashMap::new();
        let mut acked = 0;
        let mut stopped = false;
        for (d, p) in decoded.iter().zip(status) {
            let scope = self.scope_of(&d.event);
            let outcome = match p {
                Ok(()) => outcomes.next().unwrap_or(Outcome::Refused("no reply".into())),
                // Past the stop, all is decoded again (and parked then, if it must be).
                Err(_) if stopped => continue,
                Err(why) => {
                    errors.insert(scope, why.clone());
                    if d.queued {
                        dead_queued.push((d.event.id, why));
                    } else {
                        dead_decoded.push((&d.event, why));
                    }
                    acked += 1;
                    continue;
                }
            };
            match outcome {
                // Redis ran it although delivery stops before it: gone from the outbox, it is
                // skipped when decoded again, so no queued command runs twice.
                Outcome::Applied if stopped => {
                    if d.queued {
                        delete.push(d.event.id);
                    }
                }
                _ if stopped => {}
                Outcome::Applied => {
                    if d.queued {
                        delete.push(d.event.id);
                    }
                    *delivered.entry(scope).or_default() += 1;
                    acked += 1;
                }
                Outcome::Refused(err) if d.event.kind == Kind::Command && !delivery::is_transient(&err) => {
                    let why = format!("Redis refused the queued command: {err}");
                    errors.insert(scope, why.clone());
                    dead_queued.push((d.event.id, why));
                    acked += 1;
                }
                Outcome::NotRun(why) | Outcome::Refused(why) => {
                    errors.entry(scope).or_insert_with(|| format!("Redis did not apply the change: {why}"));
                    stopped = true;
                }
            }
        }
        if !delete.is_empty() {
            Spi::run_with_args("DELETE FROM redis.outbox WHERE id = ANY($1)", &[delete.into()]).unwrap_or_report();
        }
        outbox::dead_letter(&dead_queued);
        park_decoded(&dead_decoded);
        for (scope, n) in &delivered {
            outbox::record_delivered(*scope, *n);
        }
        for (scope, err) in &errors {
            outbox::record_error(*scope, err);
            log!("pg_redis: {err}");
        }
        if let Some(err) = errors.values().next() {
            registry::set_state(self.dboid, WorkerState::Delivering, Some(err));
        }
        acked
    }

    /// The slot's rows as events and transaction ends, in order.
    fn decode_rows(&mut self, rows: Vec<(u64, String)>, reader: &mut Reader) -> Vec<Item> {
        let mut out = Vec::with_capacity(rows.len());
        for (lsn, text) in rows {
            let record = match WalRecord::parse(&text) {
                Ok(r) => r,
                Err(e) => error!("pg_redis: replication slot record at {} cannot be read: {e}", lsn_text(lsn)),
            };
            let (tx_id, commit_ms) = reader.transaction.unwrap_or((0, 0));
            let decoded = |event: Event| {
                Item::Event(Decoded { event: Event { tx_id, captured_ms: commit_ms, ..event }, queued: false })
            };
            match record {
                WalRecord::Begin { xid, commit_ms } => {
                    // What is read of it below (its queued rows, its mappings, a row read
                    // again) must see it.
                    wait_until_visible(xid);
                    reader.transaction = Some((xid, commit_ms));
                }
                WalRecord::Commit { .. } => {
                    reader.transaction = None;
                    out.push(Item::End(lsn));
                }
                WalRecord::Keepalive => out.push(Item::End(lsn)),
                WalRecord::Watermark(w) => {
                    if let Some(finished) = self.chunk_sees(Seen::Watermark(w)) {
                        out.extend(finished.events.into_iter().map(decoded));
                        out.push(Item::ChunkDone);
                    }
                }
                WalRecord::Queued(q) => {
                    if let Some(m) = q.mapping_id {
                        self.chunk_sees(match OutboxOp::from_code(q.op) {
                            Some(OutboxOp::Row(Op::Truncate) | OutboxOp::Sweep) | None => Seen::Whole(m),
                            _ => Seen::Rows(m, [q.old_row.as_deref(), q.new_row.as_deref()]),
                        });
                    }
                    out.push(Item::Event(Decoded { event: queued_event(q), queued: true }))
                }
                WalRecord::Change { mapping_id, op, before, after } => {
                    self.chunk_sees(match op {
                        WalOp::Outbox(OutboxOp::Row(Op::Truncate) | OutboxOp::Sweep) => Seen::Whole(mapping_id),
                        _ => Seen::Rows(mapping_id, [before.as_deref(), after.as_deref()]),
                    });
                    out.push(decoded(match op {
                        WalOp::Outbox(op) => decoded_event(lsn, mapping_id, op, before, after),
                        WalOp::Refetch => self.refetch(lsn, mapping_id, before, after),
                    }))
                }
                WalRecord::Undecodable { mapping_id, reason } => {
                    self.chunk_sees(Seen::Whole(mapping_id));
                    // Parked with the reason; a resync repairs the key once the cause is fixed.
                    let event = decoded_event(lsn, mapping_id, OutboxOp::Row(Op::Update), None, None);
                    out.push(decoded(Event { kind: Kind::Unknown('?'), command: Some(vec![reason]), ..event }));
                }
            }
        }
        out
    }

    /// A change whose row the WAL does not carry whole (a value stored out of line, kept by
    /// an UPDATE, under a replica identity other than FULL): the row as it is now. Later
    /// records of the slot bring it to each later state again.
    fn refetch(&mut self, lsn: u64, mapping_id: i64, before: Option<String>, after: Option<String>) -> Event {
        let base = decoded_event(lsn, mapping_id, OutboxOp::Row(Op::Update), before.clone(), after.clone());
        if !self.mappings.contains_key(&mapping_id) {
            for (m, oid) in outbox::load_mappings(&[mapping_id]) {
                self.mappings.insert(m.id, (std::sync::Arc::new(m), oid));
            }
        }
        let Some((m, oid)) = self.mappings.get(&mapping_id).cloned() else { return base };
        let Some(values) = after.as_deref().and_then(|a| key_values(&m, a)) else { return base };
        match row_now(&m, oid, &values) {
            Ok(Some(row)) => Event { new_row: Some(row), ..base },
            // Gone by now: its key goes (a later record says what became of it).
            Ok(None) => Event { kind: Kind::Row(Op::Delete), old_row: after, new_row: None, ..base },
            Err(why) => Event { kind: Kind::Unknown('?'), command: Some(vec![why]), ..base },
        }
    }

    /// Mapping versions unused by the outbox are forgotten only once the slot moved past the
    /// point where they were seen unused: a record behind it may still name one.
    fn forget_unused_mappings(&mut self, confirmed: u64) {
        let Some(slot) = self.slot.as_mut() else { return };
        match slot.forget.take() {
            Some((ids, after)) if confirmed >= after => {
                in_transaction("forgetting unused mappings", || {
                    Spi::run_with_args(
                        "DELETE FROM redis.mapping m WHERE m.id = ANY($1) AND NOT m.active \
                         AND NOT EXISTS (SELECT 1 FROM redis.outbox o WHERE o.mapping_id = m.id)",
                        &[ids.into()],
                    )
                    .unwrap_or_report()
                });
                self.mappings.clear();
            }
            Some(pending) => slot.forget = Some(pending),
            None => {
                slot.forget = in_transaction("listing unused mappings", || {
                    let ids: Vec<i64> = Spi::connect(|c| {
                        c.select(
                            "SELECT id FROM redis.mapping m WHERE NOT m.active \
                             AND NOT EXISTS (SELECT 1 FROM redis.outbox o WHERE o.mapping_id = m.id)",
                            None,
                            &[],
                        )
                        .unwrap_or_report()
                        .filter_map(|r| r.get::<i64>(1).ok().flatten())
                        .collect()
                    });
                    (!ids.is_empty()).then(|| (ids, current_lsn("pg_current_wal_insert_lsn()").unwrap_or(u64::MAX)))
                })
                .flatten();
            }
        }
    }

    /// The extension is gone: so goes its slot, which would otherwise hold WAL for good.
    pub(super) fn drop_slot(&mut self) {
        let name = mode::slot_name(self.dboid);
        if slot_exists(&name) {
            in_transaction("dropping the replication slot", || drop_slot_named(&name));
            log!("pg_redis: replication slot {name} dropped with the extension");
        }
        self.slot = None;
    }
}

/// Whether the replication slot `name` exists (in a transaction of its own).
fn slot_exists(name: &str) -> bool {
    in_transaction("looking for the replication slot", || slot_is_there(name)).unwrap_or(false)
}

/// Whether the replication slot `name` exists (inside a transaction).
fn slot_is_there(name: &str) -> bool {
    read::one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)", &[name.into()])
        .unwrap_or_report()
        .unwrap_or(false)
}

/// The slot's confirmed position and whether PostgreSQL invalidated it: Some(None) when there
/// is no such slot, None when the extension itself is gone (its worker must stop).
fn health(name: &str) -> Option<Option<Health>> {
    let installed = read::one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_redis')", &[])
        .unwrap_or_report()
        .unwrap_or(false);
    if !installed {
        return None;
    }
    // wal_status 'lost' on every version; PostgreSQL 17 and later also name the reason.
    let (lsn, invalidated) = read::two::<String, String>(
        "SELECT coalesce(confirmed_flush_lsn, '0/0')::text, CASE WHEN wal_status = 'lost' THEN 'WAL removed' END \
           FROM pg_replication_slots WHERE slot_name = $1",
        &[name.into()],
    )
    .unwrap_or_report();
    Some(lsn.map(|lsn| Health { confirmed: parse_lsn(&lsn).unwrap_or(0), invalidated }))
}

/// The slot's next changes, at least `$2` unless the WAL ends first (whole transactions), read
/// through a cursor: decoding spills what it holds past `work_mem` to disk, and the worker
/// holds one batch at a time.
const PEEK_SQL: &str = "SELECT lsn::text, data FROM pg_logical_slot_peek_changes($1, NULL, $2::int4)";

/// The cursor's next rows: at most `limit`, and about `max_bytes` of text (at least one row).
fn fetch(cursor: &mut spi::SpiCursor<'_>, limit: i64, max_bytes: usize) -> Vec<(u64, String)> {
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut step = 16i64;
    while (rows.len() as i64) < limit && bytes < max_bytes {
        let table = cursor.fetch(step.min(limit - rows.len() as i64)).unwrap_or_report();
        if table.is_empty() {
            break;
        }
        for r in table {
            let lsn = r.get::<String>(1).ok().flatten().and_then(|l| parse_lsn(&l));
            let text = r.get::<String>(2).ok().flatten();
            if let (Some(lsn), Some(text)) = (lsn, text) {
                bytes += text.len();
                rows.push((lsn, text));
            }
        }
        let average = bytes / rows.len().max(1);
        step = (max_bytes.saturating_sub(bytes) / average.max(1)).clamp(1, 256) as i64;
    }
    rows
}

/// Decoding logs a line each time it starts: every round would. (LOG ranks above ERROR in the
/// server log, so only `fatal` silences it.)
const QUIET: [(&std::ffi::CStr, &std::ffi::CStr); 1] = [(c"log_min_messages", c"fatal")];

/// Moves the slot (read-only SPI: a transaction id would be a commit to decode, every round).
fn advance(name: &str, lsn: u64) {
    guc::with_superuser_settings(QUIET, || {
        read::one::<String>(
            "SELECT (pg_replication_slot_advance($1, $2::pg_lsn)).end_lsn::text",
            &[name.into(), lsn_text(lsn).into()],
        )
        .unwrap_or_report()
    });
}

/// Drops the slot `name` if it exists and no process holds it.
fn drop_slot_named(name: &str) {
    read::one::<i64>(
        "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
        &[name.into()],
    )
    .unwrap_or_report();
}

/// A position function's value (`pg_current_wal_flush_lsn()`, …).
fn current_lsn(function: &str) -> Option<u64> {
    read::one::<String>(&format!("SELECT {function}::text"), &[]).ok().flatten().and_then(|l| parse_lsn(&l))
}

pub(crate) fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub(crate) fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Which of the outbox rows `ids` are still there (on the latest snapshot: a worker's round
/// may have deleted one just before).
fn outbox_rows_present(ids: &[i64]) -> HashSet<i64> {
    if ids.is_empty() {
        return HashSet::new();
    }
    on_latest_snapshot(|| {
        Spi::connect(|c| {
            c.select("SELECT id FROM redis.outbox WHERE id = ANY($1)", None, &[ids.to_vec().into()])
                .unwrap_or_report()
                .filter_map(|r| r.get::<i64>(1).ok().flatten())
                .collect()
        })
    })
}

fn queued_event(q: QueuedRow) -> Event {
    let kind = match OutboxOp::from_code(q.op) {
        Some(OutboxOp::Row(op)) => Kind::Row(op),
        Some(OutboxOp::Sweep) => Kind::Sweep,
        Some(OutboxOp::Command) => Kind::Command,
        None => Kind::Unknown(q.op),
    };
    Event {
        id: q.id,
        ctid: String::new(),
        mapping_id: q.mapping_id,
        kind,
        tx_id: q.tx_id,
        captured_ms: q.captured_ms,
        old_row: q.old_row,
        new_row: q.new_row,
        command: q.command,
    }
}

/// A decoded change; its id is its WAL position (the change streams' `source.sequence`).
fn decoded_event(lsn: u64, mapping_id: i64, op: OutboxOp, before: Option<String>, after: Option<String>) -> Event {
    let kind = match op {
        OutboxOp::Row(op) => Kind::Row(op),
        OutboxOp::Sweep => Kind::Sweep,
        OutboxOp::Command => Kind::Command,
    };
    Event {
        id: lsn.min(i64::MAX as u64) as i64,
        ctid: String::new(),
        mapping_id: Some(mapping_id),
        kind,
        tx_id: 0,
        captured_ms: 0,
        old_row: before,
        new_row: after,
        command: None,
    }
}

/// The key column values of a row (as the key template renders them).
fn key_values(m: &TableMapping, row: &str) -> Option<Vec<String>> {
    let parsed = pg_redis_shared::encoding::parse_row(row).ok()?;
    let key = m.key.render_row(&parsed).ok()?;
    m.key.parse_key(&key).ok()
}

/// The row of `values` as it is now, read as the table's owner under the canonical settings.
fn row_now(m: &TableMapping, table: pg_sys::Oid, values: &[String]) -> Result<Option<String>, String> {
    let sql = pg_redis_shared::sql::row_by_key(m);
    let owner = on_latest_snapshot(|| {
        read::one::<pg_sys::Oid>("SELECT relowner FROM pg_class WHERE oid = $1", &[table.into()])
    })
    .ok()
    .flatten()
    .ok_or_else(|| format!("table {} no longer exists", m.display_name()))?;
    let args: Vec<String> = values.to_vec();
    crate::pg::xact::in_subtransaction(AssertUnwindSafe(|| {
        on_latest_snapshot(|| {
            crate::pg::role::as_role(owner, || {
                crate::capture::canonical::with_canonical_settings(|| {
                    let args: Vec<pgrx::datum::DatumWithOid> = args.iter().cloned().map(Into::into).collect();
                    read::one::<String>(&sql, &args).unwrap_or_report()
                })
            })
        })
    }))
    .map_err(|e| format!("cannot read the row of {} again: {e}", m.display_name()))
}

/// Decoded changes that can never apply, moved to `redis.dead_letter` with the reason (they
/// have no outbox row: each takes a new id from the outbox's sequence).
fn park_decoded(failed: &[(&Event, String)]) {
    for (e, why) in failed {
        let why = match (&e.kind, &e.command) {
            (Kind::Unknown(_), Some(reason)) => reason.join(" "),
            _ => why.clone(),
        };
        let op = match e.kind {
            Kind::Row(op) => op.code(),
            Kind::Sweep => 'S',
            Kind::Command => 'x',
            Kind::Unknown(_) => 'u',
        };
        Spi::run_with_args(
            "INSERT INTO redis.dead_letter (id, mapping_id, op, tx_id, captured_at, old_row, new_row, error) \
             VALUES (nextval(pg_get_serial_sequence('redis.outbox', 'id')), $1, $2::text::\"char\", $3, to_timestamp($4 / 1000.0), $5::jsonb, $6::jsonb, $7)",
            &[
                e.mapping_id.into(),
                op.to_string().into(),
                e.tx_id.into(),
                (e.captured_ms as f64).into(),
                e.old_row.clone().into(),
                e.new_row.clone().into(),
                why.into(),
            ],
        )
        .unwrap_or_report();
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::{lsn_text, parse_lsn};
    use pgrx::prelude::*;

    #[pg_test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(lsn_text(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
    }
}

//! Delivery: a launcher (`launcher`) starts one worker per database where the extension is
//! installed; each worker drains its database's outbox into Redis.
//!
//! A worker reads the oldest events (`FOR UPDATE SKIP LOCKED`, in id order), pipelines their
//! Redis commands, and deletes them in the same transaction only once Redis acknowledged them.
//! Redis unreachable: nothing is deleted, the worker backs off exponentially and retries.
//! Redis refusing a table's commands (wrong type at a key, out of memory): that table's events
//! from the first refused one on stay queued and are retried with backoff while other tables
//! keep flowing. Events that can never apply (a key column is NULL, Redis rejects a queued
//! command for good) move to `redis.dead_letter` with the reason.

mod backfill;
mod launcher;
mod settle;
pub use launcher::register_launcher;
pub mod outbox;
pub mod redis_sink;
pub mod registry;
mod wal;
pub(crate) use wal::parse_lsn;

use crate::gucs;
use crate::pg::guc;
use crate::redis_client;
use outbox::{Event, Kind, Scope};
use pg_redis_shared::apply::{self, ApplyContext, CapturedChange, Step};
use pg_redis_shared::backoff::Backoff;
use pg_redis_shared::TableMapping;
use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
use pgrx::prelude::*;
use redis_sink::{DeliveryConnection, Planned};
use registry::WorkerState;
use settle::{end_of_first_command_run, split, Flight};
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle worker sleeps when no commit wakes it (a safety net, not the mechanism).
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often unused mapping versions are forgotten.
const GC_EVERY: Duration = Duration::from_secs(60);
/// How long one delivery transaction keeps taking batches (short, so that vacuum can clean
/// the outbox behind it).
const TRANSACTION_TIME: Duration = Duration::from_millis(500);

pub(super) use crate::pg::xact::in_transaction;
use crate::pg::xact::try_in_transaction;

/// Settings the workers need whatever a database or role setting says. They run as the
/// bootstrap superuser: every unqualified name resolves in pg_catalog only. Key text is read
/// under the settings it was written with. Transactions are READ COMMITTED and writable: each
/// batch, and each sweep's check of which rows exist, must see what is committed when it runs
/// (`pg::xact::on_latest_snapshot`), and the worker deletes what it delivered. No timeout cuts
/// a delivery transaction short: it would be sent again and again, and a sweep waiting behind
/// a lock would keep every key it could not check.
pub(super) fn pin_settings() {
    crate::capture::canonical::pin_canonical_settings();
    guc::pin(c"search_path", c"pg_catalog, pg_temp");
    guc::pin(c"default_transaction_isolation", c"read committed");
    guc::pin(c"default_transaction_read_only", c"off");
    guc::pin(c"statement_timeout", c"0");
    guc::pin(c"lock_timeout", c"0");
    // PostgreSQL 15.19, 18.6 and later: the output plugins decoding may load.
    guc::pin_if_known(c"output_plugin_libraries", c"pg_redis");
    // PostgreSQL 17 and later.
    guc::pin_if_known(c"transaction_timeout", c"0");
}

/// Rereads the configuration file when asked; says whether it did.
pub(super) fn reload_config_if_asked() -> bool {
    let asked = BackgroundWorker::sighup_received();
    if asked {
        guc::reload_config_file();
    }
    asked
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_redis_worker_main(arg: pg_sys::Datum) {
    // SAFETY: the launcher or CREATE EXTENSION passed the database oid by value.
    let Some(dboid) = (unsafe { pg_sys::Oid::from_datum(arg, false) }) else { return };
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(dboid), None);
    pin_settings();
    let database = in_transaction("checking for the extension", || {
        let installed = Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_redis')")
            .ok()
            .flatten()
            .unwrap_or(false);
        installed.then(|| Spi::get_one::<String>("SELECT current_database()::text").ok().flatten().unwrap_or_default())
    })
    .flatten();
    let Some(database) = database else { return };
    if !registry::claim(dboid) {
        return;
    }
    match crate::copies::hold_while_copied(dboid) {
        crate::copies::Hold::Deliver => {}
        hold => {
            registry::release(dboid);
            // SAFETY: leaving the process the documented way (1: started again).
            unsafe { pg_sys::proc_exit((hold == crate::copies::Hold::Restart) as i32) };
        }
    }
    log!(
        "pg_redis: delivering changes of database {database} to {}",
        pg_redis_shared::redact::redact_url(&gucs::redis_url())
    );
    let mut w = Worker::new(dboid, database);
    let exit = w.run();
    registry::release(dboid);
    if exit == Exit::Restart {
        // A non-zero exit makes the postmaster start the worker again (pg_terminate_backend
        // must not stop delivery for good); during shutdown it does not matter.
        // SAFETY: leaving the process the documented way.
        unsafe { pg_sys::proc_exit(1) };
    }
}

#[derive(PartialEq, Eq)]
enum Exit {
    /// The extension was dropped: stay stopped.
    Done,
    /// Asked to stop (SIGTERM): come back unless the server shuts down.
    Restart,
}

enum Drained {
    /// Delivered (or parked) this many; `full` when the batch was full (more may be waiting).
    Some {
        full: bool,
    },
    Empty,
    /// Redis failed; retry after this long.
    Failed(Duration),
}

struct Worker {
    dboid: pg_sys::Oid,
    database: String,
    redis: Option<DeliveryConnection>,
    mappings: HashMap<i64, (Arc<TableMapping>, pg_sys::Oid)>,
    backoff: Backoff,
    stuck: HashMap<Scope, Backoff>,
    pipeline: Option<redis_sink::PipelineThread>,
    /// The replication slot, when delivering from the WAL.
    slot: Option<wal::Slot>,
    /// Retries of a change Redis refused, under WAL capture (all later ones wait for it).
    slot_refused: Backoff,
    /// When the worker last failed to make its slot (it tries again after a while).
    slot_attempt: Option<Instant>,
    /// When the worker last looked for a slot while capturing by trigger.
    slot_looked: Option<Instant>,
    /// The highest outbox id read (all, unless rows queued before the slot are drained).
    outbox_upto: i64,
    /// Tables may be captured otherwise than the setting picks (at start, after a reload).
    recapture_due: bool,
    /// What the registry says of this worker's decoding.
    announced_decoding: bool,
    /// The backfill chunk read between its watermarks, under WAL capture.
    chunk: Option<backfill::Chunk>,
    /// Chunks read by this process (numbers them).
    chunks_made: i64,
    /// Blocks the next chunk covers (sized to the rows the last one found).
    chunk_blocks: i64,
    /// When a chunk last could not be read.
    chunk_failed_at: Option<Instant>,
    /// The last round left records in the slot (a backlog).
    slot_behind: bool,
    /// When the last chunk was read.
    chunk_read_at: Option<Instant>,
}

impl Worker {
    fn new(dboid: pg_sys::Oid, database: String) -> Self {
        Worker {
            dboid,
            database,
            redis: None,
            mappings: HashMap::new(),
            backoff: Backoff::default(),
            stuck: HashMap::new(),
            pipeline: redis_sink::PipelineThread::start(),
            slot: None,
            slot_refused: Backoff::default(),
            slot_attempt: None,
            slot_looked: None,
            outbox_upto: i64::MAX,
            recapture_due: true,
            announced_decoding: false,
            chunk: None,
            chunks_made: 0,
            chunk_blocks: backfill::FIRST_BLOCKS,
            chunk_failed_at: None,
            slot_behind: false,
            chunk_read_at: None,
        }
    }

    fn run(&mut self) -> Exit {
        let mut last_gc = Instant::now();
        loop {
            if reload_config_if_asked() {
                self.recapture_due = true;
            }
            if registry::stop_requested(self.dboid) {
                log!("pg_redis: worker of database {} stops (the database is being dropped or copied)", self.database);
                return Exit::Done;
            }
            let wait = match self.drain_once() {
                Some(Drained::Some { full: true }) => Duration::ZERO,
                Some(Drained::Some { full: false }) | Some(Drained::Empty) => {
                    registry::set_state(self.dboid, WorkerState::Idle, None);
                    self.next_stuck_retry().unwrap_or(IDLE_POLL).min(IDLE_POLL)
                }
                Some(Drained::Failed(wait)) => wait,
                None => {
                    if !self.extension_installed() {
                        log!("pg_redis: extension dropped in database {}; worker stops", self.database);
                        self.drop_slot();
                        return Exit::Done;
                    }
                    // An ERROR in the delivery transaction (logged, and shown as the worker's last
                    // error): back off as for Redis.
                    self.backoff.fail(Instant::now(), ms(gucs::RETRY_MIN_MS.get()), ms(gucs::RETRY_MAX_MS.get()))
                }
            };
            if last_gc.elapsed() > GC_EVERY && self.slot.is_none() {
                // Under WAL capture the slot's rounds do it, once no record can name them.
                in_transaction("forgetting unused mappings", outbox::forget_unused_mappings);
                self.mappings.clear();
                last_gc = Instant::now();
            }
            if wait.is_zero() {
                check_for_interrupts!();
                if BackgroundWorker::sigterm_received() {
                    return Exit::Restart;
                }
            } else if !BackgroundWorker::wait_latch(Some(wait)) {
                return Exit::Restart;
            }
        }
    }

    fn extension_installed(&self) -> bool {
        in_transaction("checking for the extension", || {
            Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_redis')")
                .ok()
                .flatten()
                .unwrap_or(false)
        })
        .unwrap_or(true)
    }

    fn next_stuck_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.stuck.values().map(|b| b.remaining(now)).filter(|d| !d.is_zero()).min()
    }

    /// Mapping ids whose table is waiting to retry (0 stands for queued commands).
    fn excluded(&self) -> Vec<i64> {
        let now = Instant::now();
        let waiting: HashSet<Scope> = self.stuck.iter().filter(|(_, b)| b.waiting(now)).map(|(s, _)| *s).collect();
        let mut ids: Vec<i64> = self
            .mappings
            .iter()
            .filter(|(_, (_, oid))| waiting.contains(&Scope::Table(*oid)))
            .map(|(id, _)| *id)
            .collect();
        if waiting.contains(&Scope::Commands) {
            ids.push(0);
        }
        ids
    }

    fn scope_of(&self, e: &Event) -> Scope {
        match e.mapping_id.and_then(|id| self.mappings.get(&id)) {
            Some((_, oid)) => Scope::Table(*oid),
            None if e.kind == Kind::Command => Scope::Commands,
            None => Scope::Table(pg_sys::InvalidOid),
        }
    }

    fn connection(&mut self) -> Result<&mut redis::Connection, pg_redis_shared::Error> {
        let target = redis_client::Target::from_settings();
        if self.redis.as_ref().is_some_and(|c| c.target != target) {
            self.redis = None;
        }
        if self.redis.is_none() {
            self.redis = Some(DeliveryConnection::open(&target)?);
        }
        match self.redis.as_mut() {
            Some(c) => {
                c.fence()?;
                Ok(&mut c.conn)
            }
            None => Err(pg_redis_shared::Error::not_connected("Redis")),
        }
    }

    fn drain_once(&mut self) -> Option<Drained> {
        if self.uses_slot() || crate::capture::mode::server_decodes_wal() {
            return self.drain_slot_once();
        }
        if self.recapture_due {
            // A table synced for WAL capture whose slot never came (the setting changed first).
            self.recapture_due = false;
            self.recapture_tables();
        }
        self.drain_outbox_once()
    }

    fn drain_outbox_once(&mut self) -> Option<Drained> {
        let left = self.backoff.remaining(Instant::now());
        if !left.is_zero() {
            return Some(Drained::Failed(left));
        }
        let limit = gucs::BATCH_SIZE.get() as i64;
        let this = AssertUnwindSafe(&mut *self);
        let delivered = try_in_transaction(move || {
            let this = this;
            this.0.deliver(limit)
        });
        delivered
            .map_err(|msg| {
                let msg = format!("delivering changes failed: {msg}");
                log!("pg_redis: {msg}");
                registry::set_state(self.dboid, WorkerState::Backoff, Some(&msg));
            })
            .ok()
    }

    /// Delivers batches in one transaction for up to TRANSACTION_TIME: while Redis executes
    /// one batch (on the pipeline thread), the next is read and planned. A batch is sent only
    /// after the previous one was settled, so Redis applies them in order.
    fn deliver(&mut self, limit: i64) -> Drained {
        let started = Instant::now();
        let mut in_flight: Option<Flight> = None;
        let mut outcome = Drained::Empty;
        // A batch of a transaction that failed while it was in flight must be out of the way
        // before anything else is sent, on either connection.
        if self.pipeline.as_ref().is_some_and(|p| !p.settle_abandoned()) {
            self.pipeline = None;
        }
        loop {
            let taken: Vec<i64> =
                in_flight.as_ref().map(|f| f.events.iter().map(|e| e.id).collect()).unwrap_or_default();
            let (mut events, bytes_full) = if started.elapsed() < TRANSACTION_TIME {
                outbox::read_batch(limit, gucs::batch_max_bytes(), &self.excluded(), &taken, self.outbox_upto)
            } else {
                (Vec::new(), false)
            };
            let mut full = bytes_full
                || events.len() as i64 >= limit
                || (started.elapsed() >= TRANSACTION_TIME && in_flight.is_some());
            // A batch ends with its first run of queued commands: should Redis refuse one of
            // them for a while, none queued after it may run first (the rest stays locked by
            // this transaction and is read again).
            if let Some(end) = end_of_first_command_run(&events) {
                if end < events.len() {
                    events.truncate(end);
                    full = true;
                }
            }
            let planned = self.plan_all(&events);
            if let Some(f) = in_flight.take() {
                match f.wait(self) {
                    Ok(()) => outcome = Drained::Some { full },
                    Err(e) => return self.failed(&f.events, e),
                }
            }
            if events.is_empty() {
                return outcome;
            }
            registry::set_state(self.dboid, WorkerState::Delivering, None);
            // Events of a table Redis just refused stay queued (their order must hold).
            let (events, planned): (Vec<Event>, Vec<Result<Planned, String>>) =
                events.into_iter().zip(planned).filter(|(e, _)| !self.waiting(self.scope_of(e))).unzip();
            let scans = planned.iter().any(|p| p.as_ref().is_ok_and(Planned::scans));
            let target = redis_client::Target::from_settings();
            let (runnable, status) = split(planned);
            if scans || self.pipeline.is_none() {
                match self.send_now(&runnable) {
                    Ok(outcomes) => {
                        self.backoff.succeed();
                        self.settle(&events, status, outcomes);
                        outcome = Drained::Some { full };
                    }
                    Err(e) => {
                        if let Some(c) = self.redis.take() {
                            c.abandon();
                        }
                        return self.failed(&events, e);
                    }
                }
            } else if let Some(p) = &self.pipeline {
                if !p.send(target, runnable) {
                    self.pipeline = None;
                    return self.failed(
                        &events,
                        pg_redis_shared::Error::Unavailable {
                            server: "Redis",
                            reason: "the pipeline thread stopped".into(),
                        },
                    );
                }
                in_flight = Some(Flight { events, status });
            }
        }
    }

    /// Applies planned events on this thread's connection (the sweeps' existence checks need
    /// SPI, which only this thread may use).
    fn send_now(&mut self, runnable: &[Planned]) -> Result<Vec<redis_sink::Outcome>, pg_redis_shared::Error> {
        let target = redis_client::Target::from_settings();
        let refs: Vec<&Planned> = runnable.iter().collect();
        let tables: HashMap<i64, pg_sys::Oid> = self.mappings.iter().map(|(id, (_, oid))| (*id, *oid)).collect();
        let conn = self.connection()?;
        redis_sink::apply(conn, &refs, &mut |m, keys| {
            outbox::existing_keys(m, tables.get(&m.id).copied().unwrap_or(pg_sys::InvalidOid), keys)
        })
        .map_err(|e| redis_client::from_redis(&target, e))
    }

    fn plan_all(&mut self, events: &[Event]) -> Vec<Result<Planned, String>> {
        let missing: Vec<i64> = events
            .iter()
            .filter_map(|e| e.mapping_id)
            .filter(|id| !self.mappings.contains_key(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            for (m, oid) in outbox::load_mappings(&missing) {
                self.mappings.insert(m.id, (Arc::new(m), oid));
            }
        }
        let ctx = ApplyContext {
            database: &self.database,
            stream_maxlen: gucs::STREAM_MAXLEN.get().max(0) as u64,
            now_ms: now_ms(),
        };
        events.iter().map(|e| self.plan(e, &ctx)).collect()
    }

    fn waiting(&self, scope: Scope) -> bool {
        self.stuck.get(&scope).is_some_and(|b| b.waiting(Instant::now()))
    }

    /// Redis failed as a whole (connection, timeout): nothing of `events` was acknowledged.
    fn failed(&mut self, events: &[Event], e: pg_redis_shared::Error) -> Drained {
        let wait = self.backoff.fail(Instant::now(), ms(gucs::RETRY_MIN_MS.get()), ms(gucs::RETRY_MAX_MS.get()));
        let msg = e.to_string();
        let scopes: HashSet<Scope> = events.iter().map(|ev| self.scope_of(ev)).collect();
        for s in scopes {
            outbox::record_error(s, &msg);
        }
        registry::set_state(self.dboid, WorkerState::Backoff, Some(&msg));
        log!("pg_redis: delivery to Redis failed, retrying in {} ms: {msg}", wait.as_millis());
        Drained::Failed(wait)
    }

    fn plan(&self, e: &Event, ctx: &ApplyContext) -> Result<Planned, String> {
        let mapping = e.mapping_id.and_then(|id| self.mappings.get(&id)).map(|(m, _)| m.clone());
        let steps = match (e.kind, &mapping) {
            (Kind::Command, _) => match &e.command {
                Some(c) if !c.is_empty() => vec![Step::Commands(vec![c.clone()])],
                _ => return Err("queued command is empty".into()),
            },
            (Kind::Sweep, Some(m)) => vec![Step::SweepKeys { scan_pattern: m.key.scan_pattern() }],
            (Kind::Row(op), Some(m)) => {
                let change = CapturedChange {
                    id: e.id,
                    op,
                    tx_id: e.tx_id,
                    captured_ms: e.captured_ms,
                    before: e.old_row.clone(),
                    after: e.new_row.clone(),
                };
                apply::plan(m, &change, ctx)
                    .map_err(|err| format!("cannot apply change {} of {}: {err}", e.id, m.display_name()))?
            }
            (Kind::Unknown(c), _) => return Err(format!("unknown outbox op '{c}'")),
            (_, None) => {
                return Err(format!("mapping {} of this event no longer exists", e.mapping_id.unwrap_or_default()))
            }
        };
        Ok(Planned { steps, mapping, scope: self.scope_of(e) })
    }
}

fn ms(v: i32) -> Duration {
    Duration::from_millis(v.max(1) as u64)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

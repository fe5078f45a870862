//! A fixed pool of threads, each with its own PostgreSQL connection, fed by a bounded queue.
//! Redis's main thread only enqueues; it never waits for PostgreSQL. A full queue is refused at
//! once (`BUSY`), a job that waited past its deadline is answered without querying, and an
//! unreachable PostgreSQL is reported fast (`PGUNAVAILABLE`) while a shared backoff decides when
//! the next connection attempt may be made.

use crate::{config, guard};
use pg_redis_shared::redact::redact_url;
use pg_redis_shared::Error;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A unit of work. It gets the thread's session, or the reason it cannot run (deadline passed
/// while queued), and must answer its client either way.
pub type Work = Box<dyn FnOnce(Result<&mut Session, Error>) + Send>;

pub struct Job {
    pub deadline: Instant,
    pub work: Work,
}

struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
}

/// How long an idle thread keeps polling the queue after its last job.
const SPIN_AFTER_JOB: Duration = Duration::from_micros(300);

static QUEUE: Queue = Queue { jobs: Mutex::new(VecDeque::new()), ready: Condvar::new() };
static STOPPING: AtomicBool = AtomicBool::new(false);
static THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
/// Threads currently running a job (for INFO and for refusing an unload while busy).
pub static BUSY_THREADS: AtomicUsize = AtomicUsize::new(0);
/// Jobs in the queue (read without the lock by spinning threads).
static QUEUED: AtomicUsize = AtomicUsize::new(0);
/// Threads holding an open connection.
pub static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// Queues a job, or refuses it at once when the queue is full.
pub fn submit(job: Job) -> Result<(), (Error, Job)> {
    let mut jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
    if jobs.len() >= config::queue_max() {
        let e = Error::Busy { what: format!("{} requests already wait for PostgreSQL (redis_pg.queue_max); retry later", jobs.len()) };
        return Err((e, job));
    }
    jobs.push_back(job);
    QUEUED.fetch_add(1, Ordering::AcqRel);
    drop(jobs);
    QUEUE.ready.notify_one();
    Ok(())
}

pub fn queue_depth() -> usize {
    QUEUED.load(Ordering::Acquire)
}

/// Starts or stops threads until `pool_size` run.
pub fn resize() {
    let want = config::pool_size();
    let mut threads = THREADS.lock().unwrap_or_else(|e| e.into_inner());
    threads.retain(|t| !t.is_finished());
    STOPPING.store(false, Ordering::Release);
    while threads.len() < want {
        let index = threads.len();
        match std::thread::Builder::new().name(format!("redis_pg-pg{index}")).spawn(move || run_thread(index)) {
            Ok(t) => threads.push(t),
            Err(e) => {
                guard::log_warning(&format!("cannot start pool thread {index}: {e}"));
                break;
            }
        }
    }
    // Threads with an index >= pool_size notice and exit by themselves.
    QUEUE.ready.notify_all();
}

/// Stops every thread (module unload). Fails if a thread is still working on a request.
pub fn shutdown() -> Result<(), String> {
    // A thread that just answered may still be finishing up: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while (BUSY_THREADS.load(Ordering::Acquire) > 0 || queue_depth() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if BUSY_THREADS.load(Ordering::Acquire) > 0 || queue_depth() > 0 {
        return Err("PostgreSQL requests are still in flight".into());
    }
    {
        // Under the queue lock, so no thread can check the flag and then sleep through the notify.
        let _jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
        STOPPING.store(true, Ordering::Release);
        QUEUE.ready.notify_all();
    }
    let threads = std::mem::take(&mut *THREADS.lock().unwrap_or_else(|e| e.into_inner()));
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn run_thread(index: usize) {
    let mut session = Session::default();
    let mut last_job = Instant::now() - SPIN_AFTER_JOB;
    loop {
        let job = {
            let mut jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if STOPPING.load(Ordering::Acquire) || index >= config::pool_size() {
                    session.close();
                    return;
                }
                if let Some(job) = jobs.pop_front() {
                    // Counted busy before the lock goes, so shutdown never sees an idle pool
                    // while a job is out of the queue.
                    BUSY_THREADS.fetch_add(1, Ordering::AcqRel);
                    QUEUED.fetch_sub(1, Ordering::AcqRel);
                    break job;
                }
                // Right after a job, spin briefly (on an atomic, without the lock) before
                // sleeping: under load the next job usually comes within microseconds, and
                // waking a sleeping thread costs more.
                if last_job.elapsed() < SPIN_AFTER_JOB {
                    drop(jobs);
                    while QUEUED.load(Ordering::Acquire) == 0 && last_job.elapsed() < SPIN_AFTER_JOB {
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                    jobs = QUEUE.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    continue;
                }
                jobs = QUEUE.ready.wait_timeout(jobs, Duration::from_millis(500)).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
            }
        };
        let Job { deadline, work } = job;
        guard::callback("a PostgreSQL request", || {
            if Instant::now() >= deadline {
                work(Err(Error::Timeout { what: "the request waited too long for a free PostgreSQL connection".into(), ms: config::query_timeout().as_millis() as u64 }));
            } else {
                work(Ok(&mut session));
            }
        });
        BUSY_THREADS.fetch_sub(1, Ordering::AcqRel);
        last_job = Instant::now();
    }
}

/// Shared knowledge of whether PostgreSQL is reachable, so that all threads back off together.
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: String,
}

static HEALTH: Mutex<Health> = Mutex::new(Health { failures: 0, retry_at: None, last_error: String::new() });
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One thread's connection and its prepared statements.
#[derive(Default)]
pub struct Session {
    client: Option<postgres::Client>,
    generation: u64,
    statement_timeout_ms: u128,
    statements: HashMap<String, postgres::Statement>,
}

impl Session {
    /// The connection, opened (or reopened after a URL change) on demand.
    pub fn client(&mut self) -> Result<&mut postgres::Client, Error> {
        let generation = config::PG_URL.generation();
        if self.client.is_some() && (self.generation != generation || self.client.as_ref().is_some_and(|c| c.is_closed())) {
            self.close();
        }
        if self.client.is_none() {
            self.client = Some(connect_with_backoff()?);
            CONNECTIONS.fetch_add(1, Ordering::AcqRel);
            self.generation = generation;
            self.statement_timeout_ms = 0;
        }
        let timeout = config::query_timeout().as_millis();
        if self.statement_timeout_ms != timeout {
            let sql = format!("SET statement_timeout = {timeout}");
            let result = self.client.as_mut().map(|c| c.batch_execute(&sql));
            if let Some(Err(e)) = result {
                return Err(self.fail(e));
            }
            self.statement_timeout_ms = timeout;
        }
        self.client.as_mut().ok_or_else(|| Error::Unavailable { server: "PostgreSQL", reason: "no connection".into() })
    }

    /// A prepared statement, prepared once per connection.
    pub fn prepare(&mut self, sql: &str) -> Result<postgres::Statement, Error> {
        // (Re)connect first: statements prepared on a closed connection are forgotten there.
        self.client()?;
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client()?.prepare(sql);
        match prepared {
            Ok(s) => {
                self.statements.insert(sql.to_owned(), s.clone());
                Ok(s)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Runs a prepared (and cached) statement.
    pub fn query(&mut self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> Result<Vec<postgres::Row>, Error> {
        let stmt = self.prepare(sql)?;
        let started = Instant::now();
        let result = self.client()?.query(&stmt, params);
        crate::stats::STATS.query_latency.record(started.elapsed());
        result.map_err(|e| self.fail(e))
    }

    /// Maps a query error; a broken connection is dropped so the next job reconnects.
    pub fn fail(&mut self, e: postgres::Error) -> Error {
        let mapped = map_pg_error(&e);
        if e.is_closed() || e.as_db_error().is_none() {
            self.close();
            if matches!(mapped, Error::Unavailable { .. }) {
                note_failure(&mapped.to_string());
            }
        }
        mapped
    }

    fn close(&mut self) {
        if self.client.take().is_some() {
            CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
        }
        self.statements.clear();
    }
}

fn where_pg() -> String {
    let url = config::PG_URL.get();
    match url.parse::<postgres::Config>() {
        Ok(c) => {
            let host = c.get_hosts().first().map(|h| match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                postgres::config::Host::Unix(p) => p.display().to_string(),
            });
            format!("{}:{}", host.unwrap_or_else(|| "localhost".into()), c.get_ports().first().copied().unwrap_or(5432))
        }
        Err(_) => redact_url(&url),
    }
}

fn connect_with_backoff() -> Result<postgres::Client, Error> {
    {
        let h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = h.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(Error::Unavailable {
                    server: "PostgreSQL",
                    reason: format!("{} (next connection attempt in {} ms)", h.last_error, (at - now).as_millis()),
                });
            }
        }
    }
    match connect() {
        Ok(c) => {
            let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
            h.failures = 0;
            h.retry_at = None;
            Ok(c)
        }
        Err(e) => {
            note_failure(&e.to_string());
            Err(e)
        }
    }
}

/// Forgets the shared backoff (module unload).
pub fn reset_health() {
    let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    h.failures = 0;
    h.retry_at = None;
    h.last_error.clear();
}

fn note_failure(message: &str) {
    let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    h.failures = h.failures.saturating_add(1);
    let backoff = BACKOFF_MIN.saturating_mul(1 << h.failures.min(10)).min(BACKOFF_MAX);
    h.retry_at = Some(Instant::now() + backoff);
    h.last_error = message.strip_prefix("PostgreSQL is unavailable: ").unwrap_or(message).to_owned();
}

fn connect() -> Result<postgres::Client, Error> {
    let unavailable = |reason: String| Error::Unavailable { server: "PostgreSQL", reason };
    let url = config::PG_URL.get();
    if url.is_empty() {
        return Err(unavailable("redis_pg.pg_url is not set (CONFIG SET redis_pg.pg_url postgresql://user@host:port/db)".into()));
    }
    let mut cfg: postgres::Config = url.parse().map_err(|e| unavailable(format!("pg_url \"{}\" is invalid: {e}", redact_url(&url))))?;
    if cfg.get_password().is_none() {
        if let Some(pw) = config::external_password().map_err(unavailable)? {
            cfg.password(pw);
        }
    }
    cfg.application_name("redis_pg");
    cfg.connect_timeout(config::query_timeout().min(Duration::from_secs(2)));
    cfg.keepalives(true).keepalives_idle(Duration::from_secs(30));
    let mut client = cfg.connect(postgres::NoTls).map_err(|e| unavailable(format!("{}: {}", where_pg(), describe(&e))))?;
    // Our statements name tables and types fully; operators and functions come from pg_catalog
    // whatever search_path the role has.
    client.batch_execute("SET search_path = pg_catalog, pg_temp").map_err(|e| unavailable(format!("{}: {}", where_pg(), describe(&e))))?;
    Ok(client)
}

/// A postgres error as one line, without any connection secret (the driver never includes
/// the password; the URL is not part of its messages).
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

pub fn map_pg_error(e: &postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            "57014" => Error::Timeout { what: format!("PostgreSQL cancelled the query: {}", db.message()), ms: config::query_timeout().as_millis() as u64 },
            // A data exception: a key value PostgreSQL cannot read as the column's type.
            code if code.starts_with("22") => Error::InvalidValue { what: "key value", value: String::new(), reason: format!("{} ({code})", db.message()) },
            code if code.starts_with("08") || code.starts_with("57P") || code == "53300" => Error::Unavailable { server: "PostgreSQL", reason: format!("{}: {} ({code})", where_pg(), db.message()) },
            code => Error::Remote { server: "PostgreSQL", message: format!("{} ({code})", db.message()) },
        };
    }
    Error::Unavailable { server: "PostgreSQL", reason: format!("{}: {}", where_pg(), describe(e)) }
}

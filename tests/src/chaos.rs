//! The chaos run: writers, readers and faults at once, then proof that nothing was lost and
//! nothing diverged. `make chaos` runs it for ten minutes; `make test` for one.
//!
//! Writers stamp every change with a number from one sequence, so a later change of a row always
//! carries a higher number; readers hammer the cache; a fault thread kills and pauses the
//! servers and the worker. At the end every key must equal its row byte for byte, and the change
//! stream must hold every committed change at least once, in per-key order.

use crate::harness::Options;
use crate::{check, Env};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A committed change, as its writer saw it commit.
#[derive(Clone, Debug)]
enum Change {
    /// The row at `key` now carries version `v`.
    Write { key: i32, v: i64 },
    /// The row at `key` with version `v` was deleted.
    Delete { key: i32, v: i64 },
}

#[derive(Debug, Default)]
pub struct Report {
    pub seconds: u64,
    pub operations: u64,
    pub failed_operations: u64,
    pub reads: u64,
    pub faults: HashMap<&'static str, u64>,
    pub committed_changes: usize,
    pub events_delivered: usize,
    pub duplicates: usize,
    pub divergent_keys: Vec<String>,
    pub lost_changes: Vec<String>,
    pub order_violations: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.divergent_keys.is_empty() && self.lost_changes.is_empty() && self.order_violations.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut faults: Vec<String> = self.faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
        faults.sort();
        let mut s = format!(
            "chaos for {} s: {} write operations ({} failed while servers were down), {} cache reads; faults injected: {} ({}); \
             committed changes {}, events delivered {}, duplicates {}, divergent keys {}, lost changes {}, order violations {}",
            self.seconds,
            self.operations,
            self.failed_operations,
            self.reads,
            self.faults.values().sum::<u64>(),
            faults.join(", "),
            self.committed_changes,
            self.events_delivered,
            self.duplicates,
            self.divergent_keys.len(),
            self.lost_changes.len(),
            self.order_violations.len()
        );
        for line in self.divergent_keys.iter().chain(&self.lost_changes).chain(&self.order_violations).take(20) {
            s.push_str("\n  ");
            s.push_str(line);
        }
        s
    }
}

const KEYS: i32 = 300;

/// Tiny xorshift: chaos need not be cryptographic, only varied and reproducible by seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn run(duration: Duration, seed: u64) -> Report {
    let mut opts = Options::named("chaos");
    opts.pg_settings = vec![
        ("pg_redis.retry_max_ms".into(), "500".into()),
        ("pg_redis.command_timeout_ms".into(), "1000".into()),
        ("pg_redis.connect_timeout_ms".into(), "500".into()),
        ("pg_redis.stream_maxlen".into(), "0".into()),
        ("pg_redis.batch_size".into(), "500".into()),
    ];
    opts.module_args = vec!["query_timeout_ms".into(), "1000".into()];
    let mut env = Env::with(opts);
    env.sql(
        "CREATE SEQUENCE chaos_v;
         CREATE TABLE chaos (id int PRIMARY KEY, v bigint NOT NULL, note text);
         CREATE TABLE chaos_t (id int PRIMARY KEY, v bigint NOT NULL);
         SELECT redis.sync_table('chaos'); SELECT redis.sync_table('chaos_t', stream => false);",
    );
    env.wait_synced();
    let stop = Arc::new(AtomicBool::new(false));
    let changes: Arc<Mutex<Vec<Change>>> = Arc::new(Mutex::new(Vec::new()));
    let (ops, failed, reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut threads = Vec::new();
    for w in 0..3u64 {
        let (url, stop, changes, ops, failed) =
            (env.servers.pg.url("postgres"), stop.clone(), changes.clone(), ops.clone(), failed.clone());
        threads.push(std::thread::spawn(move || writer(&url, seed + w, &stop, &changes, &ops, &failed)));
    }
    for r in 0..2u64 {
        let (url, stop, reads) = (env.servers.redis.url(), stop.clone(), reads.clone());
        threads.push(std::thread::spawn(move || reader(&url, seed + 100 + r, &stop, &reads)));
    }
    let mut report = Report { seconds: duration.as_secs(), ..Report::default() };
    let mut rng = Rng(seed ^ 0x9e3779b97f4a7c15);
    let started = Instant::now();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(2000 + rng.below(3000)));
        if started.elapsed() >= duration {
            break;
        }
        let fault = inject(&mut env, &mut rng);
        *report.faults.entry(fault).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Quiesce: every server up, every committed change delivered.
    let _ = env.servers.redis.start_again();
    env.redis = env.redis_client();
    env.pg = reconnect(&env.servers.pg.url("postgres"));
    check::wait_synced(&mut env.pg, 180_000);
    report.operations = ops.load(Ordering::Relaxed);
    report.failed_operations = failed.load(Ordering::Relaxed);
    report.reads = reads.load(Ordering::Relaxed);
    // chaos is also read through and deleted from by clients (misses allowed, each read
    // through must be exact); chaos_t is only pushed to.
    report.divergent_keys.extend(check::divergence_as_cache(&mut env.pg, &mut env.redis, "chaos"));
    report.divergent_keys.extend(check::divergence(&mut env.pg, &mut env.redis, "chaos_t"));
    let changes = changes.lock().map(|c| c.clone()).unwrap_or_default();
    report.committed_changes = changes.len();
    verify_stream(&mut env.redis, &changes, &mut report);
    report
}

fn reconnect(url: &str) -> postgres::Client {
    let t0 = Instant::now();
    loop {
        if let Ok(c) = postgres::Client::connect(url, postgres::NoTls) {
            return c;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            panic!("PostgreSQL did not come back");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn writer(url: &str, seed: u64, stop: &AtomicBool, changes: &Mutex<Vec<Change>>, ops: &AtomicU64, failed: &AtomicU64) {
    let mut rng = Rng(seed.wrapping_mul(6364136223846793005) | 1);
    let mut pg: Option<postgres::Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = pg.as_mut() else {
            pg = postgres::Client::connect(url, postgres::NoTls).ok();
            if pg.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        };
        let id = rng.below(KEYS as u64) as i32 + 1;
        let roll = rng.below(100);
        let result: Result<Vec<Change>, postgres::Error> = match roll {
            0..=39 => c
                .query_opt("INSERT INTO chaos VALUES ($1, nextval('chaos_v'), 'w') ON CONFLICT (id) DO UPDATE SET v = nextval('chaos_v') RETURNING v", &[&id])
                .map(|r| r.map(|r| vec![Change::Write { key: id, v: r.get(0) }]).unwrap_or_default()),
            40..=64 => c
                .query_opt("UPDATE chaos SET v = nextval('chaos_v'), note = md5(random()::text) WHERE id = $1 RETURNING v", &[&id])
                .map(|r| r.map(|r| vec![Change::Write { key: id, v: r.get(0) }]).unwrap_or_default()),
            65..=79 => c.query_opt("DELETE FROM chaos WHERE id = $1 RETURNING v", &[&id]).map(|r| r.map(|r| vec![Change::Delete { key: id, v: r.get(0) }]).unwrap_or_default()),
            80..=89 => {
                // A primary-key change: the old key is deleted, the new one created.
                let to = rng.below(KEYS as u64) as i32 + 1;
                c.query_opt(
                    "WITH old AS (SELECT v FROM chaos WHERE id = $1 FOR UPDATE) \
                     UPDATE chaos SET id = $2, v = nextval('chaos_v') FROM old WHERE chaos.id = $1 \
                       AND NOT EXISTS (SELECT 1 FROM chaos WHERE id = $2) RETURNING old.v, chaos.v",
                    &[&id, &to],
                )
                .map(|r| r.map(|r| vec![Change::Delete { key: id, v: r.get(0) }, Change::Write { key: to, v: r.get(1) }]).unwrap_or_default())
            }
            90..=98 => c.execute("INSERT INTO chaos_t VALUES ($1, nextval('chaos_v')) ON CONFLICT (id) DO UPDATE SET v = excluded.v", &[&id]).map(|_| Vec::new()),
            _ => c.batch_execute("TRUNCATE chaos_t").map(|_| Vec::new()),
        };
        ops.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(done) => changes.lock().map(|mut c| c.extend(done)).unwrap_or(()),
            Err(e) => {
                // Unique violations and serialization hiccups are normal; a lost connection
                // leaves the outcome unknown, so the change is not counted as committed.
                failed.fetch_add(1, Ordering::Relaxed);
                if e.is_closed()
                    || e.as_db_error().is_none()
                    || e.as_db_error()
                        .is_some_and(|d| d.code().code().starts_with("57") || d.code().code().starts_with("08"))
                {
                    pg = None;
                }
            }
        }
    }
}

fn reader(url: &str, seed: u64, stop: &AtomicBool, reads: &AtomicU64) {
    let mut rng = Rng(seed.wrapping_mul(0x2545F4914F6CDD1D) | 1);
    let mut conn: Option<redis::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(r) = conn.as_mut() else {
            conn =
                redis::Client::open(url).and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500))).ok();
            if let Some(c) = conn.as_mut() {
                let _ = c.set_read_timeout(Some(Duration::from_secs(3)));
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        };
        let key = format!("chaos:{}", rng.below(KEYS as u64) + 1);
        let result: redis::RedisResult<redis::Value> = match rng.below(10) {
            0 => redis::cmd("DEL").arg(&key).query(r),
            1 => redis::cmd("PG.INVALIDATE").arg(&key).query(r),
            2..=3 => redis::cmd("PG.MGET").arg(&key).arg(format!("chaos:{}", rng.below(KEYS as u64) + 1)).query(r),
            _ => redis::cmd("PG.GET").arg(&key).query(r),
        };
        reads.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                conn = None;
            }
        }
    }
}

/// One fault, chosen at random; returns its name.
fn inject(env: &mut Env, rng: &mut Rng) -> &'static str {
    match rng.below(5) {
        0 => {
            env.servers.redis.kill();
            std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
            let _ = env.servers.redis.start_again();
            "redis SIGKILL"
        }
        1 => {
            let _ = env.servers.pg.crash_restart();
            "postgres -m immediate"
        }
        2 => {
            let pid = postgres::Client::connect(&env.servers.pg.url("postgres"), postgres::NoTls)
                .ok()
                .and_then(|mut c| c.query_one("SELECT pid FROM redis.worker_status()", &[]).ok())
                .and_then(|r| r.get::<_, Option<i32>>(0));
            if let Some(pid) = pid {
                crate::harness::stop_pid(pid, libc::SIGKILL);
            }
            "worker SIGKILL"
        }
        3 => {
            env.servers.redis.pause(true);
            std::thread::sleep(Duration::from_millis(1000 + rng.below(2000)));
            env.servers.redis.pause(false);
            "redis SIGSTOP"
        }
        _ => {
            if let Ok(mut c) = postgres::Client::connect(&env.servers.pg.url("postgres"), postgres::NoTls) {
                let _ = c.batch_execute("BEGIN; LOCK TABLE chaos IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2); COMMIT");
            }
            "table lock 2 s"
        }
    }
}

/// Every committed change is in the stream at least once, and each key's changes first appear
/// in the order they committed.
fn verify_stream(redis: &mut redis::Connection, changes: &[Change], report: &mut Report) {
    let mut events: Vec<(String, String, Option<i64>, Option<i64>)> = Vec::new();
    let mut from = "-".to_string();
    loop {
        let batch: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg("postgres.public.chaos")
            .arg(&from)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query(redis)
            .unwrap_or_default();
        let last = batch.last().map(|(id, _)| id.clone());
        for (id, fields) in &batch {
            if *id == from {
                continue;
            }
            let key = fields.iter().find(|(f, _)| f == "key").map(|(_, v)| v.clone()).unwrap_or_default();
            let value = fields.iter().find(|(f, _)| f == "value").map(|(_, v)| v.clone()).unwrap_or_default();
            if let Ok(ev) = serde_json::from_str::<pg_redis_shared::ChangeEvent>(&value) {
                let v =
                    |row: &Option<pg_redis_shared::Row>| row.as_ref().and_then(|r| r.get("v")).and_then(|v| v.as_i64());
                let op = format!("{:?}", ev.op);
                events.push((key, op, v(&ev.before), v(&ev.after)));
            }
        }
        match last {
            Some(l) if l != from && batch.len() > 1 => from = l,
            _ => break,
        }
    }
    report.events_delivered = events.len();
    let mut seen = HashSet::new();
    report.duplicates = events.iter().filter(|e| !seen.insert((*e).clone())).count();
    let writes: HashSet<(String, i64)> =
        events.iter().filter_map(|(k, _, _, after)| after.map(|a| (k.clone(), a))).collect();
    let deletes: HashSet<(String, i64)> = events
        .iter()
        .filter(|(_, op, _, _)| op == "Delete")
        .filter_map(|(k, _, before, _)| before.map(|b| (k.clone(), b)))
        .collect();
    for c in changes {
        let (present, what) = match c {
            Change::Write { key, v } => {
                (writes.contains(&(format!("chaos:{key}"), *v)), format!("write of chaos:{key} version {v}"))
            }
            Change::Delete { key, v } => {
                (deletes.contains(&(format!("chaos:{key}"), *v)), format!("delete of chaos:{key} version {v}"))
            }
        };
        if !present {
            report.lost_changes.push(format!("lost: {what}"));
        }
    }
    // Per key, first appearances of versions must rise.
    let mut last_seen: HashMap<String, i64> = HashMap::new();
    let mut first: HashSet<(String, i64)> = HashSet::new();
    for (k, _, _, after) in &events {
        if let Some(v) = after {
            if first.insert((k.clone(), *v)) {
                let prev = last_seen.insert(k.clone(), *v);
                if prev.is_some_and(|p| p > *v) {
                    report
                        .order_violations
                        .push(format!("order: {k} got version {v} after {}", prev.unwrap_or_default()));
                }
            }
        }
    }
}

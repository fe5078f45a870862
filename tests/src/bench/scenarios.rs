//! The scenarios of `make bench`, each against its baseline in the same run.

use super::measure::{redis_benchmark, used_memory};
use super::{median, quantile_us, Row};
use crate::harness::Options;
use crate::Env;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Rows of about 200 bytes of JSON, keyed by 12-digit ids: redis-benchmark's `__rand_int__`
/// produces exactly those, so GET and PG.GET read the same keys.
fn create_rows(env: &mut Env, table: &str, n: u32) {
    env.sql(&format!(
        "CREATE TABLE {table} (id text PRIMARY KEY, name text, email text, city text, score int, created timestamptz);
         INSERT INTO {table} SELECT lpad(g::text, 12, '0'), 'customer number ' || g, 'customer' || g || '@example.com',
                'Amsterdam-Noord district ' || (g % 97), g % 1000, '2024-01-01'::timestamptz + g * interval '1 minute'
           FROM generate_series(0, {}) g;",
        n - 1
    ));
    env.sql(&format!("VACUUM ANALYZE {table}"));
}

fn log(msg: &str) {
    eprintln!("  {msg}");
}

pub fn run_all(quick: bool) -> Vec<Row> {
    let mut opts = Options::named("bench");
    opts.pg_settings = vec![
        ("shared_buffers".into(), "'1GB'".into()),
        ("max_wal_size".into(), "'8GB'".into()),
        ("checkpoint_timeout".into(), "'30min'".into()),
        ("pg_redis.retry_max_ms".into(), "200".into()),
        ("pg_redis.batch_size".into(), "5000".into()),
    ];
    opts.pg_settings.extend(super::capture::server_settings());
    opts.module_args = vec!["query_timeout_ms".into(), "5000".into()];
    let mut env = Env::with(opts);
    let scale = if quick { 10 } else { 1 };
    let mut rows = Vec::new();
    // PG_REDIS_BENCH_ONLY=drain,backfill runs only the named scenarios (when chasing one figure).
    let only: Option<Vec<String>> =
        std::env::var("PG_REDIS_BENCH_ONLY").ok().map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    if wanted("hit") {
        eprintln!("cache hit: PG.GET vs GET");
        rows.extend(cache_hit(&mut env, scale));
    }
    if wanted("miss") {
        eprintln!("read-through miss latency: PG.GET vs the same prepared SELECT");
        rows.push(miss_latency(&mut env, scale));
    }
    if wanted("write") {
        eprintln!("write cost: pgbench single-row UPDATE, each capture vs none, and the peers");
        rows.extend(super::capture::writer_cost(&mut env, scale));
    }
    if wanted("propagation") {
        eprintln!("propagation latency at 2000 commits/s");
        rows.push(propagation(&mut env, scale));
    }
    if wanted("drain") {
        eprintln!("drain throughput of a 100 000-event backlog");
        rows.push(drain(&mut env, scale));
    }
    if wanted("backfill") {
        eprintln!("backfill of 1 000 000 rows");
        rows.push(backfill(&mut env, scale));
    }
    if wanted("memory") {
        eprintln!("memory per cached row vs plain SET");
        rows.push(memory(&mut env, scale));
    }
    if wanted("sql") {
        eprintln!("SQL round trips: SELECT redis.get(...) vs redis-benchmark -c 1 GET");
        rows.extend(sql_round_trips(&mut env, scale));
    }
    rows
}

fn cache_hit(env: &mut Env, scale: u32) -> Vec<Row> {
    let keys = 10_000;
    create_rows(env, "bench_hit", keys);
    env.sql("SELECT redis.sync_table('bench_hit', stream => false)");
    env.wait_synced();
    let port = env.servers.redis.port;
    let misses_before: HashMap<String, i64> = redis::cmd("PG.STATS").query(&mut env.redis).unwrap_or_default();
    let mut out = Vec::new();
    for (pipeline, requests) in [(1u32, 300_000 / scale), (16, 2_000_000 / scale)] {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for round in 0..5 {
            // Alternate which goes first, so drift in machine load hits both alike.
            let run = |cmd: &str| redis_benchmark(port, 50, requests, pipeline, keys, &[cmd, "bench_hit:__rand_int__"]);
            if round % 2 == 0 {
                base.push(run("GET"));
                ours.push(run("PG.GET"));
            } else {
                ours.push(run("PG.GET"));
                base.push(run("GET"));
            }
        }
        let (o, b) = (median(&mut ours), median(&mut base));
        log(&format!("pipeline {pipeline}: PG.GET {ours:.0?}, GET {base:.0?}"));
        out.push(Row {
            scenario: format!("Cache hit, 50 clients, pipeline {pipeline} (~200-byte rows)"),
            ours: format!("{o:.0} PG.GET/s"),
            baseline: format!("{b:.0} GET/s"),
            ratio: Some(o / b),
            goal: "≥ 0.90".into(),
            pass: Some(o / b >= 0.90),
        });
    }
    let after: HashMap<String, i64> = redis::cmd("PG.STATS").query(&mut env.redis).unwrap_or_default();
    let misses = after.get("misses").copied().unwrap_or(0) - misses_before.get("misses").copied().unwrap_or(0);
    log(&format!("misses during the hit runs: {misses} (must be 0)"));
    out
}

fn miss_latency(env: &mut Env, scale: u32) -> Row {
    let n = 20_000;
    create_rows(env, "bench_miss", n);
    env.sql("SELECT redis.sync_table('bench_miss', stream => false, backfill => false)");
    env.wait_synced();
    let t0 = Instant::now();
    while redis::cmd("PG.GET").arg("bench_miss:000000000001").query::<Option<String>>(&mut env.redis).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the module never learned bench_miss");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut pg = env.pg_client();
    let stmt = pg.prepare("SELECT to_jsonb(t)::text FROM bench_miss t WHERE id = $1::text").expect("prepare");
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let per_block = 500 / scale as usize;
    let mut next = 2u32;
    for block in 0..8 {
        let ids: Vec<String> = (0..per_block)
            .map(|_| {
                next = (next * 7919 + 13) % n;
                format!("{next:012}")
            })
            .collect();
        let _: i64 = redis::cmd("PG.INVALIDATE")
            .arg(ids.iter().map(|i| format!("bench_miss:{i}")).collect::<Vec<_>>())
            .query(&mut env.redis)
            .unwrap_or(0);
        let mut measure_ours = |ours: &mut Vec<f64>| {
            for id in &ids {
                let t = Instant::now();
                let v: Option<String> =
                    redis::cmd("PG.GET").arg(format!("bench_miss:{id}")).query(&mut env.redis).expect("PG.GET");
                ours.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(v.is_some());
            }
        };
        let mut measure_base = |base: &mut Vec<f64>| {
            for id in &ids {
                let t = Instant::now();
                let r = pg.query_opt(&stmt, &[id]).expect("SELECT");
                base.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(r.is_some());
            }
        };
        if block % 2 == 0 {
            measure_base(&mut base);
            measure_ours(&mut ours);
        } else {
            measure_ours(&mut ours);
            measure_base(&mut base);
        }
    }
    let (o50, o99) = (quantile_us(&mut ours, 0.5), quantile_us(&mut ours, 0.99));
    let (b50, b99) = (quantile_us(&mut base, 0.5), quantile_us(&mut base, 0.99));
    Row {
        scenario: "Read-through miss latency (one client)".into(),
        ours: format!("p50 {o50:.0} µs, p99 {o99:.0} µs"),
        baseline: format!("prepared SELECT: p50 {b50:.0} µs, p99 {b99:.0} µs"),
        ratio: Some(o50 / b50),
        goal: "p50 ≤ 1.5".into(),
        pass: Some(o50 / b50 <= 1.5),
    }
}

fn propagation(env: &mut Env, scale: u32) -> Row {
    env.sql("CREATE TABLE bench_p (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO bench_p SELECT g, 0 FROM generate_series(1, 1000) g");
    env.sql("SELECT redis.sync_table('bench_p', stream => false, channel => 'bench_p')");
    env.wait_synced();
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let arrived: Arc<Mutex<HashMap<i64, Instant>>> = Arc::new(Mutex::new(HashMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sub = {
        let mut conn = env.redis_client();
        let arrived = arrived.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut ps = conn.as_pubsub();
            ps.subscribe("bench_p").expect("SUBSCRIBE");
            ps.set_read_timeout(Some(Duration::from_millis(200))).ok();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(msg) = ps.get_message() {
                    let now = Instant::now();
                    let payload: String = msg.get_payload().unwrap_or_default();
                    if let Ok(ev) = serde_json::from_str::<pg_redis_shared::ChangeEvent>(&payload) {
                        if let Some(v) = ev.after.and_then(|a| a.get("v").and_then(|v| v.as_i64())) {
                            arrived.lock().unwrap_or_else(|e| e.into_inner()).insert(v, now);
                        }
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let seconds = (10 / scale).max(2) as u64;
    let writers: Vec<_> = (0..4i64)
        .map(|w| {
            let url = env.servers.pg.url("postgres");
            let committed = committed.clone();
            std::thread::spawn(move || {
                let mut pg = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
                let stmt = pg.prepare("UPDATE bench_p SET v = $1 WHERE id = $2").expect("prepare");
                let start = Instant::now();
                let mut n = 0i64;
                // 500 commits/s per writer, 2000/s in all, paced on a schedule.
                while start.elapsed() < Duration::from_secs(seconds) {
                    let due = start + Duration::from_micros(2000 * n as u64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let seq = w * 10_000_000 + n + 1;
                    pg.execute(&stmt, &[&seq, &((seq % 1000) as i32 + 1)]).expect("UPDATE");
                    committed.lock().unwrap_or_else(|e| e.into_inner()).insert(seq, Instant::now());
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: i64 = writers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    crate::check::wait_synced(&mut env.pg, 60_000);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = sub.join();
    let committed = committed.lock().unwrap_or_else(|e| e.into_inner());
    let arrived = arrived.lock().unwrap_or_else(|e| e.into_inner());
    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(seq, c)| arrived.get(seq).map(|a| a.saturating_duration_since(*c).as_secs_f64() * 1e6))
        .collect();
    let rate = total as f64 / seconds as f64;
    log(&format!("{total} commits at {rate:.0}/s, {} events seen", lat.len()));
    let (p50, p99) = (quantile_us(&mut lat, 0.5), quantile_us(&mut lat, 0.99));
    Row {
        scenario: format!("Propagation commit → Redis at {rate:.0} commits/s"),
        ours: format!("p50 {:.2} ms, p99 {:.2} ms", p50 / 1000.0, p99 / 1000.0),
        baseline: "—".into(),
        ratio: None,
        goal: "p99 ≤ 10 ms".into(),
        pass: Some(p99 <= 10_000.0),
    }
}

fn set_redis_url(env: &mut Env, url: Option<&str>) {
    match url {
        Some(u) => env.sql(&format!("ALTER SYSTEM SET pg_redis.url = '{u}'")),
        None => env.sql("ALTER SYSTEM RESET pg_redis.url"),
    }
    env.sql("SELECT pg_reload_conf()");
}

fn drain(env: &mut Env, scale: u32) -> Row {
    let events = 100_000 / scale;
    env.sql("CREATE TABLE bench_d (id int PRIMARY KEY, name text, v int); SELECT redis.sync_table('bench_d')");
    env.wait_synced();
    set_redis_url(env, Some("redis://127.0.0.1:1/0"));
    std::thread::sleep(Duration::from_millis(500));
    env.sql(&format!("INSERT INTO bench_d SELECT g, 'row ' || g, g FROM generate_series(1, {events}) g"));
    let queued: i64 = env.pg.query_one("SELECT count(*) FROM redis.outbox", &[]).map(|r| r.get(0)).unwrap_or(0);
    let t0 = Instant::now();
    set_redis_url(env, None);
    crate::check::wait_synced(&mut env.pg, 600_000);
    let secs = t0.elapsed().as_secs_f64();
    let rate = queued as f64 / secs;
    log(&format!("{queued} events (SET + XADD each) in {secs:.2} s"));
    Row {
        scenario: format!("Drain a backlog of {queued} events (SET + stream XADD each)"),
        ours: format!("{rate:.0} events/s"),
        baseline: "—".into(),
        ratio: None,
        goal: "≥ 100 000/s".into(),
        pass: Some(rate >= 100_000.0),
    }
}

fn backfill(env: &mut Env, scale: u32) -> Row {
    let n = 1_000_000 / scale;
    env.sql(&format!("CREATE TABLE bench_b (id int PRIMARY KEY, name text, v int); INSERT INTO bench_b SELECT g, 'row ' || g, g FROM generate_series(1, {n}) g"));
    env.sql("VACUUM ANALYZE bench_b");
    let t0 = Instant::now();
    env.sql("SELECT redis.sync_table('bench_b')");
    let queued = t0.elapsed().as_secs_f64();
    crate::check::wait_synced(&mut env.pg, 900_000);
    let secs = t0.elapsed().as_secs_f64();
    let rate = n as f64 / secs;
    log(&format!("{n} rows: sync_table returned after {queued:.2} s, all in Redis after {secs:.2} s"));
    Row {
        scenario: format!("Backfill: sync_table on {n} existing rows until all are in Redis"),
        ours: format!("{rate:.0} rows/s ({queued:.1} s queueing, {secs:.1} s in all)"),
        baseline: "—".into(),
        ratio: None,
        goal: "≥ 200 000/s".into(),
        pass: Some(rate >= 200_000.0),
    }
}

fn memory(env: &mut Env, scale: u32) -> Row {
    let n = 100_000 / scale;
    create_rows(env, "bench_m", n);
    let _: () = redis::cmd("FLUSHALL").query(&mut env.redis).unwrap_or(());
    let before = used_memory(&mut env.redis);
    env.sql("SELECT redis.sync_table('bench_m', stream => false)");
    env.wait_synced();
    let ours = used_memory(&mut env.redis) - before;
    // The same values under keys of the same length, written with plain SET.
    let values: Vec<(String, String)> = env
        .pg
        .query("SELECT id, to_jsonb(t)::text FROM bench_m t", &[])
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let m = crate::check::mapping_of(&mut env.pg, "bench_m");
    let before = used_memory(&mut env.redis);
    for chunk in values.chunks(1000) {
        let mut p = redis::pipe();
        for (id, row) in chunk {
            let (_, v) = m.encode_text(row).expect("row");
            if let pg_redis_shared::Encoded::Json(s) = v {
                p.cmd("SET").arg(format!("plain_m:{id}")).arg(s).ignore();
            }
        }
        let _: () = p.query(&mut env.redis).expect("SET");
    }
    let base = used_memory(&mut env.redis) - before;
    let (o, b) = (ours as f64 / n as f64, base as f64 / n as f64);
    Row {
        scenario: format!("Redis memory per cached row ({n} rows, json)"),
        ours: format!("{o:.0} bytes/row"),
        baseline: format!("{b:.0} bytes/row (plain SET)"),
        ratio: Some(o / b),
        goal: "≤ 1.05".into(),
        pass: Some(o / b <= 1.05),
    }
}

/// Round trips of `redis.get` from one PostgreSQL session against one redis-benchmark client
/// doing GET: the ratio is what going through SQL costs per call. Two shapes: one statement per
/// call (the client's own round trip to PostgreSQL included), and many calls in one statement
/// (the function alone).
fn sql_round_trips(env: &mut Env, scale: u32) -> Vec<Row> {
    let n = 40_000 / scale;
    env.sql(&format!("SELECT redis.set('bench:sql', '{}')", "x".repeat(200)));
    let port = env.servers.redis.port;
    let mut pg = env.pg_client();
    let stmt = pg.prepare("SELECT redis.get($1)").expect("prepare");
    let in_one = format!("SELECT count(redis.get('bench:sql')) FROM generate_series(1, {n})");
    let (mut per_stmt, mut per_loop, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..5 {
        let mut ours = |pg: &mut postgres::Client| {
            let t0 = Instant::now();
            for _ in 0..n {
                let v: Option<String> = pg.query_one(&stmt, &[&"bench:sql"]).expect("redis.get").get(0);
                assert!(v.is_some());
            }
            per_stmt.push(n as f64 / t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            let count: i64 = pg.query_one(in_one.as_str(), &[]).expect("redis.get loop").get(0);
            assert_eq!(count, i64::from(n));
            per_loop.push(n as f64 / t0.elapsed().as_secs_f64());
        };
        if round % 2 == 0 {
            base.push(redis_benchmark(port, 1, n, 1, 1, &["GET", "bench:sql"]));
            ours(&mut pg);
        } else {
            ours(&mut pg);
            base.push(redis_benchmark(port, 1, n, 1, 1, &["GET", "bench:sql"]));
        }
    }
    log(&format!("per statement {per_stmt:.0?}, in one statement {per_loop:.0?}, GET {base:.0?}"));
    let b = median(&mut base);
    let row = |scenario: &str, o: f64| Row {
        scenario: scenario.into(),
        ours: format!("{o:.0} calls/s"),
        baseline: format!("{b:.0} GET/s (redis-benchmark -c 1)"),
        ratio: Some(o / b),
        goal: "— (per-call cost)".into(),
        pass: None,
    };
    vec![
        row("SQL `SELECT redis.get(k)`, one session, one statement per call", median(&mut per_stmt)),
        row("SQL `redis.get(k)` called in one statement, one session", median(&mut per_loop)),
    ]
}

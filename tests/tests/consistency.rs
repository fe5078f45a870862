//! The same row gives the same key and the same bytes whoever writes it, and delivery keeps its
//! order and its memory bounds whatever the input: session settings of writers and readers,
//! user column names that look like the project's own aliases, queued commands Redis refuses
//! for a while, a delivery transaction failing with a batch in flight, very large rows, and
//! sweeps that run while the worker is busy with other changes.

use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TYPES_TABLE: &str = include_str!("types_table.sql");

/// Session settings that change how PostgreSQL prints values, none of them the canonical one.
const ODD_SETTINGS: &str =
    "SET TimeZone = 'Europe/Paris'; SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'; \
     SET bytea_output = 'escape'; SET extra_float_digits = 0";

fn keys(env: &mut Env, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut env.redis).unwrap();
    k.sort();
    k
}

#[test]
fn keys_and_bytes_do_not_depend_on_the_writers_session() {
    let mut env = Env::start("cons_sessions");
    env.sql(
        "CREATE TABLE ev (at timestamptz PRIMARY KEY, span interval, raw bytea, f float8, during tstzrange, price money, day date);
         SELECT redis.sync_table('ev');",
    );
    // Written from a UTC session, updated from a Paris one, deleted from a third zone.
    env.sql("SET TimeZone = 'UTC'; INSERT INTO ev VALUES ('2024-01-02 03:04:05+00', '1 day 02:03:04', '\\x00ff', 0.1, '[2024-01-01 00:00+00,2024-01-02 00:00+00)', 12.5, '2024-02-29')");
    env.wait_synced();
    let first = keys(&mut env, "ev:*");
    assert_eq!(first.len(), 1, "{first:?}");
    env.sql(&format!("{ODD_SETTINGS}; UPDATE ev SET f = f * 3, span = span * 2, raw = raw || '\\x01'::bytea"));
    env.wait_synced();
    assert_eq!(keys(&mut env, "ev:*"), first, "an update from another time zone keeps the key");
    env.assert_consistent("ev");
    env.sql("SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'German'; DELETE FROM ev");
    env.wait_synced();
    assert!(keys(&mut env, "ev:*").is_empty(), "a delete from another time zone removes the key");

    // The backfill reads under the same rules, whatever the caller's session says.
    env.sql(&format!("{ODD_SETTINGS}; INSERT INTO ev VALUES ('2024-06-01 12:00+02', '-1 mon', '\\xdead', 1e-7, 'empty', -3, 'infinity')"));
    env.sql(&format!("{ODD_SETTINGS}; SELECT redis.resync('ev')"));
    env.wait_synced();
    env.assert_consistent("ev");
    let key = keys(&mut env, "ev:*")[0].clone();
    let stored = env.get(&key).unwrap();
    assert!(stored.contains(r#""at":"2024-06-01T10:00:00+00:00""#), "{stored}");
    assert!(stored.contains(r#""raw":"\\xdead""#), "{stored}");
    assert!(stored.contains(r#""span":"-1 mons""#), "{stored}");
    // And the module reads through to the same bytes, whatever its sessions' defaults.
    env.sql("ALTER DATABASE postgres SET TimeZone = 'America/New_York'; ALTER DATABASE postgres SET bytea_output = 'escape'; ALTER DATABASE postgres SET IntervalStyle = 'sql_standard'");
    env.wait_mappings(1);
    let _: i64 = redis::cmd("PG.INVALIDATE").arg(&key).query(&mut env.redis).unwrap();
    let read: String = redis::cmd("PG.GET").arg(&key).query(&mut env.redis).unwrap();
    assert_eq!(read, stored, "read-through and push store the same bytes");
}

#[test]
fn every_type_round_trips_under_any_session_settings() {
    let mut env = Env::start("cons_types_sessions");
    env.sql(&format!("{ODD_SETTINGS}; {TYPES_TABLE}"));
    env.sql(&format!("{ODD_SETTINGS}; SELECT redis.sync_table('types')"));
    env.sql(&format!("{ODD_SETTINGS}; UPDATE types SET tx = tx || '!'"));
    env.wait_synced();
    env.assert_consistent("types");
}

#[test]
fn user_column_names_never_change_the_projects_queries() {
    let mut env = Env::start("cons_names");
    // Columns named like the aliases the project's own SQL uses.
    env.sql(
        r#"CREATE TABLE odd (id int PRIMARY KEY, t text, k int, ord int, k0 text, x text);
           INSERT INTO odd VALUES (1, 'tee', 2, 3, 'kay', 'ex'), (2, 'tea', 4, 5, 'k', 'y');
           SELECT redis.sync_table('odd');"#,
    );
    env.wait_synced();
    env.assert_consistent("odd");
    assert_eq!(env.get("odd:1").as_deref(), Some(r#"{"k":2,"t":"tee","x":"ex","id":1,"k0":"kay","ord":3}"#));
    // Read-through and the resync sweep build their queries from the same pieces.
    env.wait_mappings(1);
    let _: i64 = redis::cmd("PG.INVALIDATE").arg("odd:2").query(&mut env.redis).unwrap();
    let row: String = redis::cmd("PG.GET").arg("odd:2").query(&mut env.redis).unwrap();
    assert_eq!(row, r#"{"k":4,"t":"tea","x":"y","id":2,"k0":"k","ord":5}"#);
    let rows: Vec<Option<String>> = redis::cmd("PG.MGET").arg("odd:1").arg("odd:2").query(&mut env.redis).unwrap();
    assert!(rows.iter().all(Option::is_some), "{rows:?}");
    let _: () = redis::cmd("SET").arg("odd:99").arg("{}").query(&mut env.redis).unwrap();
    env.sql("SELECT redis.resync('odd')");
    env.wait_synced();
    assert_eq!(env.get("odd:99"), None, "the sweep removes a key without a row");
    env.assert_consistent("odd");
}

#[test]
fn a_refused_queued_command_is_not_overtaken() {
    let mut env = Env::start("cons_command_order");
    let used: String = redis::cmd("INFO").arg("memory").query(&mut env.redis).unwrap();
    let used: u64 =
        used.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap();
    // Out of memory: writes that grow memory are refused, deletes still run.
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(used / 2).query(&mut env.redis).unwrap();
    env.sql("SELECT redis.on_commit('RPUSH', 'log', 'first')");
    env.sql("SELECT redis.on_commit('DEL', 'log')");
    env.sql("SELECT redis.on_commit('SET', 'after', 'x')");
    std::thread::sleep(Duration::from_millis(1500));
    let status = check::status(&mut env.pg);
    assert!(status.iter().any(|s| s.contains("OOM")), "the refusal is reported: {status:?}");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query(&mut env.redis).unwrap();
    env.wait_synced();
    let exists: i64 = redis::cmd("EXISTS").arg("log").query(&mut env.redis).unwrap();
    assert_eq!(exists, 0, "DEL ran after the RPUSH it followed, not before");
    assert_eq!(env.get("after").as_deref(), Some("x"));
    let dead: i64 = env.pg.query_one("SELECT count(*) FROM redis.dead_letter", &[]).unwrap().get(0);
    assert_eq!(dead, 0);
}

#[test]
fn a_batch_abandoned_by_an_error_never_lands_after_newer_writes() {
    let mut env = Env::with(Options {
        pg_settings: vec![("pg_redis.batch_size".into(), "1".into()), ("pg_redis.retry_max_ms".into(), "200".into())],
        ..Options::named("cons_abandoned")
    });
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t')");
    let mapping: i64 = env.pg.query_one("SELECT mapping_id FROM redis.tables", &[]).unwrap().get(0);
    for round in 0..3 {
        // Redis hangs with the row's batch in flight; the delivery transaction then fails on
        // an event it cannot read (a timestamp that is no number of milliseconds).
        env.servers.redis.pause(true);
        env.sql(&format!(
            "BEGIN; INSERT INTO t VALUES ({round}, 'stale');
             INSERT INTO redis.outbox (mapping_id, op, captured_at, new_row) VALUES ({mapping}, 'c', 'infinity', '{{\"id\": -1}}');
             COMMIT;"
        ));
        std::thread::sleep(Duration::from_millis(300));
        // The failing event goes, the table is emptied, and Redis carries on.
        env.sql("DELETE FROM redis.outbox WHERE captured_at = 'infinity'");
        env.sql("ALTER SYSTEM SET pg_redis.batch_size = 100");
        env.sql(&format!("SELECT pg_reload_conf(); TRUNCATE t; INSERT INTO t VALUES ({}, 'new')", round + 100));
        std::thread::sleep(Duration::from_millis(300));
        env.servers.redis.pause(false);
        env.wait_synced();
        env.assert_consistent("t");
        env.sql("ALTER SYSTEM SET pg_redis.batch_size = 1");
        env.sql("SELECT pg_reload_conf()");
    }
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn large_rows_are_delivered_in_bounded_memory() {
    let mut env = Env::with(Options {
        pg_settings: vec![("pg_redis.stream_maxlen".into(), "10".into())],
        ..Options::named("cons_large_rows")
    });
    env.sql("CREATE TABLE big (id int PRIMARY KEY, body text); INSERT INTO big SELECT g, repeat(md5(g::text), 32768) FROM generate_series(1, 1000) g");
    env.sql("SELECT redis.sync_table('big', stream => false)");
    // A gigabyte of backfill: the test is about memory, so give a busy machine time.
    check::wait_synced(&mut env.pg, 400_000);
    let worker: i32 = env.pg.query_one("SELECT pid FROM redis.worker_status()", &[]).unwrap().get(0);
    // 1 000 updates of 1 MB rows, with their old rows (the stream is on now) and their events.
    env.sql("SELECT redis.sync_table('big', backfill => false)");
    let t0 = Instant::now();
    env.sql("UPDATE big SET body = body || 'x'");
    check::wait_synced(&mut env.pg, 120_000);
    let peak = peak_rss_kb(worker);
    println!(
        "worker peak RSS while delivering 1000 x 1 MB row updates: {} MB ({:.1} s)",
        peak / 1024,
        t0.elapsed().as_secs_f64()
    );
    let capture: String = env.pg.query_one("SELECT capture FROM redis.mapping WHERE active", &[]).unwrap().get(0);
    if capture == "wal" {
        // Decoded from the WAL, the worker's memory is PostgreSQL's logical decoding: it
        // restores up to 4096 changes of a transaction at once, here every 1 MB row twice (old
        // and new). The README says so, and to capture such tables by trigger.
        println!("captured from the WAL: the peak is PostgreSQL's reorder buffer, not bounded by pg_redis");
    } else {
        assert!(peak > 0 && peak < 512 * 1024, "peak RSS {peak} kB");
    }
    env.assert_consistent("big");
}

#[test]
fn backfill_of_very_large_rows_succeeds() {
    let mut env = Env::start("cons_backfill_large");
    // Nowhere to deliver: this is about the backfill queued by the caller's backend (capture by
    // trigger; under WAL capture the worker reads chunks bounded by batch_max_bytes instead).
    env.sql("ALTER SYSTEM SET pg_redis.url = 'redis://127.0.0.1:1'");
    env.sql("SELECT pg_reload_conf()");
    env.sql("CREATE TABLE huge (id int PRIMARY KEY, body text); INSERT INTO huge SELECT g, repeat(md5(g::text), 327680) FROM generate_series(1, 500) g");
    let t0 = Instant::now();
    let queued: i64 =
        env.pg.query_one("SELECT redis.sync_table('huge', stream => false, capture => 'trigger')", &[]).unwrap().get(0);
    println!("sync_table on 500 rows of 10 MB: {queued} rows queued in {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(queued, 500);
    let (n, bytes): (i64, i64) = {
        let r = env
            .pg
            .query_one("SELECT count(*), sum(octet_length(new_row::text))::int8 FROM redis.outbox WHERE op = 'r'", &[])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(n, 500);
    assert!(bytes > 500 * 10_000_000, "{bytes}");
}

/// Redis refuses commands for a moment and then takes them again, in the middle of a pipeline:
/// after a restart it answers LOADING until its data is loaded, and then runs what follows.
/// No change of a table may reach its stream before an older one: the first appearance of
/// each version of a key rises.
#[test]
fn changes_refused_for_a_moment_never_reach_the_stream_after_newer_ones() {
    let mut env = Env::with(Options {
        pg_settings: vec![
            ("pg_redis.batch_size".into(), "10000".into()),
            ("pg_redis.retry_min_ms".into(), "1".into()),
            ("pg_redis.retry_max_ms".into(), "5".into()),
        ],
        ..Options::named("cons_loading")
    });
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         INSERT INTO t SELECT g, 0 FROM generate_series(1, 20) g;
         SELECT redis.sync_table('t');",
    );
    env.wait_synced();
    let stream: String = env.pg.query_one("SELECT stream_key FROM redis.tables", &[]).unwrap().get(0);
    // Enough data that loading it after a restart takes a while.
    let _: () = redis::cmd("EVAL")
        .arg("for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'ballast:' .. i, i) end")
        .arg(0)
        .arg(1_500_000)
        .query(&mut env.redis)
        .unwrap();
    for _ in 0..8 {
        // While Redis is down, 10 000 changes queue up, each key's versions rising; the worker
        // sends them as soon as Redis accepts connections again, while it still loads.
        env.servers.redis.kill();
        env.sql("DO $$ BEGIN FOR i IN 1..10000 LOOP UPDATE t SET v = v + 1 WHERE id = i % 20 + 1; END LOOP; END $$");
        env.servers.redis.start_again().unwrap();
        env.redis = env.servers.redis.client().unwrap();
        env.wait_synced();
    }
    env.assert_consistent("t");
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&stream).arg("-").arg("+").query(&mut env.redis).unwrap();
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    let mut seen = std::collections::HashSet::new();
    let mut violations = Vec::new();
    for (_, fields) in &entries {
        let field = |name: &str| fields.iter().find(|(f, _)| f == name).map(|(_, v)| v.clone()).unwrap_or_default();
        let Ok(ev) = serde_json::from_str::<pg_redis_shared::ChangeEvent>(&field("value")) else { continue };
        let Some(v) = ev.after.as_ref().and_then(|r| r.get("v")).and_then(|v| v.as_i64()) else { continue };
        let key = field("key");
        if seen.insert((key.clone(), v)) {
            if let Some(prev) = last.insert(key.clone(), v).filter(|p| *p > v) {
                violations.push(format!("{key}: version {v} first appeared after {prev}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} of {} stream entries came before older changes of their key, e.g. {:?}",
        violations.len(),
        entries.len(),
        &violations[..violations.len().min(5)]
    );
}

/// A sweep (resync, TRUNCATE of a partition) removes the keys whose rows no longer exist. It
/// must judge that on what is committed when it runs: a busy worker delivers batch after batch
/// in one transaction, and a check against that transaction's first snapshot took rows
/// committed since for missing, and deleted their keys.
#[test]
fn sweeps_see_rows_committed_while_the_worker_was_busy() {
    let mut env = Env::start("cons_sweep_snapshot");
    env.sql(
        "CREATE TABLE noise (id serial PRIMARY KEY, v text); SELECT redis.sync_table('noise', stream => false);
         CREATE TABLE s (id int PRIMARY KEY, v text); SELECT redis.sync_table('s', stream => false);
         CREATE TABLE m (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
         CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1); CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
         SELECT redis.sync_table('m', stream => false);",
    );
    env.wait_synced();
    // Other writers keep the worker delivering without a pause.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, mut pg) = (stop.clone(), env.pg_client());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                pg.batch_execute("INSERT INTO noise (v) VALUES ('n')").unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=20 {
        env.sql(&format!("INSERT INTO s VALUES ({i}, 'v')"));
        env.sql("SELECT redis.resync('s')");
        env.sql(&format!("INSERT INTO m VALUES ({i}, 1, 'v'), ({i}, 2, 'v')"));
        env.sql("TRUNCATE m1");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    env.wait_synced();
    env.assert_consistent("s");
    env.assert_consistent("m");
    assert_eq!(keys(&mut env, "s:*").len(), 20);
    assert_eq!(keys(&mut env, "m:*").len(), 20);
}

/// The worker keeps its own transaction rules whatever the database's defaults say: a
/// read-only default would keep it from deleting what it delivered (it would send the same
/// batch forever), a lock timeout would let a sweep waiting behind another transaction's lock
/// keep every key it could not check, and a serializable default would make it fail on
/// conflicts with writers.
#[test]
fn database_transaction_defaults_do_not_reach_the_worker() {
    let mut env = Env::start("cons_worker_defaults");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 50) g;
         SELECT redis.sync_table('t');
         CREATE TABLE m (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
         CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1); CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
         INSERT INTO m SELECT g, 1 + g % 2, 'v' FROM generate_series(1, 20) g; SELECT redis.sync_table('m');
         ALTER DATABASE postgres SET default_transaction_isolation = 'serializable';
         ALTER DATABASE postgres SET default_transaction_read_only = on;
         ALTER DATABASE postgres SET lock_timeout = '1ms'; ALTER DATABASE postgres SET statement_timeout = '1ms';",
    );
    env.wait_synced();
    env.servers.pg.restart().unwrap();
    let own_rules = "SET default_transaction_read_only = off; SET default_transaction_isolation = 'read committed';
                     SET lock_timeout = 0; SET statement_timeout = 0";
    env.pg = env.pg_client();
    env.sql(own_rules);
    env.sql("UPDATE t SET v = 'w' WHERE id <= 10; DELETE FROM t WHERE id > 40; SELECT redis.resync('t')");
    env.wait_synced();
    env.assert_consistent("t");
    // The sweep of a TRUNCATE of m1 checks m's rows, and must wait for m2's lock.
    let _: () = redis::cmd("SET").arg("m:999:1").arg("{}").query(&mut env.redis).unwrap();
    let mut holder = env.pg_client();
    holder.batch_execute(own_rules).unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE m2 IN ACCESS EXCLUSIVE MODE").unwrap();
    env.sql("TRUNCATE m1");
    std::thread::sleep(Duration::from_millis(500));
    holder.batch_execute("COMMIT").unwrap();
    env.wait_synced();
    assert_eq!(env.get("m:999:1"), None, "the sweep waited for the lock and removed the key without a row");
    env.assert_consistent("m");
    let queued: i64 = env.pg.query_one("SELECT count(*) FROM redis.outbox", &[]).unwrap().get(0);
    assert_eq!(queued, 0, "the worker deleted what it delivered");
}

/// An ERROR inside the worker's own transaction (here a trigger an administrator put on the
/// outbox) rolls that transaction back: nothing is lost, the events are sent again once it
/// passes, and the worker says why it is backing off.
#[test]
fn an_error_in_the_delivery_transaction_is_shown_and_loses_nothing() {
    let mut env = Env::start("cons_delivery_error");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t');
         CREATE FUNCTION public.no_deletes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'no deletes today'; END $$;
         CREATE TRIGGER no_deletes BEFORE DELETE ON redis.outbox FOR EACH ROW EXECUTE FUNCTION public.no_deletes();
         INSERT INTO t SELECT g, 'v' FROM generate_series(1, 20) g;",
    );
    let t0 = Instant::now();
    let shown = loop {
        let row = env.pg.query_one("SELECT state, last_error FROM redis.worker_status()", &[]).unwrap();
        let (state, error): (Option<String>, Option<String>) = (row.get(0), row.get(1));
        if error.as_deref().is_some_and(|e| e.contains("no deletes today")) {
            break (state, error);
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the worker never said why: {state:?} {error:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(shown.1.as_deref().is_some_and(|e| e.starts_with("delivering changes failed")), "{shown:?}");
    let queued: i64 =
        env.pg.query_one("SELECT count(*) FROM redis.outbox WHERE new_row IS NOT NULL", &[]).unwrap().get(0);
    assert_eq!(queued, 20, "the rolled-back transaction kept every row's event");
    env.sql("DROP TRIGGER no_deletes ON redis.outbox; UPDATE t SET v = 'w' WHERE id <= 5");
    env.wait_synced();
    env.assert_consistent("t");
}

//! Delivery under WAL capture: the worker consumes its database's replication slot and applies
//! what the output plugin decodes, in commit order; the slot moves only past what Redis
//! acknowledged. Real PostgreSQL (`wal_level = logical`) and a real redis-server.

use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::time::{Duration, Instant};

fn logical(name: &str, extra: &[(&str, &str)]) -> Env {
    let mut opts = Options::named(name);
    opts.pg_settings.push(("wal_level".into(), "logical".into()));
    for (k, v) in extra {
        opts.pg_settings.push((k.to_string(), v.to_string()));
    }
    Env::with(opts)
}

fn one<T: for<'a> postgres::types::FromSql<'a>>(env: &mut Env, sql: &str) -> T {
    env.pg.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn slot_name(env: &mut Env) -> String {
    one(env, "SELECT 'pg_redis_' || oid FROM pg_database WHERE datname = current_database()")
}

/// Waits up to `secs` for `cond`, failing with `what`.
fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stream_ops(env: &mut Env, stream: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<String>)> =
        redis::cmd("XRANGE").arg(stream).arg("-").arg("+").query(&mut env.redis).expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, fields)| fields.chunks(2).find(|kv| kv[0] == "value").map(|kv| kv[1].clone()))
        .map(|v| {
            serde_json::from_str::<serde_json::Value>(&v).expect("event JSON")["op"].as_str().unwrap_or("").to_owned()
        })
        .collect()
}

#[test]
fn wal_capture_delivers_committed_changes_in_commit_order_without_triggers() {
    let mut env = logical("wal_delivery_basic", &[]);
    env.sql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'before sync')");
    // In a transaction of its own, sync_table waits for the worker's slot and captures from
    // the WAL at once.
    env.sql("SELECT redis.sync_table('t')");
    let capture: String = one(&mut env, "SELECT capture FROM redis.mapping WHERE active");
    assert_eq!(capture, "wal");
    let triggers: i64 = one(&mut env, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass");
    assert_eq!(triggers, 0, "a table captured from the WAL has no capture trigger");
    let identity: String = one(&mut env, "SELECT relreplident::text FROM pg_class WHERE oid = 't'::regclass");
    assert_eq!(identity, "f", "sync_table sets REPLICA IDENTITY FULL");
    // The backfill (read in chunks by the worker) first: its read then leads the stream.
    env.wait_synced();
    // One transaction each.
    for sql in [
        "INSERT INTO t VALUES (2, 'a')",
        "UPDATE t SET note = 'b' WHERE id = 2",
        "UPDATE t SET id = 3 WHERE id = 2",
        "BEGIN; INSERT INTO t VALUES (9, 'rolled back'); ROLLBACK",
        "BEGIN; INSERT INTO t VALUES (4, 'kept'); SAVEPOINT s; INSERT INTO t VALUES (5, 'no'); ROLLBACK TO s; COMMIT",
        "DELETE FROM t WHERE id = 1",
        "BEGIN; UPDATE t SET note = 'with marker' WHERE id = 4; SELECT redis.on_commit('SET', 'marker', 'after 4'); COMMIT",
    ] {
        env.sql(sql);
    }
    env.wait_synced();
    env.assert_consistent("t");
    assert_eq!(env.get("t:9"), None);
    assert_eq!(env.get("t:5"), None);
    assert_eq!(env.get("marker").as_deref(), Some("after 4"));
    // Stream: the backfill read, then each change in commit order (the key change as d + c).
    let ops = stream_ops(&mut env, "postgres.public.t");
    assert_eq!(ops, ["r", "c", "u", "d", "c", "c", "d", "u"], "stream ops in commit order");
    let slot = slot_name(&mut env);
    let active: i64 = one(
        &mut env,
        &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}' AND plugin = 'pg_redis'"),
    );
    assert_eq!(active, 1, "the worker's slot exists");
    let status: Vec<String> = check::status(&mut env.pg);
    assert!(!status.is_empty());
    // Synced in a transaction that already wrote (the slot could not be awaited there, were it
    // missing): captured from the WAL all the same once the slot exists, nothing lost.
    env.sql(
        "BEGIN; CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1); SELECT redis.sync_table('u'); COMMIT",
    );
    env.sql("INSERT INTO u VALUES (2)");
    wait_for(30, "u to be captured from the WAL", || {
        let c: String = env
            .pg
            .query_one("SELECT capture FROM redis.mapping WHERE active AND table_name = 'u'::regclass", &[])
            .unwrap()
            .get(0);
        c == "wal"
    });
    env.sql("INSERT INTO u VALUES (3); DELETE FROM u WHERE id = 1");
    env.wait_synced();
    env.assert_consistent("u");
    // A table whose owner asks for the trigger keeps it (the worker leaves it so).
    env.sql("CREATE TABLE pinned (id int PRIMARY KEY)");
    env.sql("SELECT redis.sync_table('pinned', capture => 'trigger')");
    env.sql("INSERT INTO pinned VALUES (1)");
    let (state, msg) = env.sql_error("SELECT redis.sync_table('pinned', capture => 'both')");
    assert_eq!(state, "22023", "{msg}");
    assert!(msg.contains("'wal', 'trigger' or NULL"), "{msg}");
    env.wait_synced();
    env.assert_consistent("pinned");
    let capture: String =
        one(&mut env, "SELECT capture FROM redis.mapping WHERE active AND table_name = 'pinned'::regclass");
    assert_eq!(capture, "trigger");
    // TRUNCATE empties the table's keys.
    env.sql("TRUNCATE t");
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn the_slot_holds_changes_while_redis_is_down_and_nothing_is_lost() {
    let mut env = logical("wal_delivery_redis_down", &[]);
    env.sql("CREATE TABLE t (id int PRIMARY KEY, n int); SELECT redis.sync_table('t', stream => false);");
    env.wait_synced();
    env.servers.redis.stop();
    env.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 5000) g; UPDATE t SET n = n + 1 WHERE id % 2 = 0; DELETE FROM t WHERE id % 7 = 0;");
    for i in 0..20 {
        env.sql(&format!("UPDATE t SET n = n + 1 WHERE id = {}", i + 1));
    }
    std::thread::sleep(Duration::from_secs(3));
    let retained: Option<i64> = one(&mut env, "SELECT max(wal_retained_bytes) FROM redis.status");
    assert!(retained.unwrap_or(0) > 0, "redis.status shows the WAL the slot retains: {retained:?}");
    let synced: bool = one(&mut env, "SELECT redis.wait_synced(500)");
    assert!(!synced, "nothing can be synced while Redis is down");
    env.servers.redis.start_again().expect("Redis starts again");
    env.redis = env.redis_client();
    env.wait_synced();
    env.assert_consistent("t");
}

/// A transaction is decoded as soon as its commit record is flushed, but other sessions see it
/// only a moment later, when it leaves the process array (a synchronous commit waits for its
/// standby in between). Whatever the worker reads of a decoded transaction (its queued rows,
/// the mapping version it made, a row read again) must wait until it is visible: a queued row
/// read as missing would be skipped as delivered and stay queued for ever.
#[test]
fn transactions_decoded_before_they_are_visible_lose_nothing() {
    // Commits asking for synchronous replication wait for a standby that never comes: flushed
    // and decoded, not yet visible. The rest of the server commits locally.
    let mut env = logical(
        "wal_delivery_invisible",
        &[("synchronous_standby_names", "'nobody'"), ("synchronous_commit", "local")],
    );
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE noise (id serial, v text)");
    env.sql("SELECT redis.sync_table('t')");
    env.wait_synced();
    let mut writer = env.pg_client();
    let pid: i32 = writer.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let waiting = std::thread::spawn(move || {
        writer.batch_execute(
            "SET synchronous_commit = on; BEGIN;
             INSERT INTO t VALUES (1, 'a'); SELECT redis.on_commit('SET', 'marker', 'after t:1');
             SELECT redis.resync('t');
             CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (7, 'u');
             SELECT redis.sync_table('u');
             COMMIT",
        )
    });
    wait_for(20, "the commit to wait for its standby", || {
        let n: i64 = one(
            &mut env,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND wait_event = 'SyncRep'"),
        );
        n == 1
    });
    // Other commits wake the worker: it decodes the waiting transaction meanwhile.
    for _ in 0..10 {
        env.sql("INSERT INTO noise (v) VALUES ('n')");
        std::thread::sleep(Duration::from_millis(150));
    }
    // Cancelling the wait makes the local commit visible.
    env.sql(&format!("SELECT pg_cancel_backend({pid})"));
    waiting.join().unwrap().expect("the transaction commits locally");
    env.wait_synced();
    assert_eq!(env.get("marker").as_deref(), Some("after t:1"));
    env.assert_consistent("t");
    env.assert_consistent("u");
    let left: i64 = one(&mut env, "SELECT count(*) FROM redis.outbox");
    assert_eq!(left, 0, "nothing stays queued");
}

/// Backfill under WAL capture reads the table in chunks and pushes them straight to Redis
/// (no queue row per row), while 8 writers update, delete and insert the same rows and the
/// table is rewritten: no chunk ever overwrites a newer change, no deleted row comes back, no
/// row is missed. (Resync's drift repair under
/// WAL capture is covered by the sync tests' WAL rerun.)
#[test]
fn backfill_of_a_million_rows_races_no_writer() {
    const ROWS: i64 = 1_000_000;
    let mut env = logical("wal_delivery_backfill", &[]);
    env.sql("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL, pad text)");
    env.sql(&format!("INSERT INTO t SELECT g, 0, 'row ' || g FROM generate_series(1, {ROWS}) g"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, mut pg) = (stop.clone(), env.pg_client());
            std::thread::spawn(move || {
                // Paced, and without waiting for fsync: the 2 cores also run the backfill.
                pg.batch_execute("SET synchronous_commit = off").unwrap();
                let mut i: i64 = w;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 7919 * 8;
                    let id = i % ROWS + 1;
                    let sql = match i % 5 {
                        0 => format!("DELETE FROM t WHERE id = {id}"),
                        1 => format!(
                            "INSERT INTO t VALUES ({id}, 1, 'again') ON CONFLICT (id) DO UPDATE SET n = t.n + 1"
                        ),
                        _ => format!("UPDATE t SET n = n + 1, pad = 'w{w}' WHERE id = {id}"),
                    };
                    pg.batch_execute(&sql).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let rows: i64 = one(&mut env, "SELECT redis.sync_table('t', stream => false)");
    let capture: String = one(&mut env, "SELECT capture FROM redis.mapping WHERE active");
    assert_eq!(capture, "wal");
    assert!(rows > ROWS / 2, "sync_table says how many rows the table holds: {rows}");
    // Rewritten mid-way (every row moves): the backfill reads it again from its start.
    wait_for(120, "the backfill to be under way", || {
        let done: Option<i64> = env.pg.query_one("SELECT max(backfilled_rows) FROM redis.status", &[]).unwrap().get(0);
        done.unwrap_or(0) > 0
    });
    env.sql("VACUUM FULL t");
    wait_for(300, "the backfill to end", || {
        let left: i64 = env.pg.query_one("SELECT count(*) FROM redis.backfill", &[]).unwrap().get(0);
        left == 0
    });
    println!("backfill of {rows} rows under 8 writers: {:.1} s", t0.elapsed().as_secs_f64());
    // Writers go on a little after the backfill ended.
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn an_invalidated_slot_is_repaired_by_resyncing() {
    let mut env = logical("wal_delivery_invalidated", &[("max_slot_wal_keep_size", "1MB"), ("wal_keep_size", "0")]);
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, n int); SELECT redis.sync_table('t', stream => false);
         CREATE TABLE filler (id serial, pad text);",
    );
    env.wait_synced();
    env.servers.redis.stop();
    env.sql("INSERT INTO t SELECT g, 1 FROM generate_series(1, 1000) g");
    // Push the slot's WAL out: several segments, then a checkpoint.
    for _ in 0..4 {
        env.sql(
            "INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 20000); SELECT pg_switch_wal();",
        );
    }
    env.sql("CHECKPOINT");
    let slot = slot_name(&mut env);
    let lost: String = one(
        &mut env,
        &format!("SELECT coalesce(wal_status, 'gone') FROM pg_replication_slots WHERE slot_name = '{slot}'"),
    );
    assert_eq!(lost, "lost", "the slot was invalidated");
    env.sql("DELETE FROM t WHERE id <= 10; UPDATE t SET n = 2 WHERE id > 990");
    env.servers.redis.start_again().expect("Redis starts again");
    env.redis = env.redis_client();
    wait_for(60, "the slot to be made again", || {
        let s: String = env
            .pg
            .query_one(
                &format!(
                    "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = '{slot}'), 'gone')"
                ),
                &[],
            )
            .unwrap()
            .get(0);
        s != "lost" && s != "gone"
    });
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn capture_follows_wal_level_across_restarts_with_nothing_lost() {
    // Starts with wal_level = replica: capture by trigger.
    let mut env = Env::start("wal_delivery_mode_switch");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, n int); SELECT redis.sync_table('t', stream => false);");
    let capture: String = one(&mut env, "SELECT capture FROM redis.mapping WHERE active");
    assert_eq!(capture, "trigger");
    env.sql("INSERT INTO t SELECT g, 0 FROM generate_series(1, 500) g");
    // Raise the level: the worker makes its slot and moves the table to WAL capture.
    env.sql("ALTER SYSTEM SET wal_level = logical");
    env.servers.pg.restart().expect("restart");
    env.pg = env.pg_client();
    env.sql("UPDATE t SET n = 1 WHERE id <= 100");
    wait_for(60, "the table to be captured from the WAL", || {
        let c: String = env.pg.query_one("SELECT capture FROM redis.mapping WHERE active", &[]).unwrap().get(0);
        c == "wal"
    });
    env.sql("UPDATE t SET n = 2 WHERE id > 400; DELETE FROM t WHERE id BETWEEN 200 AND 210");
    env.wait_synced();
    env.assert_consistent("t");
    // Back to the trigger: the worker converts the table, then drops its slot, after which
    // the server may start with a lower wal_level.
    env.sql("ALTER SYSTEM SET pg_redis.capture = 'trigger'");
    env.sql("SELECT pg_reload_conf()");
    let slot = slot_name(&mut env);
    wait_for(60, "the slot to be dropped", || {
        let n: i64 = env
            .pg
            .query_one("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .unwrap()
            .get(0);
        n == 0
    });
    env.sql("UPDATE t SET n = 3 WHERE id <= 50");
    env.sql("ALTER SYSTEM SET wal_level = replica");
    env.servers.pg.restart().expect("restart with wal_level = replica");
    env.pg = env.pg_client();
    let capture: String = one(&mut env, "SELECT capture FROM redis.mapping WHERE active");
    assert_eq!(capture, "trigger");
    env.sql("UPDATE t SET n = 4 WHERE id > 450");
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn wal_capture_demanded_without_logical_wal_is_refused_with_the_remedy() {
    let mut env = Env::with(Options {
        pg_settings: vec![("pg_redis.capture".into(), "wal".into())],
        ..Options::named("wal_delivery_refused")
    });
    env.sql("CREATE TABLE t (id int PRIMARY KEY)");
    let (state, msg) = env.sql_error("SELECT redis.sync_table('t')");
    assert_eq!(state, "55000");
    assert!(msg.contains("wal_level"), "{msg}");
}

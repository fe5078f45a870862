//! PostgreSQL → Redis sync against real servers: every committed change arrives, in order,
//! byte for byte what `to_jsonb(row)` gives; nothing of a rolled-back transaction arrives;
//! Redis or PostgreSQL failing loses nothing.

use pg_redis_shared::{ChangeEvent, Op};
use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::time::{Duration, Instant};

const TYPES_TABLE: &str = include_str!("types_table.sql");

#[test]
fn every_type_round_trips_in_both_formats() {
    let mut env = Env::start("sync_types");
    env.sql(TYPES_TABLE);
    env.sql("SELECT redis.sync_table('types')");
    env.wait_synced();
    env.assert_consistent("types");
    env.sql("UPDATE types SET tx = tx || '!', n = n * 2");
    env.wait_synced();
    env.assert_consistent("types");
    env.sql("SELECT redis.sync_table('types', format => 'hash')");
    env.wait_synced();
    env.assert_consistent("types");
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg("types:2").query(&mut env.redis).unwrap();
    assert!(!fields.iter().any(|(f, _)| f == "nul" || f == "i"), "NULL columns are omitted: {fields:?}");
    assert!(fields.contains(&("b".into(), "false".into())), "{fields:?}");
}

#[test]
fn insert_update_delete_key_change_truncate() {
    let mut env = Env::start("sync_crud");
    env.sql("CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ann'), (2, 'bob')");
    let queued: i64 = env.pg.query_one("SELECT redis.sync_table('users')", &[]).unwrap().get(0);
    assert_eq!(queued, 2);
    env.wait_synced();
    assert_eq!(env.get("users:1").as_deref(), Some(r#"{"id":1,"name":"ann"}"#));
    env.sql("INSERT INTO users VALUES (3, 'cy'); UPDATE users SET name = 'ANN' WHERE id = 1; DELETE FROM users WHERE id = 2; UPDATE users SET id = 30 WHERE id = 3");
    env.wait_synced();
    assert_eq!(env.get("users:1").as_deref(), Some(r#"{"id":1,"name":"ANN"}"#));
    assert_eq!(env.get("users:2"), None);
    assert_eq!(env.get("users:3"), None, "the old key of a changed primary key is removed");
    assert_eq!(env.get("users:30").as_deref(), Some(r#"{"id":30,"name":"cy"}"#));
    env.assert_consistent("users");
    env.sql("TRUNCATE users");
    env.wait_synced();
    let left: Vec<String> = redis::cmd("KEYS").arg("users:*").query(&mut env.redis).unwrap();
    assert!(left.is_empty(), "{left:?}");
    env.sql("INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 3000) g; TRUNCATE users; INSERT INTO users VALUES (7, 'after')");
    env.wait_synced();
    env.assert_consistent("users");
}

#[test]
fn rolled_back_work_pushes_nothing() {
    let mut env = Env::start("sync_rollback");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t')");
    env.sql("BEGIN; INSERT INTO t VALUES (1, 'x'); ROLLBACK");
    env.sql("BEGIN; INSERT INTO t VALUES (2, 'kept'); SAVEPOINT s; INSERT INTO t VALUES (3, 'undone'); UPDATE t SET v = 'undone' WHERE id = 2; ROLLBACK TO s; COMMIT");
    env.wait_synced();
    assert_eq!(env.get("t:1"), None);
    assert_eq!(env.get("t:3"), None);
    assert_eq!(env.get("t:2").as_deref(), Some(r#"{"v":"kept","id":2}"#));
    let len: i64 = redis::cmd("XLEN").arg("postgres.public.t").query(&mut env.redis).unwrap();
    assert_eq!(len, 1, "only the committed insert reached the stream");
    // Rows of the table (the worker may queue a command of its own meanwhile: moving the table
    // to WAL capture under wal_level = logical).
    let queued: i64 =
        env.pg.query_one("SELECT count(*) FROM redis.outbox WHERE mapping_id IS NOT NULL", &[]).unwrap().get(0);
    assert_eq!(queued, 0);
}

#[test]
fn unchanged_updates_produce_no_event() {
    let mut env = Env::start("sync_noop_update");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text, ignored text); SELECT redis.sync_table('t', columns => ARRAY['v'])");
    env.sql("INSERT INTO t VALUES (1, 'a', 'x')");
    env.wait_synced();
    env.sql("UPDATE t SET v = v; UPDATE t SET ignored = 'changed'");
    let queued: i64 =
        env.pg.query_one("SELECT count(*) FROM redis.outbox WHERE mapping_id IS NOT NULL", &[]).unwrap().get(0);
    assert_eq!(queued, 0, "updates that change no mapped column queue nothing");
    env.wait_synced();
    let events: i64 = redis::cmd("XLEN").arg("postgres.public.t").query(&mut env.redis).unwrap();
    assert_eq!(events, 1, "only the insert is an event (also when decoded from the WAL)");
    env.sql("UPDATE t SET v = 'b'");
    env.wait_synced();
    assert_eq!(env.get("t:1").as_deref(), Some(r#"{"v":"b"}"#), "only the mapped column is stored");
}

#[test]
fn columns_ttl_hash_and_composite_keys() {
    let mut env = Env::start("sync_options");
    env.sql(
        "CREATE TABLE order_items (order_id bigint, item_no int, sku text, qty int, note text, PRIMARY KEY (order_id, item_no));
         INSERT INTO order_items VALUES (7, 3, 'A:1', 2, NULL), (7, 4, 'B{2}', 1, 'gift')",
    );
    env.sql(
        "SELECT redis.sync_table('order_items', format => 'hash', ttl => 100, columns => ARRAY['sku', 'qty', 'note'])",
    );
    env.wait_synced();
    let fields: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("order_items:7:3").query(&mut env.redis).unwrap();
    assert_eq!(fields.get("sku").map(String::as_str), Some("A:1"));
    assert_eq!(fields.get("qty").map(String::as_str), Some("2"));
    assert!(!fields.contains_key("note") && !fields.contains_key("order_id"), "{fields:?}");
    let ttl: i64 = redis::cmd("TTL").arg("order_items:7:3").query(&mut env.redis).unwrap();
    assert!((90..=100).contains(&ttl), "ttl {ttl}");
    env.assert_consistent("order_items");
    // A custom template with a hash tag and a value needing escapes.
    env.sql("CREATE TABLE accounts (region text NOT NULL, id int NOT NULL, v text, PRIMARY KEY (region, id)); INSERT INTO accounts VALUES ('eu:west', 1, 'x')");
    env.sql("SELECT redis.sync_table('accounts', key => 'acct:{{region}}:{id}')");
    env.wait_synced();
    assert_eq!(env.get("acct:{eu%3Awest}:1").as_deref(), Some(r#"{"v":"x","id":1,"region":"eu:west"}"#));
    env.assert_consistent("accounts");
}

#[test]
fn stream_and_channel_carry_ordered_debezium_events() {
    let mut env = Env::start("sync_stream");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t', channel => 't_changes')");
    let mut sub = env.redis_client();
    let mut pubsub = sub.as_pubsub();
    pubsub.subscribe("t_changes").unwrap();
    pubsub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    env.sql("INSERT INTO t VALUES (1, 'a'); UPDATE t SET v = 'b'; UPDATE t SET id = 2; DELETE FROM t; INSERT INTO t VALUES (5, 'x'); TRUNCATE t");
    env.wait_synced();
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg("postgres.public.t").arg("-").arg("+").query(&mut env.redis).unwrap();
    let events: Vec<(String, ChangeEvent)> = entries
        .iter()
        .map(|(_, fields)| {
            let key = fields.iter().find(|(f, _)| f == "key").map(|(_, v)| v.clone()).unwrap();
            let value = fields.iter().find(|(f, _)| f == "value").map(|(_, v)| v.clone()).unwrap();
            (key, serde_json::from_str(&value).unwrap())
        })
        .collect();
    let ops: Vec<(&str, Op)> = events.iter().map(|(k, e)| (k.as_str(), e.op)).collect();
    assert_eq!(
        ops,
        vec![
            ("t:1", Op::Create),
            ("t:1", Op::Update),
            ("t:1", Op::Delete),
            ("t:2", Op::Create),
            ("t:2", Op::Delete),
            ("t:5", Op::Create),
            ("", Op::Truncate)
        ]
    );
    let upd = &events[1].1;
    assert_eq!(serde_json::to_string(&upd.before).unwrap(), r#"{"v":"a","id":1}"#);
    assert_eq!(serde_json::to_string(&upd.after).unwrap(), r#"{"v":"b","id":1}"#);
    assert_eq!(
        (upd.source.db.as_str(), upd.source.schema.as_str(), upd.source.table.as_str()),
        ("postgres", "public", "t")
    );
    let seqs: Vec<i64> = events.iter().map(|(_, e)| e.source.sequence.parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "capture order: {seqs:?}");
    // The channel got the same events.
    let first: String = pubsub.get_message().unwrap().get_payload().unwrap();
    let ev: ChangeEvent = serde_json::from_str(&first).unwrap();
    assert_eq!(ev.op, Op::Create);
}

#[test]
fn wakes_within_milliseconds_of_commit() {
    let mut env = Env::start("sync_latency");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v int); SELECT redis.sync_table('t', stream => false)");
    env.wait_synced();
    let mut lat = Vec::new();
    for i in 0..200 {
        let t0 = Instant::now();
        env.pg.execute("INSERT INTO t VALUES ($1, $1)", &[&i]).unwrap();
        let key = format!("t:{i}");
        while env.get(&key).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(5), "{key} never arrived");
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    let p50 = lat[lat.len() / 2];
    eprintln!("commit → visible: p50 {:?}, p99 {:?}", p50, lat[lat.len() * 99 / 100]);
    assert!(p50 < Duration::from_millis(100), "the worker is not woken at commit: p50 {p50:?}");
}

#[test]
fn redis_killed_during_writes_loses_nothing() {
    let mut env = Env::start("sync_redis_killed");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v int); SELECT redis.sync_table('t')");
    env.sql("ALTER SYSTEM SET pg_redis.retry_max_ms = 500");
    env.sql("SELECT pg_reload_conf()");
    let url = env.servers.pg.url("postgres");
    let writer = std::thread::spawn(move || {
        let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for i in 0..10_000 {
            pg.execute("INSERT INTO t VALUES ($1, $1) ON CONFLICT (id) DO UPDATE SET v = t.v + 1", &[&(i % 2500)])
                .unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    env.servers.redis.kill();
    // While Redis is down, changes queue up and the status says why.
    let t0 = Instant::now();
    loop {
        let err: Option<String> = env
            .pg
            .query_one("SELECT last_error FROM redis.status WHERE table_name = 't'::regclass", &[])
            .unwrap()
            .get(0);
        if err.is_some_and(|e| e.contains("unavailable") || e.contains("Redis")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "status never showed the Redis error: {:?}",
            check::status(&mut env.pg)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    env.servers.redis.start_again().unwrap();
    writer.join().unwrap();
    env.redis = env.redis_client();
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn postgres_crash_with_queued_events_loses_nothing() {
    let mut env = Env::start("sync_pg_crash");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v int); SELECT redis.sync_table('t')");
    env.servers.redis.pause(true);
    env.sql("ALTER SYSTEM SET pg_redis.command_timeout_ms = 200");
    env.sql("SELECT pg_reload_conf()");
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(1, 5000) g");
    let queued: i64 = env.pg.query_one("SELECT count(*) FROM redis.outbox", &[]).unwrap().get(0);
    assert!(queued > 0);
    env.servers.pg.crash_restart().unwrap();
    env.servers.redis.pause(false);
    env.pg = env.pg_client();
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn concurrent_writers_converge() {
    let mut env = Env::start("sync_concurrent");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v bigint); INSERT INTO t SELECT g, 0 FROM generate_series(1, 50) g; SELECT redis.sync_table('t')");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = env.servers.pg.url("postgres");
            std::thread::spawn(move || {
                let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                for i in 0..500 {
                    let id = (i * 7 + w * 13) % 50 + 1;
                    match i % 10 {
                        0 => pg.execute("DELETE FROM t WHERE id = $1", &[&id]).map(|_| ()),
                        1 => pg.execute("INSERT INTO t VALUES ($1, 0) ON CONFLICT DO NOTHING", &[&id]).map(|_| ()),
                        _ => pg.execute("UPDATE t SET v = v + 1 WHERE id = $1", &[&id]).map(|_| ()),
                    }
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn bad_input_is_refused_clearly() {
    let mut env = Env::start("sync_rejects");
    env.sql(
        "CREATE TABLE users (id int PRIMARY KEY, name text, maybe int UNIQUE, tag text NOT NULL DEFAULT 'x');
         CREATE TABLE nopk (a int, b int);
         CREATE VIEW v AS SELECT * FROM users;
         CREATE ROLE someone LOGIN;
         GRANT USAGE ON SCHEMA redis TO someone; GRANT EXECUTE ON FUNCTION redis.sync_table TO someone;",
    );
    let cases: &[(&str, &str, &str)] = &[
        ("SELECT redis.sync_table('missing')", "42P01", "missing"),
        ("SELECT redis.sync_table('nopk')", "22023", "nopk has no primary key"),
        ("SELECT redis.sync_table('v')", "42809", "v is a view"),
        ("SELECT redis.sync_table('users', format => 'xml')", "22023", "\"xml\""),
        ("SELECT redis.sync_table('users', ttl => 0)", "22023", "ttl 0"),
        ("SELECT redis.sync_table('users', columns => ARRAY['nope'])", "42703", "\"nope\""),
        ("SELECT redis.sync_table('users', key => 'u:{nope}')", "42703", "\"nope\""),
        ("SELECT redis.sync_table('users', key => 'u:{maybe}')", "22023", "\"maybe\""),
        ("SELECT redis.sync_table('users', key => 'u:{tag}')", "22023", "not unique"),
        ("SELECT redis.sync_table('users', key => '{id}')", "22023", "literal text"),
        ("SELECT redis.sync_table('users', key => 'u:{id')", "22023", "never closed"),
        ("SELECT redis.sync_table('users', key => 'pg_redis:{id}')", "22023", "pg_redis itself"),
        ("SELECT redis.unsync_table('users')", "42704", "not synced"),
        ("SELECT redis.resync('users')", "42704", "not synced"),
    ];
    for (sql, code, needle) in cases {
        let (got_code, msg) = env.sql_error(sql);
        assert_eq!((&got_code.as_str(), msg.contains(needle)), (code, true), "{sql}: {got_code} {msg}");
    }
    env.sql("SELECT redis.sync_table('users')");
    env.sql("CREATE TABLE users2 (id int PRIMARY KEY)");
    let (code, msg) = env.sql_error("SELECT redis.sync_table('users2', key => 'users:x:{id}')");
    assert_eq!(code, "22023");
    assert!(msg.contains("overlap"), "{msg}");
    // Not the owner.
    let mut someone = postgres::Client::connect(
        &format!("host=127.0.0.1 port={} user=someone dbname=postgres", env.servers.pg.port),
        postgres::NoTls,
    )
    .unwrap();
    let err = someone.batch_execute("SELECT redis.sync_table('users2')").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    // The backend is fine after all of it.
    let one: i32 = env.pg.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

#[test]
fn resync_repairs_drift_and_unsync_purges() {
    let mut env = Env::start("sync_resync");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g; SELECT redis.sync_table('t')");
    env.wait_synced();
    let _: () = redis::cmd("DEL").arg("t:5").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("SET").arg("t:6").arg("stale").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("SET").arg("t:1000").arg("orphan").query(&mut env.redis).unwrap();
    assert!(!check::divergence(&mut env.pg, &mut env.redis, "t").is_empty());
    let n: i64 = env.pg.query_one("SELECT redis.resync('t')", &[]).unwrap().get(0);
    assert_eq!(n, 100);
    env.wait_synced();
    env.assert_consistent("t");
    env.sql("SELECT redis.unsync_table('t', purge => true)");
    env.wait_synced();
    let left: Vec<String> = redis::cmd("KEYS").arg("t:*").query(&mut env.redis).unwrap();
    assert!(left.is_empty(), "{left:?}");
    env.sql("INSERT INTO t VALUES (500, 'not synced any more')");
    env.wait_synced();
    assert_eq!(env.get("t:500"), None);
}

#[test]
fn settings_change_with_reload() {
    let mut env = Env::start("sync_reload");
    env.sql("CREATE TABLE t (id int PRIMARY KEY); SELECT redis.sync_table('t', stream => false)");
    // Point the worker at a Redis that is not there: events queue up.
    env.sql("ALTER SYSTEM SET pg_redis.url = 'redis://127.0.0.1:1/0'");
    env.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    env.sql("INSERT INTO t VALUES (1)");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.get("t:1"), None);
    // Back to the real one, without a restart.
    env.sql("ALTER SYSTEM RESET pg_redis.url");
    env.sql("SELECT pg_reload_conf()");
    env.wait_synced();
    assert!(env.get("t:1").is_some());
}

#[test]
fn works_with_plain_redis_without_the_module() {
    let mut opts = Options::named("sync_plain_redis");
    opts.without_module = true;
    let mut env = Env::with(opts);
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'); SELECT redis.sync_table('t')");
    env.sql("UPDATE t SET v = 'b'");
    env.wait_synced();
    env.assert_consistent("t");
}

#[test]
fn partitioned_tables_sync_every_partition() {
    let mut env = Env::start("sync_partitioned");
    env.sql(
        "CREATE TABLE m (id int, day date, v text, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
         CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         INSERT INTO m VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b');
         SELECT redis.sync_table('m');
         INSERT INTO m VALUES (3, '2025-06-01', 'c'); UPDATE m SET day = '2025-02-02' WHERE id = 1;",
    );
    env.wait_synced();
    env.assert_consistent("m");
}

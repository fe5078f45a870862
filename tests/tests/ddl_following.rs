//! Sync follows DDL and replication roles: after each scenario the keys in Redis are exactly
//! the rows of the synced table, byte for byte, and delivery keeps running.
//! - changes applied with `session_replication_role = replica` are captured;
//! - partitions created, attached, detached (also CONCURRENTLY) and dropped, nested too;
//! - renames of key and stored columns while writers run;
//! - databases copied with CREATE DATABASE ... TEMPLATE do not write the original's keys;
//! - DROP DATABASE and CREATE DATABASE ... TEMPLATE that are refused leave delivery running.

use pg_redis_tests::{check, Env};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn synced(env: &mut Env, table: &str) {
    env.wait_synced();
    env.assert_consistent(table);
}

fn count(pg: &mut postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

fn keys(r: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg(pattern).query(r).unwrap();
    k.sort();
    k
}

/// Waits until `f` holds, or fails with `what`.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < within, "{what} (waited {within:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PARTITIONED: &str = "
    CREATE TABLE m (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
    CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1);
    CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
    CREATE TABLE m3 PARTITION OF m FOR VALUES IN (3) PARTITION BY RANGE (id);
    CREATE TABLE m3a PARTITION OF m3 FOR VALUES FROM (MINVALUE) TO (50);
    CREATE TABLE m3b PARTITION OF m3 FOR VALUES FROM (50) TO (MAXVALUE);
    INSERT INTO m SELECT g, 1 + g % 3, 'v' || g FROM generate_series(1, 120) g;";

#[test]
fn changes_applied_as_a_replica_are_captured() {
    let mut env = Env::start("ddl_replica_role");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT redis.sync_table('t')");
    env.sql(PARTITIONED);
    env.sql("SELECT redis.sync_table('m')");
    synced(&mut env, "t");
    env.sql("SET session_replication_role = replica");
    env.sql("INSERT INTO t VALUES (3, 'c'); UPDATE t SET v = 'A' WHERE id = 1; DELETE FROM t WHERE id = 2");
    synced(&mut env, "t");
    assert_eq!(env.get("t:1").as_deref(), Some(r#"{"v":"A","id":1}"#));
    env.sql("TRUNCATE t; INSERT INTO t VALUES (9, 'after')");
    synced(&mut env, "t");
    // Partitions, nested ones, and one created after sync_table (while a replica, too).
    env.sql("INSERT INTO m VALUES (500, 1, 'n'), (40, 3, 'n'), (60, 3, 'n'); UPDATE m SET v = 'u' WHERE id < 30; DELETE FROM m WHERE id BETWEEN 30 AND 35");
    synced(&mut env, "m");
    env.sql("TRUNCATE m2; TRUNCATE m3b");
    synced(&mut env, "m");
    env.sql("CREATE TABLE m4 PARTITION OF m FOR VALUES IN (4); INSERT INTO m SELECT g, 4, 'four' FROM generate_series(1, 20) g; UPDATE m SET v = 'x' WHERE part = 4 AND id < 5");
    synced(&mut env, "m");
    env.sql("TRUNCATE m4");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*:4").is_empty());
    env.sql("TRUNCATE m");
    synced(&mut env, "m");
    env.sql("SET session_replication_role = origin");
}

#[test]
fn partitions_leaving_take_their_keys() {
    let mut env = Env::start("ddl_partitions_leave");
    env.sql(PARTITIONED);
    env.sql("SELECT redis.sync_table('m')");
    synced(&mut env, "m");
    // A DROP that rolls back leaves everything as it was.
    env.sql("BEGIN; DROP TABLE m1; ROLLBACK");
    synced(&mut env, "m");
    assert_eq!(keys(&mut env.redis, "m:*:1").len(), 40);
    env.sql("ALTER TABLE m DETACH PARTITION m1");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*:1").is_empty());
    // The detached table is on its own: its changes and its TRUNCATE are not the synced table's.
    env.sql("INSERT INTO m1 VALUES (1000, 1, 'alone'); TRUNCATE m1");
    synced(&mut env, "m");
    env.sql("DROP TABLE m2");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*:2").is_empty());
    // A sub-partition, then a whole sub-partitioned partition.
    env.sql("DROP TABLE m3a");
    synced(&mut env, "m");
    env.sql("DROP TABLE m3");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*").is_empty());
    env.sql("CREATE TABLE m5 PARTITION OF m FOR VALUES IN (5); INSERT INTO m SELECT g, 5, 'five' FROM generate_series(1, 30) g");
    synced(&mut env, "m");
    env.sql("ALTER TABLE m DETACH PARTITION m5 CONCURRENTLY");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*").is_empty());
    let dead = count(&mut env.pg, "SELECT count(*) FROM redis.dead_letter");
    assert_eq!(dead, 0);
}

#[test]
fn partitions_joining_bring_their_rows() {
    let mut env = Env::start("ddl_partitions_join");
    env.sql(PARTITIONED);
    env.sql("SELECT redis.sync_table('m')");
    synced(&mut env, "m");
    // A table that already holds rows, attached: its rows are pushed, its TRUNCATE captured.
    env.sql("CREATE TABLE m6 (id int, part int, v text, PRIMARY KEY (id, part)); INSERT INTO m6 SELECT g, 6, 'six' FROM generate_series(1, 25) g");
    env.sql("ALTER TABLE m ATTACH PARTITION m6 FOR VALUES IN (6)");
    synced(&mut env, "m");
    assert_eq!(keys(&mut env.redis, "m:*:6").len(), 25);
    env.sql("UPDATE m SET v = 'changed' WHERE part = 6 AND id < 10");
    synced(&mut env, "m");
    env.sql("TRUNCATE m6");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*:6").is_empty());
    // A sub-partitioned table with rows, attached as a whole.
    env.sql(
        "CREATE TABLE m7 (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY RANGE (id);
         CREATE TABLE m7a PARTITION OF m7 FOR VALUES FROM (MINVALUE) TO (10);
         CREATE TABLE m7b PARTITION OF m7 FOR VALUES FROM (10) TO (MAXVALUE);
         INSERT INTO m7 SELECT g, 7, 'seven' FROM generate_series(1, 20) g;
         ALTER TABLE m ATTACH PARTITION m7 FOR VALUES IN (7);",
    );
    synced(&mut env, "m");
    env.sql("TRUNCATE m7b");
    synced(&mut env, "m");
    assert_eq!(keys(&mut env.redis, "m:*:7").len(), 9);
    // Detached, then attached again: its rows leave and come back.
    env.sql("ALTER TABLE m DETACH PARTITION m1; UPDATE m1 SET v = 'while away'; ALTER TABLE m ATTACH PARTITION m1 FOR VALUES IN (1)");
    synced(&mut env, "m");
    env.sql("TRUNCATE m1");
    synced(&mut env, "m");
    // An attach that rolls back pushes nothing.
    env.sql("CREATE TABLE m8 (id int, part int, v text, PRIMARY KEY (id, part)); INSERT INTO m8 VALUES (1, 8, 'no')");
    env.sql("BEGIN; ALTER TABLE m ATTACH PARTITION m8 FOR VALUES IN (8); ROLLBACK");
    synced(&mut env, "m");
    assert!(keys(&mut env.redis, "m:*:8").is_empty());
}

/// A writer that keeps inserting and updating `users` by whichever column names the table has.
fn writer(env: &Env, stop: Arc<AtomicBool>, base: i32) -> std::thread::JoinHandle<u64> {
    let mut pg = env.pg_client();
    std::thread::spawn(move || {
        let mut n = 0u64;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let id = base + i % 500;
            let done = pg.execute("INSERT INTO users VALUES ($1, 'w', 'e') ON CONFLICT DO NOTHING", &[&id]).is_ok()
                && (pg.execute("UPDATE users SET name = name || '.' WHERE id = $1", &[&id]).is_ok()
                    || pg.execute("UPDATE users SET full_name = full_name || '.' WHERE uid = $1", &[&id]).is_ok());
            n += done as u64;
            i += 1;
        }
        n
    })
}

#[test]
fn renamed_key_and_stored_columns_keep_flowing() {
    let mut env = Env::start("ddl_renames");
    env.sql(
        "CREATE TABLE users (id int PRIMARY KEY, name text, email text); INSERT INTO users SELECT g, 'n' || g, 'e' || g FROM generate_series(1, 200) g;
         CREATE TABLE items (sku text PRIMARY KEY, qty int, note text); INSERT INTO items SELECT 's' || g, g, 'x' FROM generate_series(1, 50) g;
         SELECT redis.sync_table('users'); SELECT redis.sync_table('items', format => 'hash', columns => ARRAY['qty']);",
    );
    synced(&mut env, "users");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2).map(|w| writer(&env, stop.clone(), 1000 * (w + 1))).collect();
    std::thread::sleep(Duration::from_millis(300));
    env.sql("ALTER TABLE users RENAME COLUMN id TO uid");
    std::thread::sleep(Duration::from_millis(200));
    env.sql("ALTER TABLE users RENAME name TO full_name");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(written > 10, "the writers wrote {written} times");
    synced(&mut env, "users");
    let template: String =
        env.pg.query_one("SELECT key_template FROM redis.tables WHERE rel_name = 'users'", &[]).unwrap().get(0);
    assert_eq!(template, "users:{uid}");
    assert_eq!(env.get("users:7").as_deref(), Some(r#"{"uid":7,"email":"e7","full_name":"n7"}"#));
    // The key column and the stored column of a hash table.
    env.sql("ALTER TABLE items RENAME COLUMN sku TO code; ALTER TABLE items RENAME COLUMN qty TO quantity; UPDATE items SET quantity = quantity + 1 WHERE code = 's1'");
    synced(&mut env, "items");
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg("items:s1").query(&mut env.redis).unwrap();
    assert_eq!(fields, vec![("quantity".to_string(), "2".to_string())]);
    // A column the mapping does not store: nothing changes.
    env.sql("ALTER TABLE items RENAME COLUMN note TO remark; UPDATE items SET remark = 'y'");
    synced(&mut env, "items");
    assert_eq!(count(&mut env.pg, "SELECT count(*) FROM redis.dead_letter"), 0, "no change was parked");
    // Read-through builds its SQL from the renamed mapping.
    for (key, want) in [("users:7", r#"{"uid":7,"email":"e7","full_name":"n7"}"#), ("users:1000", "")] {
        let _: () = redis::cmd("DEL").arg(key).query(&mut env.redis).unwrap();
        let got = (|| {
            let t0 = Instant::now();
            loop {
                match redis::cmd("PG.GET").arg(key).query::<Option<String>>(&mut env.redis) {
                    Ok(v) => return v,
                    Err(e) => {
                        assert!(t0.elapsed() < Duration::from_secs(5), "read-through of {key} after the rename: {e}")
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })();
        let want = if want.is_empty() {
            env.pg
                .query_one("SELECT to_jsonb(u)::text FROM users u WHERE uid = 1000", &[])
                .unwrap()
                .get::<_, String>(0)
                .replace(": ", ":")
                .replace(", ", ",")
        } else {
            want.to_string()
        };
        assert_eq!(got.as_deref(), Some(want.as_str()), "{key}");
    }
    let _: () = redis::cmd("DEL").arg("items:s2").query(&mut env.redis).unwrap();
    let h: std::collections::BTreeMap<String, String> =
        redis::cmd("PG.GET").arg("items:s2").query(&mut env.redis).unwrap();
    assert_eq!(h.get("quantity").map(String::as_str), Some("2"));
    check::wait_synced(&mut env.pg, 10_000);
    env.assert_consistent("users");
}

/// A second database `app` with the extension and a synced table `t`, its own connection.
fn app_database(env: &mut Env) -> postgres::Client {
    env.sql("CREATE DATABASE app");
    let mut app = env.servers.pg.connect("app").unwrap();
    app.batch_execute("CREATE EXTENSION pg_redis; CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'app' FROM generate_series(1, 20) g; SELECT redis.sync_table('t')").unwrap();
    check::wait_synced(&mut app, 20_000);
    app
}

fn status_of(pg: &mut postgres::Client) -> (Option<String>, Option<String>) {
    let r = pg.query_one("SELECT state, last_error FROM redis.worker_status()", &[]).unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn a_template_copy_leaves_the_original_keys_alone() {
    let mut env = Env::start("ddl_template_copy");
    let mut app = app_database(&mut env);
    check::assert_consistent(&mut app, &mut env.redis, "t");
    // Events wait in the outbox while Redis is away; the copy gets them too.
    env.servers.redis.stop();
    app.batch_execute("UPDATE t SET v = 'queued' WHERE id <= 5").unwrap();
    drop(app);
    env.sql("CREATE DATABASE copy TEMPLATE app");
    env.servers.redis.start_again().unwrap();
    let mut redis = env.redis_client();
    let mut app = env.servers.pg.connect("app").unwrap();
    let mut copy = env.servers.pg.connect("copy").unwrap();
    copy.batch_execute("UPDATE t SET v = 'copy'; INSERT INTO t VALUES (100, 'copy only')").unwrap();
    app.batch_execute("UPDATE t SET v = 'app later' WHERE id = 20").unwrap();
    check::wait_synced(&mut app, 20_000);
    // The copy says why it does not deliver.
    eventually("the copy's worker reports the pause", Duration::from_secs(10), || {
        status_of(&mut copy).0.as_deref() == Some("paused: copied database")
    });
    let (_, why) = status_of(&mut copy);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("copy of database \"app\"") && w.contains("redis.adopt_copy()")),
        "{why:?}"
    );
    let last_error: Option<String> =
        copy.query_one("SELECT last_error FROM redis.status WHERE table_name = 't'::regclass", &[]).unwrap().get(0);
    assert!(last_error.is_some_and(|e| e.contains("adopt_copy")));
    std::thread::sleep(Duration::from_secs(1));
    check::assert_consistent(&mut app, &mut redis, "t");
    let get = |r: &mut redis::Connection, k: &str| redis::cmd("GET").arg(k).query::<Option<String>>(r).unwrap();
    assert_eq!(get(&mut redis, "t:1").as_deref(), Some(r#"{"v":"queued","id":1}"#));
    assert_eq!(get(&mut redis, "t:100"), None);
    if count(&mut copy, "SELECT count(*) FROM redis.mapping WHERE active AND capture = 'wal'") == 0 {
        assert!(count(&mut copy, "SELECT count(*) FROM redis.outbox") > 0, "the copy keeps its outbox");
    }
    // Captured from the WAL, the copy's changes wait in its WAL: the copy has no slot until its
    // worker delivers (a slot is not copied), and makes one then, resyncing every table.
    // Adopted, pointed at its own Redis database: the copy delivers there, in full.
    let e = copy.batch_execute("SET ROLE pg_monitor; SELECT redis.adopt_copy()").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "42501"), "{e}");
    copy.batch_execute("RESET ROLE").unwrap();
    let url = env.servers.redis.url().replace("/0", "/1");
    copy.batch_execute(&format!("ALTER DATABASE copy SET pg_redis.url = '{url}'; SELECT redis.adopt_copy()")).unwrap();
    let mut copy = env.servers.pg.connect("copy").unwrap();
    eventually("the adopted copy delivers", Duration::from_secs(20), || {
        copy.query_one("SELECT redis.wait_synced(1000)", &[]).unwrap().get::<_, bool>(0)
    });
    let mut db1 = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    check::assert_consistent(&mut copy, &mut db1, "t");
    check::assert_consistent(&mut app, &mut redis, "t");
}

/// A change in `app` reaches Redis within seconds.
fn still_delivering(app: &mut postgres::Client, redis: &mut redis::Connection, value: &str) {
    app.execute("UPDATE t SET v = $1 WHERE id = 1", &[&value]).unwrap();
    let want = format!(r#"{{"v":"{value}","id":1}}"#);
    eventually(
        &format!("a change after the refused statement ({value}) reached Redis"),
        Duration::from_secs(8),
        || redis::cmd("GET").arg("t:1").query::<Option<String>>(redis).unwrap().as_deref() == Some(want.as_str()),
    );
}

#[test]
fn refused_database_statements_leave_delivery_running() {
    let mut env = Env::start("ddl_refused_dropdb");
    let mut app = app_database(&mut env);
    let mut redis = env.redis_client();
    // (a) not the owner
    env.sql("CREATE ROLE intruder LOGIN CREATEDB");
    // (Each DROP DATABASE goes alone: several statements in one query are one transaction.)
    env.sql("SET ROLE intruder");
    let e = env.pg.batch_execute("DROP DATABASE app").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "42501"), "{e:?}");
    env.sql("RESET ROLE");
    still_delivering(&mut app, &mut redis, "after non-owner");
    // (b) another session is connected (the app connection)
    let e = env.pg.batch_execute("DROP DATABASE app").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "55006"), "{e:?}");
    still_delivering(&mut app, &mut redis, "after open sessions");
    // (c) inside a transaction block
    let e = env.pg.batch_execute("BEGIN; DROP DATABASE app").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "25001"), "{e:?}");
    env.sql("ROLLBACK");
    still_delivering(&mut app, &mut redis, "after a transaction block");
    // CREATE DATABASE ... TEMPLATE refused: the template is in use, then the name is taken.
    let e = env.pg.batch_execute("CREATE DATABASE copy TEMPLATE app").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "55006"), "{e:?}");
    still_delivering(&mut app, &mut redis, "after a refused copy");
    let e = env.pg.batch_execute("CREATE DATABASE postgres TEMPLATE app").unwrap_err();
    assert!(e.as_db_error().is_some_and(|d| d.code().code() == "42P04"), "{e:?}");
    still_delivering(&mut app, &mut redis, "after a taken name");
    check::wait_synced(&mut app, 10_000);
    check::assert_consistent(&mut app, &mut redis, "t");
}

#[test]
fn a_database_made_from_a_template_database_delivers_at_once() {
    let mut env = Env::start("ddl_template1");
    let mut t1 = env.servers.pg.connect("template1").unwrap();
    t1.batch_execute("CREATE EXTENSION pg_redis").unwrap();
    drop(t1);
    let t0 = Instant::now();
    while env.pg.batch_execute("CREATE DATABASE fresh").is_err() {
        assert!(t0.elapsed() < Duration::from_secs(10), "template1 stayed in use");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut fresh = env.servers.pg.connect("fresh").unwrap();
    fresh.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'fresh'); SELECT redis.sync_table('t')").unwrap();
    check::wait_synced(&mut fresh, 20_000);
    check::assert_consistent(&mut fresh, &mut env.redis, "t");
    let (state, _) = status_of(&mut fresh);
    assert_ne!(state.as_deref(), Some("paused: copied database"));
}

//! A catalog of awkward inputs: each gives a clear error or works, nothing crashes, nothing is
//! lost, and the worker never stalls on it.

use pg_redis_shared::Encoded;
use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn ten_megabyte_rows() {
    let mut env = Env::start("bad_big_rows");
    env.sql("CREATE TABLE big (id int PRIMARY KEY, blob text); INSERT INTO big VALUES (1, repeat('x', 10000000)); SELECT redis.sync_table('big', stream => false)");
    env.sql(
        "UPDATE big SET blob = repeat('y', 10000000) WHERE id = 1; INSERT INTO big VALUES (2, repeat('z', 10000000))",
    );
    env.wait_synced();
    env.assert_consistent("big");
    let _: () = redis::cmd("DEL").arg("big:2").query(&mut env.redis).unwrap();
    env.wait_mappings(1);
    let v: String = redis::cmd("PG.GET").arg("big:2").query(&mut env.redis).unwrap();
    assert_eq!(v.len(), 10_000_000 + r#"{"id":2,"blob":""}"#.len());
}

#[test]
fn sixteen_hundred_columns() {
    let mut env = Env::start("bad_wide");
    let cols: Vec<String> = (1..1600).map(|i| format!("c{i} int DEFAULT {i}")).collect();
    env.sql(&format!("CREATE TABLE wide (id int PRIMARY KEY, {})", cols.join(", ")));
    env.sql("INSERT INTO wide (id) SELECT g FROM generate_series(1, 20) g; SELECT redis.sync_table('wide')");
    env.sql("UPDATE wide SET c1599 = 0 WHERE id = 3");
    env.wait_synced();
    env.assert_consistent("wide");
    env.sql("SELECT redis.sync_table('wide', format => 'hash')");
    env.wait_synced();
    env.assert_consistent("wide");
}

#[test]
fn awkward_key_values_round_trip() {
    let mut env = Env::start("bad_odd_keys");
    env.sql("CREATE TABLE odd (k text PRIMARY KEY, v text)");
    let values = [
        "a:b",
        "{x}",
        "}",
        "{",
        "q\"uote",
        "it's",
        "sp ace",
        "☃ ü 🎉",
        "users:1; DROP TABLE users",
        "%3A",
        "%",
        "",
        "\\",
        "new\nline",
        "tab\tx",
    ];
    let mut pg = env.pg_client();
    for v in values {
        pg.execute("INSERT INTO odd VALUES ($1, $1)", &[&v]).unwrap();
    }
    env.sql("SELECT redis.sync_table('odd', backfill => false)");
    env.wait_synced();
    env.wait_mappings(1);
    let m = check::mapping_of(&mut env.pg, "odd");
    for v in values {
        let key = m.key.render_values(&[v]).unwrap();
        let got: Option<String> =
            redis::cmd("PG.GET").arg(&key).query(&mut env.redis).unwrap_or_else(|e| panic!("{key}: {e}"));
        let want = m
            .encode_text(
                &env.pg
                    .query_one("SELECT to_jsonb(t)::text FROM odd t WHERE k = $1", &[&v])
                    .unwrap()
                    .get::<_, String>(0),
            )
            .unwrap()
            .1;
        assert_eq!(got.map(Encoded::Json), Some(want), "{key:?}");
    }
    env.sql("SELECT redis.resync('odd')");
    env.wait_synced();
    env.assert_consistent("odd");
    env.sql("DELETE FROM odd WHERE k IN ('a:b', '{x}', 'users:1; DROP TABLE users')");
    env.wait_synced();
    env.assert_consistent("odd");
    let still_there: i64 = env.pg.query_one("SELECT count(*) FROM odd", &[]).unwrap().get(0);
    assert_eq!(still_there, values.len() as i64 - 3);
}

#[test]
fn objects_that_cannot_be_synced_are_refused() {
    let mut env = Env::start("bad_kinds");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t; CREATE MATERIALIZED VIEW mv AS SELECT * FROM t;
         CREATE SEQUENCE s; CREATE EXTENSION postgres_fdw; CREATE SERVER srv FOREIGN DATA WRAPPER postgres_fdw;
         CREATE FOREIGN TABLE ft (id int) SERVER srv; CREATE TEMP TABLE tmp (id int PRIMARY KEY);",
    );
    for (obj, what) in [
        ("v", "a view"),
        ("mv", "a materialized view"),
        ("s", "a sequence"),
        ("ft", "a foreign table"),
        ("tmp", "temporary table"),
    ] {
        let (code, msg) = env.sql_error(&format!("SELECT redis.sync_table('{obj}')"));
        assert_eq!(code, "42809", "{obj}: {msg}");
        assert!(msg.contains(what), "{obj}: {msg}");
    }
}

#[test]
fn unlogged_tables_are_synced_with_a_warning() {
    let env = Env::start("bad_unlogged");
    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = notices.clone();
    let mut pg = env
        .servers
        .pg
        .url("postgres")
        .parse::<postgres::Config>()
        .unwrap()
        .notice_callback(move |n| sink.lock().unwrap().push(n.message().to_owned()))
        .connect(postgres::NoTls)
        .unwrap();
    pg.batch_execute("CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (1, 'a'); SELECT redis.sync_table('u')").unwrap();
    let seen = notices.lock().unwrap().clone();
    assert!(seen.iter().any(|n| n.contains("UNLOGGED") && n.contains("resync")), "{seen:?}");
    check::wait_synced(&mut pg, 10_000);
    let mut r = env.redis_client();
    check::assert_consistent(&mut pg, &mut r, "u");
}

#[test]
fn other_schemas_and_quoted_names() {
    let mut env = Env::start("bad_quoted");
    env.sql(r#"CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."My Table" ("Id" int PRIMARY KEY, "Full Name" text); INSERT INTO "Sales"."My Table" VALUES (1, 'a'), (2, 'b')"#);
    env.sql(r#"SELECT redis.sync_table('"Sales"."My Table"')"#);
    env.sql(r#"UPDATE "Sales"."My Table" SET "Full Name" = 'c' WHERE "Id" = 2"#);
    env.wait_synced();
    assert_eq!(env.get("Sales.My Table:2").as_deref(), Some(r#"{"Id":2,"Full Name":"c"}"#));
    env.assert_consistent("My Table");
    let _: () = redis::cmd("DEL").arg("Sales.My Table:1").query(&mut env.redis).unwrap();
    env.wait_mappings(1);
    let v: Option<String> = redis::cmd("PG.GET").arg("Sales.My Table:1").query(&mut env.redis).unwrap();
    assert_eq!(v.as_deref(), Some(r#"{"Id":1,"Full Name":"a"}"#));
}

#[test]
fn partitions_are_captured_and_truncated_alone() {
    let mut env = Env::start("bad_partitions");
    env.sql(
        "CREATE TABLE m (id int, part int, v text, PRIMARY KEY (id, part)) PARTITION BY LIST (part);
         CREATE TABLE m1 PARTITION OF m FOR VALUES IN (1); CREATE TABLE m2 PARTITION OF m FOR VALUES IN (2);
         INSERT INTO m SELECT g, 1 + g % 2, 'v' FROM generate_series(1, 100) g; SELECT redis.sync_table('m');",
    );
    env.sql("UPDATE m SET v = 'w' WHERE id < 10; TRUNCATE m1");
    env.wait_synced();
    env.assert_consistent("m");
    let left: i64 = env.pg.query_one("SELECT count(*) FROM m", &[]).unwrap().get(0);
    assert_eq!(left, 50);
    env.sql("TRUNCATE m");
    env.wait_synced();
    env.assert_consistent("m");
}

#[test]
fn renamed_dropped_and_altered_tables() {
    let mut env = Env::start("bad_ddl");
    env.sql(
        "CREATE TABLE a (id int PRIMARY KEY, x text, y text, code text NOT NULL UNIQUE); INSERT INTO a VALUES (1, 'x', 'y', 'c1'), (2, 'x', 'y', 'c2');
         CREATE TABLE b (id int PRIMARY KEY); INSERT INTO b VALUES (1);
         SELECT redis.sync_table('a', columns => ARRAY['x', 'y']); SELECT redis.sync_table('b');",
    );
    env.wait_synced();
    // Renamed: changes keep flowing, read-through uses the new name.
    env.sql("ALTER TABLE a RENAME TO a_renamed; INSERT INTO a_renamed VALUES (3, 'new', 'y', 'c3')");
    env.wait_synced();
    assert_eq!(env.get("a:3").as_deref(), Some(r#"{"x":"new","y":"y"}"#));
    let _: () = redis::cmd("DEL").arg("a:1").query(&mut env.redis).unwrap();
    let t0 = Instant::now();
    let v = loop {
        match redis::cmd("PG.GET").arg("a:1").query::<Option<String>>(&mut env.redis) {
            Ok(v) => break v,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(5), "read-through never followed the rename: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(v.as_deref(), Some(r#"{"x":"x","y":"y"}"#));
    // A dropped stored column leaves the mapping.
    env.sql("ALTER TABLE a_renamed DROP COLUMN y; UPDATE a_renamed SET x = 'after' WHERE id = 2");
    env.wait_synced();
    assert_eq!(env.get("a:2").as_deref(), Some(r#"{"x":"after"}"#));
    let cols: Vec<String> =
        env.pg.query_one("SELECT columns FROM redis.tables WHERE rel_name = 'a_renamed'", &[]).unwrap().get(0);
    assert_eq!(cols, vec!["x".to_string()]);
    // A key column cannot be dropped while it makes the key.
    env.sql("SELECT redis.sync_table('a_renamed', key => 'a:{code}', columns => ARRAY['x'])");
    let (code, msg) = env.sql_error("ALTER TABLE a_renamed DROP COLUMN code");
    assert_eq!(code, "2BP01", "{msg}");
    assert!(msg.contains("\"code\"") && msg.contains("Redis key"), "{msg}");
    // Dropped: its keys go, the other table keeps flowing.
    env.sql("DROP TABLE a_renamed; INSERT INTO b VALUES (2)");
    env.wait_synced();
    let left: Vec<String> = redis::cmd("KEYS").arg("a:*").query(&mut env.redis).unwrap();
    assert!(left.is_empty(), "{left:?}");
    env.assert_consistent("b");
    let status = check::status(&mut env.pg);
    assert!(status.iter().all(|s| !s.contains("waiting to retry")), "{status:?}");
    // Dropping the extension still works.
    env.sql("DROP EXTENSION pg_redis CASCADE");
}

#[test]
fn module_commands_with_garbage() {
    let mut env = Env::start("bad_module_args");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 1000) g; SELECT redis.sync_table('t', backfill => false)");
    env.wait_synced();
    env.wait_mappings(1);
    let garbage: &[&[u8]] =
        &[b"\xff\xfe\x00\x01", b"t:\x00", b"t:\xff", b"", b"t:", b"t:99999999999999999999", b"t:-1", b"t:1.5"];
    for g in garbage {
        match redis::cmd("PG.GET").arg(*g).query::<Option<String>>(&mut env.redis) {
            Ok(None) => {}
            Err(e) => assert!(e.code() == Some("ERR"), "{g:?}: {e}"),
            Ok(Some(v)) => panic!("{g:?} gave {v}"),
        }
        let _: redis::RedisResult<i64> = redis::cmd("PG.INVALIDATE").arg(*g).query(&mut env.redis);
    }
    // Huge argument counts: one MGET of 20 000 keys, half of them rows.
    let keys: Vec<String> = (1..=20_000).map(|i| format!("t:{i}")).collect();
    let got: Vec<Option<String>> = redis::cmd("PG.MGET").arg(&keys).query(&mut env.redis).unwrap();
    assert_eq!(got.len(), 20_000);
    assert_eq!(got.iter().filter(|v| v.is_some()).count(), 1000);
    let n: i64 = redis::cmd("PG.INVALIDATE").arg(&keys).query(&mut env.redis).unwrap();
    assert_eq!(n, 1000);
    for cmd in ["PG.RELOAD", "PG.PING", "PG.STATS"] {
        let e = redis::cmd(cmd).arg("extra").query::<redis::Value>(&mut env.redis).unwrap_err();
        assert!(e.to_string().contains("wrong number of arguments"), "{cmd}: {e}");
    }
    let pong: String = redis::cmd("PING").query(&mut env.redis).unwrap();
    assert_eq!(pong, "PONG");
}

#[test]
fn redis_errors_keep_events_and_other_tables_flow() {
    let mut opts = Options::named("bad_redis_errors");
    opts.pg_settings = vec![("pg_redis.retry_max_ms".into(), "300".into())];
    let mut env = Env::with(opts);
    env.sql("CREATE TABLE users (id int PRIMARY KEY, v int); CREATE TABLE other (id int PRIMARY KEY); SELECT redis.sync_table('users'); SELECT redis.sync_table('other', stream => false)");
    env.wait_synced();
    // Someone else's string sits where the change stream of users goes (a row's own key would
    // simply be overwritten: the table's key prefix belongs to it).
    let _: () = redis::cmd("DEL").arg("postgres.public.users").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("SET").arg("postgres.public.users").arg("not a stream").query(&mut env.redis).unwrap();
    env.sql("INSERT INTO users VALUES (5, 1), (6, 1)");
    env.sql("INSERT INTO other VALUES (1)");
    let t0 = Instant::now();
    loop {
        let err: Option<String> = env
            .pg
            .query_one("SELECT last_error FROM redis.status WHERE table_name = 'users'::regclass", &[])
            .unwrap()
            .get(0);
        if err.as_deref().is_some_and(|e| e.contains("WRONGTYPE")) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "status never showed WRONGTYPE: {:?}",
            check::status(&mut env.pg)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let decoded: i64 =
        env.pg.query_one("SELECT count(*) FROM redis.mapping WHERE active AND capture = 'wal'", &[]).unwrap().get(0);
    if decoded == 0 {
        let queued: i64 = env
            .pg
            .query_one("SELECT queued FROM redis.status WHERE table_name = 'users'::regclass", &[])
            .unwrap()
            .get(0);
        assert!(queued >= 1, "the refused events stay queued");
    }
    // (Captured from the WAL, the refused events stay in the slot, which does not move past them.)
    let t0 = Instant::now();
    while env.get("other:1").is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the other table did not flow");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _: () = redis::cmd("DEL").arg("postgres.public.users").query(&mut env.redis).unwrap();
    env.wait_synced();
    env.assert_consistent("users");
    // Out of memory: events wait, then arrive once memory is there.
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction").query(&mut env.redis).unwrap();
    let used: String = redis::cmd("INFO").arg("memory").query(&mut env.redis).unwrap();
    let used: u64 = used.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg((used + 1024).to_string()).query(&mut env.redis).unwrap();
    env.sql("INSERT INTO users SELECT g, g FROM generate_series(100, 2000) g");
    let t0 = Instant::now();
    loop {
        let err: Option<String> = env
            .pg
            .query_one("SELECT last_error FROM redis.status WHERE table_name = 'users'::regclass", &[])
            .unwrap()
            .get(0);
        if err.as_deref().is_some_and(|e| e.contains("OOM")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "status never showed OOM: {:?}", check::status(&mut env.pg));
        std::thread::sleep(Duration::from_millis(50));
    }
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg("0").query(&mut env.redis).unwrap();
    env.wait_synced();
    env.assert_consistent("users");
}

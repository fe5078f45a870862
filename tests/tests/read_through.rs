//! Redis → PostgreSQL read-through against real servers: hits at native speed, misses read
//! through without blocking Redis, the same bytes a push writes, never a stale fill.

use pg_redis_shared::Encoded;
use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn users(env: &mut Env, rows: i32) {
    env.sql(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, name text, email text);
         INSERT INTO users SELECT g, 'user ' || g, 'u' || g || '@example.com' FROM generate_series(1, {rows}) g;
         SELECT redis.sync_table('users', backfill => false);"
    ));
    env.wait_synced();
    env.wait_mappings(1);
}

fn pg_get(r: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<String>> {
    redis::cmd("PG.GET").arg(key).query(r)
}

/// An error reply as "CODE message", the way redis-cli prints it.
fn reply_error(e: &redis::RedisError) -> String {
    format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or_default())
}

/// `PG.GET users:<id>` for each id, each from its own thread and connection, all at once.
fn gets_from_own_connections(
    env: &Env,
    ids: std::ops::RangeInclusive<u32>,
) -> Vec<std::thread::JoinHandle<Result<Option<String>, String>>> {
    let url = env.servers.redis.url();
    ids.map(|i| {
        let url = url.clone();
        std::thread::spawn(move || {
            let mut r = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
            pg_get(&mut r, &format!("users:{i}")).map_err(|e| reply_error(&e))
        })
    })
    .collect()
}

#[test]
fn miss_fills_then_hits() {
    let mut env = Env::start("rt_basic");
    users(&mut env, 10);
    assert_eq!(env.get("users:3"), None, "not backfilled");
    let v = pg_get(&mut env.redis, "users:3").unwrap();
    assert_eq!(v.as_deref(), Some(r#"{"id":3,"name":"user 3","email":"u3@example.com"}"#));
    assert_eq!(env.get("users:3"), v, "the miss filled the cache");
    let queries = env.module_stat("pg_queries");
    assert_eq!(pg_get(&mut env.redis, "users:3").unwrap(), v);
    assert_eq!(env.module_stat("pg_queries"), queries, "a hit does not query PostgreSQL");
    assert!(env.module_stat("hits") >= 1 && env.module_stat("fills") >= 1);
    let many: Vec<Option<String>> = redis::cmd("PG.MGET")
        .arg("users:1")
        .arg("users:3")
        .arg("users:404")
        .arg("users:2")
        .query(&mut env.redis)
        .unwrap();
    assert_eq!(many.len(), 4);
    assert!(many[0].as_deref().unwrap().contains("user 1") && many[3].as_deref().unwrap().contains("user 2"));
    assert_eq!(many[2], None);
    assert_eq!(env.get("users:1"), many[0]);
}

#[test]
fn misses_return_exactly_what_a_push_writes() {
    let mut env = Env::start("rt_types");
    env.sql(include_str!("types_table.sql"));
    env.sql("SELECT redis.sync_table('types', backfill => false)");
    env.wait_synced();
    env.wait_mappings(1);
    let m = check::mapping_of(&mut env.pg, "types");
    let want = check::expected(&mut env.pg, &m);
    for (key, value) in &want {
        let got = pg_get(&mut env.redis, key).unwrap();
        assert_eq!(got.as_ref().map(|s| Encoded::Json(s.clone())).as_ref(), Some(value), "{key}");
    }
    // A push of the same rows writes the same bytes.
    env.sql("SELECT redis.resync('types')");
    env.wait_synced();
    env.assert_consistent("types");
    // Hash format through read-through too.
    env.sql("SELECT redis.sync_table('types', format => 'hash', backfill => false)");
    env.wait_synced();
    let _: () = redis::cmd("FLUSHALL").query(&mut env.redis).unwrap();
    let t0 = Instant::now();
    while env.module_stat("mapping_loads") < 3 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for key in want.keys() {
        let _: redis::Value = redis::cmd("PG.GET").arg(key).query(&mut env.redis).unwrap();
    }
    env.assert_consistent("types");
}

#[test]
fn hash_format_and_composite_keys() {
    let mut env = Env::start("rt_hash");
    env.sql(
        "CREATE TABLE order_items (order_id bigint, item_no int, sku text, qty int, note text, PRIMARY KEY (order_id, item_no));
         INSERT INTO order_items VALUES (7, 3, 'A:1', 2, NULL);
         SELECT redis.sync_table('order_items', format => 'hash', ttl => 60, backfill => false);",
    );
    env.wait_synced();
    env.wait_mappings(1);
    let fields: BTreeMap<String, String> = redis::cmd("PG.GET").arg("order_items:7:3").query(&mut env.redis).unwrap();
    assert_eq!(fields.get("sku").map(String::as_str), Some("A:1"));
    assert!(!fields.contains_key("note"));
    let ttl: i64 = redis::cmd("TTL").arg("order_items:7:3").query(&mut env.redis).unwrap();
    assert!((55..=66).contains(&ttl), "mapping ttl plus jitter: {ttl}");
    let hit: BTreeMap<String, String> = redis::cmd("PG.GET").arg("order_items:7:3").query(&mut env.redis).unwrap();
    assert_eq!(hit, fields);
    env.assert_consistent("order_items");
    // RESP3 gets a map, RESP2 a flat array: both work.
    let mut r3 = redis::Client::open(format!("{}?protocol=resp3", env.servers.redis.url()).as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let v: redis::Value = redis::cmd("PG.GET").arg("order_items:7:3").query(&mut r3).unwrap();
    assert!(matches!(v, redis::Value::Map(_)), "{v:?}");
}

#[test]
fn absent_rows_answer_nil_until_inserted() {
    let mut env = Env::start("rt_negative");
    users(&mut env, 3);
    assert_eq!(pg_get(&mut env.redis, "users:50").unwrap(), None);
    let q = env.module_stat("pg_queries");
    assert_eq!(pg_get(&mut env.redis, "users:50").unwrap(), None);
    assert_eq!(env.module_stat("pg_queries"), q, "a negative entry answers the second miss");
    assert!(env.module_stat("negative_hits") >= 1);
    env.sql("INSERT INTO users VALUES (50, 'late', 'l@x')");
    env.wait_synced();
    assert!(
        pg_get(&mut env.redis, "users:50").unwrap().unwrap().contains("late"),
        "the push of the insert replaced the negative entry"
    );
    // Without a push (e.g. PG.INVALIDATE after a direct write) the entry can be dropped too.
    assert_eq!(pg_get(&mut env.redis, "users:51").unwrap(), None);
    let triggered: i64 = env
        .pg
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname = 'pg_redis_capture' AND tgrelid = 'users'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    if triggered > 0 {
        env.sql("ALTER TABLE users DISABLE TRIGGER pg_redis_capture; INSERT INTO users VALUES (51, 'quiet', 'q@x'); ALTER TABLE users ENABLE TRIGGER pg_redis_capture");
    } else {
        // Captured from the WAL, no write goes unseen: the push may come first, or not yet.
        env.sql("INSERT INTO users VALUES (51, 'quiet', 'q@x')");
    }
    let _: i64 = redis::cmd("PG.INVALIDATE").arg("users:51").query(&mut env.redis).unwrap();
    assert!(pg_get(&mut env.redis, "users:51").unwrap().unwrap().contains("quiet"));
}

#[test]
fn errors_are_clear_and_typed() {
    let mut opts = Options::named("rt_errors");
    opts.module_args = vec!["query_timeout_ms".into(), "500".into()];
    let mut env = Env::with(opts);
    users(&mut env, 5);
    let err = |r: redis::RedisResult<Option<String>>| reply_error(&r.unwrap_err());
    let e = err(pg_get(&mut env.redis, "nope:1"));
    assert!(e.contains("nope:1") && e.contains("no synced table"), "{e}");
    let e = err(pg_get(&mut env.redis, "users:abc"));
    assert!(e.contains("users:abc") && e.contains("int8"), "{e}");
    let e = err(pg_get(&mut env.redis, "users:1:2"));
    assert!(e.contains("users:1:2"), "{e}");
    let e = redis::cmd("PG.GET").query::<String>(&mut env.redis).unwrap_err().to_string();
    assert!(e.contains("wrong number of arguments"), "{e}");
    let e = redis::cmd("PG.GET").arg("a").arg("b").query::<String>(&mut env.redis).unwrap_err().to_string();
    assert!(e.contains("wrong number of arguments"), "{e}");
    let _: () = redis::cmd("LPUSH").arg("users:4").arg("x").query(&mut env.redis).unwrap();
    let e = err(pg_get(&mut env.redis, "users:4"));
    assert!(e.contains("WRONGTYPE"), "{e}");
    // Inside MULTI a miss cannot wait: a clear error; a hit still answers.
    let _: Option<String> = pg_get(&mut env.redis, "users:1").unwrap();
    let _: () = redis::cmd("MULTI").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("PG.GET").arg("users:1").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("PG.GET").arg("users:2").query(&mut env.redis).unwrap();
    let exec = redis::cmd("EXEC").query::<redis::Value>(&mut env.redis);
    let shown = format!("{exec:?}");
    assert!(shown.contains("MULTI"), "{shown}");
    let _: () = redis::cmd("MULTI").query(&mut env.redis).unwrap();
    let _: () = redis::cmd("PG.GET").arg("users:1").query(&mut env.redis).unwrap();
    let hit: Vec<String> = redis::cmd("EXEC").query(&mut env.redis).unwrap();
    assert!(hit[0].contains("user 1"), "a hit inside MULTI answers: {hit:?}");
    // From a script too.
    let e = redis::cmd("EVAL")
        .arg("return redis.call('PG.GET', KEYS[1])")
        .arg(1)
        .arg("users:3")
        .query::<String>(&mut env.redis)
        .unwrap_err()
        .to_string();
    assert!(e.contains("script") || e.contains("MULTI"), "{e}");
    // A locked table: TIMEOUT within the deadline.
    let mut locker = env.pg_client();
    locker.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let t0 = Instant::now();
    let e = err(pg_get(&mut env.redis, "users:5"));
    assert!(e.starts_with("TIMEOUT"), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
    locker.batch_execute("ROLLBACK").unwrap();
    // PostgreSQL gone: PGUNAVAILABLE, fast.
    env.servers.pg.stop();
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..3 {
        let t0 = Instant::now();
        let e = err(pg_get(&mut env.redis, "users:2"));
        assert!(e.starts_with("PGUNAVAILABLE") || e.starts_with("TIMEOUT"), "{e}");
        assert!(t0.elapsed() < Duration::from_millis(1000), "{:?}", t0.elapsed());
    }
    let e = err(pg_get(&mut env.redis, "users:2"));
    assert!(e.starts_with("PGUNAVAILABLE"), "{e}");
    // Cached keys are still served.
    assert!(pg_get(&mut env.redis, "users:1").unwrap().is_some());
}

#[test]
fn busy_when_the_queue_is_full() {
    let mut opts = Options::named("rt_busy");
    opts.module_args =
        vec!["pool_size".into(), "1".into(), "queue_max".into(), "2".into(), "query_timeout_ms".into(), "2000".into()];
    let mut env = Env::with(opts);
    users(&mut env, 50);
    let mut locker = env.pg_client();
    locker.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let results: Vec<_> = gets_from_own_connections(&env, 1..=8).into_iter().map(|h| h.join().unwrap()).collect();
    locker.batch_execute("ROLLBACK").unwrap();
    let busy = results.iter().filter(|r| matches!(r, Err(e) if e.starts_with("BUSY"))).count();
    assert!(busy >= 1, "{results:?}");
    assert!(
        results.iter().all(|r| matches!(r, Err(e) if e.starts_with("BUSY") || e.starts_with("TIMEOUT"))),
        "{results:?}"
    );
}

#[test]
fn redis_stays_responsive_while_postgres_is_stuck() {
    let mut opts = Options::named("rt_responsive");
    opts.module_args = vec!["query_timeout_ms".into(), "1500".into()];
    let mut env = Env::with(opts);
    users(&mut env, 100);
    let mut locker = env.pg_client();
    locker.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let clients = gets_from_own_connections(&env, 1..=20);
    std::thread::sleep(Duration::from_millis(200));
    let mut pings = Vec::new();
    for _ in 0..50 {
        let t0 = Instant::now();
        let _: String = redis::cmd("PING").query(&mut env.redis).unwrap();
        pings.push(t0.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    pings.sort();
    eprintln!("PING while 20 misses wait on a locked table: median {:?}, max {:?}", pings[25], pings[49]);
    // One scheduler hiccup of this 2-core machine is not Redis blocking; two would be.
    assert!(pings[48] < Duration::from_millis(5), "PINGs took {:?}", &pings[45..]);
    let results: Vec<_> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    locker.batch_execute("ROLLBACK").unwrap();
    for r in &results {
        match r {
            Ok(Some(_)) => {}
            Err(e) if e.starts_with("TIMEOUT") || e.starts_with("BUSY") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

#[test]
fn concurrent_misses_of_one_key_make_one_query() {
    let mut env = Env::start("rt_single_flight");
    users(&mut env, 10);
    let before = env.module_stat("pg_queries");
    // Hold the row's table briefly so all 100 misses overlap.
    let mut locker = env.pg_client();
    locker.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE").unwrap();
    let url = env.servers.redis.url();
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut r = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
                pg_get(&mut r, "users:7").unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    locker.batch_execute("ROLLBACK").unwrap();
    let answers: Vec<Option<String>> = clients.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(answers.iter().all(|a| a.as_deref().is_some_and(|s| s.contains("user 7"))));
    let queries = env.module_stat("pg_queries") - before;
    assert_eq!(queries, 1, "100 concurrent misses of one key made {queries} queries");
    assert!(env.module_stat("joined_misses") >= 99 - 5, "joined: {}", env.module_stat("joined_misses"));
}

#[test]
fn no_stale_fill_under_concurrent_writes() {
    let mut env = Env::start("rt_race");
    users(&mut env, 50);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for w in 0..2 {
        let url = env.servers.pg.url("postgres");
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = (i * 17 + w * 5) % 60 + 1;
                match i % 7 {
                    0 => pg.execute("DELETE FROM users WHERE id = $1", &[&id]).map(|_| ()),
                    1 => pg
                        .execute("INSERT INTO users VALUES ($1, 'new', 'n') ON CONFLICT DO NOTHING", &[&id])
                        .map(|_| ()),
                    _ => pg
                        .execute("UPDATE users SET name = 'v' || $2::text WHERE id = $1", &[&id, &i.to_string()])
                        .map(|_| ()),
                }
                .unwrap();
                i += 1;
            }
        }));
    }
    for c in 0..4 {
        let url = env.servers.redis.url();
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut r = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("users:{}", (i * 13 + c * 7) % 60 + 1);
                match i % 5 {
                    0 => {
                        let _: i64 = redis::cmd("DEL").arg(&key).query(&mut r).unwrap();
                    }
                    1 => {
                        let _: i64 = redis::cmd("PG.INVALIDATE").arg(&key).query(&mut r).unwrap();
                    }
                    2 => {
                        let _: redis::Value = redis::cmd("PG.MGET").arg(&key).arg("users:1").query(&mut r).unwrap();
                    }
                    _ => {
                        let _ = pg_get(&mut r, &key);
                    }
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    env.wait_synced();
    let m = check::mapping_of(&mut env.pg, "users");
    let want = check::expected(&mut env.pg, &m);
    let cached: Vec<String> = redis::cmd("KEYS").arg("users:*").query(&mut env.redis).unwrap();
    let mut stale = Vec::new();
    for k in &cached {
        let got = check::actual(&mut env.redis, k);
        if got.as_ref() != want.get(k) {
            stale.push(format!("{k}: cached {got:?}, row {:?}", want.get(k)));
        }
    }
    eprintln!("{} keys cached; stale fills refused: {}", cached.len(), env.module_stat("stale_fills_refused"));
    assert!(stale.is_empty(), "stale cache entries:\n{}", stale.join("\n"));
}

#[test]
fn mappings_follow_sync_table_and_survive_flush_and_unload() {
    let mut env = Env::start("rt_mappings");
    users(&mut env, 5);
    env.sql("CREATE TABLE things (id int PRIMARY KEY, v text); INSERT INTO things VALUES (1, 'one'); SELECT redis.sync_table('things', backfill => false)");
    env.wait_synced();
    env.wait_mappings(2);
    assert!(pg_get(&mut env.redis, "things:1").unwrap().unwrap().contains("one"));
    let _: () = redis::cmd("FLUSHALL").query(&mut env.redis).unwrap();
    assert!(pg_get(&mut env.redis, "things:1").unwrap().unwrap().contains("one"));
    let n: i64 = redis::cmd("PG.RELOAD").query(&mut env.redis).unwrap();
    assert_eq!(n, 2);
    let _: () = redis::cmd("MODULE").arg("UNLOAD").arg("redis_pg").query(&mut env.redis).unwrap();
    let path = pg_redis_tests::harness::module_path().unwrap();
    let url = env.servers.pg.url("postgres");
    let _: () = redis::cmd("MODULE")
        .arg("LOAD")
        .arg(path.display().to_string())
        .arg("pg_url")
        .arg(url)
        .query(&mut env.redis)
        .unwrap();
    env.wait_mappings(2);
    assert!(pg_get(&mut env.redis, "users:2").unwrap().is_some());
}

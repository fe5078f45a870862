//! Redis from SQL: the typed helpers, the generic command, and commands that run only when
//! the transaction commits.

use pg_redis_tests::harness::Options;
use pg_redis_tests::Env;
use std::time::{Duration, Instant};

fn one<T: for<'a> postgres::types::FromSql<'a>>(env: &mut Env, sql: &str) -> T {
    env.pg.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

#[test]
fn typed_helpers_on_hit_miss_and_wrong_type() {
    let mut env = Env::start("sqlfn_typed");
    assert_eq!(one::<Option<String>>(&mut env, "SELECT redis.get('k')"), None);
    assert!(one::<bool>(&mut env, "SELECT redis.set('k', 'v ☃')"));
    assert_eq!(one::<Option<String>>(&mut env, "SELECT redis.get('k')").as_deref(), Some("v ☃"));
    assert!(!one::<bool>(&mut env, "SELECT redis.set('k', 'other', nx => true)"));
    assert!(one::<bool>(&mut env, "SELECT redis.set('t', '1', ttl => 100)"));
    let ttl: i64 = redis::cmd("TTL").arg("t").query(&mut env.redis).unwrap();
    assert!((90..=100).contains(&ttl));
    assert!(one::<bool>(&mut env, "SELECT redis.exists('k')"));
    assert!(!one::<bool>(&mut env, "SELECT redis.exists('nope')"));
    assert!(one::<bool>(&mut env, "SELECT redis.expire('k', 50)"));
    assert!(!one::<bool>(&mut env, "SELECT redis.expire('nope', 50)"));
    assert_eq!(one::<i64>(&mut env, "SELECT redis.incrby('n')"), 1);
    assert_eq!(one::<i64>(&mut env, "SELECT redis.incrby('n', 41)"), 42);
    assert_eq!(one::<i64>(&mut env, "SELECT redis.hset('h', '{\"a\": \"x\", \"b\": 2, \"c\": [1]}')"), 3);
    assert_eq!(one::<Option<String>>(&mut env, "SELECT redis.hget('h', 'b')").as_deref(), Some("2"));
    assert_eq!(one::<Option<String>>(&mut env, "SELECT redis.hget('h', 'zz')"), None);
    assert_eq!(one::<Option<String>>(&mut env, "SELECT redis.hget('nope', 'a')"), None);
    let all: serde_json::Value = one(&mut env, "SELECT redis.hgetall('h')");
    assert_eq!(all, serde_json::json!({"a": "x", "b": "2", "c": "[1]"}));
    assert_eq!(one::<Option<serde_json::Value>>(&mut env, "SELECT redis.hgetall('nope')"), None);
    let mut sub = env.redis_client();
    let mut ps = sub.as_pubsub();
    ps.subscribe("ch").unwrap();
    assert_eq!(one::<i64>(&mut env, "SELECT redis.publish('ch', 'hello')"), 1);
    let id: String = one(&mut env, "SELECT redis.xadd('s', '{\"k\": \"v\"}', maxlen => 1000)");
    assert!(id.contains('-'), "{id}");
    assert_eq!(one::<i64>(&mut env, "SELECT redis.del('k', 'h', 'nope')"), 2);
    let keys: Vec<String> =
        env.pg.query("SELECT k FROM redis.scan('s*') k", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, vec!["s".to_string()]);
    let n: i64 = one(&mut env, "SELECT count(*) FROM redis.scan()");
    assert!(n >= 3);
    // Wrong types: Redis's own message.
    let (code, msg) = env.sql_error("SELECT redis.hget('n', 'f')");
    assert_eq!(code, "38000");
    assert!(msg.contains("WRONGTYPE"), "{msg}");
    let (_, msg) = env.sql_error("SELECT redis.incrby('s')");
    assert!(msg.contains("WRONGTYPE"), "{msg}");
    let (code, msg) = env.sql_error("SELECT redis.hset('x', '[1, 2]')");
    assert_eq!(code, "22023");
    assert!(msg.contains("JSON object"), "{msg}");
    let _: () = redis::cmd("SET").arg("bin").arg(&[0xffu8, 0xfe][..]).query(&mut env.redis).unwrap();
    let (_, msg) = env.sql_error("SELECT redis.get('bin')");
    assert!(msg.contains("UTF-8"), "{msg}");
}

#[test]
fn command_maps_every_reply_type() {
    let mut env = Env::start("sqlfn_command");
    let j = |env: &mut Env, sql: &str| -> Option<serde_json::Value> { one(env, sql) };
    assert_eq!(j(&mut env, "SELECT redis.command('SET', 'a', '1')"), Some(serde_json::json!("OK")));
    assert_eq!(j(&mut env, "SELECT redis.command('GET', 'a')"), Some(serde_json::json!("1")));
    assert_eq!(j(&mut env, "SELECT redis.command('INCR', 'a')"), Some(serde_json::json!(2)));
    assert_eq!(j(&mut env, "SELECT redis.command('GET', 'missing')"), None);
    assert_eq!(j(&mut env, "SELECT redis.command('RPUSH', 'l', 'x', 'y')"), Some(serde_json::json!(2)));
    assert_eq!(j(&mut env, "SELECT redis.command('LRANGE', 'l', '0', '-1')"), Some(serde_json::json!(["x", "y"])));
    let _ = j(&mut env, "SELECT redis.command('HSET', 'h', 'f', 'v')");
    assert_eq!(j(&mut env, "SELECT redis.command('HGETALL', 'h')"), Some(serde_json::json!({"f": "v"})));
    let _ = j(&mut env, "SELECT redis.command('ZADD', 'z', '1.5', 'm')");
    assert_eq!(j(&mut env, "SELECT redis.command('ZSCORE', 'z', 'm')"), Some(serde_json::json!(1.5)));
    assert_eq!(
        j(&mut env, "SELECT redis.command('EVAL', 'redis.setresp(3); return true', '0')"),
        Some(serde_json::json!(true))
    );
    assert_eq!(
        j(&mut env, "SELECT redis.command('EVAL', 'return {1, {\"a\"}, false}', '0')"),
        Some(serde_json::json!([1, ["a"], null]))
    );
    let (code, msg) = env.sql_error("SELECT redis.command('INCR', 'l')");
    assert_eq!(code, "38000");
    assert!(msg.contains("WRONGTYPE"), "{msg}");
    let (_, msg) = env.sql_error("SELECT redis.command('NOSUCHCOMMAND')");
    assert!(msg.to_lowercase().contains("unknown command"), "{msg}");
    let (code, _) = env.sql_error("SELECT redis.command()");
    assert_eq!(code, "42883", "no zero-argument variant");
}

#[test]
fn on_commit_runs_only_committed_commands_in_order() {
    let mut env = Env::start("sqlfn_on_commit");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t', stream => false)");
    env.sql("BEGIN; SELECT redis.on_commit('SET', 'flag', 'committed'); INSERT INTO t VALUES (1, 'a'); SELECT redis.on_commit('DEL', 't:1'); COMMIT");
    env.sql("BEGIN; SELECT redis.on_commit('SET', 'rolled', 'back'); ROLLBACK");
    env.sql("BEGIN; SELECT redis.on_commit('SET', 'kept', '1'); SAVEPOINT s; SELECT redis.on_commit('SET', 'undone', '1'); ROLLBACK TO s; COMMIT");
    env.wait_synced();
    assert_eq!(env.get("flag").as_deref(), Some("committed"));
    assert_eq!(env.get("t:1"), None, "the DEL ran after the insert's SET, in commit order");
    assert_eq!(env.get("rolled"), None);
    assert_eq!(env.get("undone"), None);
    assert_eq!(env.get("kept").as_deref(), Some("1"));
    // A command Redis refuses is parked with the reason, not retried forever.
    env.sql("SELECT redis.on_commit('INCR', 'flag')");
    // wait_synced says the change did not make it (and warns), rather than claim success, even
    // when the worker parked it before the call.
    let t0 = Instant::now();
    while one::<i64>(&mut env, "SELECT count(*) FROM redis.dead_letter") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "the refused command was never parked");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!one::<bool>(&mut env, "SELECT redis.wait_synced(20000)"));
    let err: String = one(&mut env, "SELECT error FROM redis.dead_letter");
    assert!(err.contains("not an integer"), "{err}");
    // Told once: the next call answers for what came after.
    assert!(one::<bool>(&mut env, "SELECT redis.wait_synced(20000)"));
    // Parked during the wait: reported too.
    env.sql("SELECT redis.on_commit('INCR', 'flag')");
    assert!(!one::<bool>(&mut env, "SELECT redis.wait_synced(20000)"));
    let (code, msg) = env.sql_error("SELECT redis.on_commit('SELECT', '2')");
    assert_eq!(code, "0A000");
    assert!(msg.contains("SELECT"), "{msg}");
}

#[test]
fn on_commit_survives_redis_being_down() {
    let mut env = Env::start("sqlfn_on_commit_down");
    env.sql("ALTER SYSTEM SET pg_redis.retry_max_ms = 300");
    env.sql("SELECT pg_reload_conf()");
    env.servers.redis.kill();
    env.sql("SELECT redis.on_commit('SET', 'later', 'yes')");
    std::thread::sleep(Duration::from_millis(500));
    let queued: i64 = one(&mut env, "SELECT queued FROM redis.status WHERE table_name IS NULL");
    assert_eq!(queued, 1);
    env.servers.redis.start_again().unwrap();
    env.redis = env.redis_client();
    env.wait_synced();
    assert_eq!(env.get("later").as_deref(), Some("yes"));
}

#[test]
fn statement_timeout_interrupts_a_blocking_command() {
    let mut env = Env::start("sqlfn_cancel");
    env.sql("SET statement_timeout = '300ms'; SET pg_redis.command_timeout_ms = 60000");
    let t0 = Instant::now();
    let (code, _) = env.sql_error("SELECT redis.command('BLPOP', 'nokey', '0')");
    assert_eq!(code, "57014", "query_canceled");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    env.sql("SET statement_timeout = 0");
    // The session keeps working on a fresh connection.
    assert_eq!(one::<String>(&mut env, "SELECT redis.ping()"), "PONG");
    // A cancel request works the same way.
    let cancel = env.pg.cancel_token();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        cancel.cancel_query(postgres::NoTls).unwrap();
    });
    let (code, _) = env.sql_error("SELECT redis.command('BLPOP', 'nokey', '0')");
    t.join().unwrap();
    assert_eq!(code, "57014");
}

#[test]
fn functions_need_a_grant() {
    let mut env = Env::start("sqlfn_grants");
    env.sql("CREATE ROLE app LOGIN; CREATE ROLE trusted LOGIN; GRANT USAGE ON SCHEMA redis TO trusted; GRANT EXECUTE ON FUNCTION redis.get(text), redis.set(text, text, integer, boolean) TO trusted");
    let connect = |role: &str| {
        postgres::Client::connect(
            &format!("host=127.0.0.1 port={} user={role} dbname=postgres", env.servers.pg.port),
            postgres::NoTls,
        )
        .unwrap()
    };
    let mut app = connect("app");
    let err = app.query_one("SELECT redis.get('k')", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    let err = app.query_one("SELECT redis.on_commit('DEL', 'k')", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    let mut trusted = connect("trusted");
    trusted.query_one("SELECT redis.set('k', 'v')", &[]).unwrap();
    let v: Option<String> = trusted.query_one("SELECT redis.get('k')", &[]).unwrap().get(0);
    assert_eq!(v.as_deref(), Some("v"));
    let err = trusted.query_one("SELECT redis.command('FLUSHALL')", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn tls_with_a_private_ca() {
    let mut opts = Options::named("sqlfn_tls");
    opts.redis_tls = true;
    opts.without_module = true;
    let mut env = Env::with(opts);
    assert_eq!(one::<String>(&mut env, "SELECT redis.ping()"), "PONG");
    env.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); SELECT redis.sync_table('t')");
    env.wait_synced();
    env.assert_consistent("t");
    // Without the CA the server is not trusted.
    env.sql("SET pg_redis.tls_ca_file = ''");
    let (code, msg) = env.sql_error("SELECT redis.ping()");
    assert_eq!(code, "08006", "{msg}");
}

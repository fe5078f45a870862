//! Secrets in connection strings, against real servers: the module refuses a `pg_url` that
//! carries a password in any form PostgreSQL's client reads, and the extension never shows a
//! Redis password (with `/`, `?`, `#`, `@` in it, or in a unix-socket URL's `pass=`) in the
//! server log, in SQL errors or in `redis.status` while Redis cannot be reached.

use pg_redis_tests::harness::{module_path, Options};
use pg_redis_tests::{check, Env};
use std::time::{Duration, Instant};

/// A password with every character that ends a part of a URL. Its pieces between them are
/// distinctive, so "no part of it shows" can be checked piece by piece.
const PW: &str = "Zx9Kq/Wm4Tp?Hy7Rc#Vb2Nd@Lf5Js";
const PIECES: [&str; 5] = ["Zx9Kq", "Wm4Tp", "Hy7Rc", "Vb2Nd", "Lf5Js"];

fn assert_no_piece(place: &str, text: &str) {
    for p in PIECES {
        assert!(!text.contains(p), "part of the password ({p}) shows in {place}: {text}");
    }
}

fn percent_encoded(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// Every way of writing a password into `pg_url` that PostgreSQL's client accepts.
fn pg_urls_with_password(port: u16) -> Vec<String> {
    vec![
        format!("postgresql://postgres:{PW}@127.0.0.1:{port}/postgres"),
        format!("postgres://postgres:{}@127.0.0.1:{port}/postgres", percent_encoded(PW)),
        format!("postgresql://postgres@127.0.0.1:{port}/postgres?password={}", percent_encoded(PW)),
        format!("postgresql://postgres@127.0.0.1:{port}/postgres?application_name=x&password={}", percent_encoded(PW)),
        format!("host=127.0.0.1 port={port} dbname=passwords password={PW}"),
        format!("host=127.0.0.1 port={port} password = '{PW}' dbname=postgres"),
    ]
}

#[test]
fn module_refuses_pg_urls_with_passwords() {
    let mut env = Env::with(Options { without_module: true, ..Options::named("redact_module") });
    let port = env.servers.pg.port;
    for url in pg_urls_with_password(port) {
        assert!(url.parse::<postgres::Config>().unwrap().get_password().is_some(), "{url} carries a password");
        let loaded = redis::cmd("MODULE")
            .arg("LOAD")
            .arg(module_path().unwrap().display().to_string())
            .arg("pg_url")
            .arg(&url)
            .query::<()>(&mut env.redis);
        let list = format!("{:?}", redis::cmd("MODULE").arg("LIST").query::<redis::Value>(&mut env.redis).unwrap());
        if loaded.is_ok() {
            let _: () = redis::cmd("MODULE").arg("UNLOAD").arg("redis_pg").query(&mut env.redis).unwrap();
        }
        assert_no_piece(&format!("MODULE LIST after loading with {url}"), &list);
        assert!(loaded.is_err(), "the module loaded with a password in pg_url {url}");
    }
    let good = format!("postgresql://postgres@127.0.0.1:{port}/postgres");
    let _: () = redis::cmd("MODULE")
        .arg("LOAD")
        .arg(module_path().unwrap().display().to_string())
        .arg("pg_url")
        .arg(&good)
        .query(&mut env.redis)
        .unwrap();
    for url in pg_urls_with_password(port) {
        let set = redis::cmd("CONFIG").arg("SET").arg("redis_pg.pg_url").arg(&url).query::<()>(&mut env.redis);
        let shown: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("redis_pg.pg_url").query(&mut env.redis).unwrap();
        let info: String = redis::cmd("INFO").arg("redis_pg").query(&mut env.redis).unwrap();
        assert_no_piece(&format!("CONFIG GET after CONFIG SET {url}"), &shown.join(" "));
        assert_no_piece("INFO redis_pg", &info);
        let err = set.expect_err(&format!("CONFIG SET accepted a password in pg_url {url}")).to_string();
        assert!(err.contains("password"), "{err}");
        assert_no_piece("the CONFIG SET error", &err);
    }
    let shown: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("redis_pg.pg_url").query(&mut env.redis).unwrap();
    assert_eq!(shown[1], good, "the refused URLs left the setting alone");
    assert_no_piece("the Redis log", &env.servers.redis.log());
}

/// Redis URLs whose password the extension must never show; each reaches no Redis (a port
/// nothing listens on, a socket that does not exist).
fn redis_urls_with_password(dead_port: u16) -> Vec<String> {
    vec![
        format!("redis://:{PW}@127.0.0.1:{dead_port}/0"),
        format!("redis://app:{}@127.0.0.1:{dead_port}/0", percent_encoded(PW)),
        format!("redis://app:{PW}@127.0.0.1:{dead_port}/0"),
        format!("unix:///tmp/pg_redis_test_no_such.sock?db=0&pass={}", percent_encoded(PW)),
        format!("redis+unix:///tmp/pg_redis_test_no_such.sock?pass={}&db=0", PW.replace('#', "%23")),
    ]
}

#[test]
fn extension_never_shows_redis_passwords() {
    let dead_port = pg_redis_tests::harness::free_port().unwrap();
    for (n, url) in redis_urls_with_password(dead_port).into_iter().enumerate() {
        // The URL comes from postgresql.conf at start: PostgreSQL itself prints a setting
        // changed by a reload ("parameter ... changed to ..."), whatever the extension does.
        let mut opts = Options::named(&format!("redact_ext{n}"));
        opts.pg_settings =
            vec![("pg_redis.url".into(), format!("'{url}'")), ("pg_redis.retry_max_ms".into(), "300".into())];
        let mut env = Env::with(opts);
        env.sql("CREATE TABLE t (id int PRIMARY KEY)");
        if let Err(e) = env.pg.batch_execute("SELECT redis.sync_table('t', backfill => false)") {
            assert_no_piece(&format!("the sync_table error with {url}"), &e.to_string());
        }
        let _ = env.pg.batch_execute("INSERT INTO t VALUES (1)");
        // A call from SQL: its error names the server, not the secret.
        if let Err(e) = env.pg.batch_execute("SELECT redis.ping()") {
            let msg = e
                .as_db_error()
                .map(|d| format!("{} {:?} {:?}", d.message(), d.detail(), d.hint()))
                .unwrap_or_else(|| e.to_string());
            assert_no_piece(&format!("the SQL error for {url}"), &msg);
        }
        // The worker: its status while failing, and its log lines (also when it starts again).
        let t0 = Instant::now();
        loop {
            let status = check::status(&mut env.pg).join("\n");
            let worker: Vec<String> = env
                .pg
                .query("SELECT coalesce(last_error, '') FROM redis.worker_status()", &[])
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !worker.concat().is_empty() || status.contains("Redis") || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        env.sql("SELECT pg_terminate_backend(pid) FROM redis.worker_status() WHERE pid IS NOT NULL");
        std::thread::sleep(Duration::from_millis(1500));
        assert_no_piece(&format!("redis.status with {url}"), &check::status(&mut env.pg).join("\n"));
        let worker: Vec<String> = env
            .pg
            .query("SELECT coalesce(last_error, '') FROM redis.worker_status()", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_no_piece(&format!("redis.worker_status with {url}"), &worker.join("\n"));
        // The log holds the worker's lines for this URL (it names where it delivers to).
        let log = env.servers.pg.log();
        assert!(log.contains("pg_redis: delivering changes"), "the worker started: {log}");
        assert_no_piece(&format!("the PostgreSQL log with {url}"), &log);
    }
}

//! Smoke tests of the foundation: both halves load, reach each other, fail fast and clearly
//! when the other side is missing, and never show a password.

use pg_redis_tests::harness::{Options, Servers};
use std::time::{Duration, Instant};

fn start(name: &str) -> Servers {
    Servers::start(&Options::named(name)).unwrap_or_else(|e| panic!("starting servers: {e}"))
}

#[test]
fn extension_pings_redis() {
    let s = start("foundation_ping");
    let mut pg = s.pg.connect("postgres").unwrap();
    pg.batch_execute("CREATE DATABASE fresh").unwrap();
    let mut fresh = s.pg.connect("fresh").unwrap();
    fresh.batch_execute("CREATE EXTENSION pg_redis").unwrap();
    let pong: String = fresh.query_one("SELECT redis.ping()", &[]).unwrap().get(0);
    assert_eq!(pong, "PONG");
}

#[test]
fn extension_fails_fast_when_redis_is_down() {
    let mut s = start("foundation_redis_down");
    let mut pg = s.pg.connect("postgres").unwrap();
    pg.batch_execute("CREATE EXTENSION pg_redis; SET pg_redis.connect_timeout_ms = 500").unwrap();
    s.redis.stop();
    let t = Instant::now();
    let err = pg.query_one("SELECT redis.ping()", &[]).unwrap_err();
    let elapsed = t.elapsed();
    let db = err.as_db_error().expect("an SQL error");
    assert_eq!(db.code().code(), "08006", "connection_failure: {db:?}");
    assert!(db.message().contains("Redis is unavailable") && db.message().contains("127.0.0.1"), "{}", db.message());
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    // The backend survived and answers again once Redis is back.
    s.redis.start_again().unwrap();
    let pong: String = pg.query_one("SELECT redis.ping()", &[]).unwrap().get(0);
    assert_eq!(pong, "PONG");
}

#[test]
fn extension_fails_within_timeout_when_redis_hangs() {
    let s = start("foundation_redis_hangs");
    let mut pg = s.pg.connect("postgres").unwrap();
    pg.batch_execute("CREATE EXTENSION pg_redis; SET pg_redis.command_timeout_ms = 300").unwrap();
    let _: String = pg.query_one("SELECT redis.ping()", &[]).unwrap().get(0);
    s.redis.pause(true);
    let t = Instant::now();
    let err = pg.query_one("SELECT redis.ping()", &[]).unwrap_err();
    s.redis.pause(false);
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    let msg = err.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    assert!(msg.contains("did not answer") || msg.contains("unavailable"), "{msg}");
}

#[test]
fn module_pings_postgres() {
    let s = start("foundation_module_ping");
    let mut r = s.redis.client().unwrap();
    let v: String = redis::cmd("PG.PING").query(&mut r).unwrap();
    let major = pg_redis_tests::harness::major_version().unwrap();
    assert!(v.starts_with(&format!("PostgreSQL {major}.")), "{v}");
    let modules: redis::Value = redis::cmd("MODULE").arg("LIST").query(&mut r).unwrap();
    assert!(format!("{modules:?}").contains("redis_pg"));
}

#[test]
fn module_loads_with_unreachable_postgres_and_names_the_host() {
    let secret_file = std::env::temp_dir().join(format!("pg_redis_pw_{}", std::process::id()));
    std::fs::write(&secret_file, "hunter2-secret\n").unwrap();
    let mut opts = Options::named("foundation_module_bad_url");
    opts.module_pg_url = Some("postgresql://app@127.0.0.1:1/nowhere".into());
    opts.module_args =
        vec!["pg_password_file".into(), secret_file.display().to_string(), "query_timeout_ms".into(), "1000".into()];
    let s = Servers::start(&opts).unwrap();
    let mut r = s.redis.client().unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let err = redis::cmd("PG.PING").query::<String>(&mut r).unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(1500), "took {:?}", t.elapsed());
        let msg = err.to_string();
        assert!(msg.contains("PGUNAVAILABLE") && msg.contains("127.0.0.1:1"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
    let url: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("redis_pg.pg_url").query(&mut r).unwrap();
    assert_eq!(url[1], "postgresql://app@127.0.0.1:1/nowhere");
    // Redis keeps serving everything else.
    let pong: String = redis::cmd("PING").query(&mut r).unwrap();
    assert_eq!(pong, "PONG");
    assert!(!s.redis.log().contains("hunter2"));
    let _ = std::fs::remove_file(secret_file);
}

#[test]
fn module_refuses_a_password_in_its_arguments() {
    let mut opts = Options::named("foundation_module_pw_arg");
    opts.module_pg_url = Some("postgresql://app:hunter2@127.0.0.1:1/db".into());
    let err = match Servers::start(&opts) {
        Ok(_) => panic!("redis-server should refuse to load the module"),
        Err(e) => e,
    };
    assert!(err.contains("carries a password") && err.contains("pg_password_file"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn module_password_comes_from_a_file_never_from_the_url() {
    let s = start("foundation_module_config_set");
    let mut r = s.redis.client().unwrap();
    let url = format!("postgresql://postgres:hunter2@127.0.0.1:{}/postgres", s.pg.port);
    let err =
        redis::cmd("CONFIG").arg("SET").arg("redis_pg.pg_url").arg(&url).query::<()>(&mut r).unwrap_err().to_string();
    assert!(err.contains("must not carry a password") && err.contains("pg_password_file"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err =
        redis::cmd("CONFIG").arg("SET").arg("redis_pg.pg_url").arg("x\0y").query::<()>(&mut r).unwrap_err().to_string();
    assert!(err.contains("NUL"), "{err}");
    let err = redis::cmd("CONFIG")
        .arg("SET")
        .arg("redis_pg.pg_password_file")
        .arg("a\0b")
        .query::<()>(&mut r)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NUL"), "{err}");
    let v: String = redis::cmd("PG.PING").query(&mut r).unwrap();
    assert!(v.starts_with("PostgreSQL"));
    let err = redis::cmd("CONFIG")
        .arg("SET")
        .arg("redis_pg.pg_url")
        .arg("postgresql://u@h:notaport/db")
        .query::<()>(&mut r)
        .unwrap_err();
    assert!(err.to_string().contains("not a PostgreSQL connection string"), "{err}");
    let info: String = redis::cmd("INFO").arg("redis_pg").query(&mut r).unwrap();
    assert!(info.contains("redis_pg_pg_url"), "{info}");
    assert!(!s.redis.log().contains("hunter2"));
}

#[test]
fn redis_url_is_superuser_only_and_never_logged() {
    let mut opts = Options::named("foundation_url_secret");
    opts.redis_password = Some("s3cret-pw".into());
    let s = Servers::start(&opts).unwrap();
    let mut pg = s.pg.connect("postgres").unwrap();
    pg.batch_execute("CREATE EXTENSION pg_redis; CREATE ROLE app LOGIN").unwrap();
    let pong: String = pg.query_one("SELECT redis.ping()", &[]).unwrap().get(0);
    assert_eq!(pong, "PONG");
    let mut app = postgres::Client::connect(
        &format!("host=127.0.0.1 port={} user=app dbname=postgres", s.pg.port),
        postgres::NoTls,
    )
    .unwrap();
    let err = app.query_one("SHOW pg_redis.url", &[]).unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501", "insufficient_privilege");
    let rows = app.query("SELECT setting FROM pg_settings WHERE name = 'pg_redis.url'", &[]).unwrap();
    assert!(rows.is_empty(), "pg_settings hides the setting from non-superusers");
    let err = app.batch_execute("SET pg_redis.url = 'redis://evil:1'").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    // A failing connection names the server but not the password.
    pg.batch_execute("SET pg_redis.url = 'redis://:s3cret-pw@127.0.0.1:1/0'").unwrap();
    let err = pg.query_one("SELECT redis.ping()", &[]).unwrap_err();
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("127.0.0.1:1") && !msg.contains("s3cret-pw"), "{msg}");
    assert!(!s.pg.log().contains("s3cret-pw"), "the password reached the PostgreSQL log");
}

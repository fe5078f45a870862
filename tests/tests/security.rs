//! Least privilege and secrets: what a role can do without grants, what the module needs,
//! where passwords never appear, and that PG.* commands obey Redis ACLs.

use pg_redis_tests::harness::Options;
use pg_redis_tests::{check, Env};
use std::time::{Duration, Instant};

const REDIS_PW: &str = "r3dis-Secret-pw";
const PG_PW: &str = "pg-Secret-pw";

#[test]
fn writers_need_no_privilege_and_cannot_invent_changes() {
    let mut env = Env::start("sec_writers");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT redis.sync_table('t');
         CREATE ROLE writer LOGIN; GRANT INSERT, UPDATE, DELETE, SELECT ON t TO writer;",
    );
    let mut w = postgres::Client::connect(
        &format!("host=127.0.0.1 port={} user=writer dbname=postgres", env.servers.pg.port),
        postgres::NoTls,
    )
    .unwrap();
    // A writer who shadows to_jsonb (or any operator) changes nothing: the trigger calls it
    // directly, and writes the outbox as the extension's owner only with finished values.
    w.batch_execute("CREATE SCHEMA IF NOT EXISTS writer_space; SET search_path = writer_space, pg_catalog, public;")
        .ok();
    w.batch_execute("INSERT INTO public.t VALUES (1, 'a'); UPDATE public.t SET v = 'b' WHERE id = 1").unwrap();
    let err = w.batch_execute("INSERT INTO redis.outbox (op, command) VALUES ('x', ARRAY['FLUSHALL'])").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    let err = w.batch_execute("SELECT redis.on_commit('FLUSHALL')").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
    env.wait_synced();
    assert_eq!(env.get("t:1").as_deref(), Some(r#"{"v":"b","id":1}"#));
}

#[test]
fn table_owner_with_sync_rights_cannot_escalate() {
    let mut env = Env::start("sec_owner");
    env.sql(
        "CREATE ROLE owner LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO owner; GRANT USAGE ON SCHEMA redis TO owner;
         GRANT EXECUTE ON FUNCTION redis.sync_table(regclass, text, text, integer, text[], boolean, text, boolean, text), redis.resync(regclass) TO owner;",
    );
    let mut o = postgres::Client::connect(
        &format!("host=127.0.0.1 port={} user=owner dbname=postgres", env.servers.pg.port),
        postgres::NoTls,
    )
    .unwrap();
    // A json cast of the owner's own type runs with the owner's rights, not a superuser's.
    o.batch_execute(
        "CREATE TYPE mood AS ENUM ('ok');
         CREATE FUNCTION sneaky(mood) RETURNS json LANGUAGE sql AS $$ SELECT json_build_object('superuser', current_setting('is_superuser')) $$;
         CREATE CAST (mood AS json) WITH FUNCTION sneaky(mood);
         CREATE TABLE mine (id int PRIMARY KEY, m mood); INSERT INTO mine VALUES (1, 'ok');
         SELECT redis.sync_table('mine');
         INSERT INTO mine VALUES (2, 'ok');",
    )
    .unwrap();
    env.wait_synced();
    for k in ["mine:1", "mine:2"] {
        let v = env.get(k).unwrap();
        assert!(v.contains(r#""superuser":"off""#), "{k}: {v}");
    }
    // And the owner still cannot write pg_redis's catalog directly.
    let err = o.batch_execute("UPDATE redis.mapping SET key_template = 'x:{id}'").unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
}

#[test]
fn module_works_with_a_least_privilege_role_and_passwords_stay_hidden() {
    let pw_file = std::env::temp_dir().join(format!("pg_redis_module_pw_{}", std::process::id()));
    std::fs::write(&pw_file, format!("{PG_PW}\n")).unwrap();
    let mut opts = Options::named("sec_least_privilege");
    opts.redis_password = Some(REDIS_PW.into());
    opts.module_pg_url = Some("postgresql://cache_reader@127.0.0.1:1/postgres".into());
    opts.module_args = vec!["pg_password_file".into(), pw_file.display().to_string()];
    let mut env = Env::with(opts);
    env.sql(&format!(
        "CREATE ROLE cache_reader LOGIN PASSWORD '{PG_PW}';
         GRANT USAGE ON SCHEMA redis TO cache_reader; GRANT SELECT ON redis.tables TO cache_reader;
         CREATE TABLE users (id int PRIMARY KEY, v text); CREATE TABLE secret (id int PRIMARY KEY, v text);
         INSERT INTO users VALUES (1, 'one'); INSERT INTO secret VALUES (1, 'hidden');
         GRANT SELECT ON users TO cache_reader;
         SELECT redis.sync_table('users', backfill => false); SELECT redis.sync_table('secret', backfill => false);"
    ));
    env.servers.pg.require_password_for("cache_reader").unwrap();
    env.wait_synced();
    let url = format!("postgresql://cache_reader@127.0.0.1:{}/postgres", env.servers.pg.port);
    let _: () = redis::cmd("CONFIG").arg("SET").arg("redis_pg.pg_url").arg(&url).query(&mut env.redis).unwrap();
    let t0 = Instant::now();
    let v = loop {
        match redis::cmd("PG.GET").arg("users:1").query::<Option<String>>(&mut env.redis) {
            Ok(v) => break v,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "the least-privilege role never read through: {e}")
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v.as_deref(), Some(r#"{"v":"one","id":1}"#));
    let err = redis::cmd("PG.GET").arg("secret:1").query::<Option<String>>(&mut env.redis).unwrap_err().to_string();
    assert!(err.contains("permission denied"), "{err}");
    // A wrong Redis password: the SQL error and redis.status name the server, not the secret.
    env.sql(&format!("SET pg_redis.url = 'redis://:wrong-{REDIS_PW}@127.0.0.1:{}/0'", env.servers.redis.port));
    let (_, msg) = env.sql_error("SELECT redis.ping()");
    assert!(!msg.contains(REDIS_PW), "{msg}");
    env.sql("RESET pg_redis.url");
    // Nowhere a password shows.
    let mut places: Vec<(String, String)> = vec![
        ("PostgreSQL log".into(), env.servers.pg.log()),
        ("Redis log".into(), env.servers.redis.log()),
        ("INFO".into(), redis::cmd("INFO").arg("everything").query::<String>(&mut env.redis).unwrap()),
        (
            "CONFIG GET".into(),
            format!(
                "{:?}",
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("*")
                    .query::<Vec<String>>(&mut env.redis)
                    .unwrap()
                    .into_iter()
                    .filter(|v| !v.contains(REDIS_PW) || v == REDIS_PW)
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "MODULE LIST".into(),
            format!("{:?}", redis::cmd("MODULE").arg("LIST").query::<redis::Value>(&mut env.redis).unwrap()),
        ),
        ("redis.status".into(), check::status(&mut env.pg).join("\n")),
        (
            "pg_stat_activity".into(),
            env.pg.query("SELECT coalesce(string_agg(query, ' '), '') FROM pg_stat_activity", &[]).unwrap()[0].get(0),
        ),
    ];
    places.push((
        "PG.STATS".into(),
        format!("{:?}", redis::cmd("PG.STATS").query::<redis::Value>(&mut env.redis).unwrap()),
    ));
    for (place, text) in &places {
        assert!(!text.contains(PG_PW), "the PostgreSQL password shows in {place}");
    }
    // CONFIG GET requirepass is Redis's own setting; pg_redis's URL setting hides its password.
    let shown: Vec<String> = env
        .pg
        .query("SELECT setting FROM pg_settings WHERE name = 'pg_redis.url'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(shown.len(), 1, "superusers see the setting");
    for (place, text) in places.iter().filter(|(p, _)| p != "CONFIG GET") {
        assert!(!text.contains(REDIS_PW), "the Redis password shows in {place}");
    }
    let _ = std::fs::remove_file(pw_file);
}

#[test]
fn pg_commands_obey_redis_acls() {
    let mut env = Env::start("sec_acl");
    env.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); SELECT redis.sync_table('t')");
    env.wait_synced();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("app")
        .arg("on")
        .arg(">app-pw")
        .arg("~*")
        .arg("+@all")
        .arg("-pg.get")
        .arg("-pg.invalidate")
        .query(&mut env.redis)
        .unwrap();
    let mut app = redis::Client::open(format!("redis://app:app-pw@127.0.0.1:{}/0", env.servers.redis.port).as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let err = redis::cmd("PG.GET").arg("t:1").query::<Option<String>>(&mut app).unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let err = redis::cmd("PG.INVALIDATE").arg("t:1").query::<i64>(&mut app).unwrap_err();
    assert_eq!(err.code(), Some("NOPERM"), "{err}");
    let ok: Vec<Option<String>> = redis::cmd("PG.MGET").arg("t:1").query(&mut app).unwrap();
    assert!(ok[0].is_some());
    // Module ACL categories (@pgcache) need Redis 7.4; on older servers the category is unknown.
    let version: String = redis::cmd("INFO").arg("server").query(&mut env.redis).unwrap();
    let category = redis::cmd("ACL").arg("SETUSER").arg("app").arg("-@pgcache").query::<()>(&mut env.redis);
    if version.contains("redis_version:7.0") {
        assert!(category.is_err(), "Redis 7.0 has no module ACL categories");
    } else {
        category.unwrap();
        let err = redis::cmd("PG.MGET").arg("t:1").query::<redis::Value>(&mut app).unwrap_err();
        assert_eq!(err.code(), Some("NOPERM"), "{err}");
    }
}

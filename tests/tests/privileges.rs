//! The privilege model of the SQL functions that talk to Redis: what a role with EXECUTE may
//! send under each `pg_redis.sql_command_policy`, that the README's grant recipes work as
//! written, and that `wait_synced` never claims success it cannot prove.

use pg_redis_tests::Env;
use std::time::{Duration, Instant};

const STREAM: &str = "postgres.public.users";
const CHANNEL: &str = "users-changes";

/// A synced table `users` (stream and channel on) with one row, and a role `app` that may
/// execute every function of schema `redis`.
fn setup(name: &str) -> Env {
    let mut env = Env::start(name);
    env.sql(&format!(
        "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ann');
         SELECT redis.sync_table('users', channel => '{CHANNEL}');
         CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA redis TO app;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA redis TO app;"
    ));
    env.wait_synced();
    env
}

fn connect(env: &Env, role: &str) -> postgres::Client {
    postgres::Client::connect(
        &format!("host=127.0.0.1 port={} user={role} dbname=postgres", env.servers.pg.port),
        postgres::NoTls,
    )
    .unwrap_or_else(|e| panic!("connecting as {role}: {e}"))
}

/// The SQL error of `sql` run by `client`: (SQLSTATE, message, hint).
fn error_of(client: &mut postgres::Client, sql: &str) -> (String, String, String) {
    match client.batch_execute(sql) {
        Ok(()) => panic!("{sql} should have been refused"),
        Err(e) => {
            let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not an SQL error: {e}"));
            (db.code().code().to_owned(), db.message().to_owned(), db.hint().unwrap_or_default().to_owned())
        }
    }
}

/// Asserts `sql` is refused with insufficient_privilege and a message naming `names`.
fn refused(client: &mut postgres::Client, sql: &str, names: &str) {
    let (code, msg, hint) = error_of(client, sql);
    assert_eq!(code, "42501", "{sql}: {msg}");
    assert!(msg.contains(names), "{sql}: the message should name {names}: {msg}");
    assert!(!hint.is_empty(), "{sql}: the error should say what to do");
}

fn ok(client: &mut postgres::Client, sql: &str) {
    client.batch_execute(sql).unwrap_or_else(|e| {
        panic!("{sql}: {}", e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string()))
    });
}

fn row_of_ann() -> Option<String> {
    Some(r#"{"id":1,"name":"ann"}"#.to_owned())
}

#[test]
fn sql_commands_of_a_role_cannot_administer_redis_or_forge_synced_data() {
    let mut env = setup("priv_restricted");
    let mut app = connect(&env, "app");
    // Administration, emptying the server, scripts.
    refused(&mut app, "SELECT redis.command('CONFIG', 'SET', 'maxmemory', '1mb')", "CONFIG SET");
    refused(&mut app, "SELECT redis.command('acl', 'setuser', 'intruder', 'on', '>pw', '~*', '+@all')", "ACL SETUSER");
    refused(&mut app, "SELECT redis.command('FLUSHALL')", "FLUSHALL");
    refused(
        &mut app,
        "SELECT redis.command('EVAL', 'return redis.call(''SET'', ''users:1'', ''forged'')', '0')",
        "EVAL",
    );
    refused(&mut app, "SELECT redis.command('FUNCTION', 'FLUSH')", "FUNCTION FLUSH");
    refused(&mut app, "SELECT redis.command('MODULE', 'UNLOAD', 'redis_pg')", "MODULE UNLOAD");
    refused(&mut app, "SELECT redis.command('SELECT', '1')", "SELECT");
    refused(&mut app, "SELECT redis.command('PG.INVALIDATE', 'users:1')", "PG.INVALIDATE");
    // The synced table's keys, stream and channel, and pg_redis's own keys.
    refused(&mut app, "SELECT redis.command('SET', 'users:1', 'forged')", "users:1");
    refused(&mut app, "SELECT redis.set('users:1', 'forged')", "users:1");
    refused(&mut app, "SELECT redis.set('users:2', 'invented')", "users:2");
    refused(&mut app, "SELECT redis.del('mine', 'users:1')", "users:1");
    refused(&mut app, "SELECT redis.hset('users:1', '{\"name\": \"forged\"}')", "users:1");
    refused(&mut app, "SELECT redis.incrby('users:3')", "users:3");
    refused(&mut app, "SELECT redis.expire('users:1', 1)", "users:1");
    refused(&mut app, &format!("SELECT redis.xadd('{STREAM}', '{{\"op\": \"d\"}}')"), STREAM);
    refused(&mut app, &format!("SELECT redis.command('XADD', '{STREAM}', '*', 'op', 'd')"), STREAM);
    refused(&mut app, &format!("SELECT redis.command('XTRIM', '{STREAM}', 'MAXLEN', '0')"), STREAM);
    refused(&mut app, &format!("SELECT redis.publish('{CHANNEL}', 'forged event')"), CHANNEL);
    refused(&mut app, "SELECT redis.command('RENAME', 'mine', 'users:1')", "users:1");
    refused(&mut app, "SELECT redis.command('ZUNIONSTORE', 'users:9', '1', 'z')", "users:9");
    refused(
        &mut app,
        "SELECT redis.command('SET', 'pg_redis:mappings:postgres', 'forged')",
        "pg_redis:mappings:postgres",
    );
    refused(&mut app, "SELECT redis.set('pg_redis:revoke', 'users:1')", "pg_redis:revoke");
    // Nothing of it reached Redis.
    assert_eq!(env.get("users:1"), row_of_ann());
    assert_eq!(env.get("users:2"), None);
    assert_eq!(env.get("pg_redis:revoke"), None);
    let maxmemory: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory").query(&mut env.redis).unwrap();
    assert_eq!(maxmemory[1], "0");
    let users: Vec<String> = redis::cmd("ACL").arg("USERS").query(&mut env.redis).unwrap();
    assert!(!users.contains(&"intruder".to_owned()), "{users:?}");
    let entries: i64 = redis::cmd("XLEN").arg(STREAM).query(&mut env.redis).unwrap();
    assert_eq!(entries, 1, "only the backfill's event");
    // Its own keys, and reads of anything, are fine.
    ok(&mut app, "SELECT redis.set('session:9', 'x'), redis.incrby('hits'), redis.hset('cart:9', '{\"sku\": \"1\"}')");
    ok(&mut app, "SELECT redis.command('ZADD', 'top', '3', 'ann'), redis.command('ZUNIONSTORE', 'top2', '1', 'top'), redis.command('COPY', 'users:1', 'copy-of-users-1')");
    ok(&mut app, "SELECT redis.xadd('my-events', '{\"k\": \"v\"}'), redis.publish('news', 'hello'), redis.expire('session:9', 100)");
    ok(&mut app, "SELECT redis.del('session:9', 'cart:9')");
    let row: Option<String> = app.query_one("SELECT redis.get('users:1')", &[]).unwrap().get(0);
    assert_eq!(row, row_of_ann());
    ok(&mut app, &format!("SELECT redis.command('XRANGE', '{STREAM}', '-', '+'), redis.command('STRLEN', 'users:1')"));
    assert_eq!(env.get("hits").as_deref(), Some("1"));
    // A superuser may do all of it.
    env.sql("SELECT redis.command('CONFIG', 'SET', 'maxmemory-samples', '6')");
    env.sql("SELECT redis.command('SET', 'users:99', 'by a superuser'), redis.command('EVAL', 'return 1', '0')");
    assert_eq!(env.get("users:99").as_deref(), Some("by a superuser"));
}

#[test]
fn the_policy_setting_widens_and_narrows_what_roles_may_send() {
    let mut env = setup("priv_policy");
    let mut app = connect(&env, "app");
    // Only superusers choose the policy.
    let (code, _, _) = error_of(&mut app, "SET pg_redis.sql_command_policy = 'unrestricted'");
    assert_eq!(code, "42501");
    let (code, _, _) = error_of(&mut app, "SET pg_redis.sql_allowed_commands = 'flushall'");
    assert_eq!(code, "42501");
    // Allowing named commands: CONFIG GET and INFO, not CONFIG SET; the key rule still holds.
    env.sql("ALTER ROLE app SET pg_redis.sql_allowed_commands = 'config get, INFO, rename'");
    let mut app = connect(&env, "app");
    ok(&mut app, "SELECT redis.command('CONFIG', 'GET', 'maxmemory'), redis.command('INFO', 'server')");
    refused(&mut app, "SELECT redis.command('CONFIG', 'SET', 'maxmemory', '1mb')", "CONFIG SET");
    refused(&mut app, "SELECT redis.command('RENAME', 'mine', 'users:1')", "users:1");
    // Read-only: no writes at all, reads still.
    env.sql("ALTER ROLE app RESET pg_redis.sql_allowed_commands; ALTER ROLE app SET pg_redis.sql_command_policy = 'read_only'");
    let mut app = connect(&env, "app");
    refused(&mut app, "SELECT redis.set('session:1', 'x')", "read_only");
    refused(&mut app, "SELECT redis.publish('news', 'x')", "read_only");
    refused(&mut app, "SELECT redis.on_commit('DEL', 'report:today')", "read_only");
    refused(&mut app, "SELECT redis.command('FLUSHALL')", "FLUSHALL");
    let row: Option<String> = app.query_one("SELECT redis.get('users:1')", &[]).unwrap().get(0);
    assert_eq!(row, row_of_ann());
    // Unrestricted: what the Redis user of pg_redis.url may do.
    env.sql("ALTER ROLE app SET pg_redis.sql_command_policy = 'unrestricted'");
    let mut app = connect(&env, "app");
    ok(&mut app, "SELECT redis.command('CONFIG', 'SET', 'maxmemory-samples', '7'), redis.set('users:5', 'x')");
    let samples: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-samples").query(&mut env.redis).unwrap();
    assert_eq!(samples[1], "7");
    // System-wide, with the reload every setting of pg_redis takes.
    env.sql("ALTER ROLE app RESET pg_redis.sql_command_policy");
    env.sql("ALTER SYSTEM SET pg_redis.sql_command_policy = 'read_only'");
    env.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let mut app = connect(&env, "app");
    refused(&mut app, "SELECT redis.set('session:1', 'x')", "read_only");
    env.sql("ALTER SYSTEM RESET pg_redis.sql_command_policy");
    env.sql("SELECT pg_reload_conf()");
}

#[test]
fn on_commit_is_refused_when_queued_even_with_redis_down() {
    let mut env = setup("priv_on_commit");
    env.sql("ALTER SYSTEM SET pg_redis.retry_max_ms = 300");
    env.sql("SELECT pg_reload_conf()");
    env.servers.redis.kill();
    let mut app = connect(&env, "app");
    refused(&mut app, "SELECT redis.on_commit('FLUSHALL')", "FLUSHALL");
    refused(&mut app, "SELECT redis.on_commit('CONFIG', 'SET', 'maxmemory', '1mb')", "CONFIG SET");
    refused(&mut app, "SELECT redis.on_commit('EVAL', 'return 1', '0')", "EVAL");
    refused(&mut app, "SELECT redis.on_commit('SET', 'users:1', 'forged')", "users:1");
    refused(&mut app, &format!("SELECT redis.on_commit('XADD', '{STREAM}', '*', 'op', 'd')"), STREAM);
    refused(&mut app, &format!("SELECT redis.on_commit('PUBLISH', '{CHANNEL}', 'x')"), CHANNEL);
    refused(&mut app, "SELECT redis.on_commit('DEL', 'pg_redis:mappings:postgres')", "pg_redis:mappings:postgres");
    refused(&mut app, "SELECT redis.on_commit('NO.SUCH.COMMAND', 'k')", "NO.SUCH.COMMAND");
    ok(&mut app, "SELECT redis.on_commit('SET', 'report:today', 'stale')");
    env.sql("SELECT redis.on_commit('SET', 'users:98', 'queued by a superuser')");
    // (The worker may queue its own notice of a mapping change meanwhile: moving `users` to
    // WAL capture once its slot is ready.)
    let queued: i64 = env
        .pg
        .query_one(
            "SELECT count(*) FROM redis.outbox WHERE op = 'x' AND command[2] NOT LIKE 'pg_redis:mappings:%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(queued, 2, "only the allowed commands were queued");
    env.servers.redis.start_again().unwrap();
    env.redis = env.redis_client();
    env.wait_synced();
    assert_eq!(env.get("report:today").as_deref(), Some("stale"));
    assert_eq!(env.get("users:98").as_deref(), Some("queued by a superuser"));
}

/// The README's first ```sql block after `heading` that contains `text`.
fn readme_recipe(heading: &str, text: &str) -> String {
    let readme =
        std::fs::read_to_string(pg_redis_tests::harness::workspace_root().join("README.md")).expect("README.md");
    let at = readme.find(heading).unwrap_or_else(|| panic!("README has no {heading}"));
    readme[at..]
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|block| block.strip_prefix("sql\n"))
        .find(|block| block.contains(text))
        .unwrap_or_else(|| panic!("README has no sql block with {text} after {heading}"))
        .to_owned()
}

#[test]
fn the_documented_grant_recipes_work_for_the_roles_they_grant() {
    let mut env = Env::start("priv_recipes");
    env.sql(
        "CREATE ROLE app LOGIN; CREATE ROLE table_owner LOGIN;
         CREATE TABLE orders (id int PRIMARY KEY, total int); ALTER TABLE orders OWNER TO table_owner;
         INSERT INTO orders VALUES (1, 10);",
    );
    let recipe = readme_recipe("### Privileges", "GRANT");
    assert!(recipe.contains("TO app") && recipe.contains("TO table_owner"), "{recipe}");
    env.sql(&recipe);
    // The table owner syncs its table.
    let mut owner = connect(&env, "table_owner");
    ok(&mut owner, "SELECT redis.sync_table('orders')");
    // The application role uses every function it was granted.
    let mut app = connect(&env, "app");
    ok(&mut app, "SELECT redis.set('session:1', 'x', 100, false)");
    let v: Option<String> = app.query_one("SELECT redis.get('session:1')", &[]).unwrap().get(0);
    assert_eq!(v.as_deref(), Some("x"));
    ok(&mut app, "BEGIN; SELECT redis.on_commit('DEL', 'session:1'); COMMIT");
    let synced: bool = app
        .query_one("SELECT redis.wait_synced(20000)", &[])
        .unwrap_or_else(|e| panic!("wait_synced as app: {e}"))
        .get(0);
    assert!(synced);
    assert_eq!(env.get("session:1"), None, "the queued DEL ran");
    assert_eq!(env.get("orders:1").as_deref(), Some(r#"{"id":1,"total":10}"#));
    let tables: i64 = app.query_one("SELECT count(*) FROM redis.tables", &[]).unwrap().get(0);
    assert_eq!(tables, 1);
    let workers: i64 =
        app.query_one("SELECT count(*) FROM redis.status WHERE worker_pid IS NOT NULL", &[]).unwrap().get(0);
    assert!(workers >= 1);
    let state: Option<String> = app.query_one("SELECT state FROM redis.worker_status()", &[]).unwrap().get(0);
    assert!(state.is_some());
}

#[test]
fn the_documented_module_role_reads_through() {
    let mut env = Env::start("priv_module_recipe");
    env.sql(
        "CREATE TABLE users (id int PRIMARY KEY, v text); CREATE TABLE products (id int PRIMARY KEY, v text);
         INSERT INTO users VALUES (1, 'one'); INSERT INTO products VALUES (1, 'thing');
         SELECT redis.sync_table('users', backfill => false); SELECT redis.sync_table('products', backfill => false);",
    );
    let recipe =
        readme_recipe("## The Redis module", "CREATE ROLE cache_reader").replace("PASSWORD '...'", "PASSWORD 'pw'");
    env.sql(&recipe);
    env.wait_synced();
    let url = format!("postgresql://cache_reader@127.0.0.1:{}/postgres", env.servers.pg.port);
    let _: () = redis::cmd("CONFIG").arg("SET").arg("redis_pg.pg_url").arg(&url).query(&mut env.redis).unwrap();
    let n: i64 = redis::cmd("PG.RELOAD").query(&mut env.redis).unwrap();
    assert_eq!(n, 2);
    let t0 = Instant::now();
    let v = loop {
        match redis::cmd("PG.GET").arg("users:1").query::<Option<String>>(&mut env.redis) {
            Ok(v) => break v,
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(10), "cache_reader never read through: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v.as_deref(), Some(r#"{"v":"one","id":1}"#));
    let v: Option<String> = redis::cmd("PG.GET").arg("products:1").query(&mut env.redis).unwrap();
    assert_eq!(v.as_deref(), Some(r#"{"v":"thing","id":1}"#));
}

#[test]
fn wait_synced_never_reports_success_when_it_cannot_read_the_queue() {
    let mut env = Env::start("priv_wait_synced");
    env.sql("CREATE TABLE t (id int PRIMARY KEY); SELECT redis.sync_table('t')");
    env.wait_synced();
    env.sql("ALTER SYSTEM SET pg_redis.retry_max_ms = 300");
    env.sql("SELECT pg_reload_conf()");
    env.servers.redis.kill();
    env.sql("INSERT INTO t VALUES (1)");
    // A role without the right to call it is refused, never told "synced".
    env.sql("CREATE ROLE nobody LOGIN; GRANT USAGE ON SCHEMA redis TO nobody");
    let mut nobody = connect(&env, "nobody");
    let (code, _, _) = error_of(&mut nobody, "SELECT redis.wait_synced(100)");
    assert_eq!(code, "42501");
    // The queue no longer reads as pg_redis expects (its id is not an integer, so reading it
    // fails as a value error rather than an SQL ERROR): the change is pending, and wait_synced
    // must not take the failed read for an empty queue.
    env.sql(
        "ALTER TABLE redis.outbox RENAME COLUMN id TO seq; ALTER TABLE redis.outbox ADD COLUMN id numeric DEFAULT 1",
    );
    match env.pg.query_one("SELECT redis.wait_synced(300)", &[]) {
        Ok(row) => assert!(!row.get::<_, bool>(0), "wait_synced said true while a change is queued and Redis is down"),
        Err(e) => {
            let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
            assert!(msg.contains("redis.outbox"), "the error should name what could not be read: {msg}");
        }
    }
}

/// The README's `ACL SETUSER` lines, as Redis command arguments, in order.
fn readme_acl_users() -> Vec<Vec<String>> {
    let readme =
        std::fs::read_to_string(pg_redis_tests::harness::workspace_root().join("README.md")).expect("README.md");
    let at = readme.find("**With a Redis ACL user.**").expect("README has the Redis ACL recipe");
    readme[at..]
        .lines()
        .take_while(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with("ACL SETUSER"))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn the_documented_redis_acl_users_work() {
    let mut env = Env::start("priv_acl_recipe");
    let users = readme_acl_users();
    assert_eq!(users.len(), 2, "{users:?}");
    for args in &users {
        let _: () =
            redis::cmd(&args[0]).arg(&args[1..]).query(&mut env.redis).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    // The worker's user delivers row changes, queued commands, purges and resyncs.
    let port = env.servers.redis.port;
    let worker_recipe = readme_recipe("**With a Redis ACL user.**", "ALTER SYSTEM SET pg_redis.url")
        .replace("redis.internal:6379", &format!("127.0.0.1:{port}"));
    for statement in worker_recipe.split(';').filter(|s| !s.trim().is_empty()) {
        env.sql(statement);
    }
    std::thread::sleep(Duration::from_millis(300));
    env.sql(
        "CREATE TABLE users (id int PRIMARY KEY, name text); INSERT INTO users VALUES (1, 'ann'), (2, 'bob');
         SELECT redis.sync_table('users', channel => 'users-changes');
         CREATE TABLE gone (id int PRIMARY KEY); INSERT INTO gone VALUES (1); SELECT redis.sync_table('gone');",
    );
    env.wait_synced();
    env.sql("UPDATE users SET name = 'ann2' WHERE id = 1; DELETE FROM users WHERE id = 2; SELECT redis.on_commit('SET', 'report:today', 'stale')");
    env.wait_synced();
    env.sql("SELECT redis.resync('users'); SELECT redis.unsync_table('gone', purge => true)");
    env.wait_synced();
    assert_eq!(env.get("users:1").as_deref(), Some(r#"{"id":1,"name":"ann2"}"#));
    assert_eq!(env.get("users:2"), None);
    assert_eq!(env.get("gone:1"), None);
    assert_eq!(env.get("report:today").as_deref(), Some("stale"));
    let errors: i64 =
        env.pg.query_one("SELECT count(*) FROM redis.status WHERE last_error IS NOT NULL", &[]).unwrap().get(0);
    assert_eq!(errors, 0);
    // An application role's SQL sessions use the narrower user: its own keys only.
    let recipe = readme_recipe("**With a Redis ACL user.**", "ALTER ROLE app SET pg_redis.url")
        .replace("redis.internal:6379", &format!("127.0.0.1:{port}"));
    env.sql(&format!("CREATE ROLE app LOGIN; GRANT USAGE ON SCHEMA redis TO app; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA redis TO app; {recipe}"));
    let mut app = connect(&env, "app");
    ok(&mut app, "SELECT redis.set('session:1', 'x'), redis.publish('news', 'hello')");
    let row: Option<String> = app.query_one("SELECT redis.get('users:1')", &[]).unwrap().get(0);
    assert_eq!(row.as_deref(), Some(r#"{"id":1,"name":"ann2"}"#));
    let (code, msg, _) = error_of(&mut app, "SELECT redis.set('elsewhere', 'x')");
    assert_eq!(code, "38000");
    assert!(msg.to_lowercase().contains("noperm"), "{msg}");
}

/// What runs as the extension's owner names every type and function with its schema: a role
/// that may queue commands cannot slip its own code in through a temporary type or function
/// that shadows a built-in one.
#[test]
fn queueing_a_command_never_runs_the_callers_code_as_the_extension_owner() {
    let mut env = setup("priv_shadow");
    let mut app = connect(&env, "app");
    ok(
        &mut app,
        "CREATE FUNCTION pg_temp.escalate(text) RETURNS bool LANGUAGE plpgsql AS $$
           BEGIN
             IF current_user <> 'app' THEN EXECUTE 'ALTER ROLE app SUPERUSER'; END IF;
             RETURN true;
           END $$;
         CREATE DOMAIN pg_temp.\"char\" AS text CHECK (pg_temp.escalate(VALUE));
         CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (pg_temp.escalate(VALUE));
         CREATE DOMAIN pg_temp.jsonb AS pg_catalog.jsonb CHECK (pg_temp.escalate(VALUE::pg_catalog.text));",
    );
    let _ = app.batch_execute("SELECT redis.on_commit('SET', 'k', 'v')");
    let _ = app.batch_execute("SELECT redis.wait_synced(1)");
    let superuser: bool = env.pg.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'app'", &[]).unwrap().get(0);
    assert!(!superuser, "a role's temporary type ran as the extension's owner");
    env.wait_synced();
    assert_eq!(env.get("k").as_deref(), Some("v"), "the command itself was queued and ran");
}

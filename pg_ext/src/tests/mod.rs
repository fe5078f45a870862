//! `#[pg_test]`s of what needs no Redis: the test cluster points `pg_redis.url` at a port that
//! refuses at once, so these look only at what PostgreSQL itself holds (errors and their
//! SQLSTATEs, `redis.mapping`, `redis.tables`, `redis.outbox`), inside the test's transaction,
//! which is rolled back afterwards. Each area has its file; the helpers they share are here.
//!
//! Tests run side by side in one database, so each names its own tables and roles.

mod capture_rows;
mod ddl_following;
mod on_commit;
mod settings;
mod sync_refusals;

use pgrx::prelude::*;

/// Runs `sql` (statements without a result), failing the test on an error.
pub(crate) fn run(sql: &str) {
    Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}")); // ok: test assertion (test builds only)
}

/// The SQLSTATE and message `sql` fails with, or None when it succeeds. It runs in a
/// subtransaction (a PL/pgSQL exception block), so the test goes on either way. The helper
/// function is created once per session, by whoever calls first, so it also serves a test
/// that switched to another role.
pub(crate) fn failure(sql: &str) -> Option<(String, String)> {
    let exists = Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.pg_redis_failure(text)') IS NOT NULL")
        .unwrap_or_default();
    if exists != Some(true) {
        run("CREATE FUNCTION pg_temp.pg_redis_failure(sql text, OUT state text, OUT message text) LANGUAGE plpgsql AS $f$
             BEGIN
                 EXECUTE sql;
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT;
             END $f$");
    }
    let (state, message) = Spi::get_two_with_args::<String, String>(
        "SELECT state, message FROM pg_temp.pg_redis_failure($1)",
        &[sql.into()],
    )
    .unwrap_or_else(|e| panic!("{sql}: {e}")); // ok: test assertion (test builds only)
    state.map(|s| (s, message.unwrap_or_default()))
}

/// The SQLSTATE `sql` fails with ("00000" when it succeeds).
pub(crate) fn sqlstate(sql: &str) -> String {
    failure(sql).map(|f| f.0).unwrap_or_else(|| "00000".into())
}

/// The active mapping id of `table` (a name as `regclass` reads it).
pub(crate) fn mapping_id(table: &str) -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT mapping_id FROM redis.tables WHERE table_name = $1::regclass",
        &[table.into()],
    )
    .unwrap_or_else(|e| panic!("mapping of {table}: {e}")) // ok: test assertion (test builds only)
    .unwrap_or_else(|| panic!("{table} has no active mapping")) // ok: test assertion (test builds only)
}

/// The outbox rows of a mapping in queue order, one line each: `op old_row new_row` (`-` for
/// NULL).
pub(crate) fn row_events(mapping_id: i64) -> Vec<String> {
    lines(
        "SELECT format('%s %s %s', op, coalesce(old_row::text, '-'), coalesce(new_row::text, '-')) \
           FROM redis.outbox WHERE mapping_id = $1 ORDER BY id",
        mapping_id,
    )
}

/// The queued Redis commands (op 'x') after outbox id `after`, in queue order, each as its
/// words joined by spaces.
pub(crate) fn commands_after(after: i64) -> Vec<String> {
    lines("SELECT array_to_string(command, ' ') FROM redis.outbox WHERE op = 'x' AND id > $1 ORDER BY id", after)
}

/// The highest outbox id so far (0 when empty).
pub(crate) fn last_outbox_id() -> i64 {
    Spi::get_one::<i64>("SELECT coalesce(max(id), 0) FROM redis.outbox").unwrap_or_default().unwrap_or_default()
}

/// The key readers of the mappings reload on: `pg_redis:mappings:<database>`.
pub(crate) fn mappings_key() -> String {
    let db = Spi::get_one::<String>("SELECT current_database()::text").unwrap_or_default().unwrap_or_default();
    format!("pg_redis:mappings:{db}")
}

fn lines(sql: &str, arg: i64) -> Vec<String> {
    Spi::connect(|c| {
        c.select(sql, None, &[arg.into()])
            .unwrap_or_else(|e| panic!("{sql}: {e}")) // ok: test assertion (test builds only)
            .map(|r| r.get::<String>(1).ok().flatten().unwrap_or_default())
            .collect()
    })
}

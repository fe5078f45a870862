//! `redis.on_commit`: what it queues (an 'x' row holding the command) and what it refuses, with
//! SQLSTATEs: NULL arguments, no command, commands that would block or change the delivery
//! connection (refused for everyone), and, for roles other than superusers, what
//! `pg_redis.sql_command_policy` and `pg_redis.sql_allowed_commands` refuse.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{commands_after, failure, last_outbox_id, run, sqlstate};
    use pgrx::prelude::*;

    #[pg_test]
    fn a_command_is_queued_as_it_was_given() {
        let before = last_outbox_id();
        run("SELECT redis.on_commit('DEL', 'report:today')");
        run("SELECT redis.on_commit('set', 'a b', '')");
        assert_eq!(commands_after(before), vec!["DEL report:today", "set a b "]);
        assert_eq!(
            Spi::get_one_with_args::<bool>(
                "SELECT bool_and(mapping_id IS NULL AND old_row IS NULL AND new_row IS NULL) FROM redis.outbox WHERE id > $1",
                &[before.into()]
            ),
            Ok(Some(true))
        );
    }

    #[pg_test]
    fn null_arguments_and_no_command_are_refused() {
        assert_eq!(
            failure("SELECT redis.on_commit('SET', NULL, 'v')"),
            Some(("22004".into(), "argument 2 of redis.on_commit is NULL; Redis commands take strings".into()))
        );
        assert_eq!(
            failure("SELECT redis.on_commit(VARIADIC ARRAY[]::text[])"),
            Some((
                "22023".into(),
                "redis.on_commit needs a command, e.g. redis.on_commit('DEL', 'report:today')".into()
            ))
        );
    }

    #[pg_test]
    fn commands_that_would_break_delivery_are_refused_even_for_superusers() {
        for (args, name) in [
            ("'MULTI'", "MULTI"),
            ("'select', '1'", "SELECT"),
            ("'Subscribe', 'ch'", "SUBSCRIBE"),
            ("'BLPOP', 'q', '0'", "BLPOP"),
            ("'XREAD', 'block', '0', 'STREAMS', 's', '$'", "XREAD"),
            ("'CLIENT', 'KILL', 'ID', '1'", "CLIENT"),
            ("'SHUTDOWN'", "SHUTDOWN"),
        ] {
            assert_eq!(
                failure(&format!("SELECT redis.on_commit({args})")),
                Some((
                    "0A000".into(),
                    format!("{name} cannot be queued with redis.on_commit: it would block or change the state of the delivery connection")
                )),
                "{args}"
            );
        }
        // A non-blocking XREAD is only a read.
        assert_eq!(sqlstate("SELECT redis.on_commit('XREAD', 'STREAMS', 's', '0')"), "00000");
        // Superusers may queue anything else, administrative commands included.
        assert_eq!(sqlstate("SELECT redis.on_commit('FLUSHALL')"), "00000");
    }

    /// Runs `check` as a fresh role that may call redis.on_commit, with the given policy
    /// settings (set by the superuser, as they must be).
    fn as_plain_role(role: &str, settings: &[(&str, &str)], check: impl FnOnce()) {
        run(&format!("CREATE ROLE {role}"));
        run(&format!("GRANT USAGE ON SCHEMA redis TO {role}"));
        run(&format!("GRANT EXECUTE ON FUNCTION redis.on_commit TO {role}"));
        for (name, value) in settings {
            run(&format!("SET LOCAL {name} = '{value}'"));
        }
        failure("SELECT 1"); // creates the helper as its owner
        run(&format!("SET LOCAL ROLE {role}"));
        check();
        run("RESET ROLE");
    }

    #[pg_test]
    fn the_restricted_policy_refuses_admin_commands_and_protected_keys() {
        run("CREATE TABLE oc_synced (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('oc_synced', key => 'oc_synced:{id}', backfill => false)");
        as_plain_role("oc_restricted", &[("pg_redis.sql_command_policy", "restricted")], || {
            assert_eq!(sqlstate("SELECT redis.on_commit('SET', 'free:1', 'v')"), "00000");
            assert_eq!(sqlstate("SELECT redis.on_commit('DEL', 'report:today')"), "00000");
            let (state, message) = failure("SELECT redis.on_commit('FLUSHALL')").expect("FLUSHALL refused"); // ok: test assertion (test builds only)
            assert_eq!(state, "42501");
            assert!(
                message.starts_with("redis.on_commit: FLUSHALL is an administrative or scripting command"),
                "{message}"
            );
            let (state, message) =
                failure("SELECT redis.on_commit('SET', 'oc_synced:1', 'v')").expect("synced key refused"); // ok: test assertion (test builds only)
            assert_eq!(state, "42501");
            assert_eq!(
                message,
                "redis.on_commit: SET would write key \"oc_synced:1\", which belongs to synced table oc_synced (keys starting with \"oc_synced:\"): pg_redis keeps it equal to the table"
            );
            let (state, message) =
                failure("SELECT redis.on_commit('DEL', 'pg_redis:mappings:x')").expect("own key refused"); // ok: test assertion (test builds only)
            assert_eq!(state, "42501");
            assert_eq!(
                message,
                "redis.on_commit: DEL would write key \"pg_redis:mappings:x\": keys starting with \"pg_redis:\" belong to pg_redis itself"
            );
            let (state, message) = failure("SELECT redis.on_commit('NOSUCHCOMMAND', 'x')").expect("unknown refused"); // ok: test assertion (test builds only)
            assert_eq!(state, "42501");
            assert!(message.starts_with("redis.on_commit: pg_redis does not know the Redis command"), "{message}");
            // The connection-breaking commands are refused before the policy is asked.
            assert_eq!(sqlstate("SELECT redis.on_commit('MULTI')"), "0A000");
        });
    }

    #[pg_test]
    fn the_read_only_policy_refuses_writes() {
        as_plain_role("oc_read_only", &[("pg_redis.sql_command_policy", "read_only")], || {
            assert_eq!(
                failure("SELECT redis.on_commit('SET', 'free:1', 'v')"),
                Some((
                    "42501".into(),
                    "redis.on_commit: SET writes to Redis, and pg_redis.sql_command_policy is read_only".into()
                ))
            );
            assert_eq!(sqlstate("SELECT redis.on_commit('PUBLISH', 'news', 'hi')"), "42501");
            assert_eq!(sqlstate("SELECT redis.on_commit('GET', 'free:1')"), "00000");
        });
    }

    #[pg_test]
    fn allowed_commands_and_the_unrestricted_policy_let_more_through() {
        as_plain_role(
            "oc_allowed",
            &[("pg_redis.sql_command_policy", "restricted"), ("pg_redis.sql_allowed_commands", "flushall")],
            || {
                assert_eq!(sqlstate("SELECT redis.on_commit('FLUSHALL')"), "00000");
                assert_eq!(sqlstate("SELECT redis.on_commit('FLUSHDB')"), "42501");
                // Writes to pg_redis's own keys stay refused.
                assert_eq!(sqlstate("SELECT redis.on_commit('SET', 'pg_redis:x', 'v')"), "42501");
            },
        );
        as_plain_role("oc_unrestricted", &[("pg_redis.sql_command_policy", "unrestricted")], || {
            assert_eq!(sqlstate("SELECT redis.on_commit('FLUSHDB')"), "00000");
            assert_eq!(sqlstate("SELECT redis.on_commit('WATCH', 'k')"), "0A000");
        });
    }

    #[pg_test]
    fn a_plain_role_cannot_set_the_policy() {
        as_plain_role("oc_no_set", &[], || {
            assert_eq!(sqlstate("SET pg_redis.sql_command_policy = 'unrestricted'"), "42501");
            assert_eq!(sqlstate("SET pg_redis.sql_allowed_commands = 'flushall'"), "42501");
        });
    }
}

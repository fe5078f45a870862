//! What `redis.sync_table` refuses, with the SQLSTATE and message of each refusal: tables it
//! cannot key (no primary key, key columns that are missing, nullable or not unique), bad key
//! templates and options, relations that are not plain tables, someone else's table, and
//! prefixes that overlap. Also what it accepts that looks close (an UNLOGGED table, a second
//! call on a synced table), and `unsync_table` / `resync` of a table that is not synced.

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{failure, mapping_id, row_events, run, sqlstate};
    use pgrx::prelude::*;

    fn refused(sql: &str) -> (String, String) {
        failure(sql).unwrap_or_else(|| panic!("{sql} was accepted")) // ok: test assertion (test builds only)
    }

    #[pg_test]
    fn a_table_without_primary_key_is_refused() {
        run("CREATE TABLE sr_nopk (id int NOT NULL, v text)");
        assert_eq!(
            refused("SELECT redis.sync_table('sr_nopk')"),
            (
                "22023".into(),
                "table sr_nopk has no primary key, so pg_redis cannot tell which key a row belongs to".into()
            )
        );
    }

    #[pg_test(error = "table sr_nopk_msg has no primary key, so pg_redis cannot tell which key a row belongs to")]
    fn a_table_without_primary_key_is_refused_by_name() {
        run("CREATE TABLE sr_nopk_msg (id int NOT NULL, v text)");
        run("SELECT redis.sync_table('sr_nopk_msg')");
    }

    #[pg_test]
    fn a_key_column_that_does_not_exist_is_refused() {
        run("CREATE TABLE sr_cols (id int PRIMARY KEY, v text)");
        assert_eq!(
            refused("SELECT redis.sync_table('sr_cols', key => 'sr:{nope}')"),
            ("42703".into(), "column \"nope\" does not exist in table sr_cols".into())
        );
        // The same for a column of `columns`.
        assert_eq!(
            refused("SELECT redis.sync_table('sr_cols', columns => ARRAY['v', 'gone'])"),
            ("42703".into(), "column \"gone\" does not exist in table sr_cols".into())
        );
    }

    #[pg_test]
    fn bad_key_templates_are_refused() {
        run("CREATE TABLE sr_tpl (id int PRIMARY KEY, v text NOT NULL)");
        for template in ["{id}", "sr:", "sr:{id}{v}", "sr:{id}}", "sr:{id", "sr:{id}:{id}", "sr:{}", "sr:{{id}}:{{v}}"]
        {
            let (state, message) = refused(&format!("SELECT redis.sync_table('sr_tpl', key => '{template}')"));
            assert_eq!(state, "22023", "{template}: {message}");
            assert!(message.starts_with(&format!("invalid key template \"{template}\": ")), "{template}: {message}");
        }
        // Keys of pg_redis itself cannot be claimed by a table.
        let (state, message) = refused("SELECT redis.sync_table('sr_tpl', key => 'pg_redis:{id}')");
        assert_eq!(state, "22023");
        assert_eq!(
            message,
            "invalid key template \"pg_redis:{id}\": keys starting with \"pg_redis:\" belong to pg_redis itself; choose another prefix"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM redis.mapping WHERE table_name = 'sr_tpl'::regclass"),
            Ok(Some(0))
        );
    }

    #[pg_test]
    fn key_columns_that_are_not_unique_are_refused() {
        run("CREATE TABLE sr_uniq (id int PRIMARY KEY, v text NOT NULL, w text NOT NULL)");
        run("CREATE UNIQUE INDEX ON sr_uniq (w) WHERE w <> ''");
        assert_eq!(
            refused("SELECT redis.sync_table('sr_uniq', key => 'sr:{v}')"),
            (
                "22023".into(),
                "the key columns (v) of table sr_uniq are not unique, so two rows could share one Redis key".into()
            )
        );
        // A partial unique index does not make a key.
        assert_eq!(sqlstate("SELECT redis.sync_table('sr_uniq', key => 'sr:{w}')"), "22023");
        // Columns that include a unique set are unique.
        assert_eq!(sqlstate("SELECT redis.sync_table('sr_uniq', key => 'sr:{v}:{id}', backfill => false)"), "00000");
    }

    #[pg_test]
    fn a_nullable_key_column_is_refused() {
        run("CREATE TABLE sr_null (id int PRIMARY KEY, code text UNIQUE)");
        assert_eq!(
            refused("SELECT redis.sync_table('sr_null', key => 'sr:{code}')"),
            (
                "22023".into(),
                "key column \"code\" of table sr_null can be NULL, so some rows would have no Redis key".into()
            )
        );
    }

    #[pg_test]
    fn bad_options_are_refused() {
        run("CREATE TABLE sr_opts (id int PRIMARY KEY, v text)");
        let cases = [
            ("format => 'xml'", "invalid format \"xml\": use 'json' or 'hash'"),
            ("ttl => 0", "invalid ttl 0: it must be a positive number of seconds (or NULL for no expiry)"),
            ("ttl => -5", "invalid ttl -5: it must be a positive number of seconds (or NULL for no expiry)"),
            ("columns => '{}'", "invalid columns '{}': name at least one column, or pass NULL for every column"),
            ("channel => ''", "invalid channel '': name a channel, or pass NULL for no PUBLISH"),
        ];
        for (option, expected) in cases {
            assert_eq!(
                refused(&format!("SELECT redis.sync_table('sr_opts', {option})")),
                ("22023".into(), expected.into()),
                "{option}"
            );
        }
    }

    #[pg_test]
    fn relations_that_are_not_tables_are_refused() {
        run("CREATE TABLE sr_base (id int PRIMARY KEY)");
        run("CREATE VIEW sr_view AS SELECT * FROM sr_base");
        run("CREATE MATERIALIZED VIEW sr_matview AS SELECT * FROM sr_base");
        run("CREATE SEQUENCE sr_seq");
        for (rel, what) in [("sr_view", "a view"), ("sr_matview", "a materialized view"), ("sr_seq", "a sequence")] {
            assert_eq!(
                refused(&format!("SELECT redis.sync_table('{rel}')")),
                ("42809".into(), format!("{rel} is {what}; only tables (plain or partitioned) can be synced to Redis")),
            );
        }
    }

    #[pg_test]
    fn a_temporary_table_is_refused() {
        run("CREATE TEMPORARY TABLE sr_temp (id int PRIMARY KEY)");
        let (state, message) = refused("SELECT redis.sync_table('sr_temp')");
        assert_eq!(state, "42809");
        assert!(message.starts_with("pg_temp_"), "{message}");
        assert!(
            message
                .ends_with(".sr_temp is a temporary table; its rows are private to one session and cannot be synced"),
            "{message}"
        );
    }

    #[pg_test]
    fn an_unlogged_table_is_synced() {
        run("CREATE UNLOGGED TABLE sr_unlogged (id int PRIMARY KEY)");
        assert_eq!(Spi::get_one::<i64>("SELECT redis.sync_table('sr_unlogged', backfill => false)"), Ok(Some(0)));
        assert_eq!(
            Spi::get_one::<String>("SELECT key_template FROM redis.tables WHERE table_name = 'sr_unlogged'::regclass"),
            Ok(Some("sr_unlogged:{id}".into()))
        );
    }

    #[pg_test]
    fn a_table_of_another_owner_is_refused() {
        run("CREATE TABLE sr_owned (id int PRIMARY KEY)");
        run("CREATE ROLE sr_not_owner");
        run("GRANT USAGE ON SCHEMA redis TO sr_not_owner");
        run("GRANT EXECUTE ON FUNCTION redis.sync_table TO sr_not_owner");
        run("GRANT SELECT ON sr_owned TO sr_not_owner");
        failure("SELECT 1"); // creates the helper as its owner
        run("SET LOCAL ROLE sr_not_owner");
        let refusal = failure("SELECT redis.sync_table('sr_owned')");
        run("RESET ROLE");
        assert_eq!(refusal, Some(("42501".into(), "must be owner of table sr_owned to sync it to Redis".into())));
    }

    #[pg_test]
    fn overlapping_key_prefixes_are_refused() {
        run("CREATE TABLE sr_first (id int PRIMARY KEY)");
        run("CREATE TABLE sr_second (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('sr_first', key => 'sr_ov:{id}', backfill => false)");
        assert_eq!(
            refused("SELECT redis.sync_table('sr_second', key => 'sr_ov:x:{id}')"),
            (
                "22023".into(),
                "key templates \"sr_ov:{id}\" (sr_first) and \"sr_ov:x:{id}\" (sr_second) overlap: a key could belong to either table; give one of them a distinct prefix".into()
            )
        );
        assert_eq!(sqlstate("SELECT redis.sync_table('sr_second', key => 'sr_ow:{id}', backfill => false)"), "00000");
    }

    /// Not a refusal: a second sync_table replaces the mapping with a new version, and a new
    /// template first purges the keys of the old one.
    #[pg_test]
    fn syncing_again_replaces_the_mapping() {
        run("CREATE TABLE sr_twice (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('sr_twice', backfill => false)");
        let first = mapping_id("sr_twice");
        run("SELECT redis.sync_table('sr_twice', backfill => false)");
        let second = mapping_id("sr_twice");
        assert_ne!(first, second);
        assert!(row_events(first).is_empty(), "same template: nothing to purge");
        run("SELECT redis.sync_table('sr_twice', key => 'sr_twice2:{id}', backfill => false)");
        let third = mapping_id("sr_twice");
        assert_eq!(row_events(second), vec!["t - -"], "a new template purges the old keys");
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM redis.mapping WHERE table_name = 'sr_twice'::regclass AND active"
            ),
            Ok(Some(1))
        );
        assert_eq!(
            Spi::get_one_with_args::<String>("SELECT key_template FROM redis.mapping WHERE id = $1", &[third.into()]),
            Ok(Some("sr_twice2:{id}".into()))
        );
    }

    #[pg_test]
    fn unsync_and_resync_of_a_table_not_synced_are_refused() {
        run("CREATE TABLE sr_unsynced (id int PRIMARY KEY)");
        for call in ["redis.unsync_table('sr_unsynced')", "redis.resync('sr_unsynced')"] {
            assert_eq!(
                refused(&format!("SELECT {call}")),
                ("42704".into(), "table sr_unsynced is not synced to Redis".into()),
                "{call}"
            );
        }
    }
}

//! DDL on synced tables: what follows and what is refused. RENAME of the table (the mapping
//! keeps it, under its new name), RENAME COLUMN (a new mapping version when the mapping names
//! the column, its rows queued again when the value stores it, a name a key template cannot
//! hold refused), DROP COLUMN (refused for a key column, dropped from `columns` otherwise),
//! DROP TABLE (mapping retired, keys purged), and partitions joining and leaving (their rows
//! queued as reads or deletes).

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{commands_after, failure, last_outbox_id, mapping_id, mappings_key, row_events, run};
    use pgrx::prelude::*;

    fn one_string(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")) // ok: test assertion (test builds only)
    }

    #[pg_test]
    fn renaming_a_synced_table_keeps_its_mapping() {
        run("CREATE TABLE dd_old (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('dd_old', backfill => false)");
        let m = mapping_id("dd_old");
        let before = last_outbox_id();
        run("ALTER TABLE dd_old RENAME TO dd_new");
        assert_eq!(mapping_id("dd_new"), m);
        assert_eq!(
            one_string(
                "SELECT rel_name::text || ' ' || key_template FROM redis.tables WHERE table_name = 'dd_new'::regclass"
            ),
            Some("dd_new dd_old:{id}".into()),
            "the view shows the new name; the key template stays"
        );
        assert_eq!(commands_after(before), vec![format!("SET {} ddl", mappings_key())]);
        run("INSERT INTO dd_new VALUES (1)");
        assert_eq!(row_events(m), vec![r#"c - {"id": 1}"#]);
    }

    #[pg_test]
    fn renaming_a_key_column_makes_a_new_mapping_version() {
        run("CREATE TABLE dd_key (id int PRIMARY KEY, name text)");
        run("INSERT INTO dd_key VALUES (1, 'a')");
        run("SELECT redis.sync_table('dd_key', key => 'dd_key:{id}', backfill => false)");
        let old = mapping_id("dd_key");
        let before = last_outbox_id();
        run("ALTER TABLE dd_key RENAME COLUMN id TO uid");
        let new = mapping_id("dd_key");
        assert_ne!(old, new);
        assert_eq!(
            one_string(
                "SELECT key_template || ' ' || array_to_string(key_columns, ',') FROM redis.tables WHERE table_name = 'dd_key'::regclass"
            ),
            Some("dd_key:{uid} uid".into())
        );
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT active FROM redis.mapping WHERE id = $1", &[old.into()]),
            Ok(Some(false))
        );
        // Stored values name the column anew: every row is queued again, under the new version.
        assert_eq!(row_events(new), vec![r#"r - {"uid": 1, "name": "a"}"#]);
        // The event trigger's notice of the ALTER TABLE comes first (it fires inside the
        // statement), then the new version's, queued once the statement ran.
        assert_eq!(
            commands_after(before),
            vec![format!("SET {} ddl", mappings_key()), format!("SET {} {new}", mappings_key())]
        );
        // The capture triggers name the new version.
        run("INSERT INTO dd_key VALUES (2, 'b')");
        assert_eq!(row_events(new).last().map(String::as_str), Some(r#"c - {"uid": 2, "name": "b"}"#));
        assert!(row_events(old).is_empty());
    }

    #[pg_test]
    fn renaming_a_stored_column_queues_the_rows_again() {
        run("CREATE TABLE dd_stored (id int PRIMARY KEY, name text)");
        run("INSERT INTO dd_stored VALUES (1, 'a')");
        run("SELECT redis.sync_table('dd_stored', backfill => false)");
        let m = mapping_id("dd_stored");
        run("ALTER TABLE dd_stored RENAME COLUMN name TO title");
        assert_eq!(mapping_id("dd_stored"), m, "the mapping does not name the column");
        assert_eq!(row_events(m), vec![r#"r - {"id": 1, "title": "a"}"#]);
    }

    #[pg_test]
    fn renaming_a_column_outside_columns_changes_nothing() {
        run("CREATE TABLE dd_outside (id int PRIMARY KEY, name text, note text)");
        run("INSERT INTO dd_outside VALUES (1, 'a', 'x')");
        run("SELECT redis.sync_table('dd_outside', columns => ARRAY['name'], backfill => false)");
        let m = mapping_id("dd_outside");
        run("ALTER TABLE dd_outside RENAME COLUMN note TO remark");
        assert_eq!(mapping_id("dd_outside"), m);
        assert!(row_events(m).is_empty(), "{:?}", row_events(m));
        // A listed column follows into a new version.
        run("ALTER TABLE dd_outside RENAME COLUMN name TO title");
        let new = mapping_id("dd_outside");
        assert_ne!(new, m);
        assert_eq!(
            one_string(
                "SELECT array_to_string(columns, ',') FROM redis.tables WHERE table_name = 'dd_outside'::regclass"
            ),
            Some("title".into())
        );
        assert_eq!(row_events(new), vec![r#"r - {"id": 1, "title": "a", "remark": "x"}"#]);
    }

    #[pg_test]
    fn a_key_column_name_the_template_cannot_hold_is_refused() {
        run("CREATE TABLE dd_brace (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('dd_brace', backfill => false)");
        let (state, message) = failure("ALTER TABLE dd_brace RENAME COLUMN id TO \"i}d\"").expect("refused"); // ok: test assertion (test builds only)
        assert_eq!(state, "42602");
        assert!(
            message.starts_with(
                "column \"id\" is part of the Redis key, and the key template would not work with the name \"i}d\": "
            ),
            "{message}"
        );
        assert_eq!(
            one_string("SELECT key_template FROM redis.tables WHERE table_name = 'dd_brace'::regclass"),
            Some("dd_brace:{id}".into())
        );
    }

    #[pg_test]
    fn dropping_a_key_column_is_refused_and_a_listed_column_leaves_the_list() {
        run("CREATE TABLE dd_dropcol (id int PRIMARY KEY, name text, note text)");
        run("SELECT redis.sync_table('dd_dropcol', columns => ARRAY['name', 'note'], backfill => false)");
        assert_eq!(
            failure("ALTER TABLE dd_dropcol DROP COLUMN id CASCADE"),
            // The event trigger names the table schema-qualified (it runs with search_path
            // pg_catalog), unlike sync_table's messages.
            Some(("2BP01".into(), "column \"id\" is part of the Redis key of table public.dd_dropcol".into()))
        );
        run("ALTER TABLE dd_dropcol DROP COLUMN note");
        assert_eq!(
            one_string(
                "SELECT array_to_string(columns, ',') FROM redis.tables WHERE table_name = 'dd_dropcol'::regclass"
            ),
            Some("name".into())
        );
    }

    #[pg_test]
    fn dropping_a_synced_table_retires_its_mapping_and_purges_its_keys() {
        run("CREATE TABLE dd_drop (id int PRIMARY KEY)");
        run("INSERT INTO dd_drop VALUES (1)");
        run("SELECT redis.sync_table('dd_drop', backfill => false)");
        let m = mapping_id("dd_drop");
        let before = last_outbox_id();
        run("DROP TABLE dd_drop");
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT active FROM redis.mapping WHERE id = $1", &[m.into()]),
            Ok(Some(false))
        );
        assert_eq!(row_events(m), vec!["t - -"]);
        assert_eq!(commands_after(before), vec![format!("SET {} {m}", mappings_key())]);
    }

    #[pg_test]
    fn partitions_joining_and_leaving_queue_their_rows() {
        run("CREATE TABLE dd_parts (id int PRIMARY KEY) PARTITION BY RANGE (id)");
        run("CREATE TABLE dd_parts_1 PARTITION OF dd_parts FOR VALUES FROM (0) TO (10)");
        run("SELECT redis.sync_table('dd_parts', backfill => false)");
        let m = mapping_id("dd_parts");

        // Created as a partition: it gets the TRUNCATE trigger that is not cloned.
        run("CREATE TABLE dd_parts_2 PARTITION OF dd_parts FOR VALUES FROM (10) TO (20)");
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(tgname::text || ':' || tgenabled::text, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'dd_parts_2'::regclass"
            ),
            Ok(Some("pg_redis_capture:A,pg_redis_capture_truncate:A".into()))
        );

        // Attached with rows: each is read.
        run("CREATE TABLE dd_parts_3 (id int PRIMARY KEY)");
        run("INSERT INTO dd_parts_3 VALUES (21), (22)");
        run("ALTER TABLE dd_parts ATTACH PARTITION dd_parts_3 FOR VALUES FROM (20) TO (30)");
        // Detached: its rows leave.
        run("ALTER TABLE dd_parts DETACH PARTITION dd_parts_3");
        // Dropped: its rows leave too.
        run("INSERT INTO dd_parts VALUES (1)");
        run("DROP TABLE dd_parts_1");
        assert_eq!(
            row_events(m),
            vec![
                r#"r - {"id": 21}"#,
                r#"r - {"id": 22}"#,
                r#"d {"id": 21} -"#,
                r#"d {"id": 22} -"#,
                r#"c - {"id": 1}"#,
                r#"d {"id": 1} -"#,
            ]
        );
        // The detached table is no longer captured.
        run("INSERT INTO dd_parts_3 VALUES (23)");
        assert_eq!(row_events(m).len(), 6);
        assert_eq!(mapping_id("dd_parts"), m);
    }
}

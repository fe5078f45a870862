//! What the capture trigger writes to `redis.outbox`, in the writer's transaction, for each
//! operation on a synced table: INSERT ('c', the new row), UPDATE ('u', the old row only when
//! the key changed or a stream or channel wants it), DELETE ('d', the old row), TRUNCATE ('t'
//! for the table, 'S' for one partition), the backfill ('r') and the mapping-change command
//! ('x') that `sync_table` queues; and what it leaves out (updates that change nothing it
//! watches).

#[pgrx::pg_schema]
mod tests {
    use crate::tests::{commands_after, failure, last_outbox_id, mapping_id, mappings_key, row_events, run};
    use pgrx::prelude::*;

    #[pg_test]
    fn each_operation_queues_its_row_event_in_order() {
        run("CREATE TABLE cr_ops (id int PRIMARY KEY, name text)");
        assert_eq!(Spi::get_one::<i64>("SELECT redis.sync_table('cr_ops', backfill => false)"), Ok(Some(0)));
        let m = mapping_id("cr_ops");
        run("INSERT INTO cr_ops VALUES (1, 'a'), (2, 'b')");
        run("UPDATE cr_ops SET name = 'a2' WHERE id = 1");
        run("UPDATE cr_ops SET id = 3 WHERE id = 2");
        run("DELETE FROM cr_ops WHERE id = 1");
        run("TRUNCATE cr_ops");
        assert_eq!(
            row_events(m),
            vec![
                r#"c - {"id": 1, "name": "a"}"#,
                r#"c - {"id": 2, "name": "b"}"#,
                // The table has a change stream (the default), whose events carry the old row.
                r#"u {"id": 1, "name": "a"} {"id": 1, "name": "a2"}"#,
                r#"u {"id": 2, "name": "b"} {"id": 3, "name": "b"}"#,
                r#"d {"id": 1, "name": "a2"} -"#,
                "t - -",
            ]
        );
    }

    #[pg_test]
    fn without_stream_or_channel_only_a_key_change_keeps_the_old_row() {
        run("CREATE TABLE cr_nostream (id int PRIMARY KEY, name text)");
        run("SELECT redis.sync_table('cr_nostream', stream => false, backfill => false)");
        let m = mapping_id("cr_nostream");
        run("INSERT INTO cr_nostream VALUES (1, 'a')");
        run("UPDATE cr_nostream SET name = 'b'");
        run("UPDATE cr_nostream SET id = 2");
        assert_eq!(
            row_events(m),
            vec![
                r#"c - {"id": 1, "name": "a"}"#,
                r#"u - {"id": 1, "name": "b"}"#,
                r#"u {"id": 1, "name": "b"} {"id": 2, "name": "b"}"#,
            ]
        );
    }

    #[pg_test]
    fn an_update_that_changes_nothing_watched_queues_nothing() {
        run("CREATE TABLE cr_same (id int PRIMARY KEY, name text, note text)");
        run("INSERT INTO cr_same VALUES (1, 'a', 'x')");
        run("SELECT redis.sync_table('cr_same', backfill => false)");
        let m = mapping_id("cr_same");
        run("UPDATE cr_same SET name = name");
        assert!(row_events(m).is_empty(), "{:?}", row_events(m));

        // With `columns`, a change of another column is not watched either.
        run("SELECT redis.sync_table('cr_same', columns => ARRAY['name'], backfill => false)");
        let m = mapping_id("cr_same");
        run("UPDATE cr_same SET note = 'y'");
        assert!(row_events(m).is_empty(), "{:?}", row_events(m));
        run("UPDATE cr_same SET name = 'b'");
        assert_eq!(row_events(m), vec![r#"u {"id": 1, "name": "a", "note": "y"} {"id": 1, "name": "b", "note": "y"}"#]);
    }

    #[pg_test]
    fn sync_table_queues_the_backfill_and_the_mapping_change() {
        run("CREATE TABLE cr_backfill (id int PRIMARY KEY, name text)");
        run("INSERT INTO cr_backfill VALUES (1, 'a'), (2, NULL)");
        let before = last_outbox_id();
        assert_eq!(Spi::get_one::<i64>("SELECT redis.sync_table('cr_backfill')"), Ok(Some(2)));
        let m = mapping_id("cr_backfill");
        let mut events = row_events(m);
        events.sort();
        assert_eq!(events, vec![r#"r - {"id": 1, "name": "a"}"#, r#"r - {"id": 2, "name": null}"#]);
        assert_eq!(commands_after(before), vec![format!("SET {} {m}", mappings_key())]);
        // The mapping-change command comes before the backfill in the queue.
        assert_eq!(
            Spi::get_one_with_args::<bool>(
                "SELECT (SELECT max(id) FROM redis.outbox WHERE op = 'x' AND id > $1) < (SELECT min(id) FROM redis.outbox WHERE mapping_id = $2)",
                &[before.into(), m.into()]
            ),
            Ok(Some(true))
        );

        // Without backfill nothing but the command is queued.
        let before = last_outbox_id();
        assert_eq!(Spi::get_one::<i64>("SELECT redis.sync_table('cr_backfill', backfill => false)"), Ok(Some(0)));
        let m = mapping_id("cr_backfill");
        assert!(row_events(m).is_empty());
        assert_eq!(commands_after(before), vec![format!("SET {} {m}", mappings_key())]);
    }

    #[pg_test]
    fn truncating_a_partition_sweeps_and_truncating_the_table_purges_once() {
        run("CREATE TABLE cr_parts (id int PRIMARY KEY) PARTITION BY RANGE (id)");
        run("CREATE TABLE cr_parts_1 PARTITION OF cr_parts FOR VALUES FROM (0) TO (10)");
        run("CREATE TABLE cr_parts_2 PARTITION OF cr_parts FOR VALUES FROM (10) TO (20)");
        run("SELECT redis.sync_table('cr_parts', backfill => false)");
        let m = mapping_id("cr_parts");
        run("INSERT INTO cr_parts VALUES (1), (11)");
        run("TRUNCATE cr_parts_1");
        // The partitions' TRUNCATE triggers fire too; the table's purge covers them, so one
        // purge is queued for the statement and no sweep.
        run("TRUNCATE cr_parts");
        assert_eq!(row_events(m), vec![r#"c - {"id": 1}"#, r#"c - {"id": 11}"#, "S - -", "t - -"]);
    }

    #[pg_test]
    fn unsync_table_stops_the_capture() {
        run("CREATE TABLE cr_unsync (id int PRIMARY KEY)");
        run("SELECT redis.sync_table('cr_unsync', backfill => false)");
        let m = mapping_id("cr_unsync");
        run("SELECT redis.unsync_table('cr_unsync')");
        run("INSERT INTO cr_unsync VALUES (1)");
        assert!(row_events(m).is_empty());
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'cr_unsync'::regclass"),
            Ok(Some(0))
        );
        // With purge, the table's keys are deleted (in order).
        run("SELECT redis.sync_table('cr_unsync', backfill => false)");
        let m = mapping_id("cr_unsync");
        run("SELECT redis.unsync_table('cr_unsync', purge => true)");
        assert_eq!(row_events(m), vec!["t - -"]);
    }

    #[pg_test]
    fn a_capture_trigger_made_by_hand_is_refused() {
        run("CREATE TABLE cr_by_hand (id int PRIMARY KEY)");
        run("CREATE TRIGGER t AFTER INSERT ON cr_by_hand FOR EACH ROW EXECUTE FUNCTION redis.capture()");
        assert_eq!(
            failure("INSERT INTO cr_by_hand VALUES (1)"),
            Some((
                "09000".into(),
                "redis.capture() must be installed by redis.sync_table(), which passes the mapping id".into()
            ))
        );
    }
}

//! Capture from the WAL: the output plugin `pg_redis`, decoding a real PostgreSQL's WAL
//! (`wal_level = logical`) through a slot of its own, read with `pg_logical_slot_peek_changes`.
//! Each record must be what the capture trigger queues for the same change.

use pg_redis_shared::wal::{WalOp, WalRecord};
use pg_redis_shared::{Op, OutboxOp};
use pg_redis_tests::harness::Options;
use pg_redis_tests::Env;
use serde_json::Value;

/// Servers with `wal_level = logical`, and a session that may use pg_redis as an output plugin
/// (since 15.19 and 18.6 a library must be named in `output_plugin_libraries`; a superuser may
/// name it for their own session, as the delivery worker does).
fn logical(name: &str) -> Env {
    let mut opts = Options::named(name);
    opts.pg_settings.push(("wal_level".into(), "logical".into()));
    let mut env = Env::with(opts);
    env.sql("SET output_plugin_libraries = 'pg_redis'");
    // The delivery worker's slot, made: from then on sync_table captures from the WAL at once,
    // also in a transaction that already wrote (before it, such a table starts with a trigger).
    let t0 = std::time::Instant::now();
    while env.pg.query_one("SELECT count(*) FROM redis.wal_slot", &[]).expect("wal_slot").get::<_, i64>(0) == 0 {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the worker made no slot");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    env
}

fn create_slot(env: &mut Env) {
    env.sql("SELECT pg_create_logical_replication_slot('probe', 'pg_redis')");
}

/// The records of `slot` not yet consumed, keep-alives and transaction openings left out.
/// The records, without begins and keepalives, nor the delivery worker's backfill watermarks
/// (its chunks of the tables synced here; the slot decodes them too).
fn peek(env: &mut Env, slot: &str) -> Vec<WalRecord> {
    peek_all(env, slot)
        .into_iter()
        .filter(|r| !matches!(r, WalRecord::Keepalive | WalRecord::Begin { .. } | WalRecord::Watermark(_)))
        .collect()
}

fn peek_all(env: &mut Env, slot: &str) -> Vec<WalRecord> {
    env.pg
        .query("SELECT data FROM pg_logical_slot_peek_changes($1, NULL, NULL)", &[&slot])
        .expect("peek")
        .iter()
        .map(|r| WalRecord::parse(r.get::<_, &str>(0)).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// Consumes everything decoded so far.
fn consume(env: &mut Env, slot: &str) {
    env.pg.execute("SELECT count(*) FROM pg_logical_slot_get_changes($1, NULL, NULL)", &[&slot]).expect("get");
}

fn mapping_id(env: &mut Env, table: &str) -> i64 {
    env.pg
        .query_one("SELECT id FROM redis.mapping WHERE table_name = $1::text::regclass AND active", &[&table])
        .expect("mapping")
        .get(0)
}

/// (op, mapping, before, after) of a change record; None for a commit.
fn change(r: &WalRecord) -> Option<(WalOp, i64, Option<Value>, Option<Value>)> {
    let json = |t: &Option<String>| t.as_deref().map(|t| serde_json::from_str::<Value>(t).expect("row text is JSON"));
    match r {
        WalRecord::Change { mapping_id, op, before, after } => Some((*op, *mapping_id, json(before), json(after))),
        _ => None,
    }
}

fn row(op: Op) -> WalOp {
    WalOp::Outbox(OutboxOp::Row(op))
}

#[test]
fn the_plugin_decodes_committed_changes_of_synced_tables_in_commit_order() {
    let mut env = logical("wal_plugin_rows");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, note text, big text);
         CREATE TABLE other (id int PRIMARY KEY);
         SELECT redis.sync_table('t', stream => false);",
    );
    create_slot(&mut env);
    let m = mapping_id(&mut env, "t");
    // One transaction each.
    for sql in [
        "INSERT INTO t VALUES (1, 'a')",
        "INSERT INTO other VALUES (1)",
        "UPDATE t SET note = 'b' WHERE id = 1",
        "UPDATE t SET id = 2 WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "BEGIN; INSERT INTO t VALUES (3, 'rolled back'); ROLLBACK",
        "BEGIN; INSERT INTO t VALUES (4, 'kept'); SAVEPOINT s; INSERT INTO t VALUES (5, 'rolled back'); ROLLBACK TO s; COMMIT",
    ] {
        env.sql(sql);
    }
    // Each transaction with records opens with B and closes with C, both naming it.
    let mut open = None;
    for r in peek_all(&mut env, "probe") {
        match r {
            WalRecord::Begin { xid, commit_ms } => {
                assert!(open.is_none(), "a transaction opens inside another");
                open = Some((xid, commit_ms));
            }
            WalRecord::Commit { xid, commit_ms } => assert_eq!(open.take(), Some((xid, commit_ms))),
            WalRecord::Keepalive => assert!(open.is_none()),
            _ => assert!(open.is_some(), "a record outside a transaction"),
        }
    }
    // Rows queued in the outbox (the delivery worker's own) are left out here.
    let records: Vec<WalRecord> =
        peek(&mut env, "probe").into_iter().filter(|r| !matches!(r, WalRecord::Queued(_))).collect();
    let changes: Vec<_> = records.iter().filter_map(change).collect();
    let ids = |v: &Option<Value>| v.as_ref().map(|v| v["id"].clone());
    let summary: Vec<(WalOp, Option<Value>, Option<Value>)> = changes
        .iter()
        .map(|(op, mid, b, a)| {
            assert_eq!(*mid, m, "every change names t's mapping");
            (*op, ids(b), ids(a))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (row(Op::Create), None, Some(1.into())),
            // The key is kept: no old row (as the trigger queues it).
            (row(Op::Update), None, Some(1.into())),
            // A new key: the old row goes with it, to delete the old key.
            (row(Op::Update), Some(1.into()), Some(2.into())),
            (row(Op::Delete), Some(2.into()), None),
            (row(Op::Create), None, Some(4.into())),
        ]
    );
    // One commit record after each transaction with changes, none for the others (those that
    // queued rows only have theirs too, left out above).
    let commits = records
        .windows(2)
        .filter(|w| matches!(w[1], WalRecord::Commit { .. }) && !matches!(w[0], WalRecord::Commit { .. }))
        .count();
    assert_eq!(commits, 5, "{records:?}");
    let (_, _, _, after) = &changes[0];
    assert_eq!(after.as_ref().expect("after")["note"], "a");
    // The row text is to_jsonb's, byte for byte.
    let expected: String = env.pg.query_one("SELECT to_jsonb(t)::text FROM t WHERE id = 4", &[]).expect("row").get(0);
    assert!(
        matches!(&records[records.len() - 2], WalRecord::Change { after: Some(a), .. } if *a == expected),
        "{records:?}"
    );
    consume(&mut env, "probe");
    assert!(peek(&mut env, "probe").is_empty());
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

#[test]
fn large_values_the_wal_does_not_repeat_are_taken_from_the_old_row_or_reread() {
    let mut env = logical("wal_plugin_toast");
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, note text, big text);
         SELECT redis.sync_table('t', stream => false);
         ALTER TABLE t REPLICA IDENTITY DEFAULT;
         INSERT INTO t VALUES (1, 'a', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i));",
    );
    create_slot(&mut env);
    let big: String = env.pg.query_one("SELECT big FROM t", &[]).expect("big").get(0);
    // Replica identity DEFAULT (sync_table sets FULL; an owner may change it back): the WAL
    // holds a pointer to `big`, which decoding must not read.
    env.sql("UPDATE t SET note = 'b'");
    let changes: Vec<_> = peek(&mut env, "probe").iter().filter_map(change).collect();
    assert_eq!(changes.len(), 1);
    let (op, _, before, after) = &changes[0];
    assert_eq!(*op, WalOp::Refetch, "the row must be read again");
    assert!(before.is_none());
    assert_eq!(after.as_ref().expect("after")["id"], 1, "the key to read again");
    consume(&mut env, "probe");
    // Replica identity FULL: the old row holds the value.
    env.sql("ALTER TABLE t REPLICA IDENTITY FULL; UPDATE t SET note = 'c'");
    let changes: Vec<_> = peek(&mut env, "probe").iter().filter_map(change).collect();
    assert_eq!(changes.len(), 1);
    let (op, _, before, after) = &changes[0];
    assert_eq!(*op, row(Op::Update));
    assert!(before.is_none(), "the key was kept and the table has no stream consumer of the old row");
    let after = after.as_ref().expect("after");
    assert_eq!(after["note"], "c");
    assert_eq!(after["big"].as_str(), Some(big.as_str()), "the large value, whole");
    consume(&mut env, "probe");
    // An UPDATE that changes no mapped column gives no change at all.
    env.sql("UPDATE t SET note = note");
    assert!(peek(&mut env, "probe").iter().filter_map(change).next().is_none());
    // With a stream, the old row travels on, whole.
    env.sql("SELECT redis.sync_table('t', backfill => false)");
    consume(&mut env, "probe");
    env.sql("UPDATE t SET note = 'd'");
    let changes: Vec<_> = peek(&mut env, "probe").iter().filter_map(change).collect();
    let (_, _, before, _) = &changes[0];
    let before = before.as_ref().expect("the old row, for the stream");
    assert_eq!((before["note"].as_str(), before["big"].as_str()), (Some("c"), Some(big.as_str())));
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

#[test]
fn partitions_truncates_and_mapping_changes_follow_the_catalog_of_their_time() {
    let mut env = logical("wal_plugin_catalog");
    env.sql(
        "CREATE TABLE p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
         CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200);
         CREATE TABLE t (id int PRIMARY KEY, v text);",
    );
    create_slot(&mut env);
    env.sql(
        "INSERT INTO t VALUES (1, 'before it was synced');
         SELECT redis.sync_table('p');
         SELECT redis.sync_table('t');",
    );
    let (mp, mt1) = (mapping_id(&mut env, "p"), mapping_id(&mut env, "t"));
    env.sql(
        "INSERT INTO p VALUES (1, 'one'), (150, 'one hundred fifty');
         INSERT INTO t VALUES (2, 'synced');
         TRUNCATE p1;
         TRUNCATE p;
         SELECT redis.sync_table('t', key => 'thing:{id}');",
    );
    let mt2 = mapping_id(&mut env, "t");
    env.sql(
        "INSERT INTO t VALUES (3, 'new key template');
         SELECT redis.unsync_table('t');
         INSERT INTO t VALUES (4, 'no longer synced');",
    );
    assert_ne!(mt1, mt2);
    let changes: Vec<(WalOp, i64, Option<Value>)> = peek(&mut env, "probe")
        .iter()
        .filter_map(change)
        .map(|(op, m, _, a)| (op, m, a.map(|a| a["id"].clone())))
        .collect();
    // Backfill reads of sync_table go through the outbox, not the WAL: only the changes show.
    let expected = vec![
        (row(Op::Create), mp, Some(1.into())),
        (row(Op::Create), mp, Some(150.into())),
        (row(Op::Create), mt1, Some(2.into())),
        (WalOp::Outbox(OutboxOp::Sweep), mp, None),
        (row(Op::Truncate), mp, None),
        (row(Op::Create), mt2, Some(3.into())),
    ];
    assert_eq!(changes, expected);
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

#[test]
fn the_plugin_refuses_options_it_does_not_know() {
    let mut env = logical("wal_plugin_options");
    create_slot(&mut env);
    let (code, message) =
        env.sql_error("SELECT * FROM pg_logical_slot_peek_changes('probe', NULL, NULL, 'format', 'json')");
    assert_eq!(code, "22023");
    assert!(message.contains("takes no options") && message.contains("format"), "{message}");
}

#[test]
fn rows_queued_in_the_outbox_are_decoded_in_their_place_among_the_changes() {
    let mut env = logical("wal_plugin_outbox");
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'backfilled')");
    create_slot(&mut env);
    env.sql("SELECT redis.sync_table('t', stream => false)");
    let m = mapping_id(&mut env, "t");
    env.sql("INSERT INTO t VALUES (2, 'changed')");
    env.sql(
        "BEGIN; SELECT redis.on_commit('SET', 'greeting', 'hello world'); INSERT INTO t VALUES (3, 'after'); COMMIT",
    );
    let records: Vec<WalRecord> =
        peek(&mut env, "probe").into_iter().filter(|r| !matches!(r, WalRecord::Commit { .. })).collect();
    let summary: Vec<String> = records
        .iter()
        .map(|r| match r {
            WalRecord::Queued(q) => {
                let row = q.new_row.as_deref().map(|t| serde_json::from_str::<Value>(t).expect("JSON")["id"].clone());
                format!("queued {} {:?} {:?} {:?}", q.op, q.mapping_id.map(|id| id == m), row, q.command)
            }
            other => {
                let (op, mid, _, after) = change(other).expect("a change");
                format!("change {op:?} {} {:?}", mid == m, after.map(|a| a["id"].clone()))
            }
        })
        .collect();
    // The table is captured from the WAL: its changes are decoded, never queued as well.
    let decoded_change = |id: i64| format!("change Outbox(Row(Create)) true Some(Number({id}))");
    assert_eq!(
        summary,
        vec![
            // sync_table: the module is told the mappings changed (the worker reads the backfill
            // in chunks: no queued read).
            format!("queued x None None Some([\"SET\", \"pg_redis:mappings:postgres\", \"{m}\"])"),
            decoded_change(2),
            "queued x None None Some([\"SET\", \"greeting\", \"hello world\"])".to_owned(),
            decoded_change(3),
        ],
        "{records:?}"
    );
}

#[test]
fn a_replica_identity_without_the_key_sweeps_instead_of_leaving_a_stale_key() {
    let mut env = logical("wal_plugin_identity");
    env.sql(
        "CREATE TABLE u (id int PRIMARY KEY, email text NOT NULL UNIQUE, note text);
         INSERT INTO u VALUES (1, 'a@example.com', 'x');
         SELECT redis.sync_table('u', key => 'user:{email}', stream => false);
         ALTER TABLE u REPLICA IDENTITY DEFAULT;",
    );
    let m = mapping_id(&mut env, "u");
    create_slot(&mut env);
    // The identity is the primary key, the key is the email: a new email arrives without the
    // old one, so the old key can only be found by a sweep.
    env.sql("UPDATE u SET email = 'b@example.com' WHERE id = 1");
    env.sql("DELETE FROM u WHERE id = 1");
    let ops: Vec<(WalOp, i64)> =
        peek(&mut env, "probe").iter().filter_map(change).map(|(op, mid, _, _)| (op, mid)).collect();
    let sweep = WalOp::Outbox(OutboxOp::Sweep);
    assert_eq!(ops, vec![(row(Op::Update), m), (sweep, m), (sweep, m)]);
    consume(&mut env, "probe");
    // One sweep per transaction, however many rows asked for one (a sweep scans every key).
    env.sql("INSERT INTO u SELECT g, 'bulk' || g || '@example.com' FROM generate_series(10, 12) g");
    env.sql("UPDATE u SET note = 'bulk' WHERE id >= 10");
    let ops: Vec<WalOp> = peek(&mut env, "probe").iter().filter_map(change).map(|(op, ..)| op).collect();
    let (c, u) = (row(Op::Create), row(Op::Update));
    assert_eq!(ops, vec![c, c, c, u, u, u, sweep]);
    env.sql("DELETE FROM u");
    consume(&mut env, "probe");
    // An identity index on the key: the old key comes with every change of it.
    env.sql(
        "ALTER TABLE u REPLICA IDENTITY USING INDEX u_email_key;
         INSERT INTO u VALUES (2, 'c@example.com', 'y');",
    );
    env.sql("UPDATE u SET email = 'd@example.com' WHERE id = 2");
    env.sql("UPDATE u SET note = 'z' WHERE id = 2");
    env.sql("DELETE FROM u WHERE id = 2");
    let emails: Vec<(WalOp, Option<Value>, Option<Value>)> = peek(&mut env, "probe")
        .iter()
        .filter_map(change)
        .map(|(op, _, b, a)| (op, b.map(|b| b["email"].clone()), a.map(|a| a["email"].clone())))
        .collect();
    assert_eq!(
        emails,
        vec![
            (row(Op::Create), None, Some("c@example.com".into())),
            (row(Op::Update), Some("c@example.com".into()), Some("d@example.com".into())),
            (row(Op::Update), None, Some("d@example.com".into())),
            (row(Op::Delete), Some("d@example.com".into()), None),
        ]
    );
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

#[test]
fn a_detached_partition_is_no_longer_decoded_as_its_parent() {
    let mut env = logical("wal_plugin_detach");
    env.sql(
        "CREATE TABLE p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
         CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200);
         SELECT redis.sync_table('p', stream => false);",
    );
    create_slot(&mut env);
    env.sql("INSERT INTO p2 VALUES (150, 'while attached')");
    env.sql("ALTER TABLE p DETACH PARTITION p2");
    env.sql("INSERT INTO p2 VALUES (160, 'detached')");
    env.sql("ALTER TABLE p ATTACH PARTITION p2 FOR VALUES FROM (100) TO (200)");
    env.sql("INSERT INTO p2 VALUES (170, 'attached again')");
    let ids: Vec<Option<Value>> = peek(&mut env, "probe")
        .iter()
        .filter_map(change)
        .filter(|(op, ..)| *op == row(Op::Create))
        .map(|(_, _, _, a)| a.map(|a| a["id"].clone()))
        .collect();
    assert_eq!(ids, vec![Some(150.into()), Some(170.into())]);
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

#[test]
fn a_row_whose_text_raises_an_error_is_reported_and_decoding_goes_on() {
    let mut env = logical("wal_plugin_poison");
    // A type whose cast to json (user code, which to_jsonb calls) fails for one value. WAL
    // capture installs no trigger: the writer never runs the cast.
    env.sql(
        "CREATE TYPE mood AS ENUM ('ok', 'bad');
         CREATE FUNCTION mood_json(mood) RETURNS json LANGUAGE sql
           AS $$ SELECT CASE WHEN $1 = 'bad' THEN ($1::text::int)::text::json ELSE to_json($1::text) END $$;
         CREATE CAST (mood AS json) WITH FUNCTION mood_json(mood);
         CREATE TABLE t (id int PRIMARY KEY, m mood);
         SELECT redis.sync_table('t', stream => false);",
    );
    let m = mapping_id(&mut env, "t");
    create_slot(&mut env);
    for (id, mood) in [(1, "ok"), (2, "bad"), (3, "ok")] {
        env.pg.execute("INSERT INTO t VALUES ($1, $2::text::mood)", &[&id, &mood]).expect("insert");
    }
    let records: Vec<WalRecord> =
        peek(&mut env, "probe").into_iter().filter(|r| !matches!(r, WalRecord::Commit { .. })).collect();
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(matches!(&records[0], WalRecord::Change { after: Some(a), .. } if a.contains("\"ok\"")), "{records:?}");
    assert!(
        matches!(&records[1], WalRecord::Undecodable { mapping_id, reason } if *mapping_id == m && reason.contains("invalid input syntax for type integer")),
        "{records:?}"
    );
    assert!(matches!(&records[2], WalRecord::Change { after: Some(a), .. } if a.contains("\"id\": 3")), "{records:?}");
    env.sql("SELECT pg_drop_replication_slot('probe')");
}

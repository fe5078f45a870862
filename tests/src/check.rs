//! Consistency checks between PostgreSQL and Redis, used by the end-to-end, race and chaos
//! tests: every row of a synced table must be in Redis byte for byte, and no key of the table
//! may exist without its row.

use pg_redis_shared::mapping::{CatalogRow, ACTIVE_MAPPINGS_SQL};
use pg_redis_shared::{Encoded, TableMapping};
use std::collections::{BTreeMap, BTreeSet};

/// The active mappings, read the way the module reads them.
pub fn mappings(pg: &mut postgres::Client) -> Vec<TableMapping> {
    pg.query(ACTIVE_MAPPINGS_SQL, &[])
        .expect("reading redis.tables")
        .into_iter()
        .map(|r| {
            let row = CatalogRow::decode(&r).expect("catalog columns").expect("no NULL in NOT NULL columns");
            TableMapping::try_from(row).expect("a valid mapping")
        })
        .collect()
}

pub fn mapping_of(pg: &mut postgres::Client, table: &str) -> TableMapping {
    mappings(pg).into_iter().find(|m| m.table == table).unwrap_or_else(|| panic!("{table} is not synced"))
}

/// What Redis must hold for `table`: key → encoded value, from `to_jsonb` of every row.
pub fn expected(pg: &mut postgres::Client, m: &TableMapping) -> BTreeMap<String, Encoded> {
    // Under the canonical settings, whatever this session's own (see CANONICAL_SETTINGS).
    let mut tx = pg.transaction().expect("BEGIN");
    for (name, value) in pg_redis_shared::encoding::CANONICAL_SETTINGS {
        tx.execute("SELECT set_config($1, $2, true)", &[name, value]).expect("set_config");
    }
    let rows =
        tx.query(&format!("SELECT to_jsonb(t.*)::text FROM {} t", m.quoted_name()), &[]).expect("reading the table");
    tx.commit().expect("COMMIT");
    rows.iter().map(|r| m.encode_text(r.get::<_, &str>(0)).expect("encodable row")).collect()
}

/// What Redis holds at one key.
pub fn actual(redis: &mut redis::Connection, key: &str) -> Option<Encoded> {
    let kind: String = redis::cmd("TYPE").arg(key).query(redis).expect("TYPE");
    match kind.as_str() {
        "none" => None,
        "string" => Some(Encoded::Json(redis::cmd("GET").arg(key).query(redis).expect("GET"))),
        "hash" => {
            let mut fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(redis).expect("HGETALL");
            fields.sort();
            Some(Encoded::Hash(fields))
        }
        other => panic!("{key} holds a {other}"),
    }
}

/// [`actual`] of many keys, pipelined (a table of a million rows is checked in seconds).
pub fn actual_many(redis: &mut redis::Connection, keys: &[&String]) -> Vec<Option<Encoded>> {
    let mut out = Vec::with_capacity(keys.len());
    for part in keys.chunks(2000) {
        let mut types = redis::pipe();
        for k in part {
            types.cmd("TYPE").arg(*k);
        }
        let kinds: Vec<String> = types.query(redis).expect("TYPE");
        let mut values = redis::pipe();
        for (k, kind) in part.iter().zip(&kinds) {
            match kind.as_str() {
                "hash" => values.cmd("HGETALL").arg(*k),
                // A key gone since TYPE reads as nil, as if "none".
                _ => values.cmd("GET").arg(*k),
            };
        }
        let got: Vec<redis::Value> = values.query(redis).expect("GET/HGETALL");
        for ((k, kind), v) in part.iter().zip(&kinds).zip(got) {
            out.push(match kind.as_str() {
                "none" => None,
                "string" => Some(Encoded::Json(redis::from_redis_value(v).expect("GET"))),
                "hash" => {
                    let mut fields: Vec<(String, String)> = redis::from_redis_value(v).expect("HGETALL");
                    fields.sort();
                    Some(Encoded::Hash(fields))
                }
                other => panic!("{k} holds a {other}"),
            });
        }
    }
    out
}

/// Every difference between the table and Redis, as readable lines (empty: consistent).
pub fn divergence(pg: &mut postgres::Client, redis: &mut redis::Connection, table: &str) -> Vec<String> {
    compare(pg, redis, table, false)
}

/// Like [`divergence`] for a cache clients also delete from: a row's key may be absent (a miss),
/// and then `PG.GET` must read the row through, byte for byte. A key without its row, or a
/// cached value that differs from the row, is still divergence.
pub fn divergence_as_cache(pg: &mut postgres::Client, redis: &mut redis::Connection, table: &str) -> Vec<String> {
    compare(pg, redis, table, true)
}

fn compare(pg: &mut postgres::Client, redis: &mut redis::Connection, table: &str, misses_allowed: bool) -> Vec<String> {
    let m = mapping_of(pg, table);
    let want = expected(pg, &m);
    let mut problems = Vec::new();
    let keys: Vec<&String> = want.keys().collect();
    let found = actual_many(redis, &keys);
    for ((key, value), found) in want.iter().zip(found) {
        let value = match value {
            Encoded::Hash(f) => {
                let mut f = f.clone();
                f.sort();
                Encoded::Hash(f)
            }
            v => v.clone(),
        };
        match found {
            Some(got) if got == value => {}
            None if misses_allowed => match (&value, read_through(redis, key)) {
                (Encoded::Json(want), Ok(Some(got))) if got == *want => {}
                (_, got) => {
                    problems.push(format!("{key}: absent, and PG.GET read through {got:?}, the row is {value:?}"))
                }
            },
            got => problems.push(format!("{key}: Redis has {got:?}, the row is {value:?}")),
        }
    }
    let keys: BTreeSet<String> = redis::cmd("KEYS")
        .arg(m.key.scan_pattern())
        .query::<Vec<String>>(redis)
        .expect("KEYS")
        .into_iter()
        .filter(|k| m.key.matches(k))
        .collect();
    for k in keys {
        if !want.contains_key(&k) {
            problems.push(format!("{k}: in Redis, but no such row"));
        }
    }
    problems
}

/// `PG.GET` of a key, waiting out (up to 15 s) the module's answer that PostgreSQL is unavailable,
/// busy or slow: after a crash restart it backs off before reconnecting, which is not divergence.
fn read_through(redis: &mut redis::Connection, key: &str) -> redis::RedisResult<Option<String>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let r = redis::cmd("PG.GET").arg(key).query::<Option<String>>(redis);
        let transient = matches!(&r, Err(e) if matches!(e.code(), Some("PGUNAVAILABLE" | "BUSY" | "TIMEOUT")));
        if !transient || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Panics with every difference if the table and Redis disagree.
pub fn assert_consistent(pg: &mut postgres::Client, redis: &mut redis::Connection, table: &str) {
    let problems = divergence(pg, redis, table);
    assert!(problems.is_empty(), "{} divergent keys in {table}:\n{}", problems.len(), problems.join("\n"));
}

/// `SELECT redis.wait_synced(ms)`, asserting it succeeded.
pub fn wait_synced(pg: &mut postgres::Client, ms: i32) {
    let ok: bool = pg.query_one("SELECT redis.wait_synced($1)", &[&ms]).expect("wait_synced").get(0);
    assert!(ok, "changes were not delivered within {ms} ms; status: {:?}", status(pg));
}

pub fn status(pg: &mut postgres::Client) -> Vec<String> {
    pg.query("SELECT s::text FROM redis.status s", &[])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

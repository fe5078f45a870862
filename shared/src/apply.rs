//! How a captured change is applied to Redis: the commands, in order. Pure logic, so the
//! exact commands are unit-tested here and the worker only sends them.
//!
//! Applying a change twice leaves the same keys (at-least-once delivery is harmless); a
//! stream may then hold the event twice, and its `source.sequence` tells duplicates apart.

use crate::encoding::{self, Row};
use crate::error::Result;
use crate::event::{ChangeEvent, Op, Source, CONNECTOR, VERSION};
use crate::mapping::{Encoded, TableMapping};

/// Keys starting with this belong to pg_redis itself; templates may not overlap it.
pub const RESERVED_PREFIX: &str = "pg_redis:";

/// Start of the keys the worker writes after the mappings of a database changed (the database
/// name follows); the module watches them and reloads its mappings from PostgreSQL. The
/// catalog's SQL (`sql/pg_redis_objects.sql`) writes it too, as a literal: a test below checks
/// that they agree.
pub const MAPPINGS_CHANGED_PREFIX: &str = "pg_redis:mappings:";

/// The key the worker writes after the mappings of `database` changed.
pub fn mappings_changed_key(database: &str) -> String {
    format!("{MAPPINGS_CHANGED_PREFIX}{database}")
}

/// Written (value: a key) just before a row's key is deleted. A read-through fill that started
/// earlier may be about to store the deleted row at a key that does not exist yet, which no
/// keyspace event of the DEL would reveal; the module watches this key and revokes the fill.
pub const REVOKE_KEY: &str = "pg_redis:revoke";
/// Likewise for every key starting with the value (TRUNCATE).
pub const REVOKE_PREFIX_KEY: &str = "pg_redis:revoke-prefix";

fn delete_key(key: &str, cmds: &mut Vec<Command>) {
    cmds.push(vec!["SET".into(), REVOKE_KEY.into(), key.to_owned()]);
    cmds.push(vec!["DEL".into(), key.to_owned()]);
}

/// One row of the outbox, as the worker reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedChange {
    /// Outbox id: the capture order.
    pub id: i64,
    pub op: Op,
    pub tx_id: i64,
    /// When it was captured, ms since the epoch.
    pub captured_ms: i64,
    /// Text of the old row's jsonb (updates and deletes).
    pub before: Option<String>,
    /// Text of the new row's jsonb (inserts, updates, reads).
    pub after: Option<String>,
}

/// Where and how events are written, beyond the mapping.
#[derive(Clone, Debug)]
pub struct ApplyContext<'a> {
    pub database: &'a str,
    /// Approximate cap of each stream (`MAXLEN ~ n`); 0 leaves streams untrimmed.
    pub stream_maxlen: u64,
    /// Delivery time, ms since the epoch.
    pub now_ms: i64,
}

pub type Command = Vec<String>;

/// What the worker does, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Commands to pipeline.
    Commands(Vec<Command>),
    /// Delete every key of the table: `SCAN MATCH pattern` in batches, keeping only keys the
    /// template parses (TRUNCATE).
    DeleteAllKeys { scan_pattern: String },
    /// Delete the keys of the table whose rows no longer exist (resync): `SCAN MATCH pattern`,
    /// ask PostgreSQL which of the parsed keys still have a row, delete the others.
    SweepKeys { scan_pattern: String },
}

/// The steps applying one change of `mapping`'s table.
pub fn plan(mapping: &TableMapping, change: &CapturedChange, ctx: &ApplyContext) -> Result<Vec<Step>> {
    let before = change.before.as_deref().map(|t| parse_prepared(mapping, t)).transpose()?;
    let after = change.after.as_deref().map(|t| parse_prepared(mapping, t)).transpose()?;
    let mut cmds = Vec::new();
    let mut steps = Vec::new();
    match (change.op, before, after) {
        (Op::Truncate, _, _) => {
            steps.push(Step::Commands(vec![vec![
                "SET".into(),
                REVOKE_PREFIX_KEY.into(),
                mapping.key.prefix().to_owned(),
            ]]));
            steps.push(Step::DeleteAllKeys { scan_pattern: mapping.key.scan_pattern() });
            emit(mapping, change, ctx, &mut cmds, Op::Truncate, "", None, None);
        }
        (Op::Delete, Some((old_key, old)), _) => {
            delete_key(&old_key, &mut cmds);
            emit(mapping, change, ctx, &mut cmds, Op::Delete, &old_key, Some(old), None);
        }
        (Op::Update, Some((old_key, old)), Some((new_key, new))) if old_key != new_key => {
            // A key change is a delete of the old key and a create of the new one (as Debezium
            // reports primary-key changes).
            delete_key(&old_key, &mut cmds);
            emit(mapping, change, ctx, &mut cmds, Op::Delete, &old_key, Some(old), None);
            write_value(mapping, &new_key, &new, &mut cmds);
            emit(mapping, change, ctx, &mut cmds, Op::Create, &new_key, None, Some(new));
        }
        (op @ (Op::Create | Op::Update | Op::Read), before, Some((new_key, new))) => {
            write_value(mapping, &new_key, &new, &mut cmds);
            emit(mapping, change, ctx, &mut cmds, op, &new_key, before.map(|b| b.1), Some(new));
        }
        (op, b, a) => {
            return Err(crate::Error::MalformedRow {
                reason: format!(
                    "outbox row {} has op '{}' with{} old row and with{} new row",
                    change.id,
                    op.code(),
                    if b.is_some() { "" } else { "out" },
                    if a.is_some() { "" } else { "out" }
                ),
            })
        }
    }
    if !cmds.is_empty() {
        steps.push(Step::Commands(cmds));
    }
    Ok(steps)
}

fn parse_prepared(mapping: &TableMapping, jsonb_text: &str) -> Result<(String, Row)> {
    mapping.prepare(encoding::parse_row(jsonb_text)?)
}

/// The commands that store a row at its key, replacing what was there.
pub fn write_value(mapping: &TableMapping, key: &str, stored: &Row, cmds: &mut Vec<Command>) {
    let ttl = mapping.ttl.map(|t| t.to_string());
    match mapping.encode_value(stored) {
        Encoded::Json(v) => {
            let mut c = vec!["SET".into(), key.to_owned(), v];
            if let Some(t) = ttl {
                c.extend(["EX".into(), t]);
            }
            cmds.push(c);
        }
        Encoded::Hash(fields) => {
            // Every field is replaced at once (a reader never sees a mix of two versions): the
            // delivery sends a table's commands as one MULTI/EXEC, so these need none of their own.
            cmds.push(vec!["DEL".into(), key.to_owned()]);
            if !fields.is_empty() {
                let mut c = Vec::with_capacity(2 + 2 * fields.len());
                c.extend(["HSET".into(), key.to_owned()]);
                for (f, v) in fields {
                    c.push(f);
                    c.push(v);
                }
                cmds.push(c);
                if let Some(t) = ttl {
                    cmds.push(vec!["EXPIRE".into(), key.to_owned(), t]);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn emit(
    mapping: &TableMapping,
    change: &CapturedChange,
    ctx: &ApplyContext,
    cmds: &mut Vec<Command>,
    op: Op,
    key: &str,
    before: Option<Row>,
    after: Option<Row>,
) {
    if mapping.stream_key.is_none() && mapping.channel.is_none() {
        return;
    }
    let event = ChangeEvent {
        before,
        after,
        source: Source {
            version: VERSION.into(),
            connector: CONNECTOR.into(),
            name: ctx.database.into(),
            ts_ms: change.captured_ms,
            snapshot: if op == Op::Read { "true" } else { "false" }.into(),
            db: ctx.database.into(),
            schema: mapping.schema.clone(),
            table: mapping.table.clone(),
            tx_id: change.tx_id,
            sequence: change.id.to_string(),
        },
        op,
        ts_ms: ctx.now_ms,
    }
    .to_json();
    let publish = mapping.channel.as_ref().map(|ch| vec!["PUBLISH".into(), ch.clone(), event.clone()]);
    if let Some(stream) = &mapping.stream_key {
        let mut c = vec!["XADD".into(), stream.clone()];
        if ctx.stream_maxlen > 0 {
            c.extend(["MAXLEN".into(), "~".into(), ctx.stream_maxlen.to_string()]);
        }
        c.extend(["*".into(), "key".into(), key.to_owned(), "value".into(), event]);
        cmds.push(c);
    }
    cmds.extend(publish);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_keys_share_the_prefix() {
        for k in [MAPPINGS_CHANGED_PREFIX, REVOKE_KEY, REVOKE_PREFIX_KEY] {
            assert!(k.starts_with(RESERVED_PREFIX), "{k}");
        }
        assert_eq!(mappings_changed_key("app"), "pg_redis:mappings:app");
    }

    #[test]
    fn catalog_sql_writes_the_same_mappings_key() {
        // The SQL file cannot name the constant; it must spell it the same way.
        let sql = include_str!("../../sql/pg_redis_objects.sql");
        assert!(sql.contains(&format!("'{MAPPINGS_CHANGED_PREFIX}' || current_database()")));
    }
    use crate::{Format, KeyTemplate};

    fn mapping() -> TableMapping {
        TableMapping {
            id: 3,
            schema: "public".into(),
            table: "users".into(),
            key: KeyTemplate::parse("users:{id}").unwrap(),
            key_types: vec!["integer".into()],
            format: Format::Json,
            ttl: None,
            columns: None,
            stream_key: None,
            channel: None,
        }
    }

    fn change(op: Op, before: Option<&str>, after: Option<&str>) -> CapturedChange {
        CapturedChange {
            id: 10,
            op,
            tx_id: 500,
            captured_ms: 1000,
            before: before.map(Into::into),
            after: after.map(Into::into),
        }
    }

    const CTX: ApplyContext = ApplyContext { database: "app", stream_maxlen: 100, now_ms: 2000 };

    fn cmds(steps: &[Step]) -> Vec<Command> {
        steps
            .iter()
            .flat_map(|s| match s {
                Step::Commands(c) => c.clone(),
                Step::DeleteAllKeys { scan_pattern } => vec![vec!["<purge>".to_string(), scan_pattern.clone()]],
                Step::SweepKeys { scan_pattern } => vec![vec!["<sweep>".to_string(), scan_pattern.clone()]],
            })
            .collect()
    }

    fn s(v: &[&str]) -> Command {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn insert_update_delete() {
        let m = mapping();
        let ins = plan(&m, &change(Op::Create, None, Some(r#"{"id": 1, "n": "a"}"#)), &CTX).unwrap();
        assert_eq!(cmds(&ins), vec![s(&["SET", "users:1", r#"{"id":1,"n":"a"}"#])]);
        let del = plan(&m, &change(Op::Delete, Some(r#"{"id": 1, "n": "a"}"#), None), &CTX).unwrap();
        assert_eq!(cmds(&del), vec![s(&["SET", REVOKE_KEY, "users:1"]), s(&["DEL", "users:1"])]);
        let moved = plan(&m, &change(Op::Update, Some(r#"{"id": 1}"#), Some(r#"{"id": 2}"#)), &CTX).unwrap();
        assert_eq!(
            cmds(&moved),
            vec![s(&["SET", REVOKE_KEY, "users:1"]), s(&["DEL", "users:1"]), s(&["SET", "users:2", r#"{"id":2}"#])]
        );
    }

    #[test]
    fn ttl_hash_and_truncate() {
        let mut m = mapping();
        m.format = Format::Hash;
        m.ttl = Some(60);
        let up =
            plan(&m, &change(Op::Update, Some(r#"{"id": 1}"#), Some(r#"{"id": 1, "n": null, "x": 2}"#)), &CTX).unwrap();
        assert_eq!(
            cmds(&up),
            vec![s(&["DEL", "users:1"]), s(&["HSET", "users:1", "id", "1", "x", "2"]), s(&["EXPIRE", "users:1", "60"])]
        );
        let t = plan(&m, &change(Op::Truncate, None, None), &CTX).unwrap();
        assert_eq!(cmds(&t), vec![s(&["SET", REVOKE_PREFIX_KEY, "users:"]), s(&["<purge>", "users:*"])]);
    }

    #[test]
    fn stream_and_channel_carry_the_event() {
        let mut m = mapping();
        m.stream_key = Some("app.public.users".into());
        m.channel = Some("users_changes".into());
        m.columns = Some(vec!["id".into()]);
        let steps = plan(&m, &change(Op::Update, Some(r#"{"id": 1, "n": "a"}"#), Some(r#"{"id": 1, "n": "b"}"#)), &CTX)
            .unwrap();
        let c = cmds(&steps);
        assert_eq!(c.len(), 3);
        assert_eq!(
            &c[1][..9],
            &s(&["XADD", "app.public.users", "MAXLEN", "~", "100", "*", "key", "users:1", "value"])[..]
        );
        let ev: ChangeEvent = serde_json::from_str(&c[1][9]).unwrap();
        assert_eq!(ev.op, Op::Update);
        assert_eq!(ev.source.sequence, "10");
        assert_eq!(ev.source.tx_id, 500);
        assert_eq!(serde_json::to_string(&ev.before).unwrap(), r#"{"id":1}"#);
        assert_eq!(c[2][..2], s(&["PUBLISH", "users_changes"])[..]);
        assert_eq!(c[2][2], c[1][9]);
    }

    #[test]
    fn malformed_changes_are_errors() {
        let e = plan(&mapping(), &change(Op::Delete, None, None), &CTX).unwrap_err();
        assert!(e.to_string().contains("outbox row 10"), "{e}");
        assert!(plan(&mapping(), &change(Op::Create, None, Some(r#"{"id": null}"#)), &CTX).is_err());
    }
}

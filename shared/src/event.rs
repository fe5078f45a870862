//! The change event: a Debezium-shaped envelope, so consumers written for Debezium's Redis
//! streams (`XADD <stream> * key <key> value <event>`) read ours unchanged.

use crate::encoding::Row;
use serde::{Deserialize, Serialize};

/// What happened to the row, in Debezium's letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "c")]
    Create,
    #[serde(rename = "u")]
    Update,
    #[serde(rename = "d")]
    Delete,
    /// A row read by a backfill or resync (Debezium's snapshot read).
    #[serde(rename = "r")]
    Read,
    #[serde(rename = "t")]
    Truncate,
}

impl Op {
    /// The letter stored in the outbox and used in events.
    pub fn code(self) -> char {
        match self {
            Op::Create => 'c',
            Op::Update => 'u',
            Op::Delete => 'd',
            Op::Read => 'r',
            Op::Truncate => 't',
        }
    }

    pub fn from_code(c: char) -> Option<Op> {
        Some(match c {
            'c' => Op::Create,
            'u' => Op::Update,
            'd' => Op::Delete,
            'r' => Op::Read,
            't' => Op::Truncate,
            _ => return None,
        })
    }
}

/// What an outbox row asks of the worker: a row change, a sweep of a table's keys, or a Redis
/// command queued by `redis.on_commit`. The one-letter `op` column of `redis.outbox` holds
/// [`OutboxOp::code`]; every writer and the worker's reader go through this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxOp {
    Row(Op),
    /// Remove the keys of a table whose rows no longer exist (resync, a partition truncated).
    Sweep,
    /// A Redis command queued by `redis.on_commit` or by pg_redis itself.
    Command,
}

impl OutboxOp {
    /// The letter of [`OutboxOp::Sweep`].
    pub const SWEEP: char = 'S';
    /// The letter of [`OutboxOp::Command`].
    pub const COMMAND: char = 'x';

    /// The letter stored in `redis.outbox.op`.
    pub fn code(self) -> char {
        match self {
            OutboxOp::Row(op) => op.code(),
            OutboxOp::Sweep => Self::SWEEP,
            OutboxOp::Command => Self::COMMAND,
        }
    }

    pub fn from_code(c: char) -> Option<OutboxOp> {
        match c {
            Self::SWEEP => Some(OutboxOp::Sweep),
            Self::COMMAND => Some(OutboxOp::Command),
            c => Op::from_code(c).map(OutboxOp::Row),
        }
    }
}

/// Where the change came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub version: String,
    pub connector: String,
    /// The logical server name; ours is the database name.
    pub name: String,
    /// When the change was captured, in ms since the epoch.
    pub ts_ms: i64,
    /// "true" for backfill and resync reads, as Debezium marks snapshot rows.
    pub snapshot: String,
    pub db: String,
    pub schema: String,
    pub table: String,
    #[serde(rename = "txId")]
    pub tx_id: i64,
    /// Position of the change in the capture order (the outbox id), as a string.
    pub sequence: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub source: Source,
    pub op: Op,
    /// When the event was delivered, in ms since the epoch.
    pub ts_ms: i64,
}

impl ChangeEvent {
    pub fn to_json(&self) -> String {
        // Only strings, numbers and maps of JSON values: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The `version` every event carries.
pub const VERSION: &str = concat!("pg_redis-", env!("CARGO_PKG_VERSION"));
/// The `connector` every event carries.
pub const CONNECTOR: &str = "pg_redis";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::parse_row;

    #[test]
    fn debezium_shape() {
        let ev = ChangeEvent {
            before: None,
            after: Some(parse_row(r#"{"id": 1}"#).unwrap()),
            source: Source {
                version: VERSION.into(),
                connector: CONNECTOR.into(),
                name: "app".into(),
                ts_ms: 5,
                snapshot: "false".into(),
                db: "app".into(),
                schema: "public".into(),
                table: "users".into(),
                tx_id: 77,
                sequence: "12".into(),
            },
            op: Op::Create,
            ts_ms: 6,
        };
        let j = ev.to_json();
        assert!(j.starts_with(r#"{"before":null,"after":{"id":1},"source":{"#), "{j}");
        assert!(j.contains(r#""txId":77"#) && j.contains(r#""op":"c""#), "{j}");
        let back: ChangeEvent = serde_json::from_str(&j).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn op_codes_round_trip() {
        for op in [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate] {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code('x'), None);
    }

    #[test]
    fn outbox_op_codes_round_trip() {
        let all = [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate]
            .map(OutboxOp::Row)
            .into_iter()
            .chain([OutboxOp::Sweep, OutboxOp::Command]);
        for op in all {
            assert_eq!(OutboxOp::from_code(op.code()), Some(op));
        }
        assert_eq!(OutboxOp::from_code('?'), None);
    }

    #[test]
    fn catalog_sql_writes_the_same_letters() {
        // The catalog's event triggers queue a purge and a command in SQL, by letter.
        let sql = include_str!("../../sql/pg_redis_objects.sql");
        let purge = format!("VALUES (m.id, '{}')", OutboxOp::Row(Op::Truncate).code());
        let command = format!("VALUES ('{}', ARRAY['SET'", OutboxOp::Command.code());
        assert!(sql.contains(&purge) && sql.matches(&command).count() == 2);
    }

    #[test]
    fn outbox_op_letters_are_the_stored_ones() {
        // Rows already queued by earlier versions hold these letters: they must not change.
        let letters: String = [
            OutboxOp::Row(Op::Create),
            OutboxOp::Row(Op::Update),
            OutboxOp::Row(Op::Delete),
            OutboxOp::Row(Op::Read),
            OutboxOp::Row(Op::Truncate),
            OutboxOp::Sweep,
            OutboxOp::Command,
        ]
        .map(OutboxOp::code)
        .into_iter()
        .collect();
        assert_eq!(letters, "cudrtSx");
    }
}

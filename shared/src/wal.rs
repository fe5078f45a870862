//! What the `pg_redis` logical decoding output plugin writes for each decoded change, and how
//! the delivery worker reads it back: one text record per row of `pg_logical_slot_peek_changes`.
//!
//! A record is a header line of ASCII fields, then (for changes) the row texts back to back,
//! their lengths in the header: row text is jsonb output and may hold any character, newlines
//! included, so it is never split or escaped.
//!
//! ```text
//! E <op> <mapping id> <before length | -> <after length | ->\n<before><after>
//! Q <id> <mapping id | -> <op> <tx id> <captured, ms> <old length | -> <new length | -> <command length | ->\n<old><new><command>
//! U <mapping id> <reason length>\n<reason>
//! B <xid> <commit time, ms since the epoch>
//! C <xid> <commit time, ms since the epoch>
//! K
//! W <table oid> <chunk number>
//! ```
//! `E` carries an outbox op (`c u d t S`, as the trigger queues them) or `F`: the row's key
//! in `after`, whose value the WAL did not hold whole (re-read it; `before` holds the old key
//! if it changed). `Q` is a row inserted into
//! `redis.outbox` (a trigger's change, a backfill's read, a queued command as a JSON array),
//! in its place among the changes. `U` is a change of a synced table that could not be turned
//! into text (a user-defined cast to json raised an ERROR): decoding goes on, and the consumer
//! reports it and repairs the table. `B` opens a transaction that has records, before the
//! first (the consumer may read a large transaction in parts). `C` ends a transaction that
//! had records; its LSN is the commit's end, where the slot may be advanced to once everything
//! before it reached Redis. `K` stands for transactions that had none, so that the slot moves
//! past them too. `W` is the watermark of a backfill chunk under WAL capture (DBLog): the
//! worker reads a chunk of the table and commits the watermark in the same transaction; a key
//! changed before it in the WAL, since the chunk was read, is dropped from the chunk, its
//! newer change being on its way.

use crate::event::OutboxOp;
use std::fmt;

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum WalRecord {
    /// A change of a synced table, as the capture trigger would have queued it.
    Change { mapping_id: i64, op: WalOp, before: Option<String>, after: Option<String> },
    /// A row inserted into `redis.outbox`.
    Queued(QueuedRow),
    /// A change of the mapping's table that could not be decoded, and why.
    Undecodable { mapping_id: i64, reason: String },
    /// The start of a transaction that has records: its id and commit time.
    Begin { xid: i64, commit_ms: i64 },
    /// The end of a transaction that had records.
    Commit { xid: i64, commit_ms: i64 },
    /// The end of transactions with nothing to deliver.
    Keepalive,
    /// A backfill chunk's (high) watermark.
    Watermark(Watermark),
}

/// The watermark committed with the read of one backfill chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    /// The synced table (its oid) being backfilled.
    pub table: u32,
    /// The chunk's number, unique for the worker's process.
    pub chunk: i64,
}

impl Watermark {
    /// The logical message prefix the worker emits watermarks under.
    pub const PREFIX: &'static str = "pg_redis";

    /// The message's content (and the record's text).
    pub fn encode(&self) -> String {
        format!("W {} {}", self.table, self.chunk)
    }
}

/// An outbox row, as the worker reads it from the outbox itself.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedRow {
    pub id: i64,
    pub mapping_id: Option<i64>,
    /// The outbox op's letter (`OutboxOp::code`).
    pub op: char,
    pub tx_id: i64,
    pub captured_ms: i64,
    pub old_row: Option<String>,
    pub new_row: Option<String>,
    pub command: Option<Vec<String>>,
}

/// What a change asks of the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalOp {
    Outbox(OutboxOp),
    /// Write the row whose key `after` names as it is now: an UPDATE kept a large value stored
    /// out of line, which the WAL does not repeat (the table's replica identity is not FULL).
    /// `before`, when present, holds the old key, which the UPDATE changed.
    Refetch,
}

impl WalOp {
    const REFETCH: char = 'F';

    fn code(self) -> char {
        match self {
            WalOp::Outbox(op) => op.code(),
            WalOp::Refetch => Self::REFETCH,
        }
    }

    fn from_code(c: char) -> Option<WalOp> {
        match c {
            Self::REFETCH => Some(WalOp::Refetch),
            c => OutboxOp::from_code(c).map(WalOp::Outbox),
        }
    }
}

/// Why a record could not be read: the plugin and the reader disagree, which is a bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedRecord(pub String);

impl fmt::Display for MalformedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed pg_redis decoding record: {}", self.0)
    }
}

impl std::error::Error for MalformedRecord {}

impl WalRecord {
    /// The record's text.
    pub fn encode(&self) -> String {
        match self {
            WalRecord::Change { mapping_id, op, before, after } => {
                let mut s = format!("E {} {mapping_id} {} {}\n", op.code(), len(before), len(after));
                s.push_str(before.as_deref().unwrap_or_default());
                s.push_str(after.as_deref().unwrap_or_default());
                s
            }
            WalRecord::Queued(q) => {
                let command = q.command.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
                let mapping = q.mapping_id.map_or_else(|| "-".to_owned(), |m| m.to_string());
                let mut s = format!(
                    "Q {} {mapping} {} {} {} {} {} {}\n",
                    q.id,
                    q.op,
                    q.tx_id,
                    q.captured_ms,
                    len(&q.old_row),
                    len(&q.new_row),
                    len(&command)
                );
                for part in [&q.old_row, &q.new_row, &command] {
                    s.push_str(part.as_deref().unwrap_or_default());
                }
                s
            }
            WalRecord::Undecodable { mapping_id, reason } => format!("U {mapping_id} {}\n{reason}", reason.len()),
            WalRecord::Begin { xid, commit_ms } => format!("B {xid} {commit_ms}"),
            WalRecord::Commit { xid, commit_ms } => format!("C {xid} {commit_ms}"),
            WalRecord::Keepalive => "K".to_owned(),
            WalRecord::Watermark(w) => w.encode(),
        }
    }

    /// Reads a record's text.
    pub fn parse(text: &str) -> Result<WalRecord, MalformedRecord> {
        let bad = |why: &str| MalformedRecord(format!("{why} in {:?}", text.chars().take(80).collect::<String>()));
        let (header, body) = text.split_once('\n').unwrap_or((text, ""));
        let fields: Vec<&str> = header.split(' ').collect();
        let int = |s: &str| s.parse::<i64>().map_err(|_| bad("a number expected"));
        match fields.as_slice() {
            ["K"] => Ok(WalRecord::Keepalive),
            ["W", table, chunk] => Ok(WalRecord::Watermark(Watermark {
                table: table.parse().map_err(|_| bad("a table oid expected"))?,
                chunk: int(chunk)?,
            })),
            ["B", xid, ms] => Ok(WalRecord::Begin { xid: int(xid)?, commit_ms: int(ms)? }),
            ["C", xid, ms] => Ok(WalRecord::Commit { xid: int(xid)?, commit_ms: int(ms)? }),
            ["U", id, reason] => {
                let [reason] = split_body(body, [reason]).ok_or_else(|| bad("bad lengths"))?;
                Ok(WalRecord::Undecodable { mapping_id: int(id)?, reason: reason.unwrap_or_default() })
            }
            ["E", op, id, before, after] => {
                let op = WalOp::from_code(one_char(op).ok_or_else(|| bad("an unknown op"))?)
                    .ok_or_else(|| bad("an unknown op"))?;
                let [before, after] = split_body(body, [before, after]).ok_or_else(|| bad("bad lengths"))?;
                Ok(WalRecord::Change { mapping_id: int(id)?, op, before, after })
            }
            ["Q", id, mapping, op, tx, captured, old, new, command] => {
                let op = one_char(op).ok_or_else(|| bad("an unknown op"))?;
                let [old_row, new_row, command] =
                    split_body(body, [old, new, command]).ok_or_else(|| bad("bad lengths"))?;
                let command = command
                    .map(|c| serde_json::from_str::<Vec<String>>(&c))
                    .transpose()
                    .map_err(|_| bad("a command that is not a JSON array of strings"))?;
                Ok(WalRecord::Queued(QueuedRow {
                    id: int(id)?,
                    mapping_id: if *mapping == "-" { None } else { Some(int(mapping)?) },
                    op,
                    tx_id: int(tx)?,
                    captured_ms: int(captured)?,
                    old_row,
                    new_row,
                    command,
                }))
            }
            _ => Err(bad("an unknown record")),
        }
    }
}

fn len(part: &Option<String>) -> String {
    part.as_ref().map_or_else(|| "-".to_owned(), |t| t.len().to_string())
}

fn one_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// The parts of a record's body, given the header's lengths (`-` for an absent part); None
/// unless they cover the body exactly, on character boundaries.
fn split_body<const N: usize>(body: &str, lengths: [&&str; N]) -> Option<[Option<String>; N]> {
    let mut rest = body;
    let mut parts: [Option<String>; N] = std::array::from_fn(|_| None);
    for (part, length) in parts.iter_mut().zip(lengths) {
        if **length == *"-" {
            continue;
        }
        let n = length.parse::<usize>().ok()?;
        if n > rest.len() || !rest.is_char_boundary(n) {
            return None;
        }
        let (here, after) = rest.split_at(n);
        *part = Some(here.to_owned());
        rest = after;
    }
    rest.is_empty().then_some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;

    fn round_trip(r: WalRecord) {
        assert_eq!(WalRecord::parse(&r.encode()), Ok(r));
    }

    #[test]
    fn every_record_reads_back_as_written() {
        round_trip(WalRecord::Keepalive);
        round_trip(WalRecord::Watermark(Watermark { table: 16_384, chunk: 1 }));
        round_trip(WalRecord::Watermark(Watermark { table: u32::MAX, chunk: i64::MAX }));
        assert!(WalRecord::parse("W x 2").is_err());
        round_trip(WalRecord::Commit { xid: 4_294_967_296, commit_ms: 1_700_000_000_123 });
        round_trip(WalRecord::Begin { xid: 4_294_967_296, commit_ms: 1_700_000_000_123 });
        round_trip(WalRecord::Change {
            mapping_id: 7,
            op: WalOp::Outbox(OutboxOp::Row(Op::Update)),
            before: Some("{\"id\": 1, \"note\": \"two\\nlines ü\"}".into()),
            after: Some("{\"id\": 2, \"note\": \"\"}".into()),
        });
        round_trip(WalRecord::Change {
            mapping_id: 7,
            op: WalOp::Outbox(OutboxOp::Row(Op::Create)),
            before: None,
            after: Some("{}".into()),
        });
        round_trip(WalRecord::Change { mapping_id: 9, op: WalOp::Outbox(OutboxOp::Sweep), before: None, after: None });
        round_trip(WalRecord::Change {
            mapping_id: 9,
            op: WalOp::Refetch,
            before: None,
            after: Some("{\"id\": 3}".into()),
        });
    }

    #[test]
    fn the_format_is_pinned() {
        let r = WalRecord::Change {
            mapping_id: 12,
            op: WalOp::Outbox(OutboxOp::Row(Op::Delete)),
            before: Some("{\"id\": 1}".into()),
            after: None,
        };
        assert_eq!(r.encode(), "E d 12 9 -\n{\"id\": 1}");
        assert_eq!(WalRecord::Commit { xid: 5, commit_ms: 6 }.encode(), "C 5 6");
        assert_eq!(WalRecord::Begin { xid: 5, commit_ms: 6 }.encode(), "B 5 6");
    }

    #[test]
    fn damaged_records_are_refused_not_guessed() {
        for text in [
            "",
            "E",
            "E c 1 5 -\n{}",
            "E ? 1 - -",
            "E c x - -",
            "C 1",
            "Z",
            "E c 1 1 -\n\u{fc}",
            "Q 1 - x 2 3 - - 5\n[1,2]",
            "Q 1 - xy 2 3 - - -",
        ] {
            assert!(WalRecord::parse(text).is_err(), "{text:?} was accepted");
        }
    }
}

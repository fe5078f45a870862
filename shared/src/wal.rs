//! What the `pg_redis` logical decoding output plugin writes for each decoded change, and how
//! the delivery worker reads it back: one text record per row of `pg_logical_slot_peek_changes`.
//!
//! A record is a header line of ASCII fields, then (for changes) the row texts back to back,
//! their lengths in the header: row text is jsonb output and may hold any character, newlines
//! included, so it is never split or escaped.
//!
//! ```text
//! E <op> <mapping id> <before length | -> <after length | ->\n<before><after>
//! C <xid> <commit time, ms since the epoch>
//! K
//! ```
//! `E` carries an outbox op (`c u d t S`, as the trigger queues them) or `F`: the row's key
//! in `after`, whose value the WAL did not hold whole (re-read it). `C` ends a transaction that
//! had records; its LSN is the commit's end, where the slot may be advanced to once everything
//! before it reached Redis. `K` stands for transactions that had none, so that the slot moves
//! past them too.

use crate::event::OutboxOp;
use std::fmt;

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum WalRecord {
    /// A change of a synced table, as the capture trigger would have queued it.
    Change { mapping_id: i64, op: WalOp, before: Option<String>, after: Option<String> },
    /// The end of a transaction that had changes.
    Commit { xid: i64, commit_ms: i64 },
    /// The end of transactions with nothing to deliver.
    Keepalive,
}

/// What a change asks of the worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalOp {
    Outbox(OutboxOp),
    /// Write the row whose key `after` names as it is now: an UPDATE kept a large value stored
    /// out of line, which the WAL does not repeat (the table's replica identity is not FULL).
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
                let len = |r: &Option<String>| r.as_ref().map_or_else(|| "-".to_owned(), |t| t.len().to_string());
                let mut s = format!("E {} {mapping_id} {} {}\n", op.code(), len(before), len(after));
                s.push_str(before.as_deref().unwrap_or_default());
                s.push_str(after.as_deref().unwrap_or_default());
                s
            }
            WalRecord::Commit { xid, commit_ms } => format!("C {xid} {commit_ms}"),
            WalRecord::Keepalive => "K".to_owned(),
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
            ["C", xid, ms] => Ok(WalRecord::Commit { xid: int(xid)?, commit_ms: int(ms)? }),
            ["E", op, id, before, after] => {
                let mut chars = op.chars();
                let op = match (chars.next(), chars.next()) {
                    (Some(c), None) => WalOp::from_code(c).ok_or_else(|| bad("an unknown op"))?,
                    _ => return Err(bad("an unknown op")),
                };
                let len = |s: &str| match s {
                    "-" => Ok(None),
                    n => n.parse::<usize>().map(Some).map_err(|_| bad("a length expected")),
                };
                let (before_len, after_len) = (len(before)?, len(after)?);
                let split = before_len.unwrap_or(0);
                if split + after_len.unwrap_or(0) != body.len() || !body.is_char_boundary(split) {
                    return Err(bad("row lengths that do not add up"));
                }
                let (b, a) = body.split_at(split);
                Ok(WalRecord::Change {
                    mapping_id: int(id)?,
                    op,
                    before: before_len.map(|_| b.to_owned()),
                    after: after_len.map(|_| a.to_owned()),
                })
            }
            _ => Err(bad("an unknown record")),
        }
    }
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
        round_trip(WalRecord::Commit { xid: 4_294_967_296, commit_ms: 1_700_000_000_123 });
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
    }

    #[test]
    fn damaged_records_are_refused_not_guessed() {
        for text in ["", "E", "E c 1 5 -\n{}", "E ? 1 - -", "E c x - -", "C 1", "Z", "E c 1 1 -\n\u{fc}"] {
            assert!(WalRecord::parse(text).is_err(), "{text:?} was accepted");
        }
    }
}

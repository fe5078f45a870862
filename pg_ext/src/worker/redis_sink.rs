//! Sends planned events to Redis: the commands of a batch go out as one pipeline (segments
//! split only where a step must scan the keyspace), and every event learns whether Redis
//! accepted all of its commands. A failed connection fails the whole batch: nothing of it is
//! acknowledged, so it is retried as a whole (applying an event twice is harmless).
//!
//! This is the Redis sink; other sinks would consume the change streams it writes.

use pg_redis_shared::apply::{Command, Step};
use pg_redis_shared::TableMapping;
use redis::{Connection, Pipeline, RedisResult, Value};
use std::sync::Arc;

/// One event's steps.
pub struct Planned {
    pub steps: Vec<Step>,
    pub mapping: Option<Arc<TableMapping>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Redis answered one of the event's commands with an error.
    Refused(String),
}

/// Keys per SCAN round and per UNLINK.
const SCAN_COUNT: usize = 1000;

/// Applies every event in order. `existing` tells, for a mapping and keys (their column
/// values), which positions still have a row (the resync sweep).
pub fn apply(conn: &mut Connection, planned: &[&Planned], existing: &mut dyn FnMut(&TableMapping, &[Vec<String>]) -> Vec<usize>) -> RedisResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; planned.len()];
    let mut batch = Segment::default();
    for (i, p) in planned.iter().enumerate() {
        for step in &p.steps {
            match step {
                Step::Commands(cmds) => batch.add(i, cmds),
                Step::DeleteAllKeys { scan_pattern } => {
                    batch.flush(conn, &mut outcomes)?;
                    if let Some(m) = &p.mapping {
                        scan_and_delete(conn, scan_pattern, m, &mut |_, keys| keys.iter().map(|_| true).collect())?;
                    }
                }
                Step::SweepKeys { scan_pattern } => {
                    batch.flush(conn, &mut outcomes)?;
                    if let Some(m) = &p.mapping {
                        scan_and_delete(conn, scan_pattern, m, &mut |m, keys| {
                            let alive = existing(m, keys);
                            let mut gone = vec![true; keys.len()];
                            for i in alive {
                                if let Some(g) = gone.get_mut(i) {
                                    *g = false;
                                }
                            }
                            gone
                        })?;
                    }
                }
            }
        }
    }
    batch.flush(conn, &mut outcomes)?;
    Ok(outcomes)
}

/// Commands pipelined together, with the span of each event.
#[derive(Default)]
struct Segment {
    pipe: Pipeline,
    count: usize,
    spans: Vec<(usize, usize, usize)>,
}

impl Segment {
    fn add(&mut self, event: usize, cmds: &[Command]) {
        let start = self.count;
        for c in cmds {
            let mut cmd = redis::cmd(&c[0]);
            for a in &c[1..] {
                cmd.arg(a.as_str());
            }
            self.pipe.add_command(cmd);
            self.count += 1;
        }
        self.spans.push((event, start, self.count));
    }

    fn flush(&mut self, conn: &mut Connection, outcomes: &mut [Outcome]) -> RedisResult<()> {
        if self.count == 0 {
            return Ok(());
        }
        let seg = std::mem::take(self);
        let mut pipe = seg.pipe;
        let values: Vec<Value> = pipe.ignore_errors().query(conn)?;
        for (event, start, end) in seg.spans {
            if let Some(e) = values.get(start..end).and_then(|vals| vals.iter().find_map(first_error)) {
                if outcomes[event] == Outcome::Applied {
                    outcomes[event] = Outcome::Refused(e);
                }
            }
        }
        Ok(())
    }
}

/// The first error in a reply (EXEC nests the replies of a transaction).
fn first_error(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(e) => Some(format!("{} {}", e.code(), e.details().unwrap_or_default()).trim().to_owned()),
        Value::Array(items) => items.iter().find_map(first_error),
        _ => None,
    }
}

/// SCANs the keys matching `pattern` that the template parses, and UNLINKs those `doomed` marks.
fn scan_and_delete(conn: &mut Connection, pattern: &str, m: &TableMapping, doomed: &mut dyn FnMut(&TableMapping, &[Vec<String>]) -> Vec<bool>) -> RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT).query(conn)?;
        let parsed: Vec<(String, Vec<String>)> = keys.into_iter().filter_map(|k| m.key.parse_key(&k).ok().map(|v| (k, v))).collect();
        if !parsed.is_empty() {
            let values: Vec<Vec<String>> = parsed.iter().map(|p| p.1.clone()).collect();
            let marks = doomed(m, &values);
            let victims: Vec<&str> = parsed.iter().zip(marks).filter(|(_, d)| *d).map(|(p, _)| p.0.as_str()).collect();
            if !victims.is_empty() {
                let _: i64 = redis::cmd("UNLINK").arg(&victims).query(conn)?;
            }
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

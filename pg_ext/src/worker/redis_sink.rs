//! Sends planned events to Redis: the commands of a batch go out as one pipeline (segments
//! split only where a step must scan the keyspace), and every event learns whether Redis
//! accepted all of its commands. A failed connection fails the whole batch: nothing of it is
//! acknowledged, so it is retried as a whole (applying an event twice is harmless).
//!
//! This is the Redis sink; other sinks would consume the change streams it writes.

use crate::redis_client::{self, Target};
use pg_redis_shared::apply::{Command, Step};
use pg_redis_shared::{Error, TableMapping};
use redis::{Connection, Pipeline, RedisResult, Value};
use std::sync::{mpsc, Arc};

/// One event's steps.
pub struct Planned {
    pub steps: Vec<Step>,
    pub mapping: Option<Arc<TableMapping>>,
}

impl Planned {
    /// Whether a step must scan the keyspace (and ask PostgreSQL about keys): such events are
    /// applied on the worker's own thread.
    pub fn scans(&self) -> bool {
        self.steps.iter().any(|s| !matches!(s, Step::Commands(_)))
    }
}

/// A thread with its own Redis connection that sends pipelines of planned commands, so the
/// worker reads and plans the next batch while Redis executes this one. It never touches
/// PostgreSQL.
pub struct PipelineThread {
    jobs: mpsc::Sender<(u64, Target, Vec<Planned>)>,
    results: mpsc::Receiver<(u64, Result<Vec<Outcome>, Error>)>,
    /// Number of the batch sent last: results of batches abandoned by an ERROR are skipped.
    sent: std::cell::Cell<u64>,
}

impl PipelineThread {
    pub fn start() -> Option<PipelineThread> {
        let (jobs, job_rx) = mpsc::channel::<(u64, Target, Vec<Planned>)>();
        let (result_tx, results) = mpsc::channel();
        crate::threads::spawn("pg_redis pipeline", move || {
                let mut conn: Option<(Target, Connection)> = None;
                while let Ok((seq, target, planned)) = job_rx.recv() {
                    if conn.as_ref().is_some_and(|(t, _)| *t != target) {
                        conn = None;
                    }
                    let result = match conn.take() {
                        Some(c) => Ok(c),
                        None => redis_client::connect(&target, false).map(|c| (target.clone(), c)),
                    }
                    .and_then(|(t, mut c)| {
                        let refs: Vec<&Planned> = planned.iter().collect();
                        let r = apply(&mut c, &refs, &mut |_, _| Vec::new()).map_err(|e| redis_client::from_redis(&t, e));
                        if r.is_ok() {
                            conn = Some((t, c));
                        }
                        r
                    });
                    if result_tx.send((seq, result)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(PipelineThread { jobs, results, sent: std::cell::Cell::new(0) })
    }

    /// Hands a batch (commands only, no scans) to the thread.
    pub fn send(&self, target: Target, planned: Vec<Planned>) -> bool {
        let seq = self.sent.get() + 1;
        self.sent.set(seq);
        self.jobs.send((seq, target, planned)).is_ok()
    }

    /// The outcome of the batch sent last (older results, of batches whose transaction failed
    /// while they were in flight, are skipped: those events were never acknowledged).
    pub fn wait(&self) -> Result<Vec<Outcome>, Error> {
        loop {
            match self.results.recv() {
                Ok((seq, r)) if seq == self.sent.get() => return r,
                Ok(_) => continue,
                Err(_) => return Err(Error::Unavailable { server: "Redis", reason: "the pipeline thread stopped".into() }),
            }
        }
    }
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
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT).query(conn)?;
        // Keys that are not text, or not of the template's shape, are someone else's.
        let parsed: Vec<(String, Vec<String>)> = keys.into_iter().filter_map(|k| String::from_utf8(k).ok()).filter_map(|k| m.key.parse_key(&k).ok().map(|v| (k, v))).collect();
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

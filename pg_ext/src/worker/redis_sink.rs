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

/// Given a mapping and the key values of keys found in Redis (one value list per key): the
/// positions of those whose rows still exist.
pub type ExistingKeys<'a> = dyn FnMut(&TableMapping, &[Vec<String>]) -> Vec<usize> + 'a;

/// Given a mapping and key values: for each key, whether it must go.
type DoomedKeys<'a> = dyn FnMut(&TableMapping, &[Vec<String>]) -> Vec<bool> + 'a;

/// One event's steps.
pub struct Planned {
    pub steps: Vec<Step>,
    pub mapping: Option<Arc<TableMapping>>,
    /// A command queued by `redis.on_commit` (runs of them go out as one MULTI/EXEC).
    pub queued: bool,
}

impl Planned {
    /// Whether a step must scan the keyspace (and ask PostgreSQL about keys): such events are
    /// applied on the worker's own thread.
    pub fn scans(&self) -> bool {
        self.steps.iter().any(|s| !matches!(s, Step::Commands(_)))
    }
}

/// A delivery connection that knows who it is on the server (`CLIENT INFO`), so that once it
/// is abandoned after a failure (a timeout: Redis may still hold its unread commands, e.g.
/// while paused), the next delivery connection to that server fences it off with `CLIENT KILL`
/// before sending anything: commands of the abandoned batch then either ran before the new
/// ones or never run, and can never land after a newer write of the same key.
pub struct DeliveryConnection {
    pub target: Target,
    pub conn: Connection,
    /// `id=<n> addr=<ip:port>` as the server knows this client (None if it would not say).
    identity: Option<(String, String)>,
}

/// Connections abandoned after a failure, still to be fenced off (shared by the worker's own
/// connection and its pipeline thread).
static ABANDONED: std::sync::Mutex<Vec<(String, String, String)>> = std::sync::Mutex::new(Vec::new());

impl DeliveryConnection {
    pub fn open(target: &Target) -> Result<DeliveryConnection, Error> {
        let mut conn = redis_client::connect(target, false)?;
        fence_abandoned(&mut conn, &target.url).map_err(|e| redis_client::from_redis(target, e))?;
        let identity = redis::cmd("CLIENT").arg("INFO").query::<String>(&mut conn).ok().and_then(|info| {
            let field = |name: &str| info.split_whitespace().find_map(|f| f.strip_prefix(name)).map(str::to_owned);
            Some((field("id=")?, field("addr=")?))
        });
        Ok(DeliveryConnection { target: target.clone(), conn, identity })
    }

    /// Fences off connections abandoned since this one opened (by this worker's other
    /// connection); cheap when there are none. Called before every send.
    pub fn fence(&mut self) -> Result<(), Error> {
        fence_abandoned(&mut self.conn, &self.target.url).map_err(|e| redis_client::from_redis(&self.target, e))
    }

    /// Drops the connection after a failure, remembering it for fencing.
    pub fn abandon(self) {
        if let Some((id, addr)) = self.identity {
            if let Ok(mut list) = ABANDONED.lock() {
                list.push((self.target.url.clone(), id, addr));
            }
        }
    }
}

/// Kills the server-side clients of abandoned connections to `url`. "No such client" means it
/// is gone already; a refusal (an ACL without CLIENT KILL) leaves it to its socket's closing.
fn fence_abandoned(conn: &mut Connection, url: &str) -> RedisResult<()> {
    let pending: Vec<(String, String, String)> = match ABANDONED.lock() {
        Ok(mut list) if list.iter().any(|(u, _, _)| u == url) => {
            let (mine, rest): (Vec<_>, Vec<_>) = list.drain(..).partition(|(u, _, _)| u == url);
            *list = rest;
            mine
        }
        _ => return Ok(()),
    };
    for (i, (_, id, addr)) in pending.iter().enumerate() {
        // ID and ADDR together: after a Redis restart, ids start again and may name another client.
        let r: RedisResult<Value> =
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).arg("ADDR").arg(addr).query(conn);
        if let Err(e) = r {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                // Not fenced yet: keep them for the next connection.
                if let Ok(mut list) = ABANDONED.lock() {
                    list.extend(pending.into_iter().skip(i));
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// A thread with its own Redis connection that sends pipelines of planned commands, so the
/// worker reads and plans the next batch while Redis executes this one. It never touches
/// PostgreSQL.
pub struct PipelineThread {
    jobs: mpsc::Sender<(u64, Target, Vec<Planned>)>,
    results: mpsc::Receiver<(u64, Result<Vec<Outcome>, Error>)>,
    /// Number of the batch sent last: results of batches abandoned by an ERROR are skipped.
    sent: std::cell::Cell<u64>,
    /// Number of the batch whose result came back last.
    received: std::cell::Cell<u64>,
}

impl PipelineThread {
    pub fn start() -> Option<PipelineThread> {
        let (jobs, job_rx) = mpsc::channel::<(u64, Target, Vec<Planned>)>();
        let (result_tx, results) = mpsc::channel();
        crate::threads::spawn("pg_redis pipeline", move || {
            let mut conn: Option<DeliveryConnection> = None;
            while let Ok((seq, target, planned)) = job_rx.recv() {
                if conn.as_ref().is_some_and(|c| c.target != target) {
                    conn = None;
                }
                let result = match conn.take() {
                    Some(c) => Ok(c),
                    None => DeliveryConnection::open(&target),
                }
                .and_then(|mut c| {
                    c.fence()?;
                    let refs: Vec<&Planned> = planned.iter().collect();
                    let r = crate::threads::catch(|| apply(&mut c.conn, &refs, &mut |_, _| Vec::new())).unwrap_or_else(
                        |why| Err(redis::RedisError::from((redis::ErrorKind::Client, "internal error", why))),
                    );
                    match r {
                        Ok(outcomes) => {
                            conn = Some(c);
                            Ok(outcomes)
                        }
                        Err(e) => {
                            let err = redis_client::from_redis(&c.target, e);
                            c.abandon();
                            Err(err)
                        }
                    }
                });
                if result_tx.send((seq, result)).is_err() {
                    return;
                }
            }
        })
        .ok()?;
        Some(PipelineThread { jobs, results, sent: std::cell::Cell::new(0), received: std::cell::Cell::new(0) })
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
                Ok((seq, r)) => {
                    self.received.set(seq);
                    if seq == self.sent.get() {
                        return r;
                    }
                }
                Err(_) => {
                    return Err(Error::Unavailable { server: "Redis", reason: "the pipeline thread stopped".into() })
                }
            }
        }
    }

    /// Waits until no batch of an earlier, failed transaction is still on its way to Redis, so
    /// that nothing sent from now on (on any connection) can be overtaken by it. False when the
    /// thread is gone.
    pub fn settle_abandoned(&self) -> bool {
        if self.received.get() < self.sent.get() {
            // Its outcome does not matter: its events were never acknowledged.
            let _ = self.wait();
        }
        self.received.get() >= self.sent.get()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Redis answered one of the event's commands with an error.
    Refused(String),
    /// Not executed: another queued command of its MULTI/EXEC was refused, which discarded
    /// them all (it stays queued and runs again, in order).
    NotRun(String),
}

/// Keys per SCAN round and per UNLINK.
const SCAN_COUNT: usize = 1000;

/// Applies every event in order. `existing` tells, for a mapping and keys (their column
/// values), which positions still have a row (the resync sweep).
pub fn apply(
    conn: &mut Connection,
    planned: &[&Planned],
    existing: &mut ExistingKeys<'_>,
) -> RedisResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; planned.len()];
    let mut batch = Segment::default();
    for (i, p) in planned.iter().enumerate() {
        for step in &p.steps {
            match step {
                Step::Commands(cmds) => batch.add(i, cmds, p.queued),
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

/// Commands pipelined together, with the span of each event. Each run of consecutive queued
/// commands is wrapped in MULTI/EXEC: if Redis refuses one of them when it is queued (out of
/// memory, a replica, loading), EXEC discards the whole run, so no later queued command is
/// applied while an earlier one waits to be retried (they keep commit order).
#[derive(Default)]
struct Segment {
    pipe: Pipeline,
    count: usize,
    spans: Vec<Span>,
    /// Index of the MULTI of the run being added, if any.
    open_run: Option<usize>,
    /// (MULTI index, EXEC index) of every closed run.
    runs: Vec<(usize, usize)>,
}

struct Span {
    event: usize,
    start: usize,
    end: usize,
    /// The MULTI index of the run this event belongs to.
    run: Option<usize>,
}

impl Segment {
    fn push(&mut self, name: &str, args: &[String]) {
        let mut cmd = redis::cmd(name);
        for a in args {
            cmd.arg(a.as_str());
        }
        self.pipe.add_command(cmd);
        self.count += 1;
    }

    fn add(&mut self, event: usize, cmds: &[Command], queued: bool) {
        if queued && self.open_run.is_none() {
            self.open_run = Some(self.count);
            self.push("MULTI", &[]);
        } else if !queued {
            self.close_run();
        }
        let start = self.count;
        for c in cmds {
            if let Some((name, args)) = c.split_first() {
                self.push(name, args);
            }
        }
        self.spans.push(Span { event, start, end: self.count, run: self.open_run });
    }

    fn close_run(&mut self) {
        if let Some(multi) = self.open_run.take() {
            self.runs.push((multi, self.count));
            self.push("EXEC", &[]);
        }
    }

    fn flush(&mut self, conn: &mut Connection, outcomes: &mut [Outcome]) -> RedisResult<()> {
        self.close_run();
        if self.count == 0 {
            return Ok(());
        }
        let seg = std::mem::take(self);
        let mut pipe = seg.pipe;
        let values: Vec<Value> = pipe.ignore_errors().query(conn)?;
        // An EXEC refused before it ran (out of memory) leaves the connection inside MULTI:
        // leave it, or the next batch would only be queued.
        if seg.runs.iter().any(|r| matches!(values.get(r.1), Some(Value::ServerError(_)))) {
            let _: RedisResult<Value> = redis::cmd("DISCARD").query(conn);
        }
        for span in seg.spans {
            let own = values.get(span.start..span.end).and_then(|vals| vals.iter().find_map(first_error));
            let outcome = match (span.run, own) {
                (_, Some(e)) => Outcome::Refused(e),
                (None, None) => Outcome::Applied,
                (Some(multi), None) => run_outcome(&values, &seg.runs, multi, span.start, span.end),
            };
            if let Some(o) = outcomes.get_mut(span.event) {
                if *o == Outcome::Applied {
                    *o = outcome;
                }
            }
        }
        Ok(())
    }
}

/// The outcome of commands `start..end` queued (without error) in the run opened at `multi`:
/// their replies are in EXEC's array, or EXEC discarded them all.
fn run_outcome(values: &[Value], runs: &[(usize, usize)], multi: usize, start: usize, end: usize) -> Outcome {
    let Some(exec) = runs.iter().find(|r| r.0 == multi).map(|r| r.1) else {
        return Outcome::NotRun("no EXEC was sent".into());
    };
    match values.get(exec) {
        Some(Value::Array(replies)) => {
            // Replies of the run's commands in order: the first command sits right after MULTI.
            let (from, to) = (start - multi - 1, end - multi - 1);
            match replies.get(from..to) {
                Some(own) => own.iter().find_map(first_error).map_or(Outcome::Applied, Outcome::Refused),
                None => Outcome::NotRun("EXEC answered fewer replies than commands".into()),
            }
        }
        Some(other) => {
            Outcome::NotRun(first_error(other).unwrap_or_else(|| "EXEC did not run the queued commands".into()))
        }
        None => Outcome::NotRun("no reply to EXEC".into()),
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
fn scan_and_delete(
    conn: &mut Connection,
    pattern: &str,
    m: &TableMapping,
    doomed: &mut DoomedKeys<'_>,
) -> RedisResult<()> {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT).query(conn)?;
        // Keys that are not text, or not of the template's shape, are someone else's.
        let parsed: Vec<(String, Vec<String>)> = keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .filter_map(|k| m.key.parse_key(&k).ok().map(|v| (k, v)))
            .collect();
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

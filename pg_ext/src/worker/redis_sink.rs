//! Sends planned events to Redis: the commands of a batch go out as one pipeline (segments
//! split only where a step must scan the keyspace), each table's share of a segment as one
//! MULTI/EXEC, and every event learns whether Redis accepted all of its commands. A failed
//! connection fails the whole batch: nothing of it is acknowledged, so it is retried as a whole
//! (applying an event twice is harmless).
//!
//! This is the Redis sink; other sinks would consume the change streams it writes.

use super::outbox::Scope;
use crate::redis_client::{self, Target};
use pg_redis_shared::apply::{Command, Step};
use pg_redis_shared::{Error, TableMapping};
use redis::{Connection, Pipeline, RedisResult, Value};
use std::collections::HashSet;
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
    /// Whose change this is: a table's, or a command queued by `redis.on_commit`. Redis applies
    /// a scope's share of a pipeline whole or not at all.
    pub scope: Scope,
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
    /// Not executed: another command of its scope's MULTI/EXEC was refused, which discarded
    /// them all, or an earlier change of its scope was not applied (it stays queued and runs
    /// again, in order).
    NotRun(String),
}

/// Keys per SCAN round and per UNLINK.
const SCAN_COUNT: usize = 1000;

/// Applies every event, each scope's in order. `existing` tells, for a mapping and keys (their
/// column values), which positions still have a row (the resync sweep). Once a change of a
/// scope was not applied, none of its later ones in this call is sent.
pub fn apply(
    conn: &mut Connection,
    planned: &[&Planned],
    existing: &mut ExistingKeys<'_>,
) -> RedisResult<Vec<Outcome>> {
    let mut outcomes = vec![Outcome::Applied; planned.len()];
    let mut failed: HashSet<Scope> = HashSet::new();
    let mut batch = Segment::default();
    for (i, p) in planned.iter().enumerate() {
        for step in &p.steps {
            if skipped(&failed, p.scope, outcomes.get_mut(i)) {
                break;
            }
            match step {
                Step::Commands(cmds) => batch.add(i, p.scope, cmds),
                Step::DeleteAllKeys { scan_pattern } => {
                    // The scan runs now: what went before it must have been applied.
                    batch.flush(conn, &mut outcomes, &mut failed)?;
                    if skipped(&failed, p.scope, outcomes.get_mut(i)) {
                        break;
                    }
                    if let Some(m) = &p.mapping {
                        scan_and_delete(conn, scan_pattern, m, &mut |_, keys| keys.iter().map(|_| true).collect())?;
                    }
                }
                Step::SweepKeys { scan_pattern } => {
                    batch.flush(conn, &mut outcomes, &mut failed)?;
                    if skipped(&failed, p.scope, outcomes.get_mut(i)) {
                        break;
                    }
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
    batch.flush(conn, &mut outcomes, &mut failed)?;
    Ok(outcomes)
}

/// Whether a step must not run, its scope having failed earlier in this call (the event's own
/// refusal, if any, stays its outcome: the better reason to report).
fn skipped(failed: &HashSet<Scope>, scope: Scope, outcome: Option<&mut Outcome>) -> bool {
    if !failed.contains(&scope) {
        return false;
    }
    if let Some(o @ Outcome::Applied) = outcome {
        *o = Outcome::NotRun("an earlier change of the same scope was not applied".into());
    }
    true
}

/// Commands to pipeline together, by scope. Each scope's share goes out as one MULTI/EXEC, in
/// the order of the scope's first event: should Redis refuse any of them when it is queued
/// (loading after a restart, out of memory, a script running, a replica), EXEC discards the
/// whole share, so no change of a table reaches Redis (its keys or its stream) while an
/// earlier one waits to be retried. Without it, a pipeline that met Redis while it finished
/// loading had its first commands refused and its later ones applied: the stream then showed
/// a newer change before an older one. Events before a queued command keep running before it
/// (a scope's share starts no later than its first event).
#[derive(Default)]
struct Segment<'a> {
    shares: Vec<(Scope, Vec<EventCommands<'a>>)>,
}

/// An event (its index in the batch) and the commands of one of its steps.
type EventCommands<'a> = (usize, &'a [Command]);

struct Span {
    event: usize,
    scope: Scope,
    start: usize,
    end: usize,
    /// The MULTI index of the share this event belongs to.
    multi: usize,
}

impl<'a> Segment<'a> {
    fn add(&mut self, event: usize, scope: Scope, cmds: &'a [Command]) {
        match self.shares.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, events)) => events.push((event, cmds)),
            None => self.shares.push((scope, vec![(event, cmds)])),
        }
    }

    fn flush(
        &mut self,
        conn: &mut Connection,
        outcomes: &mut [Outcome],
        failed: &mut HashSet<Scope>,
    ) -> RedisResult<()> {
        let shares = std::mem::take(&mut self.shares);
        if shares.is_empty() {
            return Ok(());
        }
        let mut pipe = Pipeline::new();
        let mut count = 0usize;
        let mut spans = Vec::new();
        let mut runs = Vec::new();
        for (scope, events) in shares {
            let multi = push(&mut pipe, &mut count, "MULTI", &[]);
            for (event, cmds) in events {
                let start = count;
                for c in cmds {
                    if let Some((name, args)) = c.split_first() {
                        push(&mut pipe, &mut count, name, args);
                    }
                }
                spans.push(Span { event, scope, start, end: count, multi });
            }
            let exec = push(&mut pipe, &mut count, "EXEC", &[]);
            runs.push((multi, exec));
        }
        let values: Vec<Value> = pipe.ignore_errors().query(conn)?;
        // An EXEC refused before it ran (out of memory) leaves the connection inside MULTI:
        // leave it, or the next batch would only be queued.
        if runs.iter().any(|r| matches!(values.get(r.1), Some(Value::ServerError(_)))) {
            let _: RedisResult<Value> = redis::cmd("DISCARD").query(conn);
        }
        for span in spans {
            // An error in place of QUEUED: Redis refused this very command.
            let own = values.get(span.start..span.end).and_then(|vals| vals.iter().find_map(first_error));
            let outcome = match own {
                Some(e) => Outcome::Refused(e),
                None => run_outcome(&values, &runs, span.multi, span.start, span.end),
            };
            if outcome != Outcome::Applied {
                failed.insert(span.scope);
            }
            if let Some(o) = outcomes.get_mut(span.event) {
                if *o == Outcome::Applied {
                    *o = outcome;
                }
            }
        }
        Ok(())
    }
}

/// Adds a command to the pipeline; its index in the replies.
fn push(pipe: &mut Pipeline, count: &mut usize, name: &str, args: &[String]) -> usize {
    let mut cmd = redis::cmd(name);
    for a in args {
        cmd.arg(a.as_str());
    }
    pipe.add_command(cmd);
    *count += 1;
    *count - 1
}

/// The outcome of commands `start..end` queued (without error) in the run opened at `multi`:
/// their replies are in EXEC's array, or EXEC discarded them all.
fn run_outcome(values: &[Value], runs: &[(usize, usize)], multi: usize, start: usize, end: usize) -> Outcome {
    let Some(exec) = runs.iter().find(|r| r.0 == multi).map(|r| r.1) else {
        return Outcome::NotRun("no EXEC was sent".into());
    };
    // A refused MULTI. Still inside an earlier, refused transaction, the commands were queued
    // to it (QUEUED): whatever its EXEC ran is not this share's alone, so it runs again. A user
    // without MULTI (an ACL without @transaction): the commands ran one by one, their own
    // replies say how (checked by the caller), and EXEC has nothing to answer for them.
    if let Some(e) = values.get(multi).and_then(first_error) {
        let queued = values.get(start..end).is_some_and(|own| own.iter().all(is_queued));
        return if queued { Outcome::NotRun(format!("MULTI was refused: {e}")) } else { Outcome::Applied };
    }
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

/// Whether a reply is the QUEUED of a command added to a transaction.
fn is_queued(v: &Value) -> bool {
    matches!(v, Value::SimpleString(s) if s == "QUEUED")
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

//! One pool thread's PostgreSQL connection: opened on demand under the canonical session
//! settings, over TLS as `sslmode` asks, with every wait bounded.
//!
//! The connection is driven on a single-threaded tokio runtime owned by the thread, so each
//! step (connect, prepare, query) can be given a deadline: a peer that stops answering (a
//! frozen server, a network that drops packets) costs a request `query_timeout_ms` plus a
//! grace, then the connection is abandoned (its socket closed) and the next request opens a
//! new one. TCP keepalives and `TCP_USER_TIMEOUT` (`redis_pg.dead_peer_timeout_ms`) catch a
//! vanished peer between requests. A read that finds its pooled connection dead (a restarted
//! server) reconnects and runs again, once: reads are idempotent.

use crate::pg_target::{self, TlsMode};
use crate::{config, pg_tls};
use pg_redis_shared::backoff::Backoff;
use pg_redis_shared::encoding::CANONICAL_SETTINGS;
use pg_redis_shared::redact::redact_url;
use pg_redis_shared::Error;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Threads holding an open connection.
pub static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

/// How much longer than the server-side `statement_timeout` a request may wait for an answer
/// before its connection counts as dead: room for the cancellation to come back.
const GRACE: Duration = Duration::from_secs(1);

/// Shared knowledge of whether PostgreSQL is reachable, so that all threads back off together.
struct Health {
    backoff: Backoff,
    last_error: String,
    /// After failures, one thread at a time tries to connect; the others answer at once
    /// instead of each waiting out its own attempt against a silent server.
    probing: bool,
}

static HEALTH: Mutex<Health> =
    Mutex::new(Health { backoff: Backoff::new(), last_error: String::new(), probing: false });

/// Clears `probing` when the attempt ends, however it ends.
struct Probe;

impl Drop for Probe {
    fn drop(&mut self) {
        HEALTH.lock().unwrap_or_else(|e| e.into_inner()).probing = false;
    }
}
/// Wait after the first failed connection attempt, doubling up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The future that moves a connection's bytes; it runs only while the thread waits on a step
/// (as in the `postgres` crate), so a query costs no task switch.
type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// An open connection and its driver.
struct Link {
    client: Arc<tokio_postgres::Client>,
    driver: Driver,
    /// The driver finished (the connection ended); it must not be polled again.
    ended: bool,
}

impl Link {
    fn new<F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static>(
        client: tokio_postgres::Client,
        connection: F,
    ) -> Link {
        Link { client: Arc::new(client), driver: Box::pin(connection), ended: false }
    }

    /// Runs `work` to completion (or `limit`), moving the connection's bytes meanwhile.
    fn drive<T>(
        &mut self,
        rt: &Runtime,
        limit: Duration,
        work: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<Result<T, tokio_postgres::Error>, tokio::time::error::Elapsed> {
        let (driver, ended) = (&mut self.driver, &mut self.ended);
        rt.block_on(async move {
            // The timer is made inside the runtime (it needs the runtime's clock).
            let mut work = std::pin::pin!(tokio::time::timeout(limit, work));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = work.as_mut().poll(cx) {
                    return Poll::Ready(r);
                }
                if !*ended && driver.as_mut().poll(cx).is_ready() {
                    *ended = true;
                }
                work.as_mut().poll(cx)
            })
            .await
        })
    }
}

/// One thread's connection and its prepared statements.
#[derive(Default)]
pub struct Session {
    runtime: Option<Runtime>,
    link: Option<Link>,
    generation: u64,
    statement_timeout_ms: u128,
    statements: HashMap<String, postgres::Statement>,
}

/// A failed step: the error to report, and whether the connection itself broke (then a read
/// may run again on a new one).
struct Failure {
    error: Error,
    broken: bool,
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure { error, broken: false }
    }
}

impl Session {
    /// Runs a prepared (and cached) read. A connection found dead that was opened before this
    /// call is replaced and the read runs once more.
    pub fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, Error> {
        let reused = self.link.is_some() && self.generation == config::PG_URL.generation();
        match self.query_once(sql, params, false) {
            Err(f) if f.broken && reused => {
                crate::stats::STATS.pg_reconnects.inc();
                self.query_once(sql, params, true).map_err(|f| f.error)
            }
            other => other.map_err(|f| f.error),
        }
    }

    fn query_once(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        now: bool,
    ) -> Result<Vec<postgres::Row>, Failure> {
        self.ensure_link(now)?;
        let stmt = match self.statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let prepared = self.bounded(|c| async move { c.prepare(sql).await })?;
                self.statements.insert(sql.to_owned(), prepared.clone());
                prepared
            }
        };
        let started = Instant::now();
        let result = self.bounded(|c| async move { c.query(&stmt, params).await });
        crate::stats::STATS.query_latency.record(started.elapsed());
        result
    }

    /// Runs one step on the connection within `query_timeout_ms` plus the grace; past it, or
    /// on a broken connection, the connection is dropped.
    fn bounded<T, F>(&mut self, step: impl FnOnce(Arc<tokio_postgres::Client>) -> F) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let limit = config::query_timeout() + GRACE;
        let (Some(rt), Some(link)) = (self.runtime.as_ref(), self.link.as_mut()) else {
            return Err(Error::not_connected("PostgreSQL").into());
        };
        let work = step(link.client.clone());
        let outcome = link.drive(rt, limit, work);
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(e)),
            Err(_) => {
                self.close();
                let reason =
                    format!("{}: no answer within {} ms; the connection was dropped", where_pg(), limit.as_millis());
                note_failure(&reason);
                Err(Failure {
                    error: Error::Timeout { what: format!("PostgreSQL at {reason}"), ms: limit.as_millis() as u64 },
                    broken: false,
                })
            }
        }
    }

    /// Opens the connection if there is none (or the URL changed), and applies the statement
    /// timeout. `now` skips the shared backoff (a retry after a dead pooled connection).
    fn ensure_link(&mut self, now: bool) -> Result<(), Failure> {
        let generation = config::PG_URL.generation();
        if self.link.as_ref().is_some_and(|l| l.ended || l.client.is_closed())
            || (self.link.is_some() && self.generation != generation)
        {
            self.close();
        }
        if self.runtime.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            self.runtime = Some(rt.map_err(|e| Error::Unavailable {
                server: "PostgreSQL",
                reason: format!("cannot start the connection runtime: {e}"),
            })?);
        }
        if self.link.is_none() {
            let Some(rt) = self.runtime.as_ref() else {
                return Err(Error::Unavailable { server: "PostgreSQL", reason: "no runtime".into() }.into());
            };
            self.link = Some(if now { connect_now(rt)? } else { connect_with_backoff(rt)? });
            CONNECTIONS.fetch_add(1, Ordering::AcqRel);
            self.generation = generation;
            self.statement_timeout_ms = 0;
        }
        let timeout = config::query_timeout().as_millis();
        if self.statement_timeout_ms != timeout {
            let sql = format!("SET statement_timeout = {timeout}");
            self.bounded(|c| async move { c.batch_execute(&sql).await })?;
            self.statement_timeout_ms = timeout;
        }
        Ok(())
    }

    /// Maps a query error; a broken connection is dropped so the next step reconnects.
    fn fail(&mut self, e: tokio_postgres::Error) -> Failure {
        let error = map_pg_error(&e);
        let broken = e.is_closed() || e.as_db_error().is_none_or(|db| is_connection_ending(db.code().code()));
        if broken {
            self.close();
            if matches!(error, Error::Unavailable { .. }) {
                note_failure(&error.to_string());
            }
        }
        Failure { error, broken }
    }

    pub fn close(&mut self) {
        // Dropping the link closes the socket at once, even towards a silent peer.
        if self.link.take().is_some() {
            CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
        }
        self.statements.clear();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// SQLSTATEs with which the server ends a session (shutdown, restart, terminated backend).
fn is_connection_ending(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P")
}

fn where_pg() -> String {
    let url = config::PG_URL.get();
    match pg_target::parse(&url) {
        Ok(t) => {
            let c = &t.config;
            let host = c.get_hosts().first().map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            });
            format!("{}:{}", host.unwrap_or_else(|| "localhost".into()), c.get_ports().first().copied().unwrap_or(5432))
        }
        Err(_) => redact_url(&url),
    }
}

fn connect_with_backoff(rt: &Runtime) -> Result<Link, Error> {
    let _probe = {
        let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
        let left = h.backoff.remaining(Instant::now());
        if !left.is_zero() {
            return Err(Error::Unavailable {
                server: "PostgreSQL",
                reason: format!("{} (next connection attempt in {} ms)", h.last_error, left.as_millis()),
            });
        }
        if h.backoff.failures() > 0 {
            if h.probing {
                return Err(Error::Unavailable {
                    server: "PostgreSQL",
                    reason: format!("{} (a connection attempt is under way)", h.last_error),
                });
            }
            h.probing = true;
            Some(Probe)
        } else {
            None
        }
    };
    connect_now(rt)
}

fn connect_now(rt: &Runtime) -> Result<Link, Error> {
    match connect(rt) {
        Ok(c) => {
            HEALTH.lock().unwrap_or_else(|e| e.into_inner()).backoff.succeed();
            Ok(c)
        }
        Err(e) => {
            note_failure(&e.to_string());
            Err(e)
        }
    }
}

/// Forgets the shared backoff (module unload).
pub fn reset_health() {
    let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    h.backoff.succeed();
    h.last_error.clear();
    h.probing = false;
}

fn note_failure(message: &str) {
    let mut h = HEALTH.lock().unwrap_or_else(|e| e.into_inner());
    h.backoff.fail(Instant::now(), BACKOFF_FIRST, BACKOFF_MAX);
    h.last_error = message.strip_prefix("PostgreSQL is unavailable: ").unwrap_or(message).to_owned();
}

/// The statements every new connection runs first: our statements name tables and types
/// fully, and rows are printed the same way whatever the server's, database's or role's
/// defaults (those apply at connection start, so they are overridden here, after it).
fn session_setup_sql() -> String {
    let mut sql = String::from("SET search_path = pg_catalog, pg_temp");
    for (name, value) in CANONICAL_SETTINGS {
        sql.push_str(&format!("; SET {name} = '{}'", value.replace('\'', "''")));
    }
    sql
}

fn connect(rt: &Runtime) -> Result<Link, Error> {
    let unavailable = |reason: String| Error::Unavailable { server: "PostgreSQL", reason };
    let url = config::PG_URL.get();
    if url.is_empty() {
        return Err(unavailable(
            "redis_pg.pg_url is not set (CONFIG SET redis_pg.pg_url postgresql://user@host:port/db)".into(),
        ));
    }
    let target = pg_target::parse(&url).map_err(|e| unavailable(format!("pg_url {e}")))?;
    let mut cfg = target.config;
    if cfg.get_password().is_none() {
        if let Some(pw) = config::external_password().map_err(unavailable)? {
            cfg.password(pw);
        }
    }
    let connect_timeout = config::query_timeout().min(Duration::from_secs(2));
    let dead_peer = config::dead_peer_timeout();
    let (idle, interval, retries) = pg_target::keepalive_timings(dead_peer);
    cfg.application_name("redis_pg");
    cfg.connect_timeout(connect_timeout);
    cfg.keepalives(true).keepalives_idle(idle).keepalives_interval(interval).keepalives_retries(retries);
    cfg.tcp_user_timeout(dead_peer);
    let failed =
        |e: &tokio_postgres::Error| unavailable(format!("{}: {}{}", where_pg(), describe(e), tls_hint(e, target.tls)));
    // The whole opening (TCP, TLS, authentication, setup) has one deadline.
    let limit = connect_timeout + GRACE;
    let timed_out =
        || unavailable(format!("{}: no answer while connecting within {} ms", where_pg(), limit.as_millis()));
    let setup = session_setup_sql();
    let mut link = if target.tls == TlsMode::Disable {
        rt.block_on(async {
            let (client, connection) = tokio::time::timeout(limit, cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| failed(&e))?;
            Ok::<_, Error>(Link::new(client, connection))
        })?
    } else {
        let tls = pg_tls::connector(target.tls, &config::PG_SSL_CA_FILE.get()).map_err(unavailable)?;
        rt.block_on(async {
            let (client, connection) = tokio::time::timeout(limit, cfg.connect(tls))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| failed(&e))?;
            Ok::<_, Error>(Link::new(client, connection))
        })?
    };
    let client = link.client.clone();
    match link.drive(rt, limit, async move { client.batch_execute(&setup).await }) {
        Ok(Ok(())) => Ok(link),
        Ok(Err(e)) => Err(failed(&e)),
        Err(_) => Err(timed_out()),
    }
}

/// What to check when TLS is what failed.
fn tls_hint(e: &tokio_postgres::Error, mode: TlsMode) -> String {
    let text = describe(e);
    if text.contains("certificate") || text.contains("TLS") || text.contains("tls") {
        format!(" (sslmode={}; check redis_pg.pg_ssl_ca_file names the CA that signed the server's certificate, and that the certificate names the host)", mode.name())
    } else if text.contains("no pg_hba.conf entry") && mode == TlsMode::Disable {
        " (the server may require TLS: set sslmode=require or verify-full in pg_url)".into()
    } else {
        String::new()
    }
}

/// A postgres error as one line, without any connection secret (the driver never includes
/// the password; the URL is not part of its messages).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

pub fn map_pg_error(e: &tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        return match db.code().code() {
            "57014" => Error::Timeout {
                what: format!("PostgreSQL cancelled the query: {}", db.message()),
                ms: config::query_timeout().as_millis() as u64,
            },
            // A data exception: a key value PostgreSQL cannot read as the column's type.
            code if code.starts_with("22") => Error::InvalidValue {
                what: "key value",
                value: String::new(),
                reason: format!("{} ({code})", db.message()),
            },
            code if code.starts_with("08") || code.starts_with("57P") || code == "53300" => Error::Unavailable {
                server: "PostgreSQL",
                reason: format!("{}: {} ({code})", where_pg(), db.message()),
            },
            code => Error::Sql { sqlstate: code.to_owned(), message: db.message().to_owned() },
        };
    }
    Error::Unavailable { server: "PostgreSQL", reason: format!("{}: {}", where_pg(), describe(e)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_sets_every_canonical_setting() {
        let sql = session_setup_sql();
        assert!(sql.starts_with("SET search_path = pg_catalog, pg_temp; "));
        assert!(
            sql.contains("SET DateStyle = 'ISO, MDY'")
                && sql.contains("SET TimeZone = 'UTC'")
                && sql.contains("SET lc_monetary = 'C'"),
            "{sql}"
        );
    }
}

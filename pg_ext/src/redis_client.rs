//! Connections to Redis from this process. Opened lazily (never in the postmaster), bounded by
//! the connect and command timeouts, dropped after any I/O failure so the next call reconnects.
//! Errors never carry the URL's password.
//!
//! A backend's calls (the `redis.*` SQL functions) run on a helper thread that owns the
//! connection, while the backend waits on it checking for query cancels: Ctrl-C or
//! `statement_timeout` interrupt even a command that blocks in Redis (BLPOP, a paused server).
//! The helper thread never touches PostgreSQL.

use crate::gucs;
use pg_redis_shared::redact::redact_url;
use pg_redis_shared::Error;
use pgrx::prelude::*;
use std::any::Any;
use std::cell::RefCell;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where and how to connect, read from the settings on the backend's main thread.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub url: String,
    pub tls_ca_file: Option<String>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl Target {
    pub fn from_settings() -> Target {
        Target {
            url: gucs::redis_url(),
            tls_ca_file: gucs::tls_ca_file(),
            connect_timeout: gucs::connect_timeout(),
            command_timeout: gucs::command_timeout(),
        }
    }

    /// Whether a connection opened for `self` can serve `other` (timeouts are set per call).
    fn same_server(&self, other: &Target) -> bool {
        self.url == other.url && self.tls_ca_file == other.tls_ca_file
    }
}

/// Opens a connection; `resp3` asks for RESP3 replies (maps, doubles, booleans).
pub fn connect(t: &Target, resp3: bool) -> Result<redis::Connection, Error> {
    let (url, connect_timeout, command_timeout) = (t.url.as_str(), t.connect_timeout, t.command_timeout);
    if url.is_empty() {
        return Err(Error::Unavailable { server: "Redis", reason: "pg_redis.url is not set; set it with ALTER SYSTEM SET pg_redis.url = 'redis://host:port' and SELECT pg_reload_conf()".into() });
    }
    if url.starts_with("rediss://") {
        install_tls_provider();
    }
    let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| Error::invalid_value("pg_redis.url", format_args!("\"{}\"", redact_url(url)), e))?;
    if resp3 {
        let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
    }
    let client = match (&t.tls_ca_file, url.starts_with("rediss://")) {
        (Some(ca), true) => {
            let root = std::fs::read(ca)
                .map_err(|e| Error::invalid_value("pg_redis.tls_ca_file", format_args!("\"{ca}\""), e))?;
            redis::Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(root) })
        }
        _ => redis::Client::open(info),
    }
    .map_err(|e| Error::invalid_value("pg_redis.url", format_args!("\"{}\"", redact_url(url)), e))?;
    let conn = client.get_connection_with_timeout(connect_timeout).map_err(|e| from_redis(t, e))?;
    conn.set_read_timeout(Some(command_timeout)).map_err(|e| from_redis(t, e))?;
    conn.set_write_timeout(Some(command_timeout)).map_err(|e| from_redis(t, e))?;
    Ok(conn)
}

/// Maps a client error to the shared vocabulary, naming the server without its password.
/// Callable from any thread (it reads no setting).
pub fn from_redis(t: &Target, e: redis::RedisError) -> Error {
    let url = t.url.as_str();
    let at = redact_url(url);
    let text = e.to_string().replace(url, &at);
    if e.is_timeout() {
        Error::Timeout { what: format!("Redis at {at} did not answer"), ms: t.command_timeout.as_millis() as u64 }
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        Error::Unavailable { server: "Redis", reason: format!("{at}: {text}") }
    } else {
        Error::Remote { server: "Redis", message: text }
    }
}

/// Whether the connection must be dropped after this error (anything but an error reply).
pub fn breaks_connection(e: &Error) -> bool {
    !matches!(e, Error::Remote { .. })
}

fn install_tls_provider() {
    // rustls needs one process-wide crypto provider; a second install is a harmless no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

type Work = Box<dyn FnOnce(&mut redis::Connection) -> redis::RedisResult<Box<dyn Any + Send>> + Send>;

struct Request {
    id: u64,
    target: Target,
    work: Work,
}

struct Response {
    id: u64,
    result: Result<Box<dyn Any + Send>, Error>,
}

/// The helper thread of this backend and the channels to it.
struct Executor {
    requests: mpsc::Sender<Request>,
    responses: mpsc::Receiver<Response>,
    next_id: u64,
}

impl Executor {
    fn start() -> Result<Executor, Error> {
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let (resp_tx, resp_rx) = mpsc::channel::<Response>();
        crate::threads::spawn("pg_redis client", move || serve(req_rx, resp_tx)).map_err(|e| Error::Unavailable {
            server: "Redis",
            reason: format!("cannot start the client thread: {e}"),
        })?;
        Ok(Executor { requests: req_tx, responses: resp_rx, next_id: 0 })
    }
}

/// The helper thread: one connection, reopened when the URL changes or after a failure.
fn serve(requests: mpsc::Receiver<Request>, responses: mpsc::Sender<Response>) {
    let mut conn: Option<(Target, redis::Connection)> = None;
    while let Ok(req) = requests.recv() {
        if conn.as_ref().is_some_and(|(t, _)| !t.same_server(&req.target)) {
            conn = None;
        }
        let result = match conn.take() {
            Some(c) => Ok(c),
            None => connect(&req.target, true).map(|c| (req.target.clone(), c)),
        }
        .and_then(|(target, mut c)| {
            let _ = c.set_read_timeout(Some(req.target.command_timeout));
            let r = match crate::threads::catch(|| (req.work)(&mut c)) {
                Ok(r) => r.map_err(|e| from_redis(&req.target, e)),
                // The connection's state is unknown after a panic: drop it.
                Err(why) => Err(Error::Unavailable { server: "Redis", reason: why }),
            };
            if !matches!(&r, Err(e) if breaks_connection(e)) {
                conn = Some((target, c));
            }
            r
        });
        if responses.send(Response { id: req.id, result }).is_err() {
            return;
        }
    }
}

thread_local! {
    static BACKEND: RefCell<Option<Executor>> = const { RefCell::new(None) };
}

/// Runs `f` on this backend's Redis connection and returns its result. A query cancel or
/// `statement_timeout` while waiting raises the usual ERROR at once (the connection is then
/// abandoned and a new one opened by the next call).
pub fn call<T: Send + 'static>(
    f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T> + Send + 'static,
) -> Result<T, Error> {
    let target = Target::from_settings();
    let (connect_timeout, command_timeout) = (target.connect_timeout, target.command_timeout);
    let mut exec = match BACKEND.with_borrow_mut(Option::take) {
        Some(e) => e,
        None => Executor::start()?,
    };
    exec.next_id += 1;
    let id = exec.next_id;
    let work: Work = Box::new(move |c| f(c).map(|v| Box::new(v) as Box<dyn Any + Send>));
    if exec.requests.send(Request { id, target, work }).is_err() {
        return Err(Error::Unavailable { server: "Redis", reason: "the client thread stopped".into() });
    }
    // Past this the thread itself must have given up (its socket timeouts); a safety net.
    let give_up = Instant::now() + connect_timeout + command_timeout + Duration::from_secs(1);
    loop {
        match exec.responses.recv_timeout(Duration::from_millis(5)) {
            Ok(resp) if resp.id == id => {
                BACKEND.with_borrow_mut(|b| *b = Some(exec));
                return resp.result.map(|v| *v.downcast::<T>().unwrap_or_else(|_| unreachable_type()));
            }
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // SAFETY: reading the interrupt flag of this backend, on its main thread.
                if unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 } {
                    // Abandon the call: dropping the executor closes its channel, the thread
                    // finishes the command and exits with its connection.
                    drop(exec);
                    check_for_interrupts!();
                    return Err(Error::Timeout { what: "the Redis call was interrupted".into(), ms: 0 });
                }
                // Other interrupts (catch-up, barriers) are served and the wait goes on.
                check_for_interrupts!();
                if Instant::now() > give_up {
                    return Err(Error::Timeout {
                        what: "Redis did not answer".into(),
                        ms: command_timeout.as_millis() as u64,
                    });
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Error::Unavailable { server: "Redis", reason: "the client thread stopped".into() })
            }
        }
    }
}

#[cold]
fn unreachable_type() -> ! {
    // A response carries the type its request asked for.
    error!("pg_redis: internal error: a Redis reply of an unexpected type")
}

//! Connections to Redis from this process. Opened lazily (never in the postmaster), bounded by
//! the connect and command timeouts, dropped after any I/O failure so the next call reconnects.
//! Errors never carry the URL's password.

use crate::gucs;
use pg_redis_shared::redact::redact_url;
use pg_redis_shared::Error;
use std::cell::RefCell;
use std::time::Duration;

/// Opens a connection with the given timeouts.
pub fn connect(url: &str, connect_timeout: Duration, command_timeout: Duration) -> Result<redis::Connection, Error> {
    if url.is_empty() {
        return Err(Error::Unavailable { server: "Redis", reason: "pg_redis.url is not set; set it with ALTER SYSTEM SET pg_redis.url = 'redis://host:port' and SELECT pg_reload_conf()".into() });
    }
    if url.starts_with("rediss://") {
        install_tls_provider();
    }
    let client = redis::Client::open(url).map_err(|e| Error::invalid_value("pg_redis.url", format_args!("\"{}\"", redact_url(url)), e))?;
    let conn = client.get_connection_with_timeout(connect_timeout).map_err(|e| from_redis(url, e))?;
    conn.set_read_timeout(Some(command_timeout)).map_err(|e| from_redis(url, e))?;
    conn.set_write_timeout(Some(command_timeout)).map_err(|e| from_redis(url, e))?;
    Ok(conn)
}

/// Maps a client error to the shared vocabulary, naming the server without its password.
pub fn from_redis(url: &str, e: redis::RedisError) -> Error {
    let at = redact_url(url);
    if e.is_timeout() {
        Error::Timeout { what: format!("Redis at {at} did not answer"), ms: gucs::command_timeout().as_millis() as u64 }
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        Error::Unavailable { server: "Redis", reason: format!("{at}: {}", e.to_string().replace(url, &at)) }
    } else {
        Error::Remote { server: "Redis", message: e.to_string().replace(url, &at) }
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

thread_local! {
    /// This backend's connection and the URL it was opened with.
    static BACKEND: RefCell<Option<(String, redis::Connection)>> = const { RefCell::new(None) };
}

/// Runs `f` on this backend's connection, opening it on first use, reopening it when
/// `pg_redis.url` changed, and dropping it when the call failed on the wire.
pub fn with_backend_connection<T>(f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>) -> Result<T, Error> {
    let url = gucs::redis_url();
    BACKEND.with(|cell| {
        let kept = cell.borrow_mut().take().filter(|(u, _)| *u == url);
        let mut conn = match kept {
            Some((_, c)) => c,
            None => connect(&url, gucs::connect_timeout(), gucs::command_timeout())?,
        };
        let result = f(&mut conn).map_err(|e| from_redis(&url, e));
        if !matches!(&result, Err(e) if breaks_connection(e)) {
            *cell.borrow_mut() = Some((url, conn));
        }
        result
    })
}

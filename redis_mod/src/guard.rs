//! Never crash redis-server: every entry point from Redis runs inside `catch_unwind`, and log
//! lines are escaped (Redis formats them printf-style) before they reach the log.

use redis_module::{RedisError, RedisResult};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs a command body; a panic becomes an error reply instead of aborting the server.
pub fn command(f: impl FnOnce() -> RedisResult) -> RedisResult {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = panic_message(&p);
            log_warning(&format!("internal error (please report): {msg}"));
            Err(RedisError::String(format!("ERR redis_pg internal error: {}", crate::reply::sanitize(&msg))))
        }
    }
}

/// Runs a callback that returns nothing; a panic is logged and swallowed.
pub fn callback(what: &str, f: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        log_warning(&format!("internal error in {what} (please report): {}", panic_message(&p)));
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "unknown panic".into())
}

/// Redis formats module log lines printf-style: escape `%`, drop NUL.
fn escape(msg: &str) -> String {
    msg.replace('%', "%%").replace('\0', "\\0")
}

pub fn log_notice(msg: &str) {
    redis_module::logging::log_notice(escape(msg));
}

pub fn log_warning(msg: &str) {
    redis_module::logging::log_warning(escape(msg));
}

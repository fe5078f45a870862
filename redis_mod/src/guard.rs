//! Never crash redis-server: every entry point from Redis (load, unload, commands, callbacks)
//! and every thread the module starts runs inside `catch_unwind`, and log lines are escaped
//! (Redis formats them printf-style) before they reach the log.

use crate::module_api;
use redis_module::{RedisError, RedisResult, Status};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

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

/// Runs the module's load or unload; a panic is logged and fails the step (Redis then
/// refuses the load or keeps the module loaded) instead of unwinding into redis-server.
pub fn lifecycle(what: &str, f: impl FnOnce() -> Status) -> Status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(status) => status,
        Err(p) => {
            log_warning(&format!("internal error while {what} (please report): {}", panic_message(&p)));
            Status::Err
        }
    }
}

/// Runs a callback that returns nothing; a panic is logged and swallowed.
pub fn callback(what: &str, f: impl FnOnce()) {
    if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
        log_warning(&format!("internal error in {what} (please report): {}", panic_message(&p)));
    }
}

/// The body of a thread the module starts. A panic is logged and the body starts over after
/// a pause, so a thread never ends silently; it ends when the body returns.
pub fn thread_body(what: &str, body: impl Fn()) {
    while let Err(p) = catch_unwind(AssertUnwindSafe(&body)) {
        log_warning(&format!("internal error in {what} (please report), restarting it: {}", panic_message(&p)));
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    pg_redis_shared::error::panic_message(p.as_ref())
}

/// Redis formats module log lines printf-style: escape `%`, drop NUL.
fn escape(msg: &str) -> String {
    msg.replace('%', "%%").replace('\0', "\\0")
}

pub fn log_notice(msg: &str) {
    if module_api::can_log() {
        redis_module::logging::log_notice(escape(msg));
    } else {
        eprintln!("{msg}");
    }
}

pub fn log_warning(msg: &str) {
    if module_api::can_log() {
        redis_module::logging::log_warning(escape(msg));
    } else {
        eprintln!("{msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_panic_while_loading_fails_the_load() {
        assert!(matches!(lifecycle("loading", || panic!("boom")), Status::Err)); // ok: the panic this test catches (test builds only)
        assert!(matches!(lifecycle("loading", || Status::Ok), Status::Ok));
    }

    #[test]
    fn a_panic_in_a_command_is_an_error_reply() {
        let r = command(|| panic!("bad {}", 1)); // ok: the panic this test catches (test builds only)
        assert!(matches!(r, Err(RedisError::String(s)) if s == "ERR redis_pg internal error: bad 1"));
    }

    #[test]
    fn a_thread_body_restarts_after_a_panic() {
        let runs = AtomicUsize::new(0);
        thread_body("a test thread", || {
            if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("again"); // ok: the panic this test catches (test builds only)
            }
        });
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }
}

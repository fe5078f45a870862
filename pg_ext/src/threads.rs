//! Helper threads inside a PostgreSQL process. They run pure Rust (Redis I/O) and must never
//! call into PostgreSQL; they must not receive PostgreSQL's signals either, whose handlers
//! assume the main thread, so every signal is blocked in them. A panic in one never reaches
//! the backend: each unit of work runs under [`catch`], and the thread body as a whole too.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

/// Spawns a named thread with every signal blocked; a panic ends only that thread (its
/// channels close, and the backend reports the thread as stopped).
pub fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<JoinHandle<()>> {
    let body = move || {
        let _ = catch(f);
    };
    // SAFETY: pthread_sigmask only changes this thread's mask; the child inherits the blocked
    // mask at creation and we restore ours right after.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let handle = std::thread::Builder::new().name(name.to_owned()).spawn(body);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        handle
    }
}

/// Runs `f`, turning a panic into an error message (for code on helper threads).
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let what = pg_redis_shared::error::panic_message(p.as_ref());
        format!("internal error on a pg_redis helper thread: {what}")
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn a_panic_on_a_helper_thread_becomes_an_error() {
        let r: Result<(), String> = super::catch(|| panic!("boom")); // ok: the panic this test catches (test builds only)
        assert!(r.unwrap_err().contains("boom"));
        let h = super::spawn("t", || panic!("in a thread")).unwrap(); // ok: the panic this test catches (test builds only)
        assert!(h.join().is_ok(), "the thread body's panic is caught");
    }
}

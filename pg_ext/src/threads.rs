//! Helper threads inside a PostgreSQL process. They run pure Rust (Redis I/O) and must never
//! call into PostgreSQL; they must not receive PostgreSQL's signals either, whose handlers
//! assume the main thread, so every signal is blocked in them.

use std::io;
use std::thread::JoinHandle;

/// Spawns a named thread with every signal blocked.
pub fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<JoinHandle<()>> {
    // SAFETY: pthread_sigmask only changes this thread's mask; the child inherits the blocked
    // mask at creation and we restore ours right after.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let handle = std::thread::Builder::new().name(name.to_owned()).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        handle
    }
}

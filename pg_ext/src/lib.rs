//! pg_redis: PostgreSQL pushes committed row changes to Redis, durably and in order.
//!
//! - `capture`: triggers append each change to an outbox in the user's transaction.
//! - `worker`: a background worker per database drains the outbox into Redis.
//! - `api`: the SQL surface (schema `redis`).

// An FFI crate: every unsafe block says why it is sound, and no index may panic inside a host
// process unless a comment proves it in bounds.
#![warn(clippy::undocumented_unsafe_blocks, clippy::indexing_slicing)]

use pgrx::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

mod api;
mod capture;
mod copies;
mod ddl;
mod errors;
mod gucs;
mod hooks;
mod pg;
mod redis_client;
mod threads;
mod worker;

::pgrx::pg_module_magic!();

/// Whether the library was loaded through `shared_preload_libraries` (the background worker
/// and shared memory exist only then).
static PRELOADED: AtomicBool = AtomicBool::new(false);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    // SAFETY: PostgreSQL's own flag, read on its main thread while it loads us.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    PRELOADED.store(preloading, Ordering::Relaxed);
    // SAFETY: reserving our GUC prefix, during load, with a static C string.
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_redis".as_ptr()) };
    if preloaded() {
        worker::registry::init_shmem();
        worker::register_launcher();
        hooks::install();
        capture::wake::register_everywhere();
    }
}

pub fn preloaded() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // Port 1 refuses connections at once: no test here reaches a real Redis.
        vec!["shared_preload_libraries = 'pg_redis'", "pg_redis.url = 'redis://127.0.0.1:1'"]
    }
}

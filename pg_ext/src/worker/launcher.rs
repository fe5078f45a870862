//! The launcher: one background worker at start (and after a crash) that starts a delivery
//! worker for every database where one is missing, and again when a `CREATE EXTENSION` or a
//! copied database asks it to.

use super::{in_transaction, pin_settings, registry, reload_config_if_asked};
use crate::gucs;
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::collections::HashSet;
use std::time::Duration;

/// Registers the launcher; called from `_PG_init` while preloading.
pub fn register_launcher() {
    BackgroundWorkerBuilder::new("pg_redis launcher")
        .set_type("pg_redis launcher")
        .set_library("pg_redis")
        .set_function("pg_redis_launcher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Starts the delivery worker of one database (it exits at once if one already runs there or
/// the extension is not installed).
fn start_worker(dboid: pg_sys::Oid, datname: &str) -> bool {
    let mut name = format!("pg_redis worker {datname}");
    while name.len() > 90 {
        name.pop();
    }
    BackgroundWorkerBuilder::new(&name)
        .set_type("pg_redis worker")
        .set_library("pg_redis")
        .set_function("pg_redis_worker_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(1)))
        .set_argument(dboid.into_datum())
        .load_dynamic()
        .is_ok()
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn pg_redis_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&gucs::launcher_database()), None);
    pin_settings();
    // SAFETY: our own pid.
    registry::set_launcher(unsafe { pg_sys::MyProcPid });
    let mut probed: HashSet<u32> = HashSet::new();
    let mut seen_requests = 0;
    loop {
        let requests = registry::probe_requests();
        let everything = requests != seen_requests;
        seen_requests = requests;
        let dbs = in_transaction("listing databases", || {
            Spi::connect(|c| {
                c.select(
                    "SELECT oid, datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate",
                    None,
                    &[],
                )
                .unwrap_or_report()
                .filter_map(|r| Some((r.get::<pg_sys::Oid>(1).ok()??, r.get::<String>(2).ok()??)))
                .collect::<Vec<_>>()
            })
        })
        .unwrap_or_default();
        for (oid, name) in dbs {
            // New databases are probed once; a CREATE EXTENSION asks for every database again.
            if (everything || !probed.contains(&oid.to_u32())) && registry::info(oid).is_none() {
                if start_worker(oid, &name) {
                    probed.insert(oid.to_u32());
                } else {
                    // Tried again at the next round.
                    log!("pg_redis: no free background worker slot for database {name}; raise max_worker_processes");
                }
            } else {
                probed.insert(oid.to_u32());
            }
        }
        if !BackgroundWorker::wait_latch(Some(Duration::from_secs(10))) {
            break;
        }
        reload_config_if_asked();
    }
    registry::set_launcher(0);
}

//! Copies of a synced database (`CREATE DATABASE copy TEMPLATE synced`) share the template's
//! mappings, key templates, outbox and Redis settings: left alone, the copy's worker would
//! deliver the copied outbox again and push the copy's own changes into the very keys of the
//! database it was copied from.
//!
//! CREATE EXTENSION records who the database is (`redis.identity`: its oid and the cluster's
//! system identifier). A worker that finds another identity holds delivery: the outbox is kept
//! (nothing is lost), `redis.worker_status()` and `redis.status` say why, and it waits until a
//! superuser adopts the copy with `redis.adopt_copy()`, after pointing it at its own keys
//! (another Redis or database number, e.g. `ALTER DATABASE copy SET pg_redis.url = ...`).
//! The system identifier changes when a cluster is rebuilt from files by another initdb
//! (pg_upgrade, a rehearsal copy): such a cluster may just as well push into the production
//! Redis, so it waits for adoption too. A physical standby keeps both and delivers once
//! promoted, as the same database.

use crate::errors::raise;
use crate::pg::xact::in_transaction;
use crate::worker::registry::{self, WorkerState};
use pg_redis_shared::Error;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::time::Duration;

/// How often a held worker looks again (adoption also wakes it at once).
const RECHECK: Duration = Duration::from_secs(2);

/// Message prefix of a held worker, in `redis.status` and `redis.worker_status()`.
const HELD: &str = "paused: this database is a copy";

/// What the worker of a database does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// The database is itself (or was adopted before this worker started): deliver.
    Deliver,
    /// Stop for good (the database is being dropped or copied, or lost the extension).
    Stop,
    /// Exit so that the postmaster starts the worker again (shutdown, or just adopted: a new
    /// process applies the database's settings, such as a `pg_redis.url` set for the copy).
    Restart,
}

enum Identity {
    Same,
    /// A copy: the name and oid of the database it was copied from, and whether the cluster
    /// changed too.
    Copied {
        from: String,
        from_oid: u32,
        other_cluster: bool,
    },
    /// No extension (dropped meanwhile).
    Gone,
}

/// Holds the worker of `dboid` while its database is an unadopted copy.
pub fn hold_while_copied(dboid: pg_sys::Oid) -> Hold {
    let mut announced = false;
    loop {
        match in_transaction("checking whether this database is a copy", check) {
            Some(Identity::Same) => return if announced { Hold::Restart } else { Hold::Deliver },
            // The check itself failed (logged): hold rather than risk writing another
            // database's keys, and check again.
            None => registry::set_state(
                dboid,
                WorkerState::Paused,
                Some("pg_redis could not check whether this database is a copy; see the server log"),
            ),
            Some(Identity::Gone) => return Hold::Stop,
            Some(Identity::Copied { from, from_oid, other_cluster }) => {
                if !announced {
                    let how = if other_cluster { " in another cluster" } else { "" };
                    let msg = format!("{HELD} of database \"{from}\" (oid {from_oid}){how}, whose Redis keys its outbox targets; point it at its own keys, then call redis.adopt_copy()");
                    in_transaction("recording why delivery is held", || record_held(&msg));
                    registry::set_state(dboid, WorkerState::Paused, Some(&msg));
                    log!("pg_redis: {msg}");
                    announced = true;
                }
            }
        }
        if registry::stop_requested(dboid) {
            return Hold::Stop;
        }
        if !BackgroundWorker::wait_latch(Some(RECHECK)) {
            return Hold::Restart;
        }
    }
}

fn check() -> Identity {
    let installed = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'pg_redis')",
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !installed {
        return Identity::Gone;
    }
    let row = Spi::connect(|c| {
        c.select("SELECT database_oid, database_name::text, system_identifier FROM redis.identity", None, &[])
            .unwrap_or_report()
            .next()
            .map(|r| {
                (
                    r.get::<pg_sys::Oid>(1).ok().flatten(),
                    r.get::<String>(2).ok().flatten(),
                    r.get::<i64>(3).ok().flatten(),
                )
            })
    });
    let (me, cluster) = here();
    match row {
        None => {
            // Installed by a version that did not record it: this database is the one.
            record_identity();
            Identity::Same
        }
        Some((oid, name, sysid)) => {
            let other_cluster = sysid != Some(cluster);
            if oid == Some(me) && !other_cluster {
                Identity::Same
            } else if !other_cluster && oid.is_some_and(is_template_database) {
                // Made from a database marked as a template (the extension installed in
                // template1, say): a new database, not a copy of a synced one (template
                // databases have no worker and write no keys).
                record_identity();
                Identity::Same
            } else {
                Identity::Copied {
                    from: name.unwrap_or_default(),
                    from_oid: oid.map(|o| o.to_u32()).unwrap_or(0),
                    other_cluster,
                }
            }
        }
    }
}

fn is_template_database(oid: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE oid OPERATOR(pg_catalog.=) $1 AND datistemplate)",
        &[oid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// This database's oid and the cluster's system identifier (as the signed bigint SQL shows).
fn here() -> (pg_sys::Oid, i64) {
    // SAFETY: reading this backend's database id and the control file's identifier.
    unsafe { (pg_sys::MyDatabaseId, pg_sys::GetSystemIdentifier() as i64) }
}

fn record_identity() {
    let (me, cluster) = here();
    Spi::run_with_args(
        "INSERT INTO redis.identity (database_oid, database_name, system_identifier) VALUES ($1, pg_catalog.current_database(), $2) \
         ON CONFLICT (only_row) DO UPDATE SET database_oid = EXCLUDED.database_oid, database_name = EXCLUDED.database_name, \
         system_identifier = EXCLUDED.system_identifier, recorded_at = pg_catalog.now()",
        &[me.into(), cluster.into()],
    )
    .unwrap_or_report();
}

/// Shows the reason in `redis.status` (its last_error per table).
fn record_held(msg: &str) {
    Spi::run_with_args(
        "INSERT INTO redis.delivery (scope, table_name, last_error, last_error_at) \
         SELECT t.table_name::pg_catalog.oid::pg_catalog.text, t.table_name, $1, pg_catalog.now() FROM redis.tables t \
         ON CONFLICT (scope) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = EXCLUDED.last_error_at",
        &[msg.into()],
    )
    .unwrap_or_report();
}

/// Makes a copied database deliver: it becomes itself (its identity is recorded again) and its
/// worker starts delivering, to the Redis its settings name (set `pg_redis.url` for the copy
/// first, e.g. with ALTER DATABASE, unless it is meant to write the original's keys). With
/// `purge_outbox`, the events queued so far (those copied from the template among them) are
/// dropped instead of delivered. Returns the number of events purged.
#[pg_extern(volatile, parallel_unsafe)]
fn adopt_copy(purge_outbox: default!(Option<bool>, "false")) -> i64 {
    if !crate::pg::role::is_superuser() {
        raise(Error::AdoptNeedsSuperuser);
    }
    let held = matches!(check(), Identity::Copied { .. });
    if !held {
        notice!("pg_redis: this database is not a copy awaiting adoption; nothing to do");
    }
    record_identity();
    let purged = if purge_outbox.unwrap_or(false) {
        Spi::get_one::<i64>("WITH gone AS (DELETE FROM redis.outbox RETURNING 1) SELECT pg_catalog.count(*) FROM gone")
            .unwrap_or_report()
            .unwrap_or(0)
    } else {
        0
    };
    Spi::run_with_args("UPDATE redis.delivery SET last_error = NULL, last_error_at = NULL WHERE pg_catalog.starts_with(last_error, $1)", &[HELD.into()]).unwrap_or_report();
    // At commit, the held worker wakes, sees the new identity and starts over.
    crate::capture::wake::after_commit();
    purged
}

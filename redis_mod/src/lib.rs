//! redis_pg: a Redis module whose `PG.*` commands serve rows from the cache and, on a miss,
//! read them through from PostgreSQL on a pool thread, so Redis's main thread never waits.
//!
//! - `config`: load arguments and `CONFIG SET redis_pg.*`.
//! - `pool`: threads with their own PostgreSQL connections behind a bounded queue;
//!   `session`: one such connection, bounded in time; `pg_target` / `pg_tls`: where and how
//!   it connects (URL, `sslmode`, certificates).
//! - `blocking`: blocked clients with deadlines; every one gets an answer.
//! - `commands`: one file per command; `command_info`: their metadata.
//! - `guard`: no panic ever reaches redis-server.
//! - `module_api`: every direct call into Redis's C module API.

// An FFI crate: every unsafe block says why it is sound, and no index may panic inside a host
// process unless a comment proves it in bounds.
#![warn(clippy::undocumented_unsafe_blocks, clippy::indexing_slicing)]

mod blocking;
mod cache;
mod command_info;
mod commands;
mod config;
mod guard;
mod mappings;
mod module_api;
mod pg_target;
mod pg_tls;
mod pool;
mod reply;
mod session;
mod stats;

use command_info::{Info, Keys};
use redis_module::commands::KeySpecFlags;
use redis_module::configuration::ConfigurationContext;
use redis_module::{redis_module, Context, NotifyEvent, RedisString, Status};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[cfg(not(test))]
type ModuleAllocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type ModuleAllocator = std::alloc::System;

/// Set once `init` ran: configuration callbacks that fire during load wait for it.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

const COMMANDS: &[Info] = &[
    Info {
        name: "pg.get",
        summary: "Returns the cached row at a key; on a miss reads it from PostgreSQL, caches and returns it.",
        complexity: "O(1) on a hit; one indexed PostgreSQL query on a miss",
        arity: 2,
        keys: Keys::First,
        key_flags: KeySpecFlags::READ_ONLY.union(KeySpecFlags::ACCESS),
        categories: "read",
    },
    Info {
        name: "pg.mget",
        summary: "PG.GET for many keys; misses are read with one PostgreSQL query per table.",
        complexity: "O(N) for N keys",
        arity: -2,
        keys: Keys::All,
        key_flags: KeySpecFlags::READ_ONLY.union(KeySpecFlags::ACCESS),
        categories: "read",
    },
    Info {
        name: "pg.invalidate",
        summary: "Drops cached rows and revokes fills in flight for them.",
        complexity: "O(N) for N keys",
        arity: -2,
        keys: Keys::All,
        key_flags: KeySpecFlags::REMOVE.union(KeySpecFlags::DELETE),
        categories: "write",
    },
    Info {
        name: "pg.reload",
        summary: "Reloads the table mappings from PostgreSQL; returns how many there are.",
        complexity: "O(mappings)",
        arity: 1,
        keys: Keys::None,
        key_flags: KeySpecFlags::empty(),
        categories: "admin",
    },
    Info {
        name: "pg.ping",
        summary: "Checks that the module reaches PostgreSQL and returns its version.",
        complexity: "O(1)",
        arity: 1,
        keys: Keys::None,
        key_flags: KeySpecFlags::empty(),
        categories: "connection",
    },
    Info {
        name: "pg.stats",
        summary: "Counters of the cache and the PostgreSQL pool (also in INFO redis_pg).",
        complexity: "O(1)",
        arity: 1,
        keys: Keys::None,
        key_flags: KeySpecFlags::empty(),
        categories: "",
    },
];

/// Module load (`OnLoad`), guarded: a panic fails the load instead of unwinding into Redis.
fn init(ctx: &Context, args: &[RedisString]) -> Status {
    guard::lifecycle("loading", || load(ctx, args))
}

/// Module unload, guarded likewise.
fn deinit(ctx: &Context) -> Status {
    guard::lifecycle("unloading", || unload(ctx))
}

fn load(ctx: &Context, args: &[RedisString]) -> Status {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy()).collect();
    if let Some(name) = config::password_in_args(&args) {
        guard::log_warning(&format!(
            "refusing to load: the {name} argument carries a password, and MODULE LIST shows module arguments to clients. \
             Put the password in a file named by the pg_password_file argument, or in redis-server's PGPASSWORD environment variable"
        ));
        return Status::Err;
    }
    config::register(ctx, Box::new(on_pool_size));
    if let Err(why) = config::apply_load_args(&args) {
        guard::log_warning(&format!("refusing to load: {why}"));
        return Status::Err;
    }
    if !command_info::create_raw(ctx, "pg.get", commands::get::command, "readonly", 1, 1, 1) {
        return Status::Err;
    }
    let with_category = command_info::add_category(ctx);
    for info in COMMANDS {
        command_info::apply(ctx, info, with_category);
    }
    INITIALIZED.store(true, Ordering::Release);
    blocking::start();
    pool::resize();
    mappings::start();
    guard::log_notice(&format!(
        "redis_pg {} loaded: PostgreSQL at {}, {} connections",
        env!("CARGO_PKG_VERSION"),
        config::PG_URL.redacted(),
        config::pool_size()
    ));
    Status::Ok
}

fn unload(_ctx: &Context) -> Status {
    match pool::shutdown() {
        Ok(()) => {
            mappings::stop();
            blocking::stop();
            // The library may stay mapped after unload: leave nothing behind for the next load.
            INITIALIZED.store(false, Ordering::Release);
            cache::reset();
            pool::reset_health();
            stats::STATS.reset();
            Status::Ok
        }
        Err(why) => {
            guard::log_warning(&format!("cannot unload now: {why}"));
            Status::Err
        }
    }
}

fn on_pool_size(_ctx: &ConfigurationContext, _name: &str, _v: &'static AtomicI64) {
    if INITIALIZED.load(Ordering::Acquire) {
        guard::callback("resizing the pool", pool::resize);
    }
}

fn on_keyspace_event(ctx: &Context, _event: NotifyEvent, _name: &str, key: &[u8]) {
    guard::callback("a keyspace event", || cache::on_keyspace_event(ctx, key));
}

#[redis_module_macros::flush_event_handler]
fn on_flush(_ctx: &Context, _sub: redis_module::server_events::FlushSubevent) {
    guard::callback("a flush", cache::revoke_all);
}

/// Wraps a command so no panic can reach redis-server.
macro_rules! guarded {
    ($f:path) => {
        |ctx: &Context, args: Vec<RedisString>| guard::command(|| $f(ctx, args))
    };
}

redis_module! {
    name: "redis_pg",
    version: 1,
    allocator: (ModuleAllocator, ModuleAllocator {}),
    data_types: [],
    init: init,
    deinit: deinit,
    commands: [
        ["pg.mget", guarded!(commands::mget::run), "readonly", 1, -1, 1, ""],
        ["pg.invalidate", guarded!(commands::invalidate::run), "write", 1, -1, 1, ""],
        ["pg.reload", guarded!(commands::reload::run), "admin", 0, 0, 0, ""],
        ["pg.ping", guarded!(commands::ping::run), "readonly", 0, 0, 0, ""],
        ["pg.stats", guarded!(commands::stats::run), "readonly fast", 0, 0, 0, ""],
    ],
    event_handlers: [
        [@GENERIC @STRING @LIST @SET @HASH @ZSET @STREAM @EXPIRED @EVICTED: on_keyspace_event],
    ],
}

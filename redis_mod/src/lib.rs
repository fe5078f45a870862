//! redis_pg: a Redis module whose `PG.*` commands serve rows from the cache and, on a miss,
//! read them through from PostgreSQL on a pool thread, so Redis's main thread never waits.
//!
//! - `config`: load arguments and `CONFIG SET redis_pg.*`.
//! - `pool`: threads with their own PostgreSQL connections behind a bounded queue.
//! - `blocking`: blocked clients with deadlines; every one gets an answer.
//! - `commands`: one file per command; `command_info`: their metadata.
//! - `guard`: no panic ever reaches redis-server.

mod blocking;
mod command_info;
mod commands;
mod config;
mod guard;
mod pool;
mod reply;
mod stats;

use command_info::{Info, Keys};
use redis_module::commands::KeySpecFlags;
use redis_module::configuration::ConfigurationContext;
use redis_module::{redis_module, Context, RedisString, Status};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

#[cfg(not(test))]
type ModuleAllocator = redis_module::alloc::RedisAlloc;
#[cfg(test)]
type ModuleAllocator = std::alloc::System;

/// Set once `init` ran: configuration callbacks that fire during load wait for it.
static INITIALIZED: AtomicBool = AtomicBool::new(false);

const COMMANDS: &[Info] = &[Info {
    name: "pg.ping",
    summary: "Checks that the module reaches PostgreSQL and returns its version.",
    complexity: "O(1)",
    arity: 1,
    keys: Keys::None,
    key_flags: KeySpecFlags::empty(),
    categories: "connection",
}];

fn init(ctx: &Context, args: &[RedisString]) -> Status {
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
    let with_category = command_info::add_category(ctx);
    for info in COMMANDS {
        command_info::apply(ctx, info, with_category);
    }
    INITIALIZED.store(true, Ordering::Release);
    pool::resize();
    guard::log_notice(&format!("redis_pg {} loaded: PostgreSQL at {}, {} connections", env!("CARGO_PKG_VERSION"), config::PG_URL.redacted(), config::pool_size()));
    Status::Ok
}

fn deinit(_ctx: &Context) -> Status {
    match pool::shutdown() {
        Ok(()) => Status::Ok,
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

redis_module! {
    name: "redis_pg",
    version: 1,
    allocator: (ModuleAllocator, ModuleAllocator {}),
    data_types: [],
    init: init,
    deinit: deinit,
    commands: [
        ["pg.ping", |ctx: &Context, args: Vec<RedisString>| guard::command(|| commands::ping::run(ctx, args)), "readonly", 0, 0, 0, ""],
    ],
}

//! Who may do what. The functions of schema `redis` are not executable by PUBLIC (an
//! administrator grants them); `sync_table` and friends also require owning the table.
//!
//! What a role other than a superuser may send to Redis from SQL (`redis.command`,
//! `redis.on_commit`, the typed helpers) is decided by `pg_redis.sql_command_policy` and
//! `pg_redis.sql_allowed_commands` with `shared`'s command table: offline, so a queued command
//! is checked while Redis is down and a direct one costs no extra round trip. The names that
//! only pg_redis writes (synced tables' key prefixes, streams, channels) are read from
//! `redis.mapping` at most once per statement and cached in the backend.
//!
//! Writes to pg_redis's own catalog (mappings, the outbox) run as the extension's owner, so a
//! table owner or writer never needs the right to write the outbox directly (which would let
//! them invent changes). Nothing the caller controls runs with those rights: `to_jsonb` of
//! rows runs as the caller, only finished values cross over, the owner is found through the
//! catalog caches (not by a name the caller could shadow), the switch is a restricted
//! operation, and `search_path` is pinned to `pg_catalog` for statements that are not fully
//! qualified.

use crate::errors::raise;
use crate::gucs;
use crate::pg::{catalog, guc, role, xact};
use pg_redis_shared::command_policy::{check_command, AllowList, CommandTable, Policy, ProtectedNames, Refusal};
use pg_redis_shared::{Error, KeyTemplate};
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// Raises insufficient_privilege unless the current user owns the table.
pub fn require_owner(oid: pg_sys::Oid, display: &str) {
    if !crate::pg::compat::owns_relation(oid, role::current_user()) {
        raise(Error::NotTableOwner { table: display.to_owned() });
    }
}

/// The extension's owner: the owner of `redis.outbox`, found through the syscache and relcache
/// (cheap enough for the capture trigger, and invalidated by PostgreSQL itself).
pub fn extension_owner() -> pg_sys::Oid {
    catalog::relation_oid(c"redis", c"outbox")
        .and_then(catalog::relation_owner)
        .unwrap_or_else(|| raise(Error::ExtensionNotInstalled))
}

/// Runs `f` (fully qualified statements of our own) as the extension's owner.
pub fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    role::as_role(extension_owner(), f)
}

/// Runs `f` as the extension's owner with `search_path` pinned to `pg_catalog, pg_temp`, for
/// statements with unqualified operators and functions. Not for hot paths.
pub fn as_extension_owner_pinned<R>(f: impl FnOnce() -> R) -> R {
    as_extension_owner(|| with_catalog_search_path(f))
}

/// Runs `f` with `search_path = pg_catalog, pg_temp` (restored afterwards, also on ERROR).
pub fn with_catalog_search_path<R>(f: impl FnOnce() -> R) -> R {
    guc::with_settings([(c"search_path", c"pg_catalog, pg_temp")], f)
}

/// Refuses (insufficient_privilege, naming the command or name and what to do) a Redis command
/// line that the current user may not send from SQL; superusers may send anything.
pub fn authorize_redis_command<S: AsRef<str>>(function: &str, args: &[S]) {
    if role::is_superuser() {
        return;
    }
    let policy = gucs::sql_command_policy();
    if policy == Policy::Unrestricted {
        return;
    }
    let table =
        CommandTable::builtin().unwrap_or_else(|e| raise(Error::CommandTableUnreadable { reason: e.to_string() }));
    let allowed = allow_list();
    let targets = check_command(table, args, policy, &allowed).unwrap_or_else(|r| refuse(function, r));
    if targets.is_empty() {
        return;
    }
    protected_names().check(args, &targets).unwrap_or_else(|r| refuse(function, r));
}

fn refuse(function: &str, r: Refusal) -> ! {
    raise(Error::CommandRefused { function: function.to_owned(), message: r.to_string(), hint: r.hint() })
}

thread_local! {
    /// `pg_redis.sql_allowed_commands` as last parsed, with its text.
    static ALLOWED: RefCell<Option<(String, Rc<AllowList>)>> = const { RefCell::new(None) };
    /// The protected names, and the statement they were read in.
    static PROTECTED: RefCell<Option<(StatementStamp, Rc<ProtectedNames>)>> = const { RefCell::new(None) };
}

fn allow_list() -> Rc<AllowList> {
    let raw = gucs::sql_allowed_commands();
    ALLOWED.with_borrow_mut(|cached| match cached {
        Some((text, list)) if *text == raw => list.clone(),
        _ => {
            let list = Rc::new(AllowList::parse(&raw));
            *cached = Some((raw, list.clone()));
            list
        }
    })
}

/// Identifies one statement of one transaction at one command id: within it the mappings this
/// backend can see do not change (a later statement may see another session's `sync_table`,
/// and a write of this one bumps the command id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatementStamp {
    local_xid: u32,
    statement_start: i64,
    command_id: u32,
}

fn statement_stamp() -> StatementStamp {
    StatementStamp {
        local_xid: crate::pg::compat::local_transaction_id(),
        statement_start: xact::statement_start(),
        command_id: xact::command_id(),
    }
}

/// The names only pg_redis writes, read from `redis.mapping` at most once per statement.
fn protected_names() -> Rc<ProtectedNames> {
    let stamp = statement_stamp();
    if let Some(names) = PROTECTED.with_borrow(|c| c.as_ref().filter(|(s, _)| *s == stamp).map(|(_, n)| n.clone())) {
        return names;
    }
    let names = Rc::new(read_protected_names());
    PROTECTED.with_borrow_mut(|c| *c = Some((stamp, names.clone())));
    names
}

fn read_protected_names() -> ProtectedNames {
    // Every name is schema-qualified (the cast's type too), so the caller's search_path cannot
    // lend this statement anything of theirs while it runs as the extension's owner.
    let rows: Vec<(String, String, Option<String>, Option<String>)> = as_extension_owner(|| {
        Spi::connect(|c| {
            let table = c.select("SELECT m.table_name::pg_catalog.text, m.key_template, m.stream_key, m.channel FROM redis.mapping m WHERE m.active", None, &[])?;
            table.map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default(), r.get::<String>(3)?, r.get::<String>(4)?))).collect::<spi::SpiResult<Vec<_>>>()
        })
        .unwrap_or_report()
    });
    let mut names = ProtectedNames::default();
    for (table, template, stream, channel) in rows {
        match KeyTemplate::parse(&template) {
            Ok(t) => names.add_table(&table, t.prefix(), stream.as_deref(), channel.as_deref()),
            // Cannot happen for a mapping sync_table stored; protect the whole template text
            // rather than nothing.
            Err(_) => names.add_table(
                &table,
                template.split('{').next().unwrap_or_default(),
                stream.as_deref(),
                channel.as_deref(),
            ),
        }
    }
    names
}

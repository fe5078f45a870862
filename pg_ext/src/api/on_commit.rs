//! `redis.on_commit(...)`: a Redis command that runs only if the calling transaction commits.
//! It is queued in the same outbox as row changes, so the worker runs it durably (Redis down:
//! it runs when Redis is back) and in commit order with the changes. A rolled-back transaction
//! or savepoint runs nothing. It obeys the SQL command policy like `redis.command`.

use crate::api::privileges::{as_extension_owner, authorize_redis_command};
use crate::capture::{enqueue, wake};
use crate::errors::raise;
use pg_redis_shared::Error;
use pgrx::prelude::*;

/// Commands that would break the delivery connection (its database, protocol or transaction
/// state) or block it; they are refused when queued rather than failing later.
const REFUSED: &[&str] = &[
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SELECT",
    "AUTH",
    "HELLO",
    "RESET",
    "QUIT",
    "CLIENT",
    "MONITOR",
    "SYNC",
    "PSYNC",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
    "SHUTDOWN",
    "DEBUG",
];

#[pg_extern(volatile, parallel_unsafe)]
fn on_commit(args: VariadicArray<&str>) {
    let mut command = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a {
            Some(a) => command.push(a.to_owned()),
            None => raise(Error::NullCommandArgument { function: "redis.on_commit", position: i + 1 }),
        }
    }
    let Some(name) = command.first().map(|c| c.to_ascii_uppercase()) else {
        raise(Error::NoCommand { function: "redis.on_commit" });
    };
    let blocking_read =
        matches!(name.as_str(), "XREAD" | "XREADGROUP") && command.iter().any(|a| a.eq_ignore_ascii_case("BLOCK"));
    if REFUSED.contains(&name.as_str()) || blocking_read {
        raise(Error::NotQueueable { command: name });
    }
    // Checked now, not when delivered: the worker runs it with pg_redis's own Redis credentials,
    // and Redis may be down now (the check needs no Redis).
    authorize_redis_command("redis.on_commit", &command);
    as_extension_owner(|| enqueue::command(command));
    wake::after_commit();
}

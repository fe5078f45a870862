//! The `PG.*` commands, one file each. Shared here: how a command hands work to the pool.

pub mod ping;

use crate::blocking::{self, Completion};
use crate::pool::{self, Job, Session};
use crate::reply::to_redis;
use crate::{config, stats::STATS};
use pg_redis_shared::Error;
use redis_module::{Context, RedisError, RedisResult, RedisValue};
use std::time::Instant;

/// Blocks the client and runs `work` on a pool thread; its Completion answers the client.
/// Refuses at once (`BUSY`) when the queue is full, and inside MULTI or scripts, where a
/// client cannot wait, with a clear error.
pub fn on_pool(ctx: &Context, command: &str, work: impl FnOnce(&mut Session) -> Completion + Send + 'static) -> RedisResult {
    if !blocking::may_block(ctx) {
        return Err(RedisError::String(format!("ERR {command} needs PostgreSQL and cannot wait inside MULTI, EXEC or a script; call it on its own")));
    }
    if pool::queue_depth() >= config::queue_max() {
        STATS.busy.inc();
        return Err(to_redis(&Error::Busy { what: "the PostgreSQL request queue is full (redis_pg.queue_max); retry later".into() }));
    }
    let blocked = blocking::block(ctx)?;
    let job = Job {
        deadline: Instant::now() + config::query_timeout(),
        work: Box::new(move |session| {
            let completion = match session {
                Ok(s) => work(s),
                Err(e) => Completion::error(to_redis(&e)),
            };
            blocked.finish(completion);
        }),
    };
    if let Err((e, job)) = pool::submit(job) {
        STATS.busy.inc();
        (job.work)(Err(e));
    }
    Ok(RedisValue::NoReply)
}

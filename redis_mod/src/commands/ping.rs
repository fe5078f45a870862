//! `PG.PING`: proves the module reaches PostgreSQL; answers with the server version.

use super::on_pool;
use crate::blocking::Completion;
use crate::reply::to_redis;
use crate::stats::STATS;
use redis_module::{Context, RedisResult, RedisString, RedisValue};

pub fn run(ctx: &Context, _args: Vec<RedisString>) -> RedisResult {
    on_pool(ctx, "PG.PING", |session| {
        STATS.pg_queries.inc();
        let version = session
            .query("SELECT current_setting('server_version')", &[])
            .map(|rows| rows.first().map(|r| r.get::<_, String>(0)).unwrap_or_default());
        match version {
            Ok(v) => Completion::reply(move |_| Ok(RedisValue::BulkString(format!("PostgreSQL {v}")))),
            Err(e) => {
                STATS.pg_errors.inc();
                Completion::error(to_redis(&e))
            }
        }
    })
}

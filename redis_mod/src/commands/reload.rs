//! `PG.RELOAD`: reads the table mappings from PostgreSQL now; answers how many there are.

use super::on_pool;
use crate::blocking::Completion;
use crate::mappings;
use crate::reply::to_redis;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

pub fn run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 1 {
        return Err(RedisError::WrongArity);
    }
    on_pool(ctx, "PG.RELOAD", |session| match mappings::load_with(session) {
        Ok(n) => Completion::reply(move |_| Ok(RedisValue::Integer(n as i64))),
        Err(e) => Completion::error(to_redis(&e)),
    })
}

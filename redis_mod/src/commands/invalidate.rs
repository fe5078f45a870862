//! `PG.INVALIDATE key [key ...]`: drops cached entries (the next read goes to PostgreSQL) and
//! revokes any fill in flight for them. Returns how many keys existed.

use crate::cache;
use redis_module::{
    CallOptionsBuilder, CallReply, CallResult, Context, RedisError, RedisResult, RedisString, RedisValue,
};

pub fn run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let [_, named @ ..] = args.as_slice() else {
        return Err(RedisError::WrongArity);
    };
    if named.is_empty() {
        return Err(RedisError::WrongArity);
    }
    super::check_db(ctx)?;
    for k in named {
        cache::revoke_unconditionally(k.as_slice());
    }
    let keys: Vec<&[u8]> = named.iter().map(|k| k.as_slice()).collect();
    let opts = CallOptionsBuilder::new().replicate().errors_as_replies().build();
    let r: CallResult = ctx.call_ext("DEL", &opts, keys.as_slice());
    match r {
        Ok(CallReply::I64(n)) => Ok(RedisValue::Integer(n.to_i64())),
        Ok(_) => Ok(RedisValue::Integer(0)),
        Err(e) => Err(RedisError::String(e.to_string())),
    }
}

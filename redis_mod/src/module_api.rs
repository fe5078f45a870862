//! The one place that calls Redis's C module API directly (the `RedisModule_*` function
//! pointers of `redis_module::raw`), for what the `redis_module` crate does not wrap or wraps
//! too slowly for the PG.GET fast path. Each wrapper is thin: it reads the pointer, calls it,
//! and turns a server that lacks the call into a plain answer (`None`, `false`, nothing done).
//!
//! A `&Context` here is always one Redis gave (a command, callback or load context), as in
//! `redis_module` itself; wrappers that need more than that from their caller are `unsafe fn`
//! and say what in `# Safety`.

use redis_module::{raw, Context};
use std::os::raw::c_int;

/// The database the calling client selected; `None` if the server lacks the call.
#[inline]
pub fn selected_db(ctx: &Context) -> Option<i64> {
    // SAFETY: reading the calling client's selected database; `ctx` is a context Redis gave.
    unsafe { raw::RedisModule_GetSelectedDb.map(|f| f(ctx.ctx) as i64) }
}

/// What [`reply_with_string_at`] found at a key.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum StringAt {
    /// A string: it is the reply.
    Replied,
    /// No such key: nothing was replied.
    Absent,
    /// Another type, a string the server would not expose, or a server without one of the
    /// calls: nothing was replied.
    Other,
}

/// Replies with the string at `key` straight from the keyspace: one lookup, one copy (into
/// the reply), no `RedisString` and no reference counting. Nothing is replied unless it
/// returns [`StringAt::Replied`].
///
/// # Safety
/// `ctx` and `key` come from Redis for the running command, on the main thread.
#[inline]
pub unsafe fn reply_with_string_at(ctx: *mut raw::RedisModuleCtx, key: *mut raw::RedisModuleString) -> StringAt {
    // SAFETY: the raw calls follow the module API contract: open, read, reply, close; `ctx` and
    // `key` are valid for the running command (this function's contract).
    unsafe {
        // All five or none: a key once opened is always closed.
        let (Some(open), Some(key_type), Some(dma), Some(reply), Some(close)) = (
            raw::RedisModule_OpenKey,
            raw::RedisModule_KeyType,
            raw::RedisModule_StringDMA,
            raw::RedisModule_ReplyWithStringBuffer,
            raw::RedisModule_CloseKey,
        ) else {
            return StringAt::Other;
        };
        let k = open(ctx, key, raw::REDISMODULE_READ as c_int);
        if k.is_null() {
            return StringAt::Absent;
        }
        let kind = key_type(k);
        let found = if kind == raw::REDISMODULE_KEYTYPE_STRING as c_int {
            let mut len: usize = 0;
            let p = dma(k, &mut len, raw::REDISMODULE_READ as c_int);
            if p.is_null() {
                StringAt::Other
            } else {
                reply(ctx, p, len);
                StringAt::Replied
            }
        } else if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            StringAt::Absent
        } else {
            StringAt::Other
        };
        close(k);
        found
    }
}

//! The one place that calls Redis's C module API directly (the `RedisModule_*` function
//! pointers of `redis_module::raw`), for what the `redis_module` crate does not wrap or wraps
//! too slowly for the PG.GET fast path. Each wrapper is thin: it reads the pointer, calls it,
//! and turns a server that lacks the call into a plain answer (`None`, `false`, nothing done).
//!
//! A `&Context` here is always one Redis gave (a command, callback or load context), as in
//! `redis_module` itself; wrappers that need more than that from their caller are `unsafe fn`
//! and say what in `# Safety`.

use redis_module::{raw, Context};
use std::os::raw::{c_int, c_void};

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

/// The reply callback of a blocked client (Redis runs it on the main thread once unblocked).
pub type ReplyCallback =
    unsafe extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// Frees a blocked client's private data (Redis runs it after the reply callback, or when the
/// client left before it).
pub type FreeCallback = unsafe extern "C" fn(*mut raw::RedisModuleCtx, *mut c_void);

/// Blocks the calling client with no Redis timeout (the caller keeps its own deadlines) until
/// [`unblock_client`]. `None` if the server cannot block module clients; a null handle if it
/// refused.
///
/// # Safety
/// `ctx` is the context of the running command. Redis later runs `on_reply` then `on_free` on
/// the main thread with the private data given to [`unblock_client`]: both must accept it.
#[inline]
pub unsafe fn block_client(
    ctx: &Context,
    on_reply: ReplyCallback,
    on_free: FreeCallback,
) -> Option<*mut raw::RedisModuleBlockedClient> {
    // SAFETY: a command's context (this function's contract); the callbacks accept what Redis
    // passes them (likewise).
    unsafe { raw::RedisModule_BlockClient.map(|block| block(ctx.ctx, Some(on_reply), None, Some(on_free), 0)) }
}

/// Unblocks a client; Redis hands `private_data` to its reply and free callbacks on the main
/// thread. May be called from any thread. Does nothing if the server lacks the call.
///
/// # Safety
/// `bc` came from [`block_client`] and is unblocked exactly once; `private_data` is what the
/// callbacks given to [`block_client`] expect.
#[inline]
pub unsafe fn unblock_client(bc: *mut raw::RedisModuleBlockedClient, private_data: *mut c_void) {
    // SAFETY: this function's contract: a live handle, unblocked once, with data its callbacks
    // expect.
    unsafe {
        if let Some(unblock) = raw::RedisModule_UnblockClient {
            unblock(bc, private_data);
        }
    }
}

/// In a blocked client's reply callback, the private data given to [`unblock_client`]; null
/// if there is none or the server lacks the call.
#[inline]
pub fn blocked_client_private_data(ctx: &Context) -> *mut c_void {
    // SAFETY: reads a field of a context Redis gave; the pointer is returned, not followed.
    unsafe { raw::RedisModule_GetBlockedClientPrivateData.map(|f| f(ctx.ctx)) }.unwrap_or(std::ptr::null_mut())
}

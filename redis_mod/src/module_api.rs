//! The one place that calls Redis's C module API directly (the `RedisModule_*` function
//! pointers of `redis_module::raw`), for what the `redis_module` crate does not wrap or wraps
//! too slowly for the PG.GET fast path. Each wrapper is thin: it reads the pointer, calls it,
//! and turns a server that lacks the call into a plain answer (`None`, `false`, nothing done).
//!
//! A `&Context` here is always one Redis gave (a command, callback or load context), as in
//! `redis_module` itself; wrappers that need more than that from their caller are `unsafe fn`
//! and say what in `# Safety`.

use redis_module::{raw, Context};
use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_int, c_void};
use std::ptr::NonNull;

const OK: c_int = raw::REDISMODULE_OK as c_int;

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

/// A command handler that takes Redis's raw arguments.
pub type RawCommand = extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int;

/// Creates a command whose handler takes Redis's raw arguments. Meant for OnLoad (newer
/// servers refuse it later). False if Redis refused or lacks the call.
#[inline]
pub fn create_command(
    ctx: &Context,
    name: &CStr,
    handler: RawCommand,
    flags: &CStr,
    first: i32,
    last: i32,
    step: i32,
) -> bool {
    // SAFETY: a context Redis gave (the load context); Redis copies the strings; the handler is
    // a safe function, sound for whatever arguments Redis passes.
    unsafe {
        raw::RedisModule_CreateCommand.is_some_and(|create| {
            create(ctx.ctx, name.as_ptr(), Some(handler), flags.as_ptr(), first, last, step) == OK
        })
    }
}

/// Adds a module ACL category (OnLoad only; Redis refuses it later). `None` if the server has
/// no module categories (before 7.4), else whether it was added.
#[inline]
pub fn add_acl_category(ctx: &Context, name: &CStr) -> Option<bool> {
    // SAFETY: API pointer read once; a context Redis gave (the load context); Redis copies the
    // name.
    unsafe { raw::RedisModule_AddACLCategory.map(|add| add(ctx.ctx, name.as_ptr()) == OK) }
}

/// Whether the server can set command metadata (Redis 7.0+): [`get_command`] and
/// [`set_command_info`] are both there.
#[inline]
pub fn has_command_info() -> bool {
    // SAFETY: reading function pointers the module API fills in at load.
    let (get, set) = unsafe { (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo) };
    get.is_some() && set.is_some()
}

/// A command of this module, for setting its metadata while the module loads.
pub struct Command<'ctx> {
    cmd: NonNull<raw::RedisModuleCommand>,
    _ctx: PhantomData<&'ctx Context>,
}

/// This module's command `name`; `None` if there is no such command of this module or the
/// server lacks the call.
#[inline]
pub fn get_command<'ctx>(ctx: &'ctx Context, name: &CStr) -> Option<Command<'ctx>> {
    // SAFETY: a context Redis gave; Redis only reads the name.
    let cmd = unsafe { raw::RedisModule_GetCommand.map(|get| get(ctx.ctx, name.as_ptr())) }?;
    NonNull::new(cmd).map(|cmd| Command { cmd, _ctx: PhantomData })
}

/// Sets a command's summary, arity, key specs...; false if Redis refused or lacks the call.
///
/// # Safety
/// Every pointer in `info` is valid for the call (Redis copies what they point to).
#[inline]
pub unsafe fn set_command_info(cmd: &Command<'_>, info: &raw::RedisModuleCommandInfo) -> bool {
    // SAFETY: `cmd` came from get_command; `info`'s pointers are valid (this function's contract).
    unsafe { raw::RedisModule_SetCommandInfo.is_some_and(|set| set(cmd.cmd.as_ptr(), info) == OK) }
}

/// Sets a command's ACL categories (OnLoad only; Redis refuses it later). Does nothing if the
/// server lacks the call (before 7.2).
#[inline]
pub fn set_command_acl_categories(cmd: &Command<'_>, categories: &CStr) {
    // SAFETY: `cmd` came from get_command; Redis parses the string and keeps nothing of it.
    unsafe {
        if let Some(set) = raw::RedisModule_SetCommandACLCategories {
            set(cmd.cmd.as_ptr(), categories.as_ptr());
        }
    }
}

/// Loads the values the config file gives for the configurations registered so far. Meant for
/// OnLoad, after registering (newer servers refuse it later); does nothing if the server lacks
/// the call.
#[inline]
pub fn load_configs(ctx: &Context) {
    // SAFETY: a context Redis gave (the load context).
    unsafe {
        if let Some(load) = raw::RedisModule_LoadConfigs {
            load(ctx.ctx);
        }
    }
}

/// Whether the Redis API is there to log to (not in unit tests, which run outside Redis).
#[inline]
pub fn can_log() -> bool {
    // SAFETY: reading a function pointer the module API fills in at load.
    let log = unsafe { raw::RedisModule_Log };
    log.is_some()
}

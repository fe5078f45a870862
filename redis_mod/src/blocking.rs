//! Blocking a client while a pool thread works for it. Every blocked client has a deadline
//! (`query_timeout_ms`): Redis answers `-TIMEOUT` itself when it passes, whatever the thread is
//! doing, and every path that forgets to answer still answers (an error), never a hang.

use crate::{config, guard};
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult};
use std::os::raw::{c_int, c_void};

/// Work done on the main thread (the GIL held) when a thread finished: `effect` runs even if
/// the client has gone or timed out (a cache fill), `reply` only for a waiting client.
pub struct Completion {
    pub effect: Option<Box<dyn FnOnce(&Context) + Send>>,
    pub reply: Box<dyn FnOnce(&Context) -> RedisResult + Send>,
}

impl Completion {
    pub fn reply(reply: impl FnOnce(&Context) -> RedisResult + Send + 'static) -> Self {
        Completion { effect: None, reply: Box::new(reply) }
    }

    pub fn error(e: RedisError) -> Self {
        Completion::reply(move |_| Err(e))
    }
}

/// A blocked client, owned by whichever thread will answer it.
pub struct Blocked {
    bc: *mut raw::RedisModuleBlockedClient,
}

// SAFETY: a blocked-client handle is meant to be passed to another thread and unblocked there.
unsafe impl Send for Blocked {}

/// Whether the calling client may block (not inside MULTI, a script or a module call).
pub fn may_block(ctx: &Context) -> bool {
    !ctx.get_flags().contains(ContextFlags::DENY_BLOCKING)
}

/// Blocks the calling client until [`Blocked::finish`] or the query timeout.
pub fn block(ctx: &Context) -> Result<Blocked, RedisError> {
    let timeout_ms = config::query_timeout().as_millis() as i64;
    // SAFETY: called from a command handler with its context; the callbacks are ours.
    let bc = unsafe {
        let Some(block) = raw::RedisModule_BlockClient else { return Err(RedisError::Str("ERR this Redis cannot block module clients")) };
        block(ctx.ctx, Some(on_reply), Some(on_timeout), Some(on_free), timeout_ms)
    };
    if bc.is_null() {
        return Err(RedisError::Str("ERR redis_pg could not block the client"));
    }
    Ok(Blocked { bc })
}

impl Blocked {
    /// Hands the outcome to the main thread and unblocks the client.
    pub fn finish(mut self, completion: Completion) {
        let bc = std::mem::replace(&mut self.bc, std::ptr::null_mut());
        unblock(bc, completion);
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if !self.bc.is_null() {
            let bc = std::mem::replace(&mut self.bc, std::ptr::null_mut());
            unblock(bc, Completion::error(RedisError::Str("ERR redis_pg internal error: the request was dropped without an answer")));
        }
    }
}

fn unblock(bc: *mut raw::RedisModuleBlockedClient, completion: Completion) {
    let pd = Box::into_raw(Box::new(completion)) as *mut c_void;
    // SAFETY: `bc` came from RedisModule_BlockClient and is unblocked exactly once; Redis hands
    // `pd` back to on_reply / on_free on the main thread, where it is freed once.
    unsafe {
        if let Some(unblock) = raw::RedisModule_UnblockClient {
            unblock(bc, pd);
        }
    }
}

unsafe extern "C" fn on_reply(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let ctx = Context::new(ctx);
    // SAFETY: the private data is the Completion boxed in `unblock`; on_free frees it later.
    let pd = unsafe { raw::RedisModule_GetBlockedClientPrivateData.map(|f| f(ctx.ctx)) }.unwrap_or(std::ptr::null_mut()) as *mut Completion;
    let result = if pd.is_null() {
        Err(RedisError::Str("ERR redis_pg internal error: no result"))
    } else {
        // SAFETY: see above; nothing else touches it while this callback runs.
        let completion = unsafe { &mut *pd };
        let effect = completion.effect.take();
        let reply = std::mem::replace(&mut completion.reply, Box::new(|_| Err(RedisError::Str("ERR redis_pg internal error: answered twice"))));
        guard::command(|| {
            if let Some(effect) = effect {
                effect(&ctx);
            }
            reply(&ctx)
        })
    };
    ctx.reply(result) as c_int
}

unsafe extern "C" fn on_timeout(ctx: *mut raw::RedisModuleCtx, _argv: *mut *mut raw::RedisModuleString, _argc: c_int) -> c_int {
    let ctx = Context::new(ctx);
    crate::stats::STATS.timeouts.inc();
    let msg = format!("TIMEOUT PostgreSQL did not answer within {} ms (redis_pg.query_timeout_ms)", config::query_timeout().as_millis());
    ctx.reply_error_string(&msg) as c_int
}

unsafe extern "C" fn on_free(ctx: *mut raw::RedisModuleCtx, pd: *mut c_void) {
    if pd.is_null() {
        return;
    }
    // SAFETY: `pd` is the Completion boxed in `unblock`, freed only here.
    let completion = unsafe { Box::from_raw(pd as *mut Completion) };
    if let (Some(effect), false) = (completion.effect, ctx.is_null()) {
        // The client timed out or left before the answer: still apply the effect (a fill).
        let ctx = Context::new(ctx);
        guard::callback("a late fill", || effect(&ctx));
    }
}

//! Blocking a client while a pool thread works for it. Every blocked client has a deadline
//! (`query_timeout_ms`) and gets exactly one answer: the result, or `-TIMEOUT` from the deadline
//! thread, whichever comes first; a path that forgets to answer still answers (an error).
//!
//! Deadlines are ours, not Redis's: Redis 7.0 loses the reply of a blocked client whose
//! RM_UnblockClient arrives in the same event-loop turn as its own timeout, so clients are
//! blocked without a Redis timeout and this module's deadline thread unblocks them instead.

use crate::{config, guard, module_api, stats::STATS};
use redis_module::{raw, Context, ContextFlags, RedisError, RedisResult};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Work done on the main thread (the GIL held) when a thread finished: `effect` (a cache
/// fill) then `reply` for a client still waiting; `abandon` instead when the client timed out
/// or left (nothing may touch the keyspace then).
pub struct Completion {
    pub effect: Option<Effect>,
    pub abandon: Option<Box<dyn FnOnce() + Send>>,
    pub reply: Reply,
}

/// Changes the keyspace on the main thread (a cache fill).
pub type Effect = Box<dyn FnOnce(&Context) + Send>;

/// Builds the reply of a finished command on the main thread.
pub type Reply = Box<dyn FnOnce(&Context) -> RedisResult + Send>;

impl Completion {
    pub fn reply(reply: impl FnOnce(&Context) -> RedisResult + Send + 'static) -> Self {
        Completion { effect: None, abandon: None, reply: Box::new(reply) }
    }

    pub fn error(e: RedisError) -> Self {
        Completion::reply(move |_| Err(e))
    }

    fn abandon(self) {
        if let Some(a) = self.abandon {
            guard::callback("an abandoned request", a);
        }
    }
}

struct Handle(*mut raw::RedisModuleBlockedClient);
// SAFETY: a blocked-client handle is meant to be unblocked from another thread.
unsafe impl Send for Handle {}

/// The handle, taken by whoever answers first (the result or the deadline).
struct Slot {
    handle: Mutex<Option<Handle>>,
}

impl Slot {
    fn take(&self) -> Option<Handle> {
        self.handle.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// A blocked client, owned by whichever thread will answer it.
pub struct Blocked {
    slot: Arc<Slot>,
}

/// Whether the calling client may block (not inside MULTI, a script or a module call).
pub fn may_block(ctx: &Context) -> bool {
    !ctx.get_flags().contains(ContextFlags::DENY_BLOCKING)
}

/// Blocks the calling client until [`Blocked::finish`] or its deadline.
pub fn block(ctx: &Context) -> Result<Blocked, RedisError> {
    // SAFETY: called from a command handler with its context; the callbacks are ours, and take
    // the Completion `unblock` hands over.
    let Some(bc) = (unsafe { module_api::block_client(ctx, on_reply, on_free) }) else {
        return Err(RedisError::Str("ERR this Redis cannot block module clients"));
    };
    if bc.is_null() {
        return Err(RedisError::Str("ERR redis_pg could not block the client"));
    }
    let slot = Arc::new(Slot { handle: Mutex::new(Some(Handle(bc))) });
    watch(Instant::now() + config::query_timeout(), &slot);
    Ok(Blocked { slot })
}

impl Blocked {
    /// Hands the outcome to the main thread and unblocks the client; if its deadline already
    /// answered it, the completion is abandoned instead.
    pub fn finish(self, completion: Completion) {
        match self.slot.take() {
            Some(h) => unblock(h, completion),
            None => completion.abandon(),
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if let Some(h) = self.slot.take() {
            unblock(
                h,
                Completion::error(RedisError::Str(
                    "ERR redis_pg internal error: the request was dropped without an answer",
                )),
            );
        }
    }
}

fn unblock(h: Handle, completion: Completion) {
    let pd = Box::into_raw(Box::new(completion)) as *mut c_void;
    // SAFETY: `h` came from RedisModule_BlockClient and is unblocked exactly once (the slot hands
    // it out once); Redis passes `pd` back to on_reply / on_free on the main thread.
    unsafe { module_api::unblock_client(h.0, pd) };
}

unsafe extern "C" fn on_reply(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let ctx = Context::new(ctx);
    let pd = module_api::blocked_client_private_data(&ctx) as *mut Completion;
    let result = if pd.is_null() {
        Err(RedisError::Str("ERR redis_pg internal error: no result"))
    } else {
        // SAFETY: the private data is the Completion boxed in `unblock`; on_free frees it later,
        // and nothing else touches it while this callback runs.
        let completion = unsafe { &mut *pd };
        let effect = completion.effect.take();
        completion.abandon = None;
        let reply = std::mem::replace(
            &mut completion.reply,
            Box::new(|_| Err(RedisError::Str("ERR redis_pg internal error: answered twice"))),
        );
        guard::command(|| {
            if let Some(effect) = effect {
                effect(&ctx);
            }
            reply(&ctx)
        })
    };
    ctx.reply(result) as c_int
}

unsafe extern "C" fn on_free(_ctx: *mut raw::RedisModuleCtx, pd: *mut c_void) {
    if pd.is_null() {
        return;
    }
    // SAFETY: `pd` is the Completion boxed in `unblock`, freed only here.
    let completion = unsafe { Box::from_raw(pd as *mut Completion) };
    // Still holding its abandon step: the client left before the answer was delivered.
    completion.abandon();
}

/// Deadlines of blocked clients, earliest first.
struct Deadlines {
    heap: Mutex<BinaryHeap<Reverse<(Instant, u64, WeakSlot)>>>,
    changed: Condvar,
}

/// A weak slot, ordered only by the fields before it in the tuple.
struct WeakSlot(Weak<Slot>);
impl PartialEq for WeakSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for WeakSlot {}
impl PartialOrd for WeakSlot {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for WeakSlot {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

static DEADLINES: Deadlines = Deadlines { heap: Mutex::new(BinaryHeap::new()), changed: Condvar::new() };
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static THREAD: Mutex<Option<JoinHandle<()>>> = Mutex::new(None);

fn watch(deadline: Instant, slot: &Arc<Slot>) {
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut heap = DEADLINES.heap.lock().unwrap_or_else(|e| e.into_inner());
    let earliest = heap.peek().map(|Reverse((d, ..))| *d);
    heap.push(Reverse((deadline, seq, WeakSlot(Arc::downgrade(slot)))));
    drop(heap);
    if earliest.is_none_or(|e| deadline < e) {
        DEADLINES.changed.notify_one();
    }
}

pub fn start() {
    STOP.store(false, Ordering::Release);
    match std::thread::Builder::new()
        .name("redis_pg-deadlines".into())
        .spawn(|| guard::thread_body("the deadline thread", run_deadlines))
    {
        Ok(t) => *THREAD.lock().unwrap_or_else(|e| e.into_inner()) = Some(t),
        Err(e) => guard::log_warning(&format!("cannot start the deadline thread: {e}")),
    }
}

pub fn stop() {
    {
        // Under the heap lock, so the thread cannot check the flag and then sleep through it.
        let _heap = DEADLINES.heap.lock().unwrap_or_else(|e| e.into_inner());
        STOP.store(true, Ordering::Release);
        DEADLINES.changed.notify_all();
    }
    if let Some(t) = THREAD.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = t.join();
    }
}

fn run_deadlines() {
    let mut heap = DEADLINES.heap.lock().unwrap_or_else(|e| e.into_inner());
    while !STOP.load(Ordering::Acquire) {
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(Reverse((d, ..))) = heap.peek() {
            if *d > now {
                break;
            }
            if let Some(Reverse((_, _, slot))) = heap.pop() {
                expired.push(slot);
            }
        }
        if !expired.is_empty() {
            drop(heap);
            for slot in expired {
                if let Some(h) = slot.0.upgrade().and_then(|s| s.take()) {
                    STATS.timeouts.inc();
                    let msg = format!(
                        "TIMEOUT PostgreSQL did not answer within {} ms (redis_pg.query_timeout_ms)",
                        config::query_timeout().as_millis()
                    );
                    unblock(h, Completion::error(RedisError::String(msg)));
                }
            }
            heap = DEADLINES.heap.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let wait =
            heap.peek().map(|Reverse((d, ..))| d.saturating_duration_since(now)).unwrap_or(Duration::from_secs(1));
        heap = DEADLINES.changed.wait_timeout(heap, wait).map(|(g, _)| g).unwrap_or_else(|e| e.into_inner().0);
    }
}

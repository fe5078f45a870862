//! `PG.GET key`: the cached row at native speed; on a miss, the row read through from
//! PostgreSQL on a pool thread (one query for all concurrent misses of the key), stored under a
//! lease, and returned. A missing row answers nil and is remembered for `negative_ttl`.

use super::{blame_key, block_for_pool, cached, check_db, check_key_values, encoded_reply, key_text};
use crate::blocking::{Blocked, Completion};
use crate::cache::{self, Fill, Miss};
use crate::module_api::{self, StringAt};
use crate::pool::{self, Job, Session};
use crate::reply::to_redis;
use crate::{config, mappings, stats::STATS};
use pg_redis_shared::{Error, TableMapping};
use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};
use std::os::raw::c_int;
use std::sync::Arc;
use std::time::Instant;

/// The entry point Redis calls. A hit on a string key is answered here with the raw API
/// ([`module_api::reply_with_string_at`]): no argument vector, no reference counting, one
/// lookup, one copy into the reply. Everything else (hash values, misses, errors) takes [`run`].
pub extern "C" fn command(ctx: *mut raw::RedisModuleCtx, argv: *mut *mut raw::RedisModuleString, argc: c_int) -> c_int {
    let fast = std::panic::catch_unwind(|| {
        if argc == 2 {
            // SAFETY: Redis passes argc valid strings in argv, and argc is 2.
            unsafe { serve_string_hit(ctx, *argv.add(1)) }
        } else {
            Fast::NotTried
        }
    })
    .unwrap_or(Fast::NotTried);
    if fast == Fast::Served {
        return raw::REDISMODULE_OK as c_int;
    }
    let context = Context::new(ctx);
    let args = redis_module::decode_args(ctx, argv, argc);
    let result = crate::guard::command(|| run(&context, args, fast == Fast::Absent));
    context.reply(result) as c_int
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Fast {
    Served,
    /// The key is mapped and does not exist: a miss.
    Absent,
    NotTried,
}

/// Replies with the string at `key` if the key is mapped and holds a string.
///
/// # Safety
/// `ctx` and `key` come from Redis for the running command.
unsafe fn serve_string_hit(ctx: *mut raw::RedisModuleCtx, key: *mut raw::RedisModuleString) -> Fast {
    if mappings::owns(RedisString::string_as_slice(key)) != Some(true) {
        return Fast::NotTried;
    }
    if module_api::selected_db(&Context::new(ctx)) != Some(config::db()) {
        return Fast::NotTried;
    }
    // SAFETY: `ctx` and `key` come from Redis for the running command (this function's contract).
    match unsafe { module_api::reply_with_string_at(ctx, key) } {
        StringAt::Replied => {
            STATS.hits.inc();
            Fast::Served
        }
        StringAt::Absent => Fast::Absent,
        StringAt::Other => Fast::NotTried,
    }
}

/// PG.GET beyond the string-hit fast path: hash hits, misses, errors. `absent` says the fast
/// path already found no key (no second lookup).
pub fn run(ctx: &Context, args: Vec<RedisString>, absent: bool) -> RedisResult {
    let [_, key] = args.as_slice() else {
        return Err(RedisError::WrongArity);
    };
    check_db(ctx)?;
    let set = match mappings::current() {
        Ok(set) => set,
        // Without mappings (PostgreSQL unreachable since start), what is cached is still served.
        Err(e) => {
            return match if absent { None } else { cached(ctx, key)? } {
                Some(c) => {
                    STATS.hits.inc();
                    Ok(c.reply())
                }
                None => Err(to_redis(&e)),
            }
        }
    };
    let text = key_text(key.as_slice())?;
    if set.owner_of(key.as_slice()).is_none() {
        return Err(to_redis(&Error::UnmappedKey { key: text.to_owned() }));
    }
    if !absent {
        if let Some(c) = cached(ctx, key)? {
            STATS.hits.inc();
            return Ok(c.reply());
        }
    }
    STATS.misses.inc();
    if cache::negative_hit(key.as_slice()) {
        STATS.negative_hits.inc();
        return Ok(RedisValue::Null);
    }
    if !config::READ_THROUGH.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(RedisValue::Null);
    }
    let (mapping, values) = set.resolve(text).map_err(|e| to_redis(&e))?;
    check_key_values(mapping, text, &values).map_err(|e| to_redis(&e))?;
    let mapping = Arc::new(mapping.clone());
    let mut blocked = block_for_pool(ctx, "PG.GET")?;
    loop {
        match cache::begin_miss(key.as_slice()) {
            Miss::Join(token) => match cache::wait_for(key.as_slice(), token, blocked) {
                Ok(()) => break,
                // That read finished in between: try again (this time leading, most likely).
                Err(b) => blocked = b,
            },
            Miss::Lead(token) => {
                lead(blocked, mapping, key.as_slice().to_vec(), values, token);
                break;
            }
        }
    }
    Ok(RedisValue::NoReply)
}

/// Queries the row for `key` and answers every client waiting for it. Whatever happens (an
/// error, a panic, the deadline), the read ends: its waiters are answered and its lease freed.
fn lead(blocked: Blocked, mapping: Arc<TableMapping>, key: Vec<u8>, values: Vec<String>, token: u64) {
    let started = Instant::now();
    let read = ReadGuard { key: key.clone(), token, leader: Some(blocked) };
    let job = Job {
        deadline: started + config::query_timeout(),
        work: Box::new(move |session| {
            let mut read = read;
            let result = session.and_then(|s| read_row(s, &mapping, &read.key, &values));
            let mut waiters = cache::end_flight(&read.key, read.token);
            waiters.extend(read.leader.take());
            match result {
                Ok(value) => {
                    let fill = Fill::new(
                        std::mem::take(&mut read.key),
                        read.token,
                        value,
                        cache::ttl_for(mapping.ttl),
                        started,
                        waiters.len(),
                    );
                    read.token = 0;
                    for w in waiters {
                        let (f1, f2, f3) = (fill.clone(), fill.clone(), fill.clone());
                        w.finish(Completion {
                            effect: Some(Box::new(move |ctx| f1.apply(ctx))),
                            abandon: Some(Box::new(move || f2.abandon())),
                            reply: Box::new(move |_| Ok(encoded_reply(f3.value.as_ref()))),
                        });
                    }
                }
                Err(e) => {
                    for w in waiters {
                        w.finish(Completion::error(to_redis(&e)));
                    }
                }
            }
        }),
    };
    if let Err((e, job)) = pool::submit(job) {
        STATS.busy.inc();
        (job.work)(Err(e));
    }
}

/// A read in progress; dropped before it handed its row over (error, panic), it ends the
/// flight, answers its waiters with an error and frees the lease.
struct ReadGuard {
    key: Vec<u8>,
    /// 0 once the row was handed to a Fill.
    token: u64,
    leader: Option<Blocked>,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        if self.token == 0 {
            return;
        }
        let mut waiters = cache::end_flight(&self.key, self.token);
        waiters.extend(self.leader.take());
        for w in waiters {
            w.finish(Completion::error(RedisError::Str("ERR redis_pg internal error while reading the row")));
        }
        cache::abandon_lease(&self.key, self.token);
    }
}

/// The row of `key` encoded, with the key the row itself renders to.
fn read_row(
    session: &mut Session,
    mapping: &TableMapping,
    key: &[u8],
    values: &[String],
) -> Result<Option<(String, pg_redis_shared::Encoded)>, Error> {
    STATS.pg_queries.inc();
    let sql = pg_redis_shared::sql::row_by_key(mapping);
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
        values.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect();
    let key_str = String::from_utf8_lossy(key);
    let rows = session.query(&sql, &params).map_err(|e| {
        STATS.pg_errors.inc();
        super::renamed_table(&e);
        blame_key(e, mapping, &key_str)
    })?;
    match rows.first() {
        None => Ok(None),
        Some(r) => {
            let text: &str = r.get(0);
            mapping.encode_text(text).map(Some)
        }
    }
}

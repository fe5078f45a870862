//! `PG.GET key`: the cached row at native speed; on a miss, the row read through from
//! PostgreSQL on a pool thread (one query for all concurrent misses of the key), stored under a
//! lease, and returned. A missing row answers nil and is remembered for `negative_ttl`.

use super::{block_for_pool, blame_key, cached, check_key_values, encoded_reply, key_text};
use crate::blocking::{Blocked, Completion};
use crate::cache::{self, Fill, Miss};
use crate::pool::{self, Job, Session};
use crate::reply::to_redis;
use crate::{config, mappings, stats::STATS};
use pg_redis_shared::{Error, TableMapping};
use redis_module::{raw, Context, RedisError, RedisResult, RedisString, RedisValue};
use std::sync::Arc;
use std::time::Instant;

pub fn run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 2 {
        return Err(RedisError::WrongArity);
    }
    let key = &args[1];
    let set = mappings::current().map_err(|e| to_redis(&e))?;
    let text = key_text(key.as_slice())?;
    if set.owner_of(key.as_slice()).is_none() {
        return Err(to_redis(&Error::UnmappedKey { key: text.to_owned() }));
    }
    if let Some(hit) = hit(ctx, key)? {
        return Ok(hit);
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
    let blocked = block_for_pool(ctx, "PG.GET")?;
    match cache::begin_miss(key.as_slice()) {
        Miss::Join => {
            if let Err(blocked) = cache::wait_for(key.as_slice(), blocked) {
                // The read finished in between: lead a new one.
                let token = cache::take_lease(key.as_slice());
                lead(blocked, mapping, key.as_slice().to_vec(), values, token);
            }
        }
        Miss::Lead(token) => lead(blocked, mapping, key.as_slice().to_vec(), values, token),
    }
    Ok(RedisValue::NoReply)
}

/// The hit path: answered straight from the keyspace.
fn hit(ctx: &Context, key: &RedisString) -> Result<Option<RedisValue>, RedisError> {
    let k = ctx.open_key(key);
    if k.key_type() == redis_module::KeyType::String {
        // Reply from Redis's own buffer, without an intermediate copy.
        if let Some(bytes) = k.read()? {
            // SAFETY: the buffer stays valid while the key is open; Redis copies it into the reply.
            unsafe {
                if let Some(reply) = raw::RedisModule_ReplyWithStringBuffer {
                    reply(ctx.ctx, bytes.as_ptr().cast(), bytes.len());
                    STATS.hits.inc();
                    return Ok(Some(RedisValue::NoReply));
                }
            }
        }
    }
    drop(k);
    let v = cached(ctx, key)?;
    if v.is_some() {
        STATS.hits.inc();
    }
    Ok(v.map(|c| c.reply()))
}

/// Queries the row for `key` and answers every client waiting for it.
fn lead(blocked: Blocked, mapping: Arc<TableMapping>, key: Vec<u8>, values: Vec<String>, token: u64) {
    let started = Instant::now();
    let job = Job {
        deadline: started + config::query_timeout(),
        work: Box::new(move |session| {
            let result = session.and_then(|s| read_row(s, &mapping, &key, &values));
            let mut waiters = cache::end_flight(&key);
            waiters.push(blocked);
            match result {
                Ok(value) => {
                    let fill = Fill::new(key, token, value, cache::ttl_for(mapping.ttl), started, waiters.len());
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
                    cache::abandon_lease(&key, token);
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

fn read_row(session: &mut Session, mapping: &TableMapping, key: &[u8], values: &[String]) -> Result<Option<pg_redis_shared::Encoded>, Error> {
    STATS.pg_queries.inc();
    let sql = pg_redis_shared::sql::row_by_key(mapping);
    let params: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect();
    let key_str = String::from_utf8_lossy(key);
    let rows = session.query(&sql, &params).map_err(|e| {
        STATS.pg_errors.inc();
        blame_key(e, mapping, &key_str)
    })?;
    match rows.first() {
        None => Ok(None),
        Some(r) => {
            let text: &str = r.get(0);
            mapping.encode_text(text).map(|(_, v)| Some(v))
        }
    }
}

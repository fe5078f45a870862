//! `PG.MGET key [key ...]`: like PG.GET for many keys; the misses are read with one query per
//! table, filled under leases, and the answer keeps the order of the keys.

use super::{blame_key, block_for_pool, cached, check_db, check_key_values, encoded_reply, key_text, submit, Cached};
use crate::blocking::Completion;
use crate::cache::{self, Fill};
use crate::pool::Session;
use crate::reply::to_redis;
use crate::{config, mappings, stats::STATS};
use pg_redis_shared::{Encoded, Error, TableMapping};
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A miss to read: its position in the answer and its parsed key.
struct Wanted {
    pos: usize,
    key: Vec<u8>,
    values: Vec<String>,
    token: u64,
}

pub fn run(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let [_, keys @ ..] = args.as_slice() else {
        return Err(RedisError::WrongArity);
    };
    if keys.is_empty() {
        return Err(RedisError::WrongArity);
    }
    check_db(ctx)?;
    let set = match mappings::current() {
        Ok(set) => set,
        // Without mappings, answer from the cache if every key is there.
        Err(e) => {
            let mut answer = Vec::with_capacity(keys.len());
            for key in keys {
                match cached(ctx, key)? {
                    Some(c) => answer.push(c.reply()),
                    None => return Err(to_redis(&e)),
                }
            }
            return Ok(RedisValue::Array(answer));
        }
    };
    let read_through = config::READ_THROUGH.load(std::sync::atomic::Ordering::Relaxed);
    let mut answer: Vec<Option<Cached>> = Vec::with_capacity(keys.len());
    let mut misses: HashMap<i64, (Arc<TableMapping>, Vec<Wanted>)> = HashMap::new();
    let mut parsed = Vec::new();
    for (pos, key) in keys.iter().enumerate() {
        let text = key_text(key.as_slice())?;
        let (mapping, values) = set.resolve(text).map_err(|e| to_redis(&e))?;
        check_key_values(mapping, text, &values).map_err(|e| to_redis(&e))?;
        parsed.push((pos, key, mapping, values));
    }
    for (pos, key, mapping, values) in parsed {
        match cached(ctx, key)? {
            Some(v) => {
                STATS.hits.inc();
                answer.push(Some(v));
            }
            None => {
                STATS.misses.inc();
                answer.push(None);
                if cache::negative_hit(key.as_slice()) {
                    STATS.negative_hits.inc();
                } else if read_through {
                    let entry = misses.entry(mapping.id).or_insert_with(|| (Arc::new(mapping.clone()), Vec::new()));
                    entry.1.push(Wanted { pos, key: key.as_slice().to_vec(), values, token: 0 });
                }
            }
        }
    }
    if misses.is_empty() {
        return Ok(RedisValue::Array(answer.iter().map(reply_of).collect()));
    }
    let blocked = block_for_pool(ctx, "PG.MGET")?;
    for (_, wanted) in misses.values_mut() {
        for w in wanted.iter_mut() {
            w.token = cache::take_lease(&w.key);
        }
    }
    let started = Instant::now();
    submit(blocked, move |session| match session.and_then(|s| read_all(s, &misses)) {
        Ok(found) => {
            let mut found = found;
            let mut fills: Vec<(usize, Arc<Fill>)> = Vec::new();
            for (m, wanted) in misses.into_values() {
                let ttl = cache::ttl_for(m.ttl);
                for w in wanted {
                    let value = found.remove(&w.pos);
                    fills.push((w.pos, Fill::new(w.key, w.token, value, ttl, started, 1)));
                }
            }
            let for_abandon: Vec<Arc<Fill>> = fills.iter().map(|(_, f)| f.clone()).collect();
            let for_effect = for_abandon.clone();
            Completion {
                effect: Some(Box::new(move |ctx| for_effect.iter().for_each(|f| f.apply(ctx)))),
                abandon: Some(Box::new(move || for_abandon.iter().for_each(|f| f.abandon()))),
                reply: Box::new(move |_| {
                    let mut reply: Vec<RedisValue> = answer.iter().map(reply_of).collect();
                    for (pos, f) in &fills {
                        if let Some(slot) = reply.get_mut(*pos) {
                            *slot = encoded_reply(f.value.as_ref());
                        }
                    }
                    Ok(RedisValue::Array(reply))
                }),
            }
        }
        Err(e) => {
            for (_, wanted) in misses.values() {
                for w in wanted {
                    cache::abandon_lease(&w.key, w.token);
                }
            }
            Completion::error(to_redis(&e))
        }
    });
    Ok(RedisValue::NoReply)
}

fn reply_of(c: &Option<Cached>) -> RedisValue {
    c.as_ref().map(Cached::reply).unwrap_or(RedisValue::Null)
}

/// One query per table: the rows of all its missed keys (with the key each row renders to), by
/// answer position.
fn read_all(
    session: &mut Session,
    misses: &HashMap<i64, (Arc<TableMapping>, Vec<Wanted>)>,
) -> Result<HashMap<usize, (String, Encoded)>, Error> {
    let mut found = HashMap::new();
    for (mapping, wanted) in misses.values() {
        let ncols = mapping.key.columns().count();
        let columns: Vec<Vec<&str>> =
            (0..ncols).map(|c| wanted.iter().map(|w| w.values.get(c).map_or("", String::as_str)).collect()).collect();
        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            columns.iter().map(|c| c as &(dyn postgres::types::ToSql + Sync)).collect();
        STATS.pg_queries.inc();
        let rows = session.query(&pg_redis_shared::sql::rows_by_keys(mapping), &params).map_err(|e| {
            STATS.pg_errors.inc();
            super::renamed_table(&e);
            blame_key(e, mapping, &String::from_utf8_lossy(wanted.first().map_or(&[][..], |w| &w.key)))
        })?;
        for r in rows {
            let ord: i64 = r.get(0);
            let text: &str = r.get(1);
            if let Some(w) = wanted.get(ord as usize - 1) {
                found.insert(w.pos, mapping.encode_text(text)?);
            }
        }
    }
    Ok(found)
}

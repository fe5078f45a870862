//! The `PG.*` commands, one file each. Shared here: how a command hands work to the pool.

pub mod get;
pub mod invalidate;
pub mod mget;
pub mod ping;
pub mod reload;
pub mod stats;

use crate::blocking::{self, Completion};
use crate::pool::{self, Job, Session};
use crate::reply::to_redis;
use crate::{config, stats::STATS};
use pg_redis_shared::{Encoded, Error, TableMapping};
use redis_module::redisvalue::RedisValueKey;
use redis_module::{Context, KeyType, RedisError, RedisResult, RedisString, RedisValue, ScanKeyCursor};
use std::time::Instant;

/// Blocks the client and runs `work` on a pool thread; its Completion answers the client.
/// Refuses at once (`BUSY`) when the queue is full, and inside MULTI or scripts, where a
/// client cannot wait, with a clear error.
pub fn on_pool(
    ctx: &Context,
    command: &str,
    work: impl FnOnce(&mut Session) -> Completion + Send + 'static,
) -> RedisResult {
    let blocked = block_for_pool(ctx, command)?;
    submit(blocked, move |session| match session {
        Ok(s) => work(s),
        Err(e) => Completion::error(to_redis(&e)),
    });
    Ok(RedisValue::NoReply)
}

/// Blocks the client for a pool job, or refuses with a clear error (MULTI/scripts, full queue).
pub fn block_for_pool(ctx: &Context, command: &str) -> Result<blocking::Blocked, RedisError> {
    if !blocking::may_block(ctx) {
        return Err(RedisError::String(format!(
            "ERR {command} needs PostgreSQL and cannot wait inside MULTI, EXEC or a script; call it on its own"
        )));
    }
    if pool::queue_depth() >= config::queue_max() {
        STATS.busy.inc();
        return Err(to_redis(&Error::Busy {
            what: "the PostgreSQL request queue is full (redis_pg.queue_max); retry later".into(),
        }));
    }
    blocking::block(ctx)
}

/// Runs `work` on a pool thread (or with the reason it cannot run: deadline passed, queue
/// full); its Completion answers `blocked`.
pub fn submit(
    blocked: blocking::Blocked,
    work: impl FnOnce(Result<&mut Session, Error>) -> Completion + Send + 'static,
) {
    let job = Job {
        deadline: Instant::now() + config::query_timeout(),
        work: Box::new(move |session| blocked.finish(work(session))),
    };
    if let Err((e, job)) = pool::submit(job) {
        STATS.busy.inc();
        (job.work)(Err(e));
    }
}

/// A cached value, copied out of the keyspace (so it may travel to another thread).
pub enum Cached {
    Bytes(Vec<u8>),
    Fields(Vec<(Vec<u8>, Vec<u8>)>),
}

impl Cached {
    pub fn reply(&self) -> RedisValue {
        match self {
            Cached::Bytes(b) => RedisValue::StringBuffer(b.clone()),
            Cached::Fields(f) => RedisValue::OrderedMap(
                f.iter()
                    .map(|(k, v)| (RedisValueKey::BulkString(k.clone()), RedisValue::StringBuffer(v.clone())))
                    .collect(),
            ),
        }
    }
}

/// What the cache holds at a key: `Some` on a hit, `None` when absent; a key of another type
/// is WRONGTYPE (someone else's data, never overwritten by a fill).
pub fn cached(ctx: &Context, key: &RedisString) -> Result<Option<Cached>, RedisError> {
    let k = ctx.open_key(key);
    match k.key_type() {
        KeyType::Empty => Ok(None),
        KeyType::String => Ok(Some(Cached::Bytes(k.read()?.map(<[u8]>::to_vec).unwrap_or_default()))),
        KeyType::Hash => {
            let mut fields = Vec::new();
            ScanKeyCursor::new(k).for_each(|_, f, v| fields.push((f.as_slice().to_vec(), v.as_slice().to_vec())));
            fields.sort();
            Ok(Some(Cached::Fields(fields)))
        }
        _ => Err(RedisError::WrongType),
    }
}

/// The reply for a row read from PostgreSQL (the same shape a hit has).
pub fn encoded_reply(value: Option<&Encoded>) -> RedisValue {
    match value {
        None => RedisValue::Null,
        Some(Encoded::Json(s)) => RedisValue::StringBuffer(s.as_bytes().to_vec()),
        Some(Encoded::Hash(fields)) => RedisValue::OrderedMap(
            fields
                .iter()
                .map(|(f, v)| {
                    (RedisValueKey::BulkString(f.as_bytes().to_vec()), RedisValue::StringBuffer(v.as_bytes().to_vec()))
                })
                .collect(),
        ),
    }
}

/// PG.* commands work in the database the cache lives in (redis_pg.db): fills elsewhere would
/// never be updated by the pushes.
pub fn check_db(ctx: &Context) -> Result<(), RedisError> {
    let selected = crate::module_api::selected_db(ctx).unwrap_or(0);
    let want = config::db();
    if selected != want {
        return Err(RedisError::String(format!("ERR PG.* commands serve database {want} (redis_pg.db), where pg_redis keeps its rows; this connection selected database {selected}")));
    }
    Ok(())
}

/// A key as text (templates are text; other bytes cannot belong to a mapping).
pub fn key_text(key: &[u8]) -> Result<&str, RedisError> {
    std::str::from_utf8(key)
        .map_err(|_| to_redis(&Error::UnmappedKey { key: String::from_utf8_lossy(key).into_owned() }))
}

/// Fails fast on key values that cannot be of the column's type (no PostgreSQL round trip).
pub fn check_key_values(mapping: &TableMapping, key: &str, values: &[String]) -> Result<(), Error> {
    for ((col, ty), v) in mapping.key.columns().zip(&mapping.key_types).zip(values) {
        let ty = pg_redis_shared::key_type::KeyType::parse(ty);
        if !ty.accepts(v) {
            return Err(Error::KeyMismatch {
                key: key.to_owned(),
                template: mapping.key.to_string(),
                reason: format!("\"{v}\" is not a valid {} for column {col}", ty.short_name()),
            });
        }
    }
    Ok(())
}

/// A table the mappings name is gone under that name (renamed, or dropped): reload them, so the
/// next read uses the current name.
pub fn renamed_table(e: &Error) {
    if e.is_undefined_table() {
        crate::mappings::request_reload();
    }
}

/// PostgreSQL rejected a key value (a data exception): say which key.
pub fn blame_key(e: Error, mapping: &TableMapping, key: &str) -> Error {
    match e {
        Error::InvalidValue { reason, .. } => {
            Error::KeyMismatch { key: key.to_owned(), template: mapping.key.to_string(), reason }
        }
        other => other,
    }
}

//! Talking to Redis from SQL, on this backend's own connection: typed helpers for the common
//! commands and `redis.command(...)` for any other. A Redis error reply becomes an SQL ERROR
//! carrying Redis's message; nothing Redis answers can crash the backend.

use crate::errors::{raise, raise_with, OrRaise};
use crate::redis_client::call;
use pg_redis_shared::Error;
use pgrx::prelude::*;
use pgrx::JsonB;
use redis::Value;
use serde_json::{Map, Number, Value as Json};

/// `PONG` from the configured Redis.
#[pg_extern(volatile, parallel_unsafe)]
fn ping() -> String {
    call(|c| redis::cmd("PING").query::<String>(c)).or_raise()
}

/// The string at `key`, NULL when absent.
#[pg_extern(volatile, parallel_unsafe)]
fn get(key: &str) -> Option<String> {
    let key = key.to_owned();
    let v = call(move |c| redis::cmd("GET").arg(&key).query::<Option<Vec<u8>>>(c)).or_raise();
    v.map(|b| utf8(b, "GET"))
}

/// Sets `key`; with `ttl` (seconds) it expires; with `nx` only if absent. True if it was set.
#[pg_extern(volatile, parallel_unsafe)]
fn set(key: &str, value: &str, ttl: default!(Option<i32>, "NULL"), nx: default!(Option<bool>, "false")) -> bool {
    if let Some(t) = ttl {
        if t <= 0 {
            raise(Error::invalid_value("ttl", t, "it must be a positive number of seconds (or NULL for no expiry)"));
        }
    }
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(value);
    if let Some(t) = ttl {
        cmd.arg("EX").arg(t);
    }
    if nx.unwrap_or(false) {
        cmd.arg("NX");
    }
    let reply = call(move |c| cmd.query::<Value>(c)).or_raise();
    !matches!(reply, Value::Nil)
}

/// Deletes keys; returns how many existed.
#[pg_extern(volatile, parallel_unsafe)]
fn del(keys: VariadicArray<&str>) -> i64 {
    let keys: Vec<String> = keys.iter().flatten().map(str::to_owned).collect();
    if keys.is_empty() {
        return 0;
    }
    call(move |c| redis::cmd("DEL").arg(&keys).query::<i64>(c)).or_raise()
}

#[pg_extern(volatile, parallel_unsafe)]
fn exists(key: &str) -> bool {
    let key = key.to_owned();
    call(move |c| redis::cmd("EXISTS").arg(&key).query::<i64>(c)).or_raise() > 0
}

/// Sets a key's time to live in seconds; false if the key does not exist.
#[pg_extern(volatile, parallel_unsafe)]
fn expire(key: &str, seconds: i32) -> bool {
    let key = key.to_owned();
    call(move |c| redis::cmd("EXPIRE").arg(&key).arg(seconds).query::<i64>(c)).or_raise() == 1
}

/// Adds `by` to the integer at `key` (0 when absent); returns the new value.
#[pg_extern(volatile, parallel_unsafe)]
fn incrby(key: &str, by: default!(i64, 1)) -> i64 {
    let key = key.to_owned();
    call(move |c| redis::cmd("INCRBY").arg(&key).arg(by).query::<i64>(c)).or_raise()
}

/// Sets hash fields from a JSON object (strings as they are, other values as JSON text);
/// returns how many fields were added.
#[pg_extern(volatile, parallel_unsafe)]
fn hset(key: &str, fields: JsonB) -> i64 {
    let pairs = field_pairs(&fields.0, "fields");
    if pairs.is_empty() {
        raise(Error::invalid_value("fields", "'{}'", "give at least one field"));
    }
    let key = key.to_owned();
    call(move |c| redis::cmd("HSET").arg(&key).arg(&pairs).query::<i64>(c)).or_raise()
}

#[pg_extern(volatile, parallel_unsafe)]
fn hget(key: &str, field: &str) -> Option<String> {
    let (key, field) = (key.to_owned(), field.to_owned());
    call(move |c| redis::cmd("HGET").arg(&key).arg(&field).query::<Option<Vec<u8>>>(c)).or_raise().map(|b| utf8(b, "HGET"))
}

/// Every field of a hash as a JSON object (NULL when the key does not exist).
#[pg_extern(volatile, parallel_unsafe)]
fn hgetall(key: &str) -> Option<JsonB> {
    let key = key.to_owned();
    let fields = call(move |c| redis::cmd("HGETALL").arg(&key).query::<Vec<(Vec<u8>, Vec<u8>)>>(c)).or_raise();
    if fields.is_empty() {
        return None;
    }
    let map: Map<String, Json> = fields.into_iter().map(|(f, v)| (utf8(f, "HGETALL"), Json::String(utf8(v, "HGETALL")))).collect();
    Some(JsonB(Json::Object(map)))
}

/// Publishes a message; returns how many subscribers got it.
#[pg_extern(volatile, parallel_unsafe)]
fn publish(channel: &str, message: &str) -> i64 {
    let (channel, message) = (channel.to_owned(), message.to_owned());
    call(move |c| redis::cmd("PUBLISH").arg(&channel).arg(&message).query::<i64>(c)).or_raise()
}

/// Appends an entry (a JSON object of fields) to a stream, capped at about `maxlen` entries;
/// returns the entry id.
#[pg_extern(volatile, parallel_unsafe)]
fn xadd(stream: &str, fields: JsonB, maxlen: default!(Option<i64>, "NULL")) -> String {
    let pairs = field_pairs(&fields.0, "fields");
    if pairs.is_empty() {
        raise(Error::invalid_value("fields", "'{}'", "a stream entry needs at least one field"));
    }
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream);
    if let Some(n) = maxlen {
        if n < 0 {
            raise(Error::invalid_value("maxlen", n, "it must not be negative"));
        }
        cmd.arg("MAXLEN").arg("~").arg(n);
    }
    cmd.arg("*").arg(&pairs);
    call(move |c| cmd.query::<String>(c)).or_raise()
}

/// Keys matching a glob pattern (SCAN, so Redis is never blocked; `count` is SCAN's hint).
#[pg_extern(volatile, parallel_unsafe)]
fn scan(pattern: default!(&str, "'*'"), count: default!(i32, 1000)) -> SetOfIterator<'static, String> {
    if count <= 0 {
        raise(Error::invalid_value("count", count, "it must be positive"));
    }
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let pattern = pattern.to_owned();
        let (next, batch) = call(move |c| redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(count).query::<(u64, Vec<Vec<u8>>)>(c)).or_raise();
        keys.extend(batch.into_iter().map(|k| utf8(k, "SCAN")));
        check_for_interrupts!();
        if next == 0 {
            return SetOfIterator::new(keys);
        }
        cursor = next;
    }
}

/// Runs any command; the reply as JSON: strings → string, integers → number, nil → null,
/// arrays → array, maps → object, doubles → number, booleans → boolean.
#[pg_extern(volatile, parallel_unsafe)]
fn command(args: VariadicArray<&str>) -> Option<JsonB> {
    let args: Vec<String> = args.iter().map(|a| a.unwrap_or_default().to_owned()).collect();
    if args.is_empty() {
        raise(Error::invalid_value("command", "()", "name a command, e.g. redis.command('GET', 'key')"));
    }
    let reply = call(move |c| redis::cmd(&args[0]).arg(&args[1..]).query::<Value>(c)).or_raise();
    match to_json(reply) {
        Json::Null => None,
        j => Some(JsonB(j)),
    }
}

fn to_json(v: Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Int(i) => Json::from(i),
        Value::BulkString(b) => Json::String(utf8(b, "the command")),
        Value::SimpleString(s) => Json::String(s),
        Value::Okay => Json::String("OK".into()),
        Value::Array(items) | Value::Set(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Value::Map(pairs) => Json::Object(
            pairs
                .into_iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Attribute { data, .. } => to_json(*data),
        Value::Double(d) => Number::from_f64(d).map(Json::Number).unwrap_or_else(|| Json::String(d.to_string())),
        Value::Boolean(b) => Json::Bool(b),
        Value::VerbatimString { text, .. } => Json::String(text),
        Value::BigNumber(n) => {
            let text = String::from_utf8_lossy(&n).into_owned();
            text.parse::<Number>().map(Json::Number).unwrap_or(Json::String(text))
        }
        Value::Push { data, .. } => Json::Array(data.into_iter().map(to_json).collect()),
        Value::ServerError(e) => raise(Error::Remote { server: "Redis", message: format!("{} {}", e.code(), e.details().unwrap_or_default()).trim().to_owned() }),
        other => Json::String(format!("{other:?}")),
    }
}

/// A JSON object as Redis field/value pairs (strings raw, other values as compact JSON).
fn field_pairs(v: &Json, what: &str) -> Vec<String> {
    let Json::Object(map) = v else {
        raise_with(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("{what} must be a JSON object, e.g. '{{\"name\": \"ann\"}}'"), None);
    };
    map.iter().flat_map(|(k, v)| [k.clone(), pg_redis_shared::encoding::hash_value(v)]).collect()
}

/// Redis values are bytes; SQL text must be valid UTF-8.
fn utf8(bytes: Vec<u8>, what: &str) -> String {
    String::from_utf8(bytes).unwrap_or_else(|_| {
        raise_with(
            PgSqlErrorCode::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            format!("the reply of {what} is not valid UTF-8, so it cannot be SQL text"),
            Some("store text in Redis, or read binary values with another client"),
        )
    })
}

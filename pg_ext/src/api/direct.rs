//! Talking to Redis from SQL, on this backend's own connection: typed helpers for the common
//! commands and `redis.command(...)` for any other. A Redis error reply becomes an SQL ERROR
//! carrying Redis's message; nothing Redis answers can crash the backend. Every function sends
//! through [`send`], so each obeys the SQL command policy (see `privileges.rs`).

use crate::api::privileges::authorize_redis_command;
use crate::errors::{raise, OrRaise};
use crate::redis_client::call;
use pg_redis_shared::Error;
use pgrx::prelude::*;
use pgrx::JsonB;
use redis::Value;
use serde_json::{Map, Number, Value as Json};

/// `PONG` from the configured Redis.
#[pg_extern(volatile, parallel_unsafe)]
fn ping() -> String {
    send("redis.ping", vec!["PING".into()])
}

/// The string at `key`, NULL when absent.
#[pg_extern(volatile, parallel_unsafe)]
fn get(key: &str) -> Option<String> {
    let v: Option<Vec<u8>> = send("redis.get", vec!["GET".into(), key.into()]);
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
    let mut args: Vec<String> = vec!["SET".into(), key.into(), value.into()];
    if let Some(t) = ttl {
        args.extend(["EX".into(), t.to_string()]);
    }
    if nx.unwrap_or(false) {
        args.push("NX".into());
    }
    let reply: Value = send("redis.set", args);
    !matches!(reply, Value::Nil)
}

/// Deletes keys; returns how many existed.
#[pg_extern(volatile, parallel_unsafe)]
fn del(keys: VariadicArray<&str>) -> i64 {
    let args: Vec<String> = std::iter::once("DEL").chain(keys.iter().flatten()).map(str::to_owned).collect();
    if args.len() == 1 {
        return 0;
    }
    send("redis.del", args)
}

#[pg_extern(volatile, parallel_unsafe)]
fn exists(key: &str) -> bool {
    send::<i64>("redis.exists", vec!["EXISTS".into(), key.into()]) > 0
}

/// Sets a key's time to live in seconds; false if the key does not exist.
#[pg_extern(volatile, parallel_unsafe)]
fn expire(key: &str, seconds: i32) -> bool {
    send::<i64>("redis.expire", vec!["EXPIRE".into(), key.into(), seconds.to_string()]) == 1
}

/// Adds `by` to the integer at `key` (0 when absent); returns the new value.
#[pg_extern(volatile, parallel_unsafe)]
fn incrby(key: &str, by: default!(i64, 1)) -> i64 {
    send("redis.incrby", vec!["INCRBY".into(), key.into(), by.to_string()])
}

/// Sets hash fields from a JSON object (strings as they are, other values as JSON text);
/// returns how many fields were added.
#[pg_extern(volatile, parallel_unsafe)]
fn hset(key: &str, fields: JsonB) -> i64 {
    let pairs = field_pairs(&fields.0, "fields");
    if pairs.is_empty() {
        raise(Error::invalid_value("fields", "'{}'", "give at least one field"));
    }
    send("redis.hset", ["HSET".into(), key.into()].into_iter().chain(pairs).collect())
}

#[pg_extern(volatile, parallel_unsafe)]
fn hget(key: &str, field: &str) -> Option<String> {
    send::<Option<Vec<u8>>>("redis.hget", vec!["HGET".into(), key.into(), field.into()]).map(|b| utf8(b, "HGET"))
}

/// Every field of a hash as a JSON object (NULL when the key does not exist).
#[pg_extern(volatile, parallel_unsafe)]
fn hgetall(key: &str) -> Option<JsonB> {
    let fields: Vec<(Vec<u8>, Vec<u8>)> = send("redis.hgetall", vec!["HGETALL".into(), key.into()]);
    if fields.is_empty() {
        return None;
    }
    let map: Map<String, Json> =
        fields.into_iter().map(|(f, v)| (utf8(f, "HGETALL"), Json::String(utf8(v, "HGETALL")))).collect();
    Some(JsonB(Json::Object(map)))
}

/// Publishes a message; returns how many subscribers got it.
#[pg_extern(volatile, parallel_unsafe)]
fn publish(channel: &str, message: &str) -> i64 {
    send("redis.publish", vec!["PUBLISH".into(), channel.into(), message.into()])
}

/// Appends an entry (a JSON object of fields) to a stream, capped at about `maxlen` entries;
/// returns the entry id.
#[pg_extern(volatile, parallel_unsafe)]
fn xadd(stream: &str, fields: JsonB, maxlen: default!(Option<i64>, "NULL")) -> String {
    let pairs = field_pairs(&fields.0, "fields");
    if pairs.is_empty() {
        raise(Error::invalid_value("fields", "'{}'", "a stream entry needs at least one field"));
    }
    let mut args: Vec<String> = vec!["XADD".into(), stream.into()];
    if let Some(n) = maxlen {
        if n < 0 {
            raise(Error::invalid_value("maxlen", n, "it must not be negative"));
        }
        args.extend(["MAXLEN".into(), "~".into(), n.to_string()]);
    }
    args.push("*".into());
    args.extend(pairs);
    send("redis.xadd", args)
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
        let args =
            vec!["SCAN".into(), cursor.to_string(), "MATCH".into(), pattern.into(), "COUNT".into(), count.to_string()];
        let (next, batch): (u64, Vec<Vec<u8>>) = send("redis.scan", args);
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
    let reply: Value = send("redis.command", args);
    match to_json(reply) {
        Json::Null => None,
        j => Some(JsonB(j)),
    }
}

/// Checks `args` (a command line, never empty) against the SQL command policy, then runs it on
/// this backend's connection.
fn send<T: redis::FromRedisValue + Send + 'static>(function: &str, args: Vec<String>) -> T {
    let Some((name, rest)) = args.split_first() else {
        raise(Error::invalid_value("command", "()", "name a command, e.g. redis.command('GET', 'key')"));
    };
    authorize_redis_command(function, &args);
    let (name, rest) = (name.clone(), rest.to_vec());
    call(move |c| redis::cmd(&name).arg(&rest).query::<T>(c)).or_raise()
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
        Value::ServerError(e) => raise(Error::Remote {
            server: "Redis",
            message: format!("{} {}", e.code(), e.details().unwrap_or_default()).trim().to_owned(),
        }),
        other => Json::String(format!("{other:?}")),
    }
}

/// A JSON object as Redis field/value pairs (strings raw, other values as compact JSON).
fn field_pairs(v: &Json, what: &str) -> Vec<String> {
    let Json::Object(map) = v else {
        raise(Error::NotAJsonObject { what: what.to_owned() });
    };
    map.iter().flat_map(|(k, v)| [k.clone(), pg_redis_shared::encoding::hash_value(v)]).collect()
}

/// Redis values are bytes; SQL text must be valid UTF-8.
fn utf8(bytes: Vec<u8>, what: &str) -> String {
    String::from_utf8(bytes).unwrap_or_else(|_| raise(Error::ReplyNotUtf8 { what: what.to_owned() }))
}

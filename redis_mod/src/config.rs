//! The module's settings: load arguments (`pg_url <url> pool_size 8 ...`) and, at run time,
//! `CONFIG SET redis_pg.<name>`. The PostgreSQL password is never shown: `CONFIG GET` and INFO
//! print the URL with `****` in its place.

use crate::pg_target::{self, carries_password};
use pg_redis_shared::redact::redact_url;
use redis_module::configuration::{self as cfg, ConfigurationContext, ConfigurationFlags};
use redis_module::Context;
use redis_module::{ConfigurationValue, RedisError, RedisString};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub static POOL_SIZE: AtomicI64 = AtomicI64::new(4);
pub static QUEUE_MAX: AtomicI64 = AtomicI64::new(1024);
pub static QUERY_TIMEOUT_MS: AtomicI64 = AtomicI64::new(2000);
pub static DEFAULT_TTL: AtomicI64 = AtomicI64::new(0);
pub static NEGATIVE_TTL: AtomicI64 = AtomicI64::new(5);
pub static TTL_JITTER_PCT: AtomicI64 = AtomicI64::new(10);
/// When off, misses answer nil without asking PostgreSQL (the cache alone serves).
pub static READ_THROUGH: AtomicBool = AtomicBool::new(true);
pub static PG_URL: PgUrl = PgUrl { url: Mutex::new(String::new()), generation: AtomicU64::new(0) };
pub static PG_PASSWORD_FILE: PathSetting = PathSetting { name: "pg_password_file", path: Mutex::new(String::new()) };
/// The CA certificate (PEM) that signed PostgreSQL's, for `sslmode=verify-ca|verify-full`.
pub static PG_SSL_CA_FILE: PathSetting = PathSetting { name: "pg_ssl_ca_file", path: Mutex::new(String::new()) };
/// How long a pool connection may stay silent before it counts as dead (TCP keepalives and
/// `TCP_USER_TIMEOUT`).
pub static DEAD_PEER_TIMEOUT_MS: AtomicI64 = AtomicI64::new(5000);
/// The database the cache lives in: the one pg_redis.url of the extension pushes to.
pub static DB: AtomicI64 = AtomicI64::new(0);

/// The path of a file the module reads (the password file, the CA certificate).
pub struct PathSetting {
    name: &'static str,
    path: Mutex<String>,
}

impl PathSetting {
    pub fn get(&self) -> String {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_str(&self, v: &str) -> Result<(), String> {
        if v.contains('\0') {
            return Err(format!("ERR redis_pg.{} must not contain a NUL byte", self.name));
        }
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = v.to_owned();
        Ok(())
    }
}

impl ConfigurationValue<RedisString> for PathSetting {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create(None, self.get().replace('\0', ""))
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        let s =
            val.try_as_str().map_err(|_| RedisError::String(format!("ERR redis_pg.{} must be UTF-8", self.name)))?;
        self.set_str(s).map_err(RedisError::String)?;
        if self.name == "pg_ssl_ca_file" {
            // New certificates apply to new connections: reconnect.
            PG_URL.generation.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }
}

/// The PostgreSQL URL. Reads show it without its password; each change bumps a generation so
/// pool threads reconnect.
pub struct PgUrl {
    url: Mutex<String>,
    generation: AtomicU64,
}

impl PgUrl {
    pub fn get(&self) -> String {
        self.url.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.get())
    }
}

impl ConfigurationValue<RedisString> for PgUrl {
    fn get(&self, _ctx: &ConfigurationContext) -> RedisString {
        RedisString::create(None, self.redacted().replace('\0', ""))
    }

    fn set(&self, _ctx: &ConfigurationContext, val: RedisString) -> Result<(), RedisError> {
        let s = val.try_as_str().map_err(|_| RedisError::Str("ERR redis_pg.pg_url must be UTF-8"))?.to_owned();
        if s.contains('\0') {
            return Err(RedisError::Str("ERR redis_pg.pg_url must not contain a NUL byte"));
        }
        if carries_password(&s) {
            // CONFIG GET shows the URL without its password, and CONFIG REWRITE would then
            // save it without one: keep passwords out of the URL altogether.
            return Err(RedisError::Str("ERR redis_pg.pg_url must not carry a password (CONFIG GET, CONFIG REWRITE and MODULE LIST would expose or lose it); use redis_pg.pg_password_file or PGPASSWORD"));
        }
        if !s.is_empty() {
            pg_target::parse(&s)
                .map_err(|e| RedisError::String(format!("ERR redis_pg.pg_url {}", e.replace('\0', ""))))?;
        }
        *self.url.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

pub fn db() -> i64 {
    DB.load(Ordering::Relaxed)
}

pub fn pool_size() -> usize {
    POOL_SIZE.load(Ordering::Relaxed).clamp(1, 256) as usize
}

pub fn queue_max() -> usize {
    QUEUE_MAX.load(Ordering::Relaxed).max(1) as usize
}

pub fn dead_peer_timeout() -> Duration {
    Duration::from_millis(DEAD_PEER_TIMEOUT_MS.load(Ordering::Relaxed).max(1000) as u64)
}

pub fn query_timeout() -> Duration {
    Duration::from_millis(QUERY_TIMEOUT_MS.load(Ordering::Relaxed).max(1) as u64)
}

/// Seconds a filled row lives when its mapping has no TTL (None: forever).
pub fn default_ttl() -> Option<u64> {
    let v = DEFAULT_TTL.load(Ordering::Relaxed);
    (v > 0).then_some(v as u64)
}

pub fn negative_ttl() -> Duration {
    Duration::from_secs(NEGATIVE_TTL.load(Ordering::Relaxed).max(0) as u64)
}

pub fn ttl_jitter_pct() -> u64 {
    TTL_JITTER_PCT.load(Ordering::Relaxed).clamp(0, 100) as u64
}

/// The password to use when the URL carries none: `pg_password_file`, else `PGPASSWORD`.
pub fn external_password() -> Result<Option<String>, String> {
    let path = PG_PASSWORD_FILE.get();
    if !path.is_empty() {
        let pw = std::fs::read_to_string(&path).map_err(|e| format!("cannot read pg_password_file {path}: {e}"))?;
        return Ok(Some(pw.trim_end_matches(['\n', '\r']).to_owned()));
    }
    Ok(std::env::var("PGPASSWORD").ok())
}

/// Load arguments may not carry a password: Redis shows them to anyone allowed to run
/// `MODULE LIST`. Returns the offending argument's name.
pub fn password_in_args(args: &[String]) -> Option<&'static str> {
    let mut it = args.iter();
    while let Some(name) = it.next() {
        if name.eq_ignore_ascii_case("pg_url") {
            if let Some(url) = it.next() {
                if carries_password(url) {
                    return Some("pg_url");
                }
            }
        }
    }
    None
}

/// The integer settings with their valid ranges.
pub const INTEGERS: &[(&str, &AtomicI64, i64, i64)] = &[
    ("pool_size", &POOL_SIZE, 1, 256),
    ("queue_max", &QUEUE_MAX, 1, 1_000_000),
    ("query_timeout_ms", &QUERY_TIMEOUT_MS, 1, 600_000),
    ("dead_peer_timeout_ms", &DEAD_PEER_TIMEOUT_MS, 1000, 600_000),
    ("default_ttl", &DEFAULT_TTL, 0, i32::MAX as i64),
    ("negative_ttl", &NEGATIVE_TTL, 0, 86_400),
    ("ttl_jitter_pct", &TTL_JITTER_PCT, 0, 100),
    ("db", &DB, 0, 1_000_000),
];

/// Called after a setting changed (the pool resizes itself on `pool_size`).
pub type OnSet = Box<dyn Fn(&ConfigurationContext, &str, &'static AtomicI64)>;

/// Registers every setting as `redis_pg.<name>` and loads the values the config file gives.
pub fn register(ctx: &Context, on_pool_size: OnSet) {
    let mut on_pool_size = Some(on_pool_size);
    for (name, v, min, max) in INTEGERS {
        let default = v.load(Ordering::Relaxed);
        let cb = if *name == "pool_size" { on_pool_size.take() } else { None };
        cfg::register_i64_configuration(ctx, name, *v, default, *min, *max, ConfigurationFlags::DEFAULT, cb);
    }
    cfg::register_string_configuration(ctx, "pg_url", &PG_URL, "", ConfigurationFlags::DEFAULT, None);
    cfg::register_string_configuration(
        ctx,
        "pg_password_file",
        &PG_PASSWORD_FILE,
        "",
        ConfigurationFlags::DEFAULT,
        None,
    );
    cfg::register_string_configuration(ctx, "pg_ssl_ca_file", &PG_SSL_CA_FILE, "", ConfigurationFlags::DEFAULT, None);
    cfg::register_bool_configuration(ctx, "read_through", &READ_THROUGH, true, ConfigurationFlags::DEFAULT, None);
    // Called during OnLoad with its context, after registering.
    crate::module_api::load_configs(ctx);
}

/// Applies `name value` pairs given after the module path (they win over `redis_pg.*` lines of
/// the config file). Errors name the argument and what it accepts.
pub fn apply_load_args(args: &[String]) -> Result<(), String> {
    if !args.len().is_multiple_of(2) {
        return Err(format!(
            "arguments come in pairs (name value), got {}: {}",
            args.len(),
            args.iter().map(|a| redact_url(a)).collect::<Vec<_>>().join(" ")
        ));
    }
    if args.iter().any(|a| a.contains('\0')) {
        return Err("module arguments must not contain NUL bytes".into());
    }
    for pair in args.chunks_exact(2) {
        let [name, value] = pair else { continue };
        let name = name.to_ascii_lowercase();
        if let Some((n, v, min, max)) = INTEGERS.iter().find(|(n, ..)| *n == name) {
            let parsed: i64 = value.parse().map_err(|_| format!("{n} must be a whole number, got \"{value}\""))?;
            if !(*min..=*max).contains(&parsed) {
                return Err(format!("{n} {parsed} is out of range; use {min} to {max}"));
            }
            v.store(parsed, Ordering::Relaxed);
            continue;
        }
        match name.as_str() {
            "pg_url" => {
                if !value.is_empty() {
                    pg_target::parse(value).map_err(|e| format!("pg_url {e}"))?;
                }
                *PG_URL.url.lock().unwrap_or_else(|e| e.into_inner()) = value.clone();
                PG_URL.generation.fetch_add(1, Ordering::AcqRel);
            }
            "pg_password_file" => PG_PASSWORD_FILE.set_str(value)?,
            "pg_ssl_ca_file" => PG_SSL_CA_FILE.set_str(value)?,
            "read_through" => {
                READ_THROUGH.store(
                    parse_yes_no(value).ok_or_else(|| format!("read_through must be yes or no, got \"{value}\""))?,
                    Ordering::Relaxed,
                );
            }
            other => {
                let known: Vec<&str> = INTEGERS
                    .iter()
                    .map(|(n, ..)| *n)
                    .chain(["pg_url", "pg_password_file", "pg_ssl_ca_file", "read_through"])
                    .collect();
                return Err(format!("unknown argument \"{other}\"; known: {}", known.join(", ")));
            }
        }
    }
    Ok(())
}

fn parse_yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn load_args() {
        assert!(apply_load_args(&args(&["pool_size", "8", "pg_url", "postgresql://u@h/db"])).is_ok());
        assert_eq!(POOL_SIZE.load(Ordering::Relaxed), 8);
        assert!(apply_load_args(&args(&["pool_size", "0"])).unwrap_err().contains("out of range"));
        assert!(apply_load_args(&args(&["pool_size"])).unwrap_err().contains("pairs"));
        assert!(apply_load_args(&args(&["colour", "red"])).unwrap_err().contains("unknown argument \"colour\""));
        let e = apply_load_args(&args(&["pg_url", "postgresql://u:secret@h:notaport/db"])).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn passwords_in_args_are_found() {
        assert_eq!(password_in_args(&args(&["pg_url", "postgresql://u:pw@h/db"])), Some("pg_url"));
        assert_eq!(password_in_args(&args(&["pg_url", "postgresql://u:p/w?x#y@h/db"])), Some("pg_url"));
        assert_eq!(password_in_args(&args(&["pg_url", "dbname=passwords password=x"])), Some("pg_url"));
        assert_eq!(password_in_args(&args(&["pg_url", "postgresql://u@h/db"])), None);
    }
}

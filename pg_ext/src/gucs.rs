//! Settings (`pg_redis.*`). Everything but the launcher's database can change with
//! `ALTER SYSTEM` + `SELECT pg_reload_conf()`; the worker rereads them on SIGHUP.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Where changes go. Superuser-only: it may carry a password, and it is never shown to others.
pub static REDIS_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"redis://127.0.0.1:6379"));
pub static CONNECT_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static COMMAND_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);
/// In kB (the GUC unit): row data one delivery batch or backfill chunk holds at most.
pub static BATCH_MAX_BYTES: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
pub static STREAM_MAXLEN: GucSetting<i32> = GucSetting::<i32>::new(100_000);
pub static RETRY_MIN_MS: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static RETRY_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static TLS_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static LAUNCHER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));

pub fn register() {
    register_sql_command_settings();
    GucRegistry::define_enum_guc(
        c"pg_redis.capture",
        c"How changes of synced tables are captured: from the write-ahead log, or by a trigger.",
        c"auto: from the WAL when wal_level = logical, by trigger otherwise. wal: from the WAL only (sync_table fails when wal_level is lower). trigger: by trigger only (no replication slot). Tables keep the mode they were synced with until the worker converts them (see README).",
        &CAPTURE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_redis.url",
        c"Redis server that receives changes and serves redis.* functions.",
        c"redis://[user[:password]@]host[:port][/db], or rediss:// for TLS. Only superusers can read or set it.",
        &REDIS_URL,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"pg_redis.connect_timeout_ms",
        c"How long connecting to Redis may take.",
        c"",
        &CONNECT_TIMEOUT_MS,
        10,
        600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_redis.command_timeout_ms",
        c"How long one Redis command or pipeline may take before it is treated as failed.",
        c"",
        &COMMAND_TIMEOUT_MS,
        10,
        3_600_000,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_redis.batch_size",
        c"How many outbox events the worker delivers per Redis pipeline.",
        c"",
        &BATCH_SIZE,
        1,
        100_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_redis.batch_max_bytes",
        c"Most row data the worker holds per batch, and sync_table/resync per backfill chunk.",
        c"A batch or chunk always takes at least one row. Bounds the memory of the worker and of the backfilling backend when rows are large.",
        &BATCH_MAX_BYTES,
        64,
        256 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"pg_redis.stream_maxlen",
        c"Approximate cap on each change stream (XADD MAXLEN ~). 0 leaves streams untrimmed.",
        c"",
        &STREAM_MAXLEN,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_redis.retry_min_ms",
        c"First wait before retrying delivery after Redis failed.",
        c"Each further failure doubles the wait, up to pg_redis.retry_max_ms.",
        &RETRY_MIN_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_redis.retry_max_ms",
        c"Longest wait between delivery retries while Redis is failing.",
        c"",
        &RETRY_MAX_MS,
        1,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"pg_redis.tls_ca_file",
        c"PEM file of the certificate authority that signed the Redis server's certificate (rediss:// URLs).",
        c"Unset: the system's trusted roots are used.",
        &TLS_CA_FILE,
        GucContext::Suset,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"pg_redis.launcher_database",
        c"Database the launcher connects to in order to list databases.",
        c"The launcher starts one delivery worker for each database where the extension is installed.",
        &LAUNCHER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The configured Redis URL ("" when unset).
pub fn redis_url() -> String {
    REDIS_URL.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

pub fn launcher_database() -> String {
    LAUNCHER_DATABASE.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "postgres".into())
}

fn ms(v: i32) -> std::time::Duration {
    std::time::Duration::from_millis(v.max(1) as u64)
}

pub fn connect_timeout() -> std::time::Duration {
    ms(CONNECT_TIMEOUT_MS.get())
}

pub fn command_timeout() -> std::time::Duration {
    ms(COMMAND_TIMEOUT_MS.get())
}

/// The CA file for TLS connections, if one is set.
pub fn tls_ca_file() -> Option<String> {
    TLS_CA_FILE.get().map(|s| s.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
}

/// `pg_redis.batch_max_bytes` in bytes.
pub fn batch_max_bytes() -> usize {
    BATCH_MAX_BYTES.get().max(1) as usize * 1024
}

// ---- Capture mode (see capture/mode.rs) ----

pub static CAPTURE: GucSetting<CaptureSetting> = GucSetting::<CaptureSetting>::new(CaptureSetting::Auto);

#[derive(Clone, Copy, Debug, PartialEq, Eq, pgrx::guc::PostgresGucEnum)]
pub enum CaptureSetting {
    #[name = c"auto"]
    Auto,
    #[name = c"wal"]
    Wal,
    #[name = c"trigger"]
    Trigger,
}

// ---- What roles other than superusers may send to Redis from SQL (see api/privileges.rs) ----

pub static SQL_COMMAND_POLICY: GucSetting<SqlCommandPolicy> =
    GucSetting::<SqlCommandPolicy>::new(SqlCommandPolicy::Restricted);
pub static SQL_ALLOWED_COMMANDS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

#[derive(Clone, Copy, Debug, PartialEq, Eq, pgrx::guc::PostgresGucEnum)]
pub enum SqlCommandPolicy {
    #[name = c"restricted"]
    Restricted,
    #[name = c"read_only"]
    ReadOnly,
    #[name = c"unrestricted"]
    Unrestricted,
}

/// Superuser-only (Suset): set system-wide, or per role or database with ALTER ROLE/DATABASE.
fn register_sql_command_settings() {
    GucRegistry::define_enum_guc(
        c"pg_redis.sql_command_policy",
        c"What roles other than superusers may send to Redis with redis.command, redis.on_commit and the typed helpers.",
        c"restricted: no admin, dangerous, scripting, session-changing or unknown commands, and no writes to synced tables' keys, streams and channels or to pg_redis: keys. read_only: also no writes or publishes at all. unrestricted: anything the Redis user of pg_redis.url may do.",
        &SQL_COMMAND_POLICY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_redis.sql_allowed_commands",
        c"Commands roles other than superusers may send although pg_redis.sql_command_policy would refuse them.",
        c"Comma-separated, e.g. 'info, config get, pg.get'. Writes to protected keys stay refused.",
        &SQL_ALLOWED_COMMANDS,
        GucContext::Suset,
        GucFlags::default(),
    );
}

pub fn sql_command_policy() -> pg_redis_shared::command_policy::Policy {
    use pg_redis_shared::command_policy::Policy;
    match SQL_COMMAND_POLICY.get() {
        SqlCommandPolicy::Restricted => Policy::Restricted,
        SqlCommandPolicy::ReadOnly => Policy::ReadOnly,
        SqlCommandPolicy::Unrestricted => Policy::Unrestricted,
    }
}

/// The raw list of `pg_redis.sql_allowed_commands` ("" when unset).
pub fn sql_allowed_commands() -> String {
    SQL_ALLOWED_COMMANDS.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

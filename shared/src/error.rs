//! The one error type of pg_redis. Each half maps it at its boundary: `pg_ext` to an SQL ERROR
//! with a real SQLSTATE, `redis_mod` to an error reply with a clear prefix. Messages name what
//! was wrong and, where it helps, what to do; they never contain a password.

use std::any::Any;
use std::fmt;

/// What kind of failure this is, so each boundary can choose its SQLSTATE or reply prefix
/// without matching on every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller passed something invalid (a template, a format, a TTL, a key).
    InvalidInput,
    /// A column named by the caller does not exist.
    UndefinedColumn,
    /// A key matches no table mapping.
    Unmapped,
    /// A remote server (PostgreSQL or Redis) cannot be reached.
    Unavailable,
    /// A remote server answered with an error.
    Remote,
    /// A deadline passed.
    Timeout,
    /// A bounded queue is full.
    Busy,
    /// Stored data does not have the shape it must have.
    Corrupt,
    /// An SQL argument is NULL where a value is needed.
    NullArgument,
    /// The request is valid but pg_redis does not do it.
    Unsupported,
    /// The call needs a READ COMMITTED transaction.
    NeedsReadCommitted,
    /// pg_redis is not set up as the call needs (its tables altered, say).
    NotReady,
    /// A capture trigger was not installed by pg_redis, or outlived its mapping.
    BadTrigger,
    /// The current role may not do this.
    NotAllowed,
    /// The object named is not of a kind that can be synced (a view, a temporary table).
    WrongObjectType,
    /// A new name would break something pg_redis keeps (a key template).
    InvalidName,
    /// pg_redis's own data is broken (a bug or a damaged install).
    Internal,
    /// Bytes that are not UTF-8 where SQL text is wanted.
    NotUtf8,
}

/// SQLSTATE of "relation does not exist".
pub const UNDEFINED_TABLE: &str = "42P01";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid key template \"{template}\": {reason}")]
    InvalidTemplate { template: String, reason: String },

    #[error("column \"{column}\" does not exist in table {table}")]
    UndefinedColumn { table: String, column: String },

    #[error("key \"{key}\" does not match the key template \"{template}\": {reason}")]
    KeyMismatch { key: String, template: String, reason: String },

    #[error("key column \"{column}\" is NULL, so the row has no Redis key")]
    NullKeyColumn { column: String },

    #[error("key column \"{column}\" is missing from the row")]
    MissingKeyColumn { column: String },

    #[error("invalid {what} {value}: {reason}")]
    InvalidValue { what: &'static str, value: String, reason: String },

    #[error("key \"{key}\" belongs to no synced table (see redis.tables in PostgreSQL)")]
    UnmappedKey { key: String },

    #[error("key templates \"{first}\" ({first_table}) and \"{second}\" ({second_table}) overlap: a key could belong to either table; give one of them a distinct prefix")]
    AmbiguousTemplates { first: String, first_table: String, second: String, second_table: String },

    #[error("row is not a JSON object: {reason}")]
    MalformedRow { reason: String },

    #[error("{server} is unavailable: {reason}")]
    Unavailable { server: &'static str, reason: String },

    #[error("{server} replied with an error: {message}")]
    Remote { server: &'static str, message: String },

    /// PostgreSQL answered a statement with an error: callers test `sqlstate`, not the text.
    #[error("PostgreSQL replied with an error: {message} ({sqlstate})")]
    Sql { sqlstate: String, message: String },

    #[error("timed out after {ms} ms: {what}")]
    Timeout { what: String, ms: u64 },

    #[error("{what}")]
    Busy { what: String },

    #[error("argument {position} of {function} is NULL; Redis commands take strings")]
    NullCommandArgument { function: &'static str, position: usize },

    #[error("{function} needs a command, e.g. {function}('DEL', 'report:today')")]
    NoCommand { function: &'static str },

    #[error("{command} cannot be queued with redis.on_commit: it would block or change the state of the delivery connection")]
    NotQueueable { command: String },

    #[error("redis.wait_synced() needs READ COMMITTED: a snapshot held for the whole transaction never sees the outbox drain")]
    WaitNeedsReadCommitted,

    #[error("redis.wait_synced cannot read {what} ({reason}), so it cannot tell whether changes are still pending")]
    WaitCannotRead { what: String, reason: String },

    #[error("pg_redis.capture is 'wal' but wal_level is '{wal_level}': changes of {table} cannot be decoded from the write-ahead log")]
    WalCaptureUnavailable { table: String, wal_level: String },

    #[error("redis.capture() must be installed by redis.sync_table(), which passes the mapping id")]
    TriggerWithoutMapping,

    #[error("mapping {mapping_id} of this capture trigger no longer exists")]
    TriggerMappingGone { mapping_id: i64 },

    #[error("only a superuser can adopt a copied database: it decides which Redis keys this database writes")]
    AdoptNeedsSuperuser,

    #[error("key column \"{column}\" of table {table} can be NULL, so some rows would have no Redis key")]
    NullableKeyColumn { column: String, table: String },

    #[error("{what} needs READ COMMITTED: under REPEATABLE READ or SERIALIZABLE its snapshot could miss rows committed while it waited for the table lock")]
    NeedsReadCommitted { what: String },

    #[error("the key columns ({columns}) of table {table} are not unique, so two rows could share one Redis key")]
    KeyNotUnique { columns: String, table: String },

    #[error("pg_redis is not in shared_preload_libraries, so no background worker would deliver changes")]
    NotPreloaded,

    #[error("{table} is {what}; only tables (plain or partitioned) can be synced to Redis")]
    NotATable { table: String, what: &'static str },

    #[error("{table} is a temporary table; its rows are private to one session and cannot be synced")]
    TemporaryTable { table: String },

    #[error("table {table} has no primary key, so pg_redis cannot tell which key a row belongs to")]
    NoPrimaryKey { table: String },

    #[error("column \"{old}\" is part of the Redis key, and the key template would not work with the name \"{new}\": {reason}")]
    KeyColumnRename { old: String, new: String, reason: String },

    #[error("table {table} is not synced to Redis")]
    NotSynced { table: String },

    #[error("must be owner of table {table} to sync it to Redis")]
    NotTableOwner { table: String },

    #[error("the pg_redis extension is not installed in this database")]
    ExtensionNotInstalled,

    #[error("pg_redis's table of Redis commands cannot be read: {reason}")]
    CommandTableUnreadable { reason: String },

    /// A Redis command the current role may not send from SQL; `hint` says what to do.
    #[error("{function}: {message}")]
    CommandRefused { function: String, message: String, hint: String },

    #[error("{what} must be a JSON object, e.g. '{{\"name\": \"ann\"}}'")]
    NotAJsonObject { what: String },

    #[error("the reply of {what} is not valid UTF-8, so it cannot be SQL text")]
    ReplyNotUtf8 { what: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidTemplate { .. }
            | Error::KeyMismatch { .. }
            | Error::NullKeyColumn { .. }
            | Error::MissingKeyColumn { .. }
            | Error::InvalidValue { .. }
            | Error::AmbiguousTemplates { .. } => ErrorKind::InvalidInput,
            Error::UndefinedColumn { .. } => ErrorKind::UndefinedColumn,
            Error::UnmappedKey { .. } => ErrorKind::Unmapped,
            Error::MalformedRow { .. } => ErrorKind::Corrupt,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::Remote { .. } | Error::Sql { .. } => ErrorKind::Remote,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::NullCommandArgument { .. } => ErrorKind::NullArgument,
            Error::NoCommand { .. } => ErrorKind::InvalidInput,
            Error::NotQueueable { .. } => ErrorKind::Unsupported,
            Error::WaitNeedsReadCommitted => ErrorKind::NeedsReadCommitted,
            Error::WaitCannotRead { .. } => ErrorKind::NotReady,
            Error::TriggerWithoutMapping | Error::TriggerMappingGone { .. } => ErrorKind::BadTrigger,
            Error::AdoptNeedsSuperuser => ErrorKind::NotAllowed,
            Error::NullableKeyColumn { .. } | Error::KeyNotUnique { .. } | Error::NoPrimaryKey { .. } => {
                ErrorKind::InvalidInput
            }
            Error::NeedsReadCommitted { .. } => ErrorKind::NeedsReadCommitted,
            Error::NotPreloaded | Error::WalCaptureUnavailable { .. } => ErrorKind::NotReady,
            Error::NotATable { .. } | Error::TemporaryTable { .. } => ErrorKind::WrongObjectType,
            Error::KeyColumnRename { .. } => ErrorKind::InvalidName,
            Error::NotSynced { .. } => ErrorKind::Unmapped,
            Error::NotTableOwner { .. } | Error::CommandRefused { .. } => ErrorKind::NotAllowed,
            Error::ExtensionNotInstalled => ErrorKind::NotReady,
            Error::CommandTableUnreadable { .. } => ErrorKind::Internal,
            Error::NotAJsonObject { .. } => ErrorKind::InvalidInput,
            Error::ReplyNotUtf8 { .. } => ErrorKind::NotUtf8,
        }
    }

    /// What to do about it, when there is one clear thing (an SQL ERROR's HINT).
    pub fn hint(&self) -> Option<&str> {
        Some(match self {
            Error::ExtensionNotInstalled => "CREATE EXTENSION pg_redis",
            Error::CommandTableUnreadable { .. } => "reinstall pg_redis",
            Error::CommandRefused { hint, .. } => hint,
            Error::ReplyNotUtf8 { .. } => "store text in Redis, or read binary values with another client",
            Error::NotQueueable { .. } => "use redis.command() to run it now, on this session's own connection",
            Error::WaitNeedsReadCommitted => "call it outside the REPEATABLE READ or SERIALIZABLE transaction",
            Error::WaitCannotRead { .. } => {
                "pg_redis's tables must stay as CREATE EXTENSION made them; recreate the extension if they were altered"
            }
            Error::TriggerWithoutMapping => {
                "call SELECT redis.sync_table('your_table') instead of creating the trigger by hand"
            }
            Error::TriggerMappingGone { .. } => {
                "call redis.sync_table() again for this table, or redis.unsync_table() to drop its triggers"
            }
            Error::NullableKeyColumn { .. } => "declare the column NOT NULL, or build the key from NOT NULL columns",
            Error::NeedsReadCommitted { .. } => "call it in a READ COMMITTED transaction",
            Error::KeyNotUnique { .. } => "build the key from the primary key or from columns with a unique index",
            Error::NotPreloaded => "add pg_redis to shared_preload_libraries in postgresql.conf and restart PostgreSQL",
            Error::NotATable { .. } => "sync the table(s) it reads from instead",
            Error::NoPrimaryKey { .. } => {
                "add a primary key, or name the key columns: redis.sync_table('t', key => 't:{col}')"
            }
            Error::KeyColumnRename { .. } => "choose a column name without '{' or '}'",
            Error::NotSynced { .. } => "start with SELECT redis.sync_table(...)",
            Error::WalCaptureUnavailable { .. } => {
                "set wal_level = logical and restart PostgreSQL, or set pg_redis.capture = 'auto' to capture by trigger"
            }
            _ => return None,
        })
    }

    pub fn invalid_template(template: &str, reason: impl fmt::Display) -> Self {
        Error::InvalidTemplate { template: template.to_owned(), reason: reason.to_string() }
    }

    /// The SQLSTATE of an error PostgreSQL answered with.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Sql { sqlstate, .. } => Some(sqlstate),
            _ => None,
        }
    }

    /// A relation the statement names does not exist (dropped, renamed, or the extension is
    /// not installed).
    pub fn is_undefined_table(&self) -> bool {
        self.sqlstate() == Some(UNDEFINED_TABLE)
    }

    /// No connection to `server` is open (and none was opened for this request).
    pub fn not_connected(server: &'static str) -> Self {
        Error::Unavailable { server, reason: "no connection".into() }
    }

    pub fn invalid_value(what: &'static str, value: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::InvalidValue { what, value: value.to_string(), reason: reason.to_string() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of a caught panic (`catch_unwind`'s payload): both halves report panics of their
/// threads and callbacks as errors instead of dying.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::panic::catch_unwind;

    fn caught(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let p = catch_unwind(f).unwrap_err();
        std::panic::set_hook(hook);
        panic_message(&*p)
    }

    #[test]
    fn panic_messages() {
        assert_eq!(caught(|| panic!("boom")), "boom");
        assert_eq!(caught(|| panic!("boom {}", 7)), "boom 7");
        assert_eq!(caught(|| std::panic::panic_any(7u8)), "unknown panic");
    }

    #[test]
    fn sql_errors_carry_their_sqlstate() {
        let e = Error::Sql { sqlstate: "42P01".into(), message: "relation \"t\" does not exist".into() };
        assert!(e.is_undefined_table());
        assert_eq!(e.to_string(), "PostgreSQL replied with an error: relation \"t\" does not exist (42P01)");
        assert_eq!(e.kind(), ErrorKind::Remote);
        // The code decides, not the text.
        let other = Error::Sql { sqlstate: "42501".into(), message: "mentions (42P01)".into() };
        assert!(!other.is_undefined_table());
        assert!(!Error::Remote { server: "PostgreSQL", message: "x (42P01)".into() }.is_undefined_table());
    }

    #[test]
    fn sql_surface_messages_kinds_and_hints() {
        let cases = [
            (
                Error::NullCommandArgument { function: "redis.on_commit", position: 2 },
                "argument 2 of redis.on_commit is NULL; Redis commands take strings",
                ErrorKind::NullArgument,
                false,
            ),
            (
                Error::NoCommand { function: "redis.on_commit" },
                "redis.on_commit needs a command, e.g. redis.on_commit('DEL', 'report:today')",
                ErrorKind::InvalidInput,
                false,
            ),
            (
                Error::NotQueueable { command: "BLPOP".into() },
                "BLPOP cannot be queued with redis.on_commit: it would block or change the state of the delivery connection",
                ErrorKind::Unsupported,
                true,
            ),
            (
                Error::WaitCannotRead { what: "redis.outbox".into(), reason: "no value".into() },
                "redis.wait_synced cannot read redis.outbox (no value), so it cannot tell whether changes are still pending",
                ErrorKind::NotReady,
                true,
            ),
            (
                Error::TriggerMappingGone { mapping_id: 7 },
                "mapping 7 of this capture trigger no longer exists",
                ErrorKind::BadTrigger,
                true,
            ),
            (
                Error::AdoptNeedsSuperuser,
                "only a superuser can adopt a copied database: it decides which Redis keys this database writes",
                ErrorKind::NotAllowed,
                false,
            ),
        ];
        for (e, message, kind, hinted) in cases {
            assert_eq!((e.to_string().as_str(), e.kind(), e.hint().is_some()), (message, kind, hinted));
        }
        assert_eq!(Error::WaitNeedsReadCommitted.kind(), ErrorKind::NeedsReadCommitted);
        let sync_cases = [
            (
                Error::NullableKeyColumn { column: "id".into(), table: "t".into() },
                "key column \"id\" of table t can be NULL, so some rows would have no Redis key",
                ErrorKind::InvalidInput,
            ),
            (
                Error::NeedsReadCommitted { what: "redis.sync_table()".into() },
                "redis.sync_table() needs READ COMMITTED: under REPEATABLE READ or SERIALIZABLE its snapshot could miss rows committed while it waited for the table lock",
                ErrorKind::NeedsReadCommitted,
            ),
            (
                Error::NotATable { table: "v".into(), what: "a view" },
                "v is a view; only tables (plain or partitioned) can be synced to Redis",
                ErrorKind::WrongObjectType,
            ),
            (
                Error::KeyColumnRename { old: "a".into(), new: "b}".into(), reason: "r".into() },
                "column \"a\" is part of the Redis key, and the key template would not work with the name \"b}\": r",
                ErrorKind::InvalidName,
            ),
            (Error::NotSynced { table: "s.t".into() }, "table s.t is not synced to Redis", ErrorKind::Unmapped),
        ];
        for (e, message, kind) in sync_cases {
            assert_eq!((e.to_string().as_str(), e.kind(), e.hint().is_some()), (message, kind, true));
        }
        assert_eq!(Error::TemporaryTable { table: "t".into() }.hint(), None);
        assert_eq!(
            Error::NoPrimaryKey { table: "t".into() }.hint(),
            Some("add a primary key, or name the key columns: redis.sync_table('t', key => 't:{col}')")
        );
        assert_eq!(Error::TriggerWithoutMapping.kind(), ErrorKind::BadTrigger);
        assert_eq!(Error::Busy { what: "x".into() }.hint(), None);
        let e = Error::NotAJsonObject { what: "redis.hset's value".into() };
        assert_eq!(e.to_string(), r#"redis.hset's value must be a JSON object, e.g. '{"name": "ann"}'"#);
        assert_eq!((e.kind(), e.hint()), (ErrorKind::InvalidInput, None));
        let e = Error::CommandRefused { function: "redis.command".into(), message: "m".into(), hint: "h".into() };
        assert_eq!(
            (e.to_string().as_str(), e.kind(), e.hint()),
            ("redis.command: m", ErrorKind::NotAllowed, Some("h"))
        );
        let e = Error::NotTableOwner { table: "t".into() };
        assert_eq!(
            (e.to_string().as_str(), e.kind(), e.hint()),
            ("must be owner of table t to sync it to Redis", ErrorKind::NotAllowed, None)
        );
        assert_eq!(
            (Error::ExtensionNotInstalled.kind(), Error::ExtensionNotInstalled.hint()),
            (ErrorKind::NotReady, Some("CREATE EXTENSION pg_redis"))
        );
        let e = Error::CommandTableUnreadable { reason: "r".into() };
        assert_eq!(
            (e.to_string().as_str(), e.kind()),
            ("pg_redis's table of Redis commands cannot be read: r", ErrorKind::Internal)
        );
        let e = Error::ReplyNotUtf8 { what: "GET".into() };
        assert_eq!(
            (e.to_string().as_str(), e.kind()),
            ("the reply of GET is not valid UTF-8, so it cannot be SQL text", ErrorKind::NotUtf8)
        );
    }

    #[test]
    fn not_connected_reads_as_before() {
        assert_eq!(Error::not_connected("Redis").to_string(), "Redis is unavailable: no connection");
        assert_eq!(Error::not_connected("PostgreSQL").kind(), ErrorKind::Unavailable);
    }
}

//! The boundary between pg_redis errors and SQL: every failure becomes an ERROR with a real
//! SQLSTATE and a message naming what was wrong.

use pg_redis_shared::{Error, ErrorKind};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn sqlstate(e: &Error) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match e.kind() {
        ErrorKind::InvalidInput => ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
        ErrorKind::Unmapped => ERRCODE_UNDEFINED_OBJECT,
        ErrorKind::Unavailable => ERRCODE_CONNECTION_FAILURE,
        ErrorKind::Remote => ERRCODE_EXTERNAL_ROUTINE_EXCEPTION,
        ErrorKind::Timeout => ERRCODE_QUERY_CANCELED,
        ErrorKind::Busy => ERRCODE_INSUFFICIENT_RESOURCES,
        ErrorKind::Corrupt => ERRCODE_DATA_CORRUPTED,
        ErrorKind::NullArgument => ERRCODE_NULL_VALUE_NOT_ALLOWED,
        ErrorKind::Unsupported => ERRCODE_FEATURE_NOT_SUPPORTED,
        ErrorKind::NeedsReadCommitted => ERRCODE_ACTIVE_SQL_TRANSACTION,
        ErrorKind::NotReady => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorKind::BadTrigger => ERRCODE_TRIGGERED_ACTION_EXCEPTION,
        ErrorKind::NotAllowed => ERRCODE_INSUFFICIENT_PRIVILEGE,
        ErrorKind::WrongObjectType => ERRCODE_WRONG_OBJECT_TYPE,
        ErrorKind::InvalidName => ERRCODE_INVALID_NAME,
        ErrorKind::Internal => ERRCODE_INTERNAL_ERROR,
        ErrorKind::NotUtf8 => ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
    }
}

/// Raises `e` as an SQL ERROR, with its hint if it has one (does not return).
pub fn raise(e: Error) -> ! {
    let mut r = ErrorReport::new(sqlstate(&e), e.to_string(), "pg_redis");
    if let Some(h) = e.hint() {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return") // ok: report(ERROR) unwinds
}

pub trait OrRaise<T> {
    /// The value, or the error raised as an SQL ERROR.
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Error> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

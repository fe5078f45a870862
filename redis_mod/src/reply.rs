//! The boundary between pg_redis errors and Redis replies: each kind gets its own prefix, so
//! clients can tell "try later" (`BUSY`, `TIMEOUT`, `PGUNAVAILABLE`) from "fix your request"
//! (`ERR`).

use pg_redis_shared::{Error, ErrorKind};
use redis_module::RedisError;

pub fn prefix(e: &Error) -> &'static str {
    match e.kind() {
        ErrorKind::Unavailable => "PGUNAVAILABLE",
        ErrorKind::Timeout => "TIMEOUT",
        ErrorKind::Busy => "BUSY",
        ErrorKind::InvalidInput
        | ErrorKind::UndefinedColumn
        | ErrorKind::Unmapped
        | ErrorKind::Remote
        | ErrorKind::Corrupt
        | ErrorKind::NullArgument
        | ErrorKind::Unsupported
        | ErrorKind::NeedsReadCommitted
        | ErrorKind::NotReady
        | ErrorKind::BadTrigger
        | ErrorKind::NotAllowed
        | ErrorKind::WrongObjectType
        | ErrorKind::InvalidName
        | ErrorKind::Internal
        | ErrorKind::NotUtf8 => "ERR",
    }
}

pub fn to_redis(e: &Error) -> RedisError {
    RedisError::String(format!("{} {}", prefix(e), sanitize(&e.to_string())))
}

/// Error replies are one line of ASCII: Redis mangles other bytes, so escape them.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\r' | '\n' => out.push(' '),
            ' '..='~' => out.push(ch),
            other => out.push_str(&format!("\\u{{{:x}}}", other as u32)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_ascii() {
        let e = Error::Busy { what: "queue full".into() };
        assert!(matches!(to_redis(&e), RedisError::String(s) if s == "BUSY queue full"));
        assert_eq!(sanitize("ké\ny"), "k\\u{e9} y");
    }
}

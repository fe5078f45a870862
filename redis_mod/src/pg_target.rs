//! Where and how the pool connects to PostgreSQL, read from `pg_url`: the client
//! configuration, the TLS mode (libpq's `sslmode`, including `verify-ca` and `verify-full`,
//! which the client library does not parse itself), and whether the URL carries a password.

use pg_redis_shared::redact::{has_password, redact_url};
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// libpq's `sslmode` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// Encrypt if the server can, without verifying it (libpq's default).
    Prefer,
    /// Encrypt, without verifying the server (unless a CA file is set: then as `verify-ca`).
    Require,
    /// Encrypt; the server's certificate must chain to the CA file.
    VerifyCa,
    /// Encrypt; the certificate must chain to the CA file and name the host connected to.
    VerifyFull,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: TlsMode,
}

/// Parses `pg_url` (URL or key/value form). `verify-ca` / `verify-full` are read here and
/// handed to the client as `require` (it then insists on TLS; the verification is ours).
pub fn parse(url: &str) -> Result<Target, String> {
    let (text, verify) = take_verify_mode(url);
    let config: tokio_postgres::Config =
        text.parse().map_err(|e| format!("\"{}\" is not a PostgreSQL connection string: {e}", redact_url(url)))?;
    let tls = match (verify, config.get_ssl_mode()) {
        (Some(mode), _) => mode,
        (None, SslMode::Disable) => TlsMode::Disable,
        (None, SslMode::Require) => TlsMode::Require,
        (None, _) => TlsMode::Prefer,
    };
    Ok(Target { config, tls })
}

/// Whether `url` carries a password in any form: as the PostgreSQL client reads it, or as
/// the redaction rules see it (which also catch strings the client would refuse).
pub fn carries_password(url: &str) -> bool {
    has_password(url) || parse(url).is_ok_and(|t| t.config.get_password().is_some())
}

/// Rewrites `sslmode=verify-ca|verify-full` (URL parameter or key/value pair) to
/// `sslmode=require`, returning the mode asked for.
fn take_verify_mode(url: &str) -> (String, Option<TlsMode>) {
    let mut out = String::with_capacity(url.len());
    let mut mode = None;
    let mut rest = url;
    while let Some(at) = rest.find("sslmode") {
        let (head, tail) = rest.split_at(at + "sslmode".len());
        out.push_str(head);
        let after_key = tail.trim_start();
        let Some(value) = after_key.strip_prefix('=') else {
            rest = tail;
            continue;
        };
        let value = value.trim_start();
        let end = value.find(|c: char| c.is_whitespace() || c == '&').unwrap_or(value.len());
        let found = match &value[..end] {
            "verify-full" => Some(TlsMode::VerifyFull),
            "verify-ca" => Some(TlsMode::VerifyCa),
            _ => None,
        };
        match found {
            Some(m) => {
                mode = Some(m);
                out.push_str(&tail[..tail.len() - value.len()]);
                out.push_str("require");
                rest = &value[end..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    (out, mode)
}

/// How long a pool connection may stay silent before it counts as dead, split into TCP
/// keepalive timings (probes start after a third of it, one a second after that).
pub fn keepalive_timings(dead_peer: Duration) -> (Duration, Duration, u32) {
    let idle = (dead_peer / 3).max(Duration::from_secs(1));
    let interval = Duration::from_secs(1);
    let retries = ((dead_peer.saturating_sub(idle)).as_secs() as u32).max(1);
    (idle, interval, retries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_are_ours() -> Result<(), String> {
        let t = parse("postgresql://u@h/db?sslmode=verify-full&application_name=x")?;
        assert_eq!(t.tls, TlsMode::VerifyFull);
        assert_eq!(t.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(t.config.get_application_name(), Some("x"));
        let t = parse("host=h sslmode = verify-ca dbname=d")?;
        assert_eq!(t.tls, TlsMode::VerifyCa);
        assert_eq!(t.config.get_dbname(), Some("d"));
        assert_eq!(parse("postgresql://u@h/db?sslmode=require")?.tls, TlsMode::Require);
        assert_eq!(parse("postgresql://u@h/db?sslmode=disable")?.tls, TlsMode::Disable);
        assert_eq!(parse("postgresql://u@h/db")?.tls, TlsMode::Prefer);
        assert!(parse("postgresql://u@h/db?sslmode=verify-half").is_err());
        Ok(())
    }

    #[test]
    fn passwords_in_every_form() {
        for url in [
            "postgresql://u:pw@h/db",
            "postgresql://u:p/w@h/db",
            "postgresql://u:p?w#x@h/db",
            "postgresql://u@h/db?password=pw",
            "dbname=passwords password=x",
            "host=h password='a b'",
            "postgresql://u:@h/db",
        ] {
            assert!(carries_password(url), "{url}");
        }
        for url in ["postgresql://u@h/db", "dbname=passwords host=h", "postgresql://u@h/db?sslmode=verify-full"] {
            assert!(!carries_password(url), "{url}");
        }
    }

    #[test]
    fn keepalives_fit_the_bound() {
        let (idle, interval, retries) = keepalive_timings(Duration::from_secs(6));
        assert_eq!((idle, interval, retries), (Duration::from_secs(2), Duration::from_secs(1), 4));
        assert!(idle + interval * retries <= Duration::from_secs(6));
        let (idle, _, retries) = keepalive_timings(Duration::from_millis(1500));
        assert_eq!((idle, retries), (Duration::from_secs(1), 1));
    }
}

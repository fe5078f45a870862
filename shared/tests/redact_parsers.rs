//! Redaction agrees with the parsers that read connection strings: whenever the `postgres`
//! crate's `Config` or the `redis` crate's `IntoConnectionInfo` accepts a string and finds a
//! password in it, the password detector says so and the redacted text keeps no part of it.
//!
//! Passwords are drawn from upper-case letters (each used once, and nowhere else in the
//! generated strings) and the characters that end parts of a URL, so "no part of it" is checked
//! exactly: no letter of the password the parser read survives redaction.

use pg_redis_shared::redact::{has_password, redact_url};
use proptest::prelude::*;

/// A password: upper-case letters mixed with separators, at least one letter. Each letter is
/// used once, so a letter of the password found in the redacted text is a leak, not chance.
fn password() -> impl Strategy<Value = String> {
    let separator = prop_oneof![
        Just('/'),
        Just('?'),
        Just('#'),
        Just('@'),
        Just(':'),
        Just('&'),
        Just('='),
        Just('%'),
        Just(' '),
        Just('\''),
        Just('\\')
    ];
    proptest::collection::vec(proptest::option::weighted(0.4, separator), 1..14).prop_map(|tokens| {
        let mut letters = 'A'..='Z';
        let mut pw: String = tokens.into_iter().map(|t| t.unwrap_or_else(|| letters.next().unwrap_or('Z'))).collect();
        if !pw.chars().any(|c| c.is_ascii_uppercase()) {
            pw.insert(0, 'Z');
        }
        pw
    })
}

/// How a password is written into a URL: raw, or percent-encoded (lower-case hex where the
/// byte is not a letter, so the only upper-case letters remain the password's own).
fn url_encoding() -> impl Strategy<Value = bool> {
    any::<bool>()
}

fn encode(pw: &str, percent: bool) -> String {
    if !percent {
        return pw.to_owned();
    }
    pw.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02x}") }).collect()
}

fn lower_word() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,6}"
}

/// No letter of the password the parser read survives redaction.
fn assert_hidden(original: &str, pw: &str) {
    let redacted = redact_url(original);
    assert!(has_password(original), "the detector misses the password {pw:?} of {original:?}");
    assert!(
        !redacted.chars().any(|c| c.is_ascii_uppercase() && pw.contains(c)),
        "{original:?} redacts to {redacted:?}, which keeps part of {pw:?}"
    );
}

fn postgres_password(s: &str) -> Option<String> {
    s.parse::<postgres::Config>().ok()?.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
}

fn redis_password(s: &str) -> Option<String> {
    redis::IntoConnectionInfo::into_connection_info(s).ok()?.redis_settings().password().map(str::to_owned)
}

/// Checks one string against a parser. Generated strings (`marked`) have upper-case letters
/// only in their password; for any string, the redacted text, if the parser still reads it,
/// has no password but the mask.
fn check(s: &str, parse: fn(&str) -> Option<String>, marked: bool) {
    let Some(pw) = parse(s) else { return };
    assert!(has_password(s), "the detector misses the password {pw:?} of {s:?}");
    if marked {
        assert_hidden(s, &pw);
    }
    let redacted = redact_url(s);
    if let Some(left) = parse(&redacted) {
        assert!(left.chars().all(|c| c == '*'), "{s:?} redacts to {redacted:?}, which still has the password {left:?}");
    }
}

fn check_postgres(s: &str) {
    check(s, postgres_password, true);
}

fn check_redis(s: &str) {
    check(s, redis_password, true);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn postgres_urls(user in lower_word(), pw in password(), pct in url_encoding(), host in lower_word(), db in lower_word(),
                     scheme in prop_oneof![Just("postgres"), Just("postgresql")], in_query in any::<bool>(), extra in proptest::option::of(lower_word())) {
        let pw_text = encode(&pw, pct);
        let extra = extra.map(|e| format!("application_name={e}&")).unwrap_or_default();
        let s = if in_query {
            format!("{scheme}://{user}@{host}:5432/{db}?{extra}password={pw_text}")
        } else {
            format!("{scheme}://{user}:{pw_text}@{host}:5432/{db}?{extra}sslmode=disable")
        };
        check_postgres(&s);
    }

    #[test]
    fn postgres_key_values(pw in pw_kv(), db in lower_word(), before in any::<bool>(), spaced in any::<bool>()) {
        let eq = if spaced { " = " } else { "=" };
        let s = if before {
            format!("password{eq}{pw} dbname={db} host=localhost")
        } else {
            format!("dbname={db}passwords host=localhost password{eq}{pw}")
        };
        check_postgres(&s);
    }

    #[test]
    fn redis_urls(user in proptest::option::of(lower_word()), pw in password(), pct in url_encoding(), host in lower_word(),
                  scheme in prop_oneof![Just("redis"), Just("rediss"), Just("valkey")]) {
        let s = format!("{scheme}://{}:{}@{host}:6379/0", user.unwrap_or_default(), encode(&pw, pct));
        check_redis(&s);
        check_postgres(&s);
    }

    #[test]
    fn redis_unix_urls(pw in password(), pct in url_encoding(), db in 0u8..16, slashes in any::<bool>(),
                       scheme in prop_oneof![Just("unix"), Just("redis+unix"), Just("valkey+unix")], first in any::<bool>()) {
        let pw_text = encode(&pw, pct).replace('&', "%26").replace('#', "%23");
        let sep = if slashes { "//" } else { "" };
        let s = if first {
            format!("{scheme}:{sep}/tmp/redis.sock?pass={pw_text}&db={db}")
        } else {
            format!("{scheme}:{sep}/tmp/redis.sock?db={db}&pass={pw_text}")
        };
        check_redis(&s);
    }

    /// Arbitrary strings: whatever either parser reads as a password is found and hidden.
    #[test]
    fn arbitrary_strings(s in "[a-zA-Z0-9:/?#@&=%+'\\\\ .\t_-]{0,40}") {
        for prefix in ["", "postgresql://", "redis://", "unix:///s?", "password=", "host=h password"] {
            let s = format!("{prefix}{s}");
            check(&s, postgres_password, false);
            check(&s, redis_password, false);
        }
    }

    /// Separators and password keys in any order after every scheme's opening: where the
    /// masks of one rule and another meet, the redacted text still reads as masks only.
    #[test]
    fn separator_soup(tokens in proptest::collection::vec(prop_oneof![
                          Just(":"), Just("/"), Just("?"), Just("&"), Just("="), Just("@"), Just("#"), Just("%70"), Just("+"),
                          Just("\t"), Just(" "), Just("pass"), Just("password"), Just("Q"), Just("x")], 1..10),
                      prefix in prop_oneof![Just("unix:"), Just("unix:///s"), Just("redis+unix:///s?"), Just("redis+unix://"),
                          Just("redis://"), Just("postgresql://"), Just("unix:/s?")]) {
        let s = format!("{prefix}{}", tokens.concat());
        check(&s, postgres_password, false);
        check(&s, redis_password, false);
    }
}

/// A key/value password, written as libpq wants it: quoted (with `\'` and `\\`) or plain
/// (white space and backslashes escaped).
fn pw_kv() -> impl Strategy<Value = String> {
    (password(), any::<bool>()).prop_map(|(pw, quoted)| {
        if quoted {
            format!("'{}'", pw.replace('\\', "\\\\").replace('\'', "\\'"))
        } else {
            pw.chars()
                .flat_map(|c| if c.is_whitespace() || c == '\\' || c == '\'' { vec!['\\', c] } else { vec![c] })
                .collect()
        }
    })
}

#[test]
fn examples_from_the_field() {
    for s in [
        "postgresql://app:pa/ss?w#rd@db.example:5432/app",
        "postgresql://app:S3cr%2Ft@db/app",
        "dbname=passwords password=Secret host=db",
        "host=db password = 'Se cret' user=app",
        "postgresql://app@db/app?password=Secret",
    ] {
        check_postgres(s);
        assert!(has_password(s), "{s}");
        assert!(!redact_url(s).contains("ecret") && !redact_url(s).contains("pa/ss"), "{}", redact_url(s));
    }
    for s in [
        "redis://:Se%2Fcret@127.0.0.1:6379/0",
        "redis+unix:///run/redis.sock?pass=Se%2Fcret&db=1",
        "unix:/run/redis.sock?db=1&pass=Secret",
    ] {
        check_redis(s);
        assert!(has_password(s), "{s}");
        assert!(!redact_url(s).contains("cret"), "{}", redact_url(s));
    }
}

//! Connection strings without their secrets, for messages, logs and settings shown to people.
//!
//! The rules follow the parsers that read these strings, and lean towards hiding more when the
//! two disagree or the string does not parse at all (its text still ends up in an error):
//! - PostgreSQL URLs (`postgres` crate, like libpq): the credentials run up to the *first* `@`
//!   of the whole string, so a raw `/`, `?` or `#` in a password is still part of it; the
//!   password starts after the first `:` of the credentials. Query parameters `password=`.
//! - Redis URLs (`redis` crate, WHATWG URL rules): the credentials end at the *last* `@` before
//!   the first `/`, `?` or `#`; unix-socket URLs (`unix:`, `redis+unix:`) carry `pass=` in the
//!   query, percent- or `+`-encoded.
//! - libpq key/value strings (`host=h password='x y'`): keyword, `=`, a plain value (backslash
//!   escapes) or a single-quoted one.

use std::ops::Range;

/// What replaces a secret.
const MASK: &str = "****";

/// Replaces every password of a URL (`scheme://user:secret@host/…`, `…?password=secret`,
/// `unix:/path?pass=secret`) or of a libpq key/value string (`password=secret`) with `****`.
/// Anything else is returned unchanged.
pub fn redact_url(s: &str) -> String {
    // Masking can join what a separator kept apart (`?pass==:&@` hides `=:&` as one span, and
    // `****@` then reads as the password), so redact again until the text reads only masks.
    let mut text = redact_once(s);
    for _ in 0..4 {
        let again = redact_once(&text);
        if again == text {
            break;
        }
        text = again;
    }
    text
}

fn redact_once(s: &str) -> String {
    let spans = secret_spans(s);
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for span in spans {
        // An empty password (`?pass&…`, `password=''`) has nothing to hide: the text stays.
        if span.is_empty() {
            continue;
        }
        out.push_str(&s[at..span.start]);
        out.push_str(MASK);
        at = span.end;
    }
    out.push_str(&s[at..]);
    out
}

/// Whether `s` carries a password in any form the PostgreSQL or Redis clients would read
/// (an empty one included).
pub fn has_password(s: &str) -> bool {
    !secret_spans(s).is_empty()
}

/// Byte ranges of the secrets in `s`, in order, not overlapping.
fn secret_spans(s: &str) -> Vec<Range<usize>> {
    let mut spans = match url_rest(s) {
        Some(rest) => url_secrets(s, rest),
        None => key_value_secrets(s),
    };
    spans.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for r in spans {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// Where the text after `scheme:` starts, when `s` is a URL. URL parsers skip leading blanks
/// and control characters and read the scheme case-insensitively; a key/value string never
/// has a `:` in its first keyword.
fn url_rest(s: &str) -> Option<usize> {
    let start = s.len() - s.trim_start_matches(|c: char| c <= ' ').len();
    // WHATWG parsers drop tabs and newlines anywhere, the scheme included.
    let mut scheme = s[start..].char_indices().filter(|(_, c)| !is_dropped(*c));
    let (_, first) = scheme.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    for (i, c) in scheme {
        match c {
            ':' => return Some(start + i + 1),
            c if c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.') => {}
            _ => return None,
        }
    }
    None
}

/// Characters WHATWG URL parsing removes before it reads anything.
fn is_dropped(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r')
}

/// `s` past a leading `//` (tabs and newlines around the slashes ignored), if it has one.
fn strip_slashes(s: &str) -> Option<&str> {
    let s = s.trim_start_matches(is_dropped).strip_prefix('/')?;
    s.trim_start_matches(is_dropped).strip_prefix('/')
}

fn url_secrets(s: &str, rest: usize) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut params_from = rest;
    if let Some(after) = strip_slashes(&s[rest..]) {
        let auth = s.len() - after.len();
        // PostgreSQL reads the credentials up to the first `@` anywhere, WHATWG up to the last
        // `@` of the authority. Once a password has started (a `:` before the first `@`), it
        // is hidden up to the last `@` of the string: a raw `@`, `/`, `?` or `#` in it moves
        // the boundary for one parser or the other, and the text then ends up in an error.
        if let Some(first_at) = after.find('@') {
            let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
            if let Some(colon) = after[..first_at].find(':') {
                let last_at = after.rfind('@').unwrap_or(first_at);
                spans.push(auth + colon + 1..auth + last_at);
            } else if let Some(last_at) = after[..authority_end].rfind('@') {
                if let Some(colon) = after[first_at..last_at].find(':') {
                    spans.push(auth + first_at + colon + 1..auth + last_at);
                }
            }
        }
        params_from = auth;
    }
    // Query parameters: every `?` or `&` may start one for some parser (a `?` inside a
    // password, a PostgreSQL URL's query after an `@`, WHATWG's after the authority).
    for (i, c) in s[params_from..].char_indices() {
        if c != '?' && c != '&' {
            continue;
        }
        let key_start = params_from + i + 1;
        // WHATWG ends the query at `#`; a key cut there is bare.
        let key_len = s[key_start..].find(['=', '&', '#']).unwrap_or(s.len() - key_start);
        if !is_password_key(&s[key_start..key_start + key_len]) {
            continue;
        }
        if !s[key_start + key_len..].starts_with('=') {
            // A bare key is an empty password to WHATWG query parsing.
            spans.push(key_start + key_len..key_start + key_len);
            continue;
        }
        let value_start = key_start + key_len + 1;
        let value_end = s[value_start..].find('&').map_or(s.len(), |e| value_start + e);
        spans.push(value_start..value_end);
    }
    spans
}

/// `password` (libpq, PostgreSQL URLs) or `pass` (Redis unix-socket URLs), however encoded.
fn is_password_key(raw: &str) -> bool {
    // WHATWG parsers drop tabs and newlines anywhere; form encoding reads `+` as a space.
    let cleaned: String = raw.chars().filter(|c| !is_dropped(*c)).collect();
    let decoded = percent_decode(&cleaned).replace('+', " ");
    // WHATWG also trims C0 controls and spaces from the end of the whole input.
    let key = decoded.trim_matches(|c: char| c <= ' ').to_ascii_lowercase();
    key == "password" || key == "pass"
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq key/value form: `keyword = value` pairs separated by white space. A string that stops
/// following the grammar hides everything after the first `password` past that point.
fn key_value_secrets(s: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut it = s.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(key_start, _)) = it.peek() else { break };
        while it.next_if(|(_, c)| !c.is_whitespace() && *c != '=').is_some() {}
        let key_end = it.peek().map_or(s.len(), |(i, _)| *i);
        let is_password = s[key_start..key_end].eq_ignore_ascii_case("password");
        skip_ws(&mut it);
        if it.next_if(|(_, c)| *c == '=').is_none() {
            hide_rest_after_password(s, key_start, &mut spans);
            break;
        }
        skip_ws(&mut it);
        let Some(&(value_start, first)) = it.peek() else {
            hide_rest_after_password(s, key_start, &mut spans);
            break;
        };
        let mut terminated = true;
        if first == '\'' {
            it.next();
            terminated = false;
            while let Some((_, c)) = it.next() {
                match c {
                    '\\' => {
                        it.next();
                    }
                    '\'' => {
                        terminated = true;
                        break;
                    }
                    _ => {}
                }
            }
        } else {
            while let Some(&(_, c)) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                it.next();
                if c == '\\' {
                    it.next();
                }
            }
        }
        let value_end = it.peek().map_or(s.len(), |(i, _)| *i);
        if is_password {
            // A quoted value keeps its quotes, so the redacted string reads the same way.
            let quoted = first == '\'' && terminated;
            spans.push(if quoted { value_start + 1..value_end - 1 } else { value_start..value_end });
        }
        if !terminated {
            break;
        }
    }
    spans
}

/// After a grammar error at `from`: hide from the first `password` keyword on, to the end.
fn hide_rest_after_password(s: &str, from: usize, spans: &mut Vec<Range<usize>>) {
    if let Some(p) = s[from..].to_ascii_lowercase().find("password") {
        let start = from + p + "password".len();
        if start < s.len() {
            spans.push(start..s.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{has_password, redact_url};

    #[test]
    fn urls() {
        assert_eq!(redact_url("redis://:s3cret@127.0.0.1:6390/0"), "redis://:****@127.0.0.1:6390/0");
        assert_eq!(redact_url("rediss://app:p%40ss@h:1"), "rediss://app:****@h:1");
        assert_eq!(
            redact_url("postgresql://u:pw@h:5/db?sslmode=require"),
            "postgresql://u:****@h:5/db?sslmode=require"
        );
        assert_eq!(redact_url("postgresql://u@h/db?password=pw&x=1"), "postgresql://u@h/db?password=****&x=1");
        assert_eq!(redact_url("redis://127.0.0.1:6390"), "redis://127.0.0.1:6390");
        assert!(!has_password("redis://127.0.0.1:6390/0#insecure"));
        assert!(!has_password("postgresql://u@h:5/db?sslmode=require"));
    }

    #[test]
    fn raw_separators_in_passwords() {
        // PostgreSQL reads the credentials up to the first `@`, whatever comes before.
        assert_eq!(redact_url("postgresql://u:pa/ss?x#y@h:5/db"), "postgresql://u:****@h:5/db");
        // WHATWG reads them up to the last `@` of the authority.
        assert_eq!(redact_url("redis://u:p@ss@h:1/0"), "redis://u:****@h:1/0");
        assert_eq!(
            redact_url("postgresql://h/db?application_name=a:b@c"),
            "postgresql://h/db?application_name=a:****@c"
        );
        assert_eq!(redact_url("redis://:p/q?r#s@t@h:1/0"), "redis://:****@h:1/0");
        assert_eq!(redact_url("redis://u@x:p@h:1/0"), "redis://u@x:****@h:1/0");
        assert!(!has_password("postgresql://u@h:5432/db?application_name=a@b"));
    }

    #[test]
    fn query_passwords() {
        assert_eq!(redact_url("unix:///tmp/r.sock?db=1&pass=s%26x&user=u"), "unix:///tmp/r.sock?db=1&pass=****&user=u");
        assert_eq!(redact_url("redis+unix:///tmp/r.sock?pass=a#b"), "redis+unix:///tmp/r.sock?pass=****");
        assert_eq!(redact_url("unix:/tmp/r.sock?%70ass=x"), "unix:/tmp/r.sock?%70ass=****");
        assert_eq!(redact_url("postgresql://h/db?pass%77ord=x"), "postgresql://h/db?pass%77ord=****");
        assert_eq!(redact_url("REDIS+UNIX:///s?pa\tss=x"), "REDIS+UNIX:///s?pa\tss=****");
        assert!(has_password("redis+unix:///s?db=0&pass&x=1"), "a bare key is an empty password");
        assert!(has_password("redis+unix:///s?pass#=x"), "the fragment cuts the key");
        assert!(has_password("unix:/s?pass\0"), "trailing controls are trimmed");
        assert_eq!(redact_url("redis+uni\tx:///s?p\tass=x"), "redis+uni\tx:///s?p\tass=****");
        assert_eq!(redact_url("redis:/\t/:pw@h"), "redis:/\t/:****@h");
        assert_eq!(redact_url("redis+unix:///s?db=0&pass&x=1"), "redis+unix:///s?db=0&pass&x=1");
        // A URL password's span and a query password's span meet: the mask stands alone.
        assert_eq!(redact_url("redis+unix:///s?pass==:&@&&"), "redis+unix:///s?pass=****&&");
    }

    #[test]
    fn key_values() {
        assert_eq!(redact_url("host=h password=pw user=u"), "host=h password=**** user=u");
        assert_eq!(redact_url("host=h password = 'p w\\'x' user=u"), "host=h password = '****' user=u");
        assert_eq!(redact_url("dbname=passwords password=x"), "dbname=passwords password=****");
        assert_eq!(redact_url("password=a\\ b host=h password=c"), "password=**** host=h password=****");
        assert_eq!(redact_url("application_name='password=no' host=h"), "application_name='password=no' host=h");
        assert_eq!(redact_url("host=h"), "host=h");
        assert!(!has_password("dbname=passwords"));
        // Broken strings hide everything after a password keyword.
        assert_eq!(redact_url("host=h password='unterminated x"), "host=h password=****");
        assert_eq!(redact_url("host=h password x"), "host=h password****");
    }
}

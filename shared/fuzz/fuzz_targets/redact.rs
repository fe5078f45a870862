//! Redaction against the real parsers: whenever the `postgres` or `redis` crate reads a
//! password from the input, the detector finds it and the redacted text, if still readable,
//! carries no password but the mask.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_redis_shared::redact::{has_password, redact_url};

fn postgres_password(s: &str) -> Option<String> {
    s.parse::<postgres::Config>().ok()?.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
}

fn redis_password(s: &str) -> Option<String> {
    redis::IntoConnectionInfo::into_connection_info(s).ok()?.redis_settings().password().map(str::to_owned)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let redacted = redact_url(text);
    for parse in [postgres_password, redis_password] {
        if let Some(pw) = parse(text) {
            assert!(has_password(text), "password {pw:?} of {text:?} not detected");
            if let Some(left) = parse(&redacted) {
                assert!(left.chars().all(|c| c == '*'), "{text:?} redacts to {redacted:?}, password {left:?} left");
            }
        }
    }
});

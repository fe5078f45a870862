//! Key templates: parsing any template, and parsing/rendering keys with any values, never
//! panics; a key that parses renders back to itself; values render and parse back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_redis_shared::KeyTemplate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, rest) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(t) = KeyTemplate::parse(template) {
        if let Ok(values) = t.parse_key(rest) {
            assert_eq!(t.render_values(&values).ok().as_deref(), Some(rest), "a parsed key renders back to itself");
        }
        let n = t.columns().count();
        let values: Vec<&str> = rest.split('\u{1}').chain(std::iter::repeat("")).take(n).collect();
        if let Ok(key) = t.render_values(&values) {
            assert_eq!(
                t.parse_key(&key).ok(),
                Some(values.iter().map(|v| v.to_string()).collect()),
                "values round-trip through a key"
            );
        }
        let _ = t.scan_pattern();
    }
});

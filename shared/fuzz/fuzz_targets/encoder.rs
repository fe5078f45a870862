//! The value encoder: any input is refused cleanly or encoded; encoding is stable (encoding the
//! compact output again gives the same bytes) in both formats.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pg_redis_shared::encoding::{encode_hash, encode_json, parse_row};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(row) = parse_row(text) {
        let once = encode_json(&row);
        let again = encode_json(&parse_row(&once).expect("compact output parses"));
        assert_eq!(once, again, "encoding is stable");
        let _ = encode_hash(&row);
    }
});

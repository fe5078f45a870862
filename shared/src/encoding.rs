//! The canonical value encoding. Both halves start from the text of PostgreSQL's
//! `to_jsonb(row)` and go through these functions, so a row has the same bytes in Redis
//! whether the trigger pushed it or the module read it through.
//!
//! - `json` format: compact JSON (no insignificant white space), keys in `to_jsonb` order
//!   (jsonb sorts them: shorter names first, then bytewise), only the mapped columns.
//!   Numbers keep PostgreSQL's exact text (`1.50` stays `1.50`, big numerics stay exact).
//! - `hash` format: one field per mapped column; strings raw, every other value as its compact
//!   JSON text (`42`, `true`, `[1,2]`, `{"a":1}`); NULL columns are omitted.

use crate::error::{Error, Result};
use serde_json::{Map, Value};

/// The session settings under which PostgreSQL's output of a row is canonical. `to_jsonb`
/// prints some types through their output functions, which read the session: `timestamptz`
/// and ranges the time zone and date style, `interval` the interval style, `bytea` its output
/// format, floats the digits setting, `money` the monetary locale. Every place that turns a
/// row into text (the capture trigger, the backfill, the module's read-through) runs under
/// exactly these, so keys and stored bytes are a function of the row alone. The golden
/// vectors were printed under them.
pub const CANONICAL_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
    ("lc_monetary", "C"),
];

/// The canonical settings as a libpq `options` value (`-c name=value ...`, spaces escaped), for
/// connections that read rows (the module's pool).
pub fn canonical_settings_options() -> String {
    CANONICAL_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={}", v.replace('\\', "\\\\").replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A row as `to_jsonb` gives it: column name to value, in jsonb key order.
pub type Row = Map<String, Value>;

/// Parses the text of `to_jsonb(row)` (or of a stored jsonb row).
pub fn parse_row(jsonb_text: &str) -> Result<Row> {
    match serde_json::from_str::<Value>(jsonb_text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(Error::MalformedRow { reason: format!("expected an object, got {}", kind_name(&other)) }),
        Err(e) => Err(Error::MalformedRow { reason: e.to_string() }),
    }
}

/// Keeps only `columns` (in the row's own order); `None` keeps every column.
pub fn select_columns(mut row: Row, columns: Option<&[String]>) -> Row {
    if let Some(cols) = columns {
        row.retain(|k, _| cols.iter().any(|c| c == k));
    }
    row
}

/// The `json` format: compact JSON text of the (already column-selected) row.
pub fn encode_json(row: &Row) -> String {
    // Serializing a map of JSON values cannot fail (keys are strings).
    serde_json::to_string(row).unwrap_or_default()
}

/// The `hash` format: (field, value) pairs; NULL columns are left out.
pub fn encode_hash(row: &Row) -> Vec<(String, String)> {
    row.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), hash_value(v))).collect()
}

/// One hash field's value: a string raw, anything else as compact JSON.
pub fn hash_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_settings_as_libpq_options() {
        assert_eq!(
            canonical_settings_options(),
            r"-c TimeZone=UTC -c DateStyle=ISO,\ MDY -c IntervalStyle=postgres -c bytea_output=hex -c extra_float_digits=1 -c lc_monetary=C"
        );
    }

    #[test]
    fn compacts_and_keeps_numbers_exact() {
        let r = parse_row(r#"{"id": 1, "price": 1.50, "big": 123456789012345678901234567890.000000001, "f": 1e+100}"#)
            .unwrap();
        assert_eq!(
            encode_json(&r),
            r#"{"id":1,"price":1.50,"big":123456789012345678901234567890.000000001,"f":1e+100}"#
        );
    }

    #[test]
    fn selects_columns_in_row_order() {
        let r = parse_row(r#"{"id": 1, "name": "a", "email": "e"}"#).unwrap();
        let cols = vec!["email".to_string(), "id".to_string()];
        assert_eq!(encode_json(&select_columns(r, Some(&cols))), r#"{"id":1,"email":"e"}"#);
    }

    #[test]
    fn hash_fields() {
        let r = parse_row(r#"{"a": "x", "b": 2, "c": null, "d": [1, 2], "e": true}"#).unwrap();
        let h = encode_hash(&r);
        assert_eq!(
            h,
            vec![
                ("a".into(), "x".into()),
                ("b".into(), "2".into()),
                ("d".into(), "[1,2]".into()),
                ("e".into(), "true".into())
            ]
        );
    }

    #[test]
    fn rejects_non_objects() {
        assert!(parse_row("[1]").unwrap_err().to_string().contains("expected an object"));
        assert!(parse_row("{").is_err());
    }
}

//! Key templates: how a row's Redis key is built from its columns, and how a key is parsed back
//! into column values (the module's read-through needs the inverse).
//!
//! Syntax
//! - `{column}` is replaced by the column's value: `user:{id}` gives `user:42`.
//! - `{{column}}` does the same inside a Redis Cluster hash tag: `user:{{id}}` gives `user:{42}`,
//!   so every key of one value lands in one slot. A key can carry one hash tag at most.
//! - Everything else is literal text. A literal `{` or `}` is not allowed (it would start a
//!   hash tag by accident); templates must start with literal text (the prefix that tells this
//!   table's keys apart from others), and two placeholders must be separated by text containing
//!   `:` (otherwise a key could not be split back into its values).
//!
//! Values are escaped so that any value round-trips: `%` `:` `{` `}` become `%25` `%3A` `%7B`
//! `%7D` (upper-case hex, nothing else is escaped). A key `user:a%3Ab` holds the value `a:b`.

use crate::error::{Error, Result};
use serde_json::Value;
use std::fmt;

/// Characters a value can never contain once escaped; the parser splits keys on them.
const RESERVED: [char; 3] = [':', '{', '}'];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Column(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl KeyTemplate {
    /// Parses and checks a template. Errors name the problem and the template.
    pub fn parse(template: &str) -> Result<Self> {
        let segments = lex(template)?;
        let t = KeyTemplate { source: template.to_owned(), segments };
        t.check_shape()?;
        Ok(t)
    }

    /// The default template of a table: `users:{id}`, `order_items:{order_id}:{item_no}`,
    /// `billing.invoices:{id}` for a schema other than `public`.
    pub fn default_for(schema: &str, table: &str, key_columns: &[&str]) -> Result<Self> {
        let mut s = String::new();
        if schema != "public" {
            s.push_str(&escape_literal(schema));
            s.push('.');
        }
        s.push_str(&escape_literal(table));
        for c in key_columns {
            s.push_str(":{");
            s.push_str(c);
            s.push('}');
        }
        Self::parse(&s)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Column names in the order they appear in the template.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The literal text every key of this template starts with.
    pub fn prefix(&self) -> &str {
        match self.segments.first() {
            Some(Segment::Literal(l)) => l,
            _ => "",
        }
    }

    /// A `SCAN ... MATCH` pattern selecting every key this template can render (and possibly
    /// a few others sharing the prefix; callers confirm each with [`KeyTemplate::matches`]).
    pub fn scan_pattern(&self) -> String {
        let mut p = String::with_capacity(self.prefix().len() + 2);
        for ch in self.prefix().chars() {
            if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(ch);
        }
        p.push('*');
        p
    }

    /// Checks that every placeholder names one of `table_columns`.
    pub fn check_columns<'a>(
        &self,
        table: &str,
        table_columns: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<()> {
        for c in self.columns() {
            if !table_columns.clone().into_iter().any(|t| t == c) {
                return Err(Error::UndefinedColumn { table: table.to_owned(), column: c.to_owned() });
            }
        }
        Ok(())
    }

    /// Renders the key of a row given as a JSON object (the shape of `to_jsonb(row)`).
    pub fn render_row(&self, row: &serde_json::Map<String, Value>) -> Result<String> {
        let mut key = String::with_capacity(self.source.len() + 16);
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => key.push_str(l),
                Segment::Column(c) => match row.get(c) {
                    None => return Err(Error::MissingKeyColumn { column: c.clone() }),
                    Some(Value::Null) => return Err(Error::NullKeyColumn { column: c.clone() }),
                    Some(Value::String(s)) => escape_value_into(s, &mut key),
                    Some(v) => escape_value_into(&v.to_string(), &mut key),
                },
            }
        }
        Ok(key)
    }

    /// Renders a key from values given in placeholder order (the inverse of [`Self::parse_key`]).
    pub fn render_values<S: AsRef<str>>(&self, values: &[S]) -> Result<String> {
        let n = self.columns().count();
        if values.len() != n {
            return Err(Error::invalid_value(
                "key value count",
                values.len(),
                format_args!("template \"{}\" has {} placeholders", self.source, n),
            ));
        }
        let mut key = String::new();
        let mut vals = values.iter();
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => key.push_str(l),
                Segment::Column(_) => escape_value_into(vals.next().map(AsRef::as_ref).unwrap_or_default(), &mut key),
            }
        }
        Ok(key)
    }

    /// Whether `key` has this template's shape (cheap prefix test plus a full parse).
    pub fn matches(&self, key: &str) -> bool {
        key.starts_with(self.prefix()) && self.parse_key(key).is_ok()
    }

    /// Splits a key back into its column values, in placeholder order, unescaped.
    pub fn parse_key(&self, key: &str) -> Result<Vec<String>> {
        let mismatch = |reason: &str| Error::KeyMismatch {
            key: key.to_owned(),
            template: self.source.clone(),
            reason: reason.to_owned(),
        };
        let mut rest = key;
        let mut values = Vec::with_capacity(self.segments.len() / 2 + 1);
        let mut i = 0;
        while i < self.segments.len() {
            match &self.segments[i] {
                Segment::Literal(l) => {
                    rest = rest.strip_prefix(l.as_str()).ok_or_else(|| mismatch(&format!("expected \"{l}\"")))?;
                }
                Segment::Column(_) => {
                    let raw = match self.segments.get(i + 1) {
                        // The last placeholder takes what is left before the suffix, if any.
                        None => std::mem::take(&mut rest),
                        Some(Segment::Literal(next)) if i + 2 == self.segments.len() => {
                            let v = rest
                                .strip_suffix(next.as_str())
                                .ok_or_else(|| mismatch(&format!("expected it to end with \"{next}\"")))?;
                            rest = &rest[v.len()..];
                            v
                        }
                        Some(Segment::Literal(next)) => {
                            // The next literal holds a reserved character at a fixed offset and a
                            // value never does, so the first reserved character of `rest` is it.
                            let offset = next.find(RESERVED).unwrap_or(0);
                            let at = rest.find(RESERVED).ok_or_else(|| mismatch("too few parts"))?;
                            let expected = || mismatch(&format!("expected \"{next}\""));
                            let end = at.checked_sub(offset).ok_or_else(expected)?;
                            let v = rest.get(..end).ok_or_else(expected)?;
                            rest = &rest[end..];
                            v
                        }
                        // `lex` never yields two placeholders in a row.
                        Some(Segment::Column(_)) => return Err(mismatch("template has adjacent placeholders")),
                    };
                    if raw.contains(RESERVED) {
                        return Err(mismatch("too many parts"));
                    }
                    values.push(unescape_value(raw).map_err(|r| mismatch(&r))?);
                }
            }
            i += 1;
        }
        if !rest.is_empty() {
            return Err(mismatch("unexpected text at the end"));
        }
        Ok(values)
    }

    fn check_shape(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::invalid_template(&self.source, reason));
        if self.prefix().is_empty() {
            return bad("it must start with literal text such as \"users:\" so this table's keys can be told apart from other keys".into());
        }
        if self.columns().next().is_none() {
            return bad("it has no {column} placeholder, so every row would get the same key".into());
        }
        let mut seen: Vec<&str> = Vec::new();
        for c in self.columns() {
            if seen.contains(&c) {
                return bad(format!("column \"{c}\" appears twice"));
            }
            seen.push(c);
        }
        for w in self.segments.windows(3) {
            if let [Segment::Column(a), Segment::Literal(l), Segment::Column(b)] = w {
                if !l.contains(RESERVED) {
                    return bad(format!("placeholders {{{a}}} and {{{b}}} must be separated by text containing ':', otherwise keys cannot be split back into values"));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for KeyTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Splits a template into literals and placeholders; `{{c}}` becomes literal `{`, column, `}`.
fn lex(template: &str) -> Result<Vec<Segment>> {
    let bad = |reason: String| Err(Error::invalid_template(template, reason));
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut hash_tags = 0;
    let mut rest = template;
    while let Some(ch) = rest.chars().next() {
        match ch {
            '{' => {
                let tagged = rest.starts_with("{{");
                let open = if tagged { 2 } else { 1 };
                let close = if tagged { "}}" } else { "}" };
                let body = &rest[open..];
                let Some(end) = body.find('}') else {
                    return bad("a '{' is never closed".into());
                };
                let name = &body[..end];
                if !body[end..].starts_with(close) {
                    return bad(format!("\"{{{{{name}}}\" must close with \"}}}}\" (a hash tag) or open with a single '{{' (a plain placeholder)"));
                }
                if name.is_empty() {
                    return bad("an empty {} placeholder names no column".into());
                }
                if name.contains('{') {
                    return bad("placeholders cannot be nested; a literal '{' is not allowed".into());
                }
                if matches!(segments.last(), Some(Segment::Column(_))) && literal.is_empty() {
                    return bad(format!(
                        "placeholder {{{name}}} directly follows another one; separate them with text containing ':'"
                    ));
                }
                if tagged {
                    hash_tags += 1;
                    if hash_tags > 1 {
                        return bad("a key can carry only one Redis Cluster hash tag ({{column}})".into());
                    }
                    literal.push('{');
                }
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Column(name.to_owned()));
                if tagged {
                    literal.push('}');
                }
                rest = &body[end + close.len()..];
            }
            '}' => return bad("a literal '}' is not allowed (use {column} or {{column}})".into()),
            _ => {
                literal.push(ch);
                rest = &rest[ch.len_utf8()..];
            }
        }
    }
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// Table and schema names go into default templates as literals; braces there must not open
/// a placeholder, so they are percent-escaped like values.
fn escape_literal(s: &str) -> String {
    s.replace('{', "%7B").replace('}', "%7D")
}

fn escape_value_into(value: &str, out: &mut String) {
    for ch in value.chars() {
        match ch {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            _ => out.push(ch),
        }
    }
}

/// Escapes one value the way keys carry it.
pub fn escape_value(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    escape_value_into(value, &mut s);
    s
}

fn unescape_value(raw: &str) -> std::result::Result<String, String> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 3);
        let ch = match code {
            Some("25") => '%',
            Some("3A") => ':',
            Some("7B") => '{',
            Some("7D") => '}',
            _ => return Err(format!("\"%{}\" is not one of the escapes %25 %3A %7B %7D", code.unwrap_or(""))),
        };
        out.push(ch);
        rest = &rest[pos + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn default_templates() {
        assert_eq!(KeyTemplate::default_for("public", "users", &["id"]).unwrap().as_str(), "users:{id}");
        assert_eq!(
            KeyTemplate::default_for("public", "order_items", &["order_id", "item_no"]).unwrap().as_str(),
            "order_items:{order_id}:{item_no}"
        );
        assert_eq!(KeyTemplate::default_for("billing", "invoices", &["id"]).unwrap().as_str(), "billing.invoices:{id}");
        let odd = KeyTemplate::default_for("public", "we{ird}", &["id"]).unwrap();
        assert_eq!(odd.render_row(&row(json!({"id": 1}))).unwrap(), "we%7Bird%7D:1");
    }

    #[test]
    fn renders_and_parses() {
        let t = KeyTemplate::parse("users:{id}").unwrap();
        assert_eq!(t.render_row(&row(json!({"id": 42, "name": "x"}))).unwrap(), "users:42");
        assert_eq!(t.parse_key("users:42").unwrap(), vec!["42"]);
        let t = KeyTemplate::parse("order_items:{order_id}:{item_no}").unwrap();
        assert_eq!(t.render_row(&row(json!({"order_id": 7, "item_no": 3}))).unwrap(), "order_items:7:3");
        assert_eq!(t.parse_key("order_items:7:3").unwrap(), vec!["7", "3"]);
    }

    #[test]
    fn hash_tags() {
        let t = KeyTemplate::parse("user:{{id}}").unwrap();
        assert_eq!(t.render_values(&["42"]).unwrap(), "user:{42}");
        assert_eq!(t.parse_key("user:{42}").unwrap(), vec!["42"]);
        let t = KeyTemplate::parse("order:{{customer}}:{id}").unwrap();
        assert_eq!(t.render_values(&["a}b", "c:d"]).unwrap(), "order:{a%7Db}:c%3Ad");
        assert_eq!(t.parse_key("order:{a%7Db}:c%3Ad").unwrap(), vec!["a}b", "c:d"]);
    }

    #[test]
    fn separators_are_escaped() {
        let t = KeyTemplate::parse("s:{a}:{b}").unwrap();
        let k = t.render_values(&["x:y", "100%"]).unwrap();
        assert_eq!(k, "s:x%3Ay:100%25");
        assert_eq!(t.parse_key(&k).unwrap(), vec!["x:y", "100%"]);
    }

    #[test]
    fn rejects_bad_templates() {
        for (t, needle) in [
            ("{id}", "start with literal text"),
            ("users", "no {column}"),
            ("users:{id", "never closed"),
            ("users:{}", "empty"),
            ("users:{a}{b}", "directly follows"),
            ("users:{a}-{b}", "separated"),
            ("users:{a}:{a}", "twice"),
            ("u:{{a}}:{{b}}", "one Redis Cluster hash tag"),
            ("users:}", "literal '}'"),
            ("users:{{a}", "must close"),
        ] {
            let e = KeyTemplate::parse(t).unwrap_err().to_string();
            assert!(e.contains(needle), "{t}: {e}");
            assert!(e.contains(t), "{t}: {e}");
        }
    }

    #[test]
    fn rejects_foreign_keys() {
        let t = KeyTemplate::parse("order_items:{a}:{b}").unwrap();
        assert!(t.parse_key("orders:1:2").is_err());
        assert!(t.parse_key("order_items:1").is_err());
        assert!(t.parse_key("order_items:1:2:3").is_err());
        assert!(t.parse_key("order_items:1:%41").is_err());
        let t = KeyTemplate::parse("t:{a}x:{b}").unwrap();
        assert!(t.parse_key("t:é:1").is_err());
        let t = KeyTemplate::parse("u:{id}:profile").unwrap();
        assert_eq!(t.parse_key("u:7:profile").unwrap(), vec!["7"]);
        assert!(t.parse_key("u:7:other").is_err());
    }

    #[test]
    fn null_and_missing_key_columns() {
        let t = KeyTemplate::parse("users:{id}").unwrap();
        assert_eq!(t.render_row(&row(json!({"id": null}))), Err(Error::NullKeyColumn { column: "id".into() }));
        assert_eq!(t.render_row(&row(json!({}))), Err(Error::MissingKeyColumn { column: "id".into() }));
    }

    #[test]
    fn scan_pattern_escapes_glob() {
        let t = KeyTemplate::parse("a*b?[c]:{id}").unwrap();
        assert_eq!(t.scan_pattern(), "a\\*b\\?\\[c\\]:*");
    }
}

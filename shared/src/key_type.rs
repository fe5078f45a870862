//! The SQL type of a key column as the catalog stores it (`redis.mapping.key_types`): written
//! by the extension's `sync_table`, read by the module to check key values before querying,
//! and spliced into the casts of the read-through SQL (see `sql.rs`). The stored text is the
//! type's schema and name, each as PostgreSQL's `quote_ident` prints it: `pg_catalog.int8`.

use std::fmt;

/// The schema of the built-in types.
pub const BUILTIN_SCHEMA: &str = "pg_catalog";

/// A stored key type, split into its (quoted) parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyType<'a> {
    /// `None` when stored unqualified (a built-in name such as `bigint`).
    pub schema: Option<&'a str>,
    pub name: &'a str,
}

impl<'a> KeyType<'a> {
    /// A type from its schema and name, both already quoted as `quote_ident` quotes them
    /// (PostgreSQL quotes them: only it knows which words need quotes).
    pub fn new(quoted_schema: &'a str, quoted_name: &'a str) -> Self {
        KeyType { schema: Some(quoted_schema), name: quoted_name }
    }

    /// Splits stored text at the first dot outside double quotes.
    pub fn parse(stored: &'a str) -> Self {
        let mut quoted = false;
        for (i, c) in stored.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '.' if !quoted => {
                    let (schema, dot_name) = stored.split_at(i);
                    return KeyType { schema: Some(schema), name: dot_name.get(1..).unwrap_or_default() };
                }
                _ => {}
            }
        }
        KeyType { schema: None, name: stored }
    }

    /// The name as messages show it: built-in types without their schema.
    pub fn short_name(&self) -> String {
        match self.schema {
            Some(s) if s != BUILTIN_SCHEMA => self.to_string(),
            _ => self.name.to_owned(),
        }
    }

    /// Whether `value` (key text) can be a value of this type, as far as can be told without
    /// PostgreSQL: integers and uuids are checked, anything else passes.
    pub fn accepts(&self, value: &str) -> bool {
        if self.schema.is_some_and(|s| s != BUILTIN_SCHEMA) {
            return true;
        }
        match self.name {
            "int2" | "smallint" => value.parse::<i16>().is_ok(),
            "int4" | "integer" => value.parse::<i32>().is_ok(),
            "int8" | "bigint" => value.parse::<i64>().is_ok(),
            "uuid" => value.len() == 36 && value.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            _ => true,
        }
    }
}

/// The stored text.
impl fmt::Display for KeyType<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (schema, name) in
            [("pg_catalog", "int8"), ("public", "\"My Type\""), ("\"odd.schema\"", "\"a.b\""), ("\"q\"\"uote\"", "t")]
        {
            let stored = KeyType::new(schema, name).to_string();
            assert_eq!(KeyType::parse(&stored), KeyType::new(schema, name), "{stored}");
        }
        assert_eq!(KeyType::new("pg_catalog", "int8").to_string(), "pg_catalog.int8");
        assert_eq!(KeyType::parse("bigint"), KeyType { schema: None, name: "bigint" });
    }

    #[test]
    fn checks_builtin_values_only() {
        let int8 = KeyType::parse("pg_catalog.int8");
        assert!(int8.accepts("-42") && !int8.accepts("4x"));
        assert!(!KeyType::parse("int4").accepts("99999999999"));
        assert!(!KeyType::parse("pg_catalog.int2").accepts("70000"));
        assert!(KeyType::parse("pg_catalog.uuid").accepts("123e4567-e89b-12d3-a456-426614174000"));
        assert!(!KeyType::parse("pg_catalog.uuid").accepts("123"));
        assert!(KeyType::parse("pg_catalog.text").accepts("anything"));
        // A user's type named like a built-in one is not checked here.
        assert!(KeyType::parse("public.int8").accepts("4x"));
    }

    #[test]
    fn short_names() {
        assert_eq!(KeyType::parse("pg_catalog.int8").short_name(), "int8");
        assert_eq!(KeyType::parse("bigint").short_name(), "bigint");
        assert_eq!(KeyType::parse("public.int8").short_name(), "public.int8");
    }
}

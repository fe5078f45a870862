//! Table mappings: which table goes to which Redis keys, in which format, with which TTL,
//! columns, stream and channel. PostgreSQL stores them (`redis.tables`); the module reads them.

use crate::encoding::{self, Row};
use crate::error::{Error, Result};
use crate::key_template::KeyTemplate;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a row is stored at its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A string holding the row's compact JSON.
    Json,
    /// A hash with one field per non-NULL column.
    Hash,
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Format::Json),
            "hash" => Ok(Format::Hash),
            other => Err(Error::invalid_value("format", format_args!("\"{other}\""), "use 'json' or 'hash'")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Hash => "hash",
        })
    }
}

/// A row's value as stored in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Encoded {
    Json(String),
    Hash(Vec<(String, String)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMapping {
    /// The mapping's version id; captured events name it, so each is applied with the mapping
    /// that was in force when it was captured.
    pub id: i64,
    pub schema: String,
    pub table: String,
    pub key: KeyTemplate,
    /// SQL type of each template column, in placeholder order (read-through casts key text to it).
    pub key_types: Vec<String>,
    pub format: Format,
    /// Seconds; `None` keeps keys until the row changes.
    pub ttl: Option<u32>,
    /// Columns to keep; `None` keeps every column.
    pub columns: Option<Vec<String>>,
    pub stream_key: Option<String>,
    pub channel: Option<String>,
}

impl TableMapping {
    /// `schema.table` as a human reads it (for messages).
    pub fn display_name(&self) -> String {
        if self.schema == "public" {
            self.table.clone()
        } else {
            format!("{}.{}", self.schema, self.table)
        }
    }

    /// `"schema"."table"`, safe to put in SQL.
    pub fn quoted_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Key and stored value of a row given as the text of `to_jsonb(row)`.
    pub fn encode_text(&self, jsonb_text: &str) -> Result<(String, Encoded)> {
        self.encode(encoding::parse_row(jsonb_text)?)
    }

    /// Key and stored value of a parsed row.
    pub fn encode(&self, row: Row) -> Result<(String, Encoded)> {
        let (key, stored) = self.prepare(row)?;
        Ok((key, self.encode_value(&stored)))
    }

    /// The row's key and the part of it that is stored (column selection applied). The key is
    /// rendered first, so key columns need not be among the stored columns.
    pub fn prepare(&self, row: Row) -> Result<(String, Row)> {
        let key = self.key.render_row(&row)?;
        Ok((key, encoding::select_columns(row, self.columns.as_deref())))
    }

    /// The stored value of a row [`Self::prepare`] returned.
    pub fn encode_value(&self, stored: &Row) -> Encoded {
        match self.format {
            Format::Json => Encoded::Json(encoding::encode_json(stored)),
            Format::Hash => Encoded::Hash(encoding::encode_hash(stored)),
        }
    }
}

/// The mapping columns as the catalog (`redis.mapping`, `redis.tables`) stores them.
#[derive(Clone, Debug, Default)]
pub struct CatalogRow {
    pub id: i64,
    pub schema_name: String,
    pub rel_name: String,
    pub key_template: String,
    pub key_types: Vec<String>,
    pub format: String,
    pub ttl: Option<i32>,
    pub columns: Option<Vec<String>>,
    pub stream_key: Option<String>,
    pub channel: Option<String>,
}

pub use crate::sql::{ACTIVE_MAPPINGS_SQL, CATALOG_COLUMNS};

/// Reads the columns of one catalog row by position (0-based, in [`CATALOG_COLUMNS`] order),
/// NULL as `None`. Each half implements it over its own row type.
pub trait CatalogColumns {
    type Error;
    fn int8(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    fn int4(&self, i: usize) -> Result<Option<i32>, Self::Error>;
    fn text(&self, i: usize) -> Result<Option<String>, Self::Error>;
    fn text_array(&self, i: usize) -> Result<Option<Vec<String>>, Self::Error>;
}

/// Rows read with the `postgres` client (the module's pool, the test checker).
#[cfg(feature = "postgres-rows")]
impl CatalogColumns for postgres::Row {
    type Error = postgres::Error;
    fn int8(&self, i: usize) -> Result<Option<i64>, postgres::Error> {
        self.try_get(i)
    }
    fn int4(&self, i: usize) -> Result<Option<i32>, postgres::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> Result<Option<String>, postgres::Error> {
        self.try_get(i)
    }
    fn text_array(&self, i: usize) -> Result<Option<Vec<String>>, postgres::Error> {
        self.try_get(i)
    }
}

impl CatalogRow {
    /// The row selected with [`CATALOG_COLUMNS`]; `None` when a column that is never NULL in
    /// the catalog is NULL (such a row cannot be used).
    pub fn decode<C: CatalogColumns + ?Sized>(c: &C) -> std::result::Result<Option<CatalogRow>, C::Error> {
        let (Some(id), Some(schema_name), Some(rel_name), Some(key_template), Some(key_types), Some(format)) =
            (c.int8(0)?, c.text(1)?, c.text(2)?, c.text(3)?, c.text_array(4)?, c.text(5)?)
        else {
            return Ok(None);
        };
        Ok(Some(CatalogRow {
            id,
            schema_name,
            rel_name,
            key_template,
            key_types,
            format,
            ttl: c.int4(6)?,
            columns: c.text_array(7)?,
            stream_key: c.text(8)?,
            channel: c.text(9)?,
        }))
    }
}

impl TryFrom<CatalogRow> for TableMapping {
    type Error = Error;
    fn try_from(r: CatalogRow) -> Result<Self> {
        let key = KeyTemplate::parse(&r.key_template)?;
        if r.key_types.len() != key.columns().count() {
            return Err(Error::MalformedRow {
                reason: format!(
                    "mapping {} has {} key types for template \"{}\"",
                    r.id,
                    r.key_types.len(),
                    r.key_template
                ),
            });
        }
        Ok(TableMapping {
            id: r.id,
            schema: r.schema_name,
            table: r.rel_name,
            key,
            key_types: r.key_types,
            format: r.format.parse()?,
            ttl: r.ttl.map(|t| t.max(1) as u32),
            columns: r.columns,
            stream_key: r.stream_key,
            channel: r.channel,
        })
    }
}

/// The default stream of a table, named like Debezium's topics: `<db>.<schema>.<table>`.
pub fn default_stream_key(database: &str, schema: &str, table: &str) -> String {
    format!("{database}.{schema}.{table}")
}

/// Refuses a set of templates in which one key could belong to two tables, or to a table and
/// pg_redis itself. Conservative: two templates overlap when one prefix starts with the other.
pub fn check_unambiguous(mappings: &[TableMapping]) -> Result<()> {
    let reserved = crate::apply::RESERVED_PREFIX;
    for (i, a) in mappings.iter().enumerate() {
        if a.key.prefix().starts_with(reserved) || reserved.starts_with(a.key.prefix()) {
            return Err(Error::invalid_template(
                a.key.as_str(),
                format_args!("keys starting with \"{reserved}\" belong to pg_redis itself; choose another prefix"),
            ));
        }
        for b in &mappings[i + 1..] {
            if a.key.prefix().starts_with(b.key.prefix()) || b.key.prefix().starts_with(a.key.prefix()) {
                return Err(Error::AmbiguousTemplates {
                    first: a.key.to_string(),
                    first_table: a.display_name(),
                    second: b.key.to_string(),
                    second_table: b.display_name(),
                });
            }
        }
    }
    Ok(())
}

/// All mappings of one database, resolving keys to their table.
#[derive(Clone, Debug, Default)]
pub struct MappingSet {
    mappings: Vec<TableMapping>,
}

impl MappingSet {
    pub fn new(mappings: Vec<TableMapping>) -> Self {
        MappingSet { mappings }
    }

    pub fn len(&self) -> usize {
        self.mappings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mappings.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &TableMapping> {
        self.mappings.iter()
    }

    /// The mapping whose template renders `key`, with the key's column values.
    pub fn resolve(&self, key: &str) -> Result<(&TableMapping, Vec<String>)> {
        let mut mismatch = None;
        for m in &self.mappings {
            if key.starts_with(m.key.prefix()) {
                match m.key.parse_key(key) {
                    Ok(values) => return Ok((m, values)),
                    Err(e) => mismatch = Some(e),
                }
            }
        }
        Err(mismatch.unwrap_or_else(|| Error::UnmappedKey { key: key.to_owned() }))
    }

    /// Just the mapping owning the key's prefix, without parsing values (cache-hit path).
    pub fn owner_of(&self, key: &[u8]) -> Option<&TableMapping> {
        self.mappings.iter().find(|m| key.starts_with(m.key.prefix().as_bytes()))
    }
}

/// Quotes an SQL identifier (always, so reserved words and mixed case are safe).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn mapping(table: &str, template: &str) -> TableMapping {
        TableMapping {
            id: 1,
            schema: "public".into(),
            table: table.into(),
            key: KeyTemplate::parse(template).unwrap(),
            key_types: vec!["bigint".into()],
            format: Format::Json,
            ttl: None,
            columns: None,
            stream_key: None,
            channel: None,
        }
    }

    #[test]
    fn format_parses_and_names_bad_values() {
        assert_eq!("hash".parse::<Format>().unwrap(), Format::Hash);
        let e = "xml".parse::<Format>().unwrap_err().to_string();
        assert!(e.contains("\"xml\"") && e.contains("'json' or 'hash'"), "{e}");
    }

    #[test]
    fn encodes_key_before_selecting_columns() {
        let mut m = mapping("users", "users:{id}");
        m.columns = Some(vec!["name".into()]);
        let (k, v) = m.encode_text(r#"{"id": 5, "name": "ann", "x": 1}"#).unwrap();
        assert_eq!(k, "users:5");
        assert_eq!(v, Encoded::Json(r#"{"name":"ann"}"#.into()));
    }

    #[test]
    fn ambiguity_is_refused() {
        let ok = [mapping("users", "users:{id}"), mapping("users_archive", "users_archive:{id}")];
        assert!(check_unambiguous(&ok).is_ok());
        let bad = [mapping("a", "user:{id}"), mapping("b", "user:admin:{id}")];
        let e = check_unambiguous(&bad).unwrap_err().to_string();
        assert!(e.contains("user:{id}") && e.contains("user:admin:{id}"), "{e}");
        let e = check_unambiguous(&[mapping("pg", "pg_{id}")]).unwrap_err().to_string();
        assert!(e.contains("belong to pg_redis itself"), "{e}");
    }

    #[test]
    fn resolves_keys() {
        let set = MappingSet::new(vec![mapping("users", "users:{id}"), mapping("orders", "orders:{id}")]);
        let (m, v) = set.resolve("orders:9").unwrap();
        assert_eq!((m.table.as_str(), v), ("orders", vec!["9".to_string()]));
        assert!(matches!(set.resolve("nope:1"), Err(Error::UnmappedKey { .. })));
        assert!(matches!(set.resolve("users:1:2"), Err(Error::KeyMismatch { .. })));
    }

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident(r#"we"ird"#), r#""we""ird""#);
    }

    /// A catalog row as a list of optional texts, one per column (numbers and arrays parsed).
    struct Texts(Vec<Option<&'static str>>);

    impl CatalogColumns for Texts {
        type Error = String;
        fn int8(&self, i: usize) -> Result<Option<i64>, String> {
            self.text(i)?.map(|t| t.parse().map_err(|_| format!("column {i}"))).transpose()
        }
        fn int4(&self, i: usize) -> Result<Option<i32>, String> {
            self.text(i)?.map(|t| t.parse().map_err(|_| format!("column {i}"))).transpose()
        }
        fn text(&self, i: usize) -> Result<Option<String>, String> {
            self.0.get(i).copied().ok_or(format!("no column {i}")).map(|t| t.map(str::to_owned))
        }
        fn text_array(&self, i: usize) -> Result<Option<Vec<String>>, String> {
            Ok(self.text(i)?.map(|t| t.split(',').map(str::to_owned).collect()))
        }
    }

    #[test]
    fn decodes_catalog_rows_by_position() {
        let cols = [
            Some("7"),
            Some("shop"),
            Some("orders"),
            Some("o:{id}"),
            Some("pg_catalog.int8"),
            Some("hash"),
            Some("60"),
            Some("id,total"),
            None,
            Some("news"),
        ];
        let row = CatalogRow::decode(&Texts(cols.to_vec())).unwrap().unwrap();
        assert_eq!(CATALOG_COLUMNS.split(", ").count(), cols.len());
        let m = TableMapping::try_from(row).unwrap();
        assert_eq!((m.id, m.schema.as_str(), m.table.as_str(), m.key.as_str()), (7, "shop", "orders", "o:{id}"));
        assert_eq!((m.key_types, m.format, m.ttl), (vec!["pg_catalog.int8".to_string()], Format::Hash, Some(60)));
        assert_eq!(m.columns, Some(vec!["id".to_string(), "total".to_string()]));
        assert_eq!((m.stream_key, m.channel.as_deref()), (None, Some("news")));
    }

    #[test]
    fn catalog_rows_missing_required_columns_are_skipped() {
        for i in 0..6 {
            let mut cols = vec![Some("1"), Some("s"), Some("t"), Some("t:{id}"), Some("int8"), Some("json")];
            cols.extend([None; 4]);
            if let Some(c) = cols.get_mut(i) {
                *c = None;
            }
            assert!(CatalogRow::decode(&Texts(cols)).unwrap().is_none(), "column {i}");
        }
        // A reader's error is passed on.
        assert_eq!(CatalogRow::decode(&Texts(vec![Some("x")])).unwrap_err(), "column 0");
    }
}

//! SQL that reads a mapped table by key, built in one place for both halves: the module's
//! read-through and the worker's resync sweep. Key values are always bound as text parameters
//! and cast to the column's type in SQL, never spliced into the statement.

use crate::mapping::{quote_ident, TableMapping};

/// The columns of a mapping as `CatalogRow::decode` reads them, by position; from
/// `redis.tables` as is (readers of `redis.mapping` name their expressions the same).
macro_rules! catalog_columns {
    () => {
        "mapping_id, schema_name::text, rel_name::text, key_template, key_types, format, ttl, columns, stream_key, channel"
    };
}

/// See [`catalog_columns`]: the SELECT list every reader of mappings uses.
pub const CATALOG_COLUMNS: &str = catalog_columns!();

/// All active mappings (the module's loader and the consistency checks of the tests).
pub const ACTIVE_MAPPINGS_SQL: &str = concat!("SELECT ", catalog_columns!(), " FROM redis.tables ORDER BY mapping_id");

/// `t."a" = k."a"::bigint AND ...`: the join of table columns to the unnested key values.
fn key_match(m: &TableMapping) -> String {
    m.key
        .columns()
        .zip(&m.key_types)
        .enumerate()
        .map(|(i, (c, ty))| format!("t.{} = k.k{i}::{ty}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(k0, k1, ord)`: one row per key.
fn keys_from_arrays(m: &TableMapping) -> String {
    let n = m.key.columns().count();
    let arrays: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    format!("unnest({}) WITH ORDINALITY AS k({}, ord)", arrays.join(", "), names.join(", "))
}

/// Rows of many keys: parameters are one text array per key column (values in the same
/// position form one key); yields `(ord bigint, row text)` with `ord` the 1-based key position,
/// for the keys whose row exists.
pub fn rows_by_keys(m: &TableMapping) -> String {
    format!(
        "SELECT k.ord, to_jsonb(t.*)::text FROM {} JOIN {} t ON {}",
        keys_from_arrays(m),
        m.quoted_name(),
        key_match(m)
    )
}

/// Positions (1-based) of the keys whose row exists; parameters as in [`rows_by_keys`].
pub fn existing_keys(m: &TableMapping) -> String {
    format!(
        "SELECT k.ord FROM {} WHERE EXISTS (SELECT 1 FROM {} t WHERE {})",
        keys_from_arrays(m),
        m.quoted_name(),
        key_match(m)
    )
}

/// The row of one key: parameters are the key values as text, in placeholder order.
pub fn row_by_key(m: &TableMapping) -> String {
    let cond = m
        .key
        .columns()
        .zip(&m.key_types)
        .enumerate()
        .map(|(i, (c, ty))| format!("t.{} = ${}::text::{ty}", quote_ident(c), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!("SELECT to_jsonb(t.*)::text FROM {} t WHERE {cond}", m.quoted_name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Format, KeyTemplate};

    fn m() -> TableMapping {
        TableMapping {
            id: 1,
            schema: "shop".into(),
            table: "Order Items".into(),
            key: KeyTemplate::parse("oi:{order_id}:{no}").unwrap(),
            key_types: vec!["bigint".into(), "integer".into()],
            format: Format::Json,
            ttl: None,
            columns: None,
            stream_key: None,
            channel: None,
        }
    }

    #[test]
    fn catalog_statement() {
        assert_eq!(
            ACTIVE_MAPPINGS_SQL,
            "SELECT mapping_id, schema_name::text, rel_name::text, key_template, key_types, format, ttl, columns, stream_key, channel FROM redis.tables ORDER BY mapping_id"
        );
        assert!(ACTIVE_MAPPINGS_SQL.contains(CATALOG_COLUMNS));
    }

    #[test]
    fn statements() {
        assert_eq!(
            row_by_key(&m()),
            r#"SELECT to_jsonb(t.*)::text FROM "shop"."Order Items" t WHERE t."order_id" = $1::text::bigint AND t."no" = $2::text::integer"#
        );
        assert_eq!(
            rows_by_keys(&m()),
            r#"SELECT k.ord, to_jsonb(t.*)::text FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(k0, k1, ord) JOIN "shop"."Order Items" t ON t."order_id" = k.k0::bigint AND t."no" = k.k1::integer"#
        );
        assert!(existing_keys(&m()).starts_with("SELECT k.ord FROM unnest($1::text[], $2::text[]) WITH ORDINALITY"));
    }
}

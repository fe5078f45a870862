//! Golden vectors: the exact bytes a row becomes in Redis. The input is what PostgreSQL 15's
//! `to_jsonb(row)` printed for a row holding every supported type (see golden/README.md); the
//! expected outputs are pinned in golden/*.out. Both halves of pg_redis encode through this code,
//! so a change here changes what every deployment stores: it must be deliberate.
//!
//! After an intended change, regenerate with `PG_REDIS_GOLDEN_UPDATE=1 cargo test -p pg_redis_shared --test golden`
//! and review the diff.

use pg_redis_shared::mapping::Encoded;
use pg_redis_shared::{Format, KeyTemplate, TableMapping};
use std::path::Path;

fn mapping(template: &str, format: Format, columns: Option<&[&str]>) -> TableMapping {
    TableMapping {
        id: 1,
        schema: "public".into(),
        table: "t".into(),
        key: KeyTemplate::parse(template).unwrap(),
        key_types: vec!["bigint".into(); KeyTemplate::parse(template).unwrap().columns().count()],
        format,
        ttl: None,
        columns: columns.map(|c| c.iter().map(|s| s.to_string()).collect()),
        stream_key: None,
        channel: None,
    }
}

fn render(encoded: &(String, Encoded)) -> String {
    let (key, value) = encoded;
    let mut out = format!("key {key}\n");
    match value {
        Encoded::Json(s) => out.push_str(&format!("json {s}\n")),
        Encoded::Hash(fields) => {
            for (f, v) in fields {
                out.push_str(&format!("field {f} {}\n", serde_json::to_string(v).unwrap()));
            }
        }
    }
    out
}

fn check(name: &str, actual: String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.out"));
    if std::env::var_os("PG_REDIS_GOLDEN_UPDATE").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with PG_REDIS_GOLDEN_UPDATE=1", path.display()));
    assert_eq!(actual, expected, "{name} changed: the stored bytes of every deployment would change");
}

fn input() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/types_row.jsonb.txt");
    std::fs::read_to_string(p).unwrap().trim_end_matches('\n').to_owned()
}

#[test]
fn every_type_as_json() {
    let m = mapping("t:{id}", Format::Json, None);
    check("types_json", render(&m.encode_text(&input()).unwrap()));
}

#[test]
fn every_type_as_hash() {
    let m = mapping("t:{id}", Format::Hash, None);
    check("types_hash", render(&m.encode_text(&input()).unwrap()));
}

#[test]
fn selected_columns_and_composite_key() {
    let m = mapping("t:{{i}}:{id}", Format::Json, Some(&["tx", "n", "c"]));
    check("types_columns", render(&m.encode_text(&input()).unwrap()));
}

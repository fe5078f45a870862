//! RENAME COLUMN of a synced table: the mapping follows (see `api::sync::follow_column_rename`)
//! instead of naming a column that no longer exists, which would park every later change and
//! break read-through.

use crate::ddl::RelName;

/// After ALTER TABLE ... RENAME COLUMN.
pub fn after_rename(table: &RelName, old: &str, new: &str) {
    if old == new {
        return;
    }
    if let Some(oid) = table.resolve() {
        crate::api::sync::follow_column_rename(oid, old, new);
    }
}

/// The key template `template` with its placeholders of column `old` (`{old}` and `{{old}}`)
/// naming `new`. Literal text is kept as it is (a valid template has no literal braces, so
/// every `{` opens a placeholder).
pub fn rename_in_template(template: &str, old: &str, new: &str) -> String {
    let mut out = String::with_capacity(template.len() + new.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let tagged = rest[open..].starts_with("{{");
        let (opener, closer) = if tagged { ("{{", "}}") } else { ("{", "}") };
        let body = &rest[open + opener.len()..];
        let Some(end) = body.find(closer) else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = &body[..end];
        out.push_str(opener);
        out.push_str(if name == old { new } else { name });
        out.push_str(closer);
        rest = &body[end + closer.len()..];
    }
    out.push_str(rest);
    out
}

//! What capture needs of a mapping version: which columns matter, which make the key, whether
//! the old row travels on. The trigger and the WAL decoder read it from `redis.mapping` their
//! own way (SPI; the catalog scan decoding allows) and decide alike.

/// A mapping version as capture sees it.
pub struct Watch {
    pub mapping_id: i64,
    /// Columns whose change matters, by name, key columns included; `None` means every column.
    pub columns: Option<Vec<String>>,
    pub key_columns: Vec<String>,
    /// Whether events carry the old row (`before`) to a stream or channel.
    pub needs_before: bool,
    /// The synced table; a change of one of its partitions is decoded or fires on the partition.
    pub table: pgrx::pg_sys::Oid,
}

impl Watch {
    pub fn new(
        mapping_id: i64,
        columns: Option<Vec<String>>,
        key_columns: Vec<String>,
        needs_before: bool,
        table: pgrx::pg_sys::Oid,
    ) -> Watch {
        let columns = columns.map(|mut c| {
            c.extend(key_columns.iter().cloned());
            c
        });
        Watch { mapping_id, columns, key_columns, needs_before, table }
    }
}

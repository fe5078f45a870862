//! Capture from the write-ahead log: the extension's library is also the logical decoding
//! output plugin `pg_redis`. Writers pay for logical decoding only (no trigger, no queue row):
//! a slot decodes committed transactions in commit order, and each change of a synced table
//! becomes the record the capture trigger would have queued (`shared::wal`).
//!
//! - `plugin`: the callbacks PostgreSQL calls, and the records they write.
//! - `synced`: which mapping a decoded relation belongs to, read under the historic snapshot.
//! - `decode`: a row change into its record, and what stands in for what the WAL lacks.

mod decode;
pub mod plugin;
mod synced;

//! Capture from the write-ahead log: the extension's library is also the logical decoding
//! output plugin `pg_redis`. Writers pay for logical decoding only (no trigger, no queue row):
//! a slot decodes committed transactions in commit order, and each change of a synced table
//! becomes the record the capture trigger would have queued (`shared::wal`). Rows queued in
//! `redis.outbox` (a backfill's reads, `redis.on_commit`, tables still captured by trigger) are
//! decoded too, in their place: one stream in commit order.
//!
//! - `plugin`: the callbacks PostgreSQL calls, and the records they write.
//! - `synced`: what a decoded relation is to pg_redis (synced by which mapping, the outbox,
//!   the mapping catalog), read under the historic snapshot.
//! - `decode`: a row change or a queued row into its record, and what stands in for what the
//!   WAL lacks.

mod decode;
pub mod plugin;
mod synced;

//! PostgreSQL internals behind small safe functions, so the rest of the extension speaks of
//! what it does rather than of the C API: what changed between the supported major versions
//! (`compat`: nothing else knows which version it runs on; built with the `pg15` or `pg18`
//! feature, 16 and 17 build with theirs, untested here), transactions and snapshots (`xact`),
//! settings (`guc`), read-only queries (`read`), roles (`role`), relations in the catalog caches (`catalog`) and row
//! tuples (`tuple`): what more than one part of the extension uses.
//!
//! What one part alone needs stays with it, as the one place that touches it: parse trees of
//! DDL (`ddl/`, `hooks.rs`), the shared-memory registry and latches (`worker/registry.rs`,
//! `api/status.rs`), the backfill's chunked SPI reads (`api/sync/backfill.rs`), the trigger
//! DDL's relation opening (`api/sync/triggers.rs`), process start-up (`lib.rs`, the workers'
//! main functions).

pub mod catalog;
pub mod compat;
pub mod guc;
pub mod read;
pub mod role;
pub mod tuple;
pub mod xact;

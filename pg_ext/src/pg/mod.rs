//! PostgreSQL internals behind small safe functions, so the rest of the extension speaks of
//! what it does rather than of the C API: what changed between the supported major versions
//! (`compat`: nothing else knows which version it runs on; built with the `pg15` or `pg18`
//! feature, 16 and 17 build with theirs, untested here), transactions and snapshots (`xact`),
//! settings (`guc`), roles (`role`), relations in the catalog caches (`catalog`) and row
//! tuples (`tuple`). Parse trees of DDL (`ddl/`, `hooks.rs`) and the shared-memory registry
//! (`worker/registry.rs`) keep their own: each is the one place that reads them.

pub mod catalog;
pub mod compat;
pub mod guc;
pub mod role;
pub mod tuple;
pub mod xact;

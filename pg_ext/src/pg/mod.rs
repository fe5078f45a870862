//! PostgreSQL internals behind small safe functions: what changed between the supported major
//! versions (`compat`: nothing else knows which version it runs on; built with the `pg15` or
//! `pg18` feature, 16 and 17 build with theirs, untested here) and the transaction and snapshot
//! brackets of the worker (`xact`).

pub mod compat;
pub mod xact;

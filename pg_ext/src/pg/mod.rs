//! The PostgreSQL internals whose shape changed between the supported major versions, behind
//! one set of functions. Nothing else in the extension knows which version it runs on.
//! Built with the `pg15` or `pg18` feature (16 and 17 build with theirs, untested here).

pub mod compat;

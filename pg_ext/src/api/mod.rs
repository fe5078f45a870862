//! The SQL surface, all in schema `redis` (the extension's schema).

mod direct;

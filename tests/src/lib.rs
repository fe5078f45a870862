//! Shared code of the end-to-end tests, the demo and the benchmarks: the process harness that
//! starts real servers, and small helpers for talking to them.

pub mod harness;

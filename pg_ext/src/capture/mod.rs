//! Capture: row changes become outbox rows in the user's own transaction (`trigger`), or are
//! decoded from the write-ahead log after they committed (`wal`); the delivery worker is woken
//! when the transaction commits.

pub mod canonical;
pub mod enqueue;
pub mod mode;
pub mod trigger;
pub mod wake;
pub mod wal;
pub mod watch;

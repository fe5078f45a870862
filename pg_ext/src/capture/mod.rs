//! Capture: row changes become outbox rows in the user's own transaction, and the delivery
//! worker is woken when that transaction commits.

pub mod canonical;
pub mod enqueue;
pub mod trigger;
pub mod wake;

//! Functions that talk to Redis directly from SQL, on this backend's own connection.

use crate::errors::OrRaise;
use crate::redis_client::with_backend_connection;
use pgrx::prelude::*;

/// `PONG` from the configured Redis, or an ERROR within the connect timeout.
#[pg_extern(volatile, parallel_unsafe)]
fn ping() -> String {
    with_backend_connection(|c| redis::cmd("PING").query::<String>(c)).or_raise()
}

//! Free TCP ports on loopback, never PostgreSQL's or Redis's default.

use super::Result;
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A port nothing listens on now, not handed out before by this process.
pub fn free_port() -> Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        if port == 5432 || port == 6379 {
            continue;
        }
        let mut seen = HANDED_OUT.lock().map_err(|_| "port registry poisoned".to_string())?;
        if seen.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err("no free port found on 127.0.0.1".into())
}

//! What makes read-through safe and cheap:
//!
//! - **Leases** (no stale fill): a miss takes a token for its key. Any write, delete, expiry or
//!   eviction of that key (seen through keyspace events, so pushes from a PostgreSQL worker
//!   that knows nothing of the module count too), `PG.INVALIDATE`, or a revoke signal from the
//!   worker (`pg_redis:revoke*`, written before it deletes keys) revokes the token. A fill
//!   stores its row only while its token is live, so a row read before a change can never
//!   overwrite that change.
//! - **Single flight**: concurrent misses of one key wait for one PostgreSQL query.
//! - **Negative entries**: a key whose row does not exist answers nil for `negative_ttl`
//!   without asking PostgreSQL again; any write of the key (the push of an insert) ends it.
//!
//! All of it lives in memory of this process: Redis's main thread takes the locks briefly, pool
//! threads only to hand over waiters.
//!
//! `leases`: the bookkeeping of reads, revocations and negative entries (no Redis API, unit
//! tested alone); `fill`: storing a row read through; here: the keyspace events that revoke.

mod fill;
mod leases;

pub use fill::{ttl_for, Fill};
pub use leases::{
    abandon_lease, begin_miss, end_flight, negative_hit, reset, revoke, revoke_all, revoke_prefix,
    revoke_unconditionally, take_lease, wait_for, Miss,
};

use pg_redis_shared::apply::{MAPPINGS_CHANGED_PREFIX, RESERVED_PREFIX, REVOKE_KEY, REVOKE_PREFIX_KEY};
use redis_module::Context;

/// Keyspace events: any change of a key revokes; the worker's revoke signals name their keys.
pub fn on_keyspace_event(ctx: &Context, key: &[u8]) {
    if key.starts_with(RESERVED_PREFIX.as_bytes()) {
        if key == REVOKE_KEY.as_bytes() || key == REVOKE_PREFIX_KEY.as_bytes() {
            let target = read_string(ctx, key);
            if let Some(t) = target {
                if key == REVOKE_KEY.as_bytes() {
                    revoke(&t);
                } else {
                    revoke_prefix(&t);
                }
            }
        } else if key.starts_with(MAPPINGS_CHANGED_PREFIX.as_bytes()) {
            crate::mappings::request_reload();
        }
        return;
    }
    revoke(key);
}

fn read_string(ctx: &Context, key: &[u8]) -> Option<Vec<u8>> {
    let name = redis_module::RedisString::create_from_slice(ctx.ctx, key);
    let k = ctx.open_key(&name);
    k.read().ok().flatten().map(<[u8]>::to_vec)
}

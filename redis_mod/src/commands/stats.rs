//! `PG.STATS` and the `INFO redis_pg` section: the same counters.

use crate::{config, mappings, pool, stats::STATS};
use redis_module::redisvalue::RedisValueKey;
use redis_module::{Context, InfoContext, RedisError, RedisResult, RedisString, RedisValue};
use redis_module_macros::info_command_handler;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// (name, value) of every counter, in a stable order.
pub fn counters() -> Vec<(&'static str, u64)> {
    vec![
        ("hits", STATS.hits.get()),
        ("misses", STATS.misses.get()),
        ("fills", STATS.fills.get()),
        ("negative_hits", STATS.negative_hits.get()),
        ("joined_misses", STATS.joined_misses.get()),
        ("stale_fills_refused", STATS.stale_fills_refused.get()),
        ("pg_queries", STATS.pg_queries.get()),
        ("pg_errors", STATS.pg_errors.get()),
        ("timeouts", STATS.timeouts.get()),
        ("busy_refusals", STATS.busy.get()),
        ("pg_reconnects", STATS.pg_reconnects.get()),
        ("queue_depth", pool::queue_depth() as u64),
        ("pool_size", config::pool_size() as u64),
        ("pg_connections", pool::CONNECTIONS.load(Ordering::Relaxed) as u64),
        ("pool_busy", pool::BUSY_THREADS.load(Ordering::Relaxed) as u64),
        ("mappings", mappings::current().map(|m| m.len() as u64).unwrap_or(0)),
        ("mapping_loads", mappings::LOADS.load(Ordering::Relaxed)),
        ("fill_latency_p50_us", STATS.fill_latency.quantile_us(0.5)),
        ("fill_latency_p99_us", STATS.fill_latency.quantile_us(0.99)),
        ("query_latency_p50_us", STATS.query_latency.quantile_us(0.5)),
        ("query_latency_p99_us", STATS.query_latency.quantile_us(0.99)),
    ]
}

pub fn run(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 1 {
        return Err(RedisError::WrongArity);
    }
    let map: BTreeMap<RedisValueKey, RedisValue> = counters()
        .into_iter()
        .map(|(k, v)| (RedisValueKey::String(k.to_owned()), RedisValue::Integer(v as i64)))
        .collect();
    Ok(RedisValue::OrderedMap(map))
}

#[info_command_handler]
fn info(ctx: &InfoContext, _for_crash_report: bool) -> RedisResult<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| info_section(ctx))).unwrap_or(Ok(()))
}

fn info_section(ctx: &InfoContext) -> RedisResult<()> {
    let mut section = ctx.builder().add_section("stats");
    for (k, v) in counters() {
        section = section.field(k, v)?;
    }
    section = section.field("pg_url", config::PG_URL.redacted().replace('\0', ""))?;
    section.build_section()?.build_info()?;
    Ok(())
}

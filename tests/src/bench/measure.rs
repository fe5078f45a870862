//! The instruments: redis-benchmark, pgbench and Redis's own memory counter, run against the
//! servers the harness started.

use crate::harness::bindir;
use std::process::Command;

/// Requests per second `redis-benchmark` reports for one command line.
pub fn redis_benchmark(port: u16, clients: u32, requests: u32, pipeline: u32, keyspace: u32, command: &[&str]) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-P", &pipeline.to_string(), "-r", &keyspace.to_string(), "--csv"])
        .args(command)
        .output()
        .expect("redis-benchmark (package redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...  then  "PG.GET ...","123456.78",...
    text.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .filter_map(|l| l.split(',').nth(1))
        .filter_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .next()
        .unwrap_or_else(|| {
            panic!("no figure from redis-benchmark {command:?}: {text} {}", String::from_utf8_lossy(&out.stderr))
        })
}

/// Transactions per second `pgbench` reports for a custom script.
pub fn pgbench(port: u16, db: &str, script: &str, clients: u32, seconds: u32) -> f64 {
    let dir = std::env::temp_dir().join(format!("pg_redis_bench_{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("script.sql");
    std::fs::write(&file, script).expect("writing the pgbench script");
    let out = Command::new(bindir().expect("PostgreSQL bindir").join("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-n",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&file)
        .arg(db)
        .output()
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no tps from pgbench: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

/// `used_memory` of the server, in bytes.
pub fn used_memory(r: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("memory").query(r).expect("INFO memory");
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

//! `make bench`: runs every scenario against real servers and prints one table (also written
//! to target/bench/latest.md). `--quick` runs a tenth of the work, for a smoke check.

use pg_redis_tests::bench;
use std::time::Instant;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let t0 = Instant::now();
    let rows = bench::run_all(quick);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let header = format!(
        "pg_redis benchmarks, {date}, {cores} cores ({cpu}), run took {:.0} s{}\n\n",
        t0.elapsed().as_secs_f64(),
        if quick { ", QUICK (a tenth of the work)" } else { "" }
    );
    let table = bench::table(&rows);
    println!("\n{header}{table}");
    let out = pg_redis_tests::harness::workspace_root().join("target/bench");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("latest.md"), format!("{header}{table}"));
}

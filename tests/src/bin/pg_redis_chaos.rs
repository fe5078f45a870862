//! `make chaos`: a long chaos run (default 600 s; `pg_redis_chaos SECONDS [SEED]`), printing
//! the counts; exits non-zero on any divergent key, lost change or order violation.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args.first().and_then(|s| s.parse().ok()).unwrap_or(600);
    let seed = args.get(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(1)
    });
    eprintln!("chaos run: {seconds} s, seed {seed}");
    let report = pg_redis_tests::chaos::run(Duration::from_secs(seconds), seed);
    println!("{}", report.summary());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

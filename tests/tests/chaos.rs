//! One minute of chaos inside `make test` (`make chaos` runs ten): writers, readers, killed and
//! paused servers, a killed worker, a locked table; then zero divergent keys and zero lost
//! changes.

#[test]
fn one_minute_of_chaos_loses_nothing() {
    let seconds = std::env::var("PG_REDIS_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let report = pg_redis_tests::chaos::run(std::time::Duration::from_secs(seconds), 20261122);
    eprintln!("{}", report.summary());
    assert!(report.faults.values().sum::<u64>() >= seconds / 10, "too few faults were injected");
    assert!(report.committed_changes > 100, "too little work got done: {}", report.summary());
    assert!(report.ok(), "{}", report.summary());
}

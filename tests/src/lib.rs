//! Shared code of the end-to-end tests, the demo and the benchmarks: the process harness that
//! starts real servers, consistency checks, and a ready-made test environment.

pub mod bench;
pub mod chaos;
pub mod check;
pub mod harness;

use harness::{Options, Servers};

/// Servers plus a superuser connection to `postgres` (extension created) and a Redis client.
pub struct Env {
    pub pg: postgres::Client,
    pub redis: redis::Connection,
    pub servers: Servers,
}

impl Env {
    pub fn start(name: &str) -> Env {
        Env::with(Options::named(name))
    }

    pub fn with(opts: Options) -> Env {
        let servers = Servers::start(&opts).unwrap_or_else(|e| panic!("starting servers: {e}"));
        let mut pg = servers.pg.connect("postgres").unwrap_or_else(|e| panic!("{e}"));
        pg.batch_execute("CREATE EXTENSION pg_redis").expect("CREATE EXTENSION");
        let redis = servers.redis.client().unwrap_or_else(|e| panic!("{e}"));
        Env { pg, redis, servers }
    }

    /// A new superuser connection (e.g. for another writer thread).
    pub fn pg_client(&self) -> postgres::Client {
        self.servers.pg.connect("postgres").unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn redis_client(&self) -> redis::Connection {
        self.servers.redis.client().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn sql(&mut self, sql: &str) {
        self.pg.batch_execute(sql).unwrap_or_else(|e| {
            panic!("{sql}: {}", e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string()))
        });
    }

    /// The SQL error a statement raises: (SQLSTATE, message).
    pub fn sql_error(&mut self, sql: &str) -> (String, String) {
        match self.pg.batch_execute(sql) {
            Ok(()) => panic!("{sql} should have failed"),
            Err(e) => {
                let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: not an SQL error: {e}"));
                (db.code().code().to_owned(), db.message().to_owned())
            }
        }
    }

    pub fn wait_synced(&mut self) {
        check::wait_synced(&mut self.pg, 20_000);
    }

    pub fn assert_consistent(&mut self, table: &str) {
        check::assert_consistent(&mut self.pg, &mut self.redis, table);
    }

    pub fn get(&mut self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.redis).expect("GET")
    }

    /// One counter of `PG.STATS`.
    pub fn module_stat(&mut self, name: &str) -> i64 {
        let stats: std::collections::BTreeMap<String, i64> =
            redis::cmd("PG.STATS").query(&mut self.redis).expect("PG.STATS");
        stats.get(name).copied().unwrap_or_else(|| panic!("PG.STATS has no {name}"))
    }

    /// Waits (up to 10 s) until the module has loaded at least `n` table mappings: the module
    /// reloads them on a signal from PostgreSQL, so a read right after `sync_table` can precede it.
    pub fn wait_mappings(&mut self, n: i64) {
        let t0 = std::time::Instant::now();
        while self.module_stat("mappings") < n {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the module never loaded {n} mappings");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

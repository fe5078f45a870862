//! Starts and stops throwaway servers for tests, benchmarks and the demo: a PostgreSQL (15 or 18)
//! cluster with `pg_redis` preloaded and a redis-server with `libredis_pg.so` loaded, each
//! pointed at the other, on free non-default ports under the project's run directory.
//!
//! Servers stop when their guard drops, when the process gets Ctrl-C or SIGTERM, and (for any
//! left over by a killed run) when the next run starts in the same directory. Only servers this
//! harness started are ever signalled: it keeps their pids in its own directories.

mod freeze_proxy;
pub mod pg_tls;
mod ports;
mod postgres;
mod process;
mod redis;

pub use self::postgres::{bindir, major_version, pg_config, PgConfig, Postgres};
pub use self::redis::{Redis, RedisConfig};
pub use freeze_proxy::FreezeProxy;
pub use ports::free_port;
pub use process::{install_signal_cleanup, is_our_server, run_root, stop_pid, workspace_root};

use std::path::PathBuf;

pub type Result<T, E = String> = std::result::Result<T, E>;

/// A PostgreSQL cluster and a redis-server that know each other.
pub struct Servers {
    // Field order is drop order: Redis (whose module holds PostgreSQL connections) goes first.
    pub redis: Redis,
    pub pg: Postgres,
}

/// Knobs of [`Servers::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Name of the run directory (`<run root>/<name>`); tests use their own name.
    pub name: String,
    /// Password Redis requires (`requirepass`), carried in `pg_redis.url`.
    pub redis_password: Option<String>,
    /// Extra `postgresql.conf` lines.
    pub pg_settings: Vec<(String, String)>,
    /// Extra module arguments after `pg_url <url>`.
    pub module_args: Vec<String>,
    /// Start redis-server without the module (plain Redis, as managed services run it).
    pub without_module: bool,
    /// Override the module's `pg_url` (e.g. to point it somewhere unreachable).
    pub module_pg_url: Option<String>,
    /// redis-server serves TLS only; `pg_redis.url` is `rediss://` with `pg_redis.tls_ca_file`.
    pub redis_tls: bool,
}

impl Options {
    pub fn named(name: &str) -> Self {
        Options { name: name.to_owned(), ..Default::default() }
    }
}

impl Servers {
    /// Starts both servers and waits until each answers.
    pub fn start(opts: &Options) -> Result<Servers> {
        install_signal_cleanup();
        // The test clients' TLS needs one process-wide crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = run_root()?.join(&opts.name);
        let pg_port = free_port()?;
        let redis_port = free_port()?;
        let scheme = if opts.redis_tls { "rediss" } else { "redis" };
        let auth = opts.redis_password.as_ref().map(|pw| format!(":{pw}@")).unwrap_or_default();
        let redis_url = format!("{scheme}://{auth}127.0.0.1:{redis_port}/0");
        let mut settings = vec![
            ("shared_preload_libraries".to_owned(), "'pg_redis'".to_owned()),
            ("pg_redis.url".to_owned(), format!("'{redis_url}'")),
        ];
        if opts.redis_tls {
            settings.push(("pg_redis.tls_ca_file".to_owned(), format!("'{}'", dir.join("redis/tls/ca.crt").display())));
        }
        // PG_REDIS_CAPTURE=wal: the whole suite under WAL capture (wal_level = logical), unless
        // a test sets the level itself.
        if std::env::var("PG_REDIS_CAPTURE").as_deref() == Ok("wal")
            && !opts.pg_settings.iter().any(|(k, _)| k == "wal_level")
        {
            settings.push(("wal_level".to_owned(), "logical".to_owned()));
        }
        settings.extend(opts.pg_settings.iter().cloned());
        let pg = Postgres::start(&PgConfig { dir: dir.join("pg"), port: pg_port, settings })?;
        let module = if opts.without_module {
            None
        } else {
            let mut args = vec!["pg_url".to_owned(), opts.module_pg_url.clone().unwrap_or_else(|| pg.url("postgres"))];
            args.extend(opts.module_args.iter().cloned());
            Some((module_path()?, args))
        };
        let redis = Redis::start(&RedisConfig {
            dir: dir.join("redis"),
            port: redis_port,
            password: opts.redis_password.clone(),
            tls: opts.redis_tls,
            module,
        })?;
        Ok(Servers { redis, pg })
    }
}

/// The built module: `target/release/libredis_pg.so` (or `PG_REDIS_MODULE`).
pub fn module_path() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_REDIS_MODULE") {
        return Ok(PathBuf::from(p));
    }
    let p = workspace_root().join("target/release/libredis_pg.so");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!("{} is missing: build it with `cargo build --release -p redis_pg` (make test does)", p.display()))
    }
}

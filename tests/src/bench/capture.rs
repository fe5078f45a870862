//! What capture costs writers: pgbench single-row UPDATEs on identical tables, each captured
//! another way, in alternating rounds of one run (the machine's noise hits every one alike),
//! with fsync on and off. Besides pg_redis, the peers a team would compare it with:
//! - PgQ's `jsontriga` trigger queue (capture only, no consumer: its cheapest case);
//! - `wal2json` decoded by `pg_recvlogical`, as Debezium consumes PostgreSQL;
//! - pg_redis under WAL capture: its worker decodes its slot and delivers to Redis, as in
//!   production (it decodes in every round: the baseline pays for it too, as a server
//!   running pg_redis with wal_level = logical does).
//!
//! The peers come from Debian's `postgresql-15-pgq3` and `postgresql-15-wal2json`
//! (`make setup` installs them); on a server without them their rows say so.

use super::measure::pgbench;
use super::{median, Row};
use crate::harness::bindir;
use crate::Env;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROWS: u32 = 100_000;
const CLIENTS: u32 = 8;

/// How one table is captured.
#[derive(Clone, Copy, PartialEq)]
enum Capture {
    None,
    PgRedisTrigger,
    PgqTrigger,
    Wal2json,
    PgRedisWal,
}

impl Capture {
    fn table(self) -> &'static str {
        match self {
            Capture::None => "bench_w_plain",
            Capture::PgRedisTrigger => "bench_w_sync",
            Capture::PgqTrigger => "bench_w_pgq",
            Capture::Wal2json => "bench_w_w2j",
            Capture::PgRedisWal => "bench_w_wal",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Capture::None => "no capture",
            Capture::PgRedisTrigger => "pg_redis, trigger capture (trigger → outbox → slot → worker → Redis)",
            Capture::PgqTrigger => "PgQ jsontriga trigger queue, no consumer",
            Capture::Wal2json => "wal2json, streamed by pg_recvlogical",
            Capture::PgRedisWal => "pg_redis, WAL capture (slot → worker → Redis, replica identity: the primary key)",
        }
    }

    /// The logical decoding plugin streamed while this table is written.
    fn plugin(self) -> Option<&'static str> {
        match self {
            Capture::Wal2json => Some("wal2json"),
            // pg_redis's own worker decodes its slot (in every round, as it does in production).
            _ => None,
        }
    }
}

/// Settings the bench server needs for the decoding peers.
pub fn server_settings() -> Vec<(String, String)> {
    let mut s = vec![("wal_level".to_owned(), "logical".to_owned())];
    // Since 15.19 and 18.6 an output plugin must be named here (older minors lack the setting).
    if server_has_setting("output_plugin_libraries") {
        s.push(("output_plugin_libraries".into(), "'pgoutput, test_decoding, wal2json, pg_redis'".into()));
    }
    s
}

fn server_has_setting(name: &str) -> bool {
    let Ok(dir) = bindir() else { return false };
    Command::new(dir.join("postgres"))
        .arg("--describe-config")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.split('\t').next() == Some(name)))
        .unwrap_or(false)
}

/// The capture ways this server offers: PgQ and wal2json only where installed.
fn available(env: &mut Env) -> (Vec<Capture>, Vec<Row>) {
    let mut ways = vec![Capture::None, Capture::PgRedisTrigger, Capture::PgRedisWal];
    let mut missing = Vec::new();
    let has_pgq = env
        .pg
        .query_one("SELECT count(*) FROM pg_available_extensions WHERE name = 'pgq'", &[])
        .map(|r| r.get::<_, i64>(0) > 0)
        .unwrap_or(false);
    if has_pgq {
        ways.push(Capture::PgqTrigger);
    } else {
        missing.push(Capture::PgqTrigger);
    }
    let has_wal2json = env
        .pg
        .query_one("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'", &[])
        .map(|r| std::path::Path::new(&r.get::<_, String>(0)).join("wal2json.so").exists())
        .unwrap_or(false);
    if has_wal2json {
        ways.push(Capture::Wal2json);
    } else {
        missing.push(Capture::Wal2json);
    }
    let rows = missing
        .into_iter()
        .map(|c| Row {
            scenario: format!("Write cost, peer: {}", c.describe()),
            ours: "not installed on this server".into(),
            baseline: "—".into(),
            ratio: None,
            goal: "printed every run (PostgreSQL 15: make setup installs it)".into(),
            pass: None,
        })
        .collect();
    (ways, rows)
}

fn prepare(env: &mut Env, ways: &[Capture]) {
    for c in ways {
        let t = c.table();
        env.sql(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v bigint NOT NULL, filler text);
             INSERT INTO {t} SELECT g, 0, repeat('x', 80) FROM generate_series(1, {ROWS}) g;"
        ));
        env.sql(&format!("VACUUM ANALYZE {t}"));
        match c {
            Capture::PgRedisTrigger => env.sql(&format!(
                "SELECT redis.sync_table('{t}', stream => false, backfill => false, capture => 'trigger')"
            )),
            // No stream: the primary key is identity enough, and writers log no old rows.
            Capture::PgRedisWal => env
                .sql(&format!("SELECT redis.sync_table('{t}', stream => false, backfill => false, capture => 'wal')")),
            Capture::PgqTrigger => env.sql(&format!(
                "CREATE EXTENSION IF NOT EXISTS pgq;
                 SELECT pgq.create_queue('bench_q');
                 CREATE TRIGGER bench_pgq AFTER INSERT OR UPDATE OR DELETE ON {t}
                   FOR EACH ROW EXECUTE FUNCTION pgq.jsontriga('bench_q');"
            )),
            Capture::None | Capture::Wal2json => {}
        }
    }
}

/// A logical decoding client streaming a fresh slot of `plugin` to nowhere, for one round.
struct Streamer {
    child: Child,
    slot: String,
}

impl Streamer {
    fn start(env: &mut Env, plugin: &str) -> Streamer {
        let slot = format!("bench_{plugin}");
        env.pg
            .execute("SELECT pg_create_logical_replication_slot($1, $2)", &[&slot, &plugin])
            .unwrap_or_else(|e| panic!("creating a {plugin} slot: {e}"));
        let child = Command::new(bindir().expect("PostgreSQL bindir").join("pg_recvlogical"))
            .args(["-h", "127.0.0.1", "-p", &env.servers.pg.port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["--slot", &slot, "--start", "-f", "/dev/null", "-F", "1", "-s", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pg_recvlogical");
        Streamer { child, slot }
    }

    fn stop(mut self, env: &mut Env) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let t0 = Instant::now();
        // The walsender lets go of the slot a moment after its client left.
        while let Err(e) = env.pg.execute("SELECT pg_drop_replication_slot($1)", &[&self.slot]) {
            assert!(t0.elapsed() < Duration::from_secs(30), "dropping slot {}: {e}", self.slot);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn round(env: &mut Env, c: Capture, secs: u32) -> f64 {
    let streamer = c.plugin().map(|p| Streamer::start(env, p));
    let script = format!("\\set id random(1, {ROWS})\nUPDATE {} SET v = v + 1 WHERE id = :id;\n", c.table());
    let tps = pgbench(env.servers.pg.port, "postgres", &script, CLIENTS, secs);
    if let Some(s) = streamer {
        s.stop(env);
    }
    if c == Capture::PgRedisTrigger {
        crate::check::wait_synced(&mut env.pg, 120_000);
    }
    // What the round left behind is not the next one's cost.
    env.sql("CHECKPOINT");
    tps
}

fn set_fsync(env: &mut Env, on: bool) {
    env.sql(&format!("ALTER SYSTEM SET fsync = {on}"));
    env.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
}

/// Ratios of each capture's TPS to the uncaptured table's, fsync on and off.
pub fn writer_cost(env: &mut Env, scale: u32) -> Vec<Row> {
    let (ways, mut rows) = available(env);
    prepare(env, &ways);
    let secs = (15 / scale).max(3);
    let rounds = if scale > 1 { 1 } else { 3 };
    for fsync in [true, false] {
        set_fsync(env, fsync);
        let mut tps: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
        for r in 0..rounds {
            // Alternate the order, so that no way always runs first or last.
            let order: Vec<usize> =
                if r % 2 == 0 { (0..ways.len()).collect() } else { (0..ways.len()).rev().collect() };
            for i in order {
                tps[i].push(round(env, ways[i], secs));
            }
        }
        let base = median(&mut tps[0].clone());
        let fsync_label = if fsync { "fsync on" } else { "fsync off" };
        eprintln!(
            "  {fsync_label}: {}",
            ways.iter().zip(&tps).map(|(c, t)| format!("{} {t:.0?}", c.table())).collect::<Vec<_>>().join(", ")
        );
        let pgq = ways.iter().position(|c| *c == Capture::PgqTrigger).map(|i| median(&mut tps[i].clone()) / base);
        for (i, c) in ways.iter().enumerate().skip(1) {
            let t = median(&mut tps[i].clone());
            let ratio = t / base;
            let (goal, pass) = match c {
                Capture::PgRedisWal => ("≥ 0.90".to_owned(), Some(ratio >= 0.90)),
                Capture::PgRedisTrigger => match pgq {
                    Some(p) => (format!("≥ PgQ's {p:.2}"), Some(ratio >= p)),
                    None => ("≥ PgQ's (not measured)".to_owned(), None),
                },
                _ => ("peer, printed every run".to_owned(), None),
            };
            rows.push(Row {
                scenario: format!(
                    "Write cost ({fsync_label}), {}: single-row UPDATE, pgbench {CLIENTS} clients",
                    c.describe()
                ),
                ours: format!("{t:.0} TPS"),
                baseline: format!("{base:.0} TPS without capture"),
                ratio: Some(ratio),
                goal,
                pass,
            });
        }
    }
    set_fsync(env, true);
    rows
}

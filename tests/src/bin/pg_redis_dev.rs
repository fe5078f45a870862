//! Starts and stops the project's own servers for the demo and for trying things by hand.
//!
//!   pg_redis_dev up [NAME]     start PostgreSQL + redis-server (module loaded), leave them running
//!   pg_redis_dev down [NAME]   stop them
//!   pg_redis_dev env [NAME]    print PGPORT=... REDIS_PORT=... of running servers
//!   pg_redis_dev rundir        print the directory the servers' data lives in
//!
//! NAME defaults to "demo". State lives in `<run dir>/<NAME>/servers.env`.

use pg_redis_tests::harness::{run_root, Options, Servers};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.get(1).cloned().unwrap_or_else(|| "demo".into());
    let result = match args.first().map(String::as_str) {
        Some("up") => up(&name),
        Some("down") => down(&name),
        Some("rundir") => run_root().map(|d| println!("{}", d.display())),
        Some("env") => env_file(&name)
            .and_then(|f| {
                std::fs::read_to_string(f)
                    .map_err(|_| format!("no servers named {name} are running (pg_redis_dev up {name})"))
            })
            .map(|s| print!("{s}")),
        _ => Err("usage: pg_redis_dev up|down|env [NAME] | rundir".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pg_redis_dev: {e}");
            ExitCode::FAILURE
        }
    }
}

fn env_file(name: &str) -> Result<PathBuf, String> {
    Ok(run_root()?.join(name).join("servers.env"))
}

fn up(name: &str) -> Result<(), String> {
    let _ = down(name);
    let servers = Servers::start(&Options::named(name))?;
    let env = format!(
        "PGHOST=127.0.0.1\nPGPORT={}\nPGUSER=postgres\nREDIS_PORT={}\nPG_PID={}\nREDIS_PID={}\nPG_LOG={}\nREDIS_LOG={}\n",
        servers.pg.port,
        servers.redis.port,
        servers.pg.pid().unwrap_or(0),
        servers.redis.pid().unwrap_or(0),
        servers.pg.log_path().display(),
        servers.redis.dir.join("redis.log").display(),
    );
    std::fs::write(env_file(name)?, &env).map_err(|e| e.to_string())?;
    print!("{env}");
    // Leave them running: the servers outlive this process on purpose.
    std::mem::forget(servers);
    Ok(())
}

fn down(name: &str) -> Result<(), String> {
    let file = env_file(name)?;
    let env = std::fs::read_to_string(&file).map_err(|_| format!("no servers named {name} are running"))?;
    let get = |k: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).and_then(|v| v.parse::<i32>().ok());
    let dir = run_root()?.join(name);
    for (key, sig) in [("REDIS_PID", libc::SIGTERM), ("PG_PID", libc::SIGINT)] {
        if let Some(pid) = get(key) {
            if pg_redis_tests::harness::is_our_server(pid, &dir) {
                pg_redis_tests::harness::stop_pid(pid, sig);
            }
        }
    }
    let _ = std::fs::remove_file(file);
    eprintln!("stopped the {name} servers");
    Ok(())
}

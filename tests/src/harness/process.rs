//! Process plumbing of the harness: where runs live, running as the `postgres` user when we are
//! root, waiting, signalling, and cleaning up after Ctrl-C or a killed earlier run.

use super::Result;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Where servers keep their data: `PG_REDIS_RUN_DIR`, else `<project>/.run`. PostgreSQL runs as
/// the `postgres` user when we are root; if that user cannot reach the project (a clone under
/// /root, say), the run directory moves to /var/tmp and `<project>/.run` links to it.
pub fn run_root() -> Result<PathBuf> {
    if let Ok(d) = std::env::var("PG_REDIS_RUN_DIR") {
        std::fs::create_dir_all(&d).map_err(|e| format!("creating {d}: {e}"))?;
        return Ok(PathBuf::from(d));
    }
    let local = workspace_root().join(".run");
    if !is_root() || reachable_by_others(&workspace_root()) {
        std::fs::create_dir_all(&local).map_err(|e| format!("creating {}: {e}", local.display()))?;
        return Ok(local);
    }
    let tag = workspace_root()
        .to_string_lossy()
        .bytes()
        .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    let outside = PathBuf::from(format!("/var/tmp/pg_redis-{tag:016x}"));
    std::fs::create_dir_all(&outside).map_err(|e| format!("creating {}: {e}", outside.display()))?;
    if std::fs::read_link(&local).ok().as_deref() != Some(outside.as_path()) {
        let _ = std::fs::remove_file(&local);
        let _ = std::os::unix::fs::symlink(&outside, &local);
    }
    Ok(outside)
}

/// Whether every ancestor of `dir` can be traversed by other users.
fn reachable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|d| std::fs::metadata(d).map(|m| m.mode() & 0o001 != 0).unwrap_or(false))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid and gid of the `postgres` system user.
pub fn postgres_user() -> Result<(u32, u32)> {
    let out = Command::new("id").args(["-u", "postgres"]).output().map_err(|e| format!("id: {e}"))?;
    let uid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "the postgres system user is missing (install postgresql-15)".to_string())?;
    let out = Command::new("id").args(["-g", "postgres"]).output().map_err(|e| format!("id: {e}"))?;
    let gid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| "cannot read the postgres group".to_string())?;
    Ok((uid, gid))
}

/// A command that runs as `postgres` when we are root (PostgreSQL refuses to run as root).
pub fn as_postgres(program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
    let mut c = Command::new(program);
    if is_root() {
        let (uid, gid) = postgres_user()?;
        c.uid(uid).gid(gid);
        c.env("HOME", "/var/lib/postgresql");
    }
    Ok(c)
}

/// Gives `path` (recursively) to the postgres user when we are root.
pub fn chown_to_postgres(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = postgres_user()?;
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .map_err(|e| format!("chown: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("chown {} failed", path.display()))
    }
}

/// Starts `cmd` in its own process group so a terminal's Ctrl-C reaches only the harness,
/// which then stops the server in order.
pub fn detach(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
}

pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{what} did not become ready within {timeout:?}"))
}

pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: reaps `pid` if it is our exited child (so a zombie does not count as alive), then
    // signal 0 only checks that the process exists.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG);
        libc::kill(pid, 0) == 0
    }
}

pub fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: sending a signal to a pid we started.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Whether process `pid` works in `dir` (both servers chdir into their data directory): proof
/// that a pid read from one of our pid files is still our server and not a recycled pid.
pub fn is_our_server(pid: i32, dir: &Path) -> bool {
    std::fs::read_link(format!("/proc/{pid}/cwd")).map(|cwd| cwd.starts_with(dir)).unwrap_or(false)
}

/// Servers to stop if the process is interrupted.
static LIVE: Mutex<Vec<(i32, i32)>> = Mutex::new(Vec::new());

pub fn register(pid: i32, stop_signal: i32) {
    if let Ok(mut l) = LIVE.lock() {
        l.push((pid, stop_signal));
    }
}

pub fn unregister(pid: i32) {
    if let Ok(mut l) = LIVE.lock() {
        l.retain(|(p, _)| *p != pid);
    }
}

/// On Ctrl-C or SIGTERM: stop every server this process started, then exit.
pub fn install_signal_cleanup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            let servers = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
            for (pid, sig) in &servers {
                signal(*pid, *sig);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while servers.iter().any(|(p, _)| alive(*p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            std::process::exit(130);
        });
    });
}

/// Signals `pid` and waits (up to 30 s) until it is gone.
pub fn stop_pid(pid: i32, sig: i32) {
    signal(pid, libc::SIGCONT);
    signal(pid, sig);
    let _ = wait_until("server to stop", Duration::from_secs(30), || !alive(pid));
}

//! A throwaway redis-server on a free port, loopback only, with the module loaded unless asked
//! otherwise. It keeps an append-only file, so a SIGKILL loses nothing it acknowledged (tests
//! kill it on purpose).

use super::process::{self, detach, is_our_server, register, unregister, wait_until};
use super::Result;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisConfig {
    pub dir: PathBuf,
    pub port: u16,
    pub password: Option<String>,
    /// Serve TLS only, with certificates made under `dir/tls` (see [`tls`]).
    pub tls: bool,
    /// Module path and its arguments.
    pub module: Option<(PathBuf, Vec<String>)>,
}

pub struct Redis {
    pub dir: PathBuf,
    pub port: u16,
    pub password: Option<String>,
    /// The CA certificate clients must trust, when serving TLS.
    pub tls_ca: Option<PathBuf>,
    module: Option<(PathBuf, Vec<String>)>,
    child: Option<Child>,
}

impl Redis {
    pub fn start(cfg: &RedisConfig) -> Result<Redis> {
        stop_leftover(&cfg.dir);
        let _ = fs::remove_dir_all(&cfg.dir);
        fs::create_dir_all(&cfg.dir).map_err(|e| format!("creating {}: {e}", cfg.dir.display()))?;
        let tls_ca = if cfg.tls { Some(tls::make_certs(&cfg.dir.join("tls"))?) } else { None };
        let mut r = Redis {
            dir: cfg.dir.clone(),
            port: cfg.port,
            password: cfg.password.clone(),
            tls_ca,
            module: cfg.module.clone(),
            child: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("redis-server");
        match &self.tls_ca {
            Some(ca) => {
                let tls = ca.parent().unwrap_or(&self.dir).to_path_buf();
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(tls.join("server.crt"))
                    .arg("--tls-key-file")
                    .arg(tls.join("server.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(ca);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--pidfile")
            .arg(self.dir.join("redis.pid"))
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args([
                "--appendonly",
                "yes",
                "--save",
                "",
                "--enable-module-command",
                "yes",
                "--enable-debug-command",
                "yes",
            ]);
        if let Some(pw) = &self.password {
            cmd.args(["--requirepass", pw]);
        }
        if let Some((path, args)) = &self.module {
            cmd.arg("--loadmodule").arg(path).args(args);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        let child = detach(&mut cmd)
            .spawn()
            .map_err(|e| format!("starting redis-server: {e} (install redis-server; make test does)"))?;
        register(child.id() as i32, libc::SIGTERM);
        self.child = Some(child);
        let url = self.url();
        let log = self.dir.join("redis.log");
        let mut exited = false;
        let ready = wait_until(
            &format!("redis-server on port {} (log: {})", self.port, log.display()),
            Duration::from_secs(30),
            || {
                if let Some(c) = self.child.as_mut() {
                    exited |= matches!(c.try_wait(), Ok(Some(_)));
                }
                exited
                    || redis::Client::open(url.as_str())
                        .and_then(|c| c.get_connection())
                        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                        .is_ok()
            },
        );
        if exited {
            return Err(format!("redis-server exited at start: {}", fs::read_to_string(&log).unwrap_or_default()));
        }
        ready
    }

    /// The URL a client uses (TLS ones skip verification: tests and tools trust their own
    /// throwaway server; pg_redis itself verifies against `tls_ca`).
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "rediss" } else { "redis" };
        let auth = self.password.as_ref().map(|pw| format!(":{pw}@")).unwrap_or_default();
        let insecure = if self.tls_ca.is_some() { "#insecure" } else { "" };
        format!("{scheme}://{auth}127.0.0.1:{}/0{insecure}", self.port)
    }

    pub fn client(&self) -> Result<redis::Connection> {
        redis::Client::open(self.url().as_str())
            .and_then(|c| c.get_connection())
            .map_err(|e| format!("connecting to redis on port {}: {e}", self.port))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            process::signal(pid, libc::SIGCONT);
            process::signal(pid, libc::SIGTERM);
            if wait_until("redis exit", Duration::from_secs(20), || matches!(child.try_wait(), Ok(Some(_)))).is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
            unregister(pid);
        }
    }

    /// SIGKILL: Redis dies without a chance to answer or save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            unregister(child.id() as i32);
        }
    }

    /// Starts it again on the same port with the same data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    /// Starts a killed or stopped server again, keeping its data.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// SIGSTOP / SIGCONT: a server that hangs without closing connections.
    pub fn pause(&self, paused: bool) {
        if let Some(pid) = self.pid() {
            process::signal(pid, if paused { libc::SIGSTOP } else { libc::SIGCONT });
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Throwaway certificates: a CA and a server certificate for 127.0.0.1 signed by it.
pub mod tls {
    use super::Result;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Makes the certificates under `dir`; returns the CA certificate's path.
    pub fn make_certs(dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .map_err(|e| format!("openssl: {e} (install openssl)"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("openssl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)))
            }
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=pg_redis test CA",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
            .map_err(|e| e.to_string())?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ])?;
        Ok(dir.join("ca.crt"))
    }
}

fn stop_leftover(dir: &Path) {
    let Ok(pid) = fs::read_to_string(dir.join("redis.pid")) else { return };
    let Ok(pid) = pid.trim().parse::<i32>() else { return };
    if is_our_server(pid, dir) {
        process::signal(pid, libc::SIGKILL);
        let _ = wait_until("leftover redis to exit", Duration::from_secs(10), || !process::alive(pid));
    }
}

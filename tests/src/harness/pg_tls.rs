//! TLS for a test PostgreSQL cluster: throwaway certificates (a CA and a server certificate
//! for 127.0.0.1 and localhost, made with openssl), `ssl = on`, and a role that may log in over
//! TLS only (`hostssl`), while every other role keeps its plain connections.

use super::postgres::Postgres;
use super::process::chown_to_postgres;
use super::redis::tls::make_certs;
use super::Result;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Turns TLS on and restricts `role` to TLS connections from 127.0.0.1; returns the CA
/// certificate that signed the server's.
pub fn require_tls_for(pg: &Postgres, role: &str) -> Result<PathBuf> {
    let dir = pg.dir.join("tls");
    let ca = make_certs(&dir)?;
    chown_to_postgres(&dir)?;
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("server.key: {e}"))?;
    let hba = pg.dir.join("data/pg_hba.conf");
    let old = fs::read_to_string(&hba).map_err(|e| format!("pg_hba.conf: {e}"))?;
    fs::write(&hba, format!("hostssl all {role} 127.0.0.1/32 trust\nhost all {role} 127.0.0.1/32 reject\n{old}"))
        .map_err(|e| format!("pg_hba.conf: {e}"))?;
    let mut c = pg.connect("postgres")?;
    // One statement each: ALTER SYSTEM cannot run in the implicit transaction of a batch.
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", dir.join("server.crt").display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", dir.join("server.key").display()),
        "ALTER SYSTEM SET ssl = on".into(),
        "SELECT pg_reload_conf()".into(),
    ] {
        c.batch_execute(&sql).map_err(|e| {
            format!(
                "turning TLS on ({sql}): {}",
                e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string())
            )
        })?;
    }
    // The reload is asynchronous: wait until the server reports TLS on.
    super::process::wait_until("ssl = on", std::time::Duration::from_secs(10), || {
        c.query_one("SHOW ssl", &[]).ok().map(|r| r.get::<_, String>(0)).as_deref() == Some("on")
    })?;
    Ok(ca)
}

/// Another CA's certificate, which signed nothing the server presents.
pub fn unrelated_ca(pg: &Postgres) -> Result<PathBuf> {
    make_certs(&pg.dir.join("tls-other"))
}

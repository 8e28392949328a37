//! Database: a stand-in for Grafana's SQL store, only as far as `/api/health` can see it.
//!
//! sqlite3: the database file is created under `[paths] data` on first start (so data persists on
//! disk across restarts) and holds a small text record of the admin account: its login, email
//! and password hash. Grafana seeds the admin user from `[security] admin_user`, `admin_email`
//! and `admin_password` only when the database is first created, and the stand-in keeps that
//! rule: later changes to the settings do not change the stored account.
//! Healthy = the file can still be opened.
//!
//! postgres/mysql: no client library; healthy = a TCP connect to host:port succeeds within 1 s,
//! checked at start-up and on every `/api/health`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::settings::Database;

const HEADER: &str = "grafana-standin database (test double, not SQLite)\n";

/// The server admin account (`isGrafanaAdmin`) as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub login: String,
    pub email: String,
    /// sha256 (hex) of its password.
    pub password_sha256: String,
}

/// Creates/opens the database at start-up. Returns the admin account in force: the stored one
/// for an existing sqlite database, else the configured one (`configured.password_sha256` is
/// the configured password in clear).
pub fn open(db: &Database, configured: Admin) -> Result<Admin> {
    let configured = Admin {
        password_sha256: hex::encode(Sha256::digest(configured.password_sha256.as_bytes())),
        ..configured
    };
    match db {
        Database::Sqlite { path } => open_sqlite(path, configured),
        Database::Network { .. } => Ok(configured),
    }
}

fn open_sqlite(path: &Path, configured: Admin) -> Result<Admin> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if let Some(stored) = field("admin_password_sha256=") {
            // Records written before login and email were kept: the configured ones.
            return Ok(Admin {
                login: field("admin_login=").unwrap_or(configured.login),
                email: field("admin_email=").unwrap_or(configured.email),
                password_sha256: stored,
            });
        }
    }
    std::fs::write(
        path,
        format!(
            "{HEADER}admin_password_sha256={}\nadmin_login={}\nadmin_email={}\n",
            configured.password_sha256, configured.login, configured.email
        ),
    )
    .with_context(|| format!("failed to create database file {}", path.display()))?;
    Ok(configured)
}

/// The `SELECT 1` of the stand-in.
pub async fn healthy(db: &Database) -> bool {
    match db {
        Database::Sqlite { path } => std::fs::File::open(path).is_ok(),
        Database::Network { host, port, .. } => {
            let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
            matches!(
                tokio::time::timeout(Duration::from_secs(1), connect).await,
                Ok(Ok(_))
            )
        }
    }
}

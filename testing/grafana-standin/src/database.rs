//! Database: a stand-in for Grafana's SQL store, only as far as `/api/health` can see it.
//!
//! sqlite3: the database file is created under `[paths] data` on first start (so data persists on
//! disk across restarts) and holds a small text record of the admin password hash. Grafana seeds
//! the admin user from `[security] admin_password` only when the database is first created, and
//! the stand-in keeps that rule: later changes to the setting do not change the stored password.
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

/// Creates/opens the database at start-up. Returns the sha256 (hex) of the admin password that
/// is in force: the stored one for an existing sqlite database, else the configured one.
pub fn open(db: &Database, admin_password: &str) -> Result<String> {
    let configured = hex::encode(Sha256::digest(admin_password.as_bytes()));
    match db {
        Database::Sqlite { path } => open_sqlite(path, &configured),
        Database::Network { .. } => Ok(configured),
    }
}

fn open_sqlite(path: &Path, configured: &str) -> Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        if let Some(stored) = text
            .lines()
            .find_map(|l| l.strip_prefix("admin_password_sha256="))
        {
            return Ok(stored.trim().to_string());
        }
    }
    std::fs::write(
        path,
        format!("{HEADER}admin_password_sha256={configured}\n"),
    )
    .with_context(|| format!("failed to create database file {}", path.display()))?;
    Ok(configured.to_string())
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

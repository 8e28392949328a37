//! pug's store: the one place where pug's state lives.
//!
//! Owns: tenants (spec, generation, status), their secrets (sealed with the master key), the
//! append-only event log, the durable per-tenant work queue, port allocations and API token hashes.
//! SQLite (one file, WAL) by default; PostgreSQL with the same schema, from its own migration
//! folder, for pug deployments with several replicas. Queries are written in the subset both
//! speak (`$N` placeholders in order, `ON CONFLICT`, `RETURNING`).
//!
//! Must not: decide anything. The controller decides what to do; the API decides what to accept.
//! The store only makes each change atomic and durable.

#![forbid(unsafe_code)]

mod activity;
mod crypto;
mod gateway_keys;
mod lease;
mod logins;
mod queue;
mod sessions;
mod tenants;
mod tokens;
mod users;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

pub use activity::Activity;
pub use crypto::{generate_secret, token_hash, write_private, MasterKey, MASTER_KEY_ENV};
pub use gateway_keys::EmbedKeyInfo;
pub use lease::{Heartbeat, Replica};
pub use logins::LOGIN_CODE_TTL_MS;
pub use queue::WorkItem;
pub use sessions::{EmbedScope, EmbedSessionOutcome, SessionRecord, SweepCounts};
pub use tenants::parse_status;
pub use tokens::{
    choose_revocation, local_token_name, token_id, RevokeRefusal, Role, TokenCheck, TokenInfo,
    LOCAL_TOKEN_GRACE_MS, LOCAL_TOKEN_NAME, RENDERER_TOKEN_NAME,
};
pub use users::User;

/// Names of the per-tenant secrets.
pub mod secret {
    /// The Grafana admin password (`security.admin_password`).
    pub const ADMIN_PASSWORD: &str = "admin_password";
    /// Grafana's `security.secret_key`, which encrypts the tenant's datasource credentials.
    pub const SECRET_KEY: &str = "secret_key";
    /// The password of the tenant's own PostgreSQL role, when it has one.
    pub const DATABASE_PASSWORD: &str = "database_password";
    /// The token the tenant's Grafana presents to the renderer.
    pub const RENDERER_TOKEN: &str = "renderer_token";
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("tenant {0} already exists; pick another id or delete it first")]
    AlreadyExists(String),
    /// No `kind` (`tenant`, `user`, …) with this id.
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("tenant {id} changed while this request was in flight (generation {found}, expected {expected}); retry")]
    Conflict {
        id: String,
        expected: i64,
        found: i64,
    },
    #[error("the master key is unusable: {0}")]
    MasterKey(String),
    #[error("the secret {name} of tenant {tenant} cannot be decrypted with this master key")]
    Undecryptable { tenant: String, name: String },
    #[error("no free port between {min} and {max}; widen process.port_min/port_max")]
    NoFreePort { min: u16, max: u16 },
    #[error("no free tenant user id from {base} to {base}+{count}; widen process.tenant_uid_base/tenant_uid_count")]
    NoFreeUid { base: u32, count: u32 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot open the store at {url}")]
    Open {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot make {path} readable by pug's user only")]
    Private {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("store migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("database error")]
    Db(#[from] sqlx::Error),
    /// A write under a work lease that is no longer this pug's (another pug took the tenant
    /// over): refused, so a pug that lost its lease cannot overwrite what the new owner wrote.
    #[error("tenant {tenant}'s work lease is no longer this pug's (another pug took it over); the write was refused")]
    Fenced { tenant: String },
}

/// A write made under a work lease ([`Store::claim_work`]): it applies only while the tenant's
/// queue row still carries this owner and fencing token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence<'a> {
    pub owner: &'a str,
    pub token: i64,
}

/// The store. Cheap to clone (a connection pool and the master key).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    key: MasterKey,
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

impl Store {
    /// Opens (creating if needed) the store at `url` (`sqlite://path` or `postgres://…`),
    /// applies migrations and checks that `key` is the key the store was created with.
    pub async fn open(url: &str, key: MasterKey) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::Open {
            url: redact_url(url),
            source,
        };
        let kind = if url.starts_with("sqlite:") {
            Kind::Sqlite
        } else {
            Kind::Postgres
        };
        let pool = match kind {
            Kind::Sqlite => {
                let path = url.trim_start_matches("sqlite://");
                make_db_private(Path::new(path)).map_err(|source| StoreError::Private {
                    path: path.to_owned(),
                    source,
                })?;
                // SQLite needs its pragmas per connection: WAL for concurrent readers, a busy
                // timeout so writers queue instead of failing, foreign keys for cascades.
                AnyPoolOptions::new()
                    .max_connections(8)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            conn.execute("PRAGMA busy_timeout = 10000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            Ok(())
                        })
                    })
                    .connect(&format!("sqlite://{path}?mode=rwc"))
                    .await
                    .map_err(open_err)?
            }
            Kind::Postgres => AnyPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await
                .map_err(open_err)?,
        };
        let migrator = match kind {
            Kind::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Kind::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        migrator.run(&pool).await.map_err(StoreError::Migrate)?;
        let store = Self { pool, key, kind };
        store.check_master_key().await?;
        Ok(store)
    }

    /// Opens the default store of a data directory: SQLite at `<data>/pug.db` with the data
    /// directory's master key.
    pub async fn open_data_dir(data_dir: &Path, url: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::MasterKey(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let key = MasterKey::load_or_create(data_dir)?;
        Self::open(url, key).await
    }

    async fn check_master_key(&self) -> Result<(), StoreError> {
        let existing: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind("master_key_check")
            .fetch_optional(&self.pool)
            .await?;
        match existing {
            Some(check) if self.key.matches(&check) => Ok(()),
            Some(_) => Err(StoreError::MasterKey(
                "it is not the key this store was created with; start pug with the original \
                 master.key or PUG_MASTER_KEY"
                    .into(),
            )),
            None => {
                sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                )
                .bind("master_key_check")
                .bind(self.key.check_value())
                .execute(&self.pool)
                .await?;
                Ok(())
            }
        }
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and then writes cannot
    /// wait for another writer in WAL mode (SQLite fails the upgrade at once, "database is
    /// locked", whatever the busy timeout), so concurrent API calls got 500s
    /// (bench/wake/scale.py: 141 of 600 concurrent grants). Immediate, it waits its turn under
    /// the busy timeout like any single write. PostgreSQL's `BEGIN` needs nothing more (its
    /// row locks are taken where a transaction reads `FOR UPDATE`).
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.kind {
            Kind::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Kind::Postgres => self.pool.begin().await,
        }
    }

    /// Whether this store is SQLite (one pug process) or PostgreSQL.
    pub fn backend_name(&self) -> &'static str {
        match self.kind {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }

    /// Closes the pool, waiting for connections to finish.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the SQLite file (and makes an existing one, its WAL and shared-memory files) mode
/// 0600 before SQLite opens it: it holds password hashes, emails and sealed secrets, and SQLite
/// creates its WAL and SHM files with the database file's mode. Skips `:memory:` URLs.
fn make_db_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path_str = path.to_string_lossy();
    if path_str.is_empty() || path_str.starts_with(':') || path_str.contains("mode=memory") {
        return Ok(());
    }
    let path = Path::new(path_str.split('?').next().unwrap_or_default());
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
#[allow(clippy::disallowed_methods)] // The crate's one wall-clock read (clippy.toml).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A URL with its password replaced, for error messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

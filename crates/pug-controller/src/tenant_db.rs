//! Tenant databases on a shared PostgreSQL server (`grafana_database.url`).
//!
//! Owns: one login role and one database per tenant (`pug_<id>`, dashes as underscores), created
//! idempotently with the tenant's generated password, and dropped only when asked (`--purge`).
//! A tenant with more than one replica needs this: Grafana's SQLite database is single-node.
//!
//! Must not: touch any database or role it did not name itself.

use pug_orchestrator::DatabaseSettings;
use pug_types::{ExposeSecret, SecretString, TenantId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

/// Errors of tenant database management.
#[derive(Debug, thiserror::Error)]
pub enum TenantDbError {
    #[error("grafana_database.url is not a usable PostgreSQL URL: {0}")]
    Url(String),
    #[error("PostgreSQL refused {action} for tenant {tenant}")]
    Sql {
        action: &'static str,
        tenant: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the generated database password has unexpected characters")]
    Password,
}

/// Creates and drops tenants' databases.
#[derive(Clone, Debug)]
pub struct TenantDatabases {
    pool: PgPool,
    /// `host:port` Grafana connects to.
    host: String,
    ssl_mode: String,
}

impl TenantDatabases {
    /// Connects lazily (the first tenant operation connects) to the server at `url`.
    pub fn new(url: &str, ssl_mode: &str) -> Result<Self, TenantDbError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| TenantDbError::Url(e.to_string()))?;
        let opts = opts.disable_statement_logging();
        let host = format!("{}:{}", opts.get_host(), opts.get_port());
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(opts);
        Ok(Self {
            pool,
            host,
            ssl_mode: ssl_mode.to_owned(),
        })
    }

    /// The role and database name of a tenant.
    pub fn name_of(&self, tenant: &TenantId) -> String {
        format!("pug_{}", tenant.as_str().replace('-', "_"))
    }

    /// Creates the tenant's role and database if missing, and sets the role's password.
    /// Returns whether the database was created now.
    pub async fn ensure(
        &self,
        tenant: &TenantId,
        password: &SecretString,
    ) -> Result<bool, TenantDbError> {
        let name = self.name_of(tenant);
        let sql = |action: &'static str| {
            let tenant = tenant.to_string();
            move |source| TenantDbError::Sql {
                action,
                tenant,
                source,
            }
        };
        // Role and database names cannot be bound as parameters in DDL; `name` is built from a
        // validated DNS label, so it holds only [a-z0-9_], and the password only base64url
        // characters (checked here), so quoting them is safe.
        let pw = password.expose_secret();
        if !pw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(TenantDbError::Password);
        }
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&name)
                .fetch_one(&self.pool)
                .await
                .map_err(sql("checking the role"))?;
        let verb = if role_exists { "ALTER" } else { "CREATE" };
        sqlx::query(&format!("{verb} ROLE \"{name}\" LOGIN PASSWORD '{pw}'"))
            .execute(&self.pool)
            .await
            .map_err(sql("creating the role"))?;
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&self.pool)
                .await
                .map_err(sql("checking the database"))?;
        if db_exists {
            return Ok(false);
        }
        match sqlx::query(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
            .execute(&self.pool)
            .await
        {
            Ok(_) => Ok(true),
            // Created concurrently by another pug replica: fine.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => Ok(false),
            Err(source) => Err(TenantDbError::Sql {
                action: "creating the database",
                tenant: tenant.to_string(),
                source,
            }),
        }
    }

    /// Drops the tenant's database and role (absent is success).
    pub async fn drop(&self, tenant: &TenantId) -> Result<(), TenantDbError> {
        let name = self.name_of(tenant);
        let sql = |action: &'static str| {
            let tenant = tenant.to_string();
            move |source| TenantDbError::Sql {
                action,
                tenant,
                source,
            }
        };
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&self.pool)
            .await
            .map_err(sql("dropping the database"))?;
        sqlx::query(&format!("DROP ROLE IF EXISTS \"{name}\""))
            .execute(&self.pool)
            .await
            .map_err(sql("dropping the role"))?;
        Ok(())
    }

    /// Whether the tenant's database exists.
    pub async fn exists(&self, tenant: &TenantId) -> Result<bool, TenantDbError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(self.name_of(tenant))
            .fetch_one(&self.pool)
            .await
            .map_err(|source| TenantDbError::Sql {
                action: "checking the database",
                tenant: tenant.to_string(),
                source,
            })
    }

    /// Grafana's `[database]` settings for the tenant.
    pub fn settings(&self, tenant: &TenantId, password: SecretString) -> DatabaseSettings {
        let name = self.name_of(tenant);
        DatabaseSettings::Postgres {
            host: self.host.clone(),
            name: name.clone(),
            user: name,
            password,
            ssl_mode: self.ssl_mode.clone(),
        }
    }
}

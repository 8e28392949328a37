//! Tenant databases on a shared PostgreSQL server (`grafana_database.url`).
//!
//! Owns: one login role and one database per tenant incarnation, created idempotently with the
//! tenant's generated password, and dropped only when asked (`--purge`). A tenant with more
//! than one replica needs this: Grafana's SQLite database is single-node.
//!
//! Isolation: role and database are named `pug_<id>_<8 hex>` (dashes as underscores, the id
//! cut so the name fits PostgreSQL's 63 bytes), the hex a hash of the tenant's database
//! password, which is generated anew whenever a tenant is created. A tenant deleted without
//! `--purge` and created again with the same id therefore gets a new role and a new, empty
//! database; the old ones stay behind as the archive (like the docker volumes). Each database
//! refuses every role but its own (`REVOKE ALL ON DATABASE … FROM PUBLIC`, and the same on its
//! `public` schema), so one tenant's role cannot connect to another tenant's database.
//!
//! Must not: touch any database or role it did not name itself.

use pug_orchestrator::DatabaseSettings;
use pug_types::{ExposeSecret, SecretString, TenantId};
use sha2::{Digest, Sha256};
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
    #[error("cannot connect to the new database of tenant {tenant} to restrict it")]
    Connect {
        tenant: String,
        #[source]
        source: sqlx::Error,
    },
}

/// Creates and drops tenants' databases.
#[derive(Clone, Debug)]
pub struct TenantDatabases {
    pool: PgPool,
    /// The admin connection's options, to reach a tenant's own database.
    opts: PgConnectOptions,
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
            .connect_lazy_with(opts.clone());
        Ok(Self {
            pool,
            opts,
            host,
            ssl_mode: ssl_mode.to_owned(),
        })
    }

    /// The role and database name of a tenant incarnation, whose database password is
    /// `password` (see the module docs).
    pub fn name_of(&self, tenant: &TenantId, password: &SecretString) -> String {
        name_of(tenant, password)
    }

    /// Creates the tenant's role and database if missing, sets the role's password and makes
    /// sure no other role may connect. Returns whether the database was created now.
    pub async fn ensure(
        &self,
        tenant: &TenantId,
        password: &SecretString,
    ) -> Result<bool, TenantDbError> {
        let name = self.name_of(tenant, password);
        let sql = |action: &'static str| sql_error(tenant, action);
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
        let created = if db_exists {
            false
        } else {
            match sqlx::query(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\""))
                .execute(&self.pool)
                .await
            {
                Ok(_) => true,
                // Created concurrently by another pug replica: fine.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => false,
                Err(source) => {
                    return Err(TenantDbError::Sql {
                        action: "creating the database",
                        tenant: tenant.to_string(),
                        source,
                    })
                }
            }
        };
        // PostgreSQL grants CONNECT and TEMP on every new database to PUBLIC. Checked on
        // every pass (not only at creation), so a crash between CREATE and REVOKE heals.
        let public_connects: bool =
            sqlx::query_scalar("SELECT has_database_privilege('public', $1, 'CONNECT')")
                .bind(&name)
                .fetch_one(&self.pool)
                .await
                .map_err(sql("checking who may connect"))?;
        if public_connects {
            self.restrict(tenant, &name).await?;
        }
        Ok(created)
    }

    /// Lets only the tenant's role use its database and the database's `public` schema.
    async fn restrict(&self, tenant: &TenantId, name: &str) -> Result<(), TenantDbError> {
        let sql = |action: &'static str| sql_error(tenant, action);
        // The schema first: once PUBLIC cannot connect, the database is closed.
        let mut conn = self
            .opts
            .clone()
            .database(name)
            .connect()
            .await
            .map_err(|source| TenantDbError::Connect {
                tenant: tenant.to_string(),
                source,
            })?;
        for statement in [
            "REVOKE ALL ON SCHEMA public FROM PUBLIC".to_owned(),
            format!("GRANT ALL ON SCHEMA public TO \"{name}\""),
        ] {
            sqlx::query(&statement)
                .execute(&mut conn)
                .await
                .map_err(sql("restricting the public schema"))?;
        }
        drop(conn);
        for statement in [
            format!("REVOKE ALL ON DATABASE \"{name}\" FROM PUBLIC"),
            format!("GRANT ALL ON DATABASE \"{name}\" TO \"{name}\""),
        ] {
            sqlx::query(&statement)
                .execute(&self.pool)
                .await
                .map_err(sql("restricting who may connect"))?;
        }
        Ok(())
    }

    /// Drops the database and role of the tenant incarnation whose database password is
    /// `password` (absent is success).
    pub async fn drop(
        &self,
        tenant: &TenantId,
        password: &SecretString,
    ) -> Result<(), TenantDbError> {
        let name = self.name_of(tenant, password);
        let sql = |action: &'static str| sql_error(tenant, action);
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
    pub async fn exists(
        &self,
        tenant: &TenantId,
        password: &SecretString,
    ) -> Result<bool, TenantDbError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(self.name_of(tenant, password))
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
        let name = self.name_of(tenant, &password);
        DatabaseSettings::Postgres {
            host: self.host.clone(),
            name: name.clone(),
            user: name,
            password,
            ssl_mode: self.ssl_mode.clone(),
        }
    }
}

/// `pug_<id>_<8 hex of sha256(password)>`, at most 63 bytes (PostgreSQL cuts longer names,
/// which could make two tenants' names equal).
fn name_of(tenant: &TenantId, password: &SecretString) -> String {
    let digest = Sha256::digest(format!("pug tenant db\0{}", password.expose_secret()).as_bytes());
    let id: String = tenant.as_str().replace('-', "_").chars().take(50).collect();
    format!("pug_{id}_{}", &hex::encode(digest)[..8])
}

/// Maps a failed statement of `action` on `tenant`'s database to [`TenantDbError::Sql`].
fn sql_error(tenant: &TenantId, action: &'static str) -> impl FnOnce(sqlx::Error) -> TenantDbError {
    let tenant = tenant.to_string();
    move |source| TenantDbError::Sql {
        action,
        tenant,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_incarnation_and_fit() {
        let long = TenantId::parse(&"a".repeat(63)).unwrap();
        let acme = TenantId::parse("acme-eu").unwrap();
        let one = SecretString::from("one");
        let two = SecretString::from("two");
        assert!(name_of(&acme, &one).starts_with("pug_acme_eu_"));
        assert_ne!(name_of(&acme, &one), name_of(&acme, &two));
        assert_eq!(name_of(&acme, &one), name_of(&acme, &one));
        assert!(name_of(&long, &one).len() <= 63);
        assert!(name_of(&long, &one)
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
    }
}

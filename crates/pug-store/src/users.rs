//! pug users (argon2id hashes only) and their tenant memberships, each with a Grafana role.
//!
//! Sessions are [`crate::sessions`], the gateway's keys [`crate::gateway_keys`], one-time
//! sign-in codes [`crate::logins`].
//!
//! Owns: the `users` and `memberships` tables.
//!
//! Must not: hash or verify passwords (`pug-auth` does; this module keeps the PHC string it is
//! given) or decide who may do what.

use pug_types::TenantId;
use sqlx::Row;

use crate::{now_ms, Store, StoreError};

/// A pug user, as listed (never with its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub email: String,
    pub display_name: String,
    pub created_at_ms: i64,
    /// Tenant id → Grafana role (`Viewer`, `Editor`, `Admin`).
    pub memberships: std::collections::BTreeMap<String, String>,
}

impl Store {
    /// Creates a user; `AlreadyExists` if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        email: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO users (name, email, display_name, password_hash, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(email)
        .bind(display_name)
        .bind(password_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::AlreadyExists(format!("user {name}")));
        }
        Ok(())
    }

    /// Replaces a user's password hash and ends their sessions.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: name.to_owned(),
            });
        }
        sqlx::query("DELETE FROM sessions WHERE user_name = $1 AND tenant_id IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes a user, their memberships and their sessions.
    pub async fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM sessions WHERE user_name = $1 AND tenant_id IS NULL")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM memberships WHERE user_name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                kind: "user",
                id: name.to_owned(),
            });
        }
        tx.commit().await?;
        Ok(())
    }

    /// A user's password hash (PHC string), email and display name, for login.
    pub async fn user_credentials(
        &self,
        name: &str,
    ) -> Result<Option<(String, String, String)>, StoreError> {
        let row =
            sqlx::query("SELECT password_hash, email, display_name FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
    }

    /// Every user with their memberships, ordered by name.
    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT name, email, display_name, created_at_ms FROM users ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        let mut users = Vec::with_capacity(rows.len());
        for r in &rows {
            users.push(User {
                name: r.try_get(0)?,
                email: r.try_get(1)?,
                display_name: r.try_get(2)?,
                created_at_ms: r.try_get(3)?,
                memberships: Default::default(),
            });
        }
        let rows = sqlx::query("SELECT user_name, tenant_id, role FROM memberships")
            .fetch_all(&self.pool)
            .await?;
        for r in &rows {
            let user: String = r.try_get(0)?;
            if let Some(u) = users.iter_mut().find(|u| u.name == user) {
                u.memberships.insert(r.try_get(1)?, r.try_get(2)?);
            }
        }
        Ok(users)
    }

    /// Gives `user` `role` in `tenant` (replacing a previous role).
    pub async fn grant(&self, user: &str, tenant: &TenantId, role: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let user_exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM users WHERE name = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if user_exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "user",
                id: user.to_owned(),
            });
        }
        let tenant_exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if tenant_exists.is_none() {
            return Err(StoreError::NotFound {
                kind: "tenant",
                id: tenant.to_string(),
            });
        }
        sqlx::query(
            "INSERT INTO memberships (user_name, tenant_id, role) VALUES ($1, $2, $3) \
             ON CONFLICT (user_name, tenant_id) DO UPDATE SET role = excluded.role",
        )
        .bind(user)
        .bind(tenant.as_str())
        .bind(role)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes `user`'s membership of `tenant`; `false` if there was none.
    pub async fn revoke(&self, user: &str, tenant: &TenantId) -> Result<bool, StoreError> {
        let deleted =
            sqlx::query("DELETE FROM memberships WHERE user_name = $1 AND tenant_id = $2")
                .bind(user)
                .bind(tenant.as_str())
                .execute(&self.pool)
                .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// `user`'s role in `tenant`, or `None` if not a member.
    pub async fn membership(
        &self,
        user: &str,
        tenant: &TenantId,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT role FROM memberships WHERE user_name = $1 AND tenant_id = $2",
        )
        .bind(user)
        .bind(tenant.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }
}

impl Store {
    /// Every tenant `user` is a member of, with the role there.
    pub async fn memberships_of(&self, user: &str) -> Result<Vec<(TenantId, String)>, StoreError> {
        let rows = sqlx::query("SELECT tenant_id, role FROM memberships WHERE user_name = $1")
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok((
                    TenantId::parse(&id).map_err(|e| StoreError::Corrupt(e.message))?,
                    r.try_get(1)?,
                ))
            })
            .collect()
    }
}

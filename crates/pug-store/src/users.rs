//! The gateway's state: pug users (argon2id hashes only), tenant memberships with a Grafana
//! role, browser sessions (stored by hash), embed-token signing keys (sealed with the master
//! key), and the one query the gateway's routing table is refreshed from.
//!
//! Password hashing and verification happen in `pug-gateway`; this module only keeps the
//! PHC string it is given.

use pug_types::{ExposeSecret, SecretString, TenantId, TenantStatus};
use sqlx::Row;

use crate::{generate_secret, now_ms, token_hash, Store, StoreError};

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

/// A signed-in person, as a session records them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The pug user, or the embed token's `sub`.
    pub user: String,
    pub email: String,
    pub display_name: String,
    /// Set for embed sessions: the only tenant the session may reach, and the role it has there.
    pub scope: Option<(TenantId, String)>,
    pub expires_at_ms: i64,
}

/// An embed key's public description (the key itself is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedKeyInfo {
    /// The key id, sent as `kid` in the token header.
    pub id: String,
    pub name: String,
    /// The one tenant this key may sign for; `None`: any tenant.
    pub tenant: Option<String>,
    pub created_at_ms: i64,
    /// `HS256` (the stored key is the shared secret) or `EdDSA` (the stored key is the
    /// webapp's Ed25519 public key, PEM).
    pub algorithm: String,
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
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {name}")));
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
        let mut tx = self.pool.begin().await?;
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
            return Err(StoreError::NotFound(format!("user {name}")));
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
        let mut tx = self.pool.begin().await?;
        let user_exists: Option<String> =
            sqlx::query_scalar("SELECT name FROM users WHERE name = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if user_exists.is_none() {
            return Err(StoreError::NotFound(format!("user {user}")));
        }
        let tenant_exists: Option<String> =
            sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(tenant.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if tenant_exists.is_none() {
            return Err(StoreError::NotFound(tenant.to_string()));
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

    /// Records a new session; returns its id (the cookie value), stored only as a hash.
    pub async fn create_session(&self, s: &SessionRecord) -> Result<SecretString, StoreError> {
        let id = generate_secret();
        let (tenant, role) = match &s.scope {
            Some((t, r)) => (Some(t.as_str().to_owned()), Some(r.clone())),
            None => (None, None),
        };
        sqlx::query(
            "INSERT INTO sessions (id_hash, user_name, email, display_name, tenant_id, role, \
             created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token_hash(&id))
        .bind(&s.user)
        .bind(&s.email)
        .bind(&s.display_name)
        .bind(tenant)
        .bind(role)
        .bind(now_ms())
        .bind(s.expires_at_ms)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// The unexpired session with this id, if any.
    pub async fn session(&self, id: &SecretString) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT user_name, email, display_name, tenant_id, role, expires_at_ms \
             FROM sessions WHERE id_hash = $1 AND expires_at_ms > $2",
        )
        .bind(token_hash(id))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let tenant: Option<String> = r.try_get(3)?;
        let role: Option<String> = r.try_get(4)?;
        let scope = match (tenant, role) {
            (Some(t), Some(r)) => Some((
                TenantId::parse(&t).map_err(|e| StoreError::Corrupt(e.message))?,
                r,
            )),
            _ => None,
        };
        Ok(Some(SessionRecord {
            user: r.try_get(0)?,
            email: r.try_get(1)?,
            display_name: r.try_get(2)?,
            scope,
            expires_at_ms: r.try_get(5)?,
        }))
    }

    /// Ends a session (logout). Also drops expired sessions.
    pub async fn delete_session(&self, id: &SecretString) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1 OR expires_at_ms <= $2")
            .bind(token_hash(id))
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Makes an HS256 embed key; returns its description and the key (shown once).
    pub async fn create_embed_key(
        &self,
        name: &str,
        tenant: Option<&TenantId>,
    ) -> Result<(EmbedKeyInfo, SecretString), StoreError> {
        self.insert_embed_key(name, tenant, "HS256", generate_secret())
            .await
    }

    /// Registers an EdDSA embed key: the webapp signs with its Ed25519 private key, pug keeps
    /// only `public_key_pem` (checked by the caller).
    pub async fn create_embed_key_eddsa(
        &self,
        name: &str,
        tenant: Option<&TenantId>,
        public_key_pem: &str,
    ) -> Result<EmbedKeyInfo, StoreError> {
        let (info, _) = self
            .insert_embed_key(name, tenant, "EdDSA", public_key_pem.to_owned().into())
            .await?;
        Ok(info)
    }

    async fn insert_embed_key(
        &self,
        name: &str,
        tenant: Option<&TenantId>,
        algorithm: &str,
        key: SecretString,
    ) -> Result<(EmbedKeyInfo, SecretString), StoreError> {
        if let Some(t) = tenant {
            let exists: Option<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = $1")
                .bind(t.as_str())
                .fetch_optional(&self.pool)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(t.to_string()));
            }
        }
        let id = format!("ek_{}", &generate_secret().expose_secret()[..16]);
        let (nonce, ciphertext) = self
            .key
            .seal(&format!("embed-key/{id}"), key.expose_secret().as_bytes());
        let now = now_ms();
        sqlx::query(
            "INSERT INTO embed_keys (id, name, tenant_id, nonce, ciphertext, created_at_ms, algorithm) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(name)
        .bind(tenant.map(|t| t.as_str().to_owned()))
        .bind(nonce)
        .bind(ciphertext)
        .bind(now)
        .bind(algorithm)
        .execute(&self.pool)
        .await?;
        Ok((
            EmbedKeyInfo {
                id,
                name: name.to_owned(),
                tenant: tenant.map(|t| t.to_string()),
                created_at_ms: now,
                algorithm: algorithm.to_owned(),
            },
            key,
        ))
    }

    /// Every embed key with its (decrypted) secret, for verifying tokens.
    pub async fn embed_keys(&self) -> Result<Vec<(EmbedKeyInfo, SecretString)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, tenant_id, nonce, ciphertext, created_at_ms, algorithm FROM embed_keys ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0)?;
            let nonce: Vec<u8> = r.try_get(3)?;
            let ciphertext: Vec<u8> = r.try_get(4)?;
            let undecryptable = || StoreError::Undecryptable {
                tenant: "-".into(),
                name: format!("embed-key/{id}"),
            };
            let plain = self
                .key
                .open(&format!("embed-key/{id}"), &nonce, &ciphertext)
                .ok_or_else(undecryptable)?;
            let key = String::from_utf8(plain).map_err(|_| undecryptable())?;
            out.push((
                EmbedKeyInfo {
                    id: id.clone(),
                    name: r.try_get(1)?,
                    tenant: r.try_get(2)?,
                    created_at_ms: r.try_get(5)?,
                    algorithm: r.try_get(6)?,
                },
                SecretString::from(key),
            ));
        }
        Ok(out)
    }

    /// Deletes an embed key; `false` if there was none.
    pub async fn delete_embed_key(&self, id: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM embed_keys WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// The gateway's signing key for its cookies (32 random bytes, base64url), created on first
    /// use and shared by every pug replica on this store.
    pub async fn gateway_cookie_key(&self) -> Result<SecretString, StoreError> {
        const AAD: &str = "gateway/cookie_key";
        let fresh = generate_secret();
        let (nonce, ciphertext) = self.key.seal(AAD, fresh.expose_secret().as_bytes());
        let value = format!("{}:{}", hex::encode(nonce), hex::encode(ciphertext));
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind("gateway_cookie_key")
            .bind(value)
            .execute(&self.pool)
            .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind("gateway_cookie_key")
            .fetch_one(&self.pool)
            .await?;
        let corrupt = || StoreError::MasterKey("the gateway cookie key cannot be opened".into());
        let (n, c) = stored.split_once(':').ok_or_else(corrupt)?;
        let (n, c) = (
            hex::decode(n).map_err(|_| corrupt())?,
            hex::decode(c).map_err(|_| corrupt())?,
        );
        let plain = self.key.open(AAD, &n, &c).ok_or_else(corrupt)?;
        Ok(SecretString::from(
            String::from_utf8(plain).map_err(|_| corrupt())?,
        ))
    }

    /// Every tenant's status (phase and ready endpoints), for the gateway's routing table.
    pub async fn tenant_statuses(&self) -> Result<Vec<(TenantId, TenantStatus)>, StoreError> {
        let rows = sqlx::query("SELECT tenant_id, status FROM tenant_status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let status: String = r.try_get(1)?;
                Ok((
                    TenantId::parse(&id).map_err(|e| StoreError::Corrupt(e.message))?,
                    serde_json::from_str(&status)
                        .map_err(|e| StoreError::Corrupt(format!("status of {id}: {e}")))?,
                ))
            })
            .collect()
    }

    /// One tenant's status, for a routing-table miss.
    pub async fn tenant_status(&self, id: &TenantId) -> Result<Option<TenantStatus>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM tenant_status WHERE tenant_id = $1")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        status
            .map(|s| {
                serde_json::from_str(&s)
                    .map_err(|e| StoreError::Corrupt(format!("status of {id}: {e}")))
            })
            .transpose()
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

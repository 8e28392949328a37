//! The gateway's state: pug users (argon2id hashes only), tenant memberships with a Grafana
//! role, browser sessions (stored by hash), embed-token signing keys (sealed with the master
//! key), the ids of embed tokens already used, and the one query the gateway's routing table is
//! refreshed from.
//!
//! An embed session is bound to the key that signed its token and to its tenant's incarnation
//! (`tenants.created_at_ms` when it was minted): [`Store::session`] honours it only while both
//! still hold, so deleting the key or the tenant ends it at once, and a tenant created again
//! under the same id never inherits it. [`Store::sweep_sessions`] deletes the rows that can no
//! longer be honoured (expired, or their key or tenant gone) and the token ids past their expiry.
//!
//! One-time sign-in codes for host mode's tenant hosts are [`crate::logins`].
//!
//! Password hashing and verification happen in `pug-auth`; this module only keeps the
//! PHC string it is given. It decides nothing about tokens: the gateway says which token id to
//! remember and until when.

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
    /// The pug user, or the Grafana login the gateway made of an embed token's `sub`.
    pub user: String,
    pub email: String,
    pub display_name: String,
    /// Set for embed sessions: the only tenant the session may reach, the role it has there,
    /// and the key that vouched for it.
    pub scope: Option<EmbedScope>,
    pub expires_at_ms: i64,
}

/// What an embed session may do, and on whose authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedScope {
    /// The only tenant the session may reach.
    pub tenant: TenantId,
    /// Its Grafana role there.
    pub role: String,
    /// The embed key that signed the token: the session ends when the key is deleted.
    pub key_id: String,
}

/// The outcome of [`Store::create_embed_session`].
#[derive(Debug)]
pub enum EmbedSessionOutcome {
    /// The session's id (the cookie value), stored only as a hash.
    Created(SecretString),
    /// The token id was used before with this key: nothing was stored.
    Replayed,
    /// The tenant does not exist (any more): nothing was stored.
    NoTenant,
    /// The key was deleted meanwhile: nothing was stored.
    NoKey,
}

/// What one [`Store::sweep_sessions`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepCounts {
    /// Sessions past their expiry.
    pub expired_sessions: u64,
    /// Embed sessions whose key or tenant (incarnation) is gone.
    pub orphaned_sessions: u64,
    /// Remembered embed token ids past their expiry.
    pub token_ids: u64,
    /// One-time sign-in codes past their expiry (see [`Store::create_login_code`]).
    pub login_codes: u64,
}

/// Rows deleted per statement by the sweep, so that it never holds the write lock for long.
const SWEEP_BATCH: i64 = 5_000;

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
        let mut tx = self.pool.begin().await?;
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

    /// Records a new password session; returns its id (the cookie value), stored only as a
    /// hash. Embed sessions are made with [`Store::create_embed_session`], which binds them to
    /// their key and tenant: a record with a scope is refused here.
    pub async fn create_session(&self, s: &SessionRecord) -> Result<SecretString, StoreError> {
        if s.scope.is_some() {
            return Err(StoreError::Corrupt(
                "embed sessions are made with create_embed_session, which binds them to their key and tenant".into(),
            ));
        }
        let id = generate_secret();
        // A sign-in is its own login: the sessions its codes mint on tenant hosts share it.
        insert_session(&self.pool, &id, s, None, Some(&token_hash(&id))).await?;
        Ok(id)
    }

    /// Records an embed session, in one transaction with its checks: its key must still exist,
    /// its tenant must exist (the session is bound to the tenant's current incarnation), and
    /// `token_id` — the token's (`jti`, remember-until ms), if it has one — must not have been
    /// used with this key before; it is remembered until then.
    pub async fn create_embed_session(
        &self,
        s: &SessionRecord,
        token_id: Option<(&str, i64)>,
    ) -> Result<EmbedSessionOutcome, StoreError> {
        let Some(scope) = &s.scope else {
            return Err(StoreError::Corrupt(
                "an embed session needs a scope (tenant, role, key)".into(),
            ));
        };
        let mut tx = self.pool.begin().await?;
        let key: Option<String> = sqlx::query_scalar("SELECT id FROM embed_keys WHERE id = $1")
            .bind(&scope.key_id)
            .fetch_optional(&mut *tx)
            .await?;
        if key.is_none() {
            return Ok(EmbedSessionOutcome::NoKey);
        }
        let incarnation: Option<i64> =
            sqlx::query_scalar("SELECT created_at_ms FROM tenants WHERE id = $1")
                .bind(scope.tenant.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(incarnation) = incarnation else {
            return Ok(EmbedSessionOutcome::NoTenant);
        };
        if let Some((jti, until_ms)) = token_id {
            let fresh = sqlx::query(
                "INSERT INTO embed_token_ids (key_id, jti, expires_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (key_id, jti) DO NOTHING",
            )
            .bind(&scope.key_id)
            .bind(jti)
            .bind(until_ms)
            .execute(&mut *tx)
            .await?;
            if fresh.rows_affected() == 0 {
                return Ok(EmbedSessionOutcome::Replayed);
            }
        }
        let id = generate_secret();
        insert_session(&mut *tx, &id, s, Some(incarnation), None).await?;
        tx.commit().await?;
        Ok(EmbedSessionOutcome::Created(id))
    }

    /// The unexpired session with this id, if any. An embed session only while its key exists
    /// and its tenant is the incarnation it was minted in.
    pub async fn session(&self, id: &SecretString) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.user_name, s.email, s.display_name, s.tenant_id, s.role, s.expires_at_ms, \
             s.key_id FROM sessions s WHERE s.id_hash = $1 AND s.expires_at_ms > $2 \
             AND (s.tenant_id IS NULL OR ( \
               EXISTS (SELECT 1 FROM embed_keys k WHERE k.id = s.key_id) \
               AND EXISTS (SELECT 1 FROM tenants t WHERE t.id = s.tenant_id \
                           AND t.created_at_ms = s.tenant_created_at_ms)))",
        )
        .bind(token_hash(id))
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let tenant: Option<String> = r.try_get(3)?;
        let role: Option<String> = r.try_get(4)?;
        let key_id: Option<String> = r.try_get(6)?;
        let scope = match (tenant, role, key_id) {
            (Some(t), Some(role), Some(key_id)) => Some(EmbedScope {
                tenant: TenantId::parse(&t).map_err(|e| StoreError::Corrupt(e.message))?,
                role,
                key_id,
            }),
            (None, _, _) => None,
            _ => {
                return Err(StoreError::Corrupt(
                    "an embed session without its role or key".into(),
                ))
            }
        };
        Ok(Some(SessionRecord {
            user: r.try_get(0)?,
            email: r.try_get(1)?,
            display_name: r.try_get(2)?,
            scope,
            expires_at_ms: r.try_get(5)?,
        }))
    }

    /// Ends a session (logout). Expired ones are left to [`Store::sweep_sessions`].
    pub async fn delete_session(&self, id: &SecretString) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
            .bind(token_hash(id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes what can no longer be honoured as of `now_ms`: expired sessions, embed sessions
    /// whose key or tenant incarnation is gone, and embed token ids past their expiry. Deletes
    /// in batches (each its own statement) so that it never holds the write lock for long.
    pub async fn sweep_sessions(&self, now_ms: i64) -> Result<SweepCounts, StoreError> {
        let mut counts = SweepCounts::default();
        loop {
            let n = sqlx::query(
                "DELETE FROM sessions WHERE id_hash IN \
                 (SELECT id_hash FROM sessions WHERE expires_at_ms <= $1 LIMIT $2)",
            )
            .bind(now_ms)
            .bind(SWEEP_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            counts.expired_sessions += n;
            if n < SWEEP_BATCH as u64 {
                break;
            }
        }
        counts.orphaned_sessions = sqlx::query(
            "DELETE FROM sessions WHERE tenant_id IS NOT NULL AND ( \
               NOT EXISTS (SELECT 1 FROM embed_keys k WHERE k.id = sessions.key_id) \
               OR NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = sessions.tenant_id \
                              AND t.created_at_ms = sessions.tenant_created_at_ms))",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        counts.token_ids = sqlx::query("DELETE FROM embed_token_ids WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        counts.login_codes = sqlx::query("DELETE FROM login_codes WHERE expires_at_ms <= $1")
            .bind(now_ms)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(counts)
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
                return Err(StoreError::NotFound {
                    kind: "tenant",
                    id: t.to_string(),
                });
            }
        }
        // Lowercase hex (96 bits): a key id is part of the Grafana login of the people its
        // tokens sign in, and Grafana may compare logins without regard to case.
        let id = format!("ek_{}", &token_hash(&generate_secret())[..24]);
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

    /// Deletes an embed key with the sessions it minted and the token ids remembered for it,
    /// in one transaction; `false` if there was no such key.
    pub async fn delete_embed_key(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM sessions WHERE key_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM embed_token_ids WHERE key_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM embed_keys WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
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

/// Inserts one session row (`incarnation`: the tenant's `created_at_ms`, for embed sessions).
pub(crate) async fn insert_session<'e, E>(
    executor: E,
    id: &SecretString,
    s: &SessionRecord,
    incarnation: Option<i64>,
    login_id: Option<&str>,
) -> Result<(), StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let (tenant, role, key_id) = match &s.scope {
        Some(e) => (
            Some(e.tenant.as_str().to_owned()),
            Some(e.role.clone()),
            Some(e.key_id.clone()),
        ),
        None => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO sessions (id_hash, user_name, email, display_name, tenant_id, role, \
         created_at_ms, expires_at_ms, key_id, tenant_created_at_ms, login_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(token_hash(id))
    .bind(&s.user)
    .bind(&s.email)
    .bind(&s.display_name)
    .bind(tenant)
    .bind(role)
    .bind(now_ms())
    .bind(s.expires_at_ms)
    .bind(key_id)
    .bind(incarnation)
    .bind(login_id)
    .execute(executor)
    .await?;
    Ok(())
}

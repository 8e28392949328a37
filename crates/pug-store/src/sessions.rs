//! Browser sessions (stored by hash) and the ids of embed tokens already used.
//!
//! An embed session is bound to the key that signed its token and to its tenant's incarnation
//! (`tenants.created_at_ms` when it was minted): [`Store::session`] honours it only while both
//! still hold, so deleting the key or the tenant ends it at once, and a tenant created again
//! under the same id never inherits it. [`Store::sweep_sessions`] deletes the rows that can no
//! longer be honoured (expired, or their key or tenant gone) and the token ids past their expiry.
//!
//! Owns: the `sessions` and used-token-id tables.
//!
//! Must not: decide anything about tokens: the gateway says which token id to remember and
//! until when.

use pug_types::{SecretString, TenantId};
use sqlx::Row;

use crate::{generate_secret, now_ms, token_hash, Store, StoreError};

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

impl Store {
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
        let mut tx = self.begin_write().await?;
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

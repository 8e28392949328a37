//! One-time sign-in codes and sign-in groups, for host mode (security review F8).
//!
//! In host mode a person signs in on pug's own origin only; a tenant host never sees the
//! password form. The sign-in origin hands a tenant host a code ([`Store::create_login_code`]):
//! random, stored only as a hash, good once, for one tenant, for [`LOGIN_CODE_TTL_MS`]. The
//! tenant host exchanges it ([`Store::redeem_login_code`]) for a session of its own, which
//! belongs to the same sign-in (`sessions.login_id`) and ends with it: signing out on any host
//! ([`Store::end_login`]) ends every session of that sign-in.
//!
//! Owns: the `login_codes` table and the `login_id` of sessions.
//!
//! Must not: decide who may sign in (the gateway checks the password and membership), or hand
//! out a code for an embed session (those are bound to one tenant already).

use pug_types::{SecretString, TenantId};
use sqlx::Row;

use crate::sessions::insert_session;
use crate::{generate_secret, now_ms, token_hash, SessionRecord, Store, StoreError};

/// How long a sign-in code may travel from pug's origin to the tenant host: a redirect, so a
/// minute is generous.
pub const LOGIN_CODE_TTL_MS: i64 = 60_000;

impl Store {
    /// A one-time code with which `tenant`'s host gets a session of the password sign-in
    /// `session` (the cookie value on pug's origin); `None` if that session is not a live
    /// password session.
    pub async fn create_login_code(
        &self,
        session: &SecretString,
        tenant: &TenantId,
    ) -> Result<Option<SecretString>, StoreError> {
        let now = now_ms();
        let login: Option<Option<String>> = sqlx::query_scalar(
            "SELECT login_id FROM sessions WHERE id_hash = $1 AND expires_at_ms > $2 \
             AND tenant_id IS NULL",
        )
        .bind(token_hash(session))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        let Some(login) = login else { return Ok(None) };
        // A session from before sign-in groups is its own login.
        let login = login.unwrap_or_else(|| token_hash(session));
        let code = generate_secret();
        sqlx::query(
            "INSERT INTO login_codes (code_hash, login_id, tenant_id, expires_at_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash(&code))
        .bind(&login)
        .bind(tenant.as_str())
        .bind(now + LOGIN_CODE_TTL_MS)
        .execute(&self.pool)
        .await?;
        Ok(Some(code))
    }

    /// Exchanges `code` on `tenant`'s host for a new session of the sign-in that made it. The
    /// code is gone after the first try, whatever its outcome; `None` if it is unknown,
    /// expired, for another tenant, or its sign-in has ended.
    pub async fn redeem_login_code(
        &self,
        code: &SecretString,
        tenant: &TenantId,
    ) -> Result<Option<SecretString>, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM login_codes WHERE code_hash = $1 \
             RETURNING login_id, tenant_id, expires_at_ms",
        )
        .bind(token_hash(code))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.commit().await?;
            return Ok(None);
        };
        let login: String = row.try_get(0)?;
        let for_tenant: String = row.try_get(1)?;
        let expires: i64 = row.try_get(2)?;
        if for_tenant != tenant.as_str() || expires <= now {
            tx.commit().await?;
            return Ok(None);
        }
        // The sign-in's own session on pug's origin (its id_hash is the login id) vouches.
        let origin = sqlx::query(
            "SELECT user_name, email, display_name, expires_at_ms FROM sessions \
             WHERE id_hash = $1 AND expires_at_ms > $2 AND tenant_id IS NULL",
        )
        .bind(&login)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(origin) = origin else {
            tx.commit().await?;
            return Ok(None);
        };
        let record = SessionRecord {
            user: origin.try_get(0)?,
            email: origin.try_get(1)?,
            display_name: origin.try_get(2)?,
            scope: None,
            expires_at_ms: origin.try_get(3)?,
        };
        let id = generate_secret();
        insert_session(&mut *tx, &id, &record, None, Some(&login)).await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// Signs out: ends `session` and every other session of the same sign-in (on pug's origin
    /// and every tenant host), with their unused codes. Returns how many sessions ended.
    pub async fn end_login(&self, session: &SecretString) -> Result<u64, StoreError> {
        let hash = token_hash(session);
        let mut tx = self.begin_write().await?;
        let login: Option<Option<String>> =
            sqlx::query_scalar("SELECT login_id FROM sessions WHERE id_hash = $1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
        let ended = match login.flatten() {
            Some(login) => {
                sqlx::query("DELETE FROM login_codes WHERE login_id = $1")
                    .bind(&login)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM sessions WHERE login_id = $1 OR id_hash = $2")
                    .bind(&login)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            }
            None => sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(&hash)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
        };
        tx.commit().await?;
        Ok(ended)
    }
}

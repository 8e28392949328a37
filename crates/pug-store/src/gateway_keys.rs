//! The gateway's keys: embed-token signing keys (HS256 secrets sealed with the master key, or
//! a webapp's Ed25519 public key) and the key that signs its cookies.
//!
//! Owns: the `embed_keys` table and the cookie key's row in `meta`.
//!
//! Must not: verify tokens or sign cookies (`pug-auth` and the gateway do).

use pug_types::{ExposeSecret, SecretString, TenantId};
use sqlx::Row;

use crate::{generate_secret, now_ms, token_hash, Store, StoreError};

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
        let mut tx = self.begin_write().await?;
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
        self.meta_secret(
            "gateway_cookie_key",
            "gateway/cookie_key",
            "the gateway cookie key",
        )
        .await
    }

    /// The secret the gateway's identity-token key is derived from
    /// (`pug_auth::IdentitySigner::from_secret`): generated by the first pug that asks, kept
    /// sealed with the master key, the same for every pug on this store (so tenants' Grafanas
    /// trust every replica's tokens).
    pub async fn gateway_identity_secret(&self) -> Result<SecretString, StoreError> {
        self.meta_secret(
            "gateway_identity_key",
            "gateway/identity_key",
            "the gateway identity key",
        )
        .await
    }

    /// The secret stored under `key` in `meta`, sealed with the master key (`aad` binds it to
    /// its row); created by the first caller (a concurrent first caller's value wins for all).
    pub(crate) async fn meta_secret(
        &self,
        key: &str,
        aad: &str,
        what: &str,
    ) -> Result<SecretString, StoreError> {
        let fresh = generate_secret();
        let (nonce, ciphertext) = self.key.seal(aad, fresh.expose_secret().as_bytes());
        let value = format!("{}:{}", hex::encode(nonce), hex::encode(ciphertext));
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(key)
            .fetch_one(&self.pool)
            .await?;
        let corrupt = || StoreError::MasterKey(format!("{what} cannot be opened"));
        let (n, c) = stored.split_once(':').ok_or_else(corrupt)?;
        let (n, c) = (
            hex::decode(n).map_err(|_| corrupt())?,
            hex::decode(c).map_err(|_| corrupt())?,
        );
        let plain = self.key.open(aad, &n, &c).ok_or_else(corrupt)?;
        Ok(SecretString::from(
            String::from_utf8(plain).map_err(|_| corrupt())?,
        ))
    }
}

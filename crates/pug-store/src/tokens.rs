//! API tokens: random bearer tokens, stored only as SHA-256 hashes.

use pug_types::{ExposeSecret, SecretString};

use crate::{generate_secret, now_ms, token_hash, Store, StoreError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Only reads (e.g. Prometheus service discovery).
    Read,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "read" => Some(Role::Read),
            _ => None,
        }
    }
}

/// Token names are prefixed so that a leaked token is recognisable in a scan.
const TOKEN_PREFIX: &str = "pug_";

impl Store {
    /// Makes a new token; its plaintext is returned once and never stored.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<SecretString, StoreError> {
        let token = SecretString::from(format!(
            "{TOKEN_PREFIX}{}",
            generate_secret().expose_secret()
        ));
        sqlx::query(
            "INSERT INTO api_tokens (hash, name, role, created_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash(&token))
        .bind(name)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Replaces every token called `name` with a new one (used for the local CLI token).
    pub async fn replace_token(&self, name: &str, role: Role) -> Result<SecretString, StoreError> {
        sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.create_token(name, role).await
    }

    /// Whether any token exists (false on a store's first start).
    pub async fn has_tokens(&self) -> Result<bool, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE name <> $1")
            .bind(crate::tokens::LOCAL_TOKEN_NAME)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The role of `token`, or `None` if it is not a token of this store.
    pub async fn verify_token(&self, token: &SecretString) -> Result<Option<Role>, StoreError> {
        // The lookup is by hash, so timing reveals nothing about valid tokens' plaintext.
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM api_tokens WHERE hash = $1")
                .bind(token_hash(token))
                .fetch_optional(&self.pool)
                .await?;
        Ok(role.as_deref().and_then(Role::parse))
    }
}

/// The name of the token `pug serve` writes to `<data>/local.token` for the CLI on this machine.
pub const LOCAL_TOKEN_NAME: &str = "local-cli";

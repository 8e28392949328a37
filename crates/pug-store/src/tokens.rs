//! API tokens: random bearer tokens, stored only as SHA-256 hashes, with an optional expiry,
//! a coarse last-use time, a listing and revocation.
//!
//! Owns: the `api_tokens` table, the check of a presented token (unknown, expired or valid,
//! looked up on every request, so a revocation or an expiry takes effect at the next request),
//! the decision of what a revocation removes (`choose_revocation`, pure), and the swarm
//! renderer service's credential (`renderer_credential`: role `renderer`, one per store).
//!
//! Must not: return a token's plaintext except from `create_token*` (it is never stored), nor
//! its hash (a listing names a token by [`token_id`], a 12-hex-digit prefix of the hash, which
//! says nothing usable about the token).

use pug_types::{ExposeSecret, SecretString};

use crate::{generate_secret, now_ms, token_hash, Kind, Store, StoreError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Only reads (e.g. Prometheus service discovery and `/metrics`).
    Read,
    /// Only the renderer service's token table (`GET /api/v1/renderer/tenants`): the swarm
    /// renderer service's credential, which pug issues itself ([`Store::renderer_credential`]).
    Renderer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Read => "read",
            Role::Renderer => "renderer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "read" => Some(Role::Read),
            "renderer" => Some(Role::Renderer),
            _ => None,
        }
    }
}

/// Token names are prefixed so that a leaked token is recognisable in a scan.
const TOKEN_PREFIX: &str = "pug_";

/// Hex digits of the hash that make a token's id: 48 bits, unique in any real token table, and
/// (being part of a SHA-256 of 256 random bits) no help in guessing the token.
pub const TOKEN_ID_LEN: usize = 12;

/// `last_used_at_ms` is rewritten only when it is older than this, so a token used on every
/// request (a Prometheus scrape, a script) costs one write a minute, not one per request.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// The id that names a token in listings and in `DELETE /api/v1/tokens/{id}`.
pub fn token_id(hash: &str) -> String {
    hash.chars().take(TOKEN_ID_LEN).collect()
}

/// A token as listed: everything but its secret and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// [`token_id`] of its hash.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    /// `None`: never expires.
    pub expires_at_ms: Option<i64>,
    /// Last request with it, to within a minute; `None`: not used since it was made (or since
    /// the store learned to record it).
    pub last_used_at_ms: Option<i64>,
}

impl TokenInfo {
    /// Whether the token no longer authenticates at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Whether this token lets someone administer pug at `now_ms`.
    fn usable_admin(&self, now_ms: i64) -> bool {
        self.role == Role::Admin && !self.expired(now_ms)
    }
}

/// What a presented token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCheck {
    /// A token of this store, unexpired.
    Valid(Role),
    /// A token of this store that expired at `at_ms`.
    Expired { at_ms: i64 },
    /// Not a token of this store (never made, or revoked).
    Unknown,
}

/// Why a revocation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeRefusal {
    /// No token has this id or name.
    NoMatch,
    /// Several tokens have this name; these are their ids.
    Ambiguous(Vec<String>),
    /// It is the last unexpired admin token: revoking it would leave no way to administer pug
    /// until `pug serve` restarts and writes a new local token.
    LastAdmin,
}

impl std::fmt::Display for RevokeRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevokeRefusal::NoMatch => write!(
                f,
                "no token has this id or name; `pug token list` shows them"
            ),
            RevokeRefusal::Ambiguous(ids) => write!(
                f,
                "several tokens have this name (ids {}); revoke one by its id",
                ids.join(", ")
            ),
            RevokeRefusal::LastAdmin => write!(
                f,
                "this is the last unexpired admin token; create another admin token first \
                 (pug token create --role admin), then revoke this one"
            ),
        }
    }
}

/// The check of a stored token row (`role`, `expires_at_ms`) at `now_ms`.
fn check(role: Option<&str>, expires_at_ms: Option<i64>, now_ms: i64) -> TokenCheck {
    let Some(role) = role.and_then(Role::parse) else {
        return TokenCheck::Unknown;
    };
    match expires_at_ms {
        Some(at_ms) if at_ms <= now_ms => TokenCheck::Expired { at_ms },
        _ => TokenCheck::Valid(role),
    }
}

/// Whether a use at `now_ms` should rewrite `last_used_at_ms`.
fn needs_last_used_update(last_used_at_ms: Option<i64>, now_ms: i64) -> bool {
    last_used_at_ms.is_none_or(|last| now_ms - last >= LAST_USED_GRANULARITY_MS)
}

/// Which token `target` (an id, else a name) revokes, or why none is.
pub fn choose_revocation(
    tokens: &[TokenInfo],
    target: &str,
    now_ms: i64,
) -> Result<TokenInfo, RevokeRefusal> {
    let by_id: Vec<&TokenInfo> = tokens.iter().filter(|t| t.id == target).collect();
    let matches = if by_id.is_empty() {
        // `local-cli` names the local CLI tokens, which are `local-cli@<pug>` (one per pug).
        let local = |name: &str| {
            target == LOCAL_TOKEN_NAME
                && name
                    .strip_prefix(LOCAL_TOKEN_NAME)
                    .is_some_and(|rest| rest.starts_with('@'))
        };
        tokens
            .iter()
            .filter(|t| t.name == target || local(&t.name))
            .collect()
    } else {
        by_id
    };
    let token = match matches.as_slice() {
        [] => return Err(RevokeRefusal::NoMatch),
        [one] => (*one).clone(),
        many => {
            return Err(RevokeRefusal::Ambiguous(
                many.iter().map(|t| t.id.clone()).collect(),
            ))
        }
    };
    let other_admins = tokens
        .iter()
        .filter(|t| t.id != token.id && t.usable_admin(now_ms))
        .count();
    if token.usable_admin(now_ms) && other_admins == 0 {
        return Err(RevokeRefusal::LastAdmin);
    }
    Ok(token)
}

type Row = (String, String, String, i64, Option<i64>, Option<i64>);

fn info(row: &Row) -> Result<TokenInfo, StoreError> {
    let (hash, name, role, created_at_ms, expires_at_ms, last_used_at_ms) = row;
    Ok(TokenInfo {
        id: token_id(hash),
        name: name.clone(),
        role: Role::parse(role)
            .ok_or_else(|| StoreError::Corrupt(format!("api token role {role:?}")))?,
        created_at_ms: *created_at_ms,
        expires_at_ms: *expires_at_ms,
        last_used_at_ms: *last_used_at_ms,
    })
}

/// Operator tokens (every token but the local CLI's and the renderer service's), counted.
fn operator_tokens<'q>() -> sqlx::query::QueryScalar<'q, sqlx::Any, i64, sqlx::any::AnyArguments<'q>>
{
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM api_tokens WHERE name <> $1 AND name NOT LIKE $2 AND role <> $3",
    )
    .bind(LOCAL_TOKEN_NAME)
    .bind(format!("{LOCAL_TOKEN_NAME}@%"))
    .bind(Role::Renderer.as_str())
}

/// The insert of one token row.
fn insert_token<'q>(
    hash: &'q str,
    name: &'q str,
    role: Role,
    created_at_ms: i64,
    expires_at_ms: Option<i64>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(
        "INSERT INTO api_tokens (hash, name, role, created_at_ms, expires_at_ms) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash)
    .bind(name)
    .bind(role.as_str())
    .bind(created_at_ms)
    .bind(expires_at_ms)
}

impl Store {
    /// Makes a new token that never expires; its plaintext is returned once and never stored.
    pub async fn create_token(&self, name: &str, role: Role) -> Result<SecretString, StoreError> {
        Ok(self.create_token_expiring(name, role, None).await?.0)
    }

    /// Makes a new token that stops working at `expires_at_ms` (`None`: never); its plaintext
    /// is returned once and never stored.
    pub async fn create_token_expiring(
        &self,
        name: &str,
        role: Role,
        expires_at_ms: Option<i64>,
    ) -> Result<(SecretString, TokenInfo), StoreError> {
        let token = SecretString::from(format!(
            "{TOKEN_PREFIX}{}",
            generate_secret().expose_secret()
        ));
        let hash = token_hash(&token);
        let created_at_ms = now_ms();
        insert_token(&hash, name, role, created_at_ms, expires_at_ms)
            .execute(&self.pool)
            .await?;
        let info = TokenInfo {
            id: token_id(&hash),
            name: name.to_owned(),
            role,
            created_at_ms,
            expires_at_ms,
            last_used_at_ms: None,
        };
        Ok((token, info))
    }

    /// Replaces every token called `name` with a new one (used for the local CLI token).
    pub async fn replace_token(&self, name: &str, role: Role) -> Result<SecretString, StoreError> {
        sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        self.create_token(name, role).await
    }

    /// Whether any token but the local CLI's and the renderer service's exists (false on a
    /// store's first start).
    pub async fn has_tokens(&self) -> Result<bool, StoreError> {
        let n: i64 = operator_tokens().fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    /// The first admin token, `admin`, made only while no operator token exists
    /// ([`Store::has_tokens`]); `None` when there is one. The check and the insert are one
    /// write transaction (on PostgreSQL under a lock of the table), so of several pugs
    /// starting at once on a fresh store exactly one makes it and prints it: the others see it.
    pub async fn create_first_admin_token(&self) -> Result<Option<SecretString>, StoreError> {
        let mut tx = self.begin_write().await?;
        if self.kind == Kind::Postgres {
            // A row lock cannot guard rows that do not exist yet; this mode conflicts with
            // itself, so a second pug's check waits for the first's insert.
            sqlx::query("LOCK TABLE api_tokens IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let n: i64 = operator_tokens().fetch_one(&mut *tx).await?;
        if n > 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let token = SecretString::from(format!(
            "{TOKEN_PREFIX}{}",
            generate_secret().expose_secret()
        ));
        insert_token(&token_hash(&token), "admin", Role::Admin, now_ms(), None)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(token))
    }

    /// A new local CLI token for the pug `owner` ([`local_token_name`]), replacing its own and
    /// removing those of pugs no longer alive (`alive`: the owners of live replicas; swarm
    /// tasks come and go with new owners, and their tokens must not pile up) once they are
    /// older than [`LOCAL_TOKEN_GRACE_MS`] at `now_ms` (a pug starting at the same moment is
    /// not alive in the store yet). Several pugs on
    /// one store each keep a token of their own: a second replica's start no longer logs the
    /// first one's CLI out.
    pub async fn replace_local_token(
        &self,
        owner: &str,
        alive: &[String],
        now_ms: i64,
    ) -> Result<SecretString, StoreError> {
        let tokens: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, created_at_ms FROM api_tokens WHERE name = $1 OR name LIKE $2",
        )
        .bind(LOCAL_TOKEN_NAME)
        .bind(format!("{LOCAL_TOKEN_NAME}@%"))
        .fetch_all(&self.pool)
        .await?;
        let keep: Vec<String> = alive.iter().map(|o| local_token_name(o)).collect();
        // A pug that started a moment ago may not be among the live ones yet (its first
        // heartbeat comes after its token): only older tokens are another's to remove.
        let settled = now_ms - LOCAL_TOKEN_GRACE_MS;
        for (name, created) in tokens {
            if !keep.contains(&name) && created < settled {
                sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                    .bind(&name)
                    .execute(&self.pool)
                    .await?;
            }
        }
        self.replace_token(&local_token_name(owner), Role::Admin)
            .await
    }

    /// The swarm renderer service's credential: an API token of role [`Role::Renderer`]
    /// (named [`RENDERER_TOKEN_NAME`]), the same for every pug on this store and across
    /// restarts (its value is a secret sealed in the store, made by the first caller), so
    /// that the service's Docker secret, named by its contents, does not change. Revoked by
    /// hand, it is issued again at the next call (a pug's start).
    pub async fn renderer_credential(&self) -> Result<SecretString, StoreError> {
        let secret = self
            .meta_secret(
                "renderer_service_token",
                "renderer/service_token",
                "the renderer service's credential",
            )
            .await?;
        let token = SecretString::from(format!("{TOKEN_PREFIX}{}", secret.expose_secret()));
        let hash = token_hash(&token);
        sqlx::query(
            "INSERT INTO api_tokens (hash, name, role, created_at_ms, expires_at_ms) \
             VALUES ($1, $2, $3, $4, NULL) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(&hash)
        .bind(RENDERER_TOKEN_NAME)
        .bind(Role::Renderer.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// The role of `token`, or `None` if it is not a token of this store or has expired.
    pub async fn verify_token(&self, token: &SecretString) -> Result<Option<Role>, StoreError> {
        Ok(match self.check_token(token).await? {
            TokenCheck::Valid(role) => Some(role),
            TokenCheck::Expired { .. } | TokenCheck::Unknown => None,
        })
    }

    /// What `token` is now: looked up in the store on every call (no cache), so revocation and
    /// expiry apply to the very next request. Records the use, at most once a minute.
    pub async fn check_token(&self, token: &SecretString) -> Result<TokenCheck, StoreError> {
        // The lookup is by hash, so timing reveals nothing about valid tokens' plaintext.
        let hash = token_hash(token);
        let row: Option<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT role, expires_at_ms, last_used_at_ms FROM api_tokens WHERE hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&self.pool)
        .await?;
        let now = now_ms();
        let Some((role, expires_at_ms, last_used_at_ms)) = row else {
            return Ok(TokenCheck::Unknown);
        };
        let result = check(Some(&role), expires_at_ms, now);
        if matches!(result, TokenCheck::Valid(_)) && needs_last_used_update(last_used_at_ms, now) {
            // Best effort: a busy store must not fail the request over bookkeeping.
            if let Err(e) =
                sqlx::query("UPDATE api_tokens SET last_used_at_ms = $1 WHERE hash = $2")
                    .bind(now)
                    .bind(&hash)
                    .execute(&self.pool)
                    .await
            {
                tracing::warn!(error = %e, "cannot record an API token's last use");
            }
        }
        Ok(result)
    }

    /// Every token, oldest first, without secrets or hashes.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.token_rows()
            .await?
            .iter()
            .map(info)
            .collect::<Result<_, _>>()
    }

    async fn token_rows(&self) -> Result<Vec<Row>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT hash, name, role, created_at_ms, expires_at_ms, last_used_at_ms \
             FROM api_tokens ORDER BY created_at_ms, hash",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes the token whose id, else whose name, is `target` (see [`choose_revocation`]).
    /// The token stops working at once. The outer error is the store's, the inner one why
    /// nothing was revoked.
    pub async fn revoke_token(
        &self,
        target: &str,
    ) -> Result<Result<TokenInfo, RevokeRefusal>, StoreError> {
        let rows = self.token_rows().await?;
        let infos = rows.iter().map(info).collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let token = match choose_revocation(&infos, target, now) {
            Ok(t) => t,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let hash = &rows[infos
            .iter()
            .position(|t| t.id == token.id)
            .expect("the chosen token is one of the rows")]
        .0;
        // The last-admin guard is repeated in the statement, so two revocations racing for the
        // last two admin tokens cannot both succeed: SQLite has one writer at a time; on
        // PostgreSQL each statement would see the other token still there (read committed), so
        // the admin tokens are locked first and the second revocation waits, then sees the first.
        let mut tx = self.begin_write().await?;
        if self.kind == Kind::Postgres {
            sqlx::query(
                "SELECT hash FROM api_tokens WHERE role = 'admin' ORDER BY hash FOR UPDATE",
            )
            .fetch_all(&mut *tx)
            .await?;
        }
        let deleted = sqlx::query(
            "DELETE FROM api_tokens WHERE hash = $1 AND (\
               role <> 'admin' \
               OR (expires_at_ms IS NOT NULL AND expires_at_ms <= $2) \
               OR EXISTS (SELECT 1 FROM api_tokens o WHERE o.hash <> $1 AND o.role = 'admin' \
                          AND (o.expires_at_ms IS NULL OR o.expires_at_ms > $2)))",
        )
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(match deleted {
            0 if token.usable_admin(now) => Err(RevokeRefusal::LastAdmin),
            0 => Err(RevokeRefusal::NoMatch),
            _ => Ok(token),
        })
    }
}

/// The name the tokens `pug serve` writes to `<data>/local.token` for the CLI on its machine
/// start with; each pug's is [`local_token_name`].
pub const LOCAL_TOKEN_NAME: &str = "local-cli";

/// The name of the swarm renderer service's credential ([`Store::renderer_credential`]).
pub const RENDERER_TOKEN_NAME: &str = "renderer-service";

/// How old another pug's local token must be before a pug starting beside it may remove it
/// for not being alive (see [`Store::replace_local_token`]).
pub const LOCAL_TOKEN_GRACE_MS: i64 = 60_000;

/// The local CLI token's name of the pug `owner` (its lease owner id).
pub fn local_token_name(owner: &str) -> String {
    format!("{LOCAL_TOKEN_NAME}@{owner}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn token(id: &str, name: &str, role: Role, expires_at_ms: Option<i64>) -> TokenInfo {
        TokenInfo {
            id: id.into(),
            name: name.into(),
            role,
            created_at_ms: 0,
            expires_at_ms,
            last_used_at_ms: None,
        }
    }

    #[test]
    fn a_token_checks_as_valid_expired_or_unknown() {
        let cases = [
            (Some("admin"), None, TokenCheck::Valid(Role::Admin)),
            (Some("read"), Some(NOW + 1), TokenCheck::Valid(Role::Read)),
            (Some("read"), Some(NOW), TokenCheck::Expired { at_ms: NOW }),
            (Some("admin"), Some(1), TokenCheck::Expired { at_ms: 1 }),
            (Some("root"), None, TokenCheck::Unknown),
            (None, None, TokenCheck::Unknown),
        ];
        for (role, expires, want) in cases {
            assert_eq!(check(role, expires, NOW), want, "{role:?} {expires:?}");
        }
    }

    #[test]
    fn last_use_is_written_at_most_once_a_minute() {
        let cases = [
            (None, true),
            (Some(NOW), false),
            (Some(NOW - LAST_USED_GRANULARITY_MS + 1), false),
            (Some(NOW - LAST_USED_GRANULARITY_MS), true),
        ];
        for (last, want) in cases {
            assert_eq!(needs_last_used_update(last, NOW), want, "{last:?}");
        }
    }

    #[test]
    fn revocation_picks_one_token_by_id_then_name_and_keeps_an_admin() {
        let admin = token("aaaaaaaaaaaa", "admin", Role::Admin, None);
        let local = token(
            "bbbbbbbbbbbb",
            &local_token_name("h-1-2"),
            Role::Admin,
            None,
        );
        let read1 = token("cccccccccccc", "prom", Role::Read, None);
        let read2 = token("dddddddddddd", "prom", Role::Read, None);
        let old_admin = token("eeeeeeeeeeee", "old", Role::Admin, Some(NOW - 1));
        // A token named like another's id: the id wins.
        let tricky = token("ffffffffffff", "aaaaaaaaaaaa", Role::Read, None);
        let all = vec![
            admin.clone(),
            local.clone(),
            read1.clone(),
            read2.clone(),
            old_admin.clone(),
            tricky.clone(),
        ];
        let only_admin = vec![admin.clone(), read1.clone(), old_admin.clone()];
        let cases: Vec<(&[TokenInfo], &str, Result<TokenInfo, RevokeRefusal>)> = vec![
            (all.as_slice(), "cccccccccccc", Ok(read1.clone())),
            (all.as_slice(), "admin", Ok(admin.clone())),
            (all.as_slice(), "aaaaaaaaaaaa", Ok(admin.clone())),
            (all.as_slice(), LOCAL_TOKEN_NAME, Ok(local.clone())),
            (
                &all,
                "prom",
                Err(RevokeRefusal::Ambiguous(vec![
                    "cccccccccccc".into(),
                    "dddddddddddd".into(),
                ])),
            ),
            (all.as_slice(), "nobody", Err(RevokeRefusal::NoMatch)),
            (all.as_slice(), "", Err(RevokeRefusal::NoMatch)),
            (
                only_admin.as_slice(),
                "admin",
                Err(RevokeRefusal::LastAdmin),
            ),
            // An expired admin is no admin: revoking it is fine, and it does not count as
            // the admin that remains.
            (only_admin.as_slice(), "old", Ok(old_admin.clone())),
            (only_admin.as_slice(), "prom", Ok(read1.clone())),
        ];
        for (tokens, target, want) in cases {
            assert_eq!(choose_revocation(tokens, target, NOW), want, "{target:?}");
        }
    }

    #[test]
    fn a_token_id_is_a_short_prefix_of_its_hash() {
        let hash = "0123456789abcdef0123456789abcdef";
        assert_eq!(token_id(hash), "0123456789ab");
        assert_eq!(token_id(hash).len(), TOKEN_ID_LEN);
    }
}

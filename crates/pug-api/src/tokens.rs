//! `/api/v1/tokens`: making, listing and revoking API tokens (admin tokens only, reads included).
//!
//! Owns: the token routes, the parsing and bounds of `expires_in` (`90s`, `30m`, `2h`, `30d`),
//! and the 4xx answers for tokens (unknown id, ambiguous name, last admin token).
//!
//! Must not: return a token's secret or hash, except the secret of a token at the one moment it
//! is created. The check of a presented token is `auth.rs`; what a revocation removes is decided
//! by the store (`pug_store::choose_revocation`).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use pug_store::{RevokeRefusal, Role};
use pug_types::{ExposeSecret, InvalidInput};
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::{ApiError, ApiState, ErrorBody};

/// The longest lifetime `expires_in` accepts. Longer-lived tokens are made without it.
const MAX_EXPIRES_IN: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// A request for a new API token.
#[derive(Deserialize, Serialize, utoipa::ToSchema)]
pub struct NewToken {
    /// A name to recognise it by.
    pub name: String,
    /// `admin` (everything) or `read` (GET only, e.g. for Prometheus and `/metrics`).
    #[serde(default = "default_role")]
    pub role: String,
    /// How long the token works, e.g. `90s`, `30m`, `2h`, `30d` (at most 10 years). Absent:
    /// it works until revoked.
    #[serde(default)]
    pub expires_in: Option<String>,
}

fn default_role() -> String {
    "admin".into()
}

/// A token, shown once.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The id that names it in `GET /api/v1/tokens` and `DELETE /api/v1/tokens/{id}`.
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub role: String,
    /// When it stops working (ms since the Unix epoch); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// The bearer token. pug keeps only its hash: store it now.
    pub token: String,
}

/// A token as listed. Never its secret or its hash.
#[derive(Serialize, Deserialize, utoipa::ToSchema, Debug)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's SHA-256: names it for `DELETE /api/v1/tokens/{id}`.
    pub id: String,
    pub name: String,
    /// `admin` or `read`.
    pub role: String,
    /// When it was made (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When it stops working (ms since the Unix epoch); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Whether it has stopped working (it stays listed until revoked).
    pub expired: bool,
    /// Its last use, to within a minute (ms since the Unix epoch); absent: never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<i64>,
}

impl TokenInfo {
    fn from_store(t: pug_store::TokenInfo, now_ms: i64) -> Self {
        Self {
            expired: t.expired(now_ms),
            id: t.id,
            name: t.name,
            role: t.role.as_str().to_owned(),
            created_at_ms: t.created_at_ms,
            expires_at_ms: t.expires_at_ms,
            last_used_at_ms: t.last_used_at_ms,
        }
    }
}

/// An API error, or a token-specific answer (the shared `ApiError::NotFound` speaks of tenants).
pub(crate) enum TokensError {
    Api(ApiError),
    NotFound(String),
    Refused(String),
}

impl From<ApiError> for TokensError {
    fn from(e: ApiError) -> Self {
        TokensError::Api(e)
    }
}

impl From<InvalidInput> for TokensError {
    fn from(e: InvalidInput) -> Self {
        TokensError::Api(e.into())
    }
}

impl From<pug_store::StoreError> for TokensError {
    fn from(e: pug_store::StoreError) -> Self {
        TokensError::Api(e.into())
    }
}

impl From<axum::extract::rejection::JsonRejection> for TokensError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        TokensError::Api(e.into())
    }
}

impl IntoResponse for TokensError {
    fn into_response(self) -> Response {
        let (status, message, field) = match self {
            TokensError::Api(e) => return e.into_response(),
            TokensError::NotFound(m) => (StatusCode::NOT_FOUND, m, Some("id".to_owned())),
            TokensError::Refused(m) => (StatusCode::CONFLICT, m, None),
        };
        (
            status,
            Json(ErrorBody {
                error: message,
                field,
            }),
        )
            .into_response()
    }
}

/// Reading or changing tokens takes an admin token: a read token (the one Prometheus holds)
/// must not learn which tokens exist nor revoke them.
fn require_admin(caller: &Caller) -> Result<(), TokensError> {
    match caller.role {
        Role::Admin => Ok(()),
        Role::Read | Role::Renderer => Err(ApiError::Forbidden.into()),
    }
}

/// `expires_in` as a duration: a number and a unit (`s`, `m`, `h`, `d`, also `w` and
/// combinations like `1h 30m`, as `humantime` reads them), above zero and at most 10 years.
pub fn parse_expires_in(text: &str) -> Result<Duration, InvalidInput> {
    let bad = |why: &str| {
        InvalidInput::new(
            "expires_in",
            format!("expires_in {text:?} {why}; give a duration like 90s, 30m, 2h or 30d"),
        )
    };
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| bad(&format!("is not a duration ({e})")))?;
    if d.is_zero() {
        return Err(bad("is zero"));
    }
    if d > MAX_EXPIRES_IN {
        return Err(bad(
            "is longer than 10 years (leave it out for a token that works until revoked)",
        ));
    }
    Ok(d)
}

/// Creates an API token (admin only), optionally expiring.
#[utoipa::path(post, path = "/api/v1/tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<impl IntoResponse, TokensError> {
    require_admin(&caller)?;
    let Json(req) = body?;
    // The renderer role is pug's own (the swarm renderer service's credential), never made here.
    let role = Role::parse(&req.role)
        .filter(|r| *r != Role::Renderer)
        .ok_or_else(|| {
            InvalidInput::new("role", format!("role {:?} is not admin or read", req.role))
        })?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            "name",
            "give the token a name of 1 to 100 characters, without control characters",
        )
        .into());
    }
    let expires_at_ms = match &req.expires_in {
        None => None,
        Some(text) => {
            let d = parse_expires_in(text)?;
            Some(
                pug_store::now_ms()
                    .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            )
        }
    };
    let (token, info) = state
        .store
        .create_token_expiring(name, role, expires_at_ms)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            id: info.id,
            name: info.name,
            role: role.as_str().to_owned(),
            expires_at_ms: info.expires_at_ms,
            token: token.expose_secret().to_owned(),
        }),
    ))
}

/// Lists API tokens (admin only): id, name, role, creation, expiry, last use. Never a secret.
#[utoipa::path(get, path = "/api/v1/tokens",
    responses((status = 200, body = [TokenInfo]), (status = 403, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<TokenInfo>>, TokensError> {
    require_admin(&caller)?;
    let now = pug_store::now_ms();
    let tokens = state.store.tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| TokenInfo::from_store(t, now))
            .collect(),
    ))
}

/// Revokes an API token by id (or by name, when one token has it); it stops working at once.
/// The last unexpired admin token cannot be revoked (409): make another first.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}",
    params(("id" = String, Path, description = "The token's id from GET /api/v1/tokens, or its name")),
    responses((status = 200, body = TokenInfo), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn revoke(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<TokenInfo>, TokensError> {
    require_admin(&caller)?;
    match state.store.revoke_token(&id).await? {
        Ok(token) => {
            tracing::info!(id = %token.id, name = %token.name, "API token revoked");
            Ok(Json(TokenInfo::from_store(token, pug_store::now_ms())))
        }
        Err(RevokeRefusal::NoMatch) => Err(TokensError::NotFound(format!(
            "no token has the id or name {id:?}; `pug token list` shows them"
        ))),
        Err(refusal) => Err(TokensError::Refused(format!("token {id:?}: {refusal}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_takes_a_positive_bounded_duration() {
        let ok = [
            ("90s", 90),
            ("30m", 30 * 60),
            ("2h", 2 * 3600),
            ("30d", 30 * 86400),
            (" 1h 30m ", 5400),
            ("3650d", 3650 * 86400),
        ];
        for (text, secs) in ok {
            assert_eq!(
                parse_expires_in(text).map(|d| d.as_secs()).ok(),
                Some(secs),
                "{text}"
            );
        }
        for text in ["", "30", "0s", "-5m", "abc", "20y", "forever"] {
            let e = parse_expires_in(text).expect_err(text);
            assert_eq!(e.field, "expires_in");
            assert!(e.to_string().contains("like 90s"), "{e}");
        }
    }
}

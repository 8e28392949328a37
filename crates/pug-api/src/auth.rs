//! Bearer-token authentication of API calls and of `/metrics`.
//!
//! Owns: reading `Authorization: Bearer <token>`, checking it against the store on every
//! request (no cache: a revoked or expired token fails its very next request), the read-only
//! rule (read tokens may GET only), the renderer rule (the renderer service's credential
//! reads `GET /api/v1/renderer/tenants` and nothing else, and nothing else reads that:
//! [`require_renderer`]), and handing the caller's role to handlers ([`Caller`]).
//!
//! Must not: decide per-route permissions beyond that (token routes require admin themselves).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pug_store::{Role, TokenCheck};
use pug_types::SecretString;

use crate::{ApiError, ApiState, ErrorBody};

/// Who is calling: set by [`require_token`] on every request it lets through.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caller {
    pub role: Role,
}

/// Lets a request through if it carries a valid, unexpired token: admin tokens for everything,
/// read tokens for GET only.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let role = match role_of(&state, bearer(&request)).await {
        Ok(role) => role,
        Err(response) => return response,
    };
    if role == Role::Renderer {
        return ApiError::Refused(
            "the renderer service's credential reads GET /api/v1/renderer/tenants only; use an admin or read token".into(),
        )
        .into_response();
    }
    if role == Role::Read && request.method() != Method::GET {
        return ApiError::Forbidden.into_response();
    }
    request.extensions_mut().insert(Caller { role });
    next.run(request).await
}

/// Lets a request through only with the renderer service's credential (role
/// [`Role::Renderer`], which pug issues and mounts into that service alone): the token table
/// names every tenant's instances, and no other token, admin included, has a reason to read it.
pub(crate) async fn require_renderer(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let role = role_of(&state, bearer(&request)).await;
    match role {
        Ok(Role::Renderer) => next.run(request).await,
        Ok(_) => ApiError::Refused(
            "/api/v1/renderer/* takes the renderer service's credential only (the swarm secret pug mounts into that service); this token is another kind".into(),
        )
        .into_response(),
        Err(response) => response,
    }
}

/// The request's bearer token.
fn bearer(request: &Request) -> Option<SecretString> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretString::from(t.trim().to_owned()))
}

/// The role of a bearer token, or the answer to give when there is none that is valid.
async fn role_of(state: &ApiState, token: Option<SecretString>) -> Result<Role, Response> {
    let Some(token) = token else {
        return Err(ApiError::Unauthorized.into_response());
    };
    match state.store.check_token(&token).await {
        Ok(TokenCheck::Valid(role)) => Ok(role),
        Ok(TokenCheck::Expired { at_ms }) => Err(expired(at_ms)),
        Ok(TokenCheck::Unknown) => Err(ApiError::Unauthorized.into_response()),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// 401 for a token that expired: says so, so its holder knows to get a new one.
fn expired(at_ms: i64) -> Response {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(at_ms.max(0) as u64);
    let mut response = (
        StatusCode::UNAUTHORIZED,
        axum::Json(ErrorBody {
            error: format!(
                "this token expired at {}; make a new one (pug token create --expires …)",
                humantime::format_rfc3339_seconds(at)
            ),
            field: None,
        }),
    )
        .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"pug\", error=\"invalid_token\""),
    );
    response
}

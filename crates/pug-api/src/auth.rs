//! Bearer-token authentication of API calls.

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pug_store::Role;
use pug_types::SecretString;

use crate::{ApiError, ApiState};

/// Lets a request through if it carries a valid token: admin tokens for everything, read
/// tokens for GET only.
pub(crate) async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| SecretString::from(t.trim().to_owned()));
    let Some(token) = token else {
        return ApiError::Unauthorized.into_response();
    };
    match state.store.verify_token(&token).await {
        Ok(Some(Role::Admin)) => next.run(request).await,
        Ok(Some(Role::Read)) if request.method() == Method::GET => next.run(request).await,
        Ok(Some(Role::Read)) => ApiError::Forbidden.into_response(),
        Ok(None) => ApiError::Unauthorized.into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

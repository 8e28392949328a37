//! The API's one error type and its mapping to HTTP, in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pug_store::StoreError;
use pug_types::InvalidInput;
use serde::{Deserialize, Serialize};

/// Every error the API returns. User errors say what was wrong and how to fix it; internal
/// errors are logged in full and answered with a generic message.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    BadRequest(String),
    #[error("missing, invalid or revoked bearer token; pass an API token as `Authorization: Bearer <token>` (pug token create makes one; /metrics takes a read token too)")]
    Unauthorized,
    #[error("this token may only read; use an admin token")]
    Forbidden,
    /// A valid token that may not do this (the message says which token may).
    #[error("{0}")]
    Refused(String),
    #[error("tenant {0} does not exist")]
    NotFound(String),
    /// Something other than a tenant does not exist (the message names it).
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// Something pug called on the caller's behalf (an instance's `/metrics`) failed; the
    /// message says what and where.
    #[error("{0}")]
    BadGateway(String),
    /// Something pug called on the caller's behalf did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong and how to fix it.
    pub error: String,
    /// The request field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(_) => ApiError::Conflict(e.to_string()),
            StoreError::NotFound { kind: "tenant", id } => ApiError::NotFound(id),
            StoreError::NotFound { .. } => ApiError::Missing(e.to_string()),
            StoreError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(pug_orchestrator::error_chain(&other)),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(format!("invalid JSON body: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            ApiError::Invalid(e) => (StatusCode::UNPROCESSABLE_ENTITY, Some(e.field.to_owned())),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, None),
            ApiError::Forbidden | ApiError::Refused(_) => (StatusCode::FORBIDDEN, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, Some("id".to_owned())),
            ApiError::Missing(_) => (StatusCode::NOT_FOUND, None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, None),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, None),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, None),
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "API request failed");
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(ErrorBody {
                        error: "internal error; see pug's log for details".into(),
                        field: None,
                    }),
                )
                    .into_response();
            }
        };
        let mut response = (
            status,
            axum::Json(ErrorBody {
                error: self.to_string(),
                field,
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"pug\""),
            );
        }
        response
    }
}

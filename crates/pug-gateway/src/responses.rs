//! The gateway's own answers: errors of a tenant request, redirects, `Retry-After`.
//!
//! Owns: how a [`RequestError`] becomes a response (HTML page or JSON `{"error": …}`), the
//! internal-error answer (details go to the log, never to the client), redirects that are never
//! cached.
//!
//! Must not: say more to the client than what it can act on.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pug_auth::EmbedError;
use pug_store::StoreError;

use crate::pages;

/// A failure while handling a tenant request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("the embed token was refused: {0}")]
    Embed(#[source] EmbedError),
    #[error("store error")]
    Store(#[source] StoreError),
}

impl RequestError {
    pub(crate) fn into_response_for(self, html: bool) -> Response {
        match self {
            RequestError::Embed(e) => pages::error(
                html,
                StatusCode::UNAUTHORIZED,
                "Sign-in link refused",
                &format!("The sign-in link was refused: {e}. Go back to the application that sent you here and open it again."),
                serde_json::json!({"reason": e.to_string()}),
            ),
            RequestError::Store(e) => internal(html, e),
        }
    }
}

pub(crate) fn internal(html: bool, e: StoreError) -> Response {
    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "gateway: store error");
    pages::error(
        html,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "internal error; see pug's log for details",
        serde_json::Value::Null,
    )
}

pub(crate) fn redirect(status: StatusCode, to: &str) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(crate) fn retry_after(r: &mut Response, wait: Duration) {
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

pub(crate) fn peer_of(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

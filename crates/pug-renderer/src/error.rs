//! The renderer's errors.
//!
//! Owns: [`RendererError`] (the service could not start or serve) and [`RenderError`] (one
//! request failed; the API maps each variant to exactly one HTTP status).
//!
//! Must not: build HTTP responses (that is [`crate::api`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigError;

/// The renderer could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum RendererError {
    /// Settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Chromium could not be started.
    #[error(
        "cannot start Chromium at {path:?}: {reason}. Install it (Debian: `apt-get install chromium-headless-shell`, or `chromium`) \
         or point CHROME_BIN / BROWSER_PATH / --chrome at it"
    )]
    Launch {
        /// The binary tried.
        path: PathBuf,
        /// What went wrong (chromiumoxide's message, including Chromium's stderr).
        reason: String,
    },
    /// The HTTP server stopped with an error.
    #[error("serving HTTP failed")]
    Serve(#[source] std::io::Error),
    /// `--tenants-token-file` cannot be read.
    #[error("cannot read the credential for pug's token table from {path:?} (--tenants-token-file); on swarm pug mounts it into the renderer service as a secret")]
    CredentialFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The client that polls pug's token table could not be built.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
}

/// Why one request was not rendered. Each variant is one HTTP status (see [`RenderError::status`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RenderError {
    /// 400: a parameter is missing or invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no token, or a token that is not accepted.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403: the URL (or a page it navigated to) is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 408: the request's timeout passed (waiting for a slot, loading, or readiness).
    #[error("render did not finish within {after:?}: it was {stage}")]
    Timeout {
        /// The request's timeout.
        after: Duration,
        /// What the render was doing when the time ran out (from [`crate::engine::Progress`]),
        /// e.g. "waiting for the page to be ready (1 request in flight: http://…)".
        stage: String,
    },
    /// 429: every slot is busy and the wait queue is full.
    #[error("server is too busy")]
    Busy,
    /// 500: Chromium died or was replaced while rendering; the next render gets a new one.
    #[error("the browser failed during the render; retry")]
    BrowserFailed,
    /// 500: anything else.
    #[error("{0}")]
    Internal(String),
}

impl RenderError {
    /// The HTTP status of this error.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            RenderError::BadRequest(_) => S::BAD_REQUEST,
            RenderError::Unauthorized(_) => S::UNAUTHORIZED,
            RenderError::Forbidden(_) => S::FORBIDDEN,
            RenderError::Timeout { .. } => S::REQUEST_TIMEOUT,
            RenderError::Busy => S::TOO_MANY_REQUESTS,
            RenderError::BrowserFailed | RenderError::Internal(_) => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `result` label of the render metrics.
    pub fn result_label(&self) -> &'static str {
        match self {
            RenderError::BadRequest(_) => "bad_request",
            RenderError::Unauthorized(_) => "unauthorized",
            RenderError::Forbidden(_) => "refused",
            RenderError::Timeout { .. } => "timeout",
            RenderError::Busy => "busy",
            RenderError::BrowserFailed => "browser_failure",
            RenderError::Internal(_) => "error",
        }
    }
}

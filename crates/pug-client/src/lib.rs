//! `pug-client`: the one typed client of pug's REST API (`/api/v1`). Every `pug` command but
//! `serve` and `render` calls pug through it.
//!
//! Owns: finding pug ([`Target`]: flags or `PUG_URL`/`PUG_TOKEN` as the binary parsed them,
//! then the files `pug serve` writes into its data dir, [`URL_FILE`] and [`TOKEN_FILE`]), one
//! typed method per endpoint on the API's own request and response types (`pug_api`), following
//! a change until the tenant settles ([`Client::follow`], deciding by [`outcome`], pure), and
//! failures as a [`ClientError`] whose message is one line: the server's `{"error": …}`, or how
//! to reach a pug that is not running; and what the CLI shows of each answer ([`view`], pure).
//!
//! Must not: print, retry a failed request, or decide anything the server decides.

#![forbid(unsafe_code)]

pub mod view;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pug_api::{
    CreateTenant, CreatedToken, EmbedKey, ErrorBody, FleetStatus, Grant, NewEmbedKey, NewToken,
    NewUser, TenantDetail, TokenInfo, UpdateTenant, UpgradeTenant, UserInfo,
};
use pug_docker::SwarmStatus;
use pug_types::error_chain as causes;
use pug_types::{Phase, Tenant};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// In pug's data dir: the URL the local `pug serve` listens at.
pub const URL_FILE: &str = "pug.url";
/// In pug's data dir: the local CLI's admin token (readable by pug's user only).
pub const TOKEN_FILE: &str = "local.token";
/// Where pug is when nothing says otherwise (`listen`'s default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Client::follow`] looks at the tenant again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Which pug to call, as the command line says (the binary reads `--url`/`PUG_URL` and
/// `--token`/`PUG_TOKEN`); what is missing is read from `data_dir`.
#[derive(Clone, Debug)]
pub struct Target {
    pub url: Option<String>,
    pub token: Option<String>,
    /// The data directory of a `pug serve` on this machine.
    pub data_dir: PathBuf,
}

/// Why a call failed; each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered at `url`.
    #[error("cannot reach pug at {url}: {reason}; is `pug serve` running? (set --url or PUG_URL)")]
    Unreachable {
        url: String,
        /// The causes, as one line.
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// pug answered with an error: its `{"error": …}` message (or the body, if it has none).
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    /// pug wants a token and none was found.
    #[error("{message} (no token found: pass --token or PUG_TOKEN, or run on the machine of `pug serve` with --data-dir)")]
    NoToken { message: String },
    /// The answer was cut off.
    #[error("cannot read pug's answer")]
    Read(#[source] reqwest::Error),
    /// A success that is not what the endpoint answers (another program at the URL?).
    #[error("unexpected answer from {url}")]
    Unexpected {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The HTTP client could not be built (no TLS roots, …).
    #[error("cannot set up an HTTP client")]
    Setup(#[source] reqwest::Error),
    /// A request body could not be encoded.
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
    /// [`Client::follow`] gave up.
    #[error("tenant {id} did not settle within {}s (phase {phase}); see `pug tenant show {id}`", .waited.as_secs())]
    NotSettled {
        id: String,
        waited: Duration,
        phase: Phase,
    },
}

impl ClientError {
    /// The HTTP status pug answered with, when it answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            ClientError::NoToken { .. } => Some(StatusCode::UNAUTHORIZED),
            _ => None,
        }
    }
}

/// A change to a tenant's desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Suspend,
    Resume,
    Wake,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::Wake => "wake",
        }
    }
}

/// How a followed change ended (see [`outcome`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The controller acted on the change and the tenant settled as asked.
    Settled,
    /// It settled as failed.
    Failed,
    /// It settled, but on another version than submitted (an upgrade was rolled back).
    RolledBack,
}

/// Whether the tenant in `now` has settled after the change that answered `submitted`: the
/// controller has seen that generation and `done` holds for its phase. Pure.
pub fn outcome(now: &TenantDetail, submitted: &Tenant, done: fn(Phase) -> bool) -> Option<Outcome> {
    let (t, s) = (&now.tenant, &now.tenant.status);
    if s.observed_generation < submitted.generation || !done(s.phase) {
        return None;
    }
    Some(if t.spec.version != submitted.spec.version {
        Outcome::RolledBack
    } else if s.phase == Phase::Failed {
        Outcome::Failed
    } else {
        Outcome::Settled
    })
}

/// pug's REST API, as one pug answers it.
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    /// The pug `target` names: its URL and token, or those the local `pug serve` wrote into
    /// `target.data_dir`, or [`DEFAULT_URL`] without a token.
    pub fn new(target: &Target) -> Result<Self, ClientError> {
        let read = |file| {
            std::fs::read_to_string(target.data_dir.join(file))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let url = (target.url.clone())
            .or_else(|| read(URL_FILE))
            .unwrap_or_else(|| DEFAULT_URL.into());
        Ok(Self {
            http: pug_http::builder()
                .timeout(TIMEOUT)
                .build()
                .map_err(ClientError::Setup)?,
            url: url.trim_end_matches('/').to_owned(),
            token: target.token.clone().or_else(|| read(TOKEN_FILE)),
        })
    }

    /// The URL calls go to (without a trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `/api/v1/<segments…>`, each segment percent-encoded.
    fn path(segments: &[&str]) -> String {
        let mut url = reqwest::Url::parse("http://pug/api/v1").expect("static URL");
        url.path_segments_mut()
            .expect("an http URL has path segments")
            .extend(segments);
        url.path().to_owned()
    }

    /// Sends one request; the answer's body if it is a success, else the server's error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body.to_json().map_err(ClientError::Encode)?);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                reason: causes(&source),
                source,
            })?;
        let status = response.status();
        let text = response.text().await.map_err(ClientError::Read)?;
        if status.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            return Err(ClientError::NoToken { message });
        }
        Err(ClientError::Api { status, message })
    }

    /// A request whose answer is `T` as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> Result<T, ClientError> {
        let text = self.send(method, path, body).await?;
        serde_json::from_str(&text).map_err(|source| ClientError::Unexpected {
            url: format!("{}{path}", self.url),
            source,
        })
    }

    pub async fn status(&self) -> Result<FleetStatus, ClientError> {
        self.call(Method::GET, &Self::path(&["status"]), None).await
    }

    pub async fn tenants(&self) -> Result<Vec<TenantDetail>, ClientError> {
        self.call(Method::GET, &Self::path(&["tenants"]), None)
            .await
    }

    pub async fn tenant(&self, id: &str) -> Result<TenantDetail, ClientError> {
        self.call(Method::GET, &Self::path(&["tenants", id]), None)
            .await
    }

    pub async fn create_tenant(&self, body: &CreateTenant) -> Result<Tenant, ClientError> {
        self.call(Method::POST, &Self::path(&["tenants"]), Some(body))
            .await
    }

    pub async fn update_tenant(
        &self,
        id: &str,
        body: &UpdateTenant,
    ) -> Result<Tenant, ClientError> {
        self.call(Method::PATCH, &Self::path(&["tenants", id]), Some(body))
            .await
    }

    pub async fn upgrade_tenant(
        &self,
        id: &str,
        body: &UpgradeTenant,
    ) -> Result<Tenant, ClientError> {
        let path = Self::path(&["tenants", id, "upgrade"]);
        self.call(Method::POST, &path, Some(body)).await
    }

    pub async fn tenant_action(&self, id: &str, action: Action) -> Result<Tenant, ClientError> {
        let path = Self::path(&["tenants", id, action.as_str()]);
        self.call(Method::POST, &path, None).await
    }

    /// Deletes a tenant; `purge` also drops its PostgreSQL database and role.
    pub async fn delete_tenant(&self, id: &str, purge: bool) -> Result<Tenant, ClientError> {
        let query = if purge { "?purge=true" } else { "" };
        let path = Self::path(&["tenants", id]) + query;
        self.call(Method::DELETE, &path, None).await
    }

    /// Looks at tenant `id` every 250 ms, telling `progress` each time, until it settled after
    /// the change that answered `submitted` ([`outcome`] with `done`), or `timeout` passed.
    pub async fn follow(
        &self,
        id: &str,
        submitted: &Tenant,
        done: fn(Phase) -> bool,
        timeout: Duration,
        mut progress: impl FnMut(&TenantDetail),
    ) -> Result<(TenantDetail, Outcome), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let d = self.tenant(id).await?;
            progress(&d);
            if let Some(o) = outcome(&d, submitted, done) {
                return Ok((d, o));
            }
            if Instant::now() > deadline {
                return Err(ClientError::NotSettled {
                    id: id.to_owned(),
                    waited: timeout,
                    phase: d.tenant.status.phase,
                });
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    pub async fn create_token(&self, body: &NewToken) -> Result<CreatedToken, ClientError> {
        self.call(Method::POST, &Self::path(&["tokens"]), Some(body))
            .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        self.call(Method::GET, &Self::path(&["tokens"]), None).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<TokenInfo, ClientError> {
        self.call(Method::DELETE, &Self::path(&["tokens", id]), None)
            .await
    }

    pub async fn create_user(&self, body: &NewUser) -> Result<UserInfo, ClientError> {
        self.call(Method::POST, &Self::path(&["users"]), Some(body))
            .await
    }

    pub async fn users(&self) -> Result<Vec<UserInfo>, ClientError> {
        self.call(Method::GET, &Self::path(&["users"]), None).await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let path = Self::path(&["users", name]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn grant(
        &self,
        name: &str,
        tenant: &str,
        body: &Grant,
    ) -> Result<UserInfo, ClientError> {
        let path = Self::path(&["users", name, "tenants", tenant]);
        self.call(Method::PUT, &path, Some(body)).await
    }

    pub async fn revoke_access(&self, name: &str, tenant: &str) -> Result<(), ClientError> {
        let path = Self::path(&["users", name, "tenants", tenant]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn create_embed_key(&self, body: &NewEmbedKey) -> Result<EmbedKey, ClientError> {
        self.call(Method::POST, &Self::path(&["embed-keys"]), Some(body))
            .await
    }

    pub async fn embed_keys(&self) -> Result<Vec<EmbedKey>, ClientError> {
        self.call(Method::GET, &Self::path(&["embed-keys"]), None)
            .await
    }

    pub async fn delete_embed_key(&self, id: &str) -> Result<(), ClientError> {
        let path = Self::path(&["embed-keys", id]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn swarm(&self) -> Result<SwarmStatus, ClientError> {
        self.call(Method::GET, &Self::path(&["swarm"]), None).await
    }
}

/// Request bodies behind one object-safe type, so `send` is not generic over each of them.
mod erased {
    pub trait Body: Sync {
        fn to_json(&self) -> serde_json::Result<serde_json::Value>;
    }

    impl<T: super::Serialize + Sync> Body for T {
        fn to_json(&self) -> serde_json::Result<serde_json::Value> {
            serde_json::to_value(self)
        }
    }
}

#[cfg(test)]
mod tests;

//! The one client of pug's REST API: every command but `serve` and `render` calls pug through it.
//!
//! Owns: finding pug (flags, `PUG_URL`/`PUG_TOKEN`, then the files `pug serve` writes into its
//! data dir), one typed method per endpoint on the API's own request and response types, and
//! failures as one line: the server's `{"error": …}`, or how to reach a pug that is not running.
//!
//! Must not: print (the commands do), retry, or decide anything the server decides.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use pug_api::{
    CreateTenant, CreatedToken, EmbedKey, ErrorBody, FleetStatus, Grant, NewEmbedKey, NewToken,
    NewUser, TenantDetail, TokenInfo, UpdateTenant, UpgradeTenant, UserInfo,
};
use pug_docker::SwarmStatus;
use pug_types::Tenant;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ClientArgs;

/// In pug's data dir: the URL the local `pug serve` listens at.
pub const URL_FILE: &str = "pug.url";
/// In pug's data dir: the local CLI's admin token (readable by pug's user only).
pub const TOKEN_FILE: &str = "local.token";

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

/// pug's REST API, as one pug answers it.
pub struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    /// Finds pug's URL and a token: flags, `PUG_URL`/`PUG_TOKEN`, then the local data dir.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let read = |file| {
            std::fs::read_to_string(args.data_dir.join(file))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        let url = (args.url.clone())
            .or_else(|| read(URL_FILE))
            .unwrap_or_else(|| "http://127.0.0.1:8080".into());
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            url: url.trim_end_matches('/').to_owned(),
            token: args.token.clone().or_else(|| read(TOKEN_FILE)),
        })
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
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.url);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body.to_json()?);
        }
        let response = request.send().await.map_err(|e| {
            anyhow!(
                "cannot reach pug at {}: {}; is `pug serve` running? (set --url or PUG_URL)",
                self.url,
                pug_orchestrator::error_chain(&e)
            )
        })?;
        let status = response.status();
        let text = response.text().await.context("cannot read pug's answer")?;
        if status.is_success() {
            return Ok(text);
        }
        let message = serde_json::from_str::<ErrorBody>(&text).map_or(text, |b| b.error);
        if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            bail!("{message} (no token found: pass --token or PUG_TOKEN, or run on the machine of `pug serve` with --data-dir)");
        }
        bail!("{message}")
    }

    /// A request whose answer is `T` as JSON.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&dyn erased::Body>,
    ) -> anyhow::Result<T> {
        let text = self.send(method, path, body).await?;
        serde_json::from_str(&text)
            .with_context(|| format!("unexpected answer from {}{path}", self.url))
    }

    pub async fn status(&self) -> anyhow::Result<FleetStatus> {
        self.call(Method::GET, &Self::path(&["status"]), None).await
    }

    pub async fn tenants(&self) -> anyhow::Result<Vec<TenantDetail>> {
        self.call(Method::GET, &Self::path(&["tenants"]), None)
            .await
    }

    pub async fn tenant(&self, id: &str) -> anyhow::Result<TenantDetail> {
        self.call(Method::GET, &Self::path(&["tenants", id]), None)
            .await
    }

    pub async fn create_tenant(&self, body: &CreateTenant) -> anyhow::Result<Tenant> {
        self.call(Method::POST, &Self::path(&["tenants"]), Some(body))
            .await
    }

    pub async fn update_tenant(&self, id: &str, body: &UpdateTenant) -> anyhow::Result<Tenant> {
        self.call(Method::PATCH, &Self::path(&["tenants", id]), Some(body))
            .await
    }

    pub async fn upgrade_tenant(&self, id: &str, body: &UpgradeTenant) -> anyhow::Result<Tenant> {
        let path = Self::path(&["tenants", id, "upgrade"]);
        self.call(Method::POST, &path, Some(body)).await
    }

    pub async fn tenant_action(&self, id: &str, action: Action) -> anyhow::Result<Tenant> {
        let path = Self::path(&["tenants", id, action.as_str()]);
        self.call(Method::POST, &path, None).await
    }

    /// Deletes a tenant; `purge` also drops its PostgreSQL database and role.
    pub async fn delete_tenant(&self, id: &str, purge: bool) -> anyhow::Result<Tenant> {
        let query = if purge { "?purge=true" } else { "" };
        let path = Self::path(&["tenants", id]) + query;
        self.call(Method::DELETE, &path, None).await
    }

    pub async fn create_token(&self, body: &NewToken) -> anyhow::Result<CreatedToken> {
        self.call(Method::POST, &Self::path(&["tokens"]), Some(body))
            .await
    }

    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        self.call(Method::GET, &Self::path(&["tokens"]), None).await
    }

    pub async fn revoke_token(&self, id: &str) -> anyhow::Result<TokenInfo> {
        self.call(Method::DELETE, &Self::path(&["tokens", id]), None)
            .await
    }

    pub async fn create_user(&self, body: &NewUser) -> anyhow::Result<UserInfo> {
        self.call(Method::POST, &Self::path(&["users"]), Some(body))
            .await
    }

    pub async fn users(&self) -> anyhow::Result<Vec<UserInfo>> {
        self.call(Method::GET, &Self::path(&["users"]), None).await
    }

    pub async fn delete_user(&self, name: &str) -> anyhow::Result<()> {
        let path = Self::path(&["users", name]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn grant(&self, name: &str, tenant: &str, body: &Grant) -> anyhow::Result<UserInfo> {
        let path = Self::path(&["users", name, "tenants", tenant]);
        self.call(Method::PUT, &path, Some(body)).await
    }

    pub async fn revoke_access(&self, name: &str, tenant: &str) -> anyhow::Result<()> {
        let path = Self::path(&["users", name, "tenants", tenant]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn create_embed_key(&self, body: &NewEmbedKey) -> anyhow::Result<EmbedKey> {
        self.call(Method::POST, &Self::path(&["embed-keys"]), Some(body))
            .await
    }

    pub async fn embed_keys(&self) -> anyhow::Result<Vec<EmbedKey>> {
        self.call(Method::GET, &Self::path(&["embed-keys"]), None)
            .await
    }

    pub async fn delete_embed_key(&self, id: &str) -> anyhow::Result<()> {
        let path = Self::path(&["embed-keys", id]);
        self.send(Method::DELETE, &path, None).await.map(drop)
    }

    pub async fn swarm(&self) -> anyhow::Result<SwarmStatus> {
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
mod tests {
    use super::Client;
    use crate::{ClientArgs, Output};

    fn args(url: String, token: Option<&str>, data_dir: &std::path::Path) -> ClientArgs {
        ClientArgs {
            url: Some(url),
            token: token.map(str::to_owned),
            data_dir: data_dir.to_owned(),
            output: Output::Table,
        }
    }

    /// A pug that answers every request with `status` and `body`.
    async fn answering(status: u16, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        let app = axum::Router::new().fallback(move || async move { (status, body) });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn failures_are_one_line_that_says_what_to_do() {
        let empty = tempfile::tempdir().unwrap();
        let error = r#"{"error":"tenant acme does not exist","field":"id"}"#;
        let cases = [
            (404, error, Some("t"), "tenant acme does not exist".to_owned()),
            (500, "upstream broke", Some("t"), "upstream broke".to_owned()),
            (
                401,
                r#"{"error":"a token is needed"}"#,
                None,
                "a token is needed (no token found: pass --token or PUG_TOKEN, or run on the machine of `pug serve` with --data-dir)".to_owned(),
            ),
            (401, r#"{"error":"bad token"}"#, Some("t"), "bad token".to_owned()),
        ];
        for (status, body, token, want) in cases {
            let url = answering(status, body).await;
            let api = Client::new(&args(url, token, empty.path())).unwrap();
            let e = api.tenant("acme").await.unwrap_err();
            assert_eq!(e.to_string(), want, "{status} {body}");
        }

        // Not running: how to reach it.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let api = Client::new(&args(url.clone(), None, empty.path())).unwrap();
        let e = api.status().await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("cannot reach pug at {url}: ")),
            "{e}"
        );
        assert!(
            e.ends_with("; is `pug serve` running? (set --url or PUG_URL)"),
            "{e}"
        );

        // A success that is not the expected type names the URL.
        let url = answering(200, "[]").await;
        let api = Client::new(&args(url.clone(), None, empty.path())).unwrap();
        let e = api.status().await.unwrap_err().to_string();
        assert_eq!(e, format!("unexpected answer from {url}/api/v1/status"));
    }

    #[test]
    fn pug_is_found_through_the_files_serve_writes() {
        let dir = tempfile::tempdir().unwrap();
        let found = |args: &ClientArgs| {
            let c = Client::new(args).unwrap();
            (c.url, c.token)
        };
        let mut none = args(String::new(), None, dir.path());
        none.url = None;
        assert_eq!(found(&none), ("http://127.0.0.1:8080".to_owned(), None));
        std::fs::write(dir.path().join(super::URL_FILE), "http://127.0.0.1:9/\n").unwrap();
        std::fs::write(dir.path().join(super::TOKEN_FILE), "local-secret\n").unwrap();
        assert_eq!(
            found(&none),
            (
                "http://127.0.0.1:9".to_owned(),
                Some("local-secret".to_owned())
            )
        );
        let flags = args("http://pug.example/".into(), Some("flag"), dir.path());
        assert_eq!(
            found(&flags),
            ("http://pug.example".to_owned(), Some("flag".to_owned()))
        );
    }

    #[test]
    fn path_segments_are_encoded() {
        let cases = [
            (&["status"][..], "/api/v1/status"),
            (
                &["tenants", "acme", "upgrade"][..],
                "/api/v1/tenants/acme/upgrade",
            ),
            (
                &["users", "a@b.c", "tenants", "acme"][..],
                "/api/v1/users/a@b.c/tenants/acme",
            ),
            (&["tokens", "../status"][..], "/api/v1/tokens/..%2Fstatus"),
            (&["tenants", "a b?c"][..], "/api/v1/tenants/a%20b%3Fc"),
        ];
        for (segments, want) in cases {
            assert_eq!(Client::path(segments), want, "{segments:?}");
        }
    }
}

//! A renderer service's token table, learnt from pug: `pug render --tenants-url` polls pug's
//! `GET /api/v1/renderer/tenants` every second and renders for tenants' tokens exactly as the
//! renderer embedded in pug does, without pug's store or master key.
//!
//! Owns: the poll (one GET with the service's credential, a bounded time), reading the table
//! into [`ScopedTokens`] (each token by its digest: [`crate::tenant_tokens::scoped_entries`]),
//! and keeping the last table while pug cannot be reached (a pug restarting or failing over
//! does not stop renders of tenants that were ready).
//!
//! Must not: decide which tenant renders what (pug's table says; the policy is
//! [`crate::tenant_tokens::entries`]'s, computed in pug), or log the credential.

use std::sync::Weak;
use std::time::Duration;

use pug_types::RendererTable;
use tokio_util::sync::CancellationToken;

use crate::security::ScopedTokens;
use crate::tenant_tokens::{scoped_entries, REFRESH};

/// How long one poll may take.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the table could not be read from pug this time.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach pug at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("pug refused the renderer's credential at {url} ({status}): {body}; the token file must hold the credential pug issued (the secret pug mounts into its renderer service)")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("pug answered {url} with {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("pug's answer at {url} is not a renderer table")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// Reads tenants' tokens from pug's API.
pub struct RemoteTenants {
    client: reqwest::Client,
    url: String,
    credential: String,
}

impl RemoteTenants {
    /// Polls `url` (pug's `/api/v1/renderer/tenants`) with `credential` as its bearer token.
    pub fn new(url: String, credential: String) -> Result<Self, RemoteError> {
        let client = pug_http::builder()
            .timeout(POLL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(RemoteError::Client)?;
        Ok(Self {
            client,
            url,
            credential,
        })
    }

    /// The table as pug serves it now.
    pub async fn fetch(&self) -> Result<RendererTable, RemoteError> {
        let url = self.url.clone();
        let response = self
            .client
            .get(&self.url)
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(|source| RemoteError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            let status = status.as_u16();
            return Err(if status == 401 || status == 403 {
                RemoteError::Refused { url, status, body }
            } else {
                RemoteError::Status { url, status, body }
            });
        }
        response
            .json::<RendererTable>()
            .await
            .map_err(|source| RemoteError::Body { url, source })
    }

    /// Fetches once into `table`. On an error the table keeps what it had.
    pub async fn refresh(&self, table: &ScopedTokens) -> Result<usize, RemoteError> {
        let fetched = self.fetch().await?;
        let (entries, bad) = scoped_entries(&fetched);
        if bad > 0 {
            tracing::warn!(
                grants = bad,
                "renderer: pug's table has grants with a damaged digest; they render nothing"
            );
        }
        let n = entries.len();
        table.replace_digests(entries);
        Ok(n)
    }

    /// Refreshes `table` every [`REFRESH`] until `shutdown` or the table is dropped. A failure
    /// is logged when it starts and when it ends, not every second.
    pub fn spawn(
        self,
        table: Weak<ScopedTokens>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(table) = table.upgrade() else {
                    return;
                };
                match self.refresh(&table).await {
                    Ok(n) if failing => {
                        failing = false;
                        tracing::info!(
                            tenants = n,
                            "renderer: tenants' tokens read from pug again"
                        );
                    }
                    Ok(_) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(
                            error = %pug_types::error_chain(&e),
                            tokens = table.len(),
                            "renderer: cannot read tenants' tokens from pug; keeping the last table"
                        );
                    }
                    Err(_) => {}
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::{digest, TokenScopes};
    use axum::http::{HeaderMap, StatusCode};
    use pug_types::RendererGrant;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn table() -> RendererTable {
        RendererTable {
            tenants: vec![RendererGrant {
                tenant: "acme".into(),
                token_sha256: digest("tok-acme")
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
                endpoints: vec!["10.0.1.5:3000".into()],
                names: vec![],
            }],
        }
    }

    /// pug's endpoint, as far as the renderer sees it: the table for the credential, 403 for
    /// anything else, 503 while `down`.
    async fn fake_pug(down: Arc<AtomicBool>) -> String {
        let app = axum::Router::new().route(
            "/api/v1/renderer/tenants",
            axum::routing::get(move |headers: HeaderMap| {
                let down = down.clone();
                async move {
                    if down.load(Ordering::SeqCst) {
                        return Err((StatusCode::SERVICE_UNAVAILABLE, "down".to_owned()));
                    }
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    if auth != "Bearer cred" {
                        return Err((StatusCode::FORBIDDEN, "{\"error\":\"no\"}".to_owned()));
                    }
                    Ok(axum::Json(table()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/api/v1/renderer/tenants")
    }

    #[tokio::test]
    async fn the_table_comes_from_pug_and_stays_while_pug_is_away() {
        let down = Arc::new(AtomicBool::new(false));
        let url = fake_pug(down.clone()).await;
        let tokens = ScopedTokens::new();
        let remote = RemoteTenants::new(url.clone(), "cred".into()).unwrap();
        assert_eq!(remote.refresh(&tokens).await.unwrap(), 1);
        let grant = tokens.grant("tok-acme").expect("acme's token renders");
        assert_eq!(grant.tenant.as_deref(), Some("acme"));
        assert_eq!(grant.scope.hosts(), Some(&["10.0.1.5:3000".to_owned()][..]));
        assert!(tokens.grant("tok-other").is_none());

        down.store(true, Ordering::SeqCst);
        let err = remote.refresh(&tokens).await.unwrap_err();
        assert!(
            matches!(err, RemoteError::Status { status: 503, .. }),
            "{err}"
        );
        assert!(tokens.grant("tok-acme").is_some(), "the last table is kept");
        down.store(false, Ordering::SeqCst);

        let wrong = RemoteTenants::new(url, "not-it".into()).unwrap();
        let err = wrong.refresh(&tokens).await.unwrap_err();
        assert!(
            matches!(err, RemoteError::Refused { status: 403, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("credential"), "{err}");
    }
}

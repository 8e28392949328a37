//! A renderer service's token table, learnt from pug: `pug render --tenants-url` polls pug's
//! `GET /api/v1/renderer/tenants` every second and renders for tenants' tokens exactly as the
//! renderer embedded in pug does, without pug's store or master key.
//!
//! Owns: the poll (one GET with the service's credential, a bounded time), reading the table
//! into [`ScopedTokens`] (each token by its digest: [`crate::tenant_tokens::scoped_entries`]),
//! keeping the last table while pug cannot be reached (a pug restarting or failing over
//! does not stop renders of tenants that were ready), and reporting whose renders it served
//! since the last poll ([`PendingRenders`], `POST /api/v1/renderer/activity` beside the
//! table): a render is its tenant's activity, as with the renderer embedded in pug.
//!
//! Must not: decide which tenant renders what (pug's table says; the policy is
//! [`crate::tenant_tokens::entries`]'s, computed in pug), or log the credential.

use std::collections::BTreeSet;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use pug_types::{RendererActivity, RendererTable};
use tokio_util::sync::CancellationToken;

use crate::activity::RenderActivity;
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
    #[error("--tenants-url {url:?} is not a URL")]
    Url {
        url: String,
        #[source]
        source: url::ParseError,
    },
}

/// The tenants whose renders were admitted since the last report to pug: the renderer's
/// [`RenderActivity`] when it renders for pug's tenants. At most one entry per tenant of the
/// table, so it stays small however many renders there are.
#[derive(Default)]
pub struct PendingRenders {
    tenants: Mutex<BTreeSet<String>>,
}

impl RenderActivity for PendingRenders {
    fn rendered(&self, tenant: &str) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        if !tenants.contains(tenant) {
            tenants.insert(tenant.to_owned());
        }
    }
}

impl PendingRenders {
    /// Everything noted so far, leaving nothing.
    fn take(&self) -> Vec<String> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *tenants).into_iter().collect()
    }

    /// Puts back what a failed report did not deliver (for the next one).
    fn put_back(&self, reported: Vec<String>) {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        tenants.extend(reported);
    }
}

/// Reads tenants' tokens from pug's API.
pub struct RemoteTenants {
    client: reqwest::Client,
    url: String,
    /// `activity` beside the table's URL (`…/renderer/activity`).
    activity_url: String,
    credential: String,
}

impl RemoteTenants {
    /// Polls `url` (pug's `/api/v1/renderer/tenants`) with `credential` as its bearer token,
    /// and reports renders to `activity` beside it.
    pub fn new(url: String, credential: String) -> Result<Self, RemoteError> {
        let client = pug_http::builder()
            .timeout(POLL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(RemoteError::Client)?;
        let activity_url = url::Url::parse(&url)
            .and_then(|u| u.join("activity"))
            .map_err(|source| RemoteError::Url {
                url: url.clone(),
                source,
            })?
            .to_string();
        Ok(Self {
            client,
            url,
            activity_url,
            credential,
        })
    }

    /// Tells pug whose renders were served since the last report; what is not delivered
    /// stays in `pending` for the next one.
    pub async fn report(&self, pending: &PendingRenders) -> Result<(), RemoteError> {
        let tenants = pending.take();
        if tenants.is_empty() {
            return Ok(());
        }
        let url = self.activity_url.clone();
        let sent = self
            .client
            .post(&self.activity_url)
            .bearer_auth(&self.credential)
            .json(&RendererActivity {
                tenants: tenants.clone(),
            })
            .send()
            .await;
        let failure = match sent {
            Err(source) => Some(RemoteError::Unreachable { url, source }),
            Ok(response) if !response.status().is_success() => {
                let status = response.status().as_u16();
                let body: String = response
                    .text()
                    .await
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                Some(if status == 401 || status == 403 {
                    RemoteError::Refused { url, status, body }
                } else {
                    RemoteError::Status { url, status, body }
                })
            }
            Ok(_) => None,
        };
        match failure {
            Some(e) => {
                pending.put_back(tenants);
                Err(e)
            }
            None => Ok(()),
        }
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

    /// Refreshes `table` and reports `pending` every [`REFRESH`] until `shutdown` or the table
    /// is dropped. A failure is logged when it starts and when it ends, not every second.
    pub fn spawn(
        self,
        table: Weak<ScopedTokens>,
        pending: std::sync::Arc<PendingRenders>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            let mut reports_failing = false;
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
                match self.report(&pending).await {
                    Ok(()) => reports_failing = false,
                    Err(e) if !reports_failing => {
                        reports_failing = true;
                        tracing::warn!(
                            error = %pug_types::error_chain(&e),
                            "renderer: cannot report renders to pug (tenants' activity); retrying with the next poll"
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

    /// pug's activity route: records each report for the credential, 503 while `down`.
    async fn fake_activity(
        down: Arc<AtomicBool>,
        seen: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
    ) -> String {
        let app = axum::Router::new().route(
            "/api/v1/renderer/activity",
            axum::routing::post(
                move |headers: HeaderMap, axum::Json(report): axum::Json<RendererActivity>| {
                    let (down, seen) = (down.clone(), seen.clone());
                    async move {
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        if down.load(Ordering::SeqCst) || auth != "Bearer cred" {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        seen.lock().unwrap().push(report.tenants);
                        StatusCode::OK
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/api/v1/renderer/tenants")
    }

    #[tokio::test]
    async fn renders_are_reported_once_per_tenant_and_kept_until_pug_takes_them() {
        let down = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let url = fake_activity(down.clone(), seen.clone()).await;
        let remote = RemoteTenants::new(url, "cred".into()).unwrap();
        assert!(remote.activity_url.ends_with("/api/v1/renderer/activity"));
        let pending = PendingRenders::default();

        remote.report(&pending).await.unwrap();
        assert!(
            seen.lock().unwrap().is_empty(),
            "nothing rendered: no request"
        );

        for t in ["globex", "acme", "acme"] {
            pending.rendered(t);
        }
        remote.report(&pending).await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![vec!["acme".to_owned(), "globex".to_owned()]]
        );

        down.store(true, Ordering::SeqCst);
        pending.rendered("acme");
        assert!(remote.report(&pending).await.is_err());
        down.store(false, Ordering::SeqCst);
        pending.rendered("initech");
        remote.report(&pending).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().last().unwrap(),
            &vec!["acme".to_owned(), "initech".to_owned()],
            "what pug did not take is sent with the next report"
        );
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

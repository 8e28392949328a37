//! pug's renderer: Grafana's remote image rendering API on one warm, supervised Chromium.
//!
//! A stock Grafana pointed at it (`GF_RENDERING_SERVER_URL=http://host:8081/render`,
//! `GF_RENDERING_CALLBACK_URL`, `GF_RENDERING_RENDERER_TOKEN`) gets panel PNGs, dashboard PDFs and
//! CSV exports as from Grafana's own renderer. Unlike that renderer it keeps Chromium running and
//! gives each render a fresh incognito context, detects readiness without fixed sleeps, refuses
//! URLs outside its allow-list (and cloud metadata always), binds tenant tokens to the tenant's
//! own URLs, and replaces a Chromium that crashes, hangs or grows.
//!
//! # Layout
//! - [`config`]: settings, defaults, the reference image's environment variables.
//! - [`cli`]: the flags of `pug render`.
//! - [`params`]: query parameters of `/render` and `/render/csv` (pure).
//! - [`security`]: tokens and scopes, URL policy, CSV file names (pure).
//! - [`engine`]: admission, Chromium supervision, one page load (`engine::page`).
//! - [`api`]: the HTTP routes and the mapping of errors to statuses.
//! - [`metrics`]: Prometheus families.
//! - [`error`]: error types.
//! - [`tenant_tokens`]: inside `pug serve`, which tenant's token may render which instances.
//! - [`activity`]: the seam through which a tenant's renders count as its activity.
//! - [`embedded`]: the renderer `pug serve` runs beside the process backend.
//! - [`remote`]: a renderer service's token table, read from pug's API (`--tenants-url`), and its renders reported back to pug as tenants' activity.

pub mod activity;
pub mod api;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod params;
pub mod remote;
pub mod security;
pub mod tenant_tokens;

use std::sync::Arc;
use std::time::Duration;

pub use crate::activity::{NoActivity, RenderActivity};
pub use crate::cli::RenderArgs;
pub use crate::config::{ConfigError, RendererConfig};
pub use crate::error::{RenderError, RendererError};
pub use crate::security::{Grant, Scope, ScopedTokens, StaticTokens, TokenScopes};
pub use crate::tenant_tokens::{TenantEndpoints, TenantSource, TenantTokens};

/// The engine and its state: what `pug render` runs, and what `pug serve` embeds.
pub struct Renderer {
    state: Arc<api::AppState>,
}

impl Renderer {
    /// Validates `config`, starts Chromium and the supervisor. Fails if Chromium cannot start.
    /// Renders are nobody's activity ([`Renderer::start_recording`] tells someone).
    pub async fn start(
        config: RendererConfig,
        scopes: Arc<dyn TokenScopes>,
    ) -> Result<Renderer, RendererError> {
        Self::start_recording(config, scopes, Arc::new(NoActivity)).await
    }

    /// [`Renderer::start`], telling `activity` of every render a tenant's token is accepted for.
    pub async fn start_recording(
        config: RendererConfig,
        scopes: Arc<dyn TokenScopes>,
        activity: Arc<dyn RenderActivity>,
    ) -> Result<Renderer, RendererError> {
        config.validate()?;
        if config.sandbox_disabled() {
            tracing::warn!(
                "Chromium runs without its sandbox (--no-sandbox in RENDERING_ARGS): a compromised page's renderer process runs with the browser's full rights; remove the flag unless this kernel cannot give unprivileged user namespaces"
            );
        }
        let config = Arc::new(config);
        let metrics = Arc::new(metrics::Metrics::new());
        let engine = engine::Engine::start(config.clone(), metrics.clone()).await?;
        Ok(Renderer {
            state: Arc::new(api::AppState {
                engine,
                scopes,
                activity,
                config,
                metrics,
            }),
        })
    }

    /// The HTTP routes (`/render`, `/render/csv`, `/render/version`, `/healthz`, `/metrics`, `/`).
    pub fn router(&self) -> axum::Router {
        api::router(self.state.clone())
    }

    /// The engine (for embedding and tests: e.g. the current Chromium's process id).
    pub fn engine(&self) -> &engine::Engine {
        &self.state.engine
    }

    /// Stops Chromium (giving running renders a few seconds) and removes its temporary files.
    pub async fn shutdown(self) {
        self.state.engine.shutdown(Duration::from_secs(5)).await;
    }
}

/// What `pug render` calls: reads the environment, applies the flags, binds, and serves until
/// ctrl-c or SIGTERM.
pub async fn run(args: RenderArgs) -> Result<(), RendererError> {
    let mut config = RendererConfig::from_env()?;
    args.apply(&mut config)?;
    let addr = config.addr;
    let allow_list = !config.allowed_hosts.is_empty();
    if !allow_list
        && args.tenants_url.is_none()
        && config
            .auth_tokens
            .iter()
            .any(|t| t == security::DEFAULT_TOKEN)
    {
        tracing::warn!("renderer: {}", security::DEFAULT_TOKEN_WITHOUT_ALLOW_LIST);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let (scopes, activity, poll): (Arc<dyn TokenScopes>, Arc<dyn RenderActivity>, _) =
        match (&args.tenants_url, &args.tenants_token_file) {
            (Some(url), Some(path)) => {
                let credential = std::fs::read_to_string(path).map_err(|source| {
                    RendererError::CredentialFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                let remote = remote::RemoteTenants::new(url.clone(), credential.trim().to_owned())?;
                let table = Arc::new(ScopedTokens::new());
                match remote.refresh(&table).await {
                    Ok(n) => {
                        tracing::info!(%url, tenants = n, "renderer: rendering for pug's tenants")
                    }
                    Err(e) => tracing::warn!(
                        %url,
                        error = %pug_types::error_chain(&e),
                        "renderer: cannot read tenants' tokens from pug yet; trying every second"
                    ),
                }
                // Each render is its tenant's activity: reported to pug with every poll.
                let pending = Arc::new(remote::PendingRenders::default());
                let poll = remote.spawn(Arc::downgrade(&table), pending.clone(), stop.clone());
                (table as Arc<dyn TokenScopes>, pending as _, Some(poll))
            }
            _ => (
                Arc::new(StaticTokens::standalone(&config.auth_tokens, allow_list))
                    as Arc<dyn TokenScopes>,
                Arc::new(NoActivity) as _,
                None,
            ),
        };
    let renderer = Renderer::start_recording(config, scopes, activity).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RendererError::Bind { addr, source })?;
    tracing::info!(%addr, "renderer listening");
    let served = axum::serve(listener, renderer.router())
        .with_graceful_shutdown(shutdown_signal())
        .await;
    stop.cancel();
    if let Some(poll) = poll {
        let _ = poll.await;
    }
    renderer.shutdown().await;
    served.map_err(RendererError::Serve)
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

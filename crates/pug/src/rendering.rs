//! The renderer inside `pug serve`.
//!
//! Owns: starting the embedded renderer (`renderer.mode`), its listener, and the token table
//! that binds each tenant's `renderer_token` to that tenant's ready instances — so a tenant's
//! Grafana can have its own pages rendered and nobody else's.
//!
//! Must not: decide how tenants' Grafana is configured (the controller writes `rendering.*`
//! from `ControllerSettings::renderer_url`), or render anything itself.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use pug_config::{Config, RendererMode};
use pug_renderer::{Renderer, RendererConfig, Scope, ScopedTokens};
use pug_store::{secret, Store};
use pug_types::{ExposeSecret, SecretString, TenantId};
use tokio_util::sync::CancellationToken;

/// How often the token table is rebuilt from the store: a tenant that just became ready can be
/// rendered within this.
const REFRESH: Duration = Duration::from_secs(1);

/// A running embedded renderer.
pub struct Embedded {
    renderer: Renderer,
    /// `rendering.server_url` of every tenant.
    pub url: String,
    /// `host:port` where the renderer answers (for Prometheus).
    pub address: String,
    server: tokio::task::JoinHandle<()>,
}

/// Starts the renderer unless `renderer.mode` is `off`. In `auto` mode a missing Chromium or a
/// taken port is reported and pug runs without rendering; in `on` mode it is an error.
pub async fn start(
    config: &Config,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<Embedded>> {
    let mode = config.renderer.mode;
    if mode == RendererMode::Off {
        return Ok(None);
    }
    if config.backend != pug_config::Backend::Process {
        // Chromium beside pug cannot load pages from containers on another network or node.
        let why = format!(
            "the embedded renderer serves the process backend only (Chromium beside pug cannot load pages from {} tenants' containers)",
            config.backend.as_str()
        );
        if mode == RendererMode::On {
            bail!("renderer.mode = \"on\": {why}");
        }
        tracing::info!("rendering is off: {why}");
        return Ok(None);
    }
    match try_start(config, store, shutdown).await {
        Ok(embedded) => Ok(Some(embedded)),
        Err(e) if mode == RendererMode::Auto => {
            tracing::warn!(
                "rendering is off: {e:#}; install Chromium (apt-get install chromium-headless-shell, or chromium) or set renderer.chrome_path, or set renderer.mode = \"off\" to silence this"
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn try_start(
    config: &Config,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<Embedded> {
    let r = &config.renderer;
    let addr = r.listen;
    // Bind first: a taken port should not cost a Chromium start.
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (renderer.listen); give the renderer another port")
    })?;
    let chrome_path = if r.chrome_path.is_empty() {
        pug_renderer::config::find_browser().with_context(|| {
            format!(
                "no browser found (looked for {})",
                pug_renderer::config::BROWSER_CANDIDATES.join(", ")
            )
        })?
    } else {
        pug_renderer::config::find_executable(&r.chrome_path)
            .with_context(|| format!("Chromium ({}) was not found", r.chrome_path))?
    };
    let renderer_config = RendererConfig {
        addr,
        auth_tokens: Vec::new(),
        // Every valid token is a tenant's, scoped to that tenant's instances (below); the
        // allow-list only adds that nothing but the instances' host is ever loaded.
        allowed_hosts: vec![config.process.bind_address.clone()],
        chrome_path,
        max_concurrency: r.max_concurrency,
        max_queue: r.max_queue,
        renders_per_browser: r.renders_per_browser,
        max_browser_rss_bytes: r.max_browser_rss_mb << 20,
        page_reuse: r.page_reuse.max(1),
        temp_dir: None,
        ..RendererConfig::default()
    };
    let tokens = Arc::new(ScopedTokens::new());
    let renderer = Renderer::start(renderer_config, tokens.clone())
        .await
        .context("cannot start Chromium")?;
    refresh_tokens(&store, &tokens, &mut HashMap::new())
        .await
        .context("cannot read tenants' renderer tokens")?;
    tokio::spawn(refresh_loop(store, Arc::downgrade(&tokens)));
    let server = tokio::spawn({
        let router = renderer.router();
        async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "the renderer's server failed");
            }
        }
    });
    Ok(Embedded {
        renderer,
        url: config.renderer_url(),
        address: config
            .renderer_url()
            .trim_start_matches("http://")
            .trim_end_matches("/render")
            .to_owned(),
        server,
    })
}

impl Embedded {
    /// Waits for the server to stop (after the shutdown token), then stops Chromium.
    pub async fn stop(self) {
        let _ = self.server.await;
        self.renderer.shutdown().await;
    }
}

async fn refresh_loop(store: Store, tokens: Weak<ScopedTokens>) {
    let mut cache = HashMap::new();
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tokens) = tokens.upgrade() else {
            return;
        };
        if let Err(e) = refresh_tokens(&store, &tokens, &mut cache).await {
            tracing::warn!(error = %e, "renderer: cannot refresh tenants' tokens");
        }
    }
}

/// Rebuilds the token table: each tenant with ready instances → its token, scoped to exactly
/// those instances. `cache` keeps decrypted tokens between passes (a tenant's token never
/// changes while the tenant exists).
async fn refresh_tokens(
    store: &Store,
    tokens: &ScopedTokens,
    cache: &mut HashMap<TenantId, SecretString>,
) -> Result<(), pug_store::StoreError> {
    let statuses = store.tenant_statuses().await?;
    cache.retain(|id, _| statuses.iter().any(|(t, _)| t == id));
    let mut entries = Vec::new();
    for (id, status) in statuses {
        if status.endpoints.is_empty() {
            continue;
        }
        let token = match cache.get(&id) {
            Some(t) => t.clone(),
            None => match store.secret(&id, secret::RENDERER_TOKEN).await? {
                Some(t) => {
                    cache.insert(id.clone(), t.clone());
                    t
                }
                None => continue,
            },
        };
        entries.push((
            token.expose_secret().to_owned(),
            Scope::Hosts(status.endpoints),
        ));
    }
    tokens.replace(entries);
    Ok(())
}

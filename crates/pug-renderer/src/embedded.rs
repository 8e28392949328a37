//! The renderer inside `pug serve`, which every tenant's Grafana is wired to.
//!
//! Owns: whether it runs ([`plan`]: `renderer.mode` and the backend; pure), its settings from
//! pug's configuration ([`settings`]), its listeners and server, the URL tenants' Grafana
//! calls it at ([`tenant_url`]), and its token table (each tenant's token renders only that
//! tenant's ready instances: [`crate::tenant_tokens`]), whose renders it tells the
//! [`RenderActivity`] it is given as those tenants' activity.
//!
//! On the docker backend it listens on `renderer.listen` and on the gateway address of pug's
//! network (where containers reach the host), and Chromium, on the host, loads the containers'
//! pages at their addresses on that network. On swarm, pug runs in a container on the tenants'
//! overlay network: the renderer listens on pug's own address there, and Chromium loads each
//! task's page at its overlay address (a task's callback names its service). (With
//! `renderer.swarm.replicas` ≥ 1 the renderer is a swarm service instead, and `pug serve`
//! does not start this one.)
//!
//! Must not: decide how tenants' Grafana is configured (the controller writes `rendering.*`
//! from `ControllerSettings::renderer_url`), or read pug's store (it reads tenants through a
//! [`TenantSource`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use pug_config::{Backend, Config, RendererMode};
use tokio_util::sync::CancellationToken;

use crate::activity::RenderActivity;
use crate::config::{find_browser, find_executable, BROWSER_CANDIDATES};
use crate::tenant_tokens::{TenantSource, TenantTokens, REFRESH};
use crate::{Renderer, RendererConfig, RendererError, ScopedTokens};

/// Whether `pug serve` starts its renderer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `renderer.mode = "off"`.
    Off,
    /// Start it; in `auto` mode a failure is reported and pug runs without rendering.
    Start,
}

/// Decides from `renderer.mode` and the backend: Chromium beside pug loads pages of the
/// process backend's instances, of the docker backend's containers (on a bridge network of
/// this host) and of swarm tasks (pug runs on their overlay network, so its Chromium reaches
/// every task wherever it runs). Every backend has it, so only `off` turns it off.
pub fn plan(mode: RendererMode, _backend: Backend) -> Plan {
    if mode == RendererMode::Off {
        return Plan::Off;
    }
    Plan::Start
}

/// The renderer's settings from `[renderer]`, with Chromium at `chrome_path`.
pub fn settings(config: &Config, chrome_path: PathBuf) -> RendererConfig {
    let r = &config.renderer;
    RendererConfig {
        addr: r.listen,
        auth_tokens: Vec::new(),
        // Every valid token is a tenant's, scoped to that tenant's instances; on the process
        // backend the allow-list adds that nothing but the instances' host is ever loaded
        // (containers' addresses change with every start: their tokens' scopes say which).
        allowed_hosts: match config.backend {
            Backend::Process => vec![config.process.bind_address.clone()],
            _ => Vec::new(),
        },
        chrome_path,
        max_concurrency: r.max_concurrency,
        max_queue: r.max_queue,
        renders_per_browser: r.renders_per_browser,
        max_browser_rss_bytes: r.max_browser_rss_mb << 20,
        page_reuse: r.page_reuse.max(1),
        chrome_args: if r.no_sandbox {
            vec!["--disable-gpu".to_owned(), "--no-sandbox".to_owned()]
        } else {
            vec!["--disable-gpu".to_owned()]
        },
        temp_dir: None,
        ..RendererConfig::default()
    }
}

/// Why the embedded renderer did not start.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("cannot listen on {addr} (renderer.listen, on pug's docker network's gateway); give the renderer another port")]
    BindGateway {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} (renderer.listen); give the renderer another port")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no browser found (looked for {})", BROWSER_CANDIDATES.join(", "))]
    NoBrowser,
    #[error("Chromium ({0}) was not found")]
    BrowserMissing(String),
    #[error("cannot start Chromium")]
    Start(#[source] RendererError),
    #[error("cannot read tenants' renderer tokens")]
    Tokens(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A running embedded renderer.
pub struct Embedded {
    renderer: Renderer,
    /// `rendering.server_url` of every tenant.
    pub url: String,
    /// `host:port` where the renderer answers on the host (for Prometheus).
    pub address: String,
    /// Its servers and its token table's refresh, which all end on the shutdown token.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Where instances reach the renderer: `renderer.listen` (loopback when it is unspecified);
/// with `for_instances` (the docker network's gateway) and a loopback or unspecified
/// `renderer.listen`, that address and `renderer.listen`'s port. (pug itself in a container
/// on pug's network sets `renderer.listen` to its own address there.) `renderer.tenant_url`,
/// when set, wins over all of these.
pub fn tenant_url(config: &Config, for_instances: Option<IpAddr>) -> String {
    if !config.renderer.tenant_url.trim().is_empty() {
        return config.renderer.tenant_url.trim().to_owned();
    }
    let listen = config.renderer.listen;
    match for_instances {
        Some(ip) if listen.ip().is_loopback() || listen.ip().is_unspecified() => {
            format!("http://{}/render", SocketAddr::new(ip, listen.port()))
        }
        _ => config.renderer_url(),
    }
}

/// The second listener's address: the gateway's, when `renderer.listen` is loopback (an
/// unspecified address already listens on every interface, another is where instances go).
fn gateway_listen(config: &Config, for_instances: Option<IpAddr>) -> Option<SocketAddr> {
    let listen = config.renderer.listen;
    let ip = for_instances?;
    listen
        .ip()
        .is_loopback()
        .then(|| SocketAddr::new(ip, listen.port()))
}

/// Starts the renderer as [`plan`] decides. In `auto` mode a missing Chromium or a taken port
/// is reported and pug runs without rendering; in `on` mode it is an error.
///
/// `for_instances` is the address on this host that instances reach it at, when it is not
/// loopback (the docker backend's network gateway). `activity` is told of every render a
/// tenant's token is accepted for.
pub async fn start<S: TenantSource>(
    config: &Config,
    tenants: S,
    activity: Arc<dyn RenderActivity>,
    for_instances: Option<IpAddr>,
    shutdown: CancellationToken,
) -> Result<Option<Embedded>, EmbedError> {
    let mode = config.renderer.mode;
    match plan(mode, config.backend) {
        Plan::Off => return Ok(None),
        Plan::Start => {}
    }
    match try_start(config, tenants, activity, for_instances, shutdown).await {
        Ok(embedded) => Ok(Some(embedded)),
        Err(e) if mode == RendererMode::Auto => {
            tracing::warn!(
                "rendering is off: {}; install Chromium (apt-get install chromium-headless-shell, or chromium) or set renderer.chrome_path, or set renderer.mode = \"off\" to silence this",
                chain(&e)
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn try_start<S: TenantSource>(
    config: &Config,
    tenants: S,
    activity: Arc<dyn RenderActivity>,
    for_instances: Option<IpAddr>,
    shutdown: CancellationToken,
) -> Result<Embedded, EmbedError> {
    let addr = config.renderer.listen;
    // Bind first: a taken port should not cost a Chromium start.
    let mut listeners = vec![tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| EmbedError::Bind { addr, source })?];
    if let Some(addr) = gateway_listen(config, for_instances) {
        listeners.push(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| EmbedError::BindGateway { addr, source })?,
        );
    }
    let chrome = &config.renderer.chrome_path;
    let chrome_path = if chrome.is_empty() {
        find_browser().ok_or(EmbedError::NoBrowser)?
    } else {
        find_executable(chrome).ok_or_else(|| EmbedError::BrowserMissing(chrome.clone()))?
    };
    let table = Arc::new(ScopedTokens::new());
    let renderer =
        Renderer::start_recording(settings(config, chrome_path), table.clone(), activity)
            .await
            .map_err(EmbedError::Start)?;
    let mut tokens = TenantTokens::new(tenants);
    tokens
        .refresh(&*table)
        .await
        .map_err(|e| EmbedError::Tokens(Box::new(e)))?;
    let refresh = tokens.spawn(Arc::downgrade(&table), REFRESH, shutdown.clone());
    let servers = listeners
        .into_iter()
        .map(|listener| {
            let router = renderer.router();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "the renderer's server failed");
                }
            })
        })
        .chain([refresh])
        .collect();
    Ok(Embedded {
        renderer,
        address: address(&config.renderer_url()).to_owned(),
        url: tenant_url(config, for_instances),
        tasks: servers,
    })
}

/// `host:port` of a renderer URL (`http://host:port/render`).
fn address(url: &str) -> &str {
    url.trim_start_matches("http://")
        .trim_end_matches("/render")
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(&format!(": {s}"));
        source = s.source();
    }
    out
}

impl Embedded {
    /// Waits for the servers and the token refresh to stop (after the shutdown token), then
    /// stops Chromium.
    pub async fn stop(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        self.renderer.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_and_the_backend_decide_whether_it_runs() {
        use Backend::*;
        use RendererMode::*;
        let cases = [
            (Off, Process, Plan::Off),
            (Off, Docker, Plan::Off),
            (Off, Swarm, Plan::Off),
            (Auto, Process, Plan::Start),
            (On, Process, Plan::Start),
            (Auto, Docker, Plan::Start),
            (On, Docker, Plan::Start),
            (Auto, Swarm, Plan::Start),
            (On, Swarm, Plan::Start),
        ];
        for (mode, backend, want) in cases {
            assert_eq!(plan(mode, backend), want, "{mode:?} on {backend:?}");
        }
    }

    #[test]
    fn settings_follow_the_configuration() {
        let mut config = Config::default();
        config.process.bind_address = "127.0.0.2".into();
        config.renderer.max_browser_rss_mb = 3;
        config.renderer.page_reuse = 0;
        let s = settings(&config, PathBuf::from("/usr/bin/chromium"));
        assert_eq!(s.allowed_hosts, vec!["127.0.0.2".to_owned()]);
        assert!(
            s.auth_tokens.is_empty(),
            "only tenants' own tokens are valid"
        );
        assert_eq!(s.max_browser_rss_bytes, 3 << 20);
        assert_eq!(s.page_reuse, 1, "at least one render per page");
        assert!(
            !s.sandbox_disabled(),
            "the sandbox is on unless the operator says"
        );
        config.renderer.no_sandbox = true;
        assert!(settings(&config, PathBuf::from("/c")).sandbox_disabled());
        assert_eq!(s.addr, config.renderer.listen);
        assert_eq!(s.max_concurrency, config.renderer.max_concurrency);
    }

    #[test]
    fn containers_reach_the_renderer_on_their_networks_gateway() {
        let mut config = Config::default();
        config.renderer.listen = "127.0.0.1:9000".parse().unwrap();
        let gw: IpAddr = "172.18.0.1".parse().unwrap();
        assert_eq!(tenant_url(&config, None), "http://127.0.0.1:9000/render");
        assert_eq!(
            tenant_url(&config, Some(gw)),
            "http://172.18.0.1:9000/render"
        );
        assert_eq!(
            gateway_listen(&config, Some(gw)),
            Some("172.18.0.1:9000".parse().unwrap())
        );
        assert_eq!(gateway_listen(&config, None), None);
        config.renderer.listen = "0.0.0.0:9000".parse().unwrap();
        assert_eq!(
            gateway_listen(&config, Some(gw)),
            None,
            "0.0.0.0 already listens on the gateway"
        );
        assert_eq!(
            tenant_url(&config, Some(gw)),
            "http://172.18.0.1:9000/render"
        );
        config.renderer.listen = "172.29.0.2:9000".parse().unwrap();
        assert_eq!(gateway_listen(&config, Some(gw)), None);
        assert_eq!(
            tenant_url(&config, Some(gw)),
            "http://172.29.0.2:9000/render",
            "pug in a container on the network: its own address"
        );
        config.renderer.tenant_url = "http://tasks.pug_pug:8081/render".into();
        assert_eq!(
            tenant_url(&config, Some(gw)),
            "http://tasks.pug_pug:8081/render",
            "several pugs: the one name the operator gives"
        );
        config.renderer.tenant_url = String::new();

        config.backend = Backend::Docker;
        let s = settings(&config, PathBuf::from("/usr/bin/chromium"));
        assert!(
            s.allowed_hosts.is_empty(),
            "containers are scoped by their tokens"
        );
    }

    #[test]
    fn the_address_is_the_urls_host_and_port() {
        assert_eq!(address("http://127.0.0.1:8081/render"), "127.0.0.1:8081");
        let mut config = Config::default();
        config.renderer.listen = "0.0.0.0:9000".parse().unwrap();
        assert_eq!(address(&config.renderer_url()), "127.0.0.1:9000");
    }

    #[test]
    fn errors_say_what_to_fix() {
        assert_eq!(
            EmbedError::NoBrowser.to_string(),
            format!(
                "no browser found (looked for {})",
                BROWSER_CANDIDATES.join(", ")
            )
        );
        let e = EmbedError::Bind {
            addr: "127.0.0.1:8081".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert!(chain(&e).starts_with(
            "cannot listen on 127.0.0.1:8081 (renderer.listen); give the renderer another port: "
        ));
    }
}

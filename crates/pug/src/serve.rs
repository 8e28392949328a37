//! `pug serve`: wires the store, the orchestrator, the controller and the API together and
//! runs them until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use pug_config::{Backend, Config};
use pug_controller::{Controller, ControllerMetrics, ControllerSettings, TenantDatabases};
use pug_orchestrator::install::Installer;
use pug_orchestrator::isolation::{self, Isolation, IsolationSettings, Started, TenantUser};
use pug_orchestrator::process::{ProcessBackend, ProcessSettings};
use pug_orchestrator::Orchestrator;
use pug_store::{write_private, Role, Store, LOCAL_TOKEN_NAME};
use pug_types::ExposeSecret;
use tokio_util::sync::CancellationToken;

/// Flags of `pug serve`; each overrides the configuration file and `PUG_*` variables.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// A TOML configuration file (default: ./pug.toml if it exists).
    #[arg(long, env = "PUG_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the API, gateway and /metrics (default 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<String>,
    /// Where pug keeps its state (default ./pug-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// process, docker or swarm (default process).
    #[arg(long)]
    backend: Option<String>,
}

impl ServeArgs {
    fn flags(&self) -> BTreeMap<String, serde_json::Value> {
        let mut flags = BTreeMap::new();
        if let Some(v) = &self.listen {
            flags.insert("listen".into(), v.clone().into());
        }
        if let Some(v) = &self.data_dir {
            flags.insert("data_dir".into(), v.display().to_string().into());
        }
        if let Some(v) = &self.backend {
            flags.insert("backend".into(), v.clone().into());
        }
        flags
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), args.flags())?;
    init_tracing();
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", config.data_dir.display()))?;
    let config = Config {
        data_dir: data_dir.clone(),
        ..config
    };

    let store = Store::open_data_dir(&data_dir, &config.store_url())
        .await
        .context("cannot open pug's store")?;
    let first_admin_token = if store.has_tokens().await? {
        None
    } else {
        Some(store.create_token("admin", Role::Admin).await?)
    };

    let process_backend: Option<Arc<ProcessBackend>>;
    let mut isolation_line = None;
    let mut swarm_engine = None;
    let orchestrator: Arc<dyn Orchestrator> = match config.backend {
        Backend::Process => {
            let grafana_bin = (!config.process.grafana_bin.is_empty())
                .then(|| PathBuf::from(&config.process.grafana_bin));
            if let Some(bin) = &grafana_bin {
                if !bin.is_file() {
                    bail!(
                        "process.grafana_bin {} is not a file; point it at a grafana executable or leave it empty to download releases",
                        bin.display()
                    );
                }
            }
            let installer = Installer::with_policy(
                grafana_bin,
                data_dir.join("grafana"),
                &config.process.download_base_url,
                pug_orchestrator::install::DownloadPolicy {
                    allow_insecure: config.process.allow_insecure_download,
                    max_bytes: config.process.max_download_mb.saturating_mul(1 << 20),
                    checksum_base_url: (!config.process.checksum_base_url.is_empty())
                        .then(|| config.process.checksum_base_url.clone()),
                },
            );
            let isolation = match Isolation::start(IsolationSettings {
                mode: match config.process.isolation {
                    pug_config::IsolationMode::Auto => isolation::Mode::Auto,
                    pug_config::IsolationMode::Required => isolation::Mode::Required,
                    pug_config::IsolationMode::Off => isolation::Mode::Off,
                },
                data_dir: data_dir.clone(),
                ports: (config.process.port_min, config.process.port_max),
                users: Arc::new(StoreUsers {
                    store: store.clone(),
                    base: config.process.tenant_uid_base,
                    count: config.process.tenant_uid_count,
                }),
                firewall: Arc::new(isolation::Iptables),
                uids: (
                    config.process.tenant_uid_base,
                    config.process.tenant_uid_count,
                ),
                uid_claims: pug_orchestrator::uid_claim::DEFAULT_DIR.into(),
            })? {
                Started::Isolated(iso) => {
                    isolation_line = Some(format!(
                        "on   (a user of its own per tenant; instance ports reachable by pug only: firewall chain {})",
                        iso.chain()
                    ));
                    Some(iso)
                }
                Started::Shared { reason } => {
                    isolation_line = Some(format!(
                        "OFF  ({reason}): tenants must trust each other; run pug as root with iptables to isolate them"
                    ));
                    tracing::warn!(
                        "tenants are NOT isolated: {reason}. Every tenant's Grafana runs as pug's \
                         user and can reach every other tenant's Grafana as any user and read pug's \
                         files (master.key, local.token, pug.db): serve mutually trusting tenants \
                         only, or run pug as root with iptables installed (process.isolation)"
                    );
                    None
                }
            };
            let backend = ProcessBackend::new(
                ProcessSettings {
                    root: data_dir.join("tenants"),
                    archive: data_dir.join("archive"),
                    bind_address: config.process.bind_address.clone(),
                    stop_timeout: Duration::from_secs(10),
                    isolation,
                },
                installer,
            )?;
            process_backend = Some(backend.clone());
            backend
        }
        Backend::Docker => {
            process_backend = None;
            pug_docker::DockerBackend::new(config.docker.clone())
                .await
                .context("cannot start the docker backend")?
        }
        Backend::Swarm => {
            process_backend = None;
            let backend = pug_docker::SwarmBackend::new(config.docker.clone())
                .await
                .context("cannot start the swarm backend")?;
            swarm_engine = Some(backend.engine().clone());
            backend
        }
    };

    let databases = if config.grafana_database.url.is_empty() {
        None
    } else {
        Some(TenantDatabases::new(
            &config.grafana_database.url,
            &config.grafana_database.ssl_mode,
        )?)
    };

    let mut registry = pug_metrics::new_registry();
    let metrics = ControllerMetrics::register(&mut registry);
    let swarm = swarm_engine.map(|e| crate::swarm_cmd::observe(e, &config, &mut registry));
    let gateway = pug_gateway::Gateway::new(
        store.clone(),
        pug_gateway::GatewaySettings::from_config(&config),
        &mut registry,
    )
    .await
    .context("cannot start the gateway")?;
    let shutdown = CancellationToken::new();
    let renderer = crate::rendering::start(&config, store.clone(), shutdown.clone()).await?;
    let mut settings = ControllerSettings::from_config(&config);
    settings.renderer_url = renderer.as_ref().map(|r| r.url.clone());
    let controller = Controller::new(
        store.clone(),
        orchestrator.clone(),
        settings,
        metrics,
        databases,
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another pug running? set listen or --listen",
                config.listen
            )
        })?;
    let local = listener.local_addr()?;
    let api_url = format!("http://{local}");

    // The CLI on this machine finds pug through these two files (both readable by pug's user only).
    let local_token = store.replace_token(LOCAL_TOKEN_NAME, Role::Admin).await?;
    write_private(&data_dir.join("local.token"), local_token.expose_secret())?;
    write_private(&data_dir.join("pug.url"), &api_url)?;

    let state = pug_api::ApiState {
        store: store.clone(),
        controller: controller.clone(),
        orchestrator: orchestrator.clone(),
        config: Arc::new(config.clone()),
        registry: Arc::new(registry),
        renderer_address: renderer.as_ref().map(|r| r.address.clone()),
    };
    // Tenant traffic and the login pages go to the gateway; /api/v1, /metrics, /healthz to the API.
    let app = gateway.service(crate::swarm_cmd::with_swarm(pug_api::router(state), swarm));

    let controller_task = tokio::spawn(pug_controller::run(controller, shutdown.clone()));

    println!("pug is running");
    println!("  API        {api_url}/api/v1   (OpenAPI: {api_url}/api/v1/openapi.json)");
    println!(
        "  tenants    {}   (e.g. {})",
        config.public_url(),
        config.tenant_url("<tenant>")
    );
    println!("  metrics    {api_url}/metrics (with an API token: Authorization: Bearer …)");
    match &renderer {
        Some(r) => println!(
            "  renderer   {}   (every tenant's Grafana renders panels here)",
            r.url
        ),
        None => println!("  renderer   off   (renderer.mode; needs Chromium)"),
    }
    println!(
        "  sign in    {}   (pug user create / pug user grant; embed tokens: pug embed-key create)",
        match config.gateway.mode {
            pug_config::GatewayMode::Path => format!("{}/login", config.public_url()),
            pug_config::GatewayMode::Host => config.tenant_url("<tenant>") + "_pug/login",
        }
    );
    println!(
        "  data       {}   (backend: {}, store: {})",
        data_dir.display(),
        orchestrator.name(),
        store.backend_name()
    );
    if let Some(line) = &isolation_line {
        println!("  isolation  {line}");
    }
    println!(
        "  CLI        pug tenant create acme --version 11.3.0   (uses {}/local.token)",
        data_dir.display()
    );
    if let Some(token) = first_admin_token {
        println!();
        println!("  admin token (shown once, stored only as a hash):");
        println!("    {}", token.expose_secret());
    }

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    pug_gateway::server::serve_with(
        listener,
        app,
        pug_gateway::server::worker_count(config.gateway.workers),
        pug_gateway::server::Limits::from_config(&config.gateway),
        shutdown.clone(),
    )
    .await
    .context("the HTTP server failed")?;
    let _ = controller_task.await;
    if let Some(r) = renderer {
        r.stop().await;
    }
    if config.process.stop_on_exit {
        if let Some(p) = &process_backend {
            p.stop_all().await;
        }
    } else {
        tracing::info!("tenant instances keep running; the next `pug serve` adopts them");
    }
    if let Some(p) = &process_backend {
        p.shutdown();
    }
    store.close().await;
    Ok(())
}

/// The process backend's tenant users, allocated and kept by the store.
#[derive(Debug)]
struct StoreUsers {
    store: Store,
    base: u32,
    count: u32,
}

#[async_trait::async_trait]
impl isolation::TenantUsers for StoreUsers {
    async fn user_of(&self, tenant: &pug_types::TenantId) -> Result<TenantUser, String> {
        let uid = self
            .store
            .allocate_tenant_uid(tenant, self.base, self.count)
            .await
            .map_err(|e| pug_orchestrator::error_chain(&e))?;
        Ok(TenantUser { uid, gid: uid })
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler works on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PUG_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

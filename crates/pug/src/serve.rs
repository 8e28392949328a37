//! `pug serve`: wires the store, the orchestrator, the controller, the renderer, the gateway
//! and the API together, prints where they are, and runs them until Ctrl-C or SIGTERM.
//!
//! Must not: hold logic of a role. Each comes from its library's constructor; what a library
//! needs from another reaches it through an adapter ([`crate::adapters`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use pug_config::{Backend, Config};
use pug_controller::{Controller, ControllerMetrics, ControllerSettings, TenantDatabases};
use pug_orchestrator::process::ProcessBackend;
use pug_orchestrator::process_setup::{self, IsolationState};
use pug_orchestrator::Orchestrator;
use pug_store::{write_private, Role, Store, LOCAL_TOKEN_NAME};
use pug_types::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::adapters::{ObservedSwarm, StoreTenants, StoreUsers};
use crate::client::{TOKEN_FILE, URL_FILE};

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
    /// A role to run: api, gateway, controller or renderer; repeatable or comma-separated
    /// (default: all of them).
    #[arg(
        long = "role",
        env = "PUG_ROLES",
        value_delimiter = ',',
        value_name = "ROLE"
    )]
    roles: Vec<String>,
}

/// The roles asked for (all when none), or which one is unknown.
fn roles(asked: &[String]) -> anyhow::Result<Vec<String>> {
    let mut roles: Vec<String> = Vec::new();
    for role in asked.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        if !pug_api::ROLES.contains(&role) {
            anyhow::bail!(
                "unknown role {role:?}; roles are {} (--role, PUG_ROLES)",
                pug_api::ROLES.join(", ")
            );
        }
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_owned());
        }
    }
    if roles.is_empty() {
        roles = pug_api::ROLES.iter().map(|r| r.to_string()).collect();
    }
    // In their canonical order, whatever order they were given in.
    roles.sort_by_key(|r| pug_api::ROLES.iter().position(|x| x == r));
    Ok(roles)
}

impl ServeArgs {
    /// The flags given, as configuration keys.
    fn flags(&self) -> BTreeMap<String, serde_json::Value> {
        let data_dir = self.data_dir.as_ref().map(|d| d.display().to_string());
        [
            ("listen", self.listen.clone()),
            ("data_dir", data_dir),
            ("backend", self.backend.clone()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value?.into())))
        .collect()
    }
}

/// The backend `config.backend` names, and what the rest of `serve` needs from it.
struct Started {
    orchestrator: Arc<dyn Orchestrator>,
    process: Option<Arc<ProcessBackend>>,
    isolation: Option<IsolationState>,
    swarm: Option<pug_docker::Engine>,
}

async fn start_backend(config: &Config, store: &Store) -> anyhow::Result<Started> {
    let none = |orchestrator| Started {
        orchestrator,
        process: None,
        isolation: None,
        swarm: None,
    };
    Ok(match config.backend {
        Backend::Process => {
            let p = &config.process;
            let users = StoreUsers {
                store: store.clone(),
                base: p.tenant_uid_base,
                count: p.tenant_uid_count,
            };
            let setup = process_setup::start(p, &config.data_dir, Arc::new(users))?;
            Started {
                process: Some(setup.backend.clone()),
                isolation: Some(setup.isolation),
                ..none(setup.backend)
            }
        }
        Backend::Docker => none(
            pug_docker::DockerBackend::new(config.docker.clone())
                .await
                .context("cannot start the docker backend")?,
        ),
        Backend::Swarm => {
            let backend = pug_docker::SwarmBackend::new(config.docker.clone())
                .await
                .context("cannot start the swarm backend")?;
            Started {
                swarm: Some(backend.engine().clone()),
                ..none(backend)
            }
        }
    })
}

/// Takes an exclusive lock on `<pug.db>.lock` beside a SQLite store, or says that another pug
/// holds it. `None` for PostgreSQL, which several pugs share.
fn lock_sqlite_store(url: &str) -> anyhow::Result<Option<nix::fcntl::Flock<std::fs::File>>> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    let path = path.split('?').next().unwrap_or_default();
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| format!("cannot open {lock_path}"))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => anyhow::bail!(
            "another pug is running on the SQLite store {path}; a SQLite store takes one pug \
             process: stop the other one, or set database_url to a PostgreSQL server that \
             several pugs share"
        ),
        Err((_, e)) => Err(e).with_context(|| format!("cannot lock {lock_path}")),
    }
}

/// Creates the data directory and makes its path absolute.
fn data_dir(config: &Config) -> anyhow::Result<PathBuf> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref(), args.flags())?;
    let roles = roles(&args.roles)?;
    let runs = |role: &str| roles.iter().any(|r| r == role);
    init_tracing();
    let config = Config {
        data_dir: data_dir(&config)?,
        ..config
    };
    let data_dir = config.data_dir.clone();

    // SQLite takes one pug: held for this process's life, released by the kernel at its end.
    let _sqlite_lock = lock_sqlite_store(&config.store_url())?;
    let store = Store::open_data_dir(&data_dir, &config.store_url())
        .await
        .context("cannot open pug's store")?;
    if runs("controller") {
        let whitelist_set = !config.docker.proxy_whitelist.is_empty();
        crate::sharing::check(&store, config.backend, whitelist_set).await?;
    }
    let first_admin_token = if store.has_tokens().await? {
        None
    } else {
        Some(store.create_token("admin", Role::Admin).await?)
    };

    let backend = start_backend(&config, &store).await?;
    let databases = (!config.grafana_database.url.is_empty())
        .then(|| {
            let db = &config.grafana_database;
            TenantDatabases::new(&db.url, &db.ssl_mode)
        })
        .transpose()?;
    let mut registry = pug_metrics::new_registry();
    let metrics = ControllerMetrics::register(&mut registry);
    // The swarm observed for `/metrics` (every 15 s) and for `GET /api/v1/swarm`.
    let swarm = backend.swarm.map(|engine| {
        let observer =
            pug_docker::SwarmObserver::new(engine, &config.docker.namespace, &mut registry);
        observer.spawn(Duration::from_secs(15));
        observer
    });
    let gateway = pug_gateway::Gateway::new(
        store.clone(),
        pug_gateway::GatewaySettings::from_config(&config),
        &mut registry,
    )
    .await
    .context("cannot start the gateway")?;
    let shutdown = CancellationToken::new();
    let renderer = if runs("renderer") {
        let tenants = StoreTenants {
            store: store.clone(),
            orchestrator: backend.orchestrator.clone(),
        };
        let for_instances = backend.orchestrator.host_address_for_instances();
        pug_renderer::embedded::start(&config, tenants, for_instances, shutdown.clone()).await?
    } else {
        None
    };
    let mut settings = ControllerSettings::from_config(&config);
    settings.renderer_url = renderer.as_ref().map(|r| r.url.clone());
    settings.roles = roles.join(",");
    let orchestrator = backend.orchestrator.clone();
    let controller = Controller::new(
        store.clone(),
        orchestrator.clone(),
        settings,
        metrics,
        databases,
    );
    // A wake: the gateway nudges the controller, and hears from it the moment the tenant is
    // ready (its route refresh from the store stays the fallback).
    controller.set_status_listener(Arc::new(crate::adapters::GatewayRoutes(gateway.clone())));
    gateway.set_wake_signal(Arc::new(crate::adapters::ControllerWake(
        controller.clone(),
    )));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; is another pug running? set listen or --listen",
                config.listen
            )
        })?;
    let api_url = format!("http://{}", listener.local_addr()?);

    // The CLI on this machine finds pug through these two files (both readable by pug's user only).
    let local_token = store.replace_token(LOCAL_TOKEN_NAME, Role::Admin).await?;
    write_private(&data_dir.join(TOKEN_FILE), local_token.expose_secret())?;
    write_private(&data_dir.join(URL_FILE), &api_url)?;

    let state = pug_api::ApiState {
        store: store.clone(),
        controller: controller.clone(),
        orchestrator: orchestrator.clone(),
        config: Arc::new(config.clone()),
        registry: Arc::new(registry),
        renderer_address: renderer.as_ref().map(|r| r.address.clone()),
        roles: roles.clone(),
    };
    // Without the API role only /healthz, /healthz/{role} and /readyz answer.
    let mut api = if runs("api") {
        pug_api::router(state)
    } else {
        pug_api::health_router(state)
    };
    if let Some(observer) = swarm {
        let source: Arc<dyn pug_api::swarm::SwarmSource> = Arc::new(ObservedSwarm(observer));
        api = api.layer(axum::Extension(source));
    }

    let controller_task =
        runs("controller").then(|| tokio::spawn(pug_controller::run(controller, shutdown.clone())));

    print_banner(&Banner {
        config: &config,
        api_url: &api_url,
        renderer_url: renderer.as_ref().map(|r| r.url.as_str()),
        backend: orchestrator.name(),
        store: store.backend_name(),
        isolation: backend.isolation.as_ref(),
        first_admin_token: first_admin_token.as_ref(),
        roles: &roles,
    });

    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    let workers = pug_gateway::server::worker_count(config.gateway.workers);
    let limits = pug_gateway::server::Limits::from_config(&config.gateway);
    let served = if runs("gateway") {
        // Tenant traffic and the login pages go to the gateway; the rest to the API.
        let app = gateway.service(api);
        pug_gateway::server::serve_with(listener, app, workers, limits, shutdown.clone()).await
    } else {
        pug_gateway::server::serve_with(listener, api, workers, limits, shutdown.clone()).await
    };
    served.context("the HTTP server failed")?;
    if let Some(task) = controller_task {
        let _ = task.await;
    }
    if let Some(r) = renderer {
        r.stop().await;
    }
    if config.process.stop_on_exit {
        if let Some(p) = &backend.process {
            p.stop_all().await;
        }
    } else {
        tracing::info!("tenant instances keep running; the next `pug serve` adopts them");
    }
    if let Some(p) = &backend.process {
        p.shutdown();
    }
    store.close().await;
    Ok(())
}

/// What the start banner shows.
struct Banner<'a> {
    config: &'a Config,
    api_url: &'a str,
    renderer_url: Option<&'a str>,
    backend: &'a str,
    store: &'a str,
    isolation: Option<&'a IsolationState>,
    first_admin_token: Option<&'a SecretString>,
    roles: &'a [String],
}

fn print_banner(b: &Banner) {
    let (config, api_url) = (b.config, b.api_url);
    let data_dir: &Path = &config.data_dir;
    println!("pug is running");
    println!("  roles      {}", b.roles.join(", "));
    println!("  API        {api_url}/api/v1   (OpenAPI: {api_url}/api/v1/openapi.json)");
    println!(
        "  tenants    {}   (e.g. {})",
        config.public_url(),
        config.tenant_url("<tenant>")
    );
    println!("  metrics    {api_url}/metrics (with an API token: Authorization: Bearer …)");
    match b.renderer_url {
        Some(url) => println!("  renderer   {url}   (every tenant's Grafana renders panels here)"),
        None => println!("  renderer   off   (renderer.mode; needs Chromium)"),
    }
    println!(
        // Both modes sign in on pug's own origin (host mode: never on a tenant's).
        "  sign in    {}/login   (pug user create / pug user grant; embed tokens: pug embed-key create)",
        config.public_url()
    );
    println!(
        "  data       {}   (backend: {}, store: {})",
        data_dir.display(),
        b.backend,
        b.store
    );
    match b.isolation {
        Some(IsolationState::Isolated { chain }) => println!(
            "  isolation  on   (a user of its own per tenant; instance ports reachable by pug only: firewall chain {chain})"
        ),
        Some(IsolationState::Shared { reason }) => println!(
            "  isolation  OFF  ({reason}): tenants must trust each other; run pug as root with iptables to isolate them"
        ),
        None => {}
    }
    println!(
        "  CLI        pug tenant create acme --version 11.3.0   (uses {}/{TOKEN_FILE})",
        data_dir.display()
    );
    if let Some(token) = b.first_admin_token {
        println!();
        println!("  admin token (shown once, stored only as a hash):");
        println!("    {}", token.expose_secret());
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

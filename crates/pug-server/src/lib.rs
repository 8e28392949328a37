//! `pug-server`: `pug serve` as a library. [`Server::start`] wires the store, the backend the
//! configuration names, the controller, the embedded renderer, the gateway and the API into one
//! process; [`Server::run`] serves them until a stop signal, then stops them in order.
//!
//! Owns: the order things start and stop in, the files the local CLI finds pug by
//! (`pug_client::URL_FILE`, `pug_client::TOKEN_FILE`), the SQLite store's lock, the start-up
//! banner ([`Banner`]), the roles a process runs ([`Roles`]), the one tenant-status snapshot
//! the gateway and the renderer read ([`fleet::Fleet`]), and every background loop under one
//! shutdown signal ([`background::Background`]).
//!
//! Must not: hold logic of a role (each comes from its library's constructor; what one library
//! needs from another reaches it through [`adapters`]), parse flags, or print (the binary
//! prints the [`Banner`]).
//!
//! # Layout
//! - `backend`: the orchestrator `backend` names, and what else it brings (process, swarm).
//! - `adapters`: the seams of one library that another fills.
//! - `sharing`: whether this pug's controller may share its store with other pugs.
//! - `background`: the loops `serve` starts, under one `CancellationToken`.
//! - `fleet`: the one tenant-status snapshot the gateway and the renderer read.
//! - `banner`: what `pug serve` prints once it listens.

#![forbid(unsafe_code)]

pub mod adapters;
mod backend;
pub mod background;
mod banner;
pub mod fleet;
pub mod sharing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pug_config::Config;
use pug_controller::{Controller, ControllerMetrics, ControllerSettings, TenantDatabases};
use pug_gateway::server::serve_with;
use pug_store::{write_private, Store, StoreError};
use pug_types::ExposeSecret;

use crate::adapters::{
    ControllerWake, ObservedSwarm, PublishedTenants, RenderUse, StatusWritten, StoreTenants,
};
use crate::background::Background;
pub use crate::banner::Banner;
use crate::fleet::Fleet;

/// How often the swarm is observed for `/metrics` and `GET /api/v1/swarm`.
const SWARM_OBSERVE_EVERY: Duration = Duration::from_secs(15);
/// How long [`Server::run`] waits for background loops after the shutdown signal.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Why `pug serve` could not start or stopped with an error; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("unknown role {role:?}; roles are {} (--role, PUG_ROLES)", pug_api::ROLES.join(", "))]
    UnknownRole { role: String },
    #[error("cannot create the data directory {}", path.display())]
    CreateDataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot resolve {}", path.display())]
    ResolveDataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path}")]
    OpenLock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {path}")]
    Lock {
        path: String,
        #[source]
        source: nix::errno::Errno,
    },
    #[error(
        "another pug is running on the SQLite store {path}; a SQLite store takes one pug \
         process: stop the other one, or set database_url to a PostgreSQL server that \
         several pugs share"
    )]
    SqliteTaken { path: String },
    #[error("cannot open pug's store")]
    OpenStore(#[source] StoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This pug's controller must not share the store with the other pugs on it.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    ProcessBackend(#[from] pug_orchestrator::process_setup::SetupError),
    #[error("cannot start the docker backend")]
    DockerBackend(#[source] pug_docker::DockerError),
    #[error("cannot start the swarm backend")]
    SwarmBackend(#[source] pug_docker::DockerError),
    #[error(transparent)]
    TenantDatabases(#[from] pug_controller::tenant_db::TenantDbError),
    #[error("cannot start the gateway")]
    Gateway(#[source] pug_gateway::GatewayError),
    #[error(transparent)]
    Renderer(#[from] pug_renderer::embedded::EmbedError),
    #[error("cannot listen on {addr}; is another pug running? set listen or --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// The roles one process runs, in their canonical order (`pug_api::ROLES`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roles(Vec<String>);

impl Roles {
    /// The roles asked for (all when none; blanks and repeats ignored), or which is unknown.
    pub fn parse(asked: &[String]) -> Result<Self, ServeError> {
        let mut roles: Vec<String> = Vec::new();
        for role in asked.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            if !pug_api::ROLES.contains(&role) {
                return Err(ServeError::UnknownRole { role: role.into() });
            }
            if !roles.iter().any(|r| r == role) {
                roles.push(role.to_owned());
            }
        }
        if roles.is_empty() {
            roles = pug_api::ROLES.iter().map(|r| r.to_string()).collect();
        }
        roles.sort_by_key(|r| pug_api::ROLES.iter().position(|x| x == r));
        Ok(Self(roles))
    }

    /// Whether `role` is one of them.
    pub fn runs(&self, role: &str) -> bool {
        self.0.iter().any(|r| r == role)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A started `pug serve`: listening, its loops running, not yet serving requests.
pub struct Server {
    config: Config,
    store: Store,
    backend: backend::Started,
    renderer: Option<pug_renderer::embedded::Embedded>,
    listener: tokio::net::TcpListener,
    app: App,
    background: Background,
    banner: Banner,
    /// Held for the process's life, released by the kernel at its end.
    _sqlite_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

/// What the HTTP server serves: the gateway in front of the API, or the API alone.
enum App {
    Gateway(pug_gateway::GatewayService),
    Api(axum::Router),
}

impl Server {
    /// Opens the store, starts the backend and every role in `roles`, binds `config.listen`
    /// and writes the files the local CLI finds pug by.
    pub async fn start(config: Config, roles: Roles) -> Result<Self, ServeError> {
        let config = Config {
            data_dir: data_dir(&config)?,
            ..config
        };
        let data_dir = config.data_dir.clone();
        // SQLite takes one pug.
        let sqlite_lock = lock_sqlite_store(&config.store_url())?;
        // Bound first, so that `listen = "…:0"` (a port the kernel picks: tests, a second pug
        // on a laptop) is the real port everywhere below: the public URL, tenants' `root_url`,
        // `pug.url`.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        let local = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        let config = Config {
            listen: bound_listen(config.listen, local),
            ..config
        };
        let store = Store::open_data_dir(&data_dir, &config.store_url())
            .await
            .map_err(ServeError::OpenStore)?;
        if roles.runs("controller") {
            sharing::check(&store, config.backend).await?;
        }
        // Of several pugs starting at once on a fresh store, one makes it (and prints it).
        let first_admin_token = store.create_first_admin_token().await?;

        let backend = backend::start(&config, &store).await?;
        let databases = (!config.grafana_database.url.is_empty())
            .then(|| {
                let db = &config.grafana_database;
                TenantDatabases::new(&db.url, &db.ssl_mode)
            })
            .transpose()?;
        let mut background = Background::new();
        let mut registry = pug_metrics::new_registry();
        let metrics = ControllerMetrics::register(&mut registry);
        let swarm = backend.swarm.clone().map(|engine| {
            let observer =
                pug_docker::SwarmObserver::new(engine, &config.docker.namespace, &mut registry);
            background.spawn_until_shutdown(observer.clone().observe_every(SWARM_OBSERVE_EVERY));
            observer
        });
        // One poller of the tenants' statuses for the gateway's routes and the renderer.
        let gateway_settings = pug_gateway::GatewaySettings::from_config(&config);
        let every = gateway_settings.refresh_interval;
        let fleet = Fleet::read(&store).await?;
        background.spawn(fleet.clone().poll(store.clone(), every, background.token()));
        let gateway = pug_gateway::Gateway::open(store.clone(), gateway_settings, &mut registry)
            .await
            .map_err(ServeError::Gateway)?;
        background.spawn(gateway.background_on(fleet.subscribe(), background.token()));
        // On swarm with `renderer.swarm.replicas` ≥ 1 the renderer is a service of its own
        // (the backend keeps it): pug runs no Chromium, and serves the service its token
        // table instead, built by the same loop as the embedded renderer's.
        let renderer_service =
            config.backend == pug_config::Backend::Swarm && config.renderer.swarm.replicas > 0;
        let tenants = StoreTenants {
            store: store.clone(),
            fleet: fleet.clone(),
            orchestrator: backend.orchestrator.clone(),
        };
        let mut published = None;
        let renderer = if renderer_service {
            if roles.runs("api") {
                let table = Arc::new(pug_renderer::tenant_tokens::PublishedTable::new());
                let mut tokens = pug_renderer::TenantTokens::new(tenants);
                if let Err(e) = tokens.refresh(&*table).await {
                    tracing::warn!(error = %pug_types::error_chain(&e), "cannot build the renderer service's token table yet");
                }
                let refresh = tokens.spawn(
                    Arc::downgrade(&table),
                    pug_renderer::tenant_tokens::REFRESH,
                    background.token(),
                );
                background.spawn(async move {
                    let _ = refresh.await;
                });
                published = Some(table);
            }
            None
        } else if roles.runs("renderer") {
            let for_instances = backend.orchestrator.host_address_for_instances();
            // A tenant's renders (alert screenshots, scheduled reports) are its activity.
            let activity = Arc::new(RenderUse(gateway.clone()));
            pug_renderer::embedded::start(
                &config,
                tenants,
                activity,
                for_instances,
                background.token(),
            )
            .await?
        } else {
            None
        };
        let renderer_url = if renderer_service {
            Some(pug_docker::renderer_tenant_url(&config.docker.namespace))
        } else {
            renderer.as_ref().map(|r| r.url.clone())
        };
        let mut settings = ControllerSettings::from_config(&config);
        settings.renderer_url = renderer_url.clone();
        settings.roles = roles.as_slice().join(",");
        let owner = settings.owner.clone();
        let presence = pug_store::Replica {
            owner: owner.clone(),
            host: pug_controller::lease::hostname(),
            backend: config.backend.as_str().to_owned(),
            roles: settings.roles.clone(),
        };
        let lease = settings.lease;
        let orchestrator = backend.orchestrator.clone();
        let controller = Controller::new(
            store.clone(),
            orchestrator.clone(),
            settings,
            metrics,
            databases,
        );
        // A wake: the gateway nudges the controller, and hears from it the moment the tenant
        // is ready (its route refresh from the store stays the fallback).
        controller.set_status_listener(Arc::new(StatusWritten {
            gateway: gateway.clone(),
            fleet,
        }));
        gateway.set_wake_signal(Arc::new(ControllerWake(controller.clone())));

        let api_url = format!("http://{local}");

        // The CLI on this machine finds pug through these two files (both readable by pug's
        // user only).
        // One token per pug: several on one store each keep their own (a replica's start no
        // longer logs another's CLI out), and those of pugs gone are removed.
        let alive: Vec<String> = store
            .live_replicas(&owner)
            .await?
            .into_iter()
            .map(|r| r.owner)
            .collect();
        let local_token = store
            .replace_local_token(&owner, &alive, pug_store::now_ms())
            .await?;
        write_file(
            data_dir.join(pug_client::TOKEN_FILE),
            local_token.expose_secret(),
        )?;
        write_file(data_dir.join(pug_client::URL_FILE), &api_url)?;

        let state = pug_api::ApiState {
            store: store.clone(),
            controller: controller.clone(),
            orchestrator: orchestrator.clone(),
            config: Arc::new(config.clone()),
            registry: Arc::new(registry),
            renderer_address: renderer.as_ref().map(|r| r.address.clone()),
            roles: roles.as_slice().to_vec(),
            swarm: swarm
                .map(|o| Arc::new(ObservedSwarm(o)) as Arc<dyn pug_api::swarm::SwarmSource>),
            renderer_tenants: published.map(|table| {
                Arc::new(PublishedTenants {
                    table,
                    activity: RenderUse(gateway.clone()),
                }) as Arc<dyn pug_api::renderer::RendererTableSource>
            }),
        };
        // Without the API role only /healthz, /healthz/{role} and /readyz answer.
        let api = if roles.runs("api") {
            pug_api::router(state)
        } else {
            pug_api::health_router(state)
        };
        if roles.runs("controller") {
            background.spawn(pug_controller::run(controller, background.token()));
        } else {
            background.spawn(sharing::presence_loop(
                store.clone(),
                presence,
                lease,
                background.token(),
            ));
        }
        let app = if roles.runs("gateway") {
            // Tenant traffic and the login pages go to the gateway; the rest to the API.
            App::Gateway(gateway.service(api))
        } else {
            App::Api(api)
        };
        let banner = Banner {
            api_url,
            public_url: config.public_url(),
            tenant_url: config.tenant_url("<tenant>"),
            renderer_url,
            data_dir: data_dir.clone(),
            backend: orchestrator.name().to_owned(),
            store: store.backend_name().to_owned(),
            isolation: backend.isolation.clone(),
            first_admin_token,
            roles: roles.as_slice().to_vec(),
        };
        Ok(Self {
            config,
            store,
            backend,
            renderer,
            listener,
            app,
            background,
            banner,
            _sqlite_lock: sqlite_lock,
        })
    }

    /// What to print once it listens.
    pub fn banner(&self) -> &Banner {
        &self.banner
    }

    /// Serves until `stop` completes, then stops every background loop, the renderer and (with
    /// `process.stop_on_exit`) the tenants' processes, and closes the store. Returns how many
    /// background loops had to be aborted because they did not end within 30 s (0: all ended).
    pub async fn run(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<usize, ServeError> {
        let Self {
            config,
            store,
            backend,
            renderer,
            listener,
            app,
            mut background,
            banner: _,
            _sqlite_lock: lock,
        } = self;
        let shutdown = background.token();
        let signal = shutdown.clone();
        background.spawn(async move {
            tokio::select! {
                _ = stop => {
                    tracing::info!("shutting down");
                    signal.cancel();
                }
                _ = signal.cancelled() => {}
            }
        });
        let workers = pug_gateway::server::worker_count(config.gateway.workers);
        let limits = pug_gateway::server::Limits::from_config(&config.gateway);
        let served = match app {
            App::Gateway(s) => serve_with(listener, s, workers, limits, shutdown.clone()).await,
            App::Api(r) => serve_with(listener, r, workers, limits, shutdown.clone()).await,
        };
        // Whatever ended the server, the loops end too.
        let stragglers = background.stop(STOP_GRACE).await;
        if stragglers > 0 {
            tracing::warn!(
                stragglers,
                "background loops did not end on shutdown; aborted"
            );
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
        drop(lock);
        served.map_err(ServeError::Http)?;
        Ok(stragglers)
    }
}

/// Writes `contents` to `path`, readable by pug's user only.
fn write_file(path: PathBuf, contents: &str) -> Result<(), ServeError> {
    write_private(&path, contents).map_err(|source| ServeError::Write { path, source })
}

/// Takes an exclusive lock on `<pug.db>.lock` beside a SQLite store, or says that another pug
/// holds it. `None` for PostgreSQL, which several pugs share.
fn lock_sqlite_store(url: &str) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ServeError> {
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
        .map_err(|source| ServeError::OpenLock {
            path: lock_path.clone(),
            source,
        })?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(ServeError::SqliteTaken {
            path: path.to_owned(),
        }),
        Err((_, source)) => Err(ServeError::Lock {
            path: lock_path,
            source,
        }),
    }
}

/// Creates the data directory and makes its path absolute.
/// The address to name pug by: the configured one, with the port the kernel picked when it
/// was 0 (the configured host kept: `0.0.0.0:0` stays unspecified, as configured).
fn bound_listen(
    configured: std::net::SocketAddr,
    bound: std::net::SocketAddr,
) -> std::net::SocketAddr {
    if configured.port() == 0 {
        std::net::SocketAddr::new(configured.ip(), bound.port())
    } else {
        configured
    }
}

fn data_dir(config: &Config) -> Result<PathBuf, ServeError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| ServeError::CreateDataDir {
        path: dir.clone(),
        source,
    })?;
    dir.canonicalize()
        .map_err(|source| ServeError::ResolveDataDir {
            path: dir.clone(),
            source,
        })
}

/// Ctrl-C or SIGTERM, whichever comes first.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler works on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs to stderr at `PUG_LOG` (default: info, with sqlx and hyper at warn).
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PUG_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests;

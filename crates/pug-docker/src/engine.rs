//! The connection to a Docker engine, shared by both backends.
//!
//! Owns: connecting with API version negotiation (bollard speaks a newer API than many
//! daemons; negotiation makes it speak the daemon's), turning engine errors into
//! [`DockerError`]s that say what to do, and the limit on concurrent mutating operations
//! (create, start, stop, remove, update). A mass restart after a "total failure" must not flood
//! the engine: the seed's Hosted Graphite lost Grafana for 4% of its users for two days to a
//! swarm overloaded with container requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use pug_orchestrator::OrchestratorError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What can go wrong talking to the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "no Docker engine is reachable at {address}; start Docker, or set docker.host \
         (PUG_DOCKER_HOST) or DOCKER_HOST to the engine's address"
    )]
    Unreachable {
        address: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error(
        "the Docker engine at {address} is not a swarm manager (swarm state {state:?}); run \
         `docker swarm init` there, or point docker.host at a manager, or use backend = \"docker\""
    )]
    NotAManager { address: String, state: String },
    /// Something on the engine is not as pug needs it; the message says what to change.
    #[error("{0}")]
    Mismatch(String),
    #[error("{context}")]
    Api {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
}

impl From<DockerError> for OrchestratorError {
    fn from(e: DockerError) -> Self {
        OrchestratorError::Engine(pug_orchestrator::error_chain(&e))
    }
}

/// A connected engine with its operation limit.
#[derive(Clone, Debug)]
pub struct Engine {
    pub docker: Docker,
    /// Where it is, for messages.
    pub address: String,
    ops: Arc<Semaphore>,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Engine {
    /// Connects to `host` (empty: `DOCKER_HOST` or the local socket), negotiates the API
    /// version and checks that the engine answers.
    pub async fn connect(host: &str, max_concurrent_ops: usize) -> Result<Self, DockerError> {
        let address = if host.is_empty() {
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        } else {
            host.to_owned()
        };
        let unreachable = |source| DockerError::Unreachable {
            address: address.clone(),
            source,
        };
        let docker = if let Some(path) = address.strip_prefix("unix://") {
            Docker::connect_with_socket(path, 120, bollard::API_DEFAULT_VERSION)
        } else if address.starts_with("tcp://") || address.starts_with("http://") {
            Docker::connect_with_http(&address, 120, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_local_defaults()
        }
        .map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| unreachable(bollard::errors::Error::RequestTimeoutError))?
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        Ok(Self {
            docker,
            address,
            ops: Arc::new(Semaphore::new(max_concurrent_ops.max(1))),
            in_flight: Arc::default(),
            peak: Arc::default(),
        })
    }

    /// Waits for a free slot among the configured concurrent operations.
    pub async fn op(&self) -> OpGuard {
        let permit = self
            .ops
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        OpGuard {
            _permit: permit,
            in_flight: self.in_flight.clone(),
        }
    }

    /// The most mutating operations that were ever in flight at once.
    pub fn peak_concurrent_ops(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Mutating operations in flight now.
    pub fn concurrent_ops(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// One operation in flight; dropping it frees the slot.
pub struct OpGuard {
    _permit: OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Wraps an engine error with what pug was doing.
pub(crate) fn api(
    context: impl Into<String>,
) -> impl FnOnce(bollard::errors::Error) -> DockerError {
    let context = context.into();
    move |source| DockerError::Api { context, source }
}

/// Whether an engine error is "no such object" (404).
pub(crate) fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Whether an engine error is "already exists" / "in use" (409).
pub(crate) fn is_conflict(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

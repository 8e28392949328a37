//! The orchestrator `config.backend` names, and what else the server needs from it: the
//! process backend itself (to stop its processes at exit) and its isolation (for the banner),
//! or the swarm's engine (to observe the swarm) with the renderer service it keeps
//! (`[renderer.swarm]`, its credential from the store).
//!
//! Must not: decide anything a backend decides; each arm is one library constructor.

use std::sync::Arc;

use pug_config::{Backend, Config};
use pug_orchestrator::process::ProcessBackend;
use pug_orchestrator::process_setup::{self, IsolationState};
use pug_orchestrator::Orchestrator;
use pug_store::Store;

use crate::adapters::StoreUsers;
use crate::ServeError;

/// The backend `config.backend` names, started.
pub(crate) struct Started {
    pub orchestrator: Arc<dyn Orchestrator>,
    pub process: Option<Arc<ProcessBackend>>,
    pub isolation: Option<IsolationState>,
    pub swarm: Option<pug_docker::Engine>,
}

pub(crate) async fn start(config: &Config, store: &Store) -> Result<Started, ServeError> {
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
                .map_err(ServeError::DockerBackend)?,
        ),
        Backend::Swarm => {
            // Tasks verify the gateway's identity tokens with this key (the same for every pug
            // on this store; see `pug_auth::gateway_token`).
            let key =
                pug_auth::IdentitySigner::from_secret(&store.gateway_identity_secret().await?)
                    .public_key_pem();
            // The renderer service, when asked for, reads tenants' token digests from pug's
            // API with a credential that reads nothing else (the same on every pug).
            let renderer = if config.renderer.swarm.replicas > 0 {
                let credential = store.renderer_credential().await?;
                pug_docker::RendererService::from_config(config, credential)
            } else {
                None
            };
            let backend =
                pug_docker::SwarmBackend::with_renderer(config.docker.clone(), key, renderer)
                    .await
                    .map_err(ServeError::SwarmBackend)?;
            // At start, as at every resync: a missing service is created, a changed one rolled.
            if let Err(e) = backend.ensure_renderer().await {
                tracing::warn!(error = %pug_orchestrator::error_chain(&e), "cannot keep the renderer service; retrying at every resync");
            }
            Started {
                swarm: Some(backend.engine().clone()),
                ..none(backend)
            }
        }
    })
}

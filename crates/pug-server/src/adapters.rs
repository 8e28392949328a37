//! The seams of the library crates that the server fills: each adapter hands one library what
//! another one has.
//!
//! Owns: the process backend's tenant users (uids the store allocates), the embedded
//! renderer's tenants and tokens (from the status snapshot and the store, with the
//! orchestrator's names of instances; the same for the swarm renderer service's table, which
//! the API serves as digests: `PublishedTenants`), its renders as their tenants' activity (in the
//! gateway's batched activity table), `GET /api/v1/swarm` (from the swarm backend's observer), and the wake path
//! between the gateway and the controller of one process (the controller's written statuses
//! reach the gateway's routes and the status snapshot at once; the gateway's wakes nudge the controller's queue).
//!
//! Must not: decide anything (the libraries do); each method is one call and a conversion.

use std::collections::HashMap;
use std::sync::Arc;

use pug_orchestrator::isolation::{TenantUser, TenantUsers};
use pug_orchestrator::{Orchestrator, OrchestratorError};
use pug_renderer::{TenantEndpoints, TenantSource};
use pug_store::{secret, Store, StoreError};
use pug_types::{ExposeSecret, SecretString, TenantId};

use crate::fleet::Fleet;

/// The process backend's tenant users, allocated and kept by the store.
#[derive(Debug)]
pub struct StoreUsers {
    pub store: Store,
    /// `process.tenant_uid_base` and `process.tenant_uid_count`.
    pub base: u32,
    pub count: u32,
}

#[async_trait::async_trait]
impl TenantUsers for StoreUsers {
    async fn user_of(&self, tenant: &TenantId) -> Result<TenantUser, String> {
        let uid = self
            .store
            .allocate_tenant_uid(tenant, self.base, self.count)
            .await
            .map_err(|e| pug_orchestrator::error_chain(&e))?;
        Ok(TenantUser { uid, gid: uid })
    }
}

/// The renderer's tenants: their status' endpoints (from the process's status snapshot) and
/// their sealed `renderer_token` (from the store), and on a backend that names its instances in
/// `callback_url` (docker: the container's name), each running instance's name and address.
pub struct StoreTenants {
    pub store: Store,
    pub fleet: Fleet,
    pub orchestrator: Arc<dyn Orchestrator>,
}

/// The store or the orchestrator could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    #[error("cannot read tenants from the store")]
    Store(#[source] StoreError),
    #[error("cannot list instances")]
    Orchestrator(#[source] OrchestratorError),
}

impl TenantSource for StoreTenants {
    type Token = SecretString;
    type Error = TenantsError;

    async fn tenants(&self) -> Result<Vec<TenantEndpoints>, TenantsError> {
        let statuses = self.fleet.current();
        let mut names: HashMap<String, Vec<(String, String)>> = HashMap::new();
        if self.orchestrator.host_address_for_instances().is_some() {
            let instances = self
                .orchestrator
                .all_instances()
                .await
                .map_err(TenantsError::Orchestrator)?;
            for i in instances {
                let Some(host) = self.orchestrator.callback_host(&i.tenant, i.replica) else {
                    continue;
                };
                let Some((_, port)) = i.endpoint.rsplit_once(':') else {
                    continue;
                };
                names
                    .entry(i.tenant.to_string())
                    .or_default()
                    .push((format!("{host}:{port}"), i.endpoint.clone()));
            }
        }
        // A backend that names the whole tenant rather than each replica (swarm: the
        // service) lets that name stand for every ready endpoint of the tenant.
        if self.orchestrator.host_address_for_instances().is_some() {
            for (id, status) in statuses.iter() {
                let shared = self.orchestrator.callback_host(id, 0);
                if shared.is_none() || shared != self.orchestrator.callback_host(id, 1) {
                    continue;
                }
                let host = shared.unwrap_or_default();
                let entry = names.entry(id.to_string()).or_default();
                for endpoint in &status.endpoints {
                    let Some((_, port)) = endpoint.rsplit_once(':') else {
                        continue;
                    };
                    let pair = (format!("{host}:{port}"), endpoint.clone());
                    if !entry.contains(&pair) {
                        entry.push(pair);
                    }
                }
            }
        }
        Ok(statuses
            .iter()
            .map(|(id, status)| TenantEndpoints {
                names: names.remove(id.as_str()).unwrap_or_default(),
                tenant: id.to_string(),
                endpoints: status.endpoints.clone(),
            })
            .collect())
    }

    async fn token(&self, tenant: &str) -> Result<Option<SecretString>, TenantsError> {
        let id = TenantId::parse(tenant)
            .map_err(|e| TenantsError::Store(StoreError::Corrupt(e.message)))?;
        self.store
            .secret(&id, secret::RENDERER_TOKEN)
            .await
            .map_err(TenantsError::Store)
    }

    fn expose(token: &SecretString) -> &str {
        token.expose_secret()
    }
}

/// `GET /api/v1/renderer/tenants` from the table the token loop keeps (swarm renderer service),
/// and its `POST /api/v1/renderer/activity` into the gateway's activity table.
pub struct PublishedTenants {
    pub table: Arc<pug_renderer::tenant_tokens::PublishedTable>,
    /// The renders the service reports, as the embedded renderer's are: tenants' activity.
    pub activity: RenderUse,
}

impl pug_api::renderer::RendererTableSource for PublishedTenants {
    fn table(&self) -> Arc<pug_types::RendererTable> {
        self.table.current()
    }

    fn rendered(&self, tenant: &str) {
        pug_renderer::RenderActivity::rendered(&self.activity, tenant);
    }
}

/// `GET /api/v1/swarm` from the swarm backend's observer.
pub struct ObservedSwarm(pub Arc<pug_docker::SwarmObserver>);

impl pug_api::swarm::SwarmSource for ObservedSwarm {
    fn status(&self) -> pug_api::swarm::SwarmFuture<'_> {
        Box::pin(async move { Ok(serde_json::to_value(self.0.observe().await?)?) })
    }
}

/// The gateway's routes and the process's status snapshot, told of every status the
/// controller writes.
pub struct StatusWritten {
    pub gateway: pug_gateway::Gateway,
    pub fleet: Fleet,
}

impl pug_controller::StatusListener for StatusWritten {
    fn status_written(&self, tenant: &TenantId, status: &pug_types::TenantStatus) {
        self.gateway.status_written(tenant, status);
        self.fleet.written(tenant, status);
    }
}

/// The controller's queue loop, nudged when the gateway asks for a wake.
pub struct ControllerWake(pub pug_controller::Controller);

impl pug_gateway::WakeSignal for ControllerWake {
    fn wake_requested(&self, _tenant: &TenantId) {
        self.0.wake();
    }
}

/// The embedded renderer's renders, each marking its tenant used in the gateway's activity
/// table: written with the gateway's own next batched flush, never one store write per render.
pub struct RenderUse(pub pug_gateway::Gateway);

impl pug_renderer::RenderActivity for RenderUse {
    fn rendered(&self, tenant: &str) {
        // The renderer's tenants are the store's ids: one that does not parse is no tenant.
        if let Ok(id) = TenantId::parse(tenant) {
            self.0.mark_used(&id);
        }
    }
}

//! The swarm backend: every tenant is one replicated Docker Swarm service, `pug-<tenant>`.
//!
//! Owns: the service spec (image from `docker.image`, Grafana's `GF_*` settings, secrets as
//! Docker secrets read through `GF_<SECTION>_<KEY>__FILE`, the tenant's provisioning as Docker
//! configs (dashboards) and a secret (the datasources file, which holds credentials) mounted
//! at their paths under `/etc/grafana`, the container health check on
//! `/api/health`, resource limits, restart policy, an attachable overlay network), its update
//! and rollback configuration, and mapping the service's tasks back to the controller's
//! replicas.
//!
//! How the controller's per-replica calls map onto one service:
//! - `ensure(replica r)` makes the service run the spec with at least `r + 1` replicas. When the
//!   task template changes, Swarm itself rolls the tasks: `update_parallelism` at a time,
//!   watched for `update_monitor_secs`, `start-first` when the tenant's database is external
//!   (two Grafanas may share it) and `stop-first` when it is SQLite on a volume (one writer);
//!   a failed update is rolled back by Swarm (`FailureAction = rollback`).
//! - `instances` reports one instance per active task slot, in slot order; its endpoint is the
//!   task's address on the overlay network. Nothing is published on the nodes: pug runs in a
//!   container attached to the overlay (`overlay.rs`). Grafana trusts no address: each task
//!   verifies the gateway's signed identity token (`[auth.jwt]`, the public key mounted as a
//!   config at [`GATEWAY_KEY_FILE`]), so any number of pug replicas can serve its gateway, and
//!   another tenant's task on the same overlay cannot sign anyone in.
//! - `remove(replica r)` scales the service down to `r` replicas; suspending a tenant is
//!   replicas 0 (the service, its secrets and its volume stay). Removing replica 0 of a service
//!   already at 0 deletes it: that is how orphans go.
//! - After Swarm rolled an update back, the tasks report as exited with Swarm's message, so
//!   the controller counts the failure and, after `crash_loop_threshold` passes, rolls the
//!   tenant's spec back as well; once the controller asks for the spec that runs, the rollback
//!   is acknowledged with a label and the tasks report as running again.
//!
//! Swarm-wide throttling: template changes of existing services (upgrades) wait while other
//! pug services are updating: one at a time until a first update has completed since pug
//! started (the canary), then up to `docker.max_concurrent_ops` at once.
//!
//! All tasks of a service share one template (listening on [`CONTAINER_PORT`]), while the
//! controller gives every replica a port of its own. So the backend's `spec_hash` of a spec is
//! its template hash (the port normalised away), and every instance reports the template hash
//! its task runs, read from Swarm: a restarted pug, or another pug replica taking the tenant
//! over, sees the same hashes as the pug that applied them, and changes nothing. (Before, the
//! hashes lived in the applying pug's memory: every other pug saw a mismatch and "replaced"
//! each replica once, flapping the tenant to `upgrading` and its requests to 503.)

//!
//! # Layout
//! - `spec.rs`: the service spec built from an instance spec (pure; snapshot-tested).
//! - `objects.rs`: the secrets and configs a task mounts (one generic path for both kinds).
//! - `slots.rs`: which task is which replica, and its state (pure; table-tested).
//! - `rollout.rs`: scaling, upgrades and their throttle, rollback acknowledgement.
//! - `overlay.rs`: pug's own address on the overlay and the tasks' addresses there.
//! - `renderer.rs`: the renderer service (`renderer.swarm.replicas` ≥ 1), which pug
//!   creates, upgrades and heals at start and at every resync
//!   ([`Orchestrator::ensure_shared_services`]).
//! - this file: the backend and the [`Orchestrator`] impl, dispatching to the above.
//!
//! Must not: read the store or decide what should run (the controller does), or publish a
//! task other than through the service spec.

mod objects;
mod overlay;
mod renderer;
mod rollout;
mod slots;
mod spec;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::models::{Service, ServiceSpec, Task};
use bollard::query_parameters::{InspectServiceOptions, ListServicesOptions, ListTasksOptions};
use pug_config::DockerConfig;
use pug_orchestrator::{
    GatewayTrust, Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError,
};
use pug_types::{GrafanaVersion, TenantId};

use crate::engine::{api, is_conflict, is_not_found, DockerError, Engine};
use crate::network::ensure_network;
use crate::{
    check_image, label_filter, LABEL_CREATED_MS, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_SPEC_HASH,
    LABEL_TENANT,
};
use objects::{Config, Secret};
pub use renderer::{
    service_name as renderer_service_name, tenant_url as renderer_tenant_url, RendererService,
    Step as RendererStep,
};
use slots::Addresses;
use spec::{TaskFiles, TaskObjects};
pub use spec::{CONTAINER_PORT, GATEWAY_KEY_FILE};

/// The swarm backend.
#[derive(Debug)]
pub struct SwarmBackend {
    engine: Engine,
    config: DockerConfig,
    /// The gateway's public key (PEM), which every task verifies identity tokens with.
    gateway_key_pem: String,
    /// pug's own address on the overlay, where tasks reach pug's services (the renderer).
    own: Option<std::net::IpAddr>,
    /// Whether an update has completed since pug started: until then, one update at a time.
    canary_done: AtomicBool,
    /// The renderer service pug keeps (`None`: none, and a leftover one is removed).
    renderer: Option<RendererService>,
}

impl SwarmBackend {
    /// Connects to a swarm manager and creates the overlay network when missing.
    /// `gateway_key_pem` is the public key of the gateway's identity tokens
    /// (`pug_auth::IdentitySigner::public_key_pem`), the same for every pug on one store.
    pub async fn new(
        config: DockerConfig,
        gateway_key_pem: String,
    ) -> Result<Arc<Self>, DockerError> {
        Self::with_renderer(config, gateway_key_pem, None).await
    }

    /// [`SwarmBackend::new`], keeping the renderer service `renderer` (`None`: none; a
    /// leftover one is removed) at every [`Orchestrator::ensure_shared_services`].
    pub async fn with_renderer(
        config: DockerConfig,
        gateway_key_pem: String,
        renderer: Option<RendererService>,
    ) -> Result<Arc<Self>, DockerError> {
        let engine = Engine::connect(&config.host, config.max_concurrent_ops).await?;
        let info = engine
            .docker
            .info()
            .await
            .map_err(api("cannot read the engine's /info"))?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(DockerError::NotAManager {
                address: engine.address.clone(),
                state: swarm
                    .local_node_state
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            });
        }
        ensure_network(&engine, &config.network, "overlay").await?;
        // Tasks are reached over the overlay only, from pug's own address there (see
        // `overlay`): pug must be attached.
        let own = overlay::own_address(&engine, &config.network).await?;
        let own_ip = own.parse().ok();
        Ok(Arc::new(Self {
            engine,
            config,
            gateway_key_pem,
            own: own_ip,
            canary_done: AtomicBool::new(false),
            renderer,
        }))
    }

    /// The engine, for observation.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The service of a tenant.
    pub fn service_name(&self, tenant: &TenantId) -> String {
        spec::service_name(&self.config.namespace, tenant)
    }

    async fn service(&self, tenant: &TenantId) -> Result<Option<Service>, DockerError> {
        let name = self.service_name(tenant);
        match self
            .engine
            .docker
            .inspect_service(&name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Ok(Some(s)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api(format!("cannot inspect service {name}"))(e)),
        }
    }

    /// The service spec of `spec`, once the secrets and configs it mounts exist.
    async fn service_spec(
        &self,
        spec: &InstanceSpec,
        template_hash: &str,
        replicas: i64,
        labels: HashMap<String, String>,
    ) -> Result<ServiceSpec, DockerError> {
        let TaskFiles {
            env,
            secrets,
            configs,
        } = spec::task_files(spec);
        let namespace = &self.config.namespace;
        let task = TaskObjects {
            env,
            secrets: objects::ensure::<Secret>(&self.engine, namespace, &spec.tenant, &secrets)
                .await?,
            configs: objects::ensure::<Config>(&self.engine, namespace, &spec.tenant, &configs)
                .await?,
        };
        Ok(spec::service_spec(
            &self.config,
            spec,
            template_hash,
            replicas,
            labels,
            task,
        ))
    }

    /// Creates the tenant's service with `replicas` tasks (an existing one is left alone: a
    /// concurrent create won).
    async fn create_service(
        &self,
        spec: &InstanceSpec,
        template_hash: &str,
        replicas: i64,
    ) -> Result<(), OrchestratorError> {
        let name = self.service_name(&spec.tenant);
        let labels = spec::new_service_labels(
            &self.config.namespace,
            &spec.tenant,
            template_hash,
            crate::now_ms(),
        );
        let service_spec = self
            .service_spec(spec, template_hash, replicas, labels)
            .await?;
        let _op = self.engine.op().await;
        match self.engine.docker.create_service(service_spec, None).await {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => {}
            Err(e) if is_not_found(&e) => {
                return Err(DockerError::Api {
                    context: format!(
                        "cannot create service {name}: a network or secret is missing; \
                         check docker.network"
                    ),
                    source: e,
                }
                .into())
            }
            Err(e) => return Err(api(format!("cannot create service {name}"))(e).into()),
        }
        tracing::info!(tenant = %spec.tenant, version = %spec.version, replicas, "service created");
        Ok(())
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Task>, DockerError> {
        self.engine
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(HashMap::from([(
                    "service".to_owned(),
                    vec![service.to_owned()],
                )])),
            }))
            .await
            .map_err(api(format!("cannot list the tasks of {service}")))
    }

    /// Where pug reaches tasks: their addresses on the overlay network.
    async fn addresses(&self) -> Result<Addresses, DockerError> {
        Ok(Addresses(
            overlay::task_addresses(&self.engine, &self.config.network).await?,
        ))
    }

    async fn instances_of(
        &self,
        tenant: &TenantId,
        service: &Service,
    ) -> Result<Vec<Instance>, DockerError> {
        let tasks = self.tasks(&self.service_name(tenant)).await?;
        let addresses = self.addresses().await?;
        Ok(slots::instances(
            tenant,
            service,
            tasks,
            &addresses,
            crate::now_ms(),
        ))
    }

    async fn delete_service(&self, tenant: &TenantId) -> Result<(), DockerError> {
        let name = self.service_name(tenant);
        {
            let _op = self.engine.op().await;
            match self.engine.docker.delete_service(&name).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api(format!("cannot delete service {name}"))(e)),
            }
        }
        // The tenant's secrets and configs that no service uses any more.
        let namespace = &self.config.namespace;
        objects::remove_unused::<Secret>(&self.engine, namespace, tenant).await;
        objects::remove_unused::<Config>(&self.engine, namespace, tenant).await;
        Ok(())
    }
}

#[async_trait]
impl Orchestrator for SwarmBackend {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn check_version(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        check_image(&self.engine, &self.config.image, version, |image| {
            format!(
                "image {image} is not on the swarm manager's engine; push it to a registry \
                 every node can pull from and set docker.image accordingly"
            )
        })
        .await
    }

    async fn ensure(&self, spec: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        let template_hash = spec::template_hash(&self.config, spec);
        let want = spec.replica as i64 + 1;
        match self.service(&spec.tenant).await? {
            None => self.create_service(spec, &template_hash, want).await?,
            Some(service) => self.roll(spec, &service, &template_hash, want).await?,
        }
        let instances = self.instances(&spec.tenant).await?;
        Ok(instances
            .into_iter()
            .find(|i| i.replica == spec.replica)
            .unwrap_or_else(|| Instance {
                tenant: spec.tenant.clone(),
                replica: spec.replica,
                spec_hash: template_hash,
                // No task yet: nothing answers here, so probes see it as not ready.
                endpoint: "0.0.0.0:0".into(),
                state: InstanceState::Running,
                started_at_ms: crate::now_ms(),
            }))
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        match self.service(tenant).await? {
            Some(service) => Ok(self.instances_of(tenant, &service).await?),
            None => Ok(Vec::new()),
        }
    }

    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        let services = self
            .engine
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(label_filter(&[
                    (LABEL_MANAGED, "true"),
                    (LABEL_NAMESPACE, &self.config.namespace),
                ])),
                status: None,
            }))
            .await
            .map_err(api("cannot list services"))?;
        let grace_start = crate::now_ms() - (self.config.orphan_grace_secs as i64) * 1000;
        let mut out = Vec::new();
        for service in services {
            let labels = service
                .spec
                .as_ref()
                .and_then(|s| s.labels.clone())
                .unwrap_or_default();
            let Some(tenant) = labels
                .get(LABEL_TENANT)
                .and_then(|t| TenantId::parse(t).ok())
            else {
                continue;
            };
            let created = labels
                .get(LABEL_CREATED_MS)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            if created > grace_start {
                continue;
            }
            let instances = self.instances_of(&tenant, &service).await?;
            if instances.is_empty() {
                // Scaled to zero: report the service itself, so that an orphan goes too.
                out.push(Instance {
                    tenant,
                    replica: 0,
                    spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
                    endpoint: "0.0.0.0:0".into(),
                    state: InstanceState::Exited {
                        reason: "service scaled to zero".into(),
                    },
                    started_at_ms: created,
                });
            } else {
                out.extend(instances);
            }
        }
        out.sort_by(|a, b| (&a.tenant, a.replica).cmp(&(&b.tenant, b.replica)));
        Ok(out)
    }

    async fn remove(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        let Some(service) = self.service(tenant).await? else {
            return Ok(());
        };
        let current = service.spec.clone().unwrap_or_default();
        let replicas = spec::replicas_of(&current);
        if replicas == 0 && replica == 0 {
            self.delete_service(tenant).await?;
            tracing::info!(%tenant, "service deleted");
            return Ok(());
        }
        let target = replicas.min(replica as i64);
        if target != replicas {
            self.update(&service, spec::with_replicas(current, target))
                .await?;
            tracing::info!(%tenant, replicas = target, "service scaled down");
        }
        Ok(())
    }

    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        self.delete_service(tenant).await?;
        Ok(())
    }

    /// The template hash: every replica runs one template, whatever port it was given.
    fn spec_hash(&self, spec: &InstanceSpec) -> String {
        spec::template_hash(&self.config, spec)
    }

    fn gateway_trust(&self) -> GatewayTrust {
        GatewayTrust::Signature {
            public_key_pem: self.gateway_key_pem.clone(),
            key_file: GATEWAY_KEY_FILE.to_owned(),
        }
    }

    /// Every task of a service runs one template, so a task's callback is the service's name:
    /// Docker's DNS on the overlay answers it with the tasks' addresses (round robin), and the
    /// renderer's scope maps it to the tenant's own tasks.
    fn callback_host(&self, tenant: &TenantId, _replica: u32) -> Option<String> {
        Some(self.service_name(tenant))
    }

    /// pug's own address on the overlay: the embedded renderer listens there for the tasks.
    fn host_address_for_instances(&self) -> Option<std::net::IpAddr> {
        self.own
    }

    /// The renderer service ([`SwarmBackend::ensure_renderer`]).
    async fn ensure_shared_services(&self) -> Result<(), OrchestratorError> {
        self.ensure_renderer().await?;
        Ok(())
    }
}

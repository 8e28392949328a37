//! The docker backend: every replica is a container on one engine.
//!
//! Owns: the pug network (a bridge, created when missing), one container per replica named
//! `pug-<tenant>-<replica>`, one named volume per tenant for Grafana's data directory (SQLite
//! lives there), the labels that let pug find all of these again, the restart policy, the
//! container health check on `/api/health`, and memory/CPU limits.
//!
//! Secrets: Grafana reads them from files through `GF_<SECTION>_<KEY>__FILE`. A plain engine
//! has no secret store, so pug copies the files into the created (not yet started) container
//! with the archive API; they live in the container's own layer, never in its configuration,
//! so `docker inspect` shows only the `__FILE` paths. The tenant's provisioning (datasources
//! with their credentials, dashboard providers, dashboards) goes the same way into
//! `/etc/grafana/provisioning` and `/etc/grafana/dashboards`; a change of it changes the spec
//! hash, so the container is replaced.
//!
//! Endpoints are the container's address on the pug network: the host reaches them on Linux,
//! and so does a pug running in a container on the same network. Grafana accepts auth-proxy
//! headers only from the network's gateway (where pug on the host connects from) unless
//! `docker.proxy_whitelist` says otherwise.
//!
//! The tenant's volume is named after its `secret_key` too (`pug-<tenant>-<8 hex>`), so a
//! tenant deleted and created again never starts on the old tenant's data: the old volume stays
//! behind as its archive (`docker volume rm` it when no longer needed).
//!
//! # Layout
//! - `spec.rs`: the container pug hands the engine, the files copied into it, and reading a
//!   container back as a replica (pure; snapshot-tested).
//! - this file: the backend, the [`Orchestrator`] impl, and the watch for containers stopped
//!   by someone else.
//!
//! Must not: read the store or decide what should run (the controller does), or give a
//! container a secret other than as a file copied in.

mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, ListVolumesOptions,
    RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use pug_config::DockerConfig;
use pug_orchestrator::{GatewayTrust, Instance, InstanceSpec, Orchestrator, OrchestratorError};
use pug_types::{GrafanaVersion, TenantId};
use tokio::sync::mpsc;

use crate::engine::{api, is_conflict, is_not_found, DockerError, Engine};
use crate::network::ensure_network;
use crate::{
    check_image, image_for, label_filter, tenant_labels, LABEL_MANAGED, LABEL_NAMESPACE,
    LABEL_REPLICA, LABEL_SPEC_HASH, LABEL_TENANT,
};
pub use spec::DATA_DIR;
use spec::{files_archive, instance_of, new_container, NewContainer};
pub(crate) use spec::{health_config, volume_name};

/// The docker backend.
#[derive(Debug)]
pub struct DockerBackend {
    engine: Engine,
    config: DockerConfig,
    /// Who may send auth-proxy headers: the network's gateway, or `docker.proxy_whitelist`.
    whitelist: Vec<String>,
    /// The gateway address of pug's network: where containers reach the host (the renderer).
    gateway: Option<std::net::IpAddr>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<TenantId>>>,
    /// Containers pug itself is stopping or removing (id → since when): their events are not
    /// changes the controller needs to hear about.
    removing: Removing,
}

type Removing = Arc<Mutex<HashMap<String, std::time::Instant>>>;

impl DockerBackend {
    /// Connects to the engine, creates the pug network when missing and starts watching for
    /// containers that stop by themselves.
    pub async fn new(config: DockerConfig) -> Result<Arc<Self>, DockerError> {
        let engine = Engine::connect(&config.host, config.max_concurrent_ops).await?;
        let gateway = ensure_network(&engine, &config.network, "bridge").await?;
        let gateway_ip = gateway.as_deref().and_then(|g| g.parse().ok());
        let whitelist = if config.proxy_whitelist.is_empty() {
            gateway.into_iter().collect()
        } else {
            config.proxy_whitelist.clone()
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let removing = Removing::default();
        spawn_event_watch(
            engine.clone(),
            config.namespace.clone(),
            removing.clone(),
            tx,
        );
        Ok(Arc::new(Self {
            engine,
            config,
            whitelist,
            gateway: gateway_ip,
            changes_rx: Mutex::new(Some(rx)),
            removing,
        }))
    }

    /// The engine, for observation and benchmarks.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The container name of one replica.
    pub fn container_name(&self, tenant: &TenantId, replica: u32) -> String {
        format!("{}-{tenant}-{replica}", self.config.namespace)
    }

    /// The volume of a tenant's data (see the module docs for the suffix).
    pub fn volume_name(namespace: &str, spec: &InstanceSpec) -> String {
        volume_name(namespace, spec)
    }

    /// Containers of this namespace with `labels`.
    async fn containers(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let mut labels = labels.to_vec();
        labels.push((LABEL_MANAGED, "true"));
        labels.push((LABEL_NAMESPACE, &self.config.namespace));
        self.engine
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(label_filter(&labels)),
                ..Default::default()
            }))
            .await
            .map_err(api("cannot list pug's containers"))
    }

    async fn find(
        &self,
        tenant: &TenantId,
        replica: u32,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let replica = replica.to_string();
        self.containers(&[(LABEL_TENANT, tenant.as_str()), (LABEL_REPLICA, &replica)])
            .await
    }

    /// Stops a container as pug's own act (the watch for containers stopped by someone else
    /// ignores it). `Ok(false)`: it is gone already.
    async fn stop_container(&self, id: &str) -> Result<bool, DockerError> {
        {
            let mut removing = self.removing.lock().expect("removing");
            removing.retain(|_, since| since.elapsed() < std::time::Duration::from_secs(120));
            removing.insert(id.to_owned(), std::time::Instant::now());
        }
        let _op = self.engine.op().await;
        match self
            .engine
            .docker
            .stop_container(
                id,
                Some(StopContainerOptions {
                    t: Some(10),
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            // 304 (already stopped) and friends: the caller's next step decides.
            Err(_) => Ok(true),
        }
    }

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        if !self.stop_container(id).await? {
            return Ok(());
        }
        let _op = self.engine.op().await;
        match self
            .engine
            .docker
            .remove_container(
                id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            // Removal already in progress.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(api(format!("cannot remove container {id}"))(e)),
        }
    }

    async fn ensure_volume(&self, spec: &InstanceSpec) -> Result<String, DockerError> {
        let name = Self::volume_name(&self.config.namespace, spec);
        let _op = self.engine.op().await;
        self.engine
            .docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.clone()),
                labels: Some(tenant_labels(&self.config.namespace, spec.tenant.as_str())),
                ..Default::default()
            })
            .await
            .map_err(api(format!("cannot create volume {name}")))?;
        Ok(name)
    }

    async fn create(&self, spec: &InstanceSpec, hash: &str) -> Result<String, DockerError> {
        let name = self.container_name(&spec.tenant, spec.replica);
        let volume = self.ensure_volume(spec).await?;
        let NewContainer { body, files } =
            new_container(&self.config, spec, hash, volume, crate::now_ms());
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = {
            let _op = self.engine.op().await;
            let first = self
                .engine
                .docker
                .create_container(Some(options.clone()), body.clone())
                .await;
            match first {
                // A container with our name but without our labels (or one being removed).
                Err(e) if is_conflict(&e) => {
                    let _ = self
                        .engine
                        .docker
                        .remove_container(
                            &name,
                            Some(RemoveContainerOptions {
                                force: true,
                                ..Default::default()
                            }),
                        )
                        .await;
                    self.engine
                        .docker
                        .create_container(Some(options), body)
                        .await
                }
                other => other,
            }
        }
        .map_err(|e| match &e {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            } => DockerError::Api {
                context: format!(
                    "cannot create container {name}: image {} is not on the engine; push or \
                     load it there, or fix docker.image",
                    image_for(&self.config.image, &spec.version.to_string())
                ),
                source: e,
            },
            _ => api(format!("cannot create container {name}"))(e),
        })?;
        let archive = files_archive(&files).map_err(|source| DockerError::Api {
            context: "cannot pack the secret files".into(),
            source: bollard::errors::Error::IOError { err: source },
        })?;
        {
            let _op = self.engine.op().await;
            self.engine
                .docker
                .upload_to_container(
                    &created.id,
                    Some(UploadToContainerOptions {
                        path: "/".into(),
                        ..Default::default()
                    }),
                    bollard::body_full(archive.into()),
                )
                .await
                .map_err(api(format!("cannot copy secret files into {name}")))?;
        }
        {
            let _op = self.engine.op().await;
            self.engine
                .docker
                .start_container(&created.id, None)
                .await
                .map_err(api(format!("cannot start container {name}")))?;
        }
        Ok(created.id)
    }

    fn instance(&self, c: &ContainerSummary) -> Option<Instance> {
        instance_of(&self.config.network, c)
    }

    async fn as_instance(&self, tenant: &TenantId, replica: u32) -> Result<Instance, DockerError> {
        self.find(tenant, replica)
            .await?
            .iter()
            .find_map(|c| self.instance(c))
            .ok_or_else(|| {
                DockerError::Mismatch(format!(
                    "the container of replica {replica} of {tenant} vanished right after it \
                     started; is another program removing pug's containers?"
                ))
            })
    }
}

#[async_trait]
impl Orchestrator for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn check_version(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        check_image(&self.engine, &self.config.image, version, |image| {
            format!(
                "image {image} is not on the Docker engine; pull or load it there \
                 (`docker pull {image}`), or set docker.image to a registry that has it"
            )
        })
        .await
    }

    async fn ensure(&self, spec: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        let hash = spec.hash();
        let mut found = self.find(&spec.tenant, spec.replica).await?;
        // Oldest first; any duplicate (a crash between create and remove) goes.
        found.sort_by_key(|c| c.created.unwrap_or(0));
        let mut keep = None;
        for c in &found {
            let current = c
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_SPEC_HASH))
                .is_some_and(|h| *h == hash);
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            // Stopped after it ran (parked by a sleep, or given up on by its restart policy):
            // it has its files, so starting it again is enough. A container only created
            // (pug stopped between create and start) may lack its secret files: replaced.
            let exited = c.state == Some(ContainerSummaryStateEnum::EXITED);
            if current && running && keep.is_none() {
                keep = self.instance(c);
            } else if let (true, true, None, Some(id)) = (current, exited, &keep, &c.id) {
                let started = {
                    let _op = self.engine.op().await;
                    self.engine.docker.start_container(id, None).await
                };
                match started {
                    Ok(()) => {
                        tracing::info!(tenant = %spec.tenant, replica = spec.replica, container = %id, "stopped container started again");
                        keep = Some(self.as_instance(&spec.tenant, spec.replica).await?);
                    }
                    Err(e) => {
                        tracing::info!(tenant = %spec.tenant, replica = spec.replica, container = %id, error = %e, "a stopped container did not start again; replacing it");
                        self.remove_container(id).await?;
                    }
                }
            } else if let Some(id) = &c.id {
                tracing::info!(tenant = %spec.tenant, replica = spec.replica, container = %id, "replacing a container that is stopped or runs an outdated spec");
                self.remove_container(id).await?;
            }
        }
        if let Some(instance) = keep {
            return Ok(instance);
        }
        self.create(spec, &hash).await?;
        tracing::info!(tenant = %spec.tenant, replica = spec.replica, version = %spec.version, "container started");
        Ok(self.as_instance(&spec.tenant, spec.replica).await?)
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        let mut out: Vec<Instance> = self
            .containers(&[(LABEL_TENANT, tenant.as_str())])
            .await?
            .iter()
            .filter_map(|c| self.instance(c))
            .collect();
        out.sort_by_key(|i| i.replica);
        out.dedup_by_key(|i| i.replica);
        Ok(out)
    }

    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        let grace_start = crate::now_ms() - (self.config.orphan_grace_secs as i64) * 1000;
        let mut out: Vec<Instance> = self
            .containers(&[])
            .await?
            .iter()
            .filter_map(|c| self.instance(c))
            // Young containers are left alone: they may belong to a tenant being created by
            // another pug sharing this engine, or to a store that is being restored.
            .filter(|i| i.started_at_ms <= grace_start)
            .collect();
        out.sort_by(|a, b| (&a.tenant, a.replica).cmp(&(&b.tenant, b.replica)));
        Ok(out)
    }

    async fn remove(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        for c in self.find(tenant, replica).await? {
            if let Some(id) = &c.id {
                self.remove_container(id).await?;
            }
        }
        Ok(())
    }

    /// Stops the container and keeps it (its layer holds the copied secret files): the wake
    /// starts it again, which is quicker than creating it, unless the spec changed meanwhile.
    async fn park(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        for c in self.find(tenant, replica).await? {
            if let Some(id) = &c.id {
                self.stop_container(id).await?;
            }
        }
        Ok(())
    }

    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        let volumes = self
            .engine
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(label_filter(&[
                    (LABEL_MANAGED, "true"),
                    (LABEL_NAMESPACE, &self.config.namespace),
                    (LABEL_TENANT, tenant.as_str()),
                ])),
            }))
            .await
            .map_err(api("cannot list volumes"))?;
        for v in volumes.volumes.unwrap_or_default() {
            tracing::info!(%tenant, volume = %v.name, "tenant deleted; its data volume stays as its archive");
        }
        Ok(())
    }

    fn changes(&self) -> Option<mpsc::UnboundedReceiver<TenantId>> {
        self.changes_rx.lock().expect("changes").take()
    }

    fn gateway_trust(&self) -> GatewayTrust {
        GatewayTrust::Addresses(self.whitelist.clone())
    }

    /// The container's name: Docker's name for it on pug's network, and the renderer's (which
    /// maps it to the container's current address; see `pug_renderer::tenant_tokens`).
    fn callback_host(&self, tenant: &TenantId, replica: u32) -> Option<String> {
        Some(self.container_name(tenant, replica))
    }

    fn host_address_for_instances(&self) -> Option<std::net::IpAddr> {
        self.gateway
    }
}

/// Sends the tenant of every pug container stopped or removed by someone else (an operator, a
/// "total failure"), so the controller looks at once. Crashes are not sent: the restart policy
/// restarts the container, and the controller's polls count them as crash loops (a change
/// notification would restart its count).
fn spawn_event_watch(
    engine: Engine,
    namespace: String,
    removing: Removing,
    tx: mpsc::UnboundedSender<TenantId>,
) {
    tokio::spawn(async move {
        loop {
            let mut filters =
                label_filter(&[(LABEL_MANAGED, "true"), (LABEL_NAMESPACE, &namespace)]);
            filters.insert("type".into(), vec!["container".into()]);
            filters.insert("event".into(), vec!["stop".into(), "destroy".into()]);
            let mut events = engine.docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            while let Some(event) = events.next().await {
                let Ok(event) = event else { break };
                let ours = event
                    .actor
                    .as_ref()
                    .and_then(|a| a.id.as_ref())
                    .is_some_and(|id| removing.lock().expect("removing").contains_key(id));
                if ours {
                    continue;
                }
                let tenant = event
                    .actor
                    .and_then(|a| a.attributes)
                    .and_then(|a| a.get(LABEL_TENANT).cloned())
                    .and_then(|t| TenantId::parse(&t).ok());
                if let Some(tenant) = tenant {
                    if tx.send(tenant).is_err() {
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
}

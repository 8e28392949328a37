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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig,
    Mount, MountType, NetworkCreateRequest, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectNetworkOptions, ListContainersOptions,
    ListVolumesOptions, RemoveContainerOptions, StopContainerOptions, UploadToContainerOptions,
};
use futures::StreamExt;
use pug_config::DockerConfig;
use pug_orchestrator::{Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError};
use pug_types::{ExposeSecret, GrafanaVersion, TenantId};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::engine::{api, is_conflict, is_not_found, DockerError, Engine};
use crate::{
    environment, healthcheck, image_for, label_filter, provisioning_files, tenant_labels,
    LABEL_CREATED_MS, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_REPLICA, LABEL_SPEC_HASH, LABEL_TENANT,
    SECRETS_DIR,
};

/// Label holding the port Grafana listens on inside the container.
const LABEL_PORT: &str = "pug.port";
/// Where the tenant's volume is mounted: Grafana's data directory in its images.
pub const DATA_DIR: &str = "/var/lib/grafana";

/// The docker backend.
#[derive(Debug)]
pub struct DockerBackend {
    engine: Engine,
    config: DockerConfig,
    /// Who may send auth-proxy headers: the network's gateway, or `docker.proxy_whitelist`.
    whitelist: Vec<String>,
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
        let digest = Sha256::digest(spec.secrets.secret_key.expose_secret().as_bytes());
        format!("{namespace}-{}-{}", spec.tenant, &hex::encode(digest)[..8])
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

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
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
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // 304 (already stopped) and friends: removal below decides.
            Err(_) => {}
        }
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
        let (env, files) = environment(spec, spec.port);
        let mut labels = tenant_labels(&self.config.namespace, spec.tenant.as_str());
        labels.insert(LABEL_REPLICA.into(), spec.replica.to_string());
        labels.insert(LABEL_SPEC_HASH.into(), hash.to_owned());
        labels.insert(LABEL_PORT.into(), spec.port.to_string());
        let body = ContainerCreateBody {
            image: Some(image_for(&self.config.image, &spec.version.to_string())),
            env: Some(env),
            labels: Some(labels),
            healthcheck: Some(health_config(&self.config, spec.port, &spec.root_path())),
            host_config: Some(HostConfig {
                network_mode: Some(self.config.network.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                mounts: Some(vec![Mount {
                    target: Some(DATA_DIR.into()),
                    source: Some(volume),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                memory: (self.config.memory_mb > 0)
                    .then(|| (self.config.memory_mb * 1024 * 1024) as i64),
                nano_cpus: (self.config.cpus > 0.0).then_some((self.config.cpus * 1e9) as i64),
                ..Default::default()
            }),
            ..Default::default()
        };
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
        let mut files: Vec<(String, String)> = files
            .into_iter()
            .map(|(name, value)| (format!("{SECRETS_DIR}/{name}"), value))
            .collect();
        files.extend(
            provisioning_files(spec)
                .into_iter()
                .map(|f| (f.path, f.contents)),
        );
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
        let labels = c.labels.as_ref()?;
        let tenant = TenantId::parse(labels.get(LABEL_TENANT)?).ok()?;
        let replica = labels.get(LABEL_REPLICA)?.parse().ok()?;
        let port = labels.get(LABEL_PORT).cloned().unwrap_or_default();
        let ip = c
            .network_settings
            .as_ref()
            .and_then(|n| n.networks.as_ref())
            .and_then(|n| n.get(&self.config.network))
            .and_then(|e| e.ip_address.clone())
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| "0.0.0.0".into());
        let state = match c.state {
            Some(ContainerSummaryStateEnum::RUNNING) => InstanceState::Running,
            _ => InstanceState::Exited {
                reason: format!(
                    "container {} is {}",
                    c.names
                        .as_ref()
                        .and_then(|n| n.first())
                        .map(|n| n.trim_start_matches('/'))
                        .unwrap_or("?"),
                    c.status.as_deref().unwrap_or("not running")
                ),
            },
        };
        Some(Instance {
            tenant,
            replica,
            spec_hash: labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
            endpoint: format!("{ip}:{port}"),
            state,
            started_at_ms: labels
                .get(LABEL_CREATED_MS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
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
        let image = image_for(&self.config.image, &version.to_string());
        match self.engine.docker.inspect_image(&image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(OrchestratorError::UnknownVersion {
                version: version.to_string(),
                reason: format!(
                    "image {image} is not on the Docker engine; pull or load it there \
                     (`docker pull {image}`), or set docker.image to a registry that has it"
                ),
            }),
            Err(e) => Err(DockerError::Api {
                context: format!("cannot inspect image {image}"),
                source: e,
            }
            .into()),
        }
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
            if current && running && keep.is_none() {
                keep = self.instance(c);
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

    fn gateway_source_addresses(&self) -> Vec<String> {
        self.whitelist.clone()
    }
}

/// The container health check: `/api/health` through the configured command.
pub(crate) fn health_config(config: &DockerConfig, port: u16, root_path: &str) -> HealthConfig {
    const SECOND: i64 = 1_000_000_000;
    HealthConfig {
        test: Some(healthcheck(&config.healthcheck, port, root_path)),
        interval: Some(5 * SECOND),
        timeout: Some(3 * SECOND),
        retries: Some(3),
        // Grafana runs its database migrations on first start; that is not a failure.
        start_period: Some(120 * SECOND),
        ..Default::default()
    }
}

/// Creates `name` with `driver` when missing; returns its gateway address.
pub(crate) async fn ensure_network(
    engine: &Engine,
    name: &str,
    driver: &str,
) -> Result<Option<String>, DockerError> {
    let inspect = || {
        engine.docker.inspect_network(
            name,
            Some(InspectNetworkOptions {
                verbose: false,
                scope: None,
            }),
        )
    };
    let network = match inspect().await {
        Ok(n) => n,
        Err(e) if is_not_found(&e) => {
            let mut labels = HashMap::new();
            labels.insert(LABEL_MANAGED.to_owned(), "true".to_owned());
            match engine
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.to_owned(),
                    driver: Some(driver.to_owned()),
                    attachable: (driver == "overlay").then_some(true),
                    labels: Some(labels),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(api(format!("cannot create the {driver} network {name}"))(e)),
            }
            inspect()
                .await
                .map_err(api(format!("cannot inspect network {name}")))?
        }
        Err(e) => return Err(api(format!("cannot inspect network {name}"))(e)),
    };
    if let Some(actual) = network.driver.as_deref() {
        // A just-created swarm network may be reported without its driver for a moment.
        if !actual.is_empty() && actual != driver {
            return Err(DockerError::Mismatch(format!(
                "network {name} exists with driver {actual}, not {driver}; set docker.network \
                 to another name or remove that network"
            )));
        }
    }
    Ok(network
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway)))
}

/// A tar archive of `files` (absolute path, contents) with their directories, the files
/// readable by root and group 0 only (Grafana's images run Grafana as user 472 in group 0):
/// secrets and provisioning (datasource credentials) alike.
fn files_archive(files: &[(String, String)]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _) in files {
        let mut parent = std::path::Path::new(path.trim_start_matches('/')).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.display().to_string());
            parent = p.parent();
        }
    }
    for dir in dirs {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        builder.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    for (path, contents) in files {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o440);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(contents.len() as u64);
        header.set_mtime(0);
        builder.append_data(
            &mut header,
            path.trim_start_matches('/'),
            contents.as_bytes(),
        )?;
    }
    builder.into_inner()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_private() {
        let bytes = files_archive(&[("/run/secrets/pug-a".into(), "s3cret".into())]).unwrap();
        let mut archive = tar::Archive::new(&bytes[..]);
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("run/".to_owned(), 0o755),
                ("run/secrets/".to_owned(), 0o755),
                ("run/secrets/pug-a".to_owned(), 0o440),
            ]
        );
    }
}

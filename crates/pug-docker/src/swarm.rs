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
//!   node's address and the port Swarm published for that task (host mode: the routing mesh
//!   needs IPVS, which not every engine has, and pug probes every replica by itself anyway).
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
//! The controller hashes every replica's spec including its allocated port, while all tasks of
//! a service share one template (listening on [`CONTAINER_PORT`]). The backend therefore
//! remembers which replica hash it applied with which template hash; after a restart of pug it
//! reports template hashes, which makes the controller re-ensure each replica once (no task
//! restarts: the template is unchanged).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use bollard::models::{
    ConfigSpec, EndpointPortConfig, EndpointPortConfigProtocolEnum,
    EndpointPortConfigPublishModeEnum, EndpointSpec, Limit, Mount, MountType, MountVolumeOptions,
    NetworkAttachmentConfig, SecretSpec, Service, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecConfigs, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecFile1, TaskSpecContainerSpecSecrets, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListConfigsOptions, ListNodesOptions, ListSecretsOptions,
    ListServicesOptions, ListTasksOptions, UpdateServiceOptions,
};
use pug_config::DockerConfig;
use pug_orchestrator::{
    DatabaseSettings, Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError,
};
use pug_types::{GrafanaVersion, TenantId};
use sha2::{Digest, Sha256};

use crate::container::{ensure_network, health_config, DATA_DIR};
use crate::engine::{api, is_conflict, is_not_found, DockerError, Engine};
use crate::{
    environment, image_for, label_filter, provisioning_files, tenant_labels, DockerBackend,
    LABEL_CREATED_MS, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_SPEC_HASH, LABEL_TENANT,
};

/// The port Grafana listens on inside every task.
pub const CONTAINER_PORT: u16 = 3000;
/// Label on a service: the `CompletedAt` of the Swarm rollback pug has acknowledged.
const LABEL_ROLLBACK_SEEN: &str = "pug.rollback-seen";

/// The swarm backend.
#[derive(Debug)]
pub struct SwarmBackend {
    engine: Engine,
    config: DockerConfig,
    whitelist: Vec<String>,
    /// (tenant, replica) → (template hash, the controller's hash of that replica's spec).
    applied: Mutex<HashMap<(TenantId, u32), (String, String)>>,
    /// Whether an update has completed since pug started: until then, one update at a time.
    canary_done: AtomicBool,
}

/// One active task slot of a service.
struct Slot {
    task: Task,
    /// The latest recent failure of a task with the same template in this slot, while the
    /// newest task is not running yet: Swarm restarts failing tasks with new tasks, so without
    /// this a crash loop would look like a task forever starting.
    crash: Option<String>,
}

/// How long a failed task counts towards a slot's crash loop.
const CRASH_WINDOW_MS: i64 = 120_000;

fn template_of(task: &Task) -> Option<&String> {
    task.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(LABEL_SPEC_HASH))
}

impl SwarmBackend {
    /// Connects to a swarm manager and creates the overlay network when missing.
    pub async fn new(config: DockerConfig) -> Result<Arc<Self>, DockerError> {
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
        let whitelist = if config.proxy_whitelist.is_empty() {
            // Published host-mode ports reach tasks through docker_gwbridge: connections from
            // this machine arrive from its gateway.
            let mut w = vec!["127.0.0.1".to_owned()];
            if let Ok(Some(gw)) = ensure_network_gateway(&engine, "docker_gwbridge").await {
                w.push(gw);
            }
            w
        } else {
            config.proxy_whitelist.clone()
        };
        Ok(Arc::new(Self {
            engine,
            config,
            whitelist,
            applied: Mutex::default(),
            canary_done: AtomicBool::new(false),
        }))
    }

    /// The engine, for observation.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The service of a tenant.
    pub fn service_name(&self, tenant: &TenantId) -> String {
        format!("{}-{tenant}", self.config.namespace)
    }

    /// The hash of what every task of the tenant runs: the replica's spec with the container
    /// port, plus the image and resources.
    fn template_hash(&self, spec: &InstanceSpec) -> String {
        let mut normal = spec.clone();
        normal.replica = 0;
        normal.port = CONTAINER_PORT;
        if let Some(r) = &mut normal.rendering {
            r.callback_url = r
                .callback_url
                .replace(&format!(":{}", spec.port), &format!(":{CONTAINER_PORT}"));
        }
        let mut h = Sha256::new();
        h.update(normal.hash());
        h.update(image_for(&self.config.image, &spec.version.to_string()));
        h.update(format!(
            "{}/{}/{:?}",
            self.config.memory_mb, self.config.cpus, self.config.healthcheck
        ));
        hex::encode(&h.finalize()[..8])
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

    /// Creates the Docker secrets of `files` (named after their contents: secrets are
    /// immutable, so a changed value is a new secret) and returns the references.
    /// Creates (when missing) one Docker secret or config per file and returns the ids and
    /// names to reference. Objects are content-addressed (`pug-<sha256 of namespace, tenant,
    /// file, contents>`), since neither secrets nor configs can be changed once created: a new
    /// value is a new object, and the old one goes once no service uses it.
    async fn ensure_objects(
        &self,
        kind: ObjectKind,
        tenant: &TenantId,
        files: &[(String, String)],
    ) -> Result<Vec<ObjectRef>, DockerError> {
        let mut refs = Vec::new();
        for (file, value) in files {
            let digest = Sha256::digest(
                format!("{}\0{tenant}\0{file}\0{value}", self.config.namespace).as_bytes(),
            );
            let name = format!("pug-{}", &hex::encode(digest)[..24]);
            let by_name = Some(HashMap::from([("name".to_owned(), vec![name.clone()])]));
            let docker = &self.engine.docker;
            let existing = match kind {
                ObjectKind::Secret => docker
                    .list_secrets(Some(ListSecretsOptions { filters: by_name }))
                    .await
                    .map_err(api("cannot list secrets"))?
                    .into_iter()
                    .find(|s| s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(&name))
                    .and_then(|s| s.id),
                ObjectKind::Config => docker
                    .list_configs(Some(ListConfigsOptions { filters: by_name }))
                    .await
                    .map_err(api("cannot list configs"))?
                    .into_iter()
                    .find(|c| c.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(&name))
                    .and_then(|c| c.id),
            };
            let id = match existing {
                Some(id) => id,
                None => {
                    let mut labels = tenant_labels(&self.config.namespace, tenant.as_str());
                    labels.insert(kind.label().into(), file.clone());
                    let data = Some(base64::engine::general_purpose::STANDARD.encode(value));
                    let _op = self.engine.op().await;
                    let created = match kind {
                        ObjectKind::Secret => docker
                            .create_secret(SecretSpec {
                                name: Some(name.clone()),
                                labels: Some(labels),
                                data,
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.id),
                        ObjectKind::Config => docker
                            .create_config(ConfigSpec {
                                name: Some(name.clone()),
                                labels: Some(labels),
                                data,
                                ..Default::default()
                            })
                            .await
                            .map(|r| r.id),
                    };
                    let what = kind.noun();
                    match created {
                        Ok(id) => id,
                        Err(e) if is_conflict(&e) => {
                            return Err(api(format!(
                                "{what} {name} was created concurrently; retrying"
                            ))(e))
                        }
                        Err(e) => return Err(api(format!("cannot create {what} {name}"))(e)),
                    }
                }
            };
            refs.push(ObjectRef {
                file: file.clone(),
                id,
                name,
            });
        }
        Ok(refs)
    }

    async fn service_spec(
        &self,
        spec: &InstanceSpec,
        template_hash: &str,
        replicas: i64,
        labels: HashMap<String, String>,
    ) -> Result<ServiceSpec, DockerError> {
        const SECOND: i64 = 1_000_000_000;
        let (env, mut secret_files) = environment(spec, CONTAINER_PORT);
        // Provisioning: the datasources file holds credentials, so it is a secret (mounted at
        // its absolute path); dashboards and their provider are configs.
        let mut config_files = Vec::new();
        for f in provisioning_files(spec) {
            match f.private {
                true => secret_files.push((f.path, f.contents)),
                false => config_files.push((f.path, f.contents)),
            }
        }
        let secrets = self
            .ensure_objects(ObjectKind::Secret, &spec.tenant, &secret_files)
            .await?
            .into_iter()
            .map(|r| TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(r.file),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o440),
                }),
                secret_id: Some(r.id),
                secret_name: Some(r.name),
            })
            .collect();
        let configs = self
            .ensure_objects(ObjectKind::Config, &spec.tenant, &config_files)
            .await?
            .into_iter()
            .map(|r| TaskSpecContainerSpecConfigs {
                file: Some(TaskSpecContainerSpecFile1 {
                    name: Some(r.file),
                    uid: Some("0".into()),
                    gid: Some("0".into()),
                    mode: Some(0o444),
                }),
                config_id: Some(r.id),
                config_name: Some(r.name),
                ..Default::default()
            })
            .collect();
        let mut container_labels = tenant_labels(&self.config.namespace, spec.tenant.as_str());
        container_labels.remove(LABEL_CREATED_MS);
        let volume_labels = container_labels.clone();
        container_labels.insert(LABEL_SPEC_HASH.into(), template_hash.to_owned());
        let external_db = matches!(spec.database, DatabaseSettings::Postgres { .. });
        let order = if external_db {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
        };
        let rollback_order = if external_db {
            ServiceSpecRollbackConfigOrderEnum::START_FIRST
        } else {
            ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
        };
        let monitor = self.config.update_monitor_secs as i64 * SECOND;
        let parallelism = self.config.update_parallelism as i64;
        Ok(ServiceSpec {
            name: Some(self.service_name(&spec.tenant)),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image_for(&self.config.image, &spec.version.to_string())),
                    labels: Some(container_labels),
                    env: Some(env),
                    mounts: Some(vec![Mount {
                        target: Some(DATA_DIR.into()),
                        source: Some(DockerBackend::volume_name(&self.config.namespace, spec)),
                        typ: Some(MountType::VOLUME),
                        // Labels for the volume each node creates on first use, so that it is
                        // found again (and archived) like the docker backend's.
                        volume_options: Some(MountVolumeOptions {
                            labels: Some(volume_labels),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }]),
                    health_check: Some(health_config(
                        &self.config,
                        CONTAINER_PORT,
                        &spec.root_path(),
                    )),
                    secrets: Some(secrets),
                    configs: Some(configs),
                    stop_grace_period: Some(10 * SECOND),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: (self.config.cpus > 0.0)
                            .then_some((self.config.cpus * 1e9) as i64),
                        memory_bytes: (self.config.memory_mb > 0)
                            .then(|| (self.config.memory_mb * 1024 * 1024) as i64),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(2 * SECOND),
                    max_attempts: Some(0),
                    window: None,
                }),
                // Replicas spread over nodes (Swarm's scheduler also prefers nodes that run
                // fewer tasks of the service); `pug.zone` node labels spread them over zones.
                placement: Some(TaskSpecPlacement {
                    preferences: Some(vec![TaskSpecPlacementPreferences {
                        spread: Some(TaskSpecPlacementSpread {
                            spread_descriptor: Some("node.labels.pug.zone".into()),
                        }),
                    }]),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.config.network.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(replicas),
                }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(parallelism),
                delay: Some(0),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
                monitor: Some(monitor),
                max_failure_ratio: Some(0.0),
                order: Some(order),
            }),
            rollback_config: Some(ServiceSpecRollbackConfig {
                parallelism: Some(parallelism),
                delay: Some(0),
                failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                monitor: Some(monitor),
                max_failure_ratio: Some(0.0),
                order: Some(rollback_order),
            }),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(CONTAINER_PORT as i64),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        service: &Service,
        spec: ServiceSpec,
        rollback: bool,
    ) -> Result<(), DockerError> {
        let name = spec.name.clone().unwrap_or_default();
        let version = service
            .version
            .as_ref()
            .and_then(|v| v.index)
            .unwrap_or_default();
        let _op = self.engine.op().await;
        self.engine
            .docker
            .update_service(
                &name,
                spec,
                UpdateServiceOptions {
                    version: version as i32,
                    rollback: rollback.then(|| "previous".to_owned()),
                    ..Default::default()
                },
                None,
            )
            .await
            .map_err(api(format!("cannot update service {name}")))?;
        Ok(())
    }

    /// Pug services whose update is in progress, other than `except`.
    async fn updating_services(&self, except: &str) -> Result<usize, DockerError> {
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
        let mut updating = 0;
        for s in &services {
            let state = s.update_status.as_ref().and_then(|u| u.state);
            if state == Some(ServiceUpdateStatusStateEnum::COMPLETED) {
                self.canary_done.store(true, Ordering::SeqCst);
            }
            let this = s.spec.as_ref().and_then(|s| s.name.as_deref()) == Some(except);
            if !this
                && matches!(
                    state,
                    Some(
                        ServiceUpdateStatusStateEnum::UPDATING
                            | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                    )
                )
            {
                updating += 1;
            }
        }
        Ok(updating)
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

    async fn node_addresses(&self) -> Result<HashMap<String, String>, DockerError> {
        let nodes = self
            .engine
            .docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(api("cannot list swarm nodes"))?;
        Ok(nodes
            .into_iter()
            .filter_map(|n| Some((n.id?, n.status?.addr?)))
            .collect())
    }

    /// The active slots of a service, in slot order: per slot, its newest task that should
    /// run (or, if none should, nothing: the slot is being scaled away).
    fn slots(tasks: Vec<Task>) -> Vec<Slot> {
        let mut by_slot: BTreeMap<i64, Vec<Task>> = BTreeMap::new();
        for t in tasks {
            by_slot.entry(t.slot.unwrap_or(0)).or_default().push(t);
        }
        let mut out = Vec::new();
        for (_, mut tasks) in by_slot {
            tasks.sort_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
            let wanted = tasks
                .iter()
                .rev()
                .find(|t| t.desired_state == Some(TaskState::RUNNING))
                .cloned();
            if let Some(task) = wanted {
                let running =
                    task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING);
                let now = crate::now_ms();
                let crash = tasks
                    .iter()
                    .rev()
                    .filter(|t| !running && template_of(t) == template_of(&task))
                    .filter_map(|t| {
                        let status = t.status.as_ref()?;
                        let failed =
                            matches!(status.state, Some(TaskState::FAILED | TaskState::REJECTED));
                        let at = status.timestamp.as_deref().and_then(parse_rfc3339_ms)?;
                        (failed && now - at < CRASH_WINDOW_MS).then(|| {
                            format!(
                                "task {} {}: {}",
                                t.id.as_deref().unwrap_or("?"),
                                status.state.map(|s| s.to_string()).unwrap_or_default(),
                                status
                                    .err
                                    .clone()
                                    .or(status.message.clone())
                                    .unwrap_or_else(|| "no message".into())
                            )
                        })
                    })
                    .next();
                out.push(Slot { task, crash });
            }
        }
        out
    }

    async fn instances_of(
        &self,
        tenant: &TenantId,
        service: &Service,
    ) -> Result<Vec<Instance>, DockerError> {
        let name = self.service_name(tenant);
        let slots = Self::slots(self.tasks(&name).await?);
        let nodes = if self.config.swarm_node_address.is_empty() {
            self.node_addresses().await?
        } else {
            HashMap::new()
        };
        let rolled_back = unacknowledged_rollback(service);
        let applied = self.applied.lock().expect("applied").clone();
        let mut out = Vec::new();
        for (replica, slot) in slots.into_iter().enumerate() {
            let replica = replica as u32;
            let task = &slot.task;
            let status = task.status.clone().unwrap_or_default();
            let template_hash = task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_SPEC_HASH).cloned())
                .unwrap_or_default();
            let spec_hash = match applied.get(&(tenant.clone(), replica)) {
                Some((t, r)) if *t == template_hash => r.clone(),
                _ => template_hash,
            };
            let port = status
                .port_status
                .as_ref()
                .and_then(|p| p.ports.as_ref())
                .and_then(|p| p.first())
                .and_then(|p| p.published_port)
                .unwrap_or(0);
            let host = if self.config.swarm_node_address.is_empty() {
                task.node_id
                    .as_ref()
                    .and_then(|n| nodes.get(n).cloned())
                    .unwrap_or_else(|| "0.0.0.0".into())
            } else {
                self.config.swarm_node_address.clone()
            };
            let state = match (&rolled_back, status.state) {
                (Some(message), _) => InstanceState::Exited {
                    reason: format!("Swarm stopped the update: {message}"),
                },
                (None, _) if slot.crash.is_some() => InstanceState::Exited {
                    reason: slot.crash.clone().unwrap_or_default(),
                },
                (
                    None,
                    Some(
                        TaskState::COMPLETE
                        | TaskState::SHUTDOWN
                        | TaskState::FAILED
                        | TaskState::REJECTED
                        | TaskState::REMOVE
                        | TaskState::ORPHANED,
                    ),
                ) => InstanceState::Exited {
                    reason: format!(
                        "task {} is {}: {}",
                        task.id.as_deref().unwrap_or("?"),
                        status.state.map(|s| s.to_string()).unwrap_or_default(),
                        status
                            .err
                            .or(status.message)
                            .unwrap_or_else(|| "no message".into())
                    ),
                },
                _ => InstanceState::Running,
            };
            out.push(Instance {
                tenant: tenant.clone(),
                replica,
                spec_hash,
                endpoint: format!("{host}:{port}"),
                state,
                started_at_ms: task
                    .created_at
                    .as_deref()
                    .and_then(parse_rfc3339_ms)
                    .unwrap_or(0),
            });
        }
        // Slots the service wants but whose task Swarm has not created yet (a stop-first
        // update between the old task's exit and the new one's creation, or scheduling): they
        // are pending instances of the service's current template, not missing ones, so the
        // controller waits for them instead of "starting" them again on every pass.
        let spec = service.spec.as_ref();
        let wanted = spec
            .and_then(|s| s.mode.as_ref())
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .unwrap_or(0)
            .max(0) as u32;
        let template = spec
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(LABEL_SPEC_HASH).cloned())
            .unwrap_or_default();
        for replica in out.len() as u32..wanted {
            let spec_hash = match applied.get(&(tenant.clone(), replica)) {
                Some((t, r)) if *t == template => r.clone(),
                _ => template.clone(),
            };
            out.push(Instance {
                tenant: tenant.clone(),
                replica,
                spec_hash,
                // Nothing answers here: probes see it as not ready until its task runs.
                endpoint: "0.0.0.0:0".into(),
                state: InstanceState::Running,
                // Waiting since the service last changed, so a slot Swarm never schedules
                // times out like a replica that never gets healthy.
                started_at_ms: service
                    .updated_at
                    .as_deref()
                    .and_then(parse_rfc3339_ms)
                    .unwrap_or_else(crate::now_ms),
            });
        }
        Ok(out)
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
        self.applied
            .lock()
            .expect("applied")
            .retain(|(t, _), _| t != tenant);
        self.remove_unused_objects(tenant).await;
        Ok(())
    }

    /// Deletes the tenant's secrets and configs that no service uses any more; the engine
    /// refuses to delete those still in use (by a running task or the previous spec), which is
    /// what we want.
    async fn remove_unused_objects(&self, tenant: &TenantId) {
        let filters = Some(label_filter(&[
            (LABEL_MANAGED, "true"),
            (LABEL_NAMESPACE, &self.config.namespace),
            (LABEL_TENANT, tenant.as_str()),
        ]));
        let docker = &self.engine.docker;
        if let Ok(secrets) = docker
            .list_secrets(Some(ListSecretsOptions {
                filters: filters.clone(),
            }))
            .await
        {
            for id in secrets.into_iter().filter_map(|s| s.id) {
                let _op = self.engine.op().await;
                let _ = docker.delete_secret(&id).await;
            }
        }
        if let Ok(configs) = docker
            .list_configs(Some(ListConfigsOptions { filters }))
            .await
        {
            for id in configs.into_iter().filter_map(|c| c.id) {
                let _op = self.engine.op().await;
                let _ = docker.delete_config(&id).await;
            }
        }
    }
}

/// The two kinds of swarm objects a task mounts as files.
#[derive(Clone, Copy, Debug)]
enum ObjectKind {
    Secret,
    Config,
}

impl ObjectKind {
    fn noun(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        }
    }

    /// The label naming the file an object holds.
    fn label(self) -> &'static str {
        match self {
            ObjectKind::Secret => "pug.secret",
            ObjectKind::Config => "pug.config",
        }
    }
}

/// A secret or config, and the file it becomes in the task.
struct ObjectRef {
    file: String,
    id: String,
    name: String,
}

#[async_trait]
impl Orchestrator for SwarmBackend {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn check_version(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError> {
        let image = image_for(&self.config.image, &version.to_string());
        match self.engine.docker.inspect_image(&image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(OrchestratorError::UnknownVersion {
                version: version.to_string(),
                reason: format!(
                    "image {image} is not on the swarm manager's engine; push it to a registry \
                     every node can pull from and set docker.image accordingly"
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
        let template_hash = self.template_hash(spec);
        let name = self.service_name(&spec.tenant);
        let want = spec.replica as i64 + 1;
        let remember = || {
            self.applied.lock().expect("applied").insert(
                (spec.tenant.clone(), spec.replica),
                (template_hash.clone(), spec.hash()),
            );
        };
        match self.service(&spec.tenant).await? {
            None => {
                let mut labels = tenant_labels(&self.config.namespace, spec.tenant.as_str());
                labels.insert(LABEL_SPEC_HASH.into(), template_hash.clone());
                let service_spec = self
                    .service_spec(spec, &template_hash, want, labels)
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
                tracing::info!(tenant = %spec.tenant, version = %spec.version, replicas = want, "service created");
            }
            Some(service) => {
                let current = service.spec.clone().unwrap_or_default();
                let labels = current.labels.clone().unwrap_or_default();
                let running_hash = labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default();
                let replicas = current
                    .mode
                    .as_ref()
                    .and_then(|m| m.replicated.as_ref())
                    .and_then(|r| r.replicas)
                    .unwrap_or(0);
                let target = replicas.max(want);
                let rollback = unacknowledged_rollback(&service);
                let rollback_key = rollback_key(&service);
                if running_hash == template_hash {
                    if target != replicas || rollback.is_some() {
                        // Scale, or acknowledge a rollback to what is asked for now: the
                        // template stays, so no task restarts.
                        let mut next = current.clone();
                        if let Some(r) = next.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                            r.replicas = Some(target);
                        }
                        let mut labels = labels.clone();
                        if rollback.is_some() {
                            labels.insert(LABEL_ROLLBACK_SEEN.into(), rollback_key);
                        }
                        next.labels = Some(labels);
                        self.update(&service, next, false).await?;
                    }
                } else {
                    let busy = self.updating_services(&name).await?;
                    let limit = if self.canary_done.load(Ordering::SeqCst) {
                        self.config.max_concurrent_ops
                    } else {
                        1
                    };
                    if busy >= limit {
                        return Err(OrchestratorError::Engine(format!(
                            "{busy} other tenant service(s) are being updated on the swarm \
                             (limit {limit}{}); {} waits its turn",
                            if limit == 1 {
                                " until the first update, the canary, has completed"
                            } else {
                                ""
                            },
                            spec.tenant
                        )));
                    }
                    let mut new_labels = labels.clone();
                    new_labels.insert(LABEL_SPEC_HASH.into(), template_hash.clone());
                    new_labels.remove(LABEL_ROLLBACK_SEEN);
                    let next = self
                        .service_spec(spec, &template_hash, target, new_labels)
                        .await?;
                    self.update(&service, next, false).await?;
                    tracing::info!(tenant = %spec.tenant, version = %spec.version, "service update started; Swarm rolls the tasks");
                }
            }
        }
        remember();
        let instances = self.instances(&spec.tenant).await?;
        Ok(instances
            .into_iter()
            .find(|i| i.replica == spec.replica)
            .unwrap_or_else(|| Instance {
                tenant: spec.tenant.clone(),
                replica: spec.replica,
                spec_hash: spec.hash(),
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
        let replicas = current
            .mode
            .as_ref()
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas)
            .unwrap_or(0);
        if replicas == 0 && replica == 0 {
            self.delete_service(tenant).await?;
            tracing::info!(%tenant, "service deleted");
            return Ok(());
        }
        let target = replicas.min(replica as i64);
        if target != replicas {
            let mut next = current;
            if let Some(r) = next.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
                r.replicas = Some(target);
            }
            self.update(&service, next, false).await?;
            tracing::info!(%tenant, replicas = target, "service scaled down");
        }
        Ok(())
    }

    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        self.delete_service(tenant).await?;
        Ok(())
    }

    fn gateway_source_addresses(&self) -> Vec<String> {
        self.whitelist.clone()
    }
}

/// Swarm's message when it rolled an update back or paused it after failures, and pug has not
/// acknowledged that yet.
fn unacknowledged_rollback(service: &Service) -> Option<String> {
    let status = service.update_status.as_ref()?;
    if !matches!(
        status.state,
        Some(
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED
                | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
                | ServiceUpdateStatusStateEnum::PAUSED
        )
    ) {
        return None;
    }
    let seen = service
        .spec
        .as_ref()
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(LABEL_ROLLBACK_SEEN));
    if seen.is_some_and(|seen| *seen == rollback_key(service)) {
        return None;
    }
    Some(
        status
            .message
            .clone()
            .unwrap_or_else(|| "update failed".into()),
    )
}

/// What identifies one rollback or pause of a service's update, for its acknowledgement.
fn rollback_key(service: &Service) -> String {
    let status = service.update_status.clone().unwrap_or_default();
    format!(
        "{}-{}",
        status.started_at.unwrap_or_default(),
        status.completed_at.unwrap_or_default()
    )
    .replace(':', "")
}

async fn ensure_network_gateway(
    engine: &Engine,
    name: &str,
) -> Result<Option<String>, DockerError> {
    let network = engine
        .docker
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
        .map_err(api(format!("cannot inspect network {name}")))?;
    Ok(network
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway)))
}

/// `2026-11-22T04:09:25.803293032Z` → milliseconds since the Unix epoch (UTC only, as Docker
/// writes them).
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_timestamps() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_ms("2026-11-22T04:09:25.803293032Z"),
            Some(1_795_320_565_803)
        );
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }
}

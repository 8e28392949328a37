//! The service spec pug hands Swarm for a tenant, built from the controller's instance spec.
//!
//! Owns: the service's name, labels and template hash; which of the task's files are secrets
//! and which are configs; and the whole `ServiceSpec`: image from `docker.image`, Grafana's
//! `GF_*` settings, secrets read through `GF_<SECTION>_<KEY>__FILE`, the tenant's provisioning
//! mounted at its paths under `/etc/grafana`, the data volume, the container health check on
//! `/api/health`, resource limits, restart policy, placement, the overlay network, the update
//! and rollback configuration, and the endpoint: nothing published, DNS round robin (no
//! virtual IP per service: one overlay address per task only).
//!
//! Must not: do IO (the objects it references are created by [`super::objects`] first, and
//! passed in), read the clock (creation times are parameters), or hold a secret value: the
//! spec names secrets by object and file only. The snapshot tests below show every change to
//! what pug hands Swarm.

use std::collections::HashMap;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, MountVolumeOptions,
    NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecPlacementPreferences,
    TaskSpecPlacementSpread, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum,
};
use pug_config::DockerConfig;
use pug_orchestrator::{DatabaseSettings, GatewayTrust, InstanceSpec};
use pug_types::TenantId;
use sha2::{Digest, Sha256};

use super::objects::{mounts, Config, ObjectRef, Secret};
use crate::container::{health_config, volume_name, DATA_DIR};
use crate::{
    environment, image_for, provisioning_files, tenant_labels_at, LABEL_CREATED_MS, LABEL_SPEC_HASH,
};

/// The port Grafana listens on inside every task.
pub const CONTAINER_PORT: u16 = 3000;

const SECOND: i64 = 1_000_000_000;

/// Raised whenever the service spec changes in a way the instance spec does not show.
/// 2: no published port (the overlay only), DNS round robin, `NET_RAW` dropped.
const TEMPLATE_VERSION: &str = "pug-swarm-template-2";

/// The service of a tenant.
pub(super) fn service_name(namespace: &str, tenant: &TenantId) -> String {
    format!("{namespace}-{tenant}")
}

/// The hash of what every task of the tenant runs: the replica's spec with the container
/// port, plus the image and resources. Replicas differ only in what this leaves out (their
/// index and the port the controller allocated them), so all of them hash alike.
pub(super) fn template_hash(config: &DockerConfig, spec: &InstanceSpec) -> String {
    let mut normal = spec.clone();
    normal.replica = 0;
    normal.port = CONTAINER_PORT;
    if let Some(r) = &mut normal.rendering {
        r.callback_url = r
            .callback_url
            .replace(&format!(":{}", spec.port), &format!(":{CONTAINER_PORT}"));
    }
    let mut h = Sha256::new();
    // The version of what pug derives from an instance spec beyond it (endpoint, network,
    // capabilities): a change here must roll every tenant once, so it is part of the hash.
    h.update(TEMPLATE_VERSION);
    h.update(normal.hash());
    h.update(image_for(&config.image, &spec.version.to_string()));
    h.update(format!(
        "{}/{}/{:?}",
        config.memory_mb, config.cpus, config.healthcheck
    ));
    hex::encode(&h.finalize()[..8])
}

/// The labels of a service pug creates at `created_ms`.
pub(super) fn new_service_labels(
    namespace: &str,
    tenant: &TenantId,
    template_hash: &str,
    created_ms: i64,
) -> HashMap<String, String> {
    let mut labels = tenant_labels_at(namespace, tenant.as_str(), created_ms);
    labels.insert(LABEL_SPEC_HASH.into(), template_hash.to_owned());
    labels
}

/// The replicas a service spec asks for.
pub(super) fn replicas_of(spec: &ServiceSpec) -> i64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .unwrap_or(0)
}

/// `spec` asking for `replicas` (a replicated service's; anything else stays as it is).
pub(super) fn with_replicas(mut spec: ServiceSpec, replicas: i64) -> ServiceSpec {
    if let Some(r) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
        r.replicas = Some(replicas);
    }
    spec
}

/// What a task reads, before its objects exist: its environment, and the files (name or
/// path, contents) that become secrets and configs.
#[derive(Debug)]
pub(super) struct TaskFiles {
    pub env: Vec<String>,
    /// Grafana's secret settings (names under `/run/secrets`) and the datasources file, which
    /// holds credentials (its absolute path).
    pub secrets: Vec<(String, String)>,
    /// Dashboards and their provider, and the gateway's public key.
    pub configs: Vec<(String, String)>,
}

/// Where a task reads the gateway's public key (`[auth.jwt] key_file`).
pub const GATEWAY_KEY_FILE: &str = "/etc/grafana/pug-gateway-key.pem";

/// The environment and files of a task running `spec`.
pub(super) fn task_files(spec: &InstanceSpec) -> TaskFiles {
    let (env, mut secrets) = environment(spec, CONTAINER_PORT);
    let mut configs = Vec::new();
    for f in provisioning_files(spec) {
        match f.private {
            true => secrets.push((f.path, f.contents)),
            false => configs.push((f.path, f.contents)),
        }
    }
    // Public: a config, not a secret.
    if let GatewayTrust::Signature {
        public_key_pem,
        key_file,
    } = &spec.gateway
    {
        configs.push((key_file.clone(), public_key_pem.clone()));
    }
    TaskFiles {
        env,
        secrets,
        configs,
    }
}

/// The task's environment and the objects it mounts, once they exist.
#[derive(Debug)]
pub(super) struct TaskObjects {
    pub env: Vec<String>,
    pub secrets: Vec<ObjectRef>,
    pub configs: Vec<ObjectRef>,
}

/// The service spec of `spec`'s tenant with `replicas` tasks and the service `labels`.
pub(super) fn service_spec(
    config: &DockerConfig,
    spec: &InstanceSpec,
    template_hash: &str,
    replicas: i64,
    labels: HashMap<String, String>,
    task: TaskObjects,
) -> ServiceSpec {
    let mut container_labels = tenant_labels_at(&config.namespace, spec.tenant.as_str(), 0);
    container_labels.remove(LABEL_CREATED_MS);
    let volume_labels = container_labels.clone();
    container_labels.insert(LABEL_SPEC_HASH.into(), template_hash.to_owned());
    // Two Grafanas may share an external database while one replaces the other; SQLite on a
    // volume has one writer.
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
    let monitor = config.update_monitor_secs as i64 * SECOND;
    let parallelism = config.update_parallelism as i64;
    ServiceSpec {
        name: Some(service_name(&config.namespace, &spec.tenant)),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image_for(&config.image, &spec.version.to_string())),
                labels: Some(container_labels),
                env: Some(task.env),
                mounts: Some(vec![Mount {
                    target: Some(DATA_DIR.into()),
                    source: Some(volume_name(&config.namespace, spec)),
                    typ: Some(MountType::VOLUME),
                    // Labels for the volume each node creates on first use, so that it is
                    // found again (and archived) like the docker backend's.
                    volume_options: Some(MountVolumeOptions {
                        labels: Some(volume_labels),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                health_check: Some(health_config(config, CONTAINER_PORT, &spec.root_path())),
                secrets: Some(mounts::<Secret>(task.secrets)),
                configs: Some(mounts::<Config>(task.configs)),
                stop_grace_period: Some(10 * SECOND),
                // Without NET_RAW a task cannot forge ARP or IP packets on the overlay, so it
                // cannot take pug's address, the one Grafana trusts auth-proxy headers from.
                capability_drop: Some(vec!["CAP_NET_RAW".into()]),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: (config.cpus > 0.0).then_some((config.cpus * 1e9) as i64),
                    memory_bytes: (config.memory_mb > 0)
                        .then(|| (config.memory_mb * 1024 * 1024) as i64),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(restart_always()),
            // Replicas spread over nodes (Swarm's scheduler also prefers nodes that run
            // fewer tasks of the service); `pug.zone` node labels spread them over zones.
            placement: Some(spread_over("node.labels.pug.zone")),
            networks: Some(on_network(&config.network)),
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
        // Nothing is published: a port on the nodes would reach Grafana without the gateway,
        // and through `docker_gwbridge`, whose address every process on a node shares (the
        // security review's finding 16). pug reaches each task on the overlay by itself.
        endpoint_spec: Some(EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: Some(Vec::new()),
        }),
        ..Default::default()
    }
}

/// Restarted whatever ends it, 2 s apart, with no limit (tenants' tasks and the renderer's).
pub(super) fn restart_always() -> TaskSpecRestartPolicy {
    TaskSpecRestartPolicy {
        condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
        delay: Some(2 * SECOND),
        max_attempts: Some(0),
        window: None,
    }
}

/// Tasks spread over the values of `descriptor` (`node.id`, a node label).
pub(super) fn spread_over(descriptor: &str) -> TaskSpecPlacement {
    TaskSpecPlacement {
        preferences: Some(vec![TaskSpecPlacementPreferences {
            spread: Some(TaskSpecPlacementSpread {
                spread_descriptor: Some(descriptor.to_owned()),
            }),
        }]),
        ..Default::default()
    }
}

/// Attached to `network` alone.
pub(super) fn on_network(network: &str) -> Vec<NetworkAttachmentConfig> {
    vec![NetworkAttachmentConfig {
        target: Some(network.to_owned()),
        ..Default::default()
    }]
}

#[cfg(test)]
mod tests {
    use pug_orchestrator::settings::RenderingSettings;

    use super::*;
    use crate::test_specs::{instance_spec, secret_values, Tenant};

    /// Placeholder references for the task's files, as the engine would return them once
    /// created: the snapshot shows which file becomes which kind of object, never a value.
    fn placeholder_objects(files: TaskFiles) -> TaskObjects {
        let refs = |kind: &str, files: Vec<(String, String)>| {
            files
                .into_iter()
                .enumerate()
                .map(|(i, (file, _))| ObjectRef {
                    file,
                    id: format!("<{kind} id {i}>"),
                    name: format!("<{kind} name {i}>"),
                })
                .collect()
        };
        TaskObjects {
            env: files.env,
            secrets: refs("secret", files.secrets),
            configs: refs("config", files.configs),
        }
    }

    /// `tenant`'s spec as the swarm backend's controller makes it: trusting the gateway's
    /// signature.
    fn swarm_spec(tenant: Tenant) -> InstanceSpec {
        let mut spec = instance_spec(tenant);
        spec.gateway = GatewayTrust::Signature {
            public_key_pem:
                "-----BEGIN PUBLIC KEY-----\nGATEWAY-PUBLIC-KEY\n-----END PUBLIC KEY-----\n".into(),
            key_file: GATEWAY_KEY_FILE.into(),
        };
        spec
    }

    fn built(config: &DockerConfig, spec: &InstanceSpec, replicas: i64) -> ServiceSpec {
        let hash = template_hash(config, spec);
        let labels = new_service_labels(&config.namespace, &spec.tenant, &hash, 1_700_000_000_000);
        let task = placeholder_objects(task_files(spec));
        service_spec(config, spec, &hash, replicas, labels, task)
    }

    fn snapshot(name: &str, spec: &ServiceSpec) {
        insta::with_settings!({ sort_maps => true, omit_expression => true }, {
            insta::assert_yaml_snapshot!(name, spec);
        });
    }

    #[test]
    fn service_spec_of_a_sqlite_tenant() {
        let spec = swarm_spec(Tenant::Minimal);
        snapshot("sqlite_tenant", &built(&DockerConfig::default(), &spec, 1));
    }

    #[test]
    fn service_spec_of_a_postgres_tenant_with_provisioning_and_rendering() {
        let spec = swarm_spec(Tenant::Full);
        let config = DockerConfig {
            namespace: "pugtest".into(),
            image: "registry.example.com/grafana:{version}".into(),
            network: "pugtest-net".into(),
            memory_mb: 0,
            cpus: 0.0,
            update_parallelism: 2,
            update_monitor_secs: 30,
            ..DockerConfig::default()
        };
        snapshot("postgres_tenant", &built(&config, &spec, 3));
    }

    #[test]
    fn no_secret_value_reaches_the_service_spec() {
        for tenant in [Tenant::Minimal, Tenant::Full] {
            let spec = swarm_spec(tenant);
            let text = serde_json::to_string(&built(&DockerConfig::default(), &spec, 1)).unwrap();
            for value in secret_values(&spec) {
                assert!(
                    !text.contains(&value),
                    "{tenant:?}: the service spec holds the secret value {value:?}"
                );
            }
        }
    }

    #[test]
    fn credentials_become_secrets_and_the_rest_configs() {
        let spec = swarm_spec(Tenant::Full);
        let files = task_files(&spec);
        let secrets: Vec<&str> = files.secrets.iter().map(|(f, _)| f.as_str()).collect();
        let configs: Vec<&str> = files.configs.iter().map(|(f, _)| f.as_str()).collect();
        for value in secret_values(&spec) {
            let holders: Vec<&str> = files
                .configs
                .iter()
                .filter(|(_, contents)| contents.contains(&value))
                .map(|(f, _)| f.as_str())
                .collect();
            assert!(holders.is_empty(), "configs {holders:?} hold {value:?}");
            assert!(
                files.secrets.iter().any(|(_, c)| c.contains(&value)),
                "{value:?} is in no secret (secrets: {secrets:?})"
            );
        }
        assert!(
            secrets.contains(&"/etc/grafana/provisioning/datasources/pug.yaml"),
            "{secrets:?}"
        );
        assert!(
            configs.contains(&GATEWAY_KEY_FILE),
            "the gateway's public key: {configs:?}"
        );
        assert!(
            configs
                .iter()
                .any(|c| c.starts_with("/etc/grafana/dashboards/")),
            "{configs:?}"
        );
        assert!(
            files
                .env
                .iter()
                .all(|e| !e.contains("__FILE=") || e.contains("=/run/secrets/")),
            "{:?}",
            files.env
        );
    }

    /// A named change to an instance spec.
    type Change<'a> = (&'a str, &'a dyn Fn(&mut InstanceSpec));

    #[test]
    fn every_replica_runs_one_template() {
        let config = DockerConfig::default();
        let base = swarm_spec(Tenant::Full);
        let hash = template_hash(&config, &base);
        let same = |f: &dyn Fn(&mut InstanceSpec)| {
            let mut s = base.clone();
            f(&mut s);
            template_hash(&config, &s)
        };
        // What replicas differ in does not change the template.
        let alike: [Change; 2] = [
            ("replica", &|s: &mut InstanceSpec| s.replica = 2),
            (
                "allocated port (and the callback URL naming it)",
                &|s: &mut InstanceSpec| {
                    let old = s.port;
                    s.port = 20_777;
                    if let Some(r) = &mut s.rendering {
                        r.callback_url = r.callback_url.replace(&old.to_string(), "20777");
                    }
                },
            ),
        ];
        for (what, change) in alike {
            assert_eq!(same(change), hash, "{what} must not change the template");
        }
        // What tasks run does.
        let differ: [Change; 2] = [
            ("version", &|s: &mut InstanceSpec| {
                s.version = pug_types::GrafanaVersion::parse("12.0.0").unwrap()
            }),
            ("renderer", &|s: &mut InstanceSpec| {
                s.rendering = Some(RenderingSettings {
                    server_url: "http://renderer.example:8081/render".into(),
                    callback_url: "http://other.example/".into(),
                })
            }),
        ];
        for (what, change) in differ {
            assert_ne!(same(change), hash, "{what} must change the template");
        }
        let configs: [(&str, DockerConfig); 3] = [
            (
                "image",
                DockerConfig {
                    image: "mirror.example/grafana:{version}".into(),
                    ..DockerConfig::default()
                },
            ),
            (
                "memory",
                DockerConfig {
                    memory_mb: 1024,
                    ..DockerConfig::default()
                },
            ),
            (
                "health check",
                DockerConfig {
                    healthcheck: vec!["CMD".into(), "true".into()],
                    ..DockerConfig::default()
                },
            ),
        ];
        for (what, other) in configs {
            assert_ne!(
                template_hash(&other, &base),
                hash,
                "{what} must change the template"
            );
        }
    }

    #[test]
    fn replicas_are_read_and_set_on_replicated_services_only() {
        let replicated = |n| ServiceSpec {
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: n }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (replicated(Some(3)), 3, 1, 1),
            (replicated(None), 0, 2, 2),
            (ServiceSpec::default(), 0, 4, 0),
        ];
        for (spec, read, set, after) in cases {
            assert_eq!(replicas_of(&spec), read, "{spec:?}");
            assert_eq!(
                replicas_of(&with_replicas(spec.clone(), set)),
                after,
                "{spec:?}"
            );
        }
    }
}

//! The container pug hands the engine for one replica, and reading a replica back from it.
//!
//! Owns: the container's create body (image from `docker.image`, Grafana's `GF_*` settings,
//! labels, the pug network, restart policy, the data volume mount, memory/CPU limits, the
//! health check on `/api/health`), the files copied into it before it starts (secrets under
//! `/run/secrets`, provisioning under `/etc/grafana`) and their archive, the tenant volume's
//! name, and the [`Instance`] a listed container is.
//!
//! Must not: do IO or read the clock (creation times are parameters), or put a secret value
//! into the create body: secrets travel only in the archive, so `docker inspect` shows their
//! `__FILE` paths. The snapshot tests below show every change to what pug hands the engine.

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HealthConfig, HostConfig,
    Mount, MountType, RestartPolicy, RestartPolicyNameEnum,
};
use pug_config::DockerConfig;
use pug_orchestrator::{Instance, InstanceSpec, InstanceState};
use pug_types::{ExposeSecret, TenantId};
use sha2::{Digest, Sha256};

use crate::{
    environment, healthcheck, image_for, provisioning_files, tenant_labels_at, LABEL_CREATED_MS,
    LABEL_REPLICA, LABEL_SPEC_HASH, LABEL_TENANT, SECRETS_DIR,
};

/// Label holding the port Grafana listens on inside the container.
const LABEL_PORT: &str = "pug.port";
/// Where the tenant's volume is mounted: Grafana's data directory in its images.
pub const DATA_DIR: &str = "/var/lib/grafana";

/// The volume of a tenant's data (see the module docs of [`super`] for the suffix).
pub(crate) fn volume_name(namespace: &str, spec: &InstanceSpec) -> String {
    let digest = Sha256::digest(spec.secrets.secret_key.expose_secret().as_bytes());
    format!("{namespace}-{}-{}", spec.tenant, &hex::encode(digest)[..8])
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

/// A container to create: what the engine is told, and what is copied in before it starts.
#[derive(Debug)]
pub(super) struct NewContainer {
    pub body: ContainerCreateBody,
    /// (absolute path, contents): the secret settings' files and the tenant's provisioning.
    pub files: Vec<(String, String)>,
}

/// The container of `spec`'s replica, running the spec hashed `hash` with its data on
/// `volume`, labelled as created at `created_ms`.
pub(super) fn new_container(
    config: &DockerConfig,
    spec: &InstanceSpec,
    hash: &str,
    volume: String,
    created_ms: i64,
) -> NewContainer {
    let (env, secret_files) = environment(spec, spec.port);
    let mut labels = tenant_labels_at(&config.namespace, spec.tenant.as_str(), created_ms);
    labels.insert(LABEL_REPLICA.into(), spec.replica.to_string());
    labels.insert(LABEL_SPEC_HASH.into(), hash.to_owned());
    labels.insert(LABEL_PORT.into(), spec.port.to_string());
    let body = ContainerCreateBody {
        image: Some(image_for(&config.image, &spec.version.to_string())),
        env: Some(env),
        labels: Some(labels),
        healthcheck: Some(health_config(config, spec.port, &spec.root_path())),
        host_config: Some(HostConfig {
            network_mode: Some(config.network.clone()),
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
            memory: (config.memory_mb > 0).then(|| (config.memory_mb * 1024 * 1024) as i64),
            nano_cpus: (config.cpus > 0.0).then_some((config.cpus * 1e9) as i64),
            // Without NET_RAW a container cannot forge ARP or IP packets on the bridge, so it
            // cannot pose as the network's gateway, the address Grafana trusts auth-proxy
            // headers from.
            cap_drop: Some(vec!["NET_RAW".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut files: Vec<(String, String)> = secret_files
        .into_iter()
        .map(|(name, value)| (format!("{SECRETS_DIR}/{name}"), value))
        .collect();
    files.extend(
        provisioning_files(spec)
            .into_iter()
            .map(|f| (f.path, f.contents)),
    );
    NewContainer { body, files }
}

/// A tar archive of `files` (absolute path, contents) with their directories, the files
/// readable by root and group 0 only (Grafana's images run Grafana as user 472 in group 0):
/// secrets and provisioning (datasource credentials) alike.
pub(super) fn files_archive(files: &[(String, String)]) -> std::io::Result<Vec<u8>> {
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

/// The replica a listed container is, read from the labels [`new_container`] gave it and its
/// address on `network`; `None` for a container without them.
pub(super) fn instance_of(network: &str, c: &ContainerSummary) -> Option<Instance> {
    let labels = c.labels.as_ref()?;
    let tenant = TenantId::parse(labels.get(LABEL_TENANT)?).ok()?;
    let replica = labels.get(LABEL_REPLICA)?.parse().ok()?;
    let port = labels.get(LABEL_PORT).cloned().unwrap_or_default();
    let ip = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .and_then(|n| n.get(network))
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerSummaryNetworkSettings, EndpointSettings};

    use super::*;
    use crate::test_specs::{instance_spec, secret_values, Tenant};

    const CREATED_MS: i64 = 1_700_000_000_000;

    fn built(config: &DockerConfig, tenant: Tenant) -> NewContainer {
        let spec = instance_spec(tenant);
        let volume = volume_name(&config.namespace, &spec);
        new_container(config, &spec, &spec.hash(), volume, CREATED_MS)
    }

    /// What a snapshot shows: the create body, and the paths of the files copied in (never
    /// their contents: some are secrets).
    #[derive(serde::Serialize)]
    struct Shown<'a> {
        create: &'a ContainerCreateBody,
        copied_in: Vec<&'a str>,
    }

    fn snapshot(name: &str, container: &NewContainer) {
        let shown = Shown {
            create: &container.body,
            copied_in: container.files.iter().map(|(p, _)| p.as_str()).collect(),
        };
        insta::with_settings!({ sort_maps => true, omit_expression => true }, {
            insta::assert_yaml_snapshot!(name, shown);
        });
    }

    #[test]
    fn container_of_a_sqlite_tenant() {
        snapshot(
            "sqlite_tenant",
            &built(&DockerConfig::default(), Tenant::Minimal),
        );
    }

    #[test]
    fn container_of_a_postgres_tenant_with_provisioning_and_rendering() {
        let config = DockerConfig {
            namespace: "pugtest".into(),
            image: "registry.example.com/grafana:{version}".into(),
            network: "pugtest-net".into(),
            memory_mb: 0,
            cpus: 0.0,
            ..DockerConfig::default()
        };
        snapshot("postgres_tenant", &built(&config, Tenant::Full));
    }

    #[test]
    fn secrets_travel_only_in_the_copied_files() {
        for tenant in [Tenant::Minimal, Tenant::Full] {
            let spec = instance_spec(tenant);
            let container = built(&DockerConfig::default(), tenant);
            let body = serde_json::to_string(&container.body).unwrap();
            for value in secret_values(&spec) {
                assert!(
                    !body.contains(&value),
                    "{tenant:?}: the create body holds the secret value {value:?}"
                );
                assert!(
                    container.files.iter().any(|(_, c)| c.contains(&value)),
                    "{tenant:?}: {value:?} is copied in no file"
                );
            }
            for env in container.body.env.iter().flatten() {
                if let Some((_, path)) = env.split_once("__FILE=") {
                    assert!(
                        container.files.iter().any(|(p, _)| p == path),
                        "{env} names a file that is not copied in"
                    );
                }
            }
        }
    }

    #[test]
    fn a_tenant_created_again_gets_a_new_volume() {
        let spec = instance_spec(Tenant::Minimal);
        let name = volume_name("pug", &spec);
        assert!(name.starts_with("pug-acme-"), "{name}");
        assert_eq!(name.len(), "pug-acme-".len() + 8, "{name}");
        let mut again = spec.clone();
        again.secrets.secret_key = pug_types::SecretString::from("another key");
        assert_ne!(volume_name("pug", &again), name);
        let mut replica = spec.clone();
        replica.replica = 1;
        assert_eq!(
            volume_name("pug", &replica),
            name,
            "replicas share the volume"
        );
    }

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

    #[test]
    fn containers_read_back_as_the_replicas_they_were_created_as() {
        let config = DockerConfig::default();
        let created = built(&config, Tenant::Minimal);
        let summary = |state, ip: &str, labels: Option<HashMap<String, String>>| ContainerSummary {
            names: Some(vec!["/pug-acme-0".into()]),
            state: Some(state),
            status: Some("Exited (1) 2 seconds ago".into()),
            labels,
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(HashMap::from([(
                    config.network.clone(),
                    EndpointSettings {
                        ip_address: Some(ip.into()),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let labels = created.body.labels.clone();
        let hash = instance_spec(Tenant::Minimal).hash();
        let instance = |endpoint: &str, state| Instance {
            tenant: TenantId::parse("acme").unwrap(),
            replica: 0,
            spec_hash: hash.clone(),
            endpoint: endpoint.into(),
            state,
            started_at_ms: CREATED_MS,
        };
        let exited = InstanceState::Exited {
            reason: "container pug-acme-0 is Exited (1) 2 seconds ago".into(),
        };
        let mut foreign = labels.clone().unwrap();
        foreign.remove(LABEL_REPLICA);
        let cases = [
            (
                "running, on the network",
                summary(
                    ContainerSummaryStateEnum::RUNNING,
                    "172.18.0.5",
                    labels.clone(),
                ),
                Some(instance("172.18.0.5:20001", InstanceState::Running)),
            ),
            (
                "exited",
                summary(
                    ContainerSummaryStateEnum::EXITED,
                    "172.18.0.5",
                    labels.clone(),
                ),
                Some(instance("172.18.0.5:20001", exited.clone())),
            ),
            (
                "no address yet",
                summary(ContainerSummaryStateEnum::CREATED, "", labels.clone()),
                Some(instance(
                    "0.0.0.0:20001",
                    InstanceState::Exited {
                        reason: "container pug-acme-0 is Exited (1) 2 seconds ago".into(),
                    },
                )),
            ),
            (
                "without pug's replica label",
                summary(
                    ContainerSummaryStateEnum::RUNNING,
                    "172.18.0.5",
                    Some(foreign),
                ),
                None,
            ),
            (
                "without labels",
                summary(ContainerSummaryStateEnum::RUNNING, "172.18.0.5", None),
                None,
            ),
        ];
        for (what, container, want) in cases {
            assert_eq!(instance_of(&config.network, &container), want, "{what}");
        }
        let on_other_network = summary(ContainerSummaryStateEnum::RUNNING, "10.1.0.5", labels);
        assert_eq!(
            instance_of("another", &on_other_network).map(|i| i.endpoint),
            Some("0.0.0.0:20001".to_owned())
        );
    }
}

//! How pug and the tasks reach each other on swarm: over the tenants' overlay network only.
//!
//! Owns: finding the container pug itself runs in (from its own mount table), attaching it to
//! the overlay network when it is not yet, reading its address there (the one address every
//! tenant's Grafana accepts auth-proxy headers from), and reading each task's address on the
//! overlay (from the network's verbose inspection, which names every task with its endpoint).
//!
//! Why: a task's port published on the nodes (host mode) is reachable by anyone who can reach
//! a node, and connections through it arrive from `docker_gwbridge`'s address, which every
//! process on the node shares (hairpin); trusting that address let anything on a node be any
//! tenant's admin (security review, finding 16). On the overlay nothing is published, and the
//! source address Grafana trusts is pug's own, which no task has (and tasks cannot take: they
//! run without `NET_RAW`, so they cannot answer ARP for pug's address).
//!
//! Must not: decide the whitelist when the operator set one (the backend does), or change any
//! network but attach pug's own container to the overlay.

use std::collections::HashMap;

use bollard::models::{NetworkConnectRequest, ServiceInfo};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};

use crate::engine::{api, is_not_found, DockerError, Engine};

/// The id of the container whose mount table `mountinfo` is (`/proc/self/mountinfo`), from the
/// files Docker bind-mounts into every container (`/etc/hostname`, `/etc/hosts`,
/// `/etc/resolv.conf` come from `/var/lib/docker/containers/<id>/`); `None` outside one.
pub(crate) fn container_id_from_mountinfo(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        // Field 4 is the mount's root within its filesystem, field 5 its mount point.
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        if !matches!(*point, "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf") {
            return None;
        }
        let rest = root.split("/containers/").nth(1)?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// pug's own address on `network`: attaches pug's container to it first when needed.
pub(crate) async fn own_address(engine: &Engine, network: &str) -> Result<String, DockerError> {
    let not_in_container = || {
        DockerError::Mismatch(format!(
            "the swarm backend reaches tenants' Grafanas over the overlay network {network} \
             only (no port is published on the nodes), so pug must run in a container on a \
             node of the swarm: run pug as a swarm service on that network \
             (deploy/swarm-stack.yml) or `docker run --network {network} \
             -v /var/run/docker.sock:/var/run/docker.sock …`; or use backend = \"docker\" on \
             this host"
        ))
    };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let id = container_id_from_mountinfo(&mountinfo).ok_or_else(not_in_container)?;
    // A container the engine does not know is not one pug can attach: the engine is another
    // machine's (docker.host), or pug runs in a container of another engine.
    match container_address(engine, &id, network).await {
        Ok(Some(address)) => return Ok(address),
        Ok(None) => {}
        Err(DockerError::Api { source, .. }) if is_not_found(&source) => {
            return Err(not_in_container())
        }
        Err(e) => return Err(e),
    }
    engine
        .docker
        .connect_network(
            network,
            NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: None,
            },
        )
        .await
        .map_err(api(format!(
            "cannot attach pug's container {} to the overlay network {network}; create it \
             with --attachable, or start pug on it",
            &id[..12]
        )))?;
    container_address(engine, &id, network)
        .await?
        .ok_or_else(|| {
            DockerError::Mismatch(format!(
                "pug's container {} was attached to {network} but has no address there",
                &id[..12]
            ))
        })
}

/// The IPv4 address of container `id` on `network`, when it is attached.
async fn container_address(
    engine: &Engine,
    id: &str,
    network: &str,
) -> Result<Option<String>, DockerError> {
    let container = engine
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
        .map_err(api(format!(
            "cannot inspect pug's own container {}; is docker.host the engine pug runs on?",
            &id[..12.min(id.len())]
        )))?;
    Ok(container
        .network_settings
        .and_then(|s| s.networks)
        .and_then(|mut n| n.remove(network))
        .and_then(|e| e.ip_address)
        .filter(|ip| !ip.is_empty()))
}

/// Task id → the task's address on `network`, for every task on it that this node knows of
/// (a node that is attached to an overlay learns all of its endpoints).
pub(crate) async fn task_addresses(
    engine: &Engine,
    network: &str,
) -> Result<HashMap<String, String>, DockerError> {
    let inspected = engine
        .docker
        .inspect_network(
            network,
            Some(InspectNetworkOptions {
                verbose: true,
                scope: Some("swarm".into()),
            }),
        )
        .await
        .map_err(api(format!("cannot inspect network {network}")))?;
    Ok(addresses_of(inspected.services.unwrap_or_default()))
}

/// Task id → address, from a verbose inspection's `Services` (task names are
/// `<service>.<slot>.<task id>`; endpoint addresses may carry a prefix length).
fn addresses_of(services: HashMap<String, serde_json::Value>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (_, value) in services {
        let Ok(info) = serde_json::from_value::<ServiceInfo>(value) else {
            continue;
        };
        for task in info.tasks.unwrap_or_default() {
            let (Some(name), Some(ip)) = (task.name, task.endpoint_ip) else {
                continue;
            };
            let Some(id) = name.rsplit('.').next().filter(|id| !id.is_empty()) else {
                continue;
            };
            let ip = ip.split('/').next().unwrap_or_default();
            if !ip.is_empty() {
                out.insert(id.to_owned(), ip.to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c1b2a9d8e7f60112233445566778899aabbccddeeff00112233445566aabb";

    #[test]
    fn the_container_id_comes_from_the_files_docker_mounts_in() {
        let line = |root: &str, point: &str| {
            format!("1520 1496 254:1 {root} {point} rw,relatime - ext4 /dev/vda rw\n")
        };
        let docker = format!("/var/lib/docker/containers/{ID}");
        let cases: Vec<(String, Option<&str>)> = vec![
            // Outside a container: no such mounts.
            (
                "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n".into(),
                None,
            ),
            (
                line(&format!("{docker}/hostname"), "/etc/hostname"),
                Some(ID),
            ),
            (
                line(&format!("{docker}/resolv.conf"), "/etc/resolv.conf"),
                Some(ID),
            ),
            // A data root elsewhere (`--data-root /srv/docker`).
            (
                line(&format!("/srv/docker/containers/{ID}/hosts"), "/etc/hosts"),
                Some(ID),
            ),
            // The same path mounted somewhere else is not this container's own file.
            (line(&format!("{docker}/hostname"), "/mnt/hostname"), None),
            // Not an id.
            (
                line("/var/lib/docker/containers/abc/hostname", "/etc/hostname"),
                None,
            ),
        ];
        for (mountinfo, want) in cases {
            assert_eq!(
                container_id_from_mountinfo(&mountinfo).as_deref(),
                want,
                "{mountinfo}"
            );
        }
    }

    #[test]
    fn task_addresses_are_keyed_by_task_id_without_prefix_length() {
        let services = HashMap::from([
            (
                "pug-acme".to_owned(),
                serde_json::json!({
                    "VIP": "",
                    "Tasks": [
                        {"Name": "pug-acme.1.k3j4h5", "EndpointIP": "10.0.1.5", "Info": {}},
                        {"Name": "pug-acme.2.m9n8b7", "EndpointIP": "10.0.1.6/24"},
                        {"Name": "pug-acme.3.", "EndpointIP": "10.0.1.7"},
                        {"Name": "pug-acme.4.x1", "EndpointIP": ""},
                        {"EndpointIP": "10.0.1.8"}
                    ]
                }),
            ),
            ("broken".to_owned(), serde_json::json!("not an object")),
        ]);
        let got = addresses_of(services);
        assert_eq!(
            got,
            HashMap::from([
                ("k3j4h5".to_owned(), "10.0.1.5".to_owned()),
                ("m9n8b7".to_owned(), "10.0.1.6".to_owned()),
            ])
        );
    }
}

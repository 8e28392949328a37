//! The networks tenants' Grafanas join, shared by both backends.
//!
//! Owns: creating pug's network when missing (a bridge for the docker backend, an attachable
//! overlay for the swarm backend), refusing one of the same name with another driver, and
//! reading a network's gateway address (where connections from the host arrive from, so the
//! backends' default auth-proxy whitelist).
//!
//! Must not: remove networks (an operator's or another pug's tenants may use them), or decide
//! the whitelist (the backends do).

use std::collections::HashMap;

use bollard::models::{NetworkCreateRequest, NetworkInspect};
use bollard::query_parameters::InspectNetworkOptions;

use crate::engine::{api, is_conflict, is_not_found, DockerError, Engine};
use crate::LABEL_MANAGED;

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
    Ok(gateway(network))
}

/// The first gateway of a network's address configurations.
fn gateway(network: NetworkInspect) -> Option<String> {
    network
        .ipam
        .and_then(|i| i.config)
        .and_then(|c| c.into_iter().find_map(|c| c.gateway))
}

#[cfg(test)]
mod tests {
    use bollard::models::{Ipam, IpamConfig};

    use super::*;

    #[test]
    fn the_gateway_is_the_first_configuration_that_has_one() {
        let config = |gateway: Option<&str>| IpamConfig {
            gateway: gateway.map(str::to_owned),
            ..Default::default()
        };
        let cases: &[(Option<Vec<IpamConfig>>, Option<&str>)] = &[
            (None, None),
            (Some(vec![]), None),
            (Some(vec![config(None)]), None),
            (Some(vec![config(Some("172.18.0.1"))]), Some("172.18.0.1")),
            (
                Some(vec![
                    config(None),
                    config(Some("10.0.0.1")),
                    config(Some("fd00::1")),
                ]),
                Some("10.0.0.1"),
            ),
        ];
        for (configs, want) in cases {
            let network = NetworkInspect {
                ipam: Some(Ipam {
                    config: configs.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            assert_eq!(gateway(network).as_deref(), *want, "{configs:?}");
        }
        assert_eq!(gateway(NetworkInspect::default()), None);
    }
}

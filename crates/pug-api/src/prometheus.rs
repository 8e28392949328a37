//! `GET /api/v1/prometheus/targets`: Prometheus HTTP service discovery for the whole fleet.
//!
//! One `http_sd_configs` entry pointed here (with a read-only token) makes Prometheus scrape
//! pug itself and every ready tenant Grafana. Labels are the contract of
//! `deploy/prometheus/README.md`: `role` (`pug` for this process, `grafana` for an instance),
//! and `tenant`, `replica`, `version`, `backend` for instances.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::Json;
use pug_orchestrator::InstanceState;
use serde::{Deserialize, Serialize};

use crate::{ApiError, ApiState};

/// One group of the HTTP SD format.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Every pug role and every ready tenant instance, in Prometheus' HTTP SD format.
#[utoipa::path(get, path = "/api/v1/prometheus/targets",
    responses((status = 200, body = [TargetGroup])))]
pub(crate) async fn targets(
    State(state): State<ApiState>,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let mut groups = vec![TargetGroup {
        targets: vec![self_address(&state)],
        labels: BTreeMap::from([("role".to_owned(), "pug".to_owned())]),
    }];
    if let Some(renderer) = &state.renderer_address {
        groups.push(TargetGroup {
            targets: vec![renderer.clone()],
            labels: BTreeMap::from([("role".to_owned(), "renderer".to_owned())]),
        });
    }
    let tenants: HashMap<String, pug_types::Tenant> = state
        .store
        .tenants()
        .await?
        .into_iter()
        .map(|t| (t.id.to_string(), t))
        .collect();
    let instances = state.orchestrator.all_instances().await.map_err(|e| {
        ApiError::Unavailable(format!(
            "cannot list instances: {}",
            pug_orchestrator::error_chain(&e)
        ))
    })?;
    for instance in instances {
        let Some(tenant) = tenants.get(instance.tenant.as_str()) else {
            continue;
        };
        let ready = instance.state == InstanceState::Running
            && tenant.status.endpoints.contains(&instance.endpoint);
        if !ready {
            continue;
        }
        groups.push(TargetGroup {
            targets: vec![instance.endpoint.clone()],
            labels: BTreeMap::from([
                ("role".to_owned(), "grafana".to_owned()),
                ("tenant".to_owned(), instance.tenant.to_string()),
                ("replica".to_owned(), instance.replica.to_string()),
                ("version".to_owned(), tenant.spec.version.to_string()),
                ("backend".to_owned(), state.orchestrator.name().to_owned()),
            ]),
        });
    }
    Ok(Json(groups))
}

/// Where Prometheus reaches this pug: its listen address, or the public URL's authority when
/// pug listens on every interface.
fn self_address(state: &ApiState) -> String {
    let listen = state.config.listen;
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let public = state.config.public_url();
    let authority = public
        .split("://")
        .nth(1)
        .unwrap_or(&public)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    if authority.is_empty() {
        listen.to_string()
    } else {
        authority
    }
}

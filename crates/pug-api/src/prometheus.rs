//! Prometheus: HTTP service discovery for the whole fleet (`GET /api/v1/prometheus/targets`),
//! and scrapes through pug (`GET /api/v1/prometheus/scrape/…`, in [`scrape`]).
//!
//! One `http_sd_configs` entry pointed here (with a read-only token) makes Prometheus scrape
//! pug itself and every ready tenant Grafana. Labels are the contract of
//! `deploy/prometheus/README.md`: `role` (`pug` for this process, `renderer` for its renderer,
//! `grafana` for an instance), and `tenant`, `replica`, `version`, `backend` for instances.
//!
//! Two ways to reach the targets, chosen by whoever configures Prometheus, because it is
//! Prometheus' place in the network that decides (the same pug can serve a Prometheus of each
//! kind at once):
//! - `via=direct` (the default): each target is the instance's own `host:port` (and the
//!   renderer's). Prometheus must be on the tenants' network, where every tenant's Grafana
//!   can reach it too, and so read every tenant's metrics through a Prometheus datasource.
//! - `via=pug` (`…/targets?via=pug`): every target is pug itself, at the address the discovery
//!   request was sent to (its `Host`: where this Prometheus reaches pug), with
//!   `__metrics_path__` set to the scrape route of the instance
//!   (`/api/v1/prometheus/scrape/<tenant>/<replica>`) or of the renderer
//!   (`/api/v1/prometheus/scrape/renderer`); the other labels are the same. Prometheus then
//!   needs no route to the tenants' network, and sends its token to pug on every scrape (pug
//!   never passes it on). A job's `scheme: https` applies when pug sits behind TLS.
//!
//! Must not: with `via=pug`, hand out any address but pug's own or any metrics path but a
//! scrape route (never an instance's address); fetch anything itself ([`scrape`] does, and only
//! `/metrics`).

pub(crate) mod scrape;

use std::collections::{BTreeMap, HashMap};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Uri};
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

/// How Prometheus reaches the targets it discovers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Each target's own address (Prometheus on the tenants' network).
    #[default]
    Direct,
    /// pug's scrape routes, at the address this request was sent to.
    Pug,
}

/// The query of `GET /api/v1/prometheus/targets`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TargetsQuery {
    /// `direct` (default): instances' own addresses; `pug`: every target is pug, with
    /// `__metrics_path__` naming the scrape route of the instance.
    #[serde(default)]
    pub via: Via,
}

/// The path of the scrape route of one tenant instance.
pub fn scrape_path(tenant: &str, replica: u32) -> String {
    format!("/api/v1/prometheus/scrape/{tenant}/{replica}")
}

/// The path of the scrape route of this pug's renderer.
pub const RENDERER_SCRAPE_PATH: &str = "/api/v1/prometheus/scrape/renderer";

/// Every pug role and every ready tenant instance, in Prometheus' HTTP SD format.
#[utoipa::path(get, path = "/api/v1/prometheus/targets", params(TargetsQuery),
    responses((status = 200, body = [TargetGroup]), (status = 400, body = crate::ErrorBody)))]
pub(crate) async fn targets(
    State(state): State<ApiState>,
    query: Result<Query<TargetsQuery>, QueryRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let Query(query) = query?;
    let pug = match query.via {
        Via::Direct => self_address(&state),
        Via::Pug => requested_authority(&uri, &headers).unwrap_or_else(|| self_address(&state)),
    };
    let through_pug = |path: String, mut labels: BTreeMap<String, String>| {
        labels.insert("__metrics_path__".to_owned(), path);
        TargetGroup {
            targets: vec![pug.clone()],
            labels,
        }
    };
    let role = |role: &str| BTreeMap::from([("role".to_owned(), role.to_owned())]);
    let mut groups = vec![TargetGroup {
        targets: vec![pug.clone()],
        labels: role("pug"),
    }];
    if let Some(renderer) = &state.renderer_address {
        groups.push(match query.via {
            Via::Direct => TargetGroup {
                targets: vec![renderer.clone()],
                labels: role("renderer"),
            },
            Via::Pug => through_pug(RENDERER_SCRAPE_PATH.to_owned(), role("renderer")),
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
        let labels = BTreeMap::from([
            ("role".to_owned(), "grafana".to_owned()),
            ("tenant".to_owned(), instance.tenant.to_string()),
            ("replica".to_owned(), instance.replica.to_string()),
            ("version".to_owned(), tenant.spec.version.to_string()),
            ("backend".to_owned(), state.orchestrator.name().to_owned()),
        ]);
        groups.push(match query.via {
            Via::Direct => TargetGroup {
                targets: vec![instance.endpoint.clone()],
                labels,
            },
            Via::Pug => through_pug(
                scrape_path(instance.tenant.as_str(), instance.replica),
                labels,
            ),
        });
    }
    Ok(Json(groups))
}

/// The `host[:port]` this request was addressed to (HTTP/2's `:authority`, else `Host`), if it
/// is a plain authority (no user info): where the caller reaches this pug.
fn requested_authority(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let authority = match uri.authority() {
        Some(a) => a.clone(),
        None => headers
            .get(header::HOST)?
            .to_str()
            .ok()?
            .parse::<axum::http::uri::Authority>()
            .ok()?,
    };
    let text = authority.as_str();
    (!text.is_empty() && !text.contains('@')).then(|| text.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_requested_authority_is_the_host_the_request_named() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().unwrap());
            requested_authority(&Uri::from_static("/api/v1/prometheus/targets"), &headers)
        };
        assert_eq!(host("pug:8080").as_deref(), Some("pug:8080"));
        assert_eq!(host("[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(host("pug.example.com").as_deref(), Some("pug.example.com"));
        assert_eq!(host("user@evil:80"), None);
        assert_eq!(host("a b"), None);
        assert_eq!(host(""), None);
        let h2 = Uri::from_static("http://pug:9000/api/v1/prometheus/targets");
        assert_eq!(
            requested_authority(&h2, &HeaderMap::new()).as_deref(),
            Some("pug:9000")
        );
        assert_eq!(
            requested_authority(&Uri::from_static("/x"), &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn scrape_paths_name_the_instance() {
        assert_eq!(scrape_path("acme", 2), "/api/v1/prometheus/scrape/acme/2");
        assert!(RENDERER_SCRAPE_PATH.starts_with("/api/v1/prometheus/scrape/"));
    }
}

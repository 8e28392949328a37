//! pug's REST API.
//!
//! Owns: the HTTP surface under `/api/v1` (tenants, their actions and events, fleet status, API
//! tokens), its OpenAPI document at `/api/v1/openapi.json`, bearer-token authentication, the
//! validation of every request (bad input is a 4xx with `{"error", "field"}` and changes
//! nothing), Prometheus' service discovery and scrapes through pug (`prometheus`, behind a
//! read or admin token: the only requests pug sends to an instance for a caller, and only
//! ever to its `/metrics`), `/metrics` (behind a read or admin token: it names every tenant),
//! `/healthz` (open: the process answers) and `/readyz` (open: 503 while this pug cannot serve,
//! its store unreachable or its controller unable to hold a lease), and the swarm renderer
//! service's token table (`renderer`: digests only, behind that service's own credential).
//!
//! Must not: reconcile. A request records what is wanted in the store and wakes the controller;
//! the controller does the work. Handlers never return a secret, except a token at the one
//! moment it is created.

#![forbid(unsafe_code)]

mod auth;
mod error;
mod prometheus;
pub mod renderer;
pub mod swarm;
mod tenants;
mod tokens;
mod users;

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use pug_controller::Controller;
use pug_orchestrator::Orchestrator;
use pug_store::Store;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

pub use error::{ApiError, ErrorBody};
pub use tenants::{CreateTenant, DatasourceInput, TenantDetail, UpdateTenant, UpgradeTenant};
pub use tokens::{parse_expires_in, CreatedToken, NewToken, TokenInfo};
pub use users::{EmbedKey, Grant, NewEmbedKey, NewUser, UserInfo};

/// Everything handlers need.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub controller: Controller,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub config: Arc<pug_config::Config>,
    pub registry: Arc<Registry>,
    /// `host:port` of the renderer `pug serve` runs, if it runs one (a scrape target).
    pub renderer_address: Option<String>,
    /// The roles this pug runs (`api`, `gateway`, `controller`, `renderer`), for `/readyz` and
    /// `/healthz/{role}`.
    pub roles: Vec<String>,
    /// Where `GET /api/v1/swarm` reads the swarm (`pug serve` on the swarm backend: its
    /// observer); `None` on the other backends.
    pub swarm: Option<Arc<dyn swarm::SwarmSource>>,
    /// The swarm renderer service's token table (`GET /api/v1/renderer/tenants`); `None`
    /// when pug runs no renderer service.
    pub renderer_tenants: Option<Arc<dyn renderer::RendererTableSource>>,
}

/// The roles a pug can run.
pub const ROLES: [&str; 4] = ["api", "gateway", "controller", "renderer"];

/// `/healthz`, `/healthz/{role}` and `/readyz` alone: what a pug without the API role serves.
pub fn health_router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "Ok" }))
        .route("/healthz/{role}", get(role_health))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// 200 when `role` runs in this pug and can serve (the controller: its heartbeat reaches the
/// store); 503 when it runs and cannot; 404 when it does not run here or is no role.
async fn role_health(
    State(state): State<ApiState>,
    axum::extract::Path(role): axum::extract::Path<String>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    use axum::http::StatusCode;
    if !ROLES.contains(&role.as_str()) {
        let error = format!("no role {role}; roles are {}", ROLES.join(", "));
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": error })),
        );
    }
    if !state.roles.contains(&role) {
        let error = format!(
            "this pug does not run the {role} role (it runs {}; --role / PUG_ROLES)",
            state.roles.join(", ")
        );
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": error })),
        );
    }
    if role == "controller" && !state.controller.ready() {
        let body = serde_json::json!({ "role": role, "ok": false, "error": "no lease possible: the store has not answered the heartbeat" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({ "role": role, "ok": true })),
    )
}

/// The API's routes (`/api/v1/*`, `/metrics`, `/healthz`).
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/tenants/{id}",
            get(tenants::show)
                .patch(tenants::update)
                .delete(tenants::delete),
        )
        .route("/tenants/{id}/upgrade", post(tenants::upgrade))
        .route("/tenants/{id}/suspend", post(tenants::suspend))
        .route("/tenants/{id}/resume", post(tenants::resume))
        .route("/tenants/{id}/wake", post(tenants::wake))
        .route("/tenants/{id}/events", get(tenants::events))
        .route("/status", get(status))
        .route("/swarm", get(swarm::status))
        .route("/prometheus/targets", get(prometheus::targets))
        .route(
            "/prometheus/scrape/{tenant}/{replica}",
            get(prometheus::scrape::scrape_instance),
        )
        .route(
            "/prometheus/scrape/renderer",
            get(prometheus::scrape::scrape_renderer),
        )
        // Every other path below scrape/ is a JSON 404 that names the routes.
        .route(
            "/prometheus/scrape/{tenant}",
            get(prometheus::scrape::no_scrape_route),
        )
        .route(
            "/prometheus/scrape/{tenant}/{replica}/{*rest}",
            get(prometheus::scrape::no_scrape_route),
        )
        .route("/tokens", get(tokens::list).post(tokens::create))
        .route("/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/users", get(users::list_users).post(users::create_user))
        .route("/users/{name}", axum::routing::delete(users::delete_user))
        .route(
            "/users/{name}/tenants/{tenant}",
            axum::routing::put(users::grant).delete(users::revoke),
        )
        .route(
            "/embed-keys",
            get(users::list_embed_keys).post(users::create_embed_key),
        )
        .route(
            "/embed-keys/{id}",
            axum::routing::delete(users::delete_embed_key),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .route(
            "/renderer/tenants",
            get(renderer::renderer_tenants).route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                auth::require_renderer,
            )),
        )
        .route(
            "/renderer/activity",
            axum::routing::post(renderer::renderer_activity).route_layer(
                axum::middleware::from_fn_with_state(state.clone(), auth::require_renderer),
            ),
        )
        .route("/openapi.json", get(openapi));
    // /metrics names every tenant and its traffic: it takes a token (read is enough, which is
    // what Prometheus' `authorization` scrape setting sends) on the one public port, rather
    // than a listener of its own, so a deployment keeps one port to expose and to secure.
    let metrics = Router::new().route("/metrics", get(metrics)).route_layer(
        axum::middleware::from_fn_with_state(state.clone(), auth::require_token),
    );
    Router::new()
        .nest("/api/v1", v1)
        .merge(metrics)
        .with_state(state.clone())
        .merge(health_router(state))
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "pug", description = "A Grafana for every tenant: the pug REST API."),
    paths(
        tenants::list, tenants::create, tenants::show, tenants::update, tenants::delete,
        tenants::upgrade, tenants::suspend, tenants::resume, tenants::wake, tenants::events, status,
        tokens::create, tokens::list, tokens::revoke,
        prometheus::targets, prometheus::scrape::scrape_instance,
        prometheus::scrape::scrape_renderer,
        swarm::status, renderer::renderer_tenants, renderer::renderer_activity,
        users::create_user, users::list_users, users::delete_user, users::grant, users::revoke,
        users::create_embed_key, users::list_embed_keys, users::delete_embed_key
    ),
    components(schemas(
        pug_types::Tenant, pug_types::TenantSpec, pug_types::TenantStatus, pug_types::Phase,
        pug_types::DesiredState, pug_types::Event, pug_types::Overrides, ErrorBody,
        CreateTenant, UpdateTenant, UpgradeTenant, TenantDetail, DatasourceInput,
        pug_types::DatasourceSpec, pug_types::DashboardSpec, FleetStatus, NewToken, CreatedToken,
        TokenInfo, pug_types::RendererTable, pug_types::RendererGrant, pug_types::RendererName,
        pug_types::RendererActivity, pug_types::ActivityRecorded,
        prometheus::TargetGroup, prometheus::Via,
        users::NewUser, users::UserInfo, users::Grant, users::NewEmbedKey, users::EmbedKey
    )),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, pug_metrics::CONTENT_TYPE)],
        pug_metrics::encode(&state.registry),
    )
}

/// The fleet at a glance.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetStatus {
    /// Tenants by phase.
    pub tenants_by_phase: std::collections::BTreeMap<String, u64>,
    pub tenants_total: u64,
    /// Tenants waiting for a reconcile.
    pub queue_depth: i64,
    /// The orchestrator backend: process, docker or swarm.
    pub backend: String,
    /// The store: sqlite or postgres.
    pub store: String,
    /// pug's version.
    pub version: String,
}

/// `/readyz`: 200 while this pug can serve; 503 while its store does not answer within 2 s or its
/// controller's heartbeat has not reached the store for a lease (it cannot hold a lease, and
/// has stopped acting). The body says which.
async fn readyz(
    State(state): State<ApiState>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let store = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let runs_controller = state.roles.iter().any(|r| r == "controller");
    let controller = !runs_controller || state.controller.ready();
    let code = if store && controller {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool, bad: &str| if ok { "ok".to_owned() } else { bad.to_owned() };
    let body = serde_json::json!({
        "ready": store && controller,
        "store": word(store, "unreachable"),
        "controller": if runs_controller { word(controller, "no lease possible (the store has not answered its heartbeat)") } else { "not run here".to_owned() },
    });
    (code, Json(body))
}

/// Fleet status: tenants by phase, queue depth, backend.
#[utoipa::path(get, path = "/api/v1/status", responses((status = 200, body = FleetStatus)))]
async fn status(State(state): State<ApiState>) -> Result<Json<FleetStatus>, ApiError> {
    let tenants = state.store.tenants().await?;
    let mut by_phase: std::collections::BTreeMap<String, u64> = pug_types::Phase::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), 0))
        .collect();
    for t in &tenants {
        *by_phase
            .entry(t.status.phase.as_str().to_owned())
            .or_default() += 1;
    }
    Ok(Json(FleetStatus {
        tenants_by_phase: by_phase,
        tenants_total: tenants.len() as u64,
        queue_depth: state.store.queue_depth().await?,
        backend: state.orchestrator.name().to_owned(),
        store: state.store.backend_name().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }))
}

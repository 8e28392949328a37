//! `/api/v1/tenants`: create, list, show, update, delete, upgrade, suspend, resume, wake, events.

use std::collections::BTreeMap;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use pug_store::{generate_secret, secret};
use pug_types::{
    check_display_name, DashboardSpec, DesiredState, Event, GrafanaVersion, InvalidInput, Labels,
    Overrides, Replicas, Tenant, TenantId, TenantSpec,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ApiError, ApiState, ErrorBody};

mod provisioning;

use provisioning::check_provisioning;
pub use provisioning::DatasourceInput;

/// A new tenant.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// A DNS label: `[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?`.
    pub id: String,
    /// The Grafana version, e.g. `11.3.0`.
    pub version: String,
    /// Replicas (default 1; more than 1 needs `grafana_database.url`).
    #[serde(default)]
    pub replicas: Option<u32>,
    #[serde(default)]
    pub display_name: Option<String>,
    /// grafana.ini overrides as `section.key=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Datasources to provision into the tenant's Grafana.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasources: Vec<DatasourceInput>,
    /// Dashboards to provision into the tenant's Grafana.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dashboards: Vec<DashboardSpec>,
    /// Seconds without activity after which the tenant sleeps until its next request; 0:
    /// never. Absent: the fleet default (`controller.idle_timeout_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

/// Changes to a tenant; absent fields stay as they are.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// grafana.ini overrides to add or change, as `section.key=value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// grafana.ini overrides to remove, as `section.key`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
    /// Replaces the provisioned datasources (secure values must be given again).
    #[serde(default, skip_serializing)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub datasources: Option<Vec<DatasourceInput>>,
    /// Replaces the provisioned dashboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboards: Option<Vec<DashboardSpec>>,
    /// The idle timeout in seconds (0: never sleeps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// Refuse the change if the tenant's generation is not this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_generation: Option<i64>,
}

/// An upgrade.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeTenant {
    /// The new Grafana version; never lower than the one running (Grafana's database
    /// migrations are forward-only).
    pub version: String,
}

/// A tenant with its recent events. Secrets are never part of it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TenantDetail {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// The tenant's public URL.
    pub url: String,
    /// Recent events (omitted in listings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Event>,
    /// When it was last used (a request through the gateway, an open WebSocket, a render of
    /// its pages), ms since the Unix epoch (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity_ms: Option<i64>,
    /// The idle timeout that applies, in seconds, its own or the fleet's (0: never sleeps).
    #[serde(default)]
    pub idle_timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct DeleteQuery {
    /// Also drop the tenant's PostgreSQL database and role.
    #[serde(default)]
    purge: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    #[serde(default = "default_limit")]
    limit: i64,
}

/// Whether the operator allows values Grafana expands (`controller.allow_setting_expansion`).
fn allow_expansion(state: &ApiState) -> bool {
    state.config.controller.allow_setting_expansion
}

fn default_limit() -> i64 {
    50
}

pub(crate) fn tenant_id(raw: &str) -> Result<TenantId, ApiError> {
    // An id that is not a DNS label cannot exist, so it is "not found", not "invalid".
    TenantId::parse(raw).map_err(|_| ApiError::NotFound(raw.to_owned()))
}

async fn load(state: &ApiState, id: &TenantId) -> Result<Tenant, ApiError> {
    state
        .store
        .tenant(id)
        .await?
        .filter(|t| t.spec.desired_state != DesiredState::Deleted)
        .ok_or_else(|| ApiError::NotFound(id.to_string()))
}

/// Validates a version against the configuration and the orchestrator.
async fn check_version(state: &ApiState, raw: &str) -> Result<GrafanaVersion, ApiError> {
    let version = GrafanaVersion::parse(raw)?;
    let allowed = &state.config.grafana.allowed_versions;
    if !allowed.is_empty() && !allowed.iter().any(|a| a == &version.to_string()) {
        return Err(InvalidInput::new(
            "version",
            format!(
                "Grafana {version} is not in grafana.allowed_versions ({})",
                allowed.join(", ")
            ),
        )
        .into());
    }
    state
        .orchestrator
        .check_version(&version)
        .await
        .map_err(|e| InvalidInput::new("version", pug_orchestrator::error_chain(&e)))?;
    Ok(version)
}

/// The replicas asked for: a valid count ([`Replicas::new`]), and more than one only with a
/// shared database (a rule of this fleet's configuration, so checked here).
fn check_replicas(state: &ApiState, replicas: u32) -> Result<Replicas, ApiError> {
    let replicas = Replicas::new(replicas)?;
    if replicas.get() > 1 && state.config.grafana_database.url.is_empty() {
        return Err(InvalidInput::new(
            "replicas",
            "more than one replica needs a shared database: Grafana's SQLite database is \
             single-node; set grafana_database.url to a PostgreSQL server",
        )
        .into());
    }
    Ok(replicas)
}

fn check_idle_timeout(secs: u64) -> Result<u64, ApiError> {
    if secs > pug_types::MAX_DURATION_SECS {
        return Err(InvalidInput::new(
            "idle_timeout_secs",
            format!(
                "idle_timeout_secs {secs} is longer than a year ({}); use 0 for never",
                pug_types::MAX_DURATION_SECS
            ),
        )
        .into());
    }
    Ok(secs)
}

fn detail(state: &ApiState, tenant: Tenant, events: Vec<Event>, last: Option<i64>) -> TenantDetail {
    TenantDetail {
        url: state.config.tenant_url(tenant.id.as_str()),
        idle_timeout_secs: tenant
            .spec
            .idle_timeout(state.config.controller.idle_timeout_secs),
        tenant,
        events,
        last_activity_ms: last,
    }
}

/// Lists every tenant.
#[utoipa::path(get, path = "/api/v1/tenants", responses((status = 200, body = [TenantDetail])))]
pub(crate) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<TenantDetail>>, ApiError> {
    let tenants = state.store.tenants().await?;
    let last = state.store.last_activities().await?;
    Ok(Json(
        tenants
            .into_iter()
            .map(|tenant| {
                let l = last.get(&tenant.id).copied();
                detail(&state, tenant, Vec::new(), l)
            })
            .collect(),
    ))
}

/// Creates a tenant. It returns at once; the tenant converges in the background.
#[utoipa::path(post, path = "/api/v1/tenants", request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn create(
    State(state): State<ApiState>,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let Json(req) = body?;
    let id = TenantId::parse(&req.id)?;
    let idle_timeout_secs = req.idle_timeout_secs.map(check_idle_timeout).transpose()?;
    let replicas = check_replicas(&state, req.replicas.unwrap_or(1))?;
    let labels = Labels::from_user(req.labels)?;
    let mut overrides = Overrides::default();
    for assignment in &req.set {
        overrides.set_with(assignment, allow_expansion(&state))?;
    }
    let display_name = req.display_name.unwrap_or_else(|| id.to_string());
    check_display_name(&display_name)?;
    if state.store.tenant(&id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "tenant {id} already exists; pick another id or delete it first"
        )));
    }
    let (datasources, dashboards, provisioned_secrets) =
        check_provisioning(req.datasources, req.dashboards, allow_expansion(&state))?;
    let version = check_version(&state, &req.version).await?;
    let spec = TenantSpec {
        display_name,
        version,
        replicas,
        desired_state: DesiredState::Active,
        overrides,
        labels,
        datasources,
        dashboards,
        idle_timeout_secs,
    };
    let mut secrets = vec![
        (secret::ADMIN_PASSWORD, generate_secret()),
        (secret::SECRET_KEY, generate_secret()),
        (secret::DATABASE_PASSWORD, generate_secret()),
        (secret::RENDERER_TOKEN, generate_secret()),
    ];
    for (name, value) in &provisioned_secrets {
        secrets.push((name.as_str(), value.clone()));
    }
    let tenant = state.store.create_tenant(&id, &spec, &secrets).await?;
    state.controller.wake();
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Shows a tenant: spec, status, URL and recent events.
#[utoipa::path(get, path = "/api/v1/tenants/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TenantDetail), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<Json<TenantDetail>, ApiError> {
    let id = tenant_id(&raw)?;
    let tenant = state
        .store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    let events = state.store.events(&id, 20).await?;
    let last = state.store.activity(&id).await?.last_activity_ms;
    Ok(Json(detail(&state, tenant, events, last)))
}

/// Changes a tenant's name, replicas or grafana.ini overrides (a rolling restart follows).
#[utoipa::path(patch, path = "/api/v1/tenants/{id}", params(("id" = String, Path)), request_body = UpdateTenant,
    responses((status = 200, body = Tenant), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn update(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    body: Result<Json<UpdateTenant>, JsonRejection>,
) -> Result<Json<Tenant>, ApiError> {
    let id = tenant_id(&raw)?;
    let Json(req) = body?;
    let tenant = load(&state, &id).await?;
    let mut spec = tenant.spec.clone();
    let mut changes = Vec::new();
    if let Some(name) = req.display_name {
        check_display_name(&name)?;
        changes.push(format!("display name {name:?}"));
        spec.display_name = name;
    }
    if let Some(secs) = req.idle_timeout_secs {
        let secs = check_idle_timeout(secs)?;
        changes.push(format!(
            "idle timeout {}",
            pug_types::format_duration_secs(secs)
        ));
        spec.idle_timeout_secs = Some(secs);
    }
    if let Some(replicas) = req.replicas {
        let replicas = check_replicas(&state, replicas)?;
        changes.push(format!("replicas {} → {replicas}", spec.replicas));
        spec.replicas = replicas;
    }
    let mut overrides = Overrides::default();
    for (section, key, value) in spec.overrides.iter() {
        let path = format!("{section}.{key}");
        if !req.unset.contains(&path) {
            overrides.insert_with(&path, value, allow_expansion(&state))?;
        }
    }
    for path in &req.unset {
        if !spec
            .overrides
            .iter()
            .any(|(s, k, _)| format!("{s}.{k}") == *path)
        {
            return Err(InvalidInput::new(
                "unset",
                format!("{path} is not overridden for this tenant"),
            )
            .into());
        }
        changes.push(format!("unset {path}"));
    }
    for assignment in &req.set {
        overrides.set_with(assignment, allow_expansion(&state))?;
        changes.push(format!(
            "set {}",
            assignment.split('=').next().unwrap_or("").trim()
        ));
    }
    spec.overrides = overrides;
    let mut new_secrets = Vec::new();
    let replace_datasources = req.datasources.is_some();
    if replace_datasources || req.dashboards.is_some() {
        let (datasources, dashboards, secrets) = check_provisioning(
            req.datasources.unwrap_or_default(),
            req.dashboards
                .clone()
                .unwrap_or_else(|| spec.dashboards.clone()),
            allow_expansion(&state),
        )?;
        if replace_datasources {
            changes.push(format!("{} datasource(s)", datasources.len()));
            spec.datasources = datasources;
            new_secrets = secrets;
        }
        if req.dashboards.is_some() {
            changes.push(format!("{} dashboard(s)", dashboards.len()));
            spec.dashboards = dashboards;
        }
    }
    if changes.is_empty() {
        return Err(ApiError::BadRequest(
            "nothing to change: give display_name, replicas, idle_timeout_secs, set or unset"
                .into(),
        ));
    }
    let message = format!("spec updated: {}", changes.join(", "));
    // Secrets first: a spec that names a secure field whose value is not stored yet would be
    // provisioned without it.
    for (name, value) in &new_secrets {
        state.store.put_secret(&id, name, value).await?;
    }
    let tenant = state
        .store
        .update_spec(
            &id,
            req.expected_generation,
            &spec,
            ("SpecUpdated", &message),
        )
        .await?;
    state.controller.wake();
    Ok(Json(tenant))
}

/// Deletes a tenant: instances stopped, data archived. With `purge=true` its PostgreSQL
/// database and role are dropped too.
#[utoipa::path(delete, path = "/api/v1/tenants/{id}", params(("id" = String, Path), ("purge" = Option<bool>, Query)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let id = tenant_id(&raw)?;
    let Query(q) = query?;
    let tenant = load(&state, &id).await?;
    let mut spec = tenant.spec.clone();
    spec.desired_state = DesiredState::Deleted;
    if q.purge {
        spec.labels.set_pug(pug_controller::PURGE_LABEL, "true");
    }
    let message = if q.purge {
        "deletion requested (purge database)"
    } else {
        "deletion requested"
    };
    let tenant = state
        .store
        .update_spec(&id, None, &spec, ("DeleteRequested", message))
        .await?;
    state.controller.wake();
    Ok((StatusCode::ACCEPTED, Json(tenant)))
}

/// Upgrades a tenant to a newer Grafana: rolling, health-gated, rolled back if the new
/// version does not become healthy.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/upgrade", params(("id" = String, Path)), request_body = UpgradeTenant,
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(crate) async fn upgrade(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    body: Result<Json<UpgradeTenant>, JsonRejection>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let id = tenant_id(&raw)?;
    let Json(req) = body?;
    let tenant = load(&state, &id).await?;
    let version = GrafanaVersion::parse(&req.version)?;
    let floor = tenant
        .status
        .running_version
        .as_deref()
        .and_then(|v| GrafanaVersion::parse(v).ok())
        .into_iter()
        .chain([tenant.spec.version.clone()])
        .max()
        .expect("at least the spec version");
    if version < floor {
        return Err(InvalidInput::new(
            "version",
            format!(
                "Grafana {version} is older than {floor}, which this tenant has run; Grafana's \
                 database migrations are forward-only, so pug does not downgrade"
            ),
        )
        .into());
    }
    if version == tenant.spec.version {
        return Err(InvalidInput::new(
            "version",
            format!("tenant {id} already runs Grafana {version}"),
        )
        .into());
    }
    let version = check_version(&state, &req.version).await?;
    let from = tenant.spec.version.clone();
    let mut spec = tenant.spec;
    spec.version = version.clone();
    let tenant = state
        .store
        .update_spec(
            &id,
            None,
            &spec,
            (
                "UpgradeRequested",
                &format!("upgrade {from} → {version} requested"),
            ),
        )
        .await?;
    state.controller.wake();
    Ok((StatusCode::ACCEPTED, Json(tenant)))
}

async fn set_desired(
    state: &ApiState,
    raw: &str,
    desired: DesiredState,
    reason: &str,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let id = tenant_id(raw)?;
    let tenant = load(state, &id).await?;
    if tenant.spec.desired_state == desired {
        return Ok((StatusCode::OK, Json(tenant)));
    }
    let mut spec = tenant.spec;
    spec.desired_state = desired;
    if desired == DesiredState::Active {
        // Resuming asks for the tenant to run: it counts as a use, so an idle timeout that
        // passed while it was suspended does not put it straight to sleep.
        state
            .store
            .record_activity(&[(id.clone(), pug_store::now_ms())])
            .await?;
    }
    let tenant = state
        .store
        .update_spec(
            &id,
            None,
            &spec,
            (reason, &format!("{} requested", reason.to_lowercase())),
        )
        .await?;
    state.controller.wake();
    Ok((StatusCode::ACCEPTED, Json(tenant)))
}

/// Stops a tenant's instances; its data, secrets and spec are kept.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/suspend", params(("id" = String, Path)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody)))]
pub(crate) async fn suspend(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    set_desired(&state, &raw, DesiredState::Suspended, "Suspend").await
}

/// Starts a suspended tenant again.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/resume", params(("id" = String, Path)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody)))]
pub(crate) async fn resume(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    set_desired(&state, &raw, DesiredState::Active, "Resume").await
}

/// Wakes a sleeping tenant now (what its next request through the gateway would do). An
/// awake tenant stays awake (its idle time starts again). Suspended or deleted tenants do not
/// wake: 409.
#[utoipa::path(post, path = "/api/v1/tenants/{id}/wake", params(("id" = String, Path)),
    responses((status = 202, body = Tenant), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn wake(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let id = tenant_id(&raw)?;
    let tenant = state
        .store
        .tenant(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(id.to_string()))?;
    match tenant.spec.desired_state {
        DesiredState::Active => {}
        DesiredState::Suspended => {
            return Err(ApiError::Conflict(format!(
                "tenant {id} is suspended, and a suspended tenant does not wake; resume it                  instead (pug tenant resume {id})"
            )))
        }
        DesiredState::Deleted => {
            return Err(ApiError::Conflict(format!(
                "tenant {id} is being deleted; it cannot wake"
            )))
        }
    }
    if !state.store.wake(&id, "api", pug_store::now_ms()).await? {
        return Err(ApiError::NotFound(id.to_string()));
    }
    state.controller.wake();
    Ok((StatusCode::ACCEPTED, Json(tenant)))
}

/// A tenant's events, oldest first (the newest `limit`).
#[utoipa::path(get, path = "/api/v1/tenants/{id}/events", params(("id" = String, Path), ("limit" = Option<i64>, Query)),
    responses((status = 200, body = [Event]), (status = 404, body = ErrorBody)))]
pub(crate) async fn events(
    State(state): State<ApiState>,
    Path(raw): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let id = tenant_id(&raw)?;
    let Query(q) = query?;
    if state.store.tenant(&id).await?.is_none() && state.store.events(&id, 1).await?.is_empty() {
        return Err(ApiError::NotFound(id.to_string()));
    }
    Ok(Json(state.store.events(&id, q.limit.clamp(1, 1000)).await?))
}

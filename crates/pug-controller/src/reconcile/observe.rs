//! What a reconcile pass reads before it decides: the desired spec of every replica (from the
//! tenant's spec, secrets and settings), what the orchestrator runs, and the health of the
//! replicas that run the desired spec.
//!
//! Owns: building [`InstanceSpec`]s and probing. Two writes happen here because the desired spec
//! is made of their results, and both are idempotent ensures: a replica's port allocation, and
//! (with shared PostgreSQL) the tenant's database, whose creation is recorded as
//! `DatabaseCreated`.
//!
//! Must not: decide anything (that is [`super::plan`]) or change what runs (that is
//! [`super::execute`]).

use futures::future::join_all;
use pug_orchestrator::settings::RenderingSettings;
use pug_orchestrator::{probe_health, DatabaseSettings, Instance, InstanceSecrets, InstanceSpec};
use pug_store::secret;
use pug_types::{EventReason, SecretString, Tenant, TenantId};

use super::plan::{wants_probe, Observed, Probed};
use crate::error::{At, Cause, Step};
use crate::{Controller, ReconcileError};

/// What the orchestrator runs for `id`, in replica order.
pub(super) async fn instances(
    c: &Controller,
    id: &TenantId,
) -> Result<Vec<Instance>, ReconcileError> {
    c.orchestrator
        .instances(id)
        .await
        .at(id, Step::ListInstances)
}

/// The first observation of an active tenant: desired specs, secrets and what runs.
pub(super) async fn active(
    c: &Controller,
    t: &Tenant,
    attempts: u32,
) -> Result<Observed, ReconcileError> {
    let (specs, secrets) = desired(c, t).await?;
    let instances = instances(c, &t.id).await?;
    let hashes = specs.iter().map(|s| c.orchestrator.spec_hash(s)).collect();
    Ok(Observed {
        specs,
        hashes,
        instances,
        secrets,
        attempts,
        waking: t.status.phase == pug_types::Phase::Sleeping,
    })
}

/// Probes, all at once, the replicas that run the desired spec after the replica step.
/// `started` are the instances that step started; they stand in for what was observed there.
pub(super) async fn health(c: &Controller, o: &Observed, started: Vec<Instance>) -> Vec<Probed> {
    let root_path = o.specs.first().map(|s| s.root_path()).unwrap_or_default();
    let mut replicas: Vec<Probed> = o
        .specs
        .iter()
        .zip(&o.hashes)
        .map(|(spec, hash)| {
            let instance = started
                .iter()
                .chain(o.instances.iter())
                .find(|i| i.replica == spec.replica)
                .cloned();
            Probed {
                replica: spec.replica,
                desired_hash: hash.clone(),
                instance,
                health: None,
            }
        })
        .collect();
    let probes = replicas.iter().map(|p| {
        let root_path = root_path.as_str();
        async move {
            match &p.instance {
                Some(i) if wants_probe(i, &p.desired_hash) => {
                    let base = c.orchestrator.probe_base(i, root_path);
                    Some(probe_health(&c.http, &base).await)
                }
                _ => None,
            }
        }
    });
    let healths = join_all(probes).await;
    for (p, h) in replicas.iter_mut().zip(healths) {
        p.health = h;
    }
    replicas
}

/// The desired spec of every replica, and the tenant's secret values (for redaction).
async fn desired(
    c: &Controller,
    t: &Tenant,
) -> Result<(Vec<InstanceSpec>, Vec<SecretString>), ReconcileError> {
    let id = &t.id;
    let read = |name: String| async move {
        let step = Step::ReadSecret(name.clone());
        c.store.secret(id, &name).await.at(id, step)
    };
    let need = |name: &'static str| async move {
        read(name.into()).await?.ok_or(ReconcileError {
            tenant: Some(id.clone()),
            step: Step::ReadSecret(name.into()),
            cause: Box::new(Cause::MissingSecret(name)),
        })
    };
    let admin_password = need(secret::ADMIN_PASSWORD).await?;
    let secret_key = need(secret::SECRET_KEY).await?;
    let renderer_token = read(secret::RENDERER_TOKEN.into()).await?;
    let mut all = vec![admin_password.clone(), secret_key.clone()];
    if let Some(token) = &renderer_token {
        all.push(token.clone());
    }
    let database = match &c.databases {
        Some(dbs) => {
            let password = need(secret::DATABASE_PASSWORD).await?;
            all.push(password.clone());
            let created = dbs
                .ensure(id, &password)
                .await
                .at(id, Step::EnsureDatabase)?;
            if created {
                let reason = EventReason::DatabaseCreated;
                c.store
                    .add_event(
                        id,
                        reason,
                        &format!(
                            "PostgreSQL database and role {} created",
                            dbs.name_of(id, &password)
                        ),
                    )
                    .await
                    .at(id, Step::RecordEvent(reason))?;
            }
            dbs.settings(id, password)
        }
        None => DatabaseSettings::Sqlite,
    };
    let mut provisioning = pug_orchestrator::Provisioning {
        datasources: Vec::new(),
        dashboards: t.spec.dashboards.clone(),
    };
    for ds in &t.spec.datasources {
        let mut secure = Vec::new();
        for field in &ds.secure_fields {
            match read(ds.secret_name(field)).await? {
                Some(value) => {
                    all.push(value.clone());
                    secure.push((field.clone(), value));
                }
                None => {
                    tracing::warn!(tenant = %id, datasource = %ds.name, field, "a secure datasource field has no stored value")
                }
            }
        }
        provisioning.datasources.push((ds.clone(), secure));
    }
    let config = &c.settings.config;
    let root_url = config.tenant_url(id.as_str());
    let serve_from_sub_path = config.gateway.mode == pug_config::GatewayMode::Path;
    let mut specs = Vec::new();
    for replica in 0..t.spec.replicas.get() {
        let port = c
            .store
            .allocate_port(
                id,
                replica,
                config.process.port_min,
                config.process.port_max,
                |p| port_is_free(&config.process.bind_address, p),
            )
            .await
            .at(id, Step::AllocatePort { replica })?;
        let rendering = c
            .settings
            .renderer_url
            .as_ref()
            .map(|server_url| RenderingSettings {
                server_url: server_url.clone(),
                // The instance's own address as the renderer reaches it: the backend's name
                // for the replica (a container's), or the process backend's bind address.
                callback_url: format!(
                    "http://{}:{port}{}",
                    c.orchestrator
                        .callback_host(id, replica)
                        .unwrap_or_else(|| config.process.bind_address.clone()),
                    if serve_from_sub_path {
                        format!("/t/{id}/")
                    } else {
                        "/".into()
                    }
                ),
            });
        specs.push(InstanceSpec {
            tenant: id.clone(),
            replica,
            version: t.spec.version.clone(),
            root_url: root_url.clone(),
            serve_from_sub_path,
            gateway: c.orchestrator.gateway_trust(),
            port,
            secrets: InstanceSecrets {
                admin_password: admin_password.clone(),
                secret_key: secret_key.clone(),
                renderer_token: renderer_token.clone(),
            },
            database: database.clone(),
            rendering,
            plugin_preinstall: config.grafana.plugin_preinstall,
            data_source_proxy_whitelist: config.grafana.data_source_proxy_whitelist.clone(),
            overrides: t.spec.overrides.clone(),
            provisioning: provisioning.clone(),
        });
    }
    Ok((specs, all))
}

/// Whether nothing listens on `addr:port` right now (a port pug never allocated may still be
/// taken by another program).
fn port_is_free(addr: &str, port: u16) -> bool {
    std::net::TcpListener::bind((addr, port)).is_ok()
}

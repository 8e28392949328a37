//! One reconcile pass of one tenant.
//!
//! A pass observes, takes at most the next step, writes the status it observed, and says when
//! it wants to look again. It never waits for an instance to become healthy: it returns
//! [`Outcome::Poll`] and looks again later, so one slow tenant never holds a worker.

use std::time::Duration;

use futures::future::join_all;
use pug_orchestrator::settings::RenderingSettings;
use pug_orchestrator::{
    probe_health, DatabaseSettings, Health, Instance, InstanceSecrets, InstanceSpec, InstanceState,
};
use pug_store::{now_ms, secret};
use pug_types::{
    DesiredState, ExposeSecret, GrafanaVersion, Phase, SecretString, Tenant, TenantId, TenantStatus,
};

use crate::{redact, Controller, ReconcileError};

/// What the queue should do after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The tenant matches its spec; look again at the next resync or change.
    Converged,
    /// Progressing (waiting for readiness, rolling); look again after this long.
    Poll(Duration),
    /// Something failed (an instance crashed); look again after an exponential backoff.
    Retry { reason: String },
}

/// Runs one pass for `id`. `attempts` is how many passes in a row ended in a retry.
pub async fn reconcile(
    c: &Controller,
    id: &TenantId,
    attempts: u32,
) -> Result<Outcome, ReconcileError> {
    let Some(tenant) = c.store.tenant(id).await? else {
        // No tenant (deleted, or never existed): nothing of it may run.
        for instance in c.orchestrator.instances(id).await? {
            c.orchestrator.remove(id, instance.replica).await?;
        }
        c.metrics.forget(id);
        return Ok(Outcome::Converged);
    };
    match tenant.spec.desired_state {
        DesiredState::Deleted => delete(c, &tenant).await,
        DesiredState::Suspended => suspend(c, &tenant).await,
        DesiredState::Active => converge(c, &tenant, attempts).await,
    }
}

async fn delete(c: &Controller, t: &Tenant) -> Result<Outcome, ReconcileError> {
    write_status(
        c,
        t,
        Phase::Deleting,
        &[],
        None,
        t.status.running_version.clone(),
    )
    .await?;
    for instance in c.orchestrator.instances(&t.id).await? {
        c.orchestrator.remove(&t.id, instance.replica).await?;
    }
    c.orchestrator.archive(&t.id).await?;
    if let Some(dbs) = &c.databases {
        if t.spec.labels.get(PURGE_LABEL).map(String::as_str) == Some("true") {
            match c.store.secret(&t.id, secret::DATABASE_PASSWORD).await? {
                Some(password) => dbs.drop(&t.id, &password).await?,
                None => {
                    tracing::warn!(tenant = %t.id, "no database password stored; no database to drop")
                }
            }
            c.store
                .add_event(
                    &t.id,
                    "DatabaseDropped",
                    "tenant database and role dropped (--purge)",
                )
                .await?;
        }
    }
    c.store
        .add_event(&t.id, "Deleted", "instances stopped, data archived")
        .await?;
    c.store.remove_tenant(&t.id).await?;
    c.metrics.forget(&t.id);
    Ok(Outcome::Converged)
}

/// The label that asks `delete` to drop the tenant's database and role too.
pub const PURGE_LABEL: &str = "pug.purge";

async fn suspend(c: &Controller, t: &Tenant) -> Result<Outcome, ReconcileError> {
    let instances = c.orchestrator.instances(&t.id).await?;
    for instance in &instances {
        c.orchestrator.remove(&t.id, instance.replica).await?;
    }
    if !instances.is_empty() {
        c.store
            .add_event(
                &t.id,
                "Suspended",
                &format!("{} instance(s) stopped; data kept", instances.len()),
            )
            .await?;
    }
    write_status(
        c,
        t,
        Phase::Suspended,
        &[],
        None,
        t.status.running_version.clone(),
    )
    .await?;
    Ok(Outcome::Converged)
}

/// One replica as observed in this pass.
struct Observed {
    spec: InstanceSpec,
    instance: Option<Instance>,
    health: Option<Health>,
}

async fn converge(c: &Controller, t: &Tenant, attempts: u32) -> Result<Outcome, ReconcileError> {
    let (specs, secrets) = instance_specs(c, t).await?;
    let secret_values: Vec<String> = secrets
        .iter()
        .map(|s| s.expose_secret().to_owned())
        .collect();
    let secret_refs: Vec<&str> = secret_values.iter().map(String::as_str).collect();
    let desired = t.spec.replicas;

    // Scale down first: replicas beyond the desired count go.
    let mut instances = c.orchestrator.instances(&t.id).await?;
    let extra: Vec<u32> = instances
        .iter()
        .filter(|i| i.replica >= desired)
        .map(|i| i.replica)
        .collect();
    for replica in &extra {
        c.orchestrator.remove(&t.id, *replica).await?;
        c.store
            .add_event(
                &t.id,
                "ReplicaRemoved",
                &format!("replica {replica} removed (scaled to {desired})"),
            )
            .await?;
    }
    if !extra.is_empty() {
        c.store.release_ports(&t.id, desired).await?;
        instances.retain(|i| i.replica < desired);
    }

    // Observe every replica; start the missing ones and restart the exited ones.
    let mut crashed: Vec<String> = Vec::new();
    let mut observed = Vec::new();
    for spec in specs {
        let instance = instances
            .iter()
            .find(|i| i.replica == spec.replica)
            .cloned();
        match &instance {
            None => {
                let started = c.orchestrator.ensure(&spec).await?;
                c.store
                    .add_event(
                        &t.id,
                        "InstanceStarted",
                        &format!(
                            "replica {} started: Grafana {} at {}",
                            spec.replica, spec.version, started.endpoint
                        ),
                    )
                    .await?;
                observed.push(Observed {
                    spec,
                    instance: Some(started),
                    health: None,
                });
            }
            Some(i)
                if matches!(i.state, InstanceState::Exited { .. })
                    && i.spec_hash != spec.hash() =>
            {
                // It ran an older spec: replacing it is an update, not a crash restart.
                let started = c.orchestrator.ensure(&spec).await?;
                c.store
                    .add_event(
                        &t.id,
                        "InstanceStarted",
                        &format!(
                            "replica {} started with the new spec: Grafana {} at {}",
                            spec.replica, spec.version, started.endpoint
                        ),
                    )
                    .await?;
                observed.push(Observed {
                    spec,
                    instance: Some(started),
                    health: None,
                });
            }
            Some(i) if matches!(i.state, InstanceState::Exited { .. }) => {
                let InstanceState::Exited { reason } = &i.state else {
                    unreachable!()
                };
                let reason = redact(reason, &secret_refs);
                crashed.push(format!("replica {} {reason}", spec.replica));
                c.metrics
                    .restarts
                    .get_or_create(&crate::metrics::TenantLabel {
                        tenant: t.id.to_string(),
                    })
                    .inc();
                let restarted = c.orchestrator.ensure(&spec).await?;
                c.store
                    .add_event(
                        &t.id,
                        "InstanceRestarted",
                        &format!("replica {} {reason}; restarted", spec.replica),
                    )
                    .await?;
                observed.push(Observed {
                    spec,
                    instance: Some(restarted),
                    health: None,
                });
            }
            Some(_) => observed.push(Observed {
                spec,
                instance,
                health: None,
            }),
        }
    }

    // Probe the running instances that run the desired spec, all at once.
    let root_path = observed
        .first()
        .map(|o| o.spec.root_path())
        .unwrap_or_default();
    let probes = observed.iter().map(|o| {
        let c = c.clone();
        let root_path = root_path.clone();
        async move {
            match &o.instance {
                Some(i) if i.state == InstanceState::Running && i.spec_hash == o.spec.hash() => {
                    let base = c.orchestrator.probe_base(i, &root_path);
                    Some(probe_health(&c.http, &base).await)
                }
                _ => None,
            }
        }
    });
    let healths = join_all(probes).await;
    for (o, h) in observed.iter_mut().zip(healths) {
        o.health = h;
    }

    let ready: Vec<&Observed> = observed
        .iter()
        .filter(|o| o.health == Some(Health::Ready))
        .collect();
    let endpoints: Vec<String> = ready
        .iter()
        .filter_map(|o| o.instance.as_ref().map(|i| i.endpoint.clone()))
        .collect();
    let outdated: Vec<&Observed> = observed
        .iter()
        .filter(|o| {
            o.instance
                .as_ref()
                .is_some_and(|i| i.state == InstanceState::Running && i.spec_hash != o.spec.hash())
        })
        .collect();
    // Current-spec replicas that are not ready yet, with how long they have had.
    let now = now_ms();
    // (replica, ms since start, why, whether it does not even answer)
    let waiting: Vec<(u32, i64, String, bool)> = observed
        .iter()
        .filter_map(|o| {
            let i = o.instance.as_ref()?;
            let age = now - i.started_at_ms;
            match &o.health {
                Some(Health::Unhealthy(m)) => Some((o.spec.replica, age, m.clone(), false)),
                Some(Health::Unreachable(m)) => Some((o.spec.replica, age, m.clone(), true)),
                _ => None,
            }
        })
        .collect();
    let timeout = c.settings.ready_timeout.as_millis() as i64;
    let timed_out: Vec<String> = waiting
        .iter()
        .filter(|(_, age, _, _)| *age > timeout)
        .map(|(replica, _, why, _)| {
            format!(
                "replica {replica} not healthy after {}s: {why}",
                c.settings.ready_timeout.as_secs()
            )
        })
        .collect();
    let crash_looping = !crashed.is_empty() && attempts + 1 >= c.settings.crash_loop_threshold;

    // An upgrade whose new version cannot become healthy goes back to the version that ran.
    let upgrading_from = t
        .status
        .running_version
        .as_deref()
        .and_then(|v| GrafanaVersion::parse(v).ok())
        .filter(|running| running != &t.spec.version);
    if let Some(previous) = &upgrading_from {
        if crash_looping || !timed_out.is_empty() {
            let why = redact(
                &crashed
                    .iter()
                    .chain(timed_out.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
                &secret_refs,
            );
            let mut spec = t.spec.clone();
            let failed = spec.version.clone();
            spec.version = previous.clone();
            let message =
                format!("upgrade to Grafana {failed} failed ({why}); rolled back to {previous}");
            c.store
                .update_spec(
                    &t.id,
                    Some(t.generation),
                    &spec,
                    ("UpgradeRolledBack", &message),
                )
                .await?;
            let mut status = t.status.clone();
            status.last_error = Some(message);
            status.updated_at_ms = now_ms();
            c.store.set_status(&t.id, &status).await?;
            return Ok(Outcome::Poll(Duration::ZERO));
        }
    }

    // Rolling replacement: one outdated replica at a time, only while the rest are healthy.
    let mut replaced = false;
    if let Some(first) = outdated.first() {
        let others_ready = observed
            .iter()
            .filter(|o| o.spec.replica != first.spec.replica)
            .all(|o| o.health == Some(Health::Ready));
        let others_outdated_only = observed.iter().all(|o| {
            o.health == Some(Health::Ready)
                || outdated.iter().any(|d| d.spec.replica == o.spec.replica)
        });
        if others_ready || (others_outdated_only && crashed.is_empty()) {
            c.orchestrator.ensure(&first.spec).await?;
            c.store
                .add_event(
                    &t.id,
                    "InstanceReplaced",
                    &format!(
                        "replica {} restarted with the new spec (Grafana {})",
                        first.spec.replica, first.spec.version
                    ),
                )
                .await?;
            replaced = true;
        }
    }

    let hung = waiting
        .iter()
        .any(|(_, age, _, unreachable)| *unreachable && *age > timeout);
    let all_ready = ready.len() as u32 == desired && outdated.is_empty() && !replaced;
    let is_upgrade = upgrading_from.is_some() || !outdated.is_empty() || replaced;
    let phase = if all_ready {
        Phase::Ready
    } else if crash_looping || (hung && ready.is_empty()) {
        // Crash-looping, or started but never answering: nothing will serve without a change.
        Phase::Failed
    } else if is_upgrade {
        Phase::Upgrading
    } else if !timed_out.is_empty() || (!ready.is_empty() && (ready.len() as u32) < desired) {
        Phase::Degraded
    } else {
        Phase::Provisioning
    };
    let last_error = if all_ready {
        None
    } else {
        let problems: Vec<String> = crashed.iter().chain(timed_out.iter()).cloned().collect();
        (!problems.is_empty()).then(|| redact(&problems.join("; "), &secret_refs))
    };
    let running_version = if all_ready {
        Some(t.spec.version.to_string())
    } else {
        t.status.running_version.clone()
    };
    write_status(c, t, phase, &endpoints, last_error, running_version).await?;

    Ok(if all_ready {
        Outcome::Converged
    } else if !crashed.is_empty() {
        Outcome::Retry {
            reason: redact(&crashed.join("; "), &secret_refs),
        }
    } else if !timed_out.is_empty() {
        // Still looking, but slowly: a stuck replica may recover by itself.
        Outcome::Poll(c.settings.readiness_poll.max(Duration::from_secs(5)))
    } else {
        Outcome::Poll(c.settings.readiness_poll)
    })
}

/// The desired spec of every replica, and the tenant's secret values (for redaction).
async fn instance_specs(
    c: &Controller,
    t: &Tenant,
) -> Result<(Vec<InstanceSpec>, Vec<SecretString>), ReconcileError> {
    let need = |name: &'static str| async move {
        c.store
            .secret(&t.id, name)
            .await?
            .ok_or(ReconcileError::MissingSecret(name))
    };
    let admin_password = need(secret::ADMIN_PASSWORD).await?;
    let secret_key = need(secret::SECRET_KEY).await?;
    let renderer_token = c.store.secret(&t.id, secret::RENDERER_TOKEN).await?;
    let mut all = vec![admin_password.clone(), secret_key.clone()];
    if let Some(token) = &renderer_token {
        all.push(token.clone());
    }
    let database = match &c.databases {
        Some(dbs) => {
            let password = need(secret::DATABASE_PASSWORD).await?;
            all.push(password.clone());
            let created = dbs.ensure(&t.id, &password).await?;
            if created {
                c.store
                    .add_event(
                        &t.id,
                        "DatabaseCreated",
                        &format!(
                            "PostgreSQL database and role {} created",
                            dbs.name_of(&t.id, &password)
                        ),
                    )
                    .await?;
            }
            dbs.settings(&t.id, password)
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
            match c.store.secret(&t.id, &ds.secret_name(field)).await? {
                Some(value) => {
                    all.push(value.clone());
                    secure.push((field.clone(), value));
                }
                None => {
                    tracing::warn!(tenant = %t.id, datasource = %ds.name, field, "a secure datasource field has no stored value")
                }
            }
        }
        provisioning.datasources.push((ds.clone(), secure));
    }
    let config = &c.settings.config;
    let root_url = config.tenant_url(t.id.as_str());
    let serve_from_sub_path = config.gateway.mode == pug_config::GatewayMode::Path;
    let mut specs = Vec::new();
    for replica in 0..t.spec.replicas {
        let port = c
            .store
            .allocate_port(
                &t.id,
                replica,
                config.process.port_min,
                config.process.port_max,
                |p| port_is_free(&config.process.bind_address, p),
            )
            .await?;
        let rendering = c
            .settings
            .renderer_url
            .as_ref()
            .map(|server_url| RenderingSettings {
                server_url: server_url.clone(),
                callback_url: format!(
                    "http://{}:{port}{}",
                    config.process.bind_address,
                    if serve_from_sub_path {
                        format!("/t/{}/", t.id)
                    } else {
                        "/".into()
                    }
                ),
            });
        specs.push(InstanceSpec {
            tenant: t.id.clone(),
            replica,
            version: t.spec.version.clone(),
            root_url: root_url.clone(),
            serve_from_sub_path,
            proxy_whitelist: c.orchestrator.gateway_source_addresses(),
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

async fn write_status(
    c: &Controller,
    t: &Tenant,
    phase: Phase,
    endpoints: &[String],
    last_error: Option<String>,
    running_version: Option<String>,
) -> Result<(), ReconcileError> {
    let desired = match t.spec.desired_state {
        DesiredState::Active => t.spec.replicas,
        _ => 0,
    };
    let status = TenantStatus {
        phase,
        ready_replicas: endpoints.len() as u32,
        endpoints: endpoints.to_vec(),
        running_version,
        observed_generation: t.generation,
        last_error,
        updated_at_ms: t.status.updated_at_ms,
    };
    c.metrics
        .observe(&t.id, phase, status.ready_replicas, desired);
    if status == t.status {
        return Ok(());
    }
    if status.phase != t.status.phase {
        let message = match &status.last_error {
            Some(e) => format!("phase {} → {}: {e}", t.status.phase, status.phase),
            None => format!("phase {} → {}", t.status.phase, status.phase),
        };
        c.store.add_event(&t.id, "PhaseChanged", &message).await?;
    }
    let status = TenantStatus {
        updated_at_ms: now_ms(),
        ..status
    };
    c.store.set_status(&t.id, &status).await?;
    Ok(())
}

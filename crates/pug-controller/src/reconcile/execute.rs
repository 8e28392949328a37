//! Carries out a plan's actions, in order, against the orchestrator, the store and the metrics.
//!
//! Owns: the mapping of each [`Action`] to its calls, and attaching the tenant and step to a
//! failure ([`ReconcileError`]). Every call is idempotent, so a pass that fails half-way is
//! finished by the next one, which plans again from what it observes.
//!
//! Must not: decide (no condition here looks at health, versions or counts; the plan did), or
//! build an event message except a start's, which names the endpoint only the orchestrator
//! knows ([`StartReason::event`]).

use pug_orchestrator::{Instance, InstanceSpec};
use pug_store::secret;
use pug_types::{EventReason, TenantId};

use super::plan::{Action, StartReason, StatusChange};
use crate::error::{At, Cause, Step};
use crate::{Controller, ReconcileError};

/// Runs `actions` for tenant `id`; `specs` are the desired replica specs that starts and
/// replacements use. Returns the instances the starts got, in the order they started.
pub(super) async fn run(
    c: &Controller,
    id: &TenantId,
    specs: &[InstanceSpec],
    actions: &[Action],
) -> Result<Vec<Instance>, ReconcileError> {
    let mut started = Vec::new();
    for action in actions {
        // Self-fencing: no action once this pug's lease of the tenant ran out.
        if !c.leases.check(id) {
            return Err(ReconcileError {
                tenant: Some(id.clone()),
                step: Step::HoldLease,
                cause: Box::new(Cause::LeaseLost),
            });
        }
        match action {
            Action::Stop { replica } => {
                let step = Step::Stop { replica: *replica };
                c.orchestrator.remove(id, *replica).await.at(id, step)?;
            }
            Action::Park { replica } => {
                let step = Step::Stop { replica: *replica };
                c.orchestrator.park(id, *replica).await.at(id, step)?;
            }
            Action::ReleasePorts { from } => {
                c.store
                    .release_ports(id, *from)
                    .await
                    .at(id, Step::ReleasePorts)?;
            }
            Action::Start { replica, reason } => {
                let spec = spec_of(id, specs, *replica)?;
                if let StartReason::Crashed { .. } = reason {
                    c.metrics
                        .restarts
                        .get_or_create(&crate::metrics::TenantLabel {
                            tenant: id.to_string(),
                        })
                        .inc();
                }
                let step = Step::Start { replica: *replica };
                let instance = c.orchestrator.ensure(spec).await.at(id, step)?;
                let (event, message) = reason.event(*replica, &spec.version, &instance.endpoint);
                record(c, id, event, &message).await?;
                started.push(instance);
            }
            Action::Replace { replica } => {
                let spec = spec_of(id, specs, *replica)?;
                let step = Step::Replace { replica: *replica };
                c.orchestrator.ensure(spec).await.at(id, step)?;
            }
            Action::RollBack {
                spec,
                generation,
                message,
            } => {
                let event = (EventReason::UpgradeRolledBack.as_str(), message.as_str());
                c.store
                    .update_spec(id, Some(*generation), spec, event)
                    .await
                    .at(id, Step::RollBack)?;
            }
            Action::Archive => c.orchestrator.archive(id).await.at(id, Step::Archive)?,
            Action::DropDatabase => drop_database(c, id).await?,
            Action::Record { reason, message } => record(c, id, *reason, message).await?,
            Action::WriteStatus(change) => write_status(c, id, change).await?,
            Action::RemoveRecord => c.store.remove_tenant(id).await.at(id, Step::RemoveRecord)?,
            Action::ForgetMetrics => c.metrics.forget(id),
            Action::FinishWake {
                requested_ms,
                took_ms,
                by,
                woke,
            } => {
                if *woke {
                    c.metrics.woke(id, *took_ms);
                    tracing::info!(tenant = %id, by = %by, took_ms, "tenant woke");
                }
                c.store
                    .finish_wake(id, *requested_ms)
                    .await
                    .at(id, Step::FinishWake)?;
            }
        }
    }
    Ok(started)
}

/// The desired spec of `replica`. The planners only name replicas `specs` holds, so a miss is
/// a planner bug; it fails the pass instead of panicking a worker.
fn spec_of<'a>(
    id: &TenantId,
    specs: &'a [InstanceSpec],
    replica: u32,
) -> Result<&'a InstanceSpec, ReconcileError> {
    specs
        .iter()
        .find(|s| s.replica == replica)
        .ok_or_else(|| ReconcileError {
            tenant: Some(id.clone()),
            step: Step::Start { replica },
            cause: Box::new(Cause::NoSpec { replica }),
        })
}

async fn record(
    c: &Controller,
    id: &TenantId,
    reason: EventReason,
    message: &str,
) -> Result<(), ReconcileError> {
    // Under a lease, only while the store still says it is this pug's: a pug that lost its
    // lease (paused past its local deadline, say) cannot write over the new owner's record.
    let written = match c.leases.fence(id) {
        Some(token) => {
            let fence = pug_store::Fence {
                owner: c.leases.owner(),
                token,
            };
            c.store.add_event_fenced(id, reason, message, fence).await
        }
        None => c.store.add_event(id, reason, message).await,
    };
    written.at(id, Step::RecordEvent(reason))
}

async fn write_status(
    c: &Controller,
    id: &TenantId,
    change: &StatusChange,
) -> Result<(), ReconcileError> {
    if let Some((phase, ready, desired)) = change.figures {
        c.metrics.observe(id, phase, ready, desired);
    }
    if let Some(message) = &change.phase_changed {
        record(c, id, EventReason::PhaseChanged, message).await?;
    }
    if let Some(status) = &change.write {
        let written = match c.leases.fence(id) {
            Some(token) => {
                let fence = pug_store::Fence {
                    owner: c.leases.owner(),
                    token,
                };
                c.store.set_status_fenced(id, status, fence).await
            }
            None => c.store.set_status(id, status).await,
        };
        written.at(id, Step::WriteStatus)?;
        // After the write: a listener (the gateway in `pug serve`) may re-read the store.
        if let Some(listener) = c.status_listener.get() {
            listener.status_written(id, status);
        }
    }
    Ok(())
}

async fn drop_database(c: &Controller, id: &TenantId) -> Result<(), ReconcileError> {
    let Some(dbs) = &c.databases else {
        return Ok(());
    };
    let step = Step::ReadSecret(secret::DATABASE_PASSWORD.into());
    match c
        .store
        .secret(id, secret::DATABASE_PASSWORD)
        .await
        .at(id, step)?
    {
        Some(password) => dbs.drop(id, &password).await.at(id, Step::DropDatabase)?,
        None => {
            tracing::warn!(tenant = %id, "no database password stored; no database to drop")
        }
    }
    Ok(())
}

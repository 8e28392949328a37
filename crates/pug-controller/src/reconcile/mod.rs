//! One reconcile pass of one tenant: observe, plan, execute.
//!
//! A pass reads what it needs ([`observe`]), decides with pure functions of that observation
//! ([`plan`]), and carries the decision out ([`execute`]). It takes at most the next step, writes
//! the status it observed, and says when it wants to look again. It never waits for an instance
//! to become healthy: it returns [`Outcome::Poll`] and looks again later, so one slow tenant
//! never holds a worker.
//!
//! An active tenant goes through two rounds, because what is started this pass is probed this
//! pass: observe → [`plan::replicas`] → execute (stop surplus, start missing and exited) → probe
//! → [`plan::rollout`] → [`plan::awake`] → execute (roll back or replace one, write the status,
//! finish a wake). An active tenant idle longer than its idle timeout is planned by
//! [`plan::sleep`] instead (its instances stop; its next request wakes it).
//!
//! Must not: decide anything outside [`plan`], or act anywhere outside [`execute`].

mod execute;
mod observe;
pub mod plan;

use std::time::Duration;

use pug_store::now_ms;
use pug_types::{DesiredState, TenantId};

use crate::error::{At, Step};
use crate::{Controller, ReconcileError};

/// What the queue should do after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The tenant matches its spec; look again at the next resync or change.
    Converged,
    /// Progressing (waiting for readiness, rolling); look again after this long.
    Poll(Duration),
    /// Something failed (an instance crashed); look again after an exponential backoff.
    Retry { reason: String },
    /// Converged, with an idle timeout: look again after this long, when it would fall asleep.
    Until(Duration),
}

/// The label that asks a deletion to drop the tenant's database and role too.
pub const PURGE_LABEL: &str = pug_types::Labels::PURGE;

/// Runs one pass for `id`. `attempts` is how many passes in a row ended in a retry.
pub async fn reconcile(
    c: &Controller,
    id: &TenantId,
    attempts: u32,
) -> Result<Outcome, ReconcileError> {
    let Some(tenant) = c.store.tenant(id).await.at(id, Step::ReadTenant)? else {
        let instances = observe::instances(c, id).await?;
        return finish(c, id, &[], plan::gone(&instances)).await;
    };
    match tenant.spec.desired_state {
        DesiredState::Deleted => {
            let instances = observe::instances(c, id).await?;
            let plan = plan::delete(&tenant, &instances, c.databases.is_some(), now_ms());
            finish(c, id, &[], plan).await
        }
        DesiredState::Suspended => {
            let instances = observe::instances(c, id).await?;
            finish(c, id, &[], plan::suspend(&tenant, &instances, now_ms())).await
        }
        DesiredState::Active => {
            let activity = c.store.activity(id).await.at(id, Step::ReadActivity)?;
            let last_used = plan::last_used_ms(&tenant, &activity);
            c.metrics.last_activity(id, last_used);
            let timeout = tenant.spec.idle_timeout(c.settings.idle_timeout_secs);
            let grace = c.settings.activity_grace.as_millis() as i64;
            let idle = plan::idleness(timeout, grace, last_used, now_ms());
            if let plan::Idle::Asleep { idle_ms } = idle {
                let instances = observe::instances(c, id).await?;
                let plan = plan::sleep(&tenant, &instances, &activity, idle_ms, timeout, now_ms());
                return finish(c, id, &[], plan).await;
            }
            let observed = observe::active(c, &tenant, attempts).await?;
            let replicas = plan::replicas(&observed);
            let started = execute::run(c, id, &observed.specs, &replicas).await?;
            let probed = observe::health(c, &observed, started).await;
            let policy = c.settings.policy();
            let now = now_ms();
            let plan = plan::rollout(&observed, &probed, &tenant, &policy, now);
            let plan = plan::awake(plan, &tenant, &activity, idle, policy.wake_poll, now);
            finish(c, id, &observed.specs, plan).await
        }
    }
}

async fn finish(
    c: &Controller,
    id: &TenantId,
    specs: &[pug_orchestrator::InstanceSpec],
    plan: plan::Plan,
) -> Result<Outcome, ReconcileError> {
    execute::run(c, id, specs, &plan.actions).await?;
    Ok(plan.outcome)
}

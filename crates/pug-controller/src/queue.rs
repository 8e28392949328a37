//! The loops that drive reconcile passes: the queue worker, the periodic resync with garbage
//! collection (and the healing of the backend's shared services, such as the swarm renderer
//! service), and the listener for changes the orchestrator reports.
//!
//! Work is claimed from the store under leases (`pug_store::Store::claim_work`), at most
//! `controller.concurrency` passes at once across every pug sharing the store; each pass runs
//! under its lease's local deadline ([`crate::lease`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pug_store::{now_ms, WorkItem};
use pug_types::{EventReason, TenantId};
use tokio_util::sync::CancellationToken;

use crate::error::{At, Step};
use crate::reconcile::{reconcile, Outcome};
use crate::{Controller, ReconcileError};

/// Tenants with a pass in flight, and those that changed while theirs was.
#[derive(Debug, Default)]
pub(crate) struct Busy {
    running: HashSet<TenantId>,
    dirty: HashSet<TenantId>,
}

/// Runs the controller until `shutdown` is cancelled; in-flight passes are allowed to finish,
/// then this pug's leases are given back. Dropped (its task aborted) instead, it gives nothing
/// back: its leases run out, as a killed pug's do.
pub async fn run(controller: Controller, shutdown: CancellationToken) {
    // At start, every tenant now: what runs has not been looked at yet.
    if let Err(e) = controller.store.enqueue_all(Duration::ZERO, true).await {
        tracing::error!(error = %e, "cannot queue the start-up resync");
    }
    let c = &controller;
    let me = pug_store::Replica {
        owner: c.settings.owner.clone(),
        host: crate::lease::hostname(),
        backend: c.orchestrator.name().to_owned(),
        roles: c.settings.roles.clone(),
    };
    let stop_background = CancellationToken::new();
    // Dropped with this future: an aborted controller leaves nothing running.
    let mut background = tokio::task::JoinSet::new();
    background.spawn(crate::lease::heartbeat_loop(
        c.store.clone(),
        c.leases.clone(),
        me,
        true,
        stop_background.clone(),
    ));
    background.spawn(resync_loop(c.clone(), stop_background.clone()));
    background.spawn(changes_loop(c.clone(), stop_background.clone()));
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(c.settings.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let lease_ms = c.settings.lease.as_millis() as i64;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let free = semaphore.available_permits();
        // Also how soon a row whose lease ran out (a killed pug's) is claimed again.
        let mut next_wait = Duration::from_millis(500);
        if free > 0 {
            let sent = Instant::now();
            let claimed = c
                .store
                .claim_work(
                    &c.settings.owner,
                    now_ms(),
                    free,
                    c.settings.concurrency,
                    lease_ms,
                )
                .await;
            match claimed {
                Ok(items) => {
                    for item in items {
                        let permit = semaphore
                            .clone()
                            .acquire_owned()
                            .await
                            .expect("the semaphore is never closed");
                        c.leases.hold(&item.tenant, item.fence, sent);
                        c.busy
                            .lock()
                            .expect("busy")
                            .running
                            .insert(item.tenant.clone());
                        let c = c.clone();
                        tasks.spawn(async move {
                            work(&c, item).await;
                            drop(permit);
                            c.wake.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot claim work from the queue"),
            }
            match c.store.next_due_ms().await {
                Ok(Some(due)) if due > now_ms() => {
                    next_wait = next_wait.min(Duration::from_millis((due - now_ms()) as u64));
                }
                _ => {}
            }
        }
        if let Ok(depth) = c.store.queue_depth().await {
            c.metrics.queue_depth.set(depth);
        }
        tokio::select! {
            // Cancel-safe: Notify keeps one permit, so a wake-up sent meanwhile is not lost.
            _ = c.wake.notified() => {}
            _ = tokio::time::sleep(next_wait) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    while tasks.join_next().await.is_some() {}
    stop_background.cancel();
    while background.join_next().await.is_some() {}
    if let Err(e) = c.store.retire(&c.settings.owner).await {
        tracing::warn!(error = %e, "cannot give this pug's leases back; they run out by themselves");
    }
}

/// One pass for one queued tenant under its lease, and what to do with its queue row
/// afterwards. A pass whose lease runs out is dropped where it stands and leaves the row alone:
/// another pug may hold it already, and its next pass plans again from what it observes.
async fn work(c: &Controller, item: WorkItem) {
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = reconcile(c, &item.tenant, item.attempts) => Some(outcome),
        _ = c.leases.lost(&item.tenant) => None,
    };
    c.leases.drop_lease(&item.tenant);
    c.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let dirty = {
        let mut busy = c.busy.lock().expect("busy");
        busy.running.remove(&item.tenant);
        busy.dirty.remove(&item.tenant)
    };
    let Some(outcome) = outcome else {
        c.metrics.op("lease_lost");
        tracing::warn!(tenant = %item.tenant, "the lease of this tenant ran out before the store renewed it; the pass stopped (another pug takes over)");
        // Given back at once if nobody took it yet (the token says whether it is still ours).
        let _ = c.store.release_work(&item).await;
        return;
    };
    let result = match outcome {
        Ok(Outcome::Converged) => {
            c.metrics.op("converged");
            let r = c.store.finish_work(&item).await;
            if dirty && r.is_ok() {
                c.store.enqueue(&item.tenant, now_ms()).await.map(|_| true)
            } else {
                r
            }
        }
        Ok(Outcome::Poll(after)) => {
            c.metrics.op("requeued");
            c.store
                .requeue_work(&item, now_ms() + after.as_millis() as i64, item.attempts)
                .await
        }
        Ok(Outcome::Until(after)) => {
            c.metrics.op("converged");
            c.store
                .requeue_work(&item, now_ms() + after.as_millis() as i64, 0)
                .await
        }
        Ok(Outcome::Retry { reason }) => {
            c.metrics.op("retry");
            let attempts = item.attempts + 1;
            let delay = backoff(attempts, c.settings.readiness_poll, c.settings.max_backoff);
            tracing::info!(tenant = %item.tenant, attempts, delay_ms = delay.as_millis() as u64, %reason, "reconcile will retry");
            c.store
                .requeue_work(&item, now_ms() + delay.as_millis() as i64, attempts)
                .await
        }
        Err(e) => {
            c.metrics.op("error");
            let attempts = item.attempts + 1;
            let delay = backoff(attempts, Duration::from_secs(1), c.settings.max_backoff);
            tracing::warn!(tenant = %item.tenant, attempts, retryable = e.retryable(), error = %error_line(&e), "reconcile failed");
            c.store
                .requeue_work(&item, now_ms() + delay.as_millis() as i64, attempts)
                .await
        }
    };
    if let Ok(false) = result {
        tracing::debug!(tenant = %item.tenant, "the queue row was not this pass's any more (removed, or taken over)");
    }
    if let Err(e) = result {
        tracing::error!(tenant = %item.tenant, error = %e, "cannot update the work queue");
    }
}

/// `base · 2^(attempts-1)`, capped at `max`.
pub(crate) fn backoff(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

/// How many resyncs pass between two that include sleeping tenants (a sleeping tenant is also
/// looked at whenever something changes it). With the default 30 s interval: every 5 minutes.
const SLEEPING_RESYNC_EVERY: u32 = 10;

/// Every resync interval, on the pug holding the `fleet` lease: queue every tenant (due times
/// spread over the interval; sleeping ones every [`SLEEPING_RESYNC_EVERY`]-th time), remove
/// instances whose tenant is gone, and heal the backend's shared services
/// (`Orchestrator::ensure_shared_services`).
async fn resync_loop(c: Controller, shutdown: CancellationToken) {
    let mut ticks: u32 = 0;
    let mut tick = tokio::time::interval(c.settings.resync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Fleet-wide jobs run on one pug of those sharing the store.
        if !c.leases.is_fleet_leader() {
            continue;
        }
        if let Err(e) = collect_garbage(&c).await {
            tracing::warn!(error = %error_line(&e), "garbage collection failed");
        }
        // What the backend runs for the whole fleet (swarm: the renderer service), healed.
        if let Err(e) = c.orchestrator.ensure_shared_services().await {
            tracing::warn!(error = %pug_orchestrator::error_chain(&e), "cannot keep the backend's shared services (the renderer service)");
        }
        // Spread over the interval, so a large fleet's resync is no burst; sleeping tenants
        // (most of a large fleet, nothing running) only every SLEEPING_RESYNC_EVERY-th time.
        ticks = ticks.wrapping_add(1);
        let sleeping = ticks.is_multiple_of(SLEEPING_RESYNC_EVERY);
        if let Err(e) = c
            .store
            .enqueue_all(c.settings.resync_interval, sleeping)
            .await
        {
            tracing::warn!(error = %e, "resync could not queue tenants");
        }
        c.wake.notify_one();
    }
}

/// Removes instances that belong to no tenant in the store (orphans).
pub(crate) async fn collect_garbage(c: &Controller) -> Result<usize, ReconcileError> {
    let tenants = c.store.tenant_ids().await.fleet_wide(Step::ListTenants)?;
    let known: HashSet<TenantId> = tenants.into_iter().collect();
    let mut removed = 0;
    let all = c.orchestrator.all_instances().await;
    for instance in all.fleet_wide(Step::ListInstances)? {
        if known.contains(&instance.tenant) {
            continue;
        }
        // Created since the listing (its first pass may have started it already): not an orphan.
        if c.store
            .tenant(&instance.tenant)
            .await
            .at(&instance.tenant, Step::ReadTenant)?
            .is_some()
        {
            continue;
        }
        tracing::warn!(tenant = %instance.tenant, replica = instance.replica, "removing an orphan instance (its tenant does not exist)");
        c.orchestrator
            .remove(&instance.tenant, instance.replica)
            .await
            .at(
                &instance.tenant,
                Step::Stop {
                    replica: instance.replica,
                },
            )?;
        let _ = c
            .store
            .add_event(
                &instance.tenant,
                EventReason::OrphanRemoved,
                &format!(
                    "removed replica {} at {}: no such tenant in the store",
                    instance.replica, instance.endpoint
                ),
            )
            .await;
        removed += 1;
    }
    Ok(removed)
}

/// Tenants whose instances changed by themselves get a prompt pass; if one is in flight, the
/// tenant is marked dirty and queued again when it finishes.
async fn changes_loop(c: Controller, shutdown: CancellationToken) {
    let Some(mut rx) = c.orchestrator.changes() else {
        return;
    };
    loop {
        let tenant = tokio::select! {
            t = rx.recv() => match t { Some(t) => t, None => return },
            _ = shutdown.cancelled() => return,
        };
        let in_flight = {
            let mut busy = c.busy.lock().expect("busy");
            if busy.running.contains(&tenant) {
                busy.dirty.insert(tenant.clone());
                true
            } else {
                false
            }
        };
        if !in_flight {
            if let Err(e) = c.store.enqueue(&tenant, now_ms()).await {
                tracing::warn!(%tenant, error = %e, "cannot queue a changed tenant");
            }
            c.wake.notify_one();
        }
    }
}

pub(crate) fn error_line(e: &dyn std::error::Error) -> String {
    pug_orchestrator::error_chain(e)
}

impl crate::ControllerMetrics {
    fn op(&self, result: &'static str) {
        self.operations
            .get_or_create(&crate::metrics::ResultLabel { result })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(200);
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, base, max), Duration::from_millis(200));
        assert_eq!(backoff(2, base, max), Duration::from_millis(400));
        assert_eq!(backoff(4, base, max), Duration::from_millis(1600));
        assert_eq!(backoff(40, base, max), max);
    }
}

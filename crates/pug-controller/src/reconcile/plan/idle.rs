//! The sleep and wake decisions of an active tenant, as pure functions of its idle timeout,
//! its last activity, its pending wake and the clock (`now_ms`, an argument).
//!
//! Owns: whether a tenant is meant to be asleep ([`idleness`]), what falling asleep does
//! ([`sleep`]: stop every instance, data kept, phase `sleeping`, `Slept` once), and what a
//! pass of an awake tenant adds ([`awake`]: `Woke` with what woke it and how long it took once
//! it is ready, a fast readiness poll while a wake is pending, and a look again at the moment
//! it would fall asleep).
//!
//! Must not: do IO or read the clock. A sleeping tenant never starts because its spec changed:
//! only activity (a request, an explicit wake) makes it awake, and it then starts with the spec
//! current at that moment.

use std::time::Duration;

use pug_orchestrator::{Instance, InstanceState};
use pug_store::Activity;
use pug_types::{EventReason, Phase, Tenant};

use super::{status_change, Action, Plan};
use crate::reconcile::Outcome;

/// An active tenant's idleness now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Its idle timeout is 0: it never sleeps.
    Never,
    /// Awake; it falls asleep at this time (ms since the epoch) unless used before.
    AwakeUntil(i64),
    /// Idle longer than its timeout: it sleeps. `idle_ms` is how long it has been unused.
    Asleep { idle_ms: i64 },
}

/// The last time a tenant counts as used: its last recorded activity, else its creation.
pub fn last_used_ms(t: &Tenant, activity: &Activity) -> i64 {
    activity
        .last_activity_ms
        .unwrap_or(t.created_at_ms)
        .max(t.created_at_ms)
}

/// Whether a tenant with `timeout_secs` (0: never), last used at `last_used_ms`, sleeps at
/// `now_ms`. `grace_ms` is how late activity may reach the store (the gateway writes it in
/// batches): a tenant sleeps only once that much more has passed.
pub fn idleness(timeout_secs: u64, grace_ms: i64, last_used_ms: i64, now_ms: i64) -> Idle {
    if timeout_secs == 0 {
        return Idle::Never;
    }
    let until = last_used_ms
        .saturating_add((timeout_secs as i64).saturating_mul(1000))
        .saturating_add(grace_ms);
    if now_ms > until {
        Idle::Asleep {
            idle_ms: now_ms - last_used_ms,
        }
    } else {
        Idle::AwakeUntil(until)
    }
}

/// An idle tenant: every instance stopped (data and ports kept), phase `sleeping`, `Slept`
/// recorded once (when it had instances or was not yet sleeping). A wake still pending has
/// expired (the tenant was idle again before it got ready): it is finished, uncounted, so the
/// next wake is timed from its own request.
pub fn sleep(
    t: &Tenant,
    instances: &[Instance],
    activity: &Activity,
    idle_ms: i64,
    timeout_secs: u64,
    now_ms: i64,
) -> Plan {
    // A parked instance (kept stopped by the backend, to start again at wake) is asleep
    // already; only running ones are stopped.
    let running: Vec<&Instance> = instances
        .iter()
        .filter(|i| i.state == InstanceState::Running)
        .collect();
    let mut actions: Vec<Action> = running
        .iter()
        .map(|i| Action::Park { replica: i.replica })
        .collect();
    if !running.is_empty() || t.status.phase != Phase::Sleeping {
        actions.push(Action::Record {
            reason: EventReason::Slept,
            message: format!(
                "idle for {}s (idle timeout {}): {} instance(s) stopped; data kept",
                idle_ms / 1000,
                pug_types::format_duration_secs(timeout_secs),
                running.len()
            ),
        });
    }
    actions.push(Action::WriteStatus(Box::new(status_change(
        t,
        Phase::Sleeping,
        Vec::new(),
        None,
        t.status.running_version.clone(),
        now_ms,
    ))));
    if let Some((requested_ms, by)) = &activity.wake {
        actions.push(Action::FinishWake {
            requested_ms: *requested_ms,
            took_ms: (now_ms - requested_ms).max(0),
            by: by.clone(),
            woke: false,
        });
    }
    Plan {
        actions,
        outcome: Outcome::Converged,
    }
}

/// What an awake tenant's pass adds to its rollout plan:
/// - a pending wake that the plan makes ready is finished: `Woke` after the status write (so
///   the gateway hears "ready" first), with what woke it and how long it took;
/// - a pending wake not ready yet polls every `wake_poll` (a person is waiting);
/// - a converged tenant with an idle timeout is looked at again when it would fall asleep.
///
/// A wake asked for while the tenant was ready already (an explicit wake of an awake tenant)
/// is finished without a `Woke`: it did not sleep.
pub fn awake(
    mut plan: Plan,
    t: &Tenant,
    activity: &Activity,
    idle: Idle,
    wake_poll: Duration,
    now_ms: i64,
) -> Plan {
    let ready = plan.actions.iter().any(
        |a| matches!(a, Action::WriteStatus(c) if matches!(c.figures, Some((Phase::Ready, _, _)))),
    );
    if let Some((requested_ms, by)) = &activity.wake {
        if ready {
            let took_ms = (now_ms - requested_ms).max(0);
            let woke = t.status.phase != Phase::Ready;
            if woke {
                plan.actions.push(Action::Record {
                    reason: EventReason::Woke,
                    message: format!(
                        "woke in {took_ms} ms, woken by {}",
                        match by.as_str() {
                            "request" => "a request through the gateway",
                            "api" => "an explicit wake (API)",
                            other => other,
                        }
                    ),
                });
            }
            plan.actions.push(Action::FinishWake {
                requested_ms: *requested_ms,
                took_ms,
                by: by.clone(),
                woke,
            });
        } else if let Outcome::Poll(d) = plan.outcome {
            plan.outcome = Outcome::Poll(d.min(wake_poll));
        }
    }
    if let (Outcome::Converged, Idle::AwakeUntil(until)) = (&plan.outcome, idle) {
        // One past the deadline: at the deadline itself the tenant is still awake.
        plan.outcome = Outcome::Until(Duration::from_millis((until - now_ms).max(0) as u64 + 1));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::StatusChange;
    use pug_orchestrator::InstanceState;
    use pug_types::{DesiredState, GrafanaVersion, TenantId, TenantSpec, TenantStatus};

    const NOW: i64 = 1_800_000_000_000;

    fn tenant(phase: Phase) -> Tenant {
        Tenant {
            id: TenantId::parse("acme").unwrap(),
            spec: TenantSpec {
                display_name: "Acme".into(),
                version: GrafanaVersion::parse("11.3.0").unwrap(),
                replicas: pug_types::Replicas::ONE,
                desired_state: DesiredState::Active,
                overrides: Default::default(),
                labels: Default::default(),
                datasources: Vec::new(),
                dashboards: Vec::new(),
                idle_timeout_secs: Some(60),
            },
            generation: 3,
            status: TenantStatus {
                phase,
                running_version: Some("11.3.0".into()),
                ..TenantStatus::pending()
            },
            created_at_ms: NOW - 3_600_000,
        }
    }

    fn instance() -> Instance {
        Instance {
            tenant: TenantId::parse("acme").unwrap(),
            replica: 0,
            spec_hash: "h".into(),
            endpoint: "127.0.0.1:20000".into(),
            state: InstanceState::Running,
            started_at_ms: NOW - 1000,
        }
    }

    #[test]
    fn a_tenant_sleeps_only_past_its_idle_timeout() {
        // (timeout, last used this long ago (ms), idleness)
        let table = [
            (0, 10_000_000, Idle::Never),
            (60, 0, Idle::AwakeUntil(NOW + 60_000)),
            (60, 59_999, Idle::AwakeUntil(NOW + 1)),
            (60, 60_000, Idle::AwakeUntil(NOW)),
            (60, 60_001, Idle::Asleep { idle_ms: 60_001 }),
            (1, 5_000, Idle::Asleep { idle_ms: 5_000 }),
            // Activity recorded "in the future" (another pug's clock): awake.
            (60, -5_000, Idle::AwakeUntil(NOW + 65_000)),
        ];
        for (timeout, ago, want) in table {
            assert_eq!(
                idleness(timeout, 0, NOW - ago, NOW),
                want,
                "{timeout}s, {ago}ms ago"
            );
        }
        // Activity not yet written by the gateway: a grace past the timeout.
        assert_eq!(
            idleness(60, 2000, NOW - 61_000, NOW),
            Idle::AwakeUntil(NOW + 1000)
        );
        assert_eq!(
            idleness(60, 2000, NOW - 62_001, NOW),
            Idle::Asleep { idle_ms: 62_001 }
        );
    }

    #[test]
    fn last_use_is_the_last_activity_or_the_creation() {
        let t = tenant(Phase::Ready);
        let never = Activity {
            last_activity_ms: None,
            wake: None,
        };
        assert_eq!(last_used_ms(&t, &never), t.created_at_ms);
        let used = Activity {
            last_activity_ms: Some(NOW - 5),
            wake: None,
        };
        assert_eq!(last_used_ms(&t, &used), NOW - 5);
        // Activity from before a re-creation under the same id does not count.
        let stale = Activity {
            last_activity_ms: Some(t.created_at_ms - 1),
            wake: None,
        };
        assert_eq!(last_used_ms(&t, &stale), t.created_at_ms);
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Stop { replica } => format!("stop {replica}"),
                Action::Park { replica } => format!("park {replica}"),
                Action::Record { reason, .. } => format!("record {reason}"),
                Action::WriteStatus(c) => match &c.write {
                    Some(s) => format!("status {}", s.phase),
                    None => "status unchanged".into(),
                },
                Action::FinishWake {
                    took_ms, by, woke, ..
                } => format!("finish wake {by} {took_ms} woke={woke}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn falling_asleep_stops_everything_and_records_slept_once() {
        // (phase before, instances, actions)
        let parked = || Instance {
            state: InstanceState::Exited {
                reason: "container pug-acme-0 is Exited (0)".into(),
            },
            ..instance()
        };
        let table: [(Phase, Vec<Instance>, &[&str]); 6] = [
            (
                Phase::Ready,
                vec![instance()],
                &["park 0", "record Slept", "status sleeping"],
            ),
            // Killed after the stop, before the status: converges, says it once.
            (Phase::Ready, vec![], &["record Slept", "status sleeping"]),
            (
                Phase::Ready,
                vec![parked()],
                &["record Slept", "status sleeping"],
            ),
            // Asleep already: nothing to do, nothing recorded; a parked instance is asleep.
            (Phase::Sleeping, vec![], &["status unchanged"]),
            (Phase::Sleeping, vec![parked()], &["status unchanged"]),
            // Something started it meanwhile (a pug that did not know): stopped again.
            (
                Phase::Sleeping,
                vec![instance()],
                &["park 0", "record Slept", "status unchanged"],
            ),
        ];
        for (phase, instances, want) in table {
            let mut t = tenant(phase);
            if phase == Phase::Sleeping {
                t.status.observed_generation = t.generation;
            }
            let idle = Activity {
                last_activity_ms: Some(NOW - 120_000),
                wake: None,
            };
            let plan = sleep(&t, &instances, &idle, 120_000, 60, NOW);
            assert_eq!(summary(&plan), want, "{phase} with {}", instances.len());
            assert_eq!(plan.outcome, Outcome::Converged);
            // The running version is kept: an upgrade asked for while asleep shows as one.
            for a in &plan.actions {
                if let Action::WriteStatus(c) = a {
                    let StatusChange { figures, .. } = c.as_ref();
                    assert_eq!(figures.map(|f| f.0), Some(Phase::Sleeping));
                }
            }
        }
    }

    #[test]
    fn a_wake_that_expired_before_ready_is_finished_uncounted() {
        let expired = Activity {
            last_activity_ms: Some(NOW - 120_000),
            wake: Some((NOW - 120_000, "request".into())),
        };
        let plan = sleep(
            &tenant(Phase::Provisioning),
            &[],
            &expired,
            120_000,
            60,
            NOW,
        );
        assert_eq!(
            summary(&plan),
            [
                "record Slept",
                "status sleeping",
                "finish wake request 120000 woke=false"
            ]
        );
    }

    fn rollout_plan(phase: Phase, outcome: Outcome) -> Plan {
        let t = tenant(Phase::Provisioning);
        Plan {
            actions: vec![Action::WriteStatus(Box::new(status_change(
                &t,
                phase,
                Vec::new(),
                None,
                None,
                NOW,
            )))],
            outcome,
        }
    }

    #[test]
    fn waking_a_tenant_that_is_ready_already_records_no_woke() {
        let pending = Activity {
            last_activity_ms: Some(NOW),
            wake: Some((NOW - 5, "api".into())),
        };
        let t = tenant(Phase::Ready);
        let plan = awake(
            rollout_plan(Phase::Ready, Outcome::Converged),
            &t,
            &pending,
            Idle::Never,
            Duration::from_millis(25),
            NOW,
        );
        assert_eq!(
            summary(&plan),
            ["status ready", "finish wake api 5 woke=false"]
        );
    }

    #[test]
    fn an_awake_tenant_finishes_its_wake_polls_fast_and_sets_its_idle_timer() {
        let poll = Duration::from_millis(200);
        let wake_poll = Duration::from_millis(25);
        let pending = Activity {
            last_activity_ms: Some(NOW - 300),
            wake: Some((NOW - 300, "request".into())),
        };
        let none = Activity {
            last_activity_ms: Some(NOW - 300),
            wake: None,
        };
        // (rollout phase, its outcome, activity, idleness, actions added, outcome)
        let table = [
            (
                Phase::Ready,
                Outcome::Converged,
                &pending,
                Idle::AwakeUntil(NOW + 60_000),
                vec![
                    "status ready",
                    "record Woke",
                    "finish wake request 300 woke=true",
                ],
                Outcome::Until(Duration::from_millis(60_001)),
            ),
            (
                Phase::Provisioning,
                Outcome::Poll(poll),
                &pending,
                Idle::AwakeUntil(NOW + 60_000),
                vec!["status provisioning"],
                Outcome::Poll(wake_poll),
            ),
            // A retry keeps its backoff: a crash-looping wake does not spin.
            (
                Phase::Provisioning,
                Outcome::Retry { reason: "x".into() },
                &pending,
                Idle::AwakeUntil(NOW + 60_000),
                vec!["status provisioning"],
                Outcome::Retry { reason: "x".into() },
            ),
            (
                Phase::Provisioning,
                Outcome::Poll(poll),
                &none,
                Idle::AwakeUntil(NOW + 60_000),
                vec!["status provisioning"],
                Outcome::Poll(poll),
            ),
            (
                Phase::Ready,
                Outcome::Converged,
                &none,
                Idle::Never,
                vec!["status ready"],
                Outcome::Converged,
            ),
            (
                Phase::Ready,
                Outcome::Converged,
                &pending,
                Idle::Never,
                vec![
                    "status ready",
                    "record Woke",
                    "finish wake request 300 woke=true",
                ],
                Outcome::Converged,
            ),
        ];
        let t = tenant(Phase::Provisioning);
        for (phase, outcome, activity, idle, want, want_outcome) in table {
            let plan = awake(
                rollout_plan(phase, outcome.clone()),
                &t,
                activity,
                idle,
                wake_poll,
                NOW,
            );
            assert_eq!(summary(&plan), want, "{phase} {outcome:?} {idle:?}");
            assert_eq!(plan.outcome, want_outcome, "{phase} {outcome:?} {idle:?}");
        }
    }
}

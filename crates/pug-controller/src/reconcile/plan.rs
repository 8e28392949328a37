//! The decisions of a reconcile pass, as pure functions of what the pass observed.
//!
//! Owns: every choice a pass makes — which replicas go, which start and why, whether an upgrade
//! is rolled back, which outdated replica is replaced, the phase, the status and events to write,
//! and what the queue does next ([`Outcome`]). Each planner returns data: a list of [`Action`]s
//! in the order the executor carries them out, and an outcome.
//!
//! An active tenant is planned in two steps, because the second decides on what the first did:
//! [`replicas`] makes the replica set whole (scale down, start the missing, restart the exited);
//! the executor then starts them and the pass probes what runs the desired spec, including the
//! replicas it just started; [`rollout`] decides on those answers (roll back, replace one
//! outdated replica, phase, status, outcome). [`delete`], [`suspend`] and [`gone`] need one, and
//! so does [`sleep`] (an idle tenant); [`awake`] adds the wake and idle-timer decisions to an
//! awake tenant's rollout (module `idle`).
//!
//! Must not: do IO, read the clock (time is the `now_ms` argument), or put a secret into an
//! event, a status or an outcome: every text built from what an instance reported is
//! [`redact`]ed with the tenant's secret values first.

use std::time::Duration;

use pug_orchestrator::{Health, Instance, InstanceSpec, InstanceState};
use pug_types::{
    DesiredState, EventReason, ExposeSecret, GrafanaVersion, Phase, SecretString, Tenant,
    TenantSpec, TenantStatus,
};

use super::{Outcome, PURGE_LABEL};
use crate::redact;

mod idle;
#[cfg(test)]
mod tests;

pub use idle::{awake, idleness, last_used_ms, sleep, Idle};

/// The controller settings the decisions depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A replica not healthy this long after its start counts as failed.
    pub ready_timeout: Duration,
    /// Passes in a row that restart a crashed replica before the tenant is failed (and an
    /// upgrade rolled back).
    pub crash_loop_threshold: u32,
    /// How soon to look again while waiting for readiness.
    pub readiness_poll: Duration,
    /// How soon to look again while a wake is pending (someone waits for it).
    pub wake_poll: Duration,
}

/// What a pass observed of an active tenant before acting.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The spec each desired replica must run, replicas `0..n` in order.
    pub specs: Vec<InstanceSpec>,
    /// The orchestrator's hash of each of `specs`, in the same order
    /// (`Orchestrator::spec_hash`): what an instance reports once it runs that spec.
    pub hashes: Vec<String>,
    /// What the orchestrator runs for the tenant, in replica order.
    pub instances: Vec<Instance>,
    /// The tenant's secret values, so that nothing planned repeats one.
    pub secrets: Vec<SecretString>,
    /// Passes in a row that ended in [`Outcome::Retry`].
    pub attempts: u32,
    /// The tenant is waking (its stored phase is `sleeping`): an exited instance of the
    /// current spec was parked by its sleep, not crashed.
    pub waking: bool,
}

impl Observed {
    fn secret_values(&self) -> Vec<&str> {
        self.secrets.iter().map(|s| s.expose_secret()).collect()
    }

    fn redact(&self, text: &str) -> String {
        redact(text, &self.secret_values())
    }
}

/// One desired replica after the replica step: what runs there now and what its probe said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub replica: u32,
    /// The hash of the spec it must run.
    pub desired_hash: String,
    /// The instance the replica step started, or else the one observed.
    pub instance: Option<Instance>,
    /// `None` when it was not probed (see [`wants_probe`]).
    pub health: Option<Health>,
}

/// Whether a pass probes an instance: only running ones with the desired spec can count as ready.
pub fn wants_probe(instance: &Instance, desired_hash: &str) -> bool {
    instance.state == InstanceState::Running && instance.spec_hash == desired_hash
}

/// Why a replica is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartReason {
    /// The orchestrator runs nothing for it.
    Missing,
    /// It exited while running an older spec: starting it is an update, not a crash restart.
    NewSpec,
    /// It exited by itself; `why` is how (exit code and last log line), redacted.
    Crashed { why: String },
    /// It was parked when the tenant fell asleep, and the tenant wakes.
    Woken,
}

impl StartReason {
    /// The event a start records once the orchestrator says where the replica listens.
    pub fn event(
        &self,
        replica: u32,
        version: &GrafanaVersion,
        endpoint: &str,
    ) -> (EventReason, String) {
        match self {
            StartReason::Missing => (
                EventReason::InstanceStarted,
                format!("replica {replica} started: Grafana {version} at {endpoint}"),
            ),
            StartReason::NewSpec => (
                EventReason::InstanceStarted,
                format!(
                    "replica {replica} started with the new spec: Grafana {version} at {endpoint}"
                ),
            ),
            StartReason::Woken => (
                EventReason::InstanceStarted,
                format!(
                    "replica {replica} started again after sleep: Grafana {version} at {endpoint}"
                ),
            ),
            StartReason::Crashed { why } => (
                EventReason::InstanceRestarted,
                format!("replica {replica} {why}; restarted"),
            ),
        }
    }
}

/// One step the executor takes. Steps run in order; a failed one ends the pass (the next pass
/// starts again from what it observes).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Stop and remove a replica; its data stays.
    Stop { replica: u32 },
    /// Stop a replica of a tenant falling asleep (the backend may keep it stopped, to start
    /// it again at wake); its data stays.
    Park { replica: u32 },
    /// Give back the ports of the replicas from `from` on.
    ReleasePorts { from: u32 },
    /// Start a replica with its desired spec, then record [`StartReason::event`] (a crash
    /// restart also counts in `pug_tenant_restarts`).
    Start { replica: u32, reason: StartReason },
    /// Restart a running replica that runs an outdated spec with the desired one.
    Replace { replica: u32 },
    /// Put the spec back to the version that ran, if it is still `generation`, recording
    /// `UpgradeRolledBack` with `message` in the same transaction.
    RollBack {
        spec: Box<TenantSpec>,
        generation: i64,
        message: String,
    },
    /// Move a deleted tenant's data into the archive.
    Archive,
    /// Drop a deleted tenant's database and role.
    DropDatabase,
    /// Append an event to the tenant's log.
    Record {
        reason: EventReason,
        message: String,
    },
    /// Update the fleet metrics and the stored status.
    WriteStatus(Box<StatusChange>),
    /// Remove a deleted tenant's record (its events stay).
    RemoveRecord,
    /// Drop the tenant from the fleet metrics.
    ForgetMetrics,
    /// Mark the wake asked for at `requested_ms` finished; when it `woke` the tenant, count it
    /// (`by` woke it, it took `took_ms`).
    FinishWake {
        requested_ms: i64,
        took_ms: i64,
        by: String,
        woke: bool,
    },
}

/// A status write: what the metrics show, the phase event, and the status stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// Phase, ready and desired replicas for the fleet metrics; `None` leaves them alone.
    pub figures: Option<(Phase, u32, u32)>,
    /// The `PhaseChanged` message, recorded before the write when the phase changes.
    pub phase_changed: Option<String>,
    /// The status to store; `None` when it equals the stored one.
    pub write: Option<TenantStatus>,
}

/// What a pass does, in order, and what the queue does after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub outcome: Outcome,
}

/// The first step for an active tenant: replicas beyond the desired count go (and their ports),
/// missing ones start, exited ones start again.
pub fn replicas(o: &Observed) -> Vec<Action> {
    let desired = o.specs.len() as u32;
    let mut actions = Vec::new();
    let extra: Vec<u32> = o
        .instances
        .iter()
        .filter(|i| i.replica >= desired)
        .map(|i| i.replica)
        .collect();
    for &replica in &extra {
        actions.push(Action::Stop { replica });
        actions.push(Action::Record {
            reason: EventReason::ReplicaRemoved,
            message: format!("replica {replica} removed (scaled to {desired})"),
        });
    }
    if !extra.is_empty() {
        actions.push(Action::ReleasePorts { from: desired });
    }
    for (spec, hash) in o.specs.iter().zip(&o.hashes) {
        let reason = match o.instances.iter().find(|i| i.replica == spec.replica) {
            None => StartReason::Missing,
            Some(i) => match &i.state {
                InstanceState::Running => continue,
                InstanceState::Exited { .. } if i.spec_hash != *hash => StartReason::NewSpec,
                InstanceState::Exited { .. } if o.waking => StartReason::Woken,
                InstanceState::Exited { reason } => StartReason::Crashed {
                    why: o.redact(reason),
                },
            },
        };
        actions.push(Action::Start {
            replica: spec.replica,
            reason,
        });
    }
    actions
}

/// A replica that answers but is not ready, and for how long it has been so.
struct Waiting {
    replica: u32,
    age_ms: i64,
    why: String,
    /// It does not even answer.
    unreachable: bool,
}

/// The second step for an active tenant, on what runs after the first: roll back an upgrade that
/// cannot become healthy, replace one outdated replica, and write the phase and status.
pub fn rollout(
    o: &Observed,
    replicas: &[Probed],
    t: &Tenant,
    policy: &Policy,
    now_ms: i64,
) -> Plan {
    let desired = t.spec.replicas.get();
    // The replicas the first step restarted after a crash.
    let crashed: Vec<String> = self::replicas(o)
        .into_iter()
        .filter_map(|a| match a {
            Action::Start {
                replica,
                reason: StartReason::Crashed { why },
            } => Some(format!("replica {replica} {why}")),
            _ => None,
        })
        .collect();
    let ready: Vec<&Probed> = replicas
        .iter()
        .filter(|p| p.health == Some(Health::Ready))
        .collect();
    let endpoints: Vec<String> = ready
        .iter()
        .filter_map(|p| p.instance.as_ref().map(|i| i.endpoint.clone()))
        .collect();
    let outdated: Vec<&Probed> = replicas
        .iter()
        .filter(|p| {
            p.instance
                .as_ref()
                .is_some_and(|i| i.state == InstanceState::Running && i.spec_hash != p.desired_hash)
        })
        .collect();
    let waiting: Vec<Waiting> = replicas
        .iter()
        .filter_map(|p| {
            let age_ms = now_ms - p.instance.as_ref()?.started_at_ms;
            let (why, unreachable) = match &p.health {
                Some(Health::Unhealthy(m)) => (m.clone(), false),
                Some(Health::Unreachable(m)) => (m.clone(), true),
                _ => return None,
            };
            Some(Waiting {
                replica: p.replica,
                age_ms,
                why,
                unreachable,
            })
        })
        .collect();
    let timeout_ms = policy.ready_timeout.as_millis() as i64;
    let timed_out: Vec<String> = waiting
        .iter()
        .filter(|w| w.age_ms > timeout_ms)
        .map(|w| {
            format!(
                "replica {} not healthy after {}s: {}",
                w.replica,
                policy.ready_timeout.as_secs(),
                w.why
            )
        })
        .collect();
    let crash_looping = !crashed.is_empty() && o.attempts + 1 >= policy.crash_loop_threshold;

    // An upgrade whose new version cannot become healthy goes back to the version that ran.
    let upgrading_from = t
        .status
        .running_version
        .as_deref()
        .and_then(|v| GrafanaVersion::parse(v).ok())
        .filter(|running| running != &t.spec.version);
    if let Some(previous) = &upgrading_from {
        if crash_looping || !timed_out.is_empty() {
            let why = o.redact(
                &crashed
                    .iter()
                    .chain(timed_out.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            let message = format!(
                "upgrade to Grafana {} failed ({why}); rolled back to {previous}",
                t.spec.version
            );
            let mut spec = t.spec.clone();
            spec.version = previous.clone();
            let status = TenantStatus {
                last_error: Some(message.clone()),
                updated_at_ms: now_ms,
                ..t.status.clone()
            };
            return Plan {
                actions: vec![
                    Action::RollBack {
                        spec: Box::new(spec),
                        generation: t.generation,
                        message,
                    },
                    Action::WriteStatus(Box::new(StatusChange {
                        figures: None,
                        phase_changed: None,
                        write: Some(status),
                    })),
                ],
                outcome: Outcome::Poll(Duration::ZERO),
            };
        }
    }

    // Rolling replacement: one outdated replica at a time, only while the rest are healthy.
    let mut actions = Vec::new();
    if let Some(first) = outdated.first() {
        let others_ready = replicas
            .iter()
            .filter(|p| p.replica != first.replica)
            .all(|p| p.health == Some(Health::Ready));
        let others_outdated_only = replicas.iter().all(|p| {
            p.health == Some(Health::Ready) || outdated.iter().any(|d| d.replica == p.replica)
        });
        if others_ready || (others_outdated_only && crashed.is_empty()) {
            actions.push(Action::Replace {
                replica: first.replica,
            });
            actions.push(Action::Record {
                reason: EventReason::InstanceReplaced,
                message: format!(
                    "replica {} restarted with the new spec (Grafana {})",
                    first.replica, t.spec.version
                ),
            });
        }
    }
    let replaced = !actions.is_empty();

    let hung = waiting
        .iter()
        .any(|w| w.unreachable && w.age_ms > timeout_ms);
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
        (!problems.is_empty()).then(|| o.redact(&problems.join("; ")))
    };
    let running_version = if all_ready {
        Some(t.spec.version.to_string())
    } else {
        t.status.running_version.clone()
    };
    actions.push(Action::WriteStatus(Box::new(status_change(
        t,
        phase,
        endpoints,
        last_error,
        running_version,
        now_ms,
    ))));

    let outcome = if all_ready {
        Outcome::Converged
    } else if !crashed.is_empty() {
        Outcome::Retry {
            reason: o.redact(&crashed.join("; ")),
        }
    } else if !timed_out.is_empty() {
        // Still looking, but slowly: a stuck replica may recover by itself.
        Outcome::Poll(policy.readiness_poll.max(Duration::from_secs(5)))
    } else {
        Outcome::Poll(policy.readiness_poll)
    };
    Plan { actions, outcome }
}

/// A tenant marked deleted: status `deleting`, every instance stopped, data archived, its
/// database dropped if it asked for that (`--purge`, and only where tenants have databases),
/// then its record removed.
pub fn delete(t: &Tenant, instances: &[Instance], has_databases: bool, now_ms: i64) -> Plan {
    let mut actions = vec![Action::WriteStatus(Box::new(status_change(
        t,
        Phase::Deleting,
        Vec::new(),
        None,
        t.status.running_version.clone(),
        now_ms,
    )))];
    actions.extend(stops(instances));
    actions.push(Action::Archive);
    if has_databases && t.spec.labels.get(PURGE_LABEL) == Some("true") {
        actions.push(Action::DropDatabase);
        actions.push(Action::Record {
            reason: EventReason::DatabaseDropped,
            message: "tenant database and role dropped (--purge)".into(),
        });
    }
    actions.push(Action::Record {
        reason: EventReason::Deleted,
        message: "instances stopped, data archived".into(),
    });
    actions.push(Action::RemoveRecord);
    actions.push(Action::ForgetMetrics);
    Plan {
        actions,
        outcome: Outcome::Converged,
    }
}

/// A suspended tenant: every instance stopped, data kept, status `suspended`.
pub fn suspend(t: &Tenant, instances: &[Instance], now_ms: i64) -> Plan {
    let mut actions = stops(instances);
    if !instances.is_empty() {
        actions.push(Action::Record {
            reason: EventReason::Suspended,
            message: format!("{} instance(s) stopped; data kept", instances.len()),
        });
    }
    actions.push(Action::WriteStatus(Box::new(status_change(
        t,
        Phase::Suspended,
        Vec::new(),
        None,
        t.status.running_version.clone(),
        now_ms,
    ))));
    Plan {
        actions,
        outcome: Outcome::Converged,
    }
}

/// No tenant in the store (deleted, or never existed): nothing of it may run.
pub fn gone(instances: &[Instance]) -> Plan {
    let mut actions = stops(instances);
    actions.push(Action::ForgetMetrics);
    Plan {
        actions,
        outcome: Outcome::Converged,
    }
}

fn stops(instances: &[Instance]) -> Vec<Action> {
    instances
        .iter()
        .map(|i| Action::Stop { replica: i.replica })
        .collect()
}

/// The status a pass observed, and what writing it involves: the fleet metrics always, a
/// `PhaseChanged` event when the phase changes, the write itself only when something changed.
pub fn status_change(
    t: &Tenant,
    phase: Phase,
    endpoints: Vec<String>,
    last_error: Option<String>,
    running_version: Option<String>,
    now_ms: i64,
) -> StatusChange {
    let desired = match t.spec.desired_state {
        DesiredState::Active => t.spec.replicas.get(),
        _ => 0,
    };
    let status = TenantStatus {
        phase,
        ready_replicas: endpoints.len() as u32,
        endpoints,
        running_version,
        observed_generation: t.generation,
        last_error,
        updated_at_ms: t.status.updated_at_ms,
    };
    let figures = Some((phase, status.ready_replicas, desired));
    if status == t.status {
        return StatusChange {
            figures,
            phase_changed: None,
            write: None,
        };
    }
    let phase_changed = (status.phase != t.status.phase).then(|| match &status.last_error {
        Some(e) => format!("phase {} → {}: {e}", t.status.phase, status.phase),
        None => format!("phase {} → {}", t.status.phase, status.phase),
    });
    StatusChange {
        figures,
        phase_changed,
        write: Some(TenantStatus {
            updated_at_ms: now_ms,
            ..status
        }),
    }
}

//! Which task is which replica, and what state it is in, from a service and its tasks.
//!
//! Owns: grouping a service's tasks by slot (the newest task that should run in each, in slot
//! order: replica `r` is the `r`-th active slot), telling a crash loop from a task forever
//! starting (Swarm replaces failing tasks with new ones), each replica's state, endpoint and
//! spec hash, the pending replicas of slots Swarm has not scheduled yet, and Docker's
//! timestamps.
//!
//! Must not: do IO or read the clock (the backend lists tasks and nodes and passes `now_ms`),
//! or change anything.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{Service, Task, TaskState};
use pug_orchestrator::{Instance, InstanceState};
use pug_types::TenantId;

use super::rollout::unacknowledged_rollback;
use super::spec::{replicas_of, CONTAINER_PORT};
use crate::LABEL_SPEC_HASH;

/// How long a failed task counts towards a slot's crash loop.
pub(super) const CRASH_WINDOW_MS: i64 = 120_000;

/// One active task slot of a service.
#[derive(Debug)]
pub(super) struct Slot {
    pub task: Task,
    /// The latest recent failure of a task with the same template in this slot, while the
    /// newest task is not running yet: Swarm restarts failing tasks with new tasks, so without
    /// this a crash loop would look like a task forever starting.
    pub crash: Option<String>,
}

/// Where pug reaches each task: task id → its address on the overlay network.
#[derive(Debug, Default)]
pub(super) struct Addresses(pub HashMap<String, String>);

impl Addresses {
    /// The task's Grafana on the overlay; `0.0.0.0:0` (nothing answers) before the network
    /// knows the task's address.
    fn endpoint(&self, task: &Task) -> String {
        task.id
            .as_ref()
            .and_then(|id| self.0.get(id))
            .map(|ip| format!("{ip}:{CONTAINER_PORT}"))
            .unwrap_or_else(|| "0.0.0.0:0".into())
    }
}

/// The template hash a task runs.
pub(super) fn template_of(task: &Task) -> Option<&String> {
    task.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(LABEL_SPEC_HASH))
}

/// The active slots of a service, in slot order: per slot, its newest task that should run
/// (or, if none should, nothing: the slot is being scaled away).
pub(super) fn slots(tasks: Vec<Task>, now_ms: i64) -> Vec<Slot> {
    let mut by_slot: BTreeMap<i64, Vec<Task>> = BTreeMap::new();
    for t in tasks {
        by_slot.entry(t.slot.unwrap_or(0)).or_default().push(t);
    }
    let mut out = Vec::new();
    for (_, mut tasks) in by_slot {
        tasks.sort_by_key(|t| t.version.as_ref().and_then(|v| v.index).unwrap_or(0));
        let wanted = tasks
            .iter()
            .rev()
            .find(|t| t.desired_state == Some(TaskState::RUNNING))
            .cloned();
        if let Some(task) = wanted {
            let running = task.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING);
            let crash = tasks
                .iter()
                .rev()
                .filter(|t| !running && template_of(t) == template_of(&task))
                .filter_map(|t| {
                    let status = t.status.as_ref()?;
                    let failed =
                        matches!(status.state, Some(TaskState::FAILED | TaskState::REJECTED));
                    let at = status.timestamp.as_deref().and_then(parse_rfc3339_ms)?;
                    (failed && now_ms - at < CRASH_WINDOW_MS).then(|| {
                        format!(
                            "task {} {}: {}",
                            t.id.as_deref().unwrap_or("?"),
                            status.state.map(|s| s.to_string()).unwrap_or_default(),
                            status
                                .err
                                .clone()
                                .or(status.message.clone())
                                .unwrap_or_else(|| "no message".into())
                        )
                    })
                })
                .next();
            out.push(Slot { task, crash });
        }
    }
    out
}

/// The state of a slot's replica; `rolled_back` is Swarm's message about an update it rolled
/// back or paused that pug has not acknowledged yet (every replica reports it, so that the
/// controller counts the failure).
pub(super) fn state_of(slot: &Slot, rolled_back: Option<&str>) -> InstanceState {
    let task = &slot.task;
    let status = task.status.clone().unwrap_or_default();
    match (rolled_back, status.state) {
        (Some(message), _) => InstanceState::Exited {
            reason: format!("Swarm stopped the update: {message}"),
        },
        (None, _) if slot.crash.is_some() => InstanceState::Exited {
            reason: slot.crash.clone().unwrap_or_default(),
        },
        (
            None,
            Some(
                TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED,
            ),
        ) => InstanceState::Exited {
            reason: format!(
                "task {} is {}: {}",
                task.id.as_deref().unwrap_or("?"),
                status.state.map(|s| s.to_string()).unwrap_or_default(),
                status
                    .err
                    .or(status.message)
                    .unwrap_or_else(|| "no message".into())
            ),
        },
        _ => InstanceState::Running,
    }
}

/// The instances of `tenant`'s `service`, one per active slot of `tasks`, in slot order, then
/// one pending instance per replica the service wants but Swarm has not created a task for.
/// Each reports the template hash it runs: what the backend's `spec_hash` of its spec is, so
/// any pug (a restarted one, another replica) reads the same hash from Swarm alone.
pub(super) fn instances(
    tenant: &TenantId,
    service: &Service,
    tasks: Vec<Task>,
    addresses: &Addresses,
    now_ms: i64,
) -> Vec<Instance> {
    let rolled_back = unacknowledged_rollback(service);
    let mut out = Vec::new();
    for (replica, slot) in slots(tasks, now_ms).into_iter().enumerate() {
        let replica = replica as u32;
        let task = &slot.task;
        let template = template_of(task).cloned().unwrap_or_default();
        out.push(Instance {
            tenant: tenant.clone(),
            replica,
            spec_hash: template,
            endpoint: addresses.endpoint(task),
            state: state_of(&slot, rolled_back.as_deref()),
            started_at_ms: task
                .created_at
                .as_deref()
                .and_then(parse_rfc3339_ms)
                .unwrap_or(0),
        });
    }
    // Slots the service wants but whose task Swarm has not created yet (a stop-first update
    // between the old task's exit and the new one's creation, or scheduling): they are pending
    // instances of the service's current template, not missing ones, so the controller waits
    // for them instead of "starting" them again on every pass.
    let spec = service.spec.as_ref();
    let wanted = spec.map(replicas_of).unwrap_or(0).max(0) as u32;
    let template = spec
        .and_then(|s| s.labels.as_ref())
        .and_then(|l| l.get(LABEL_SPEC_HASH).cloned())
        .unwrap_or_default();
    for replica in out.len() as u32..wanted {
        out.push(Instance {
            tenant: tenant.clone(),
            replica,
            spec_hash: template.clone(),
            // Nothing answers here: probes see it as not ready until its task runs.
            endpoint: "0.0.0.0:0".into(),
            state: InstanceState::Running,
            // Waiting since the service last changed, so a slot Swarm never schedules times
            // out like a replica that never gets healthy.
            started_at_ms: service
                .updated_at
                .as_deref()
                .and_then(parse_rfc3339_ms)
                .unwrap_or(now_ms),
        });
    }
    out
}

/// `2026-11-22T04:09:25.803293032Z` → milliseconds since the Unix epoch (UTC only, as Docker
/// writes them).
pub(crate) fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let millis: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use bollard::models::{
        ObjectVersion, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
        ServiceUpdateStatus, ServiceUpdateStatusStateEnum, TaskSpec, TaskSpecContainerSpec,
        TaskStatus,
    };

    use super::*;

    /// 2026-11-22T04:09:25Z.
    const NOW: i64 = 1_795_320_565_000;
    const NOW_TEXT: &str = "2026-11-22T04:09:25Z";
    /// Well inside the crash window before [`NOW`].
    const RECENT: &str = "2026-11-22T04:08:25Z";
    /// Outside it.
    const LONG_AGO: &str = "2026-11-22T03:09:25Z";

    /// A task of `slot`, version `index`, running template `template`, that should be in
    /// `desired` and is in `state` since `at`.
    fn task(
        slot: i64,
        index: u64,
        template: &str,
        desired: TaskState,
        state: TaskState,
        at: &str,
    ) -> Task {
        Task {
            id: Some(format!("t{slot}v{index}")),
            slot: Some(slot),
            version: Some(ObjectVersion { index: Some(index) }),
            node_id: Some("n1".into()),
            created_at: Some(NOW_TEXT.into()),
            desired_state: Some(desired),
            spec: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    labels: Some(HashMap::from([(
                        LABEL_SPEC_HASH.to_owned(),
                        template.to_owned(),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(TaskStatus {
                state: Some(state),
                timestamp: Some(at.into()),
                err: (state == TaskState::FAILED).then(|| "exit 1".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    use TaskState::{FAILED, PENDING, REJECTED, RUNNING, SHUTDOWN, STARTING};

    #[test]
    fn slots_pick_the_newest_task_that_should_run_and_notice_crash_loops() {
        struct Case {
            what: &'static str,
            tasks: Vec<Task>,
            /// Per active slot: (id of the chosen task, whether a crash is reported).
            want: Vec<(&'static str, bool)>,
        }
        let cases = [
            Case {
                what: "one running task per slot, in slot order whatever the listing order",
                tasks: vec![
                    task(2, 5, "a", RUNNING, RUNNING, RECENT),
                    task(1, 4, "a", RUNNING, RUNNING, RECENT),
                ],
                want: vec![("t1v4", false), ("t2v5", false)],
            },
            Case {
                what: "the newest desired-running task of a slot wins",
                tasks: vec![
                    task(1, 7, "b", RUNNING, STARTING, NOW_TEXT),
                    task(1, 4, "a", SHUTDOWN, SHUTDOWN, RECENT),
                ],
                want: vec![("t1v7", false)],
            },
            Case {
                what: "a slot whose tasks should all stop is being scaled away",
                tasks: vec![
                    task(1, 4, "a", RUNNING, RUNNING, RECENT),
                    task(2, 5, "a", SHUTDOWN, RUNNING, RECENT),
                ],
                want: vec![("t1v4", false)],
            },
            Case {
                what:
                    "a recent failure of the same template while the new task starts: a crash loop",
                tasks: vec![
                    task(1, 6, "a", SHUTDOWN, FAILED, RECENT),
                    task(1, 7, "a", RUNNING, STARTING, NOW_TEXT),
                ],
                want: vec![("t1v7", true)],
            },
            Case {
                what: "a rejected task counts like a failed one",
                tasks: vec![
                    task(1, 6, "a", SHUTDOWN, REJECTED, RECENT),
                    task(1, 7, "a", RUNNING, PENDING, NOW_TEXT),
                ],
                want: vec![("t1v7", true)],
            },
            Case {
                what: "a failure outside the crash window does not count",
                tasks: vec![
                    task(1, 6, "a", SHUTDOWN, FAILED, LONG_AGO),
                    task(1, 7, "a", RUNNING, STARTING, NOW_TEXT),
                ],
                want: vec![("t1v7", false)],
            },
            Case {
                what: "a failure of another template (the previous version) does not count",
                tasks: vec![
                    task(1, 6, "old", SHUTDOWN, FAILED, RECENT),
                    task(1, 7, "new", RUNNING, STARTING, NOW_TEXT),
                ],
                want: vec![("t1v7", false)],
            },
            Case {
                what: "once the newest task runs, earlier failures are over",
                tasks: vec![
                    task(1, 6, "a", SHUTDOWN, FAILED, RECENT),
                    task(1, 7, "a", RUNNING, RUNNING, NOW_TEXT),
                ],
                want: vec![("t1v7", false)],
            },
            Case {
                what: "no tasks",
                tasks: vec![],
                want: vec![],
            },
        ];
        for case in cases {
            let got: Vec<(String, bool)> = slots(case.tasks, NOW)
                .into_iter()
                .map(|s| (s.task.id.clone().unwrap_or_default(), s.crash.is_some()))
                .collect();
            let want: Vec<(String, bool)> = case
                .want
                .iter()
                .map(|(id, c)| ((*id).to_owned(), *c))
                .collect();
            assert_eq!(got, want, "{}", case.what);
        }
    }

    #[test]
    fn a_crash_names_the_failed_task_and_its_error() {
        let got = slots(
            vec![
                task(1, 6, "a", SHUTDOWN, FAILED, RECENT),
                task(1, 7, "a", RUNNING, STARTING, NOW_TEXT),
            ],
            NOW,
        );
        assert_eq!(got[0].crash.as_deref(), Some("task t1v6 failed: exit 1"));
    }

    #[test]
    fn replica_states_follow_task_states() {
        let exited = |reason: &str| InstanceState::Exited {
            reason: reason.to_owned(),
        };
        let slot = |state: TaskState, crash: Option<&str>| Slot {
            task: task(1, 3, "a", RUNNING, state, NOW_TEXT),
            crash: crash.map(str::to_owned),
        };
        let cases = [
            (slot(RUNNING, None), None, InstanceState::Running),
            (slot(STARTING, None), None, InstanceState::Running),
            (slot(PENDING, None), None, InstanceState::Running),
            (
                slot(TaskState::ASSIGNED, None),
                None,
                InstanceState::Running,
            ),
            (
                slot(FAILED, None),
                None,
                exited("task t1v3 is failed: exit 1"),
            ),
            (
                slot(SHUTDOWN, None),
                None,
                exited("task t1v3 is shutdown: no message"),
            ),
            (
                slot(REJECTED, None),
                None,
                exited("task t1v3 is rejected: no message"),
            ),
            (
                slot(TaskState::COMPLETE, None),
                None,
                exited("task t1v3 is complete: no message"),
            ),
            (
                slot(TaskState::ORPHANED, None),
                None,
                exited("task t1v3 is orphaned: no message"),
            ),
            (
                slot(TaskState::REMOVE, None),
                None,
                exited("task t1v3 is remove: no message"),
            ),
            (
                slot(STARTING, Some("task t1v2 failed: exit 1")),
                None,
                exited("task t1v2 failed: exit 1"),
            ),
            (
                slot(RUNNING, Some("task t1v2 failed: exit 1")),
                Some("update paused"),
                exited("Swarm stopped the update: update paused"),
            ),
            (
                slot(RUNNING, None),
                Some("rolled back"),
                exited("Swarm stopped the update: rolled back"),
            ),
        ];
        for (slot, rolled_back, want) in cases {
            let state = slot.task.status.as_ref().and_then(|s| s.state);
            assert_eq!(
                state_of(&slot, rolled_back),
                want,
                "{state:?}, crash {:?}, rolled back {rolled_back:?}",
                slot.crash
            );
        }
    }

    fn service(
        replicas: i64,
        template: &str,
        update: Option<ServiceUpdateStatusStateEnum>,
    ) -> Service {
        Service {
            updated_at: Some(RECENT.into()),
            spec: Some(ServiceSpec {
                labels: Some(HashMap::from([(
                    LABEL_SPEC_HASH.to_owned(),
                    template.to_owned(),
                )])),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(replicas),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_status: update.map(|state| ServiceUpdateStatus {
                state: Some(state),
                message: Some("update rolled back".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn instances_are_slots_then_pending_replicas() {
        let tenant = TenantId::parse("acme").unwrap();
        // Tasks are named by their id, `t<slot>v<index>` (see `task`).
        let nodes = Addresses(HashMap::from([
            ("t1v4".to_owned(), "10.0.1.4".to_owned()),
            ("t2v5".to_owned(), "10.0.1.5".to_owned()),
        ]));
        let tasks = vec![
            task(1, 4, "a", RUNNING, RUNNING, RECENT),
            task(2, 5, "a", RUNNING, RUNNING, RECENT),
        ];
        let got = instances(&tenant, &service(3, "a", None), tasks.clone(), &nodes, NOW);
        let seen: Vec<(u32, &str, &str, &InstanceState, i64)> = got
            .iter()
            .map(|i| {
                (
                    i.replica,
                    i.spec_hash.as_str(),
                    i.endpoint.as_str(),
                    &i.state,
                    i.started_at_ms,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                // Each the template it runs.
                (0, "a", "10.0.1.4:3000", &InstanceState::Running, NOW),
                (1, "a", "10.0.1.5:3000", &InstanceState::Running, NOW),
                // Not scheduled yet: pending since the service changed, reachable nowhere.
                (2, "a", "0.0.0.0:0", &InstanceState::Running, NOW - 60_000),
            ]
        );

        // A task the overlay does not know the address of yet: reachable nowhere.
        let unknown = Addresses(HashMap::from([("t1v4".to_owned(), "10.0.1.4".to_owned())]));
        let got = instances(
            &tenant,
            &service(2, "a", None),
            tasks.clone(),
            &unknown,
            NOW,
        );
        assert_eq!(got[0].endpoint, "10.0.1.4:3000");
        assert_eq!(got[1].endpoint, "0.0.0.0:0");

        // A rollback pug has not acknowledged: every replica reports it, pending ones do not
        // exist (the service wants no more than it has).
        let got = instances(
            &tenant,
            &service(
                2,
                "a",
                Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED),
            ),
            tasks,
            &nodes,
            NOW,
        );
        assert_eq!(got.len(), 2);
        for i in got {
            assert_eq!(
                i.state,
                InstanceState::Exited {
                    reason: "Swarm stopped the update: update rolled back".into()
                }
            );
        }

        // Scaled to zero with no tasks: nothing.
        assert!(instances(&tenant, &service(0, "a", None), vec![], &nodes, NOW).is_empty());
    }

    #[test]
    fn docker_timestamps() {
        let cases = [
            ("1970-01-01T00:00:00Z", Some(0)),
            ("2026-11-22T04:09:25.803293032Z", Some(1_795_320_565_803)),
            (NOW_TEXT, Some(NOW)),
            ("2026-11-22T04:09:25.8Z", Some(1_795_320_565_800)),
            ("2024-02-29T12:00:00Z", Some(1_709_208_000_000)),
            ("garbage", None),
            ("2026-11-22", None),
            ("2026-11-22Tnoon", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_rfc3339_ms(text), want, "{text}");
        }
    }
}

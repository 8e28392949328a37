//! Table tests of the planners: one row per decision the README promises (crash loop after N
//! exits, rollback of a version that never gets healthy, one replacement at a time while the
//! others are healthy, no downgrade, degraded versus failed, scaling, suspend and delete), so
//! every branch of a pass is reachable from a row. Time is the `NOW` constant.

use std::time::Duration;

use pug_orchestrator::{DatabaseSettings, InstanceSecrets};
use pug_types::{Overrides, TenantId};

use super::*;

/// What the tests read out of a plan.
impl Plan {
    /// The status change the plan writes, if any.
    fn status(&self) -> Option<&StatusChange> {
        self.actions.iter().find_map(|a| match a {
            Action::WriteStatus(change) => Some(&**change),
            _ => None,
        })
    }

    /// The events the plan records by itself (a start records its own once it knows the endpoint).
    fn events(&self) -> Vec<(EventReason, &str)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Record { reason, message } => Some((*reason, message.as_str())),
                Action::RollBack { message, .. } => {
                    Some((EventReason::UpgradeRolledBack, message.as_str()))
                }
                Action::WriteStatus(change) => change
                    .phase_changed
                    .as_deref()
                    .map(|m| (EventReason::PhaseChanged, m)),
                _ => None,
            })
            .collect()
    }
}

const NOW: i64 = 1_800_000_000_000;
const SECRET: &str = "s3cret-admin-pw";

fn policy() -> Policy {
    Policy {
        ready_timeout: Duration::from_secs(120),
        crash_loop_threshold: 3,
        readiness_poll: Duration::from_millis(200),
        wake_poll: Duration::from_millis(25),
    }
}

fn id() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn version(v: &str) -> GrafanaVersion {
    GrafanaVersion::parse(v).unwrap()
}

fn spec(replica: u32, v: &str) -> InstanceSpec {
    InstanceSpec {
        tenant: id(),
        replica,
        version: version(v),
        root_url: "http://127.0.0.1:8080/t/acme/".into(),
        serve_from_sub_path: true,
        gateway: pug_orchestrator::GatewayTrust::Addresses(vec!["127.0.0.1".into()]),
        port: 20000 + replica as u16,
        secrets: InstanceSecrets {
            admin_password: SecretString::from(SECRET),
            secret_key: SecretString::from("secret-key-value"),
            renderer_token: None,
        },
        database: DatabaseSettings::Sqlite,
        rendering: None,
        plugin_preinstall: false,
        data_source_proxy_whitelist: Vec::new(),
        overrides: Overrides::default(),
        provisioning: Default::default(),
    }
}

fn tenant(v: &str, replicas: u32, running: Option<&str>, state: DesiredState) -> Tenant {
    Tenant {
        id: id(),
        spec: TenantSpec {
            display_name: "Acme".into(),
            version: version(v),
            replicas: pug_types::Replicas::new(replicas).unwrap(),
            desired_state: state,
            overrides: Overrides::default(),
            labels: Default::default(),
            datasources: Vec::new(),
            dashboards: Vec::new(),
            idle_timeout_secs: None,
        },
        generation: 7,
        status: TenantStatus {
            running_version: running.map(str::to_owned),
            ..TenantStatus::pending()
        },
        created_at_ms: 0,
    }
}

/// What the orchestrator reports for one replica before the pass acts.
#[derive(Clone)]
enum Seen {
    Missing,
    /// Running `version` for `age_s` seconds; `health` is what a probe would answer.
    Running {
        version: &'static str,
        age_s: i64,
        health: Health,
    },
    /// Exited while running `version`, with its reason.
    Exited {
        version: &'static str,
        why: &'static str,
    },
}

use Seen::{Exited, Missing};

fn running(version: &'static str, age_s: i64, health: Health) -> Seen {
    Seen::Running {
        version,
        age_s,
        health,
    }
}

fn ready() -> Health {
    Health::Ready
}

fn failing_db() -> Health {
    Health::Unhealthy("/api/health answered 503 with database \"failing\"".into())
}

fn refused() -> Health {
    Health::Unreachable("connection refused".into())
}

struct Row {
    name: &'static str,
    /// The desired version and replica count.
    want: (&'static str, u32),
    /// `status.running_version`.
    ran: Option<&'static str>,
    attempts: u32,
    seen: Vec<Seen>,
    /// What a probe answers for a replica this pass started.
    started: Health,
    /// Both planning steps, summarised (see `summary`).
    actions: &'static [&'static str],
    outcome: Outcome,
    /// A part of the `last_error` written, or `None` for no error.
    error: Option<&'static str>,
}

fn instance(replica: u32, version: &str, state: InstanceState, started_at_ms: i64) -> Instance {
    Instance {
        tenant: id(),
        replica,
        spec_hash: spec(replica, version).hash(),
        endpoint: format!("127.0.0.1:{}", 20000 + replica),
        state,
        started_at_ms,
    }
}

/// The observation of a row, and what the pass sees after the replica step (as the executor
/// and the probes would make it: a started replica runs the desired spec, started at `NOW`).
fn run(row: &Row) -> (Observed, Vec<Action>, Plan) {
    let (want, count) = row.want;
    let mut instances = Vec::new();
    let mut healths = Vec::new();
    for (replica, seen) in row.seen.iter().enumerate() {
        let replica = replica as u32;
        match seen {
            Missing => {}
            Seen::Running {
                version,
                age_s,
                health,
            } => {
                instances.push(instance(
                    replica,
                    version,
                    InstanceState::Running,
                    NOW - age_s * 1000,
                ));
                healths.push((replica, health.clone()));
            }
            Exited { version, why } => instances.push(instance(
                replica,
                version,
                InstanceState::Exited {
                    reason: (*why).into(),
                },
                NOW - 60_000,
            )),
        }
    }
    let specs: Vec<InstanceSpec> = (0..count).map(|r| spec(r, want)).collect();
    let observed = Observed {
        hashes: specs.iter().map(|s| s.hash()).collect(),
        specs,
        instances,
        secrets: vec![SecretString::from(SECRET)],
        attempts: row.attempts,
        waking: false,
    };
    let first = replicas(&observed);
    let started: Vec<u32> = first
        .iter()
        .filter_map(|a| match a {
            Action::Start { replica, .. } => Some(*replica),
            _ => None,
        })
        .collect();
    let probed: Vec<Probed> = observed
        .specs
        .iter()
        .map(|s| {
            let desired_hash = s.hash();
            let (instance, health) = if started.contains(&s.replica) {
                let i = instance(s.replica, want, InstanceState::Running, NOW);
                (Some(i), row.started.clone())
            } else {
                let i = observed
                    .instances
                    .iter()
                    .find(|i| i.replica == s.replica)
                    .cloned();
                let h = healths
                    .iter()
                    .find(|(r, _)| *r == s.replica)
                    .map(|(_, h)| h.clone());
                (i, h.unwrap_or_else(refused))
            };
            let health = instance
                .as_ref()
                .filter(|i| wants_probe(i, &desired_hash))
                .map(|_| health);
            Probed {
                replica: s.replica,
                desired_hash,
                instance,
                health,
            }
        })
        .collect();
    let t = tenant(want, count, row.ran, DesiredState::Active);
    let plan = rollout(&observed, &probed, &t, &policy(), NOW);
    (observed, first, plan)
}

fn summary(a: &Action) -> String {
    match a {
        Action::Stop { replica } => format!("stop {replica}"),
        Action::Park { replica } => format!("park {replica}"),
        Action::ReleasePorts { from } => format!("release {from}"),
        Action::Start { replica, reason } => format!(
            "start {replica} {}",
            match reason {
                StartReason::Missing => "missing",
                StartReason::NewSpec => "new-spec",
                StartReason::Crashed { .. } => "crashed",
                StartReason::Woken => "woken",
            }
        ),
        Action::Replace { replica } => format!("replace {replica}"),
        Action::RollBack { spec, .. } => format!("rollback to {}", spec.version),
        Action::Archive => "archive".into(),
        Action::DropDatabase => "drop database".into(),
        Action::Record { reason, .. } => format!("record {reason}"),
        Action::WriteStatus(change) => match change.figures {
            Some((phase, _, _)) => format!("status {phase}"),
            None => "status kept, last_error set".into(),
        },
        Action::RemoveRecord => "remove record".into(),
        Action::ForgetMetrics => "forget metrics".into(),
        Action::FinishWake { woke, .. } => format!("finish wake woke={woke}"),
    }
}

fn poll() -> Outcome {
    Outcome::Poll(Duration::from_millis(200))
}

fn slow_poll() -> Outcome {
    Outcome::Poll(Duration::from_secs(5))
}

fn retry(reason: &str) -> Outcome {
    Outcome::Retry {
        reason: reason.into(),
    }
}

const V1: &str = "11.3.0";
const V2: &str = "11.4.0";

fn rows() -> Vec<Row> {
    vec![
        // Creation and readiness.
        Row {
            name: "a new tenant's replica starts; pending readiness polls",
            want: (V1, 1),
            ran: None,
            attempts: 0,
            seen: vec![Missing],
            started: refused(),
            actions: &["start 0 missing", "status provisioning"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "a replica ready as soon as it starts converges in the same pass",
            want: (V1, 1),
            ran: None,
            attempts: 0,
            seen: vec![Missing],
            started: ready(),
            actions: &["start 0 missing", "status ready"],
            outcome: Outcome::Converged,
            error: None,
        },
        Row {
            name: "a running replica not ready yet, within the timeout, polls",
            want: (V1, 1),
            ran: None,
            attempts: 0,
            seen: vec![running(V1, 10, failing_db())],
            started: refused(),
            actions: &["status provisioning"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "every replica ready on the desired spec converges",
            want: (V1, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 500, ready()), running(V1, 500, ready())],
            started: refused(),
            actions: &["status ready"],
            outcome: Outcome::Converged,
            error: None,
        },
        // Scaling.
        Row {
            name: "scale up: the new replica starts, the tenant is degraded meanwhile",
            want: (V1, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 500, ready()), Missing],
            started: refused(),
            actions: &["start 1 missing", "status degraded"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "scale down: replicas beyond the count go, then their ports",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![
                running(V1, 500, ready()),
                running(V1, 500, ready()),
                running(V1, 500, ready()),
            ],
            started: refused(),
            actions: &[
                "stop 1",
                "record ReplicaRemoved",
                "stop 2",
                "record ReplicaRemoved",
                "release 1",
                "status ready",
            ],
            outcome: Outcome::Converged,
            error: None,
        },
        // Crashes.
        Row {
            name: "an exited replica is restarted and the pass retries with backoff",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![Exited {
                version: V1,
                why: "exited with status 1: bad config",
            }],
            started: refused(),
            actions: &["start 0 crashed", "status provisioning"],
            outcome: retry("replica 0 exited with status 1: bad config"),
            error: Some("replica 0 exited with status 1: bad config"),
        },
        Row {
            name: "one exit short of the crash-loop threshold is not failed yet",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 1,
            seen: vec![Exited {
                version: V1,
                why: "exited with status 1",
            }],
            started: refused(),
            actions: &["start 0 crashed", "status provisioning"],
            outcome: retry("replica 0 exited with status 1"),
            error: Some("exited with status 1"),
        },
        Row {
            name: "crash loop: the Nth exit in a row fails the tenant (and keeps retrying)",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 2,
            seen: vec![Exited {
                version: V1,
                why: "exited with status 1: last log line",
            }],
            started: refused(),
            actions: &["start 0 crashed", "status failed"],
            outcome: retry("replica 0 exited with status 1: last log line"),
            error: Some("last log line"),
        },
        Row {
            name: "a replica that exited on an older spec starts on the new one: no crash",
            want: (V2, 1),
            ran: Some(V2),
            attempts: 0,
            seen: vec![Exited {
                version: V1,
                why: "stopped",
            }],
            started: refused(),
            actions: &["start 0 new-spec", "status provisioning"],
            outcome: poll(),
            error: None,
        },
        // Degraded versus failed.
        Row {
            name: "degraded: one replica ready, one reports its database failing",
            want: (V1, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 500, ready()), running(V1, 10, failing_db())],
            started: refused(),
            actions: &["status degraded"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "degraded: a replica that answers but is not healthy after the timeout",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 200, failing_db())],
            started: refused(),
            actions: &["status degraded"],
            outcome: slow_poll(),
            error: Some("replica 0 not healthy after 120s: /api/health answered 503"),
        },
        Row {
            name: "failed: started but never answering, and nothing else ready",
            want: (V1, 1),
            ran: None,
            attempts: 0,
            seen: vec![running(V1, 200, refused())],
            started: refused(),
            actions: &["status failed"],
            outcome: slow_poll(),
            error: Some("replica 0 not healthy after 120s: connection refused"),
        },
        Row {
            name: "degraded, not failed: a hung replica while another serves",
            want: (V1, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 500, ready()), running(V1, 200, refused())],
            started: refused(),
            actions: &["status degraded"],
            outcome: slow_poll(),
            error: Some("replica 1 not healthy after 120s"),
        },
        // Rolling replacement.
        Row {
            name: "an upgrade replaces the first outdated replica",
            want: (V2, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V1, 500, ready()), running(V1, 500, ready())],
            started: refused(),
            actions: &["replace 0", "record InstanceReplaced", "status upgrading"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "the next outdated replica is replaced once the replaced one is ready",
            want: (V2, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V2, 30, ready()), running(V1, 500, ready())],
            started: refused(),
            actions: &["replace 1", "record InstanceReplaced", "status upgrading"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "one at a time: no replacement while the replaced replica is not ready",
            want: (V2, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V2, 30, failing_db()), running(V1, 500, ready())],
            started: refused(),
            actions: &["status upgrading"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "no replacement while another replica is being restarted after a crash",
            want: (V2, 3),
            ran: Some(V1),
            attempts: 0,
            seen: vec![
                running(V1, 500, ready()),
                running(V1, 500, ready()),
                Exited {
                    version: V2,
                    why: "exited with status 2",
                },
            ],
            started: ready(),
            actions: &["start 2 crashed", "status upgrading"],
            outcome: retry("replica 2 exited with status 2"),
            error: Some("exited with status 2"),
        },
        Row {
            name: "a changed configuration (same version) rolls like an upgrade",
            want: (V1, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V2, 500, ready())],
            started: refused(),
            actions: &["replace 0", "record InstanceReplaced", "status upgrading"],
            outcome: poll(),
            error: None,
        },
        Row {
            name: "an upgrade completes when every replica is ready on the new version",
            want: (V2, 2),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V2, 30, ready()), running(V2, 10, ready())],
            started: refused(),
            actions: &["status ready"],
            outcome: Outcome::Converged,
            error: None,
        },
        // Rollback, and no downgrade.
        Row {
            name: "rollback: the new version is not healthy within the timeout",
            want: (V2, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![running(V2, 200, failing_db())],
            started: refused(),
            actions: &["rollback to 11.3.0", "status kept, last_error set"],
            outcome: Outcome::Poll(Duration::ZERO),
            error: Some("upgrade to Grafana 11.4.0 failed (replica 0 not healthy after 120s"),
        },
        Row {
            name: "rollback: the new version crash-loops",
            want: (V2, 1),
            ran: Some(V1),
            attempts: 2,
            seen: vec![Exited {
                version: V2,
                why: "exited with status 1: migration failed",
            }],
            started: refused(),
            actions: &[
                "start 0 crashed",
                "rollback to 11.3.0",
                "status kept, last_error set",
            ],
            outcome: Outcome::Poll(Duration::ZERO),
            error: Some(
                "upgrade to Grafana 11.4.0 failed (replica 0 exited with status 1: migration failed); rolled back to 11.3.0",
            ),
        },
        Row {
            name: "no rollback below the crash-loop threshold: the upgrade retries",
            want: (V2, 1),
            ran: Some(V1),
            attempts: 0,
            seen: vec![Exited {
                version: V2,
                why: "exited with status 1",
            }],
            started: refused(),
            actions: &["start 0 crashed", "status upgrading"],
            outcome: retry("replica 0 exited with status 1"),
            error: Some("exited with status 1"),
        },
        Row {
            name: "no downgrade: a first version that never ran has nothing to go back to",
            want: (V2, 1),
            ran: None,
            attempts: 2,
            seen: vec![Exited {
                version: V2,
                why: "exited with status 1",
            }],
            started: refused(),
            actions: &["start 0 crashed", "status failed"],
            outcome: retry("replica 0 exited with status 1"),
            error: Some("exited with status 1"),
        },
        Row {
            name: "no downgrade: the version that ran is the one asked for",
            want: (V2, 1),
            ran: Some(V2),
            attempts: 0,
            seen: vec![running(V2, 200, failing_db())],
            started: refused(),
            actions: &["status degraded"],
            outcome: slow_poll(),
            error: Some("not healthy after 120s"),
        },
        Row {
            name: "no downgrade: a running version that does not parse is not gone back to",
            want: (V2, 1),
            ran: Some("not-a-version"),
            attempts: 0,
            seen: vec![running(V2, 200, failing_db())],
            started: refused(),
            actions: &["status degraded"],
            outcome: slow_poll(),
            error: Some("not healthy after 120s"),
        },
    ]
}

#[test]
fn every_decision_of_an_active_tenant() {
    for row in rows() {
        let (_, first, plan) = run(&row);
        let actions: Vec<String> = first.iter().chain(&plan.actions).map(summary).collect();
        assert_eq!(actions, row.actions, "{}: actions", row.name);
        assert_eq!(plan.outcome, row.outcome, "{}: outcome", row.name);
        let written = plan.status().and_then(|s| s.write.as_ref());
        let error = written.and_then(|s| s.last_error.as_deref());
        match (row.error, error) {
            (None, None) => {}
            (Some(want), Some(got)) => assert!(got.contains(want), "{}: {got}", row.name),
            (want, got) => panic!("{}: last_error {got:?}, expected {want:?}", row.name),
        }
    }
}

#[test]
fn ready_records_the_version_that_ran_and_clears_the_error() {
    let row = rows()
        .into_iter()
        .find(|r| r.name.starts_with("an upgrade completes"));
    let (_, _, plan) = run(&row.unwrap());
    let status = plan.status().unwrap().write.as_ref().unwrap();
    assert_eq!(status.running_version.as_deref(), Some(V2));
    assert_eq!(status.last_error, None);
    assert_eq!(status.ready_replicas, 2);
    assert_eq!(status.endpoints, ["127.0.0.1:20000", "127.0.0.1:20001"]);
    assert_eq!(status.observed_generation, 7);
    assert_eq!(status.updated_at_ms, NOW);
}

#[test]
fn a_phase_not_ready_keeps_the_version_that_ran() {
    let row = rows()
        .into_iter()
        .find(|r| r.name.starts_with("one at a time"));
    let (_, _, plan) = run(&row.unwrap());
    let status = plan.status().unwrap().write.as_ref().unwrap();
    assert_eq!(status.running_version.as_deref(), Some(V1));
    assert_eq!(status.phase, Phase::Upgrading);
}

#[test]
fn a_rollback_puts_back_exactly_the_version_that_ran_at_the_generation_seen() {
    let row = rows()
        .into_iter()
        .find(|r| r.name.starts_with("rollback: the new version is"));
    let (_, _, plan) = run(&row.unwrap());
    let Action::RollBack {
        spec,
        generation,
        message,
    } = &plan.actions[0]
    else {
        panic!("{:?}", plan.actions)
    };
    assert_eq!(spec.version, version(V1));
    assert_eq!(spec.replicas, 1);
    assert_eq!(*generation, 7);
    assert!(message.ends_with("; rolled back to 11.3.0"), "{message}");
    assert_eq!(
        plan.events(),
        [(EventReason::UpgradeRolledBack, message.as_str())]
    );
    let status = plan.status().unwrap().write.as_ref().unwrap();
    assert_eq!(status.phase, Phase::Pending, "the phase stays as it was");
    assert_eq!(status.last_error.as_deref(), Some(message.as_str()));
    assert_eq!(status.updated_at_ms, NOW);
}

#[test]
fn no_secret_reaches_an_event_a_status_or_an_outcome() {
    let row = Row {
        name: "a crash whose log line holds the admin password",
        want: (V1, 1),
        ran: Some(V1),
        attempts: 2,
        seen: vec![Exited {
            version: V1,
            why: "exited: bad password s3cret-admin-pw",
        }],
        started: refused(),
        actions: &["start 0 crashed", "status failed"],
        outcome: retry("replica 0 exited: bad password [redacted]"),
        error: Some("[redacted]"),
    };
    let (_, first, plan) = run(&row);
    let Action::Start { reason, .. } = &first[0] else {
        panic!("{first:?}")
    };
    let (_, message) = reason.event(0, &version(V1), "127.0.0.1:20000");
    assert_eq!(
        message,
        "replica 0 exited: bad password [redacted]; restarted"
    );
    assert_eq!(plan.outcome, row.outcome);
    let change = plan.status().unwrap();
    for text in [
        change
            .write
            .as_ref()
            .unwrap()
            .last_error
            .as_deref()
            .unwrap(),
        change.phase_changed.as_deref().unwrap(),
    ] {
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}

#[test]
fn each_start_reason_has_its_event() {
    let v = version(V2);
    let table = [
        (
            StartReason::Missing,
            EventReason::InstanceStarted,
            "replica 1 started: Grafana 11.4.0 at 10.0.0.5:3000",
        ),
        (
            StartReason::NewSpec,
            EventReason::InstanceStarted,
            "replica 1 started with the new spec: Grafana 11.4.0 at 10.0.0.5:3000",
        ),
        (
            StartReason::Crashed {
                why: "exited with status 1".into(),
            },
            EventReason::InstanceRestarted,
            "replica 1 exited with status 1; restarted",
        ),
    ];
    for (reason, event, message) in table {
        assert_eq!(
            reason.event(1, &v, "10.0.0.5:3000"),
            (event, message.to_owned())
        );
    }
}

#[test]
fn scale_down_and_replacement_events_say_what_happened() {
    let rows = rows();
    let scaled = rows
        .iter()
        .find(|r| r.name.starts_with("scale down"))
        .unwrap();
    let (_, first, _) = run(scaled);
    let plan = Plan {
        actions: first,
        outcome: Outcome::Converged,
    };
    assert_eq!(
        plan.events(),
        [
            (
                EventReason::ReplicaRemoved,
                "replica 1 removed (scaled to 1)"
            ),
            (
                EventReason::ReplicaRemoved,
                "replica 2 removed (scaled to 1)"
            ),
        ]
    );
    let upgrade = rows
        .iter()
        .find(|r| r.name.starts_with("an upgrade replaces"))
        .unwrap();
    let (_, _, plan) = run(upgrade);
    assert_eq!(
        plan.events(),
        [
            (
                EventReason::InstanceReplaced,
                "replica 0 restarted with the new spec (Grafana 11.4.0)"
            ),
            (EventReason::PhaseChanged, "phase pending → upgrading"),
        ]
    );
}

#[test]
fn status_change_writes_only_what_changed() {
    let mut t = tenant(V1, 2, Some(V1), DesiredState::Active);
    t.status = TenantStatus {
        phase: Phase::Ready,
        ready_replicas: 2,
        endpoints: vec!["a:1".into(), "b:2".into()],
        running_version: Some(V1.into()),
        observed_generation: 7,
        last_error: None,
        updated_at_ms: 5,
    };
    let same = status_change(
        &t,
        Phase::Ready,
        vec!["a:1".into(), "b:2".into()],
        None,
        Some(V1.into()),
        NOW,
    );
    assert_eq!(
        same,
        StatusChange {
            figures: Some((Phase::Ready, 2, 2)),
            phase_changed: None,
            write: None,
        },
        "an unchanged status is not written, but the metrics still see it"
    );
    let fewer = status_change(
        &t,
        Phase::Ready,
        vec!["a:1".into()],
        None,
        Some(V1.into()),
        NOW,
    );
    assert_eq!(fewer.phase_changed, None, "the same phase records no event");
    assert_eq!(fewer.write.as_ref().map(|s| s.ready_replicas), Some(1));
    let degraded = status_change(
        &t,
        Phase::Degraded,
        vec!["a:1".into()],
        Some("replica 1 not healthy".into()),
        Some(V1.into()),
        NOW,
    );
    assert_eq!(
        degraded.phase_changed.as_deref(),
        Some("phase ready → degraded: replica 1 not healthy")
    );
    assert_eq!(degraded.write.unwrap().updated_at_ms, NOW);
    t.spec.desired_state = DesiredState::Suspended;
    let suspended = status_change(&t, Phase::Suspended, Vec::new(), None, None, NOW);
    assert_eq!(
        suspended.figures,
        Some((Phase::Suspended, 0, 0)),
        "a tenant not active desires no replica"
    );
    assert_eq!(
        suspended.phase_changed.as_deref(),
        Some("phase ready → suspended")
    );
}

fn listed(replicas: &[u32]) -> Vec<Instance> {
    replicas
        .iter()
        .map(|r| instance(*r, V1, InstanceState::Running, NOW))
        .collect()
}

#[test]
fn suspended_deleted_and_gone_tenants() {
    let suspended = tenant(V1, 2, Some(V1), DesiredState::Suspended);
    let deleted = tenant(V1, 2, Some(V1), DesiredState::Deleted);
    let mut purged = deleted.clone();
    purged.spec.labels.set_pug(PURGE_LABEL, "true");
    let table: Vec<(&str, Plan, &[&str])> = vec![
        (
            "suspend stops every instance and keeps the data",
            suspend(&suspended, &listed(&[0, 1]), NOW),
            &["stop 0", "stop 1", "record Suspended", "status suspended"],
        ),
        (
            "suspend with nothing running records no stop",
            suspend(&suspended, &[], NOW),
            &["status suspended"],
        ),
        (
            "delete: status, stops, archive, event, record gone",
            delete(&deleted, &listed(&[0, 1]), true, NOW),
            &[
                "status deleting",
                "stop 0",
                "stop 1",
                "archive",
                "record Deleted",
                "remove record",
                "forget metrics",
            ],
        ),
        (
            "delete --purge drops the tenant database",
            delete(&purged, &listed(&[0]), true, NOW),
            &[
                "status deleting",
                "stop 0",
                "archive",
                "drop database",
                "record DatabaseDropped",
                "record Deleted",
                "remove record",
                "forget metrics",
            ],
        ),
        (
            "delete --purge without tenant databases has nothing to drop",
            delete(&purged, &[], false, NOW),
            &[
                "status deleting",
                "archive",
                "record Deleted",
                "remove record",
                "forget metrics",
            ],
        ),
        (
            "no tenant in the store: whatever runs of it goes",
            gone(&listed(&[0, 3])),
            &["stop 0", "stop 3", "forget metrics"],
        ),
    ];
    for (name, plan, actions) in table {
        let got: Vec<String> = plan.actions.iter().map(summary).collect();
        assert_eq!(got, actions, "{name}");
        assert_eq!(plan.outcome, Outcome::Converged, "{name}");
    }
    let plan = suspend(&suspended, &listed(&[0, 1]), NOW);
    assert_eq!(
        plan.events(),
        [
            (EventReason::Suspended, "2 instance(s) stopped; data kept"),
            (EventReason::PhaseChanged, "phase pending → suspended"),
        ]
    );
    let plan = delete(&purged, &[], true, NOW);
    assert_eq!(
        plan.events(),
        [
            (EventReason::PhaseChanged, "phase pending → deleting"),
            (
                EventReason::DatabaseDropped,
                "tenant database and role dropped (--purge)"
            ),
            (EventReason::Deleted, "instances stopped, data archived"),
        ]
    );
    let status = plan.status().unwrap().write.as_ref().unwrap();
    assert_eq!(status.running_version.as_deref(), Some(V1));
    assert_eq!(status.ready_replicas, 0);
}

#[test]
fn an_exited_replica_of_a_waking_tenant_was_parked_not_crashed() {
    let exited = |v: &str| {
        instance(
            0,
            v,
            InstanceState::Exited {
                reason: "container pug-acme-0 is Exited (0)".into(),
            },
            NOW - 60_000,
        )
    };
    // (waking, version it ran, what the replica step starts)
    let table = [
        (true, V1, "start 0 woken"),
        // Upgraded while asleep: the wake is the update.
        (true, V2, "start 0 new-spec"),
        (false, V1, "start 0 crashed"),
    ];
    for (waking, ran, want) in table {
        let observed = Observed {
            hashes: vec![spec(0, V1).hash()],
            specs: vec![spec(0, V1)],
            instances: vec![exited(ran)],
            secrets: vec![SecretString::from(SECRET)],
            attempts: 0,
            waking,
        };
        let got: Vec<String> = replicas(&observed).iter().map(summary).collect();
        assert_eq!(got, [want], "waking {waking}, ran {ran}");
    }
    let (event, message) = StartReason::Woken.event(
        0,
        &pug_types::GrafanaVersion::parse(V1).unwrap(),
        "10.0.0.5:3000",
    );
    assert_eq!(event, EventReason::InstanceStarted);
    assert!(message.contains("started again after sleep"), "{message}");
}

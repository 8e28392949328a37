//! The reconcile pass end to end inside the controller: the real planners and executor, the real
//! SQLite store in a temporary directory, and an in-memory orchestrator ([`fake`]). Each test
//! drives passes the way the queue does (a retry counts an attempt) and checks what the
//! orchestrator was asked to do and what the store recorded.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use fake::{Behaviour, Call, Fake, CRASH_REASON};
use pug_controller::{
    reconcile, Cause, Controller, ControllerMetrics, ControllerSettings, Outcome, Step,
};
use pug_store::{generate_secret, secret, Store};
use pug_types::{DesiredState, GrafanaVersion, Overrides, Phase, Tenant, TenantId, TenantSpec};

const V1: &str = "11.3.0";
const V2: &str = "11.4.0";

struct Harness {
    controller: Controller,
    fake: Fake,
    id: TenantId,
    _dir: tempfile::TempDir,
}

fn spec(version: &str, replicas: u32) -> TenantSpec {
    TenantSpec {
        display_name: "Acme".into(),
        version: GrafanaVersion::parse(version).unwrap(),
        replicas: pug_types::Replicas::new(replicas).unwrap(),
        desired_state: DesiredState::Active,
        overrides: Overrides::default(),
        labels: Default::default(),
        datasources: Vec::new(),
        dashboards: Vec::new(),
        idle_timeout_secs: None,
    }
}

/// A controller over a fresh store and fake, with tenant `acme` created (with its secrets when
/// `secrets` is true).
async fn harness(version: &str, replicas: u32, secrets: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    let store = Store::open_data_dir(dir.path(), &url).await.unwrap();
    let fake = Fake::start().await;
    let settings = ControllerSettings::from_config(&pug_config::Config::default());
    let metrics =
        ControllerMetrics::register(&mut prometheus_client::registry::Registry::default());
    let controller = Controller::new(store, Arc::new(fake.clone()), settings, metrics, None);
    let id = TenantId::parse("acme").unwrap();
    let mut generated = Vec::new();
    if secrets {
        generated.push((secret::ADMIN_PASSWORD, generate_secret()));
        generated.push((secret::SECRET_KEY, generate_secret()));
    }
    controller
        .store
        .create_tenant(&id, &spec(version, replicas), &generated)
        .await
        .unwrap();
    Harness {
        controller,
        fake,
        id,
        _dir: dir,
    }
}

impl Harness {
    /// Runs passes as the queue would until one converges or `until` holds after a pass, at most
    /// `limit` passes; returns their outcomes.
    async fn drive(&self, limit: usize, until: impl Fn(&Tenant) -> bool) -> Vec<Outcome> {
        let mut attempts = 0;
        let mut outcomes = Vec::new();
        for _ in 0..limit {
            let outcome = reconcile(&self.controller, &self.id, attempts)
                .await
                .unwrap();
            if let Outcome::Retry { .. } = outcome {
                attempts += 1;
            }
            outcomes.push(outcome.clone());
            if outcome == Outcome::Converged || until(&self.tenant().await) {
                return outcomes;
            }
        }
        panic!("not settled after {limit} passes: {outcomes:?}");
    }

    /// One pass, as the first of a series.
    async fn pass(&self) -> Outcome {
        reconcile(&self.controller, &self.id, 0).await.unwrap()
    }

    async fn tenant(&self) -> Tenant {
        self.controller
            .store
            .tenant(&self.id)
            .await
            .unwrap()
            .unwrap()
    }

    /// `(reason, message)` of every event, oldest first.
    async fn events(&self) -> Vec<(String, String)> {
        let events = self.controller.store.events(&self.id, 1000).await.unwrap();
        events.into_iter().map(|e| (e.reason, e.message)).collect()
    }

    async fn count(&self, reason: &str) -> usize {
        self.events()
            .await
            .iter()
            .filter(|(r, _)| r == reason)
            .count()
    }

    async fn upgrade(&self, version: &str) {
        let t = self.tenant().await;
        let mut spec = t.spec.clone();
        spec.version = GrafanaVersion::parse(version).unwrap();
        let event = ("UpgradeRequested", "upgrade requested");
        let store = &self.controller.store;
        store
            .update_spec(&self.id, None, &spec, event)
            .await
            .unwrap();
    }

    async fn set_desired(&self, state: DesiredState) {
        let mut spec = self.tenant().await.spec;
        spec.desired_state = state;
        let store = &self.controller.store;
        let event = ("SpecUpdated", "desired state changed");
        store
            .update_spec(&self.id, None, &spec, event)
            .await
            .unwrap();
    }

    fn started_since(&self, from: usize) -> Vec<(u32, String)> {
        self.fake.calls()[from..]
            .iter()
            .filter_map(|c| match c {
                Call::Started { replica, version } => Some((*replica, version.clone())),
                _ => None,
            })
            .collect()
    }
}

fn started(list: &[(u32, &str)]) -> Vec<(u32, String)> {
    list.iter().map(|(r, v)| (*r, v.to_string())).collect()
}

#[tokio::test]
async fn a_create_converges_to_ready() {
    let h = harness(V1, 2, true).await;
    let outcomes = h.drive(5, |_| false).await;
    assert_eq!(
        outcomes,
        [Outcome::Converged],
        "replicas ready as they start converge in one pass"
    );
    assert_eq!(h.started_since(0), started(&[(0, V1), (1, V1)]));
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Ready);
    assert_eq!(t.status.ready_replicas, 2);
    assert_eq!(t.status.running_version.as_deref(), Some(V1));
    assert_eq!(t.status.observed_generation, t.generation);
    assert_eq!(t.status.last_error, None);
    let reasons: Vec<String> = h.events().await.into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        reasons,
        [
            "Created",
            "InstanceStarted",
            "InstanceStarted",
            "PhaseChanged"
        ]
    );
    assert_eq!(h.controller.metrics.phases().get("ready"), Some(&1));
    // Converged means converged: another pass changes nothing.
    let calls = h.fake.calls().len();
    assert_eq!(h.pass().await, Outcome::Converged);
    assert_eq!(h.fake.calls().len(), calls);
    assert_eq!(h.events().await.len(), 4);
}

#[tokio::test]
async fn a_crash_loop_ends_in_failed_with_its_event() {
    let h = harness(V1, 1, true).await;
    h.fake.set(V1, Behaviour::Crashes);
    let outcomes = h.drive(10, |t| t.status.phase == Phase::Failed).await;
    let reason = format!("replica 0 {CRASH_REASON}");
    let retry = Outcome::Retry {
        reason: reason.clone(),
    };
    // The start is not a crash; then three exits in a row (crash_loop_threshold = 3).
    assert_eq!(
        outcomes,
        [
            Outcome::Poll(Duration::from_millis(200)),
            retry.clone(),
            retry.clone(),
            retry
        ]
    );
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Failed);
    assert_eq!(t.status.last_error.as_deref(), Some(reason.as_str()));
    assert_eq!(h.count("InstanceRestarted").await, 3);
    let events = h.events().await;
    let (_, last) = events.last().unwrap();
    assert_eq!(last, &format!("phase provisioning → failed: {reason}"));
}

#[tokio::test]
async fn an_upgrade_replaces_one_replica_at_a_time() {
    let h = harness(V1, 2, true).await;
    h.drive(5, |_| false).await;
    let before = h.fake.calls().len();
    h.fake.set(V2, Behaviour::Unhealthy);
    h.upgrade(V2).await;

    assert_eq!(h.pass().await, Outcome::Poll(Duration::from_millis(200)));
    assert_eq!(h.started_since(before), started(&[(0, V2)]));
    assert_eq!(h.tenant().await.status.phase, Phase::Upgrading);

    // The replaced replica is not healthy yet: the other one stays as it is.
    assert_eq!(h.pass().await, Outcome::Poll(Duration::from_millis(200)));
    assert_eq!(h.started_since(before), started(&[(0, V2)]));
    assert_eq!(h.fake.versions(&h.id), [V2, V1]);
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Upgrading);
    assert_eq!(t.status.running_version.as_deref(), Some(V1));

    h.fake.set(V2, Behaviour::Healthy);
    assert_eq!(h.pass().await, Outcome::Poll(Duration::from_millis(200)));
    assert_eq!(h.started_since(before), started(&[(0, V2), (1, V2)]));

    assert_eq!(h.pass().await, Outcome::Converged);
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Ready);
    assert_eq!(t.status.running_version.as_deref(), Some(V2));
    assert_eq!(h.count("InstanceReplaced").await, 2);
}

#[tokio::test]
async fn a_failing_upgrade_rolls_back() {
    let h = harness(V1, 1, true).await;
    h.drive(5, |_| false).await;
    h.fake.set(V2, Behaviour::Unhealthy);
    h.upgrade(V2).await;
    let generation = h.tenant().await.generation;

    h.drive(3, |_| h.fake.versions(&h.id) == [V2]).await;
    assert_eq!(h.pass().await, Outcome::Poll(Duration::from_millis(200)));
    // Past controller.ready_timeout_secs (120 s) the new version counts as failed.
    h.fake.age(Duration::from_secs(200));
    assert_eq!(h.pass().await, Outcome::Poll(Duration::ZERO));
    let t = h.tenant().await;
    assert_eq!(
        t.spec.version.to_string(),
        V1,
        "the spec is back on the version that ran"
    );
    assert_eq!(t.generation, generation + 1);
    let events = h.events().await;
    let (_, message) = events
        .iter()
        .find(|(r, _)| r == "UpgradeRolledBack")
        .expect("an UpgradeRolledBack event");
    assert!(
        message.starts_with("upgrade to Grafana 11.4.0 failed (replica 0 not healthy after 120s: "),
        "{message}"
    );
    assert!(message.ends_with("; rolled back to 11.3.0"), "{message}");
    assert_eq!(t.status.last_error.as_deref(), Some(message.as_str()));

    h.drive(5, |_| false).await;
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Ready);
    assert_eq!(t.status.running_version.as_deref(), Some(V1));
    assert_eq!(t.status.last_error, None);
    assert_eq!(h.fake.versions(&h.id), [V1]);
}

#[tokio::test]
async fn scaling_down_removes_the_surplus_replicas() {
    let h = harness(V1, 3, true).await;
    h.drive(5, |_| false).await;
    let mut spec = h.tenant().await.spec;
    spec.replicas = pug_types::Replicas::ONE;
    let store = &h.controller.store;
    store
        .update_spec(&h.id, None, &spec, ("SpecUpdated", "scaled"))
        .await
        .unwrap();
    assert_eq!(h.pass().await, Outcome::Converged);
    assert_eq!(h.fake.versions(&h.id), [V1]);
    assert!(h
        .fake
        .calls()
        .ends_with(&[Call::Removed { replica: 1 }, Call::Removed { replica: 2 }]));
    assert_eq!(h.count("ReplicaRemoved").await, 2);
    assert_eq!(
        store.port_of(&h.id, 2).await.unwrap(),
        None,
        "its port is given back"
    );
    assert_eq!(h.tenant().await.status.ready_replicas, 1);
}

#[tokio::test]
async fn suspend_stops_everything_and_delete_removes_the_tenant() {
    let h = harness(V1, 2, true).await;
    h.drive(5, |_| false).await;
    h.set_desired(DesiredState::Suspended).await;
    assert_eq!(h.pass().await, Outcome::Converged);
    assert!(h.fake.versions(&h.id).is_empty());
    let t = h.tenant().await;
    assert_eq!(t.status.phase, Phase::Suspended);
    assert_eq!(
        t.status.running_version.as_deref(),
        Some(V1),
        "data and version kept"
    );
    assert_eq!(h.count("Suspended").await, 1);

    h.set_desired(DesiredState::Active).await;
    h.drive(5, |_| false).await;
    assert_eq!(h.fake.versions(&h.id), [V1, V1]);

    h.set_desired(DesiredState::Deleted).await;
    assert_eq!(h.pass().await, Outcome::Converged);
    assert!(h.fake.versions(&h.id).is_empty());
    assert_eq!(h.fake.calls().last(), Some(&Call::Archived));
    assert!(h.controller.store.tenant(&h.id).await.unwrap().is_none());
    let reasons: Vec<String> = h.events().await.into_iter().map(|(r, _)| r).collect();
    assert!(
        reasons.ends_with(&["PhaseChanged".into(), "Deleted".into(), "Removed".into()]),
        "{reasons:?}"
    );
    assert_eq!(h.controller.metrics.phases().values().sum::<u64>(), 0);
}

#[tokio::test]
async fn a_missing_secret_fails_the_pass_naming_tenant_and_step() {
    let h = harness(V1, 1, false).await;
    let e = reconcile(&h.controller, &h.id, 0).await.unwrap_err();
    assert_eq!(e.tenant.as_ref(), Some(&h.id));
    assert_eq!(e.step, Step::ReadSecret(secret::ADMIN_PASSWORD.into()));
    assert!(matches!(*e.cause, Cause::MissingSecret(_)));
    assert!(!e.retryable(), "an operator has to restore the secret");
    assert_eq!(
        e.to_string(),
        "tenant acme: cannot read secret admin_password"
    );
    assert!(
        h.fake.calls().is_empty(),
        "nothing starts without its secrets"
    );
}

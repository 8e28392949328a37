//! Test harness: pug's controller and store in process, a real Docker engine, and
//! `grafana-standin` images (built by `tests/images/build.sh` when missing) in place of Grafana.
//!
//! Every test uses its own tenant ids and network, and removes what it made (containers,
//! services, secrets, volumes, network) when it ends, pass or fail.
#![allow(dead_code)]

pub mod overlay;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pug_config::{Config, DockerConfig};
use pug_controller::{Controller, ControllerMetrics, ControllerSettings};
use pug_orchestrator::Orchestrator;
use pug_store::{generate_secret, secret, Store};
use pug_types::{DesiredState, GrafanaVersion, Phase, Tenant, TenantId, TenantSpec};
use tokio_util::sync::CancellationToken;

pub use pug_test_support::wait_for;

pub const GOOD: &str = "11.3.0";
pub const NEWER: &str = "11.4.0";
pub const BROKEN: &str = "11.5.0-broken";

/// Fails the test with instructions when no engine answers (never a silent pass).
pub fn require_engine() {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.APIVersion}}"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "these tests need a Docker engine, and none answered: {}\nStart Docker (or set \
             DOCKER_HOST) and run them again.",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "these tests need the docker CLI and a Docker engine: {e}\nInstall Docker (or set \
             DOCKER_HOST) and run them again."
        ),
    }
}

/// Builds the test images once per test binary. Always, so that they hold the current
/// grafana-standin (cargo and docker make an unchanged build quick).
pub fn require_images() {
    static BUILD: std::sync::Once = std::sync::Once::new();
    require_engine();
    BUILD.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/images/build.sh");
        let status = Command::new(script).status().expect("build.sh runs");
        assert!(
            status.success(),
            "building the test images with {script} failed"
        );
        for v in [GOOD, NEWER, BROKEN] {
            assert!(
                Command::new("docker")
                    .args(["image", "inspect", &format!("pug-test/grafana:{v}")])
                    .output()
                    .is_ok_and(|o| o.status.success()),
                "{script} did not make pug-test/grafana:{v}"
            );
        }
    });
}

/// Runs `docker <args>`, returning stdout (empty on failure).
pub fn docker(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The `[docker]` settings of a test: stand-in images, its own network, fast swarm updates.
pub fn docker_config(network: &str) -> DockerConfig {
    DockerConfig {
        image: "pug-test/grafana:{version}".into(),
        network: network.into(),
        memory_mb: 128,
        cpus: 0.5,
        healthcheck: vec![
            "CMD".into(),
            "/usr/bin/healthcheck".into(),
            "http://127.0.0.1:{port}{path}api/health".into(),
        ],
        update_monitor_secs: 3,
        orphan_grace_secs: 0,
        max_concurrent_ops: 4,
        ..DockerConfig::default()
    }
}

/// A unique suffix for names of one test run.
#[allow(clippy::disallowed_methods)] // Only a source of distinct names, not a time.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{:x}{:04x}", std::process::id() % 0xfff, nanos % 0xffff)
}

/// Removes everything labelled with one of `tenants`, and `network`, when dropped.
pub struct Cleanup {
    pub tenants: Vec<String>,
    pub network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for t in &self.tenants {
            let filter = format!("label=pug.tenant={t}");
            let services = docker(&["service", "ls", "-q", "--filter", &filter]);
            for s in services.lines().filter(|l| !l.is_empty()) {
                docker(&["service", "rm", s]);
            }
            let containers = docker(&["ps", "-aq", "--filter", &filter]);
            for c in containers.lines().filter(|l| !l.is_empty()) {
                docker(&["rm", "-f", c]);
            }
        }
        // Swarm removes a service's containers asynchronously; secrets and volumes in use
        // cannot go before they have.
        let deadline = Instant::now() + Duration::from_secs(30);
        for t in &self.tenants {
            let filter = format!("label=pug.tenant={t}");
            while Instant::now() < deadline
                && !docker(&["ps", "-aq", "--filter", &filter]).is_empty()
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            for kind in ["secret", "config"] {
                for s in docker(&[kind, "ls", "-q", "--filter", &filter]).lines() {
                    if !s.is_empty() {
                        docker(&[kind, "rm", s]);
                    }
                }
            }
            for v in docker(&["volume", "ls", "-q", "--filter", &filter]).lines() {
                if !v.is_empty() {
                    docker(&["volume", "rm", "-f", v]);
                }
            }
        }
        while Instant::now() < deadline {
            docker(&["network", "rm", &self.network]);
            if docker(&[
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name=^{}$", self.network),
            ])
            .is_empty()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The controller (with its queue loop) and store of one "pug process".
pub struct Pug {
    pub store: Store,
    pub controller: Controller,
    pub orchestrator: Arc<dyn Orchestrator>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Controller settings for tests: quick polls and timeouts.
pub fn controller_settings() -> ControllerSettings {
    let mut config = Config::default();
    config.controller.readiness_poll_ms = 200;
    config.controller.ready_timeout_secs = 40;
    config.controller.resync_interval_secs = 2;
    config.controller.max_backoff_secs = 2;
    config.controller.crash_loop_threshold = 3;
    config.controller.concurrency = 8;
    ControllerSettings::from_config(&config)
}

impl Pug {
    /// Starts a controller over `store` driving `orchestrator`.
    pub fn start(store: Store, orchestrator: Arc<dyn Orchestrator>) -> Self {
        let mut registry = pug_metrics::new_registry();
        let controller = Controller::new(
            store.clone(),
            orchestrator.clone(),
            controller_settings(),
            ControllerMetrics::register(&mut registry),
            None,
        );
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(pug_controller::run(controller.clone(), shutdown.clone()));
        Self {
            store,
            controller,
            orchestrator,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops the controller abruptly, the way SIGKILL would: work in flight is dropped.
    pub async fn kill(mut self) -> Store {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.shutdown.cancel();
        self.store.clone()
    }

    pub async fn create(&self, id: &str, version: &str, replicas: u32) -> TenantId {
        let id = TenantId::parse(id).unwrap();
        // Through serde, so that fields added to the spec later take their defaults here.
        let spec: TenantSpec = serde_json::from_value(serde_json::json!({
            "display_name": id.to_string(),
            "version": GrafanaVersion::parse(version).unwrap(),
            "replicas": replicas,
            "desired_state": DesiredState::Active,
        }))
        .unwrap();
        let secrets = [
            (secret::ADMIN_PASSWORD, generate_secret()),
            (secret::SECRET_KEY, generate_secret()),
            (secret::DATABASE_PASSWORD, generate_secret()),
            (secret::RENDERER_TOKEN, generate_secret()),
        ];
        self.store
            .create_tenant(&id, &spec, &secrets)
            .await
            .unwrap();
        self.controller.enqueue(&id).await.unwrap();
        id
    }

    /// Changes the tenant's spec the way the API does.
    pub async fn change(&self, id: &TenantId, f: impl FnOnce(&mut TenantSpec)) {
        let tenant = self.store.tenant(id).await.unwrap().unwrap();
        let mut spec = tenant.spec.clone();
        f(&mut spec);
        self.store
            .update_spec(
                id,
                Some(tenant.generation),
                &spec,
                ("Test", "spec changed by the test"),
            )
            .await
            .unwrap();
        self.controller.enqueue(id).await.unwrap();
    }

    pub async fn tenant(&self, id: &TenantId) -> Option<Tenant> {
        self.store.tenant(id).await.unwrap()
    }

    /// Waits until the tenant is in `phase` with the spec's generation observed.
    pub async fn wait_phase(&self, id: &TenantId, phase: Phase, timeout: Duration) -> Tenant {
        let what = format!("{id} to be {phase:?}");
        wait_for(timeout, &what, || async {
            let t = self.tenant(id).await?;
            (t.status.phase == phase && t.status.observed_generation == t.generation).then_some(t)
        })
        .await
    }

    pub async fn events(&self, id: &TenantId) -> Vec<String> {
        self.store
            .events(id, 500)
            .await
            .unwrap()
            .into_iter()
            .map(|e| format!("{}: {}", e.reason, e.message))
            .collect()
    }
}

impl Drop for Pug {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shutdown.cancel();
    }
}

/// A store in a temporary directory.
pub async fn store(dir: &tempfile::TempDir) -> Store {
    let url = format!("sqlite://{}", dir.path().join("pug.db").display());
    Store::open_data_dir(dir.path(), &url).await.unwrap()
}

/// GETs `http://<endpoint>/api/health` and returns the reported version.
pub async fn health_version(endpoint: &str) -> Option<String> {
    let body: serde_json::Value =
        pug_test_support::http::get(format!("http://{endpoint}/api/health"))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
    body.get("version")?.as_str().map(str::to_owned)
}

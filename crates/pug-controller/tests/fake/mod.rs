//! An in-memory [`Orchestrator`] for the executor's tests, and the health endpoint its
//! instances answer probes on.
//!
//! Owns: a map of replicas with the spec hash they run, and per Grafana version how its instances
//! behave (healthy, unhealthy, or exiting right after they start). Every call is logged, so a test
//! can say exactly what the controller asked for and in which order. It keeps the real backends'
//! contract: `ensure` leaves a running replica with the same spec alone, `remove` and `archive`
//! of something absent succeed.
//!
//! Several controllers (pug replicas) may share one fake: [`Fake::tagged`] gives each its own
//! handle, and every operation on a tenant is marked in flight, under its handle's tag, for as
//! long as it runs ([`Fake::slow`] makes each take that long). An operation that starts on a
//! tenant while another handle's operation on it is in flight is recorded as an overlap
//! ([`Fake::overlaps`]): two replicas acting on one tenant at once.
//!
//! Must not: run processes, or sleep except inside an operation made slow by the test. Instance
//! ages pass only when a test calls [`Fake::age`].

#![allow(dead_code)] // each test binary uses a part of the fake

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use pug_orchestrator::{Instance, InstanceSpec, InstanceState, Orchestrator, OrchestratorError};
use pug_types::{GrafanaVersion, TenantId};

/// How the instances of one Grafana version behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// `/api/health` answers 200 with `"database": "ok"`.
    Healthy,
    /// `/api/health` answers 503 with `"database": "failing"`.
    Unhealthy,
    /// The instance starts, then has exited by the next time it is listed.
    Crashes,
}

/// One call the controller made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `ensure` that (re)started a replica with `version`.
    Started {
        replica: u32,
        version: String,
    },
    Removed {
        replica: u32,
    },
    Archived,
}

struct Slot {
    instance: Instance,
    version: String,
    exits_when_listed: bool,
}

#[derive(Default)]
struct Inner {
    slots: BTreeMap<(TenantId, u32), Slot>,
    behaviour: HashMap<String, Behaviour>,
    calls: Vec<Call>,
    /// Per tenant, the operations in flight: (handle tag, count).
    in_flight: HashMap<TenantId, Vec<String>>,
    /// (tenant, tag in flight, tag that started meanwhile).
    overlaps: Vec<(TenantId, String, String)>,
    /// How long each operation takes.
    delay: Duration,
    /// Every `ensure` that started a replica, by tag.
    starts_by: HashMap<String, usize>,
}

/// The fake orchestrator; cheap to clone (every clone sees the same replicas).
#[derive(Clone)]
pub struct Fake {
    inner: Arc<Mutex<Inner>>,
    /// `http://127.0.0.1:<port>` of the health endpoint.
    health_base: String,
    /// Whose handle this is (one per controller sharing the fake).
    tag: String,
}

/// Marks an operation in flight on a tenant until dropped (also when the caller is aborted).
struct InFlight {
    inner: Arc<Mutex<Inner>>,
    tenant: TenantId,
    tag: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut inner = self.inner.lock().expect("fake orchestrator");
        if let Some(tags) = inner.in_flight.get_mut(&self.tenant) {
            if let Some(i) = tags.iter().position(|t| *t == self.tag) {
                tags.swap_remove(i);
            }
            if tags.is_empty() {
                inner.in_flight.remove(&self.tenant);
            }
        }
    }
}

/// Exit reason of a crashing instance; the README promises it as the failure's reason.
pub const CRASH_REASON: &str = "exited with status 1: boom";

impl Fake {
    /// Starts the health endpoint (on a port the OS picks) and returns the fake.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/{tenant}/{replica}/api/health", axum::routing::get(health))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health_base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            inner,
            health_base,
            tag: String::new(),
        }
    }

    /// A handle on the same replicas whose operations are marked with `tag`.
    pub fn tagged(&self, tag: &str) -> Self {
        Self {
            tag: tag.into(),
            ..self.clone()
        }
    }

    /// Makes every operation take `by` from now on.
    pub fn slow(&self, by: Duration) {
        self.lock().delay = by;
    }

    /// Every overlap so far: (tenant, the tag whose operation was in flight, the tag that
    /// started one meanwhile).
    pub fn overlaps(&self) -> Vec<(TenantId, String, String)> {
        self.lock().overlaps.clone()
    }

    /// How many replicas each tag's handle started.
    pub fn starts_by(&self) -> HashMap<String, usize> {
        self.lock().starts_by.clone()
    }

    /// Every (tenant, replica) running, with its version.
    pub fn running(&self) -> Vec<(TenantId, u32, String)> {
        self.lock()
            .slots
            .iter()
            .filter(|(_, s)| s.instance.state == InstanceState::Running)
            .map(|((t, r), s)| (t.clone(), *r, s.version.clone()))
            .collect()
    }

    /// Marks an operation on `tenant` in flight (recording an overlap with another tag's),
    /// then lets the operation's time pass.
    async fn begin(&self, tenant: &TenantId) -> InFlight {
        let delay = {
            let mut inner = self.lock();
            let tags = inner.in_flight.entry(tenant.clone()).or_default();
            let other = tags.iter().find(|t| **t != self.tag).cloned();
            tags.push(self.tag.clone());
            if let Some(other) = other {
                inner
                    .overlaps
                    .push((tenant.clone(), other, self.tag.clone()));
            }
            inner.delay
        };
        let guard = InFlight {
            inner: self.inner.clone(),
            tenant: tenant.clone(),
            tag: self.tag.clone(),
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        guard
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake orchestrator")
    }

    /// Makes the instances of `version` behave as `b` from now on (`Healthy` is the default).
    pub fn set(&self, version: &str, b: Behaviour) {
        self.lock().behaviour.insert(version.into(), b);
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The Grafana version each replica of `tenant` runs, in replica order.
    pub fn versions(&self, tenant: &TenantId) -> Vec<String> {
        self.lock()
            .slots
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|(_, s)| s.version.clone())
            .collect()
    }

    /// Lets `by` pass for every instance (they started that much earlier).
    pub fn age(&self, by: Duration) {
        for slot in self.lock().slots.values_mut() {
            slot.instance.started_at_ms -= by.as_millis() as i64;
        }
    }
}

async fn health(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((tenant, replica)): Path<(String, u32)>,
) -> (StatusCode, &'static str) {
    let inner = inner.lock().expect("fake orchestrator");
    let Some(slot) = TenantId::parse(&tenant)
        .ok()
        .and_then(|t| inner.slots.get(&(t, replica)))
    else {
        return (StatusCode::NOT_FOUND, "{}");
    };
    match inner.behaviour.get(&slot.version) {
        None | Some(Behaviour::Healthy) => (StatusCode::OK, r#"{"database":"ok"}"#),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, r#"{"database":"failing"}"#),
    }
}

#[async_trait]
impl Orchestrator for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn check_version(&self, _: &GrafanaVersion) -> Result<(), OrchestratorError> {
        Ok(())
    }

    async fn ensure(&self, spec: &InstanceSpec) -> Result<Instance, OrchestratorError> {
        let _op = self.begin(&spec.tenant).await;
        let mut inner = self.lock();
        let key = (spec.tenant.clone(), spec.replica);
        let hash = spec.hash();
        if let Some(slot) = inner.slots.get(&key) {
            if slot.instance.state == InstanceState::Running && slot.instance.spec_hash == hash {
                return Ok(slot.instance.clone());
            }
        }
        let version = spec.version.to_string();
        let crashes = inner.behaviour.get(&version) == Some(&Behaviour::Crashes);
        let instance = Instance {
            tenant: spec.tenant.clone(),
            replica: spec.replica,
            spec_hash: hash,
            endpoint: format!("127.0.0.1:{}", spec.port),
            state: InstanceState::Running,
            started_at_ms: pug_store::now_ms(),
        };
        inner.calls.push(Call::Started {
            replica: spec.replica,
            version: version.clone(),
        });
        *inner.starts_by.entry(self.tag.clone()).or_default() += 1;
        inner.slots.insert(
            key,
            Slot {
                instance: instance.clone(),
                version,
                exits_when_listed: crashes,
            },
        );
        Ok(instance)
    }

    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError> {
        let _op = self.begin(tenant).await;
        let mut inner = self.lock();
        let mut out = Vec::new();
        for ((t, _), slot) in inner.slots.iter_mut() {
            if t != tenant {
                continue;
            }
            if std::mem::take(&mut slot.exits_when_listed) {
                slot.instance.state = InstanceState::Exited {
                    reason: CRASH_REASON.into(),
                };
            }
            out.push(slot.instance.clone());
        }
        Ok(out)
    }

    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError> {
        Ok(self
            .lock()
            .slots
            .values()
            .map(|s| s.instance.clone())
            .collect())
    }

    async fn remove(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        let _op = self.begin(tenant).await;
        let mut inner = self.lock();
        if inner.slots.remove(&(tenant.clone(), replica)).is_some() {
            inner.calls.push(Call::Removed { replica });
        }
        Ok(())
    }

    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError> {
        let _op = self.begin(tenant).await;
        self.lock().calls.push(Call::Archived);
        Ok(())
    }

    fn probe_base(&self, instance: &Instance, _: &str) -> String {
        format!(
            "{}/{}/{}",
            self.health_base, instance.tenant, instance.replica
        )
    }
}

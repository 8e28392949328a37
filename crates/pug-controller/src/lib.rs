//! The controller: pug's reconciler.
//!
//! Owns: turning the store's desired state into running instances. It is level-triggered, like
//! a Kubernetes controller: each pass of [`reconcile()`] reads a tenant's spec from the store and
//! its instances from the orchestrator, and takes the next step towards the spec. Passes are
//! driven by the store's durable work queue ([`queue`]): one pass per tenant at a time, a global
//! limit on concurrent passes, exponential backoff for failing tenants, a periodic resync of
//! every tenant and garbage collection of instances whose tenant is gone.
//!
//! Several pugs may share one store (PostgreSQL): each pass runs under a lease of its tenant's
//! queue row ([`lease`]), so no two pugs reconcile one tenant at once, and the fleet-wide jobs
//! run on the one pug that holds the `fleet` lease.
//!
//! Every step is idempotent, so pug killed at any point converges when it starts again: the
//! queue row is still there, the orchestrator still reports what runs, and the next pass picks
//! up from what it observes, never from what it remembers.
//!
//! # Layout
//!
//! - `reconcile/`: one pass, as observe (`observe.rs`) → plan (`plan.rs`, pure; its table tests
//!   in `plan/tests.rs`) → execute (`execute.rs`).
//! - `queue.rs`: the loops that drive passes, resync and garbage collection.
//! - `lease.rs`: the leases this pug holds, their local deadlines (self-fencing) and the
//!   heartbeat that renews them.
//! - `error.rs`: [`ReconcileError`], naming the tenant and [`Step`], with [`ReconcileError::retryable`].
//! - `metrics.rs`, `tenant_db.rs`: fleet metrics; tenant databases on a shared PostgreSQL.
//!
//! Must not: serve HTTP, spawn processes or talk to Docker itself (the orchestrator does), or
//! write a secret into an event, a status or a log line.

#![forbid(unsafe_code)]

mod error;
pub mod lease;
mod metrics;
mod queue;
mod reconcile;
pub mod tenant_db;

use std::sync::Arc;
use std::time::Duration;

use pug_orchestrator::Orchestrator;
use pug_store::{Store, StoreError};
use pug_types::TenantId;

use crate::reconcile::plan::Policy;

pub use error::{Cause, ReconcileError, Step};
pub use lease::{new_owner_id, Leases};
pub use metrics::ControllerMetrics;
pub use queue::run;
pub use reconcile::{reconcile, Outcome, PURGE_LABEL};
pub use tenant_db::TenantDatabases;

/// What the controller needs.
#[derive(Clone)]
pub struct Controller {
    pub store: Store,
    pub orchestrator: Arc<dyn Orchestrator>,
    pub settings: ControllerSettings,
    pub metrics: ControllerMetrics,
    /// Present when tenants get their database on a shared PostgreSQL server.
    pub databases: Option<TenantDatabases>,
    pub(crate) http: reqwest::Client,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Told of every status written (see [`StatusListener`]); set once, after construction.
    pub(crate) status_listener: Arc<std::sync::OnceLock<Arc<dyn StatusListener>>>,
    pub(crate) busy: Arc<std::sync::Mutex<queue::Busy>>,
    /// The store leases this pug holds.
    pub leases: Arc<Leases>,
}

/// The controller's settings, taken from pug's configuration.
#[derive(Clone, Debug)]
pub struct ControllerSettings {
    pub concurrency: usize,
    pub resync_interval: Duration,
    pub ready_timeout: Duration,
    pub max_backoff: Duration,
    pub readiness_poll: Duration,
    pub crash_loop_threshold: u32,
    /// The fleet's idle timeout in seconds (0: never), for tenants that set none.
    pub idle_timeout_secs: u64,
    /// How often a tenant whose wake is pending is polled for readiness.
    pub wake_poll: Duration,
    /// How late activity may reach the store (the gateway writes it every second): a tenant
    /// sleeps only this long after its idle timeout has passed.
    pub activity_grace: Duration,
    /// Builds each tenant's public URL (`root_url`).
    pub config: pug_config::Config,
    /// The renderer's `/render` URL, when tenants are wired to one.
    pub renderer_url: Option<String>,
    /// This pug process's id as the owner of store leases; unique per process.
    pub owner: String,
    /// How long a lease lasts unless renewed (renewed every third of it): how long a killed
    /// pug's work waits before another pug takes it over.
    pub lease: Duration,
    /// What this pug tells other pugs about itself in the store (its backend is the
    /// orchestrator's name).
    pub roles: String,
}

impl ControllerSettings {
    /// The controller settings of a pug configuration.
    pub fn from_config(config: &pug_config::Config) -> Self {
        let c = &config.controller;
        Self {
            concurrency: c.concurrency,
            resync_interval: Duration::from_secs(c.resync_interval_secs.max(1)),
            ready_timeout: Duration::from_secs(c.ready_timeout_secs.max(1)),
            max_backoff: Duration::from_secs(c.max_backoff_secs.max(1)),
            readiness_poll: Duration::from_millis(c.readiness_poll_ms.max(10)),
            crash_loop_threshold: c.crash_loop_threshold.max(1),
            idle_timeout_secs: c.idle_timeout_secs,
            wake_poll: Duration::from_millis(c.wake_poll_ms.max(5)),
            activity_grace: Duration::from_secs(2),
            config: config.clone(),
            renderer_url: None,
            owner: lease::new_owner_id(),
            lease: Duration::from_millis(c.lease_ms.max(300)),
            roles: "controller".into(),
        }
    }

    /// The settings the reconcile decisions depend on.
    pub(crate) fn policy(&self) -> Policy {
        Policy {
            ready_timeout: self.ready_timeout,
            crash_loop_threshold: self.crash_loop_threshold,
            readiness_poll: self.readiness_poll,
            wake_poll: self.wake_poll,
        }
    }
}

impl Controller {
    /// Builds a controller.
    pub fn new(
        store: Store,
        orchestrator: Arc<dyn Orchestrator>,
        settings: ControllerSettings,
        metrics: ControllerMetrics,
        databases: Option<TenantDatabases>,
    ) -> Self {
        Self {
            store,
            orchestrator,
            metrics,
            databases,
            http: pug_http::builder()
                .pool_max_idle_per_host(1)
                .build()
                .expect("an HTTP client on pug's preconfigured TLS builds"),
            wake: Arc::new(tokio::sync::Notify::new()),
            status_listener: Arc::default(),
            busy: Arc::default(),
            leases: Arc::new(Leases::new(settings.owner.clone(), settings.lease)),
            settings,
        }
    }

    /// Asks for a prompt reconcile of `tenant` (after an API change or an observed event).
    pub async fn enqueue(&self, tenant: &TenantId) -> Result<(), StoreError> {
        self.store.enqueue(tenant, pug_store::now_ms()).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Whether this pug's controller can act: its last heartbeat reached the store less than
    /// a lease ago (what `/readyz` reports for the controller role).
    pub fn ready(&self) -> bool {
        self.leases.alive()
    }

    /// Wakes the queue loop (after the store was changed elsewhere, e.g. by the API).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells `listener` of every status the controller writes from now on. Only the first
    /// listener set counts.
    pub fn set_status_listener(&self, listener: Arc<dyn StatusListener>) {
        let _ = self.status_listener.set(listener);
    }
}

/// Hears each status the controller writes, right after the store has it: how the gateway in
/// the same process learns at once that a waking tenant is ready, without waiting for its
/// periodic route refresh (which stays the fallback). A seam: pug replicas that do not share
/// a process learn it from the store instead.
pub trait StatusListener: Send + Sync {
    /// `status` is now `tenant`'s stored status. Must not block.
    fn status_written(&self, tenant: &TenantId, status: &pug_types::TenantStatus);
}

/// Replaces every occurrence of a secret value in `text` with `[redacted]`.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if s.len() >= 6 {
            out = out.replace(s, "[redacted]");
        }
    }
    out
}

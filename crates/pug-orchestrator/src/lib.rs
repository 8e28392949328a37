//! Orchestrators: the engines that run tenants' Grafana instances.
//!
//! Owns: the [`Orchestrator`] trait (one per engine: local processes here, Docker and Swarm in
//! `pug-docker`), the [`InstanceSpec`] that says what one replica must be, the Grafana settings
//! every instance gets ([`settings`]), readiness probing ([`probe_health`]), the process backend
//! ([`process`]) with its tenant isolation ([`isolation`]), set up from `[process]` of pug's
//! configuration ([`process_setup`]), and the resolution and download of Grafana releases ([`install`]).
//!
//! Must not: read the store or decide what should run. The controller decides; an orchestrator
//! only makes one replica match one spec, reports what runs, and removes what it is told to.
//! Every method is idempotent, so that a crash at any point is healed by calling it again.

#![forbid(unsafe_code)]

pub mod install;
pub mod isolation;
pub mod leftovers;
pub mod process;
pub mod process_setup;
pub mod provisioning;
pub mod settings;
pub mod uid_claim;

use std::time::Duration;

use async_trait::async_trait;
use pug_types::{GrafanaVersion, SecretString, TenantId};

pub use provisioning::Provisioning;
pub use settings::{DatabaseSettings, GatewayTrust, InstanceSpec};

/// One replica of one tenant, as the engine reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub tenant: TenantId,
    pub replica: u32,
    /// The hash of the spec it was started with; a different desired hash means "replace it".
    pub spec_hash: String,
    /// `host:port` where its Grafana listens.
    pub endpoint: String,
    pub state: InstanceState,
    /// When it was (last) started, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
}

/// Whether an instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// Its process or container runs (it may not be healthy yet).
    Running,
    /// It stopped by itself; `reason` says how (exit code and its last log line).
    Exited { reason: String },
}

/// The result of one readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `/api/health` answered 200 with `"database": "ok"`.
    Ready,
    /// It answered, but not ready (e.g. 503 with `"database": "failing"`).
    Unhealthy(String),
    /// Nothing answered.
    Unreachable(String),
}

/// What can go wrong in an orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("Grafana {version} is not available: {reason}")]
    UnknownVersion { version: String, reason: String },
    #[error("cannot install Grafana {version}: {reason}")]
    Install { version: String, reason: String },
    #[error("cannot start replica {replica} of tenant {tenant}")]
    Start {
        tenant: String,
        replica: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Tenants cannot be isolated although `process.isolation = "required"` (one line: why, and how to fix it).
    #[error("{0}")]
    Isolation(String),
    #[error("the engine refused: {0}")]
    Engine(String),
}

/// An engine that runs Grafana instances.
#[async_trait]
pub trait Orchestrator: Send + Sync + 'static {
    /// `process`, `docker` or `swarm`.
    fn name(&self) -> &'static str;

    /// Checks that `version` can be run, before a tenant is allowed to ask for it.
    async fn check_version(&self, version: &GrafanaVersion) -> Result<(), OrchestratorError>;

    /// Makes the replica `spec` describes run with exactly that spec: starts it if absent or
    /// exited, replaces it if it runs another spec, leaves it alone otherwise.
    async fn ensure(&self, spec: &InstanceSpec) -> Result<Instance, OrchestratorError>;

    /// The instances of one tenant, in replica order.
    async fn instances(&self, tenant: &TenantId) -> Result<Vec<Instance>, OrchestratorError>;

    /// Every instance this orchestrator manages (including orphans, for garbage collection).
    async fn all_instances(&self) -> Result<Vec<Instance>, OrchestratorError>;

    /// Stops and removes one replica; its data stays. Absent already is success.
    async fn remove(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError>;

    /// Stops one replica of a tenant falling asleep; its data stays. A backend that can keep
    /// a stopped instance to start again at wake (docker: the stopped container) does so, and
    /// then lists it among [`Orchestrator::instances`] as exited until [`Orchestrator::ensure`]
    /// starts it (or replaces it, when the spec changed meanwhile). The default removes it.
    async fn park(&self, tenant: &TenantId, replica: u32) -> Result<(), OrchestratorError> {
        self.remove(tenant, replica).await
    }

    /// Moves a deleted tenant's data out of the way (into an archive); absent is success.
    async fn archive(&self, tenant: &TenantId) -> Result<(), OrchestratorError>;

    /// Where the probes of an instance go, as a base URL without a trailing slash.
    fn probe_base(&self, instance: &Instance, spec_root_path: &str) -> String {
        format!(
            "http://{}{}",
            instance.endpoint,
            spec_root_path.trim_end_matches('/')
        )
    }

    /// A receiver of tenant ids whose instances changed by themselves (an exit, say), so the
    /// controller reconciles them promptly instead of at the next resync.
    fn changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<TenantId>> {
        None
    }

    /// The hash the instances of `spec` report as their `spec_hash` once they run it: the
    /// spec's own hash by default; a backend whose replicas share one template (swarm) hashes
    /// what its instances actually share, so that any pug, reading only the backend, sees an
    /// instance run its spec.
    fn spec_hash(&self, spec: &InstanceSpec) -> String {
        spec.hash()
    }

    /// How the tenant's Grafana knows a request comes from pug's gateway: by default, the
    /// addresses Grafana sees gateway requests coming from (`auth.proxy.whitelist`).
    fn gateway_trust(&self) -> GatewayTrust {
        GatewayTrust::Addresses(vec!["127.0.0.1".into(), "::1".into()])
    }

    /// The host name a replica is known by in its `rendering.callback_url`, when it is not the
    /// instance's address (a container's name on pug's network: the address changes with every
    /// start, the name does not). `None`: the process backend's `bind_address`.
    fn callback_host(&self, _tenant: &TenantId, _replica: u32) -> Option<String> {
        None
    }

    /// The address on the host that instances reach services of pug's on (the network gateway
    /// of pug's docker network), when it is not loopback. The embedded renderer listens there.
    fn host_address_for_instances(&self) -> Option<std::net::IpAddr> {
        None
    }

    /// Makes what the backend runs for the whole fleet, beside tenants' instances, what pug's
    /// configuration asks for (swarm: the renderer service), healing what was changed or
    /// removed by hand. Idempotent; called at pug's start and at every resync. Nothing by
    /// default.
    async fn ensure_shared_services(&self) -> Result<(), OrchestratorError> {
        Ok(())
    }
}

/// Probes `<base>/api/health`: ready is 200 with `"database": "ok"`, as Grafana defines it.
pub async fn probe_health(client: &reqwest::Client, base: &str) -> Health {
    let url = format!("{base}/api/health");
    let response = match client
        .get(&url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Health::Unreachable(format!("{url}: {}", error_chain(&e))),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let database = body.get("database").and_then(|d| d.as_str()).unwrap_or("");
    if status.is_success() && database == "ok" {
        Health::Ready
    } else {
        Health::Unhealthy(format!(
            "{url} answered {status} with database {:?}",
            if database.is_empty() {
                "missing"
            } else {
                database
            }
        ))
    }
}

/// An error and its sources on one line (here too, for the backends that use it).
pub use pug_types::error_chain;

/// Secrets an instance needs, by Grafana setting.
#[derive(Clone, Debug)]
pub struct InstanceSecrets {
    pub admin_password: SecretString,
    pub secret_key: SecretString,
    pub renderer_token: Option<SecretString>,
}

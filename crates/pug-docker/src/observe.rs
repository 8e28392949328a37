//! Observing a swarm: nodes, managers, the leader and tasks, as a [`SwarmStatus`] (for `pug
//! swarm status` and `GET /api/v1/swarm`) and as metrics on pug's `/metrics`.
//!
//! Owns: reading `/info`, `/nodes`, `/tasks` and `/services` from a manager (only a manager
//! knows the cluster: a worker reports no nodes) and exporting
//! - `pug_swarm_nodes{state,availability,role}`: nodes by state, availability and role, every
//!   combination present (at 0 when none), so alerts see the first change;
//! - `pug_swarm_leader`: 1 when a manager reports itself leader;
//! - `pug_swarm_managers_reachable`: managers whose reachability is `reachable`;
//! - `pug_swarm_ingress_peers`: nodes in the routing mesh's peer list (the `ingress` overlay
//!   network, inspected verbosely on the manager), when the engine reports it;
//! - `pug_swarm_tasks{node,state}`: pug's tasks per node and state;
//! - `pug_tenant_running_tasks{tenant}` and `pug_tenant_desired_tasks{tenant}`: per tenant.
//!
//! Must not: change anything on the swarm.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Reachability};
use bollard::query_parameters::{
    InspectNetworkOptions, ListNodesOptions, ListServicesOptions, ListTasksOptions,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::engine::{api, DockerError, Engine};
use crate::{label_filter, LABEL_MANAGED, LABEL_NAMESPACE, LABEL_TENANT};

/// What a swarm looks like from its manager.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmStatus {
    /// The node pug talks to.
    pub node_id: String,
    /// `active`, `inactive`, `pending`, `error` or `locked`.
    pub local_node_state: String,
    /// Whether that node is a manager (only managers see the cluster).
    pub control_available: bool,
    /// The name of the leader, if any manager is.
    pub leader: Option<String>,
    pub managers: u64,
    pub managers_reachable: u64,
    /// Other managers' addresses, to try when this one fails.
    pub remote_managers: Vec<String>,
    /// Peers of the routing mesh (`ingress` network), by node name, when the engine reports
    /// them; fewer than the ready nodes means a node has left the mesh.
    #[serde(default)]
    pub ingress_peers: Option<Vec<String>>,
    pub nodes: Vec<NodeView>,
    pub tenants: Vec<TenantTasks>,
}

/// One node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: String,
    pub availability: String,
    pub state: String,
    pub address: String,
    pub leader: bool,
    /// For managers: `reachable`, `unreachable` or `unknown`.
    pub reachability: Option<String>,
    /// pug's tasks on this node, by task state.
    pub tasks: BTreeMap<String, u64>,
}

/// One tenant's service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantTasks {
    pub tenant: String,
    pub running: u64,
    pub desired: u64,
    /// Swarm's update state (`updating`, `completed`, `rollback_completed`, …), if any.
    pub update_state: Option<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    state: String,
    availability: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    node: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

/// Reads a swarm and keeps its metrics current.
#[derive(Debug)]
pub struct SwarmObserver {
    engine: Engine,
    namespace: String,
    nodes: Family<NodeLabels, Gauge>,
    leader: Gauge,
    managers_reachable: Gauge,
    ingress_peers: Gauge,
    tasks: Family<TaskLabels, Gauge>,
    tenant_running: Family<TenantLabels, Gauge>,
    tenant_desired: Family<TenantLabels, Gauge>,
    last: Mutex<Option<SwarmStatus>>,
}

const NODE_STATES: [&str; 4] = ["ready", "down", "disconnected", "unknown"];
const AVAILABILITIES: [&str; 3] = ["active", "pause", "drain"];
const ROLES: [&str; 2] = ["manager", "worker"];

impl SwarmObserver {
    /// Registers the swarm metrics on `registry`.
    pub fn new(engine: Engine, namespace: &str, registry: &mut Registry) -> Arc<Self> {
        let me = Self {
            engine,
            namespace: namespace.to_owned(),
            nodes: Family::default(),
            leader: Gauge::default(),
            managers_reachable: Gauge::default(),
            ingress_peers: Gauge::default(),
            tasks: Family::default(),
            tenant_running: Family::default(),
            tenant_desired: Family::default(),
            last: Mutex::default(),
        };
        registry.register(
            "pug_swarm_nodes",
            "Swarm nodes by state (ready, down, disconnected, unknown), availability (active, pause, drain) and role (manager, worker).",
            me.nodes.clone(),
        );
        registry.register(
            "pug_swarm_leader",
            "1 when a manager in the node list reports itself leader, else 0.",
            me.leader.clone(),
        );
        registry.register(
            "pug_swarm_managers_reachable",
            "Managers whose manager status is reachable.",
            me.managers_reachable.clone(),
        );
        registry.register(
            "pug_swarm_ingress_peers",
            "Nodes in the peer list of the swarm's ingress (routing mesh) network.",
            me.ingress_peers.clone(),
        );
        registry.register(
            "pug_swarm_tasks",
            "pug's tasks per node and task state.",
            me.tasks.clone(),
        );
        registry.register(
            "pug_tenant_running_tasks",
            "Running tasks of a tenant's service.",
            me.tenant_running.clone(),
        );
        registry.register(
            "pug_tenant_desired_tasks",
            "Tasks a tenant's service should run.",
            me.tenant_desired.clone(),
        );
        me.zero_nodes();
        Arc::new(me)
    }

    fn zero_nodes(&self) {
        for state in NODE_STATES {
            for availability in AVAILABILITIES {
                for role in ROLES {
                    self.nodes
                        .get_or_create(&NodeLabels {
                            state: state.into(),
                            availability: availability.into(),
                            role: role.into(),
                        })
                        .set(0);
                }
            }
        }
    }

    /// The status from the last observation, if any.
    pub fn last(&self) -> Option<SwarmStatus> {
        self.last.lock().expect("last").clone()
    }

    /// Observes the swarm once and updates the metrics.
    pub async fn observe(&self) -> Result<SwarmStatus, DockerError> {
        let docker = &self.engine.docker;
        let info = docker.info().await.map_err(api("cannot read /info"))?;
        let swarm = info.swarm.unwrap_or_default();
        let mut status = SwarmStatus {
            node_id: swarm.node_id.clone().unwrap_or_default(),
            local_node_state: swarm
                .local_node_state
                .map(|s| s.to_string())
                .unwrap_or_default(),
            control_available: swarm.control_available.unwrap_or(false),
            remote_managers: swarm
                .remote_managers
                .unwrap_or_default()
                .into_iter()
                .filter_map(|m| m.addr)
                .collect(),
            ..Default::default()
        };
        if !status.control_available {
            return Err(DockerError::NotAManager {
                address: self.engine.address.clone(),
                state: status.local_node_state,
            });
        }
        // The routing mesh's peers; an engine that does not report them leaves this unknown.
        status.ingress_peers = docker
            .inspect_network(
                "ingress",
                Some(InspectNetworkOptions {
                    verbose: true,
                    scope: Some("swarm".into()),
                }),
            )
            .await
            .ok()
            .and_then(|n| n.peers)
            .map(|peers| {
                peers
                    .into_iter()
                    .map(|p| p.name.or(p.ip).unwrap_or_default())
                    .collect()
            });
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(api("cannot list nodes"))?;
        let filter = label_filter(&[(LABEL_MANAGED, "true"), (LABEL_NAMESPACE, &self.namespace)]);
        let services = docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filter.clone()),
                status: Some(true),
            }))
            .await
            .map_err(api("cannot list services"))?;
        let service_ids: std::collections::HashSet<String> =
            services.iter().filter_map(|s| s.id.clone()).collect();
        let tasks = docker
            .list_tasks(None::<ListTasksOptions>)
            .await
            .map_err(api("cannot list tasks"))?;

        let mut hostnames = BTreeMap::new();
        for n in &nodes {
            let spec = n.spec.clone().unwrap_or_default();
            let manager = n.manager_status.clone();
            let view = NodeView {
                id: n.id.clone().unwrap_or_default(),
                hostname: n
                    .description
                    .as_ref()
                    .and_then(|d| d.hostname.clone())
                    .unwrap_or_default(),
                role: match spec.role {
                    Some(NodeSpecRoleEnum::MANAGER) => "manager",
                    _ => "worker",
                }
                .into(),
                availability: match spec.availability {
                    Some(NodeSpecAvailabilityEnum::PAUSE) => "pause",
                    Some(NodeSpecAvailabilityEnum::DRAIN) => "drain",
                    _ => "active",
                }
                .into(),
                state: match n.status.as_ref().and_then(|s| s.state) {
                    Some(NodeState::READY) => "ready",
                    Some(NodeState::DOWN) => "down",
                    Some(NodeState::DISCONNECTED) => "disconnected",
                    _ => "unknown",
                }
                .into(),
                address: n
                    .status
                    .as_ref()
                    .and_then(|s| s.addr.clone())
                    .unwrap_or_default(),
                leader: manager.as_ref().and_then(|m| m.leader).unwrap_or(false),
                reachability: manager.as_ref().map(|m| {
                    match m.reachability {
                        Some(Reachability::REACHABLE) => "reachable",
                        Some(Reachability::UNREACHABLE) => "unreachable",
                        _ => "unknown",
                    }
                    .to_owned()
                }),
                tasks: BTreeMap::new(),
            };
            hostnames.insert(view.id.clone(), view.hostname.clone());
            if view.leader {
                status.leader = Some(view.hostname.clone());
            }
            if view.role == "manager" {
                status.managers += 1;
                if view.reachability.as_deref() == Some("reachable") {
                    status.managers_reachable += 1;
                }
            }
            status.nodes.push(view);
        }
        for t in &tasks {
            if !t
                .service_id
                .as_ref()
                .is_some_and(|id| service_ids.contains(id))
            {
                continue;
            }
            let state = t
                .status
                .as_ref()
                .and_then(|s| s.state)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "unknown".into());
            let node = t.node_id.clone().unwrap_or_default();
            if let Some(view) = status.nodes.iter_mut().find(|n| n.id == node) {
                *view.tasks.entry(state).or_default() += 1;
            }
        }
        for s in &services {
            let tenant = s
                .spec
                .as_ref()
                .and_then(|s| s.labels.as_ref())
                .and_then(|l| l.get(LABEL_TENANT).cloned())
                .unwrap_or_default();
            let counts = s.service_status.clone().unwrap_or_default();
            status.tenants.push(TenantTasks {
                tenant,
                running: counts.running_tasks.unwrap_or(0),
                desired: counts.desired_tasks.unwrap_or(0),
                update_state: s
                    .update_status
                    .as_ref()
                    .and_then(|u| u.state)
                    .map(|s| s.to_string()),
            });
        }
        status.tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));

        // Metrics: rebuilt from scratch, so vanished nodes and tenants disappear.
        self.nodes.clear();
        self.zero_nodes();
        for n in &status.nodes {
            self.nodes
                .get_or_create(&NodeLabels {
                    state: n.state.clone(),
                    availability: n.availability.clone(),
                    role: n.role.clone(),
                })
                .inc();
        }
        self.leader.set(i64::from(status.leader.is_some()));
        self.managers_reachable
            .set(status.managers_reachable as i64);
        if let Some(peers) = &status.ingress_peers {
            self.ingress_peers.set(peers.len() as i64);
        }
        self.tasks.clear();
        for n in &status.nodes {
            for (state, count) in &n.tasks {
                self.tasks
                    .get_or_create(&TaskLabels {
                        node: if n.hostname.is_empty() {
                            n.id.clone()
                        } else {
                            n.hostname.clone()
                        },
                        state: state.clone(),
                    })
                    .set(*count as i64);
            }
        }
        self.tenant_running.clear();
        self.tenant_desired.clear();
        for t in &status.tenants {
            let labels = TenantLabels {
                tenant: t.tenant.clone(),
            };
            self.tenant_running
                .get_or_create(&labels)
                .set(t.running as i64);
            self.tenant_desired
                .get_or_create(&labels)
                .set(t.desired as i64);
        }
        *self.last.lock().expect("last") = Some(status.clone());
        Ok(status)
    }

    /// Observes every `period`, for as long as the future runs (`pug serve` drops it on its
    /// shutdown signal).
    pub async fn observe_every(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.observe().await {
                tracing::warn!(error = %pug_orchestrator::error_chain(&e), "cannot observe the swarm");
            }
        }
    }
}

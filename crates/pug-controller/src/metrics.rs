//! The controller's metrics: the fleet by phase, per-tenant replicas and restarts, the queue,
//! and reconcile passes. Names are the ones `deploy/prometheus` alerts on.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use pug_types::{Phase, TenantId};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TenantLabel {
    pub tenant: String,
}

#[derive(Clone, Copy, Debug)]
struct TenantFigures {
    phase: Phase,
    ready: u32,
    desired: u32,
}

/// The controller's metric families, registered once on the role's registry.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    pub(crate) reconcile_duration: Histogram,
    pub(crate) operations: Family<ResultLabel, Counter>,
    pub(crate) queue_depth: Gauge,
    pub(crate) restarts: Family<TenantLabel, Counter>,
    wakes: Family<TenantLabel, Counter>,
    wake_duration: Histogram,
    last_activity: Family<TenantLabel, Gauge>,
    fleet: Arc<Mutex<BTreeMap<TenantId, TenantFigures>>>,
}

impl ControllerMetrics {
    /// Registers the families on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let me = Self {
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            operations: Family::default(),
            queue_depth: Gauge::default(),
            restarts: Family::default(),
            wakes: Family::default(),
            wake_duration: Histogram::new([0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
            last_activity: Family::default(),
            fleet: Arc::default(),
        };
        registry.register_with_unit(
            "pug_reconcile_duration",
            "Duration of one reconcile pass of one tenant.",
            Unit::Seconds,
            me.reconcile_duration.clone(),
        );
        registry.register(
            "pug_reconcile_operations",
            "Reconcile passes by result: converged, requeued (waiting for readiness), retry (failed, backing off) or error.",
            me.operations.clone(),
        );
        registry.register(
            "pug_reconcile_queue_depth",
            "Tenants waiting in the reconcile queue.",
            me.queue_depth.clone(),
        );
        registry.register(
            "pug_tenant_restarts",
            "Instances of a tenant restarted after they exited by themselves.",
            me.restarts.clone(),
        );
        registry.register(
            "pug_tenant_wakes",
            "Times a tenant woke from sleep (became ready after a wake was asked for).",
            me.wakes.clone(),
        );
        registry.register_with_unit(
            "pug_tenant_wake_duration",
            "From the request (or API call) that woke a sleeping tenant to the tenant ready again.",
            Unit::Seconds,
            me.wake_duration.clone(),
        );
        registry.register(
            "pug_tenant_last_activity_timestamp_seconds",
            "When a tenant was last used through the gateway (or created), seconds since the epoch, as of its last reconcile pass.",
            me.last_activity.clone(),
        );
        registry.register_collector(Box::new(FleetCollector {
            fleet: me.fleet.clone(),
        }));
        me
    }

    /// Records what the controller last observed of a tenant.
    pub(crate) fn observe(&self, tenant: &TenantId, phase: Phase, ready: u32, desired: u32) {
        self.fleet.lock().expect("fleet metrics").insert(
            tenant.clone(),
            TenantFigures {
                phase,
                ready,
                desired,
            },
        );
    }

    /// Forgets a deleted tenant.
    pub(crate) fn forget(&self, tenant: &TenantId) {
        self.fleet.lock().expect("fleet metrics").remove(tenant);
        let label = TenantLabel {
            tenant: tenant.to_string(),
        };
        self.restarts.remove(&label);
        self.wakes.remove(&label);
        self.last_activity.remove(&label);
    }

    /// Counts a finished wake that took `took_ms`.
    pub(crate) fn woke(&self, tenant: &TenantId, took_ms: i64) {
        self.wakes
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .inc();
        self.wake_duration.observe(took_ms as f64 / 1000.0);
    }

    /// Records when a tenant was last used (ms since the epoch).
    pub(crate) fn last_activity(&self, tenant: &TenantId, at_ms: i64) {
        self.last_activity
            .get_or_create(&TenantLabel {
                tenant: tenant.to_string(),
            })
            .set(at_ms / 1000);
    }

    /// Tenants by phase, as last observed.
    pub fn phases(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for f in self.fleet.lock().expect("fleet metrics").values() {
            *out.entry(f.phase.as_str()).or_default() += 1;
        }
        out
    }
}

/// Encodes the per-tenant figures at scrape time from the controller's last observations.
#[derive(Debug)]
struct FleetCollector {
    fleet: Arc<Mutex<BTreeMap<TenantId, TenantFigures>>>,
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fleet = self.fleet.lock().expect("fleet metrics").clone();
        let mut by_phase: BTreeMap<&'static str, i64> =
            Phase::ALL.iter().map(|p| (p.as_str(), 0)).collect();
        for f in fleet.values() {
            *by_phase.entry(f.phase.as_str()).or_default() += 1;
        }
        let mut family = encoder.encode_descriptor(
            "pug_tenants",
            "Tenants by phase.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (phase, n) in by_phase {
            let labels = [("phase", phase)];
            ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "pug_tenant_ready_replicas",
            "Replicas of a tenant that are healthy and run its current spec.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (tenant, f) in &fleet {
            let labels = [("tenant", tenant.as_str())];
            ConstGauge::new(f.ready as i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "pug_tenant_desired_replicas",
            "Replicas a tenant asks for (0 while suspended).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (tenant, f) in &fleet {
            let labels = [("tenant", tenant.as_str())];
            ConstGauge::new(f.desired as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

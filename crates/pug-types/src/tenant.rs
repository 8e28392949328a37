//! Tenants: the spec (what is asked), the status (what was observed) and events (what happened).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{GrafanaVersion, Labels, Overrides, Replicas, TenantId};

/// What a tenant should be: running, stopped with its data kept, or gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Its instances run.
    Active,
    /// Its instances are stopped; its data, secrets and spec are kept.
    Suspended,
    /// It is being deleted: instances stopped, data archived, then the record removed.
    Deleted,
}

// Its replicas, labels and display name are checked by their types (`crate::spec`), also when
// a spec is read from JSON, so code holding one does not check them again. (Plain comments: the
// `///` docs here are the OpenAPI document's.)
/// What is asked of a tenant. Changing it bumps the tenant's generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantSpec {
    /// A human name shown in listings.
    // At most 200 bytes: `crate::check_display_name`.
    #[serde(deserialize_with = "crate::spec::display_name")]
    pub display_name: String,
    /// The Grafana version the tenant runs.
    #[schema(value_type = String, example = "11.3.0")]
    pub version: GrafanaVersion,
    /// How many replicas (instances) serve the tenant.
    #[schema(value_type = u32)]
    pub replicas: Replicas,
    /// Running, suspended or deleted.
    pub desired_state: DesiredState,
    /// grafana.ini overrides, section → key → value.
    #[serde(default)]
    pub overrides: Overrides,
    /// Free-form labels for the operator's own bookkeeping.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub labels: Labels,
    /// Datasources provisioned into the tenant's Grafana.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasources: Vec<DatasourceSpec>,
    /// Dashboards provisioned into the tenant's Grafana.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dashboards: Vec<DashboardSpec>,
    /// Seconds without activity after which the tenant sleeps (its instances stop, its data
    /// stays) until its next request; 0: never. `None`: the fleet default
    /// (`controller.idle_timeout_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
}

impl TenantSpec {
    /// The idle timeout that applies, in seconds (0: never sleeps), given the fleet default.
    pub fn idle_timeout(&self, fleet_default_secs: u64) -> u64 {
        self.idle_timeout_secs.unwrap_or(fleet_default_secs)
    }
}

/// Where a tenant is in its life, as the controller last observed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Created; the controller has not acted yet.
    Pending,
    /// Instances are being created and have not all become ready.
    Provisioning,
    /// Every desired replica runs the desired spec and is healthy.
    Ready,
    /// Some replicas are healthy, some are not.
    Degraded,
    /// Moving to a new version or configuration, replica by replica.
    Upgrading,
    /// Stopped on request; data kept.
    Suspended,
    /// Stopped because idle; started again on its next request.
    Sleeping,
    /// No replica becomes healthy; `last_error` says why. The controller keeps retrying with backoff.
    Failed,
    /// Being deleted.
    Deleting,
}

impl Phase {
    /// Every phase, for metrics that report each one (including zeros).
    pub const ALL: [Phase; 9] = [
        Phase::Pending,
        Phase::Provisioning,
        Phase::Ready,
        Phase::Degraded,
        Phase::Upgrading,
        Phase::Suspended,
        Phase::Sleeping,
        Phase::Failed,
        Phase::Deleting,
    ];

    /// The lowercase name used in the API, the CLI and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Provisioning => "provisioning",
            Phase::Ready => "ready",
            Phase::Degraded => "degraded",
            Phase::Upgrading => "upgrading",
            Phase::Suspended => "suspended",
            Phase::Sleeping => "sleeping",
            Phase::Failed => "failed",
            Phase::Deleting => "deleting",
        }
    }

    /// Whether a waiting client (`--wait`) can stop waiting: the tenant is settled, well or
    /// badly. A sleeping tenant is settled: a change made while it sleeps applies when it wakes.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Phase::Ready | Phase::Suspended | Phase::Failed | Phase::Sleeping
        )
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the controller last observed of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantStatus {
    pub phase: Phase,
    /// Replicas that answer `/api/health` with `database: ok` and run the desired spec.
    pub ready_replicas: u32,
    /// `host:port` of each ready replica, in replica order.
    pub endpoints: Vec<String>,
    /// The version every replica last ran when the tenant was ready (`None` before that).
    pub running_version: Option<String>,
    /// The spec generation the controller last acted on.
    pub observed_generation: i64,
    /// Why the tenant is not ready, if it is not.
    pub last_error: Option<String>,
    /// When this status was written, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl TenantStatus {
    /// The status of a tenant nobody has reconciled yet.
    pub fn pending() -> Self {
        Self {
            phase: Phase::Pending,
            ready_replicas: 0,
            endpoints: Vec::new(),
            running_version: None,
            observed_generation: 0,
            last_error: None,
            updated_at_ms: 0,
        }
    }
}

/// A tenant: id, spec, generation and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    #[schema(value_type = String, example = "acme")]
    pub id: TenantId,
    pub spec: TenantSpec,
    /// Bumped on every spec change; the controller reports which one it acted on.
    pub generation: i64,
    pub status: TenantStatus,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// One line of a tenant's audit log. Messages never contain a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub id: i64,
    #[schema(value_type = String)]
    pub tenant: TenantId,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// A short machine-readable reason, e.g. `InstanceStarted`, `Ready`, `UpgradeRolledBack`.
    pub reason: String,
    pub message: String,
}

/// A datasource pug provisions into the tenant's Grafana (Grafana's provisioning format).
/// Credentials are not part of it: they are stored as tenant secrets and written into the
/// provisioning file's `secureJsonData` by reference, so Grafana encrypts them with the
/// tenant's own `secret_key` and no API answer ever shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DatasourceSpec {
    /// The datasource's name in Grafana (unique per tenant).
    pub name: String,
    /// Grafana's plugin type, e.g. `prometheus`, `graphite`, `loki`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The datasource URL.
    pub url: String,
    /// `proxy` (through Grafana, the default) or `direct`.
    #[serde(default = "default_access")]
    pub access: String,
    #[serde(default)]
    pub is_default: bool,
    /// The basic-auth user, if the datasource uses basic auth (its password is a secure field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth_user: Option<String>,
    /// Non-secret settings (Grafana's `jsonData`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub json_data: serde_json::Map<String, serde_json::Value>,
    /// Names of the `secureJsonData` fields set for it (their values are secrets).
    #[serde(default)]
    pub secure_fields: Vec<String>,
}

fn default_access() -> String {
    "proxy".into()
}

/// A dashboard pug provisions into the tenant's Grafana.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DashboardSpec {
    /// The file name it is provisioned under (letters, digits, '-' and '_').
    pub name: String,
    /// Grafana's dashboard JSON model.
    #[schema(value_type = Object)]
    pub json: serde_json::Value,
}

impl DatasourceSpec {
    /// Checks the datasource's fields.
    pub fn validate(&self) -> Result<(), crate::InvalidInput> {
        let bad = |m: String| Err(crate::InvalidInput::new("datasources", m));
        if self.name.trim().is_empty()
            || self.name.len() > 190
            || self.name.chars().any(char::is_control)
        {
            return bad(format!(
                "datasource name {:?} must be 1 to 190 printable characters",
                self.name
            ));
        }
        if self.kind.is_empty()
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return bad(format!(
                "datasource {:?}: type {:?} is not a Grafana plugin id such as \"prometheus\"",
                self.name, self.kind
            ));
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://"))
            || self.url.chars().any(char::is_control)
        {
            return bad(format!(
                "datasource {:?}: url {:?} must be an http(s) URL",
                self.name, self.url
            ));
        }
        if self.access != "proxy" && self.access != "direct" {
            return bad(format!(
                "datasource {:?}: access must be \"proxy\" or \"direct\"",
                self.name
            ));
        }
        for field in &self.secure_fields {
            if field.is_empty()
                || !field
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return bad(format!("datasource {:?}: secure field {field:?} is not a secureJsonData key such as \"basicAuthPassword\"", self.name));
            }
        }
        Ok(())
    }

    /// The store name of one of its secure fields.
    pub fn secret_name(&self, field: &str) -> String {
        format!("datasource/{}/{field}", self.name)
    }
}

impl DashboardSpec {
    /// Checks the dashboard's name and model.
    pub fn validate(&self) -> Result<(), crate::InvalidInput> {
        if self.name.is_empty()
            || self.name.len() > 100
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(crate::InvalidInput::new(
                "dashboards",
                format!(
                    "dashboard name {:?} must be 1 to 100 letters, digits, '-' or '_'",
                    self.name
                ),
            ));
        }
        if !self.json.get("title").is_some_and(|t| t.is_string()) {
            return Err(crate::InvalidInput::new(
                "dashboards",
                format!(
                    "dashboard {:?}: json must be a Grafana dashboard model with a \"title\"",
                    self.name
                ),
            ));
        }
        Ok(())
    }
}

//! Why a reconcile pass could not finish: which tenant, at which step, and the cause.
//!
//! Owns: [`ReconcileError`], its [`Step`]s and [`Cause`]s, and the one judgement callers branch
//! on, [`ReconcileError::retryable`]. Sources stay attached (`#[source]`), so a log line shows the
//! whole chain and a caller can look at the cause's type.
//!
//! Must not: flatten a cause into a `String`, or hold a secret value (steps name secrets, never
//! carry them).

use std::fmt;

use pug_orchestrator::OrchestratorError;
use pug_store::StoreError;
use pug_types::{EventReason, TenantId};

use crate::tenant_db::TenantDbError;

/// A failed step of a reconcile pass (or of garbage collection, which has no one tenant).
#[derive(Debug, thiserror::Error)]
#[error("{}cannot {step}", tenant_prefix(.tenant))]
pub struct ReconcileError {
    /// The tenant the pass was for; `None` for fleet-wide steps (garbage collection's listing).
    pub tenant: Option<TenantId>,
    pub step: Step,
    /// Boxed: a pass returns this on every step, and the causes are large.
    #[source]
    pub cause: Box<Cause>,
}

fn tenant_prefix(tenant: &Option<TenantId>) -> String {
    match tenant {
        Some(t) => format!("tenant {t}: "),
        None => String::new(),
    }
}

/// What a pass was doing when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Reading the tenant's record.
    ReadTenant,
    /// Listing every tenant (garbage collection).
    ListTenants,
    /// Reading one of the tenant's secrets.
    ReadSecret(String),
    /// Creating the tenant's PostgreSQL database and role if absent.
    EnsureDatabase,
    /// Allocating the port of a replica.
    AllocatePort { replica: u32 },
    /// Listing what the orchestrator runs.
    ListInstances,
    /// Stopping and removing a replica.
    Stop { replica: u32 },
    /// Giving back the ports of removed replicas.
    ReleasePorts,
    /// Starting a missing or exited replica.
    Start { replica: u32 },
    /// Replacing a replica that runs an outdated spec.
    Replace { replica: u32 },
    /// Putting the spec back to the version that ran.
    RollBack,
    /// Archiving a deleted tenant's data.
    Archive,
    /// Dropping a deleted tenant's database and role.
    DropDatabase,
    /// Recording an event.
    RecordEvent(EventReason),
    /// Writing the observed status.
    WriteStatus,
    /// Removing a deleted tenant's record.
    RemoveRecord,
    /// Reading the tenant's last activity and pending wake.
    ReadActivity,
    /// Marking a finished wake.
    FinishWake,
    /// Acting under the lease of the tenant's queue row (issue 18: several pugs on one store).
    HoldLease,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ReadTenant => f.write_str("read the tenant"),
            Step::ListTenants => f.write_str("list the tenants"),
            Step::ReadSecret(name) => write!(f, "read secret {name}"),
            Step::EnsureDatabase => f.write_str("ensure the tenant database"),
            Step::AllocatePort { replica } => write!(f, "allocate a port for replica {replica}"),
            Step::ListInstances => f.write_str("list the instances"),
            Step::Stop { replica } => write!(f, "stop replica {replica}"),
            Step::ReleasePorts => f.write_str("release the ports of removed replicas"),
            Step::Start { replica } => write!(f, "start replica {replica}"),
            Step::Replace { replica } => write!(f, "replace replica {replica}"),
            Step::RollBack => f.write_str("roll the upgrade back"),
            Step::Archive => f.write_str("archive the tenant's data"),
            Step::DropDatabase => f.write_str("drop the tenant database"),
            Step::RecordEvent(reason) => write!(f, "record a {reason} event"),
            Step::WriteStatus => f.write_str("write the status"),
            Step::RemoveRecord => f.write_str("remove the tenant's record"),
            Step::ReadActivity => f.write_str("read the tenant's activity"),
            Step::FinishWake => f.write_str("mark the wake finished"),
            Step::HoldLease => f.write_str("act on the tenant"),
        }
    }
}

/// What went wrong underneath a step.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Orchestrator(#[from] OrchestratorError),
    #[error(transparent)]
    Database(#[from] TenantDbError),
    #[error("secret {0} of the tenant is missing from the store")]
    MissingSecret(&'static str),
    /// A plan named a replica that has no desired spec (a planner bug).
    #[error("the plan names replica {replica}, which has no desired spec")]
    NoSpec { replica: u32 },
    /// This pug's lease of the tenant's work ran out before it was renewed (the store was
    /// unreachable, or the heartbeat late): another pug may hold it now, so this one stops.
    #[error("this pug's lease of the tenant ran out (the store did not renew it); another pug takes over")]
    LeaseLost,
}

impl ReconcileError {
    /// Whether a later pass may succeed with nobody changing anything (a busy engine, a store
    /// or PostgreSQL hiccup, a spec changed meanwhile). `false` means an operator has to act
    /// first (a missing or undecryptable secret, an unavailable version, broken isolation);
    /// the queue still looks again with backoff, as the fix may come at any time.
    pub fn retryable(&self) -> bool {
        match &*self.cause {
            Cause::MissingSecret(_) | Cause::NoSpec { .. } => false,
            Cause::LeaseLost => true,
            Cause::Store(e) => !matches!(
                e,
                StoreError::MasterKey(_)
                    | StoreError::Undecryptable { .. }
                    | StoreError::Corrupt(_)
                    | StoreError::NoFreePort { .. }
                    | StoreError::NoFreeUid { .. }
            ),
            Cause::Orchestrator(e) => !matches!(
                e,
                OrchestratorError::UnknownVersion { .. } | OrchestratorError::Isolation(_)
            ),
            Cause::Database(e) => !matches!(e, TenantDbError::Url(_) | TenantDbError::Password),
        }
    }
}

/// Attaches the tenant and step to a failed result: `store.tenant(id).await.at(id, Step::ReadTenant)?`.
pub(crate) trait At<T> {
    fn at(self, tenant: &TenantId, step: Step) -> Result<T, ReconcileError>;
    /// For a step that concerns no one tenant (garbage collection's listings).
    fn fleet_wide(self, step: Step) -> Result<T, ReconcileError>;
}

impl<T, E: Into<Cause>> At<T> for Result<T, E> {
    fn at(self, tenant: &TenantId, step: Step) -> Result<T, ReconcileError> {
        self.map_err(|e| ReconcileError {
            tenant: Some(tenant.clone()),
            step,
            cause: Box::new(e.into()),
        })
    }

    fn fleet_wide(self, step: Step) -> Result<T, ReconcileError> {
        self.map_err(|e| ReconcileError {
            tenant: None,
            step,
            cause: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(cause: Cause) -> ReconcileError {
        ReconcileError {
            tenant: Some(TenantId::parse("acme").unwrap()),
            step: Step::Start { replica: 1 },
            cause: Box::new(cause),
        }
    }

    #[test]
    fn retryable_tells_transient_causes_from_ones_an_operator_fixes() {
        let table: Vec<(Cause, bool)> = vec![
            (Cause::MissingSecret("admin_password"), false),
            (Cause::NoSpec { replica: 3 }, false),
            (StoreError::Corrupt("x".into()).into(), false),
            (
                StoreError::Undecryptable {
                    tenant: "acme".into(),
                    name: "secret_key".into(),
                }
                .into(),
                false,
            ),
            (StoreError::NoFreePort { min: 1, max: 2 }.into(), false),
            (
                StoreError::Conflict {
                    id: "acme".into(),
                    expected: 1,
                    found: 2,
                }
                .into(),
                true,
            ),
            (StoreError::Db(sqlx::Error::PoolTimedOut).into(), true),
            (
                OrchestratorError::UnknownVersion {
                    version: "9.9.9".into(),
                    reason: "no such image".into(),
                }
                .into(),
                false,
            ),
            (OrchestratorError::Isolation("no uid".into()).into(), false),
            (OrchestratorError::Engine("busy".into()).into(), true),
            (TenantDbError::Password.into(), false),
            (TenantDbError::Url("x".into()).into(), false),
            (Cause::LeaseLost, true),
        ];
        for (cause, retryable) in table {
            let text = cause.to_string();
            assert_eq!(error(cause).retryable(), retryable, "{text}");
        }
    }

    #[test]
    fn the_message_names_the_tenant_and_step_and_keeps_the_source() {
        let e = error(OrchestratorError::Engine("the swarm is busy".into()).into());
        assert_eq!(e.to_string(), "tenant acme: cannot start replica 1");
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "the engine refused: the swarm is busy");
        assert!(matches!(
            *e.cause,
            Cause::Orchestrator(OrchestratorError::Engine(_))
        ));
        let fleet = ReconcileError {
            tenant: None,
            step: Step::ListInstances,
            cause: Box::new(Cause::MissingSecret("x")),
        };
        assert_eq!(fleet.to_string(), "cannot list the instances");
    }
}

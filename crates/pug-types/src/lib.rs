//! pug's domain model: what a tenant is, what is asked of it (its spec), what was observed (its
//! status), and what happened to it (events).
//!
//! Owns: the types shared by every component and the validation of user input into them
//! ([`TenantId::parse`], [`GrafanaVersion::parse`], [`Overrides::set`], [`Replicas::new`],
//! [`Labels::from_user`]). A value of these types has
//! been validated; code that holds one does not check it again.
//!
//! Must not: do IO, know about HTTP, SQL, processes or containers. Those live in the component
//! crates (`pug-api`, `pug-store`, `pug-orchestrator`, …).

#![forbid(unsafe_code)]

mod duration;
mod error_chain;
mod event;
mod id;
mod overrides;
mod renderer;
mod spec;
mod tenant;
mod version;

pub use duration::{format_duration_secs, parse_duration_secs, MAX_DURATION_SECS};
pub use error_chain::error_chain;
pub use event::EventReason;
pub use id::TenantId;
pub use overrides::{find_expansion, grafana_env_name, ExpansionContext, Overrides};
pub use renderer::{
    ActivityRecorded, RendererActivity, RendererGrant, RendererName, RendererTable,
};
pub use spec::{check_display_name, Labels, Replicas, MAX_DISPLAY_NAME, MAX_REPLICAS};
pub use tenant::{
    DashboardSpec, DatasourceSpec, DesiredState, Event, Phase, Tenant, TenantSpec, TenantStatus,
};
pub use version::GrafanaVersion;

/// A secret value (a password, a key, a token). It cannot be printed by `Debug` or `Display`,
/// so it cannot reach a log by accident; reading it needs an explicit `expose_secret()`.
pub use secrecy::{ExposeSecret, SecretString};

/// User input that was refused: what was wrong, in which field, and how to fix it.
///
/// The API turns it into a 4xx with `{"error": message, "field": field}`; the CLI prints the
/// message on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidInput {
    /// The request field that was wrong (`id`, `version`, `overrides`, …).
    pub field: &'static str,
    /// What was wrong and how to fix it, as one sentence.
    pub message: String,
}

impl InvalidInput {
    /// Builds the error for `field`.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

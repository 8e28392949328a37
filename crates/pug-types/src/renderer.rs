//! The token table a renderer service reads from pug (`GET /api/v1/renderer/tenants`): for
//! each tenant with ready instances, the SHA-256 of its `renderer_token` (never the token) and
//! the instances it may render; and the service's report of whose renders it served
//! (`POST /api/v1/renderer/activity`).
//!
//! Owns: the wire shape both sides share (pug's API serves it, `pug render --tenants-url`
//! reads it).
//!
//! Must not: hold a token in clear, or decide which tenant may render what (that is
//! `pug_renderer::tenant_tokens::entries`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every tenant whose token renders something now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RendererTable {
    pub tenants: Vec<RendererGrant>,
}

/// One tenant's token, by its digest, and what it may render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RendererGrant {
    /// The tenant (its renders are its own).
    pub tenant: String,
    /// Lowercase hex SHA-256 of the tenant's `renderer_token`: a renderer compares the digest
    /// of a presented token with it, so the table holds nothing a render can be asked with.
    pub token_sha256: String,
    /// `host:port` of each ready instance: the only origins the token renders.
    pub endpoints: Vec<String>,
    /// The names the tenant's Grafana calls its instances by in `callback_url`, with the
    /// address each stands for (one of `endpoints`).
    pub names: Vec<RendererName>,
}

/// The tenants a renderer service rendered for since its last report
/// (`POST /api/v1/renderer/activity`): each render is its tenant's activity, as the embedded
/// renderer's are, so a tenant whose alert screenshots keep coming does not fall asleep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RendererActivity {
    pub tenants: Vec<String>,
}

/// What pug made of a [`RendererActivity`] report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ActivityRecorded {
    /// Tenants marked used: those of the report that are in the current table (a renderer
    /// cannot have rendered for any other).
    pub recorded: usize,
    /// Tenants of the report that are not in the table, ignored.
    pub ignored: usize,
}

/// A name of one of a tenant's instances and its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RendererName {
    /// `name:port`, as in the tenant's `callback_url` (swarm: its service's name).
    pub name: String,
    /// `address:port` it stands for.
    pub address: String,
}

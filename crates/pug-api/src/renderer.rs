//! `GET /api/v1/renderer/tenants`: the token table of the swarm renderer service, which runs
//! Chromium on untrusted tenants' pages and so gets neither pug's store nor its master key;
//! and `POST /api/v1/renderer/activity`, where that service reports whose renders it served
//! (a render is its tenant's activity, as with the embedded renderer).
//!
//! Owns: the routes and their answers: for each tenant with ready instances, its id, the SHA-256
//! of its `renderer_token` (never the token), its ready endpoints and the names its Grafana
//! calls them by; and which reported tenants count (only those in the current table: the
//! service cannot have rendered for another, so its credential cannot keep any other tenant
//! awake). Only the renderer service's credential calls them (`auth::require_renderer`).
//!
//! Must not: build the table (`pug serve` hands the API a [`RendererTableSource`], the table
//! its token loop keeps, computed by the same code as the embedded renderer's), or return a
//! token.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use pug_types::{ActivityRecorded, RendererActivity, RendererTable};

use crate::{ApiError, ApiState};

/// The table as last built (in `pug serve`: its renderer token loop's).
pub trait RendererTableSource: Send + Sync {
    fn table(&self) -> Arc<RendererTable>;

    /// `tenant` (one of the table's) had a render: mark it used, without blocking (in
    /// `pug serve`: the gateway's batched activity table).
    fn rendered(&self, tenant: &str);
}

/// Which of `reported` are the table's tenants (each once), and how many are not.
pub fn reported_tenants<'a>(
    table: &RendererTable,
    reported: &'a [String],
) -> (Vec<&'a str>, usize) {
    let mut known: Vec<&str> = reported
        .iter()
        .map(String::as_str)
        .filter(|t| table.tenants.iter().any(|g| g.tenant == *t))
        .collect();
    known.sort_unstable();
    known.dedup();
    let ignored = reported
        .iter()
        .filter(|t| !table.tenants.iter().any(|g| &g.tenant == *t))
        .count();
    (known, ignored)
}

/// The renderer service's report of the tenants it rendered for since its last one.
#[utoipa::path(post, path = "/api/v1/renderer/activity",
    request_body = RendererActivity,
    responses(
        (status = 200, description = "The table's tenants among them are marked used; others are ignored", body = ActivityRecorded),
        (status = 400, description = "not a report", body = crate::ErrorBody),
        (status = 401, description = "no valid token", body = crate::ErrorBody),
        (status = 403, description = "a token that is not the renderer service's credential", body = crate::ErrorBody),
        (status = 404, description = "this pug runs no renderer service (renderer.swarm.replicas = 0)", body = crate::ErrorBody),
    ))]
pub(crate) async fn renderer_activity(
    State(state): State<ApiState>,
    body: Result<Json<RendererActivity>, JsonRejection>,
) -> Result<Json<ActivityRecorded>, ApiError> {
    let Json(report) = body?;
    let source = source(&state)?;
    let table = source.table();
    let (known, ignored) = reported_tenants(&table, &report.tenants);
    for tenant in &known {
        source.rendered(tenant);
    }
    Ok(Json(ActivityRecorded {
        recorded: known.len(),
        ignored,
    }))
}

fn source(state: &ApiState) -> Result<&Arc<dyn RendererTableSource>, ApiError> {
    state.renderer_tenants.as_ref().ok_or_else(|| {
        ApiError::Missing(
            "this pug runs no renderer service, so it serves no renderer token table; set \
             renderer.swarm.replicas ≥ 1 (swarm backend)"
                .into(),
        )
    })
}

/// The renderer service's token table.
#[utoipa::path(get, path = "/api/v1/renderer/tenants",
    responses(
        (status = 200, description = "Each tenant's token digest and the instances it may render", body = RendererTable),
        (status = 401, description = "no valid token", body = crate::ErrorBody),
        (status = 403, description = "a token that is not the renderer service's credential", body = crate::ErrorBody),
        (status = 404, description = "this pug runs no renderer service (renderer.swarm.replicas = 0)", body = crate::ErrorBody),
    ))]
pub(crate) async fn renderer_tenants(
    State(state): State<ApiState>,
) -> Result<Json<RendererTable>, ApiError> {
    Ok(Json(RendererTable::clone(&source(&state)?.table())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pug_types::RendererGrant;

    fn grant(tenant: &str) -> RendererGrant {
        RendererGrant {
            tenant: tenant.into(),
            token_sha256: "00".repeat(32),
            endpoints: vec!["10.0.0.2:3000".into()],
            names: vec![],
        }
    }

    #[test]
    fn only_the_tables_tenants_count_each_once() {
        let table = RendererTable {
            tenants: vec![grant("acme"), grant("globex")],
        };
        let s = |v: &[&str]| v.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        let cases: &[(&str, Vec<String>, Vec<&str>, usize)] = &[
            ("nothing reported", s(&[]), vec![], 0),
            ("one of the table's", s(&["acme"]), vec!["acme"], 0),
            ("twice: marked once", s(&["acme", "acme"]), vec!["acme"], 0),
            (
                "one not in the table (asleep, deleted, or never): ignored",
                s(&["acme", "initech"]),
                vec!["acme"],
                1,
            ),
            ("none of the table's", s(&["initech", "x"]), vec![], 2),
        ];
        for (what, reported, known, ignored) in cases {
            assert_eq!(
                reported_tenants(&table, reported),
                (known.clone(), *ignored),
                "{what}"
            );
        }
    }
}

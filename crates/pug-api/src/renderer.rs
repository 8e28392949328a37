//! `GET /api/v1/renderer/tenants`: the token table of the swarm renderer service, which runs
//! Chromium on untrusted tenants' pages and so gets neither pug's store nor its master key.
//!
//! Owns: the route and its answer: for each tenant with ready instances, its id, the SHA-256
//! of its `renderer_token` (never the token), its ready endpoints and the names its Grafana
//! calls them by. Only the renderer service's credential reads it (`auth::require_renderer`).
//!
//! Must not: build the table (`pug serve` hands the API a [`RendererTableSource`], the table
//! its token loop keeps, computed by the same code as the embedded renderer's), or return a
//! token.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use pug_types::RendererTable;

use crate::{ApiError, ApiState};

/// The table as last built (in `pug serve`: its renderer token loop's).
pub trait RendererTableSource: Send + Sync {
    fn table(&self) -> Arc<RendererTable>;
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
    let Some(source) = &state.renderer_tenants else {
        return Err(ApiError::Missing(
            "this pug runs no renderer service, so it serves no renderer token table; set \
             renderer.swarm.replicas ≥ 1 (swarm backend)"
                .into(),
        ));
    };
    Ok(Json(RendererTable::clone(&source.table())))
}

//! `GET /api/v1/swarm`: the swarm as pug's swarm backend observes it (nodes, roles, leader,
//! manager reachability, tasks per node, tenants' running and desired tasks).
//!
//! The API does not know Docker: `pug serve` hands it a [`SwarmSource`] (`ApiState::swarm`)
//! when the backend is `swarm`; without one the endpoint says how to get one.

use axum::extract::State;
use axum::Json;
use serde_json::Value;
use std::future::Future;
use std::pin::Pin;

use crate::{ApiError, ApiState};

/// Why the swarm could not be read (its causes stay attached, for the one-line answer).
pub type SwarmError = Box<dyn std::error::Error + Send + Sync>;

/// A swarm status on its way, as JSON.
pub type SwarmFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, SwarmError>> + Send + 'a>>;

/// Reads the swarm's status on request (in `pug serve`: the swarm backend's observer).
pub trait SwarmSource: Send + Sync {
    /// The swarm as observed now.
    fn status(&self) -> SwarmFuture<'_>;
}

/// `GET /api/v1/swarm`: nodes (role, availability, state, address, leader, reachability, tasks
/// by state), the leader, managers and how many are reachable, and each tenant's running and
/// desired tasks.
#[utoipa::path(get, path = "/api/v1/swarm",
    responses(
        (status = 200, description = "The swarm as observed now", body = Object),
        (status = 400, description = "pug does not run the swarm backend", body = crate::ErrorBody),
        (status = 503, description = "the swarm manager cannot be read", body = crate::ErrorBody),
    ))]
pub(crate) async fn status(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let Some(source) = &state.swarm else {
        return Err(ApiError::BadRequest(format!(
            "pug runs the {} backend; swarm status needs backend = \"swarm\" (pug serve --backend swarm)",
            state.config.backend.as_str()
        )));
    };
    source.status().await.map(Json).map_err(|e| {
        ApiError::Unavailable(format!(
            "cannot read the swarm: {}",
            pug_orchestrator::error_chain(&*e)
        ))
    })
}

//! Waking a sleeping tenant on its next request, once that request has been authenticated
//! and authorised (the pipeline calls this only after both; an anonymous request gets the
//! sign-in, never a wake).
//!
//! Owns: single flight per tenant (any number of requests at once ask the store for one wake),
//! holding a request until the tenant is ready (up to `gateway.wake_timeout_secs`, then 503
//! with `Retry-After`), the page a browser navigation gets instead ("waking acme's Grafana…",
//! whose script holds a request to `…/_pug/wake` and continues to the URL asked for the moment
//! that answers), and learning "ready" at once: from [`Inner::status_written`] (the controller
//! in the same process) or else from the periodic route refresh.
//!
//! Must not: start anything itself (the controller does, from the store's wake), or wake a
//! suspended, deleted or failed tenant's instances by another way than the controller's plan.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pug_config::GatewayMode;
use pug_types::{Phase, TenantId, TenantStatus};
use tokio::sync::watch;

use crate::proxy::Route;
use crate::{pages, Inner};

/// The path, under a tenant, of the held request the waking page makes.
pub(crate) const WAIT_PATH: &str = "/_pug/wake";

/// Tells whoever starts instances that a wake was asked for (in `pug serve`: the controller's
/// queue loop, so it looks at once rather than at its next tick).
pub trait WakeSignal: Send + Sync {
    /// A wake of `tenant` is in the store. Must not block.
    fn wake_requested(&self, tenant: &TenantId);
}

/// One wake in flight: when it was asked for, and who waits for it.
struct Pending {
    asked: Instant,
    ready: watch::Sender<bool>,
}

/// The wakes this gateway has asked for and not yet seen finished.
#[derive(Default)]
pub(crate) struct Wakes {
    pending: Mutex<HashMap<TenantId, Arc<Pending>>>,
}

impl Wakes {
    /// Whether a wake of `id` is in flight (asked for less than `timeout` ago).
    fn in_flight(&self, id: &TenantId, timeout: Duration) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .is_some_and(|p| p.asked.elapsed() < timeout)
    }

    /// Joins the wake of `id` in flight, or starts one (then `true` comes back with it).
    fn join(&self, id: &TenantId, timeout: Duration) -> (watch::Receiver<bool>, bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pending.get(id).filter(|p| p.asked.elapsed() < timeout) {
            return (p.ready.subscribe(), false);
        }
        let (ready, rx) = watch::channel(false);
        pending.insert(
            id.clone(),
            Arc::new(Pending {
                asked: Instant::now(),
                ready,
            }),
        );
        (rx, true)
    }

    /// The wake of `id` is over (the tenant is ready): its waiters go on.
    fn finish(&self, id: &TenantId) {
        let done = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(p) = done {
            let _ = p.ready.send(true);
        }
    }

    fn forget(&self, id: &TenantId) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Tenants with a wake in flight.
    pub(crate) fn tenants(&self) -> Vec<TenantId> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// What the pipeline does with a request for a tenant without a ready replica.
pub(crate) enum Waking {
    /// Go on with this (ready) route.
    Ready(Arc<Route>),
    /// Answer this.
    Answer(Response),
}

impl Inner {
    /// Whether a request for a tenant routed by `route` (no ready replica) waits for a wake:
    /// the tenant sleeps, or a wake this gateway asked for is under way.
    pub(crate) fn wakes_on_request(&self, id: &TenantId, route: &Route) -> bool {
        route.phase == Phase::Sleeping || self.wakes.in_flight(id, self.settings.wake_timeout)
    }

    /// The path of the held request of a tenant's waking page.
    pub(crate) fn wait_path(&self, id: &TenantId) -> String {
        match self.settings.mode {
            GatewayMode::Path => format!("/t/{id}{WAIT_PATH}"),
            GatewayMode::Host => WAIT_PATH.to_owned(),
        }
    }

    /// Asks for one wake of `id` (single flight) and returns what to wait on.
    fn ask_wake(&self, id: &TenantId) -> watch::Receiver<bool> {
        let (rx, first) = self.wakes.join(id, self.settings.wake_timeout);
        if first {
            self.metrics.wakes_asked.inc();
            let store = self.store.clone();
            let signal = self.wake_signal.get().cloned();
            let id = id.clone();
            let wakes = self.wakes.clone();
            // Spawned: a client that goes away must not cancel the write the others wait on.
            tokio::spawn(async move {
                match store.wake(&id, "request", pug_store::now_ms()).await {
                    Ok(true) => {
                        if let Some(signal) = signal {
                            signal.wake_requested(&id);
                        }
                    }
                    Ok(false) => wakes.forget(&id),
                    Err(e) => {
                        tracing::warn!(tenant = %id, error = %e, "gateway: cannot ask for a wake");
                        wakes.forget(&id);
                    }
                }
            });
        }
        rx
    }

    /// Holds until `id` has a ready replica, or `timeout` passes (`None`).
    async fn wait_ready(&self, id: &TenantId, timeout: Duration) -> Option<Arc<Route>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.ask_wake(id);
        loop {
            if let Some(r) = self.route(id).filter(|r| !r.endpoints.is_empty()) {
                return Some(r);
            }
            let waited = tokio::time::timeout_at(deadline, rx.wait_for(|ready| *ready))
                .await
                .map(|r| r.is_ok());
            match waited {
                Ok(true) => {
                    if let Some(r) = self.route(id).filter(|r| !r.endpoints.is_empty()) {
                        return Some(r);
                    }
                    // Finished, yet not routable (it went back to sleep at once): ask again.
                    rx = self.ask_wake(id);
                }
                // The wake was dropped (its store write failed): ask again, shortly.
                Ok(false) => {
                    tokio::time::sleep_until(
                        (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline),
                    )
                    .await;
                    rx = self.ask_wake(id);
                }
                Err(_) => return None,
            }
        }
    }

    /// A request for sleeping (or waking) tenant `id`, already authorised: a browser navigation
    /// gets the waking page at once; anything else is held until the tenant is ready.
    pub(crate) async fn wake_for(
        &self,
        id: &TenantId,
        navigation: bool,
        next: &str,
        html: bool,
    ) -> Waking {
        if navigation {
            let _ = self.ask_wake(id);
            return Waking::Answer(pages::waking(id, &self.wait_path(id), next));
        }
        match self.wait_ready(id, self.settings.wake_timeout).await {
            Some(route) => Waking::Ready(route),
            None => Waking::Answer(self.still_waking(id, html)),
        }
    }

    /// `…/_pug/wake`, the held request of the waking page: 200 once the tenant is ready, 503
    /// when the wake timeout passes first (the page asks again), 409 when it cannot wake.
    pub(crate) async fn wait_endpoint(&self, id: &TenantId, route: &Route) -> Response {
        let answer = |status: StatusCode, body: serde_json::Value| {
            let mut r = (status, axum::Json(body)).into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        };
        if !route.endpoints.is_empty() {
            return answer(StatusCode::OK, serde_json::json!({"ready": true}));
        }
        if !self.wakes_on_request(id, route) {
            return answer(
                StatusCode::CONFLICT,
                serde_json::json!({
                    "ready": false,
                    "phase": route.phase.as_str(),
                    "error": format!(
                        "tenant {id}'s Grafana does not wake by itself (phase: {}); ask an \
                         administrator", route.phase),
                }),
            );
        }
        match self.wait_ready(id, self.settings.wake_timeout).await {
            Some(_) => answer(StatusCode::OK, serde_json::json!({"ready": true})),
            None => self.still_waking(id, false),
        }
    }

    fn still_waking(&self, id: &TenantId, html: bool) -> Response {
        let secs = self.settings.wake_timeout.as_secs();
        let mut r = pages::error(
            html,
            StatusCode::SERVICE_UNAVAILABLE,
            "Grafana is waking",
            &format!("tenant {id}'s Grafana is waking and was not ready within {secs}s; try again shortly"),
            serde_json::json!({"tenant": id.as_str(), "phase": "sleeping"}),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        r
    }

    /// A status the controller has just written: the route table takes it at once, and a wake
    /// it finishes lets its waiters go on.
    pub(crate) fn status_written(&self, id: &TenantId, status: &TenantStatus) {
        {
            let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
            let keep = routes.get(id).filter(|r| r.same_as(status)).cloned();
            if keep.is_none() {
                let activity = routes.get(id).map(|r| r.activity.clone());
                routes.insert(id.clone(), Arc::new(Route::new(status, activity)));
            }
        }
        if !status.endpoints.is_empty() {
            self.wakes.finish(id);
        }
    }

    /// After a route refresh: wakes whose tenant is now routable are over.
    pub(crate) fn finish_ready_wakes(&self) {
        for id in self.wakes.tenants() {
            if self.route(&id).is_some_and(|r| !r.endpoints.is_empty()) {
                self.wakes.finish(&id);
            }
        }
    }
}

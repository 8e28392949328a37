//! pug's gateway: every person reaches their own tenant's Grafana, and no other.
//!
//! Owns: routing (path mode `/t/<tenant>/…` on one origin, or host mode `<tenant>.<domain>`,
//! each tenant its own origin), authentication (pug users with argon2id passwords, signed
//! HttpOnly session cookies, CSRF-protected login/logout forms, login throttling, embed tokens
//! signed by a customer's webapp), authorisation (membership of the tenant, checked before any
//! contact with its instance), and proxying to a ready replica ([`proxy`]).
//!
//! Request pipeline, in order, one module per concern: normalise the path ([`path`]) → pick the
//! tenant from the normalised path or the Host (`routing`) → take an embed token from
//! `?pug_token=` → authenticate (session cookie or `Authorization: Bearer <embed token>`) →
//! authorise (membership or the embed session's tenant) → route (ready endpoints from the
//! store every second, or from `pug serve`'s one status snapshot) → forward with pug's own
//! `X-WEBAUTH-*` headers (`pipeline`, each step a named function; [`proxy`] forwards). Sessions and cookies are `session`, the
//! sign-in and sign-out forms `login` (throttled by [`throttle`]), the gateway's own answers
//! `responses`, per-tenant metrics `tracking`, settings `settings`. Who a person may be
//! (logins, roles, passwords, signed values, embed tokens) is the `pug-auth` crate, shared
//! with the API. This file keeps the [`Gateway`] service, its state and the dispatch.
//!
//! Embed sessions hold only as long as their authority: each is bound to the key that signed
//! its token and to its tenant's incarnation (the store checks both on every read; a cached
//! session is dropped as soon as the key refresh no longer sees its key), a token's `jti` mints
//! one session only, and a background sweep (`gateway.session_sweep_interval_secs`) deletes
//! expired and orphaned sessions and expired token ids.
//!
//! Why host mode in production: in path mode every tenant's Grafana shares one origin, so
//! script running in one tenant's Grafana (a plugin, a panel) runs with the browser's
//! same-origin rights over every other tenant the person can reach, and over pug's pages.
//! Host mode gives each tenant its own origin and its own host-only session cookie, so the
//! browser itself keeps tenants apart. Path mode is for single-team and test setups.
//!
//! Must not: trust anything the client says about identity (every `X-WEBAUTH-*`,
//! `Authorization` and pug cookie is removed before forwarding), or buffer bodies.

#![forbid(unsafe_code)]

mod activity;
mod cache;
mod identity;
mod login;
mod metrics;
pub mod pages;
pub mod path;
mod pipeline;
mod proxy;
mod responses;
mod routing;
pub mod server;
mod session;
mod settings;
pub mod throttle;
mod tracking;
mod upstream;
mod wake;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Router;
use prometheus_client::registry::Registry;
use pug_auth::{GrafanaRole, Signer};
use pug_store::{SessionRecord, Store, StoreError, SweepCounts};
use pug_types::{ExposeSecret, TenantId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub use metrics::GatewayMetrics;
pub use settings::{
    GatewaySettings, CSRF_COOKIE, HOST_MODE_PREFIX, SECURE_CSRF_COOKIE, SECURE_SESSION_COOKIE,
    SESSION_COOKIE, TOKEN_PARAM,
};
pub use wake::WakeSignal;

use cache::{AuthCache, KeyRing};
use proxy::Route;
use responses::redirect;
use routing::Target;

/// What can stop the gateway from starting.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway cannot read its state from the store")]
    Store(#[from] StoreError),
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    settings: GatewaySettings,
    metrics: Arc<GatewayMetrics>,
    signer: Signer,
    throttle: throttle::Throttle,
    /// Permits for password checks, shared by every worker: a flood of sign-ins gets 503 at
    /// once instead of queueing argon2 hashes (19 MiB each) without bound.
    password_checks: Arc<tokio::sync::Semaphore>,
    routes: RwLock<HashMap<TenantId, Arc<Route>>>,
    keys: Arc<KeyRing>,
    /// session id → the session (None: no such session).
    sessions: Arc<AuthCache<Option<Arc<SessionRecord>>>>,
    /// user → their roles by tenant.
    members: Arc<AuthCache<Arc<HashMap<TenantId, GrafanaRole>>>>,
    /// A hash to verify against when the user does not exist, so that timing does not tell
    /// which users exist.
    dummy_hash: String,
    /// Wakes of sleeping tenants in flight (single flight per tenant).
    wakes: Arc<wake::Wakes>,
    /// Who starts instances when a wake is asked for; set once by `pug serve`.
    wake_signal: std::sync::OnceLock<Arc<dyn WakeSignal>>,
    /// Signed identity tokens, when tenants trust a signature ([`GatewaySettings::signed_identity`]).
    identity: Option<identity::IdentityTokens>,
}

/// Every tenant's status at one moment, as one poller of the store publishes it for the whole
/// process ([`Gateway::background_on`]).
pub type StatusSnapshot = Arc<Vec<(TenantId, pug_types::TenantStatus)>>;

/// Entries kept in each auth cache before it is cleared.
const AUTH_CACHE_MAX: usize = 100_000;

impl Gateway {
    /// [`Gateway::open`], with its [`Gateway::background`] loops spawned until the gateway is
    /// dropped (for tests and benchmarks; `pug serve` runs them under its shutdown signal).
    pub async fn new(
        store: Store,
        settings: GatewaySettings,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        let gateway = Self::open(store, settings, registry).await?;
        tokio::spawn(gateway.background(CancellationToken::new()));
        Ok(gateway)
    }

    /// Builds the gateway, registers its metrics on `registry` and reads the routing table;
    /// nothing re-reads it until [`Gateway::background`] runs.
    pub async fn open(
        store: Store,
        settings: GatewaySettings,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        let key = store.gateway_cookie_key().await?;
        let identity = match settings.signed_identity {
            true => Some(identity::IdentityTokens::new(
                pug_auth::IdentitySigner::from_secret(&store.gateway_identity_secret().await?),
            )),
            false => None,
        };
        let ttl = settings.auth_cache_ttl;
        let metrics = Arc::new(GatewayMetrics::register(registry));
        let keys = KeyRing::new(
            store.clone(),
            settings.refresh_interval,
            metrics.embed_key_reads.clone(),
        );
        let inner = Arc::new(Inner {
            signer: Signer::new(key.expose_secret().as_bytes()),
            throttle: throttle::Throttle::new(
                settings.login_window,
                settings.login_failures_per_user,
                settings.login_failures_per_address,
            ),
            password_checks: Arc::new(tokio::sync::Semaphore::new(
                settings.login_concurrency.max(1),
            )),
            metrics,
            store,
            settings,
            routes: RwLock::default(),
            keys,
            sessions: AuthCache::new(ttl, AUTH_CACHE_MAX),
            members: AuthCache::new(ttl, AUTH_CACHE_MAX),
            dummy_hash: pug_auth::hash_password("pug-dummy-password"),
            wakes: Arc::default(),
            wake_signal: std::sync::OnceLock::new(),
            identity,
        });
        let gateway = Self { inner };
        gateway.refresh().await?;
        Ok(gateway)
    }

    /// The gateway's background loops: re-reading the routing table every
    /// `refresh_interval`, sweeping sessions every `session_sweep_interval` and flushing
    /// tenants' activity every `activity_flush_interval`. It ends when `shutdown` is cancelled
    /// or the gateway is dropped.
    pub fn background(
        &self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak = Arc::downgrade(&self.inner);
        let s = &self.inner.settings;
        let refresh = refresh_loop(weak.clone(), s.refresh_interval, shutdown.clone());
        let sweep = sweep_loop(weak.clone(), s.session_sweep_interval, shutdown.clone());
        let activity = activity_loop(weak, s.activity_flush_interval, shutdown);
        async move {
            tokio::join!(refresh, sweep, activity);
        }
    }

    /// [`Gateway::background`], with the routing table taken from each new `statuses`
    /// snapshot (published by one poller of the store for the whole process, which the
    /// renderer reads too) instead of a store read of its own; the embed keys are re-read
    /// from the store at each snapshot and at least every `refresh_interval`.
    pub fn background_on(
        &self,
        statuses: watch::Receiver<StatusSnapshot>,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let weak = Arc::downgrade(&self.inner);
        let s = &self.inner.settings;
        let routes = snapshot_loop(weak.clone(), statuses, s.refresh_interval, shutdown.clone());
        let sweep = sweep_loop(weak.clone(), s.session_sweep_interval, shutdown.clone());
        let activity = activity_loop(weak, s.activity_flush_interval, shutdown);
        async move {
            tokio::join!(routes, sweep, activity);
        }
    }

    /// `status` is now `tenant`'s stored status (the controller in the same process says so
    /// right after writing it): the route takes it at once, and requests held for the
    /// tenant's wake go on when it has a ready replica.
    pub fn status_written(&self, tenant: &TenantId, status: &pug_types::TenantStatus) {
        self.inner.status_written(tenant, status);
    }

    /// Who to tell when a wake is asked for (the controller, in `pug serve`). Without one, the
    /// controller sees the wake at its next look at the queue. Only the first one set counts.
    pub fn set_wake_signal(&self, signal: Arc<dyn WakeSignal>) {
        let _ = self.inner.wake_signal.set(signal);
    }

    /// Marks `tenant` used, as a request through the gateway does, for the next batched
    /// activity flush (`pug serve`: each render of its pages by the embedded renderer).
    pub fn mark_used(&self, tenant: &TenantId) {
        self.inner.mark_used(tenant);
    }

    /// Writes tenants' activity since the last flush to the store now (what the background
    /// flush does every second). Returns how many tenants it wrote.
    pub async fn flush_activity(&self) -> Result<usize, StoreError> {
        self.inner.flush_activity(pug_store::now_ms()).await
    }

    /// Re-reads the routing table and embed keys from the store now.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        self.inner.refresh().await
    }

    /// Deletes expired and orphaned sessions and expired embed token ids now (what the
    /// background sweep does every `session_sweep_interval`).
    pub async fn sweep(&self) -> Result<SweepCounts, StoreError> {
        self.inner.sweep().await
    }

    /// Puts the gateway in front of `app` (pug's API): tenant traffic and pug's login pages go
    /// to the gateway, everything else to `app`.
    pub fn wrap(&self, app: Router) -> Router {
        Router::new().fallback_service(self.service(app))
    }

    /// The gateway in front of `app` as the service [`server::serve`] calls for each request:
    /// what [`Gateway::wrap`] does, without axum's router on the path of tenant traffic.
    pub fn service(&self, app: Router) -> GatewayService {
        GatewayService {
            gateway: self.clone(),
            app,
        }
    }

    /// The gateway alone (pug's API answers 404), for tests and benchmarks.
    pub fn router(&self) -> Router {
        self.wrap(Router::new())
    }

    async fn dispatch(&self, req: Request, app: Router) -> Response {
        match self.inner.classify(&req) {
            Target::Pug => match Box::pin(app.oneshot(req)).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
            Target::Tenant(id, path) => self.inner.clone().tenant_request(id, path, req).await,
            // Boxed: these large futures would otherwise make every request's future (moved
            // and zeroed per request) as large as theirs. Likewise below for the rare paths.
            Target::Login(tenant) => Box::pin(self.inner.login(tenant, req)).await,
            Target::Logout(tenant) => Box::pin(self.inner.logout(tenant, req)).await,
            Target::Callback(tenant) => Box::pin(self.inner.callback(tenant, req)).await,
            Target::Redirect(to) => redirect(StatusCode::MOVED_PERMANENTLY, &to),
            Target::BadPath(e) => pages::error(
                pages::wants_html(req.headers()),
                StatusCode::BAD_REQUEST,
                "Bad request",
                &e.to_string(),
                serde_json::Value::Null,
            ),
            Target::NoTenant => pages::error(
                pages::wants_html(req.headers()),
                StatusCode::NOT_FOUND,
                "No such tenant",
                "there is no tenant at this address",
                serde_json::Value::Null,
            ),
        }
    }
}

/// The gateway in front of pug's API router, as a service (see [`Gateway::service`]).
#[derive(Clone)]
pub struct GatewayService {
    gateway: Gateway,
    app: Router,
}

impl tower::Service<Request> for GatewayService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let (gateway, app) = (self.gateway.clone(), self.app.clone());
        Box::pin(async move { Ok(gateway.dispatch(req, app).await) })
    }
}

/// Sleeps `period`; false when `shutdown` came first.
async fn sleep_unless_shut_down(period: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(period) => true,
    }
}

async fn refresh_loop(weak: Weak<Inner>, period: Duration, shutdown: CancellationToken) {
    loop {
        if !sleep_unless_shut_down(period, &shutdown).await {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = inner.refresh().await {
            tracing::warn!(error = %e, "gateway: cannot refresh the routing table");
        }
    }
}

async fn snapshot_loop(
    weak: Weak<Inner>,
    mut statuses: watch::Receiver<StatusSnapshot>,
    period: Duration,
    shutdown: CancellationToken,
) {
    // The embed keys are re-read at each snapshot and at least every `period`: the poller
    // publishes only a fleet that changed, and a deleted key must stop verifying tokens within
    // a refresh however still the fleet is.
    let mut keys_due = tokio::time::interval(period);
    keys_due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keys_due.tick().await;
    loop {
        let changed = tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = statuses.changed() => match changed {
                Ok(()) => true,
                Err(_) => return,
            },
            _ = keys_due.tick() => false,
        };
        let Some(inner) = weak.upgrade() else { return };
        if changed {
            let snapshot = statuses.borrow_and_update().clone();
            inner.apply_statuses(&snapshot);
            keys_due.reset();
        }
        if let Err(e) = inner.keys.refresh().await {
            tracing::warn!(error = %e, "gateway: cannot refresh the embed keys");
        }
    }
}

async fn activity_loop(weak: Weak<Inner>, period: Duration, shutdown: CancellationToken) {
    loop {
        if !sleep_unless_shut_down(period, &shutdown).await {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = inner.flush_activity(pug_store::now_ms()).await {
            tracing::warn!(error = %e, "gateway: cannot record tenants' activity");
        }
    }
}

async fn sweep_loop(weak: Weak<Inner>, period: Duration, shutdown: CancellationToken) {
    loop {
        if !sleep_unless_shut_down(period, &shutdown).await {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        match inner.sweep().await {
            Ok(c) => tracing::debug!(
                expired = c.expired_sessions,
                orphaned = c.orphaned_sessions,
                token_ids = c.token_ids,
                "gateway: swept sessions"
            ),
            Err(e) => tracing::warn!(error = %e, "gateway: cannot sweep expired sessions"),
        }
    }
}

impl Inner {
    async fn sweep(&self) -> Result<SweepCounts, StoreError> {
        let c = self.store.sweep_sessions(pug_store::now_ms()).await?;
        self.metrics
            .swept
            .inc_by(c.expired_sessions + c.orphaned_sessions + c.token_ids);
        Ok(c)
    }

    async fn refresh(&self) -> Result<(), StoreError> {
        let statuses = self.store.tenant_statuses().await?;
        self.apply_statuses(&statuses);
        self.keys.refresh().await
    }

    /// Makes the routing table `statuses` (every tenant's), keeping the routes (and their
    /// activity) of tenants whose status did not change.
    fn apply_statuses(&self, statuses: &[(TenantId, pug_types::TenantStatus)]) {
        let old = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routes: HashMap<TenantId, Arc<Route>> = statuses
            .iter()
            .map(|(id, status)| {
                let route = match old.get(id) {
                    Some(r) if r.same_as(status) => r.clone(),
                    Some(r) => Arc::new(Route::new(status, Some(r.activity.clone()))),
                    None => Arc::new(Route::new(status, None)),
                };
                (id.clone(), route)
            })
            .collect();
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        self.finish_ready_wakes();
    }
}

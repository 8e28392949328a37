//! pug's gateway: every person reaches their own tenant's Grafana, and no other.
//!
//! Owns: routing (path mode `/t/<tenant>/…` on one origin, or host mode `<tenant>.<domain>`,
//! each tenant its own origin), authentication (pug users with argon2id passwords, signed
//! HttpOnly session cookies, CSRF-protected login/logout forms, login throttling, embed tokens
//! signed by a customer's webapp), authorisation (membership of the tenant, checked before any
//! contact with its instance), and proxying to a ready replica ([`proxy`]).
//!
//! Request pipeline, in order: normalise the path ([`path`]) → pick the tenant from the
//! normalised path or the Host → take an embed token from `?pug_token=` → authenticate (session
//! cookie or `Authorization: Bearer <embed token>`) → authorise (membership or the embed
//! session's tenant) → route (ready endpoints from the store, refreshed every second) → forward
//! with pug's own `X-WEBAUTH-*` headers.
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

pub mod auth;
mod cache;
pub mod embed;
mod metrics;
pub mod pages;
pub mod path;
mod proxy;
pub mod server;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::registry::Registry;
use pug_config::{Config, GatewayMode};
use pug_store::{EmbedScope, EmbedSessionOutcome, SessionRecord, Store, StoreError, SweepCounts};
use pug_types::{ExposeSecret, SecretString, TenantId};
use tower::ServiceExt as _;

pub use auth::{hash_password, validate_new_user, GrafanaRole};
pub use embed::{EmbedClaims, EmbedError};
pub use metrics::GatewayMetrics;

use cache::{AuthCache, KeyRing};
use proxy::Route;

/// The session cookie (served over http, for local use; see [`GatewaySettings::session_cookie`]).
pub const SESSION_COOKIE: &str = "pug_session";
/// The CSRF cookie of pug's forms (double submit), over http.
pub const CSRF_COOKIE: &str = "pug_csrf";
/// The session cookie over https: the `__Host-` prefix makes browsers refuse it unless it was set
/// by this very host, `Secure`, with `Path=/` and no `Domain`, so a sibling tenant host cannot
/// plant one (cookie tossing, review F8). Browsers only accept the prefix on secure origins, so
/// plain-http deployments keep the names above.
pub const SECURE_SESSION_COOKIE: &str = "__Host-pug_session";
/// The CSRF cookie over https (see [`SECURE_SESSION_COOKIE`]).
pub const SECURE_CSRF_COOKIE: &str = "__Host-pug_csrf";
/// The query parameter that carries an embed token.
pub const TOKEN_PARAM: &str = "pug_token";
/// Where pug's own pages live on a tenant's host in host mode.
pub const HOST_MODE_PREFIX: &str = "/_pug";

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub mode: GatewayMode,
    /// The parent domain in host mode.
    pub domain: String,
    /// The URL people use to reach pug, without a trailing slash.
    pub public_url: String,
    pub connect_timeout: Duration,
    /// How long an instance may take to start answering a request.
    pub response_timeout: Duration,
    pub session_ttl: Duration,
    pub embed_session_ttl: Duration,
    /// How often the routing table and embed keys are re-read from the store.
    pub refresh_interval: Duration,
    /// How long a session or membership lookup is reused (revocations take effect within it).
    pub auth_cache_ttl: Duration,
    pub login_window: Duration,
    pub login_failures_per_user: u32,
    pub login_failures_per_address: u32,
    /// How often expired and orphaned sessions and expired embed token ids are deleted.
    pub session_sweep_interval: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (see [`auth::client_ip`]).
    pub trusted_proxies: Vec<auth::IpNet>,
    /// Password checks at once across all workers (at least 1).
    pub login_concurrency: usize,
    /// A WebSocket tunnel with no traffic for this long is closed.
    pub tunnel_idle_timeout: Duration,
}

impl GatewaySettings {
    /// The gateway settings of a pug configuration.
    pub fn from_config(config: &Config) -> Self {
        let g = &config.gateway;
        Self {
            mode: config.gateway.mode,
            domain: config.gateway.domain.trim_matches('.').to_ascii_lowercase(),
            public_url: config.public_url(),
            connect_timeout: Duration::from_secs(g.connect_timeout_secs),
            response_timeout: Duration::from_secs(g.response_timeout_secs),
            session_ttl: Duration::from_secs(g.session_ttl_secs),
            embed_session_ttl: Duration::from_secs(g.embed_session_ttl_secs),
            refresh_interval: Duration::from_secs(1),
            auth_cache_ttl: Duration::from_secs(5),
            login_window: Duration::from_secs(g.login_window_secs),
            login_failures_per_user: g.login_failures_per_user,
            login_failures_per_address: g.login_failures_per_address,
            session_sweep_interval: Duration::from_secs(g.session_sweep_interval_secs),
            trusted_proxies: g
                .trusted_proxies
                .iter()
                .filter_map(|p| {
                    p.parse::<auth::IpNet>()
                        .or_else(|_| p.parse::<std::net::IpAddr>().map(auth::IpNet::from))
                        .ok()
                })
                .collect(),
            login_concurrency: server::worker_count(g.login_concurrency),
            tunnel_idle_timeout: Duration::from_secs(g.tunnel_idle_timeout_secs),
        }
    }

    fn secure(&self) -> bool {
        self.public_url.starts_with("https:")
    }

    /// The name of pug's session cookie: `__Host-` prefixed when served over https.
    pub fn session_cookie(&self) -> &'static str {
        if self.secure() {
            SECURE_SESSION_COOKIE
        } else {
            SESSION_COOKIE
        }
    }

    /// The name of pug's CSRF cookie: `__Host-` prefixed when served over https.
    pub fn csrf_cookie(&self) -> &'static str {
        if self.secure() {
            SECURE_CSRF_COOKIE
        } else {
            CSRF_COOKIE
        }
    }

    fn proto(&self) -> &'static str {
        if self.secure() {
            "https"
        } else {
            "http"
        }
    }
}

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
    signer: auth::Signer,
    throttle: auth::Throttle,
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
}

/// Entries kept in each auth cache before it is cleared.
const AUTH_CACHE_MAX: usize = 100_000;

/// Where a request goes.
enum Target {
    Tenant(TenantId, String),
    Login(Option<TenantId>),
    Logout(Option<TenantId>),
    Redirect(String),
    BadPath(path::PathError),
    NoTenant,
    Pug,
}

impl Gateway {
    /// Builds the gateway, registers its metrics on `registry`, reads the routing table and
    /// starts re-reading it every `refresh_interval` (until the gateway is dropped).
    pub async fn new(
        store: Store,
        settings: GatewaySettings,
        registry: &mut Registry,
    ) -> Result<Self, GatewayError> {
        let key = store.gateway_cookie_key().await?;
        let ttl = settings.auth_cache_ttl;
        let metrics = Arc::new(GatewayMetrics::register(registry));
        let keys = KeyRing::new(
            store.clone(),
            settings.refresh_interval,
            metrics.embed_key_reads.clone(),
        );
        let inner = Arc::new(Inner {
            signer: auth::Signer::new(key.expose_secret().as_bytes()),
            throttle: auth::Throttle::new(
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
            dummy_hash: auth::hash_password("pug-dummy-password"),
        });
        let gateway = Self { inner };
        gateway.refresh().await?;
        let weak = Arc::downgrade(&gateway.inner);
        let period = gateway.inner.settings.refresh_interval;
        tokio::spawn(refresh_loop(weak.clone(), period));
        tokio::spawn(sweep_loop(
            weak,
            gateway.inner.settings.session_sweep_interval,
        ));
        Ok(gateway)
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

async fn refresh_loop(weak: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = inner.refresh().await {
            tracing::warn!(error = %e, "gateway: cannot refresh the routing table");
        }
    }
}

async fn sweep_loop(weak: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
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
        let old = self
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let routes: HashMap<TenantId, Arc<Route>> = statuses
            .into_iter()
            .map(|(id, status)| {
                let route = match old.get(&id) {
                    Some(r) if r.same_as(&status) => r.clone(),
                    _ => Arc::new(Route::new(&status)),
                };
                (id, route)
            })
            .collect();
        *self.routes.write().unwrap_or_else(|e| e.into_inner()) = routes;
        self.keys.refresh().await
    }

    fn route(&self, id: &TenantId) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// The route of a tenant missing from the table (created since the last refresh).
    async fn route_from_store(&self, id: &TenantId) -> Option<Arc<Route>> {
        let status = self.store.tenant_status(id).await.ok()??;
        let route = Arc::new(Route::new(&status));
        self.routes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), route.clone());
        Some(route)
    }

    fn classify(&self, req: &Request) -> Target {
        let raw = req.uri().path();
        let settings = &self.settings;
        if settings.mode == GatewayMode::Host {
            let Some(tenant) = self.tenant_of_host(req) else {
                return Target::Pug;
            };
            let path = match path::normalize(raw) {
                Ok(p) => p,
                Err(e) => return Target::BadPath(e),
            };
            return match path.strip_prefix(HOST_MODE_PREFIX) {
                Some("/login") => Target::Login(Some(tenant)),
                Some("/logout") => Target::Logout(Some(tenant)),
                _ => Target::Tenant(tenant, path),
            };
        }
        let maybe_gateway = raw.starts_with("/t/")
            || matches!(raw, "/t" | "/login" | "/logout")
            || raw.contains(['%', '.', '\\'])
            || raw.contains("//");
        if !maybe_gateway {
            return Target::Pug;
        }
        let path = match path::normalize(raw) {
            Ok(p) => p,
            Err(e) => return Target::BadPath(e),
        };
        match path.as_str() {
            "/login" => return Target::Login(None),
            "/logout" => return Target::Logout(None),
            "/t" | "/t/" => return Target::NoTenant,
            _ => {}
        }
        let Some(rest) = path.strip_prefix("/t/") else {
            return Target::Pug;
        };
        let (segment, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let Ok(tenant) = TenantId::parse(segment) else {
            return Target::NoTenant;
        };
        if tail.is_empty() {
            let query = req
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            return Target::Redirect(format!("/t/{tenant}/{query}"));
        }
        Target::Tenant(tenant, path)
    }

    fn tenant_of_host(&self, req: &Request) -> Option<TenantId> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())?;
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let label = host
            .strip_suffix(&self.settings.domain)?
            .strip_suffix('.')?;
        TenantId::parse(label).ok()
    }

    /// Where the login page is, for a tenant request in this mode.
    fn login_path(&self) -> &'static str {
        match self.settings.mode {
            GatewayMode::Path => "/login",
            GatewayMode::Host => "/_pug/login",
        }
    }

    fn logout_path(&self) -> &'static str {
        match self.settings.mode {
            GatewayMode::Path => "/logout",
            GatewayMode::Host => "/_pug/logout",
        }
    }

    async fn tenant_request(self: Arc<Self>, id: TenantId, path: String, req: Request) -> Response {
        let start = Instant::now();
        self.metrics.in_flight.inc();
        let mut routed = None;
        let response = self.tenant_response(&id, &path, req, &mut routed).await;
        let class = metrics::class_index(response.status().as_u16());
        let handles = match routed.or_else(|| self.route(&id)) {
            Some(route) => route.metrics[class]
                .get_or_init(|| self.metrics.handles(id.as_str(), class))
                .clone(),
            None => self.metrics.handles("unknown", class),
        };
        track(response, self.metrics.clone(), handles, start)
    }

    /// The answer to a request for tenant `id`; `routed` gets the tenant's route once it is
    /// known (for the metrics, without a second lookup).
    async fn tenant_response(
        &self,
        id: &TenantId,
        path: &str,
        req: Request,
        routed: &mut Option<Arc<Route>>,
    ) -> Response {
        let html = pages::wants_html(req.headers());
        let peer = peer_of(&req);

        // 1. An embed token in the URL becomes a session, then a redirect to the clean URL.
        if let Some(query) = req.uri().query() {
            if let Some(token) = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == TOKEN_PARAM)
                .map(|(_, v)| v.into_owned())
            {
                let rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k != TOKEN_PARAM)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let clean = if rest.is_empty() {
                    path.to_owned()
                } else {
                    let q = form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(rest)
                        .finish();
                    format!("{path}?{q}")
                };
                return Box::pin(self.embed_login(id, &token, &clean, html)).await;
            }
        }

        // 2. Authenticate.
        let principal = match self.principal(id, req.headers()).await {
            Ok(Some(p)) => p,
            Ok(None) => {
                if html {
                    let next = match req.uri().query() {
                        Some(q) => format!("{path}?{q}"),
                        None => path.to_owned(),
                    };
                    let to = format!(
                        "{}?next={}",
                        self.login_path(),
                        form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                    );
                    return redirect(StatusCode::FOUND, &to);
                }
                let mut r = pages::error(
                    false,
                    StatusCode::UNAUTHORIZED,
                    "Sign in",
                    "sign in first: use pug's session cookie or `Authorization: Bearer <embed token>`",
                    serde_json::json!({"login": self.login_path()}),
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"pug\""),
                );
                return r;
            }
            Err(e) => return e.into_response_for(html),
        };

        // 3. Authorise, before anything reaches the tenant's instance.
        let role = match &principal.scope {
            Some(EmbedScope { tenant, role, .. }) if tenant == id => GrafanaRole::parse(role),
            Some(_) => None,
            None => match self.membership(&principal.user, id).await {
                Ok(role) => role,
                Err(e) => return internal(html, e),
            },
        };
        let Some(role) = role else {
            return pages::error(
                html,
                StatusCode::FORBIDDEN,
                "Not a member",
                &format!(
                    "{} is not a member of tenant {id}; ask an administrator for access \
                     (pug user grant {} {id} --role Viewer)",
                    principal.user, principal.user
                ),
                serde_json::json!({"tenant": id.as_str()}),
            );
        };

        // 4. Route.
        let route = match self.route(id) {
            Some(r) => r,
            None => match Box::pin(self.route_from_store(id)).await {
                Some(r) => r,
                None => {
                    return pages::error(
                        html,
                        StatusCode::NOT_FOUND,
                        "No such tenant",
                        &format!("there is no tenant {id}"),
                        serde_json::Value::Null,
                    )
                }
            },
        };
        *routed = Some(route.clone());
        if route.endpoints.is_empty() {
            return proxy::unavailable(html, id, route.phase);
        }

        // 5. Forward.
        let path_and_query: std::borrow::Cow<'_, str> = match req.uri().query() {
            Some(q) => format!("{path}?{q}").into(),
            None => path.into(),
        };
        let on_connect_error = || {
            self.metrics
                .connect_errors
                .get_or_create(&metrics::TenantLabels {
                    tenant: id.to_string(),
                })
                .inc();
        };
        proxy::forward(
            proxy::Forward {
                connect_timeout: self.settings.connect_timeout,
                tenant: id,
                route: &route,
                identity: &principal,
                role,
                peer,
                proto: self.settings.proto(),
                path_and_query: &path_and_query,
                response_timeout: self.settings.response_timeout,
                tunnel_idle_timeout: self.settings.tunnel_idle_timeout,
                on_connect_error: &on_connect_error,
            },
            req,
        )
        .await
    }

    /// The signed-in person: a session cookie, or an embed token as a bearer token.
    async fn principal(
        &self,
        tenant: &TenantId,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<SessionRecord>>, RequestError> {
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            // Verified on every request, no session: it stops with its key (within a refresh)
            // and its own expiry. A bearer token is not "used up" by being sent: API clients
            // send one token for its whole (at most ten-minute) life.
            let verified = Box::pin(self.verify_embed(token.trim(), tenant)).await?;
            let until = verified.claims.exp.saturating_mul(1000);
            return Ok(Some(Arc::new(session_of_claims(tenant, &verified, until))));
        }
        let Some(id) = cookie(headers, self.settings.session_cookie())
            .and_then(|c| self.signer.verify("session", c))
        else {
            return Ok(None);
        };
        let store = self.store.clone();
        let session = self
            .sessions
            .get(id, || {
                let (store, id) = (store.clone(), SecretString::from(id.to_owned()));
                Box::pin(async move { Ok(store.session(&id).await?.map(Arc::new)) })
            })
            .await
            .map_err(RequestError::Store)?;
        // An embed session whose key is gone ends at the next key refresh, cached or not.
        Ok(session.filter(|s| {
            s.expires_at_ms > pug_store::now_ms()
                && s.scope
                    .as_ref()
                    .is_none_or(|scope| self.keys.contains(&scope.key_id))
        }))
    }

    async fn membership(
        &self,
        user: &str,
        tenant: &TenantId,
    ) -> Result<Option<GrafanaRole>, StoreError> {
        let store = self.store.clone();
        let roles = self
            .members
            .get(user, || {
                let (store, user) = (store.clone(), user.to_owned());
                Box::pin(async move {
                    let roles: HashMap<TenantId, GrafanaRole> = store
                        .memberships_of(&user)
                        .await?
                        .into_iter()
                        .filter_map(|(t, r)| GrafanaRole::parse(&r).map(|r| (t, r)))
                        .collect();
                    Ok::<_, StoreError>(Arc::new(roles))
                })
            })
            .await?;
        Ok(roles.get(tenant).copied())
    }

    /// Verifies an embed token against the current keys; a token whose key is not among them
    /// gets one more chance against a store read at most one refresh interval old (shared by
    /// all such tokens, and remembered per `kid` for that interval), so a made-up `kid` costs
    /// no store read of its own.
    async fn verify_embed(
        &self,
        token: &str,
        tenant: &TenantId,
    ) -> Result<embed::Verified, RequestError> {
        let now = pug_store::now_ms() / 1000;
        match embed::verify(token, &self.keys.current(), tenant, now) {
            Err(EmbedError::UnknownKey) => {
                // A key made since the last refresh, perhaps.
                let Some(kid) = embed::key_id_of(token) else {
                    return Err(RequestError::Embed(EmbedError::UnknownKey));
                };
                let known = Box::pin(self.keys.lookup_unknown(&kid))
                    .await
                    .map_err(RequestError::Store)?;
                if !known {
                    return Err(RequestError::Embed(EmbedError::UnknownKey));
                }
                embed::verify(token, &self.keys.current(), tenant, now).map_err(RequestError::Embed)
            }
            other => other.map_err(RequestError::Embed),
        }
    }

    async fn embed_login(&self, id: &TenantId, token: &str, clean: &str, html: bool) -> Response {
        let verified = match self.verify_embed(token, id).await {
            Ok(v) => v,
            Err(e) => {
                self.metrics.login("embed_failure");
                return e.into_response_for(html);
            }
        };
        let ttl = self.settings.embed_session_ttl;
        let until = embed::session_expiry_ms(
            &verified.claims,
            pug_store::now_ms(),
            ttl.as_millis() as i64,
        );
        let record = session_of_claims(id, &verified, until);
        let jti = verified
            .claims
            .jti
            .as_deref()
            .map(|j| (j, embed::remember_jti_until_ms(&verified.claims)));
        let session = match self.store.create_embed_session(&record, jti).await {
            Ok(EmbedSessionOutcome::Created(s)) => s,
            Ok(EmbedSessionOutcome::Replayed) => {
                self.metrics.login("embed_failure");
                return RequestError::Embed(EmbedError::Replayed).into_response_for(html);
            }
            Ok(EmbedSessionOutcome::NoKey) => {
                self.metrics.login("embed_failure");
                return RequestError::Embed(EmbedError::UnknownKey).into_response_for(html);
            }
            Ok(EmbedSessionOutcome::NoTenant) => {
                self.metrics.login("embed_failure");
                return pages::error(
                    html,
                    StatusCode::NOT_FOUND,
                    "No such tenant",
                    &format!("there is no tenant {id}"),
                    serde_json::Value::Null,
                );
            }
            Err(e) => return internal(html, e),
        };
        self.metrics.login("embed_success");
        let mut r = redirect(StatusCode::SEE_OTHER, clean);
        let lifetime = Duration::from_millis((until - pug_store::now_ms()).max(0) as u64);
        self.set_cookie(
            &mut r,
            self.settings.session_cookie(),
            &self.signer.sign("session", session.expose_secret()),
            lifetime,
        );
        r
    }

    fn set_cookie(&self, r: &mut Response, name: &str, value: &str, ttl: Duration) {
        let secure = if self.settings.secure() {
            "; Secure"
        } else {
            ""
        };
        let v = format!(
            "{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            ttl.as_secs()
        );
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }

    /// A CSRF token: the one in the request's cookie if valid, else a new one (set on `r`).
    fn csrf_token(&self, headers: &HeaderMap) -> (String, bool) {
        match cookie(headers, self.settings.csrf_cookie())
            .filter(|c| self.signer.verify("csrf", c).is_some())
        {
            Some(c) => (c.to_owned(), false),
            None => (self.signer.sign("csrf", &auth::random_token()), true),
        }
    }

    fn csrf_ok(&self, headers: &HeaderMap, submitted: &str) -> bool {
        use subtle::ConstantTimeEq;
        match cookie(headers, self.settings.csrf_cookie()) {
            Some(c) if self.signer.verify("csrf", c).is_some() => {
                bool::from(c.as_bytes().ct_eq(submitted.as_bytes()))
            }
            _ => false,
        }
    }

    /// The client's address: the peer, or what a trusted proxy says (see [`auth::client_ip`]).
    fn client_ip(&self, headers: &HeaderMap, peer: std::net::IpAddr) -> std::net::IpAddr {
        auth::client_ip(
            peer,
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &self.settings.trusted_proxies,
        )
    }

    /// `next` if it is a path on this origin, else the default.
    fn safe_next(&self, next: &str, tenant: Option<&TenantId>) -> String {
        let default = match (self.settings.mode, tenant) {
            (GatewayMode::Path, Some(t)) => format!("/t/{t}/"),
            _ => "/".to_owned(),
        };
        if !next.starts_with('/') || next.starts_with("//") || next.contains(['\\', '\r', '\n']) {
            return default;
        }
        let (p, q) = match next.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (next, None),
        };
        match path::normalize(p) {
            Ok(p) => match q {
                Some(q) => format!("{p}?{q}"),
                None => p,
            },
            Err(_) => default,
        }
    }

    async fn login(&self, tenant: Option<TenantId>, req: Request) -> Response {
        let html = true;
        let peer = peer_of(&req);
        let (csrf, fresh) = self.csrf_token(req.headers());
        let action = self.login_path();
        let query_next = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "next")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        let hint = tenant.as_ref().map(|t| t.to_string()).or_else(|| {
            query_next
                .strip_prefix("/t/")
                .and_then(|r| r.split('/').next())
                .filter(|t| TenantId::parse(t).is_ok())
                .map(str::to_owned)
        });
        let form_page = |status: StatusCode, next: &str, message: Option<&str>, user: &str| {
            let mut r = pages::html(
                status,
                pages::login(action, hint.as_deref(), next, &csrf, message, user),
            );
            if fresh {
                self.set_cookie(
                    &mut r,
                    self.settings.csrf_cookie(),
                    &csrf,
                    Duration::from_secs(3600),
                );
            }
            r
        };
        match *req.method() {
            Method::GET | Method::HEAD => form_page(StatusCode::OK, &query_next, None, ""),
            Method::POST => {
                let headers = req.headers().clone();
                let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
                    return form_page(
                        StatusCode::BAD_REQUEST,
                        "",
                        Some("The form could not be read."),
                        "",
                    );
                };
                let form: HashMap<String, String> =
                    form_urlencoded::parse(&body).into_owned().collect();
                let get = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
                let (user, password, next) = (
                    get("user").trim().to_ascii_lowercase(),
                    get("password"),
                    get("next"),
                );
                if !self.csrf_ok(&headers, get("csrf")) {
                    self.metrics.login("failure");
                    return form_page(
                        StatusCode::FORBIDDEN,
                        next,
                        Some("This form expired or did not come from pug. Please sign in again."),
                        &user,
                    );
                }
                // The user field is checked before any lookup, throttle entry or log line.
                if !auth::plausible_sign_in(&user) {
                    self.metrics.login("failure");
                    return form_page(
                        StatusCode::UNAUTHORIZED,
                        next,
                        Some("Wrong user name or password."),
                        "",
                    );
                }
                let client = auth::client_key(self.client_ip(&headers, peer.ip()));
                let too_many = |wait: Duration| {
                    let mut r = form_page(
                        StatusCode::TOO_MANY_REQUESTS,
                        next,
                        Some(&format!(
                            "Too many failed sign-ins. Try again in {} seconds.",
                            wait.as_secs().max(1)
                        )),
                        &user,
                    );
                    retry_after(&mut r, wait);
                    r
                };
                // A permit first (a full table answers at once, nothing queues), then the
                // throttle, which counts the attempt before the hash.
                let Ok(permit) = self.password_checks.clone().try_acquire_owned() else {
                    self.metrics.login("throttled");
                    let mut r = form_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        next,
                        Some("pug is busy checking other sign-ins. Please try again in a moment."),
                        &user,
                    );
                    retry_after(&mut r, Duration::from_secs(1));
                    return r;
                };
                let address_over = match self.throttle.begin(&user, client, Instant::now()) {
                    auth::Admission::Wait(wait) => {
                        self.metrics.login("throttled");
                        return too_many(wait);
                    }
                    auth::Admission::Go { address_over } => address_over,
                };
                let creds = match self.store.user_credentials(&user).await {
                    Ok(c) => c,
                    Err(e) => return internal(html, e),
                };
                let (hash, email, display_name) = creds
                    .clone()
                    .unwrap_or_else(|| (self.dummy_hash.clone(), String::new(), String::new()));
                let password = password.to_owned();
                let ok = tokio::task::spawn_blocking(move || {
                    let ok = auth::verify_password(&hash, &password);
                    drop(permit);
                    ok
                })
                .await
                .unwrap_or(false)
                    && creds.is_some();
                if !ok {
                    self.metrics.login("failure");
                    tracing::info!(user = %user, client = %client, "gateway: failed sign-in");
                    if address_over {
                        return too_many(self.settings.login_window);
                    }
                    return form_page(
                        StatusCode::UNAUTHORIZED,
                        next,
                        Some("Wrong user name or password."),
                        &user,
                    );
                }
                self.throttle.succeeded(&user, client);
                let ttl = self.settings.session_ttl;
                let record = SessionRecord {
                    user: user.clone(),
                    email,
                    display_name: if display_name.is_empty() {
                        user.clone()
                    } else {
                        display_name
                    },
                    scope: None,
                    expires_at_ms: pug_store::now_ms() + ttl.as_millis() as i64,
                };
                let session = match self.store.create_session(&record).await {
                    Ok(s) => s,
                    Err(e) => return internal(html, e),
                };
                self.metrics.login("success");
                let mut r = redirect(
                    StatusCode::SEE_OTHER,
                    &self.safe_next(next, tenant.as_ref()),
                );
                self.set_cookie(
                    &mut r,
                    self.settings.session_cookie(),
                    &self.signer.sign("session", session.expose_secret()),
                    ttl,
                );
                r
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }

    async fn logout(&self, _tenant: Option<TenantId>, req: Request) -> Response {
        let (csrf, fresh) = self.csrf_token(req.headers());
        match *req.method() {
            Method::GET | Method::HEAD => {
                let mut r = pages::html(StatusCode::OK, pages::logout(self.logout_path(), &csrf));
                if fresh {
                    self.set_cookie(
                        &mut r,
                        self.settings.csrf_cookie(),
                        &csrf,
                        Duration::from_secs(3600),
                    );
                }
                r
            }
            Method::POST => {
                let headers = req.headers().clone();
                let body = axum::body::to_bytes(req.into_body(), 16 * 1024)
                    .await
                    .unwrap_or_default();
                let submitted = form_urlencoded::parse(&body)
                    .find(|(k, _)| k == "csrf")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                if !self.csrf_ok(&headers, &submitted) {
                    return pages::error(true, StatusCode::FORBIDDEN, "Sign out", "This form expired or did not come from pug; reload the page and try again.", serde_json::Value::Null);
                }
                if let Some(id) = cookie(&headers, self.settings.session_cookie())
                    .and_then(|c| self.signer.verify("session", c))
                {
                    if let Err(e) = self
                        .store
                        .delete_session(&SecretString::from(id.to_owned()))
                        .await
                    {
                        return internal(true, e);
                    }
                    self.sessions.remove(id);
                }
                let mut r = pages::html(StatusCode::OK, pages::signed_out(self.login_path()));
                self.set_cookie(&mut r, self.settings.session_cookie(), "", Duration::ZERO);
                r
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }
}

/// The session of a verified embed token for `tenant`, ending at `expires_at_ms`: the person
/// is known to Grafana under a login and email of the signing key's namespace (never a pug
/// user's or the admin's; see [`embed::grafana_login`]).
fn session_of_claims(tenant: &TenantId, v: &embed::Verified, expires_at_ms: i64) -> SessionRecord {
    let c = &v.claims;
    SessionRecord {
        user: embed::grafana_login(&v.key_id, &c.sub),
        email: embed::grafana_email(&v.key_id, &c.sub),
        display_name: c.name.clone().unwrap_or_else(|| c.sub.clone()),
        scope: Some(EmbedScope {
            tenant: tenant.clone(),
            role: GrafanaRole::parse(&c.role)
                .map(|r| r.as_str().to_owned())
                .unwrap_or_default(),
            key_id: v.key_id.clone(),
        }),
        expires_at_ms,
    }
}

/// A failure while handling a tenant request.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("the embed token was refused: {0}")]
    Embed(#[source] EmbedError),
    #[error("store error")]
    Store(#[source] StoreError),
}

impl RequestError {
    fn into_response_for(self, html: bool) -> Response {
        match self {
            RequestError::Embed(e) => pages::error(
                html,
                StatusCode::UNAUTHORIZED,
                "Sign-in link refused",
                &format!("The sign-in link was refused: {e}. Go back to the application that sent you here and open it again."),
                serde_json::json!({"reason": e.to_string()}),
            ),
            RequestError::Store(e) => internal(html, e),
        }
    }
}

fn internal(html: bool, e: StoreError) -> Response {
    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "gateway: store error");
    pages::error(
        html,
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal error",
        "internal error; see pug's log for details",
        serde_json::Value::Null,
    )
}

fn redirect(status: StatusCode, to: &str) -> Response {
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn retry_after(r: &mut Response, wait: Duration) {
    if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

fn peer_of(req: &Request) -> SocketAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// The value of cookie `name` in the request's `Cookie` header(s).
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Counts the response when its body ends (or is dropped).
fn track(
    response: Response,
    metrics: Arc<GatewayMetrics>,
    handles: metrics::Handles,
    start: Instant,
) -> Response {
    let (parts, body) = response.into_parts();
    let done = Done {
        metrics,
        handles,
        start,
    };
    Response::from_parts(
        parts,
        Body::new(Tracked {
            inner: body,
            done: Some(done),
        }),
    )
}

struct Done {
    metrics: Arc<GatewayMetrics>,
    handles: metrics::Handles,
    start: Instant,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.handles.0.inc();
        self.handles.1.observe(self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
    }
}

struct Tracked {
    inner: Body,
    done: Option<Done>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
